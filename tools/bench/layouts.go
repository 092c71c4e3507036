package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The layouts mode (-layouts 1+0,2+1,4+2; `make bench-pool`) measures the
// pool against the raw files under it (issue 4). For each layout k+m it
// makes k+m files of -layout-dev-size in one directory of the work dir,
// runs fio on all of them at once (O_DIRECT with libaio: what the files
// can do; and buffered with io_uring, writes fdatasync'ed in groups, the
// way the pool opens them), then creates a pool on the same files and a
// volume of -layout-vol-size with that policy in `stave serve`, fills it
// and runs the iSCSI cells. At the end it runs pool's BenchmarkPool (go
// test -bench) for the same layouts, with its files in the work dir.

// Sample targets of the layouts mode.
const (
	targetRawDirect   = "raw-direct"
	targetRawBuffered = "raw-buffered"
	targetGoBench     = "gotest"
	targetISCSI       = "iscsi"
)

// layoutCells are the workloads of the layout table, in order.
var layoutCells = []string{"randwrite-4k-qd32", "randread-4k-qd32", "seqwrite-1m-qd8", "seqread-1m-qd8"}

// fioJobFor returns the raw fio job of a layout cell.
func fioJobFor(cell Cell, direct bool) fioJob {
	j := fioJob{BS: cell.BlockSize, Depth: cell.Depth, Direct: direct}
	switch {
	case cell.Write && cell.Random:
		j.RW = "randwrite"
	case cell.Write:
		j.RW = "write"
	case cell.Random:
		j.RW = "randread"
	default:
		j.RW = "read"
	}
	if cell.Write && !direct {
		// The pool syncs every batch (one group commit of up to the
		// writes in flight); buffered writes without a sync would
		// measure the page cache.
		j.SyncEvery = cell.Depth
	}
	return j
}

// LayoutResult is everything measured for one layout.
type LayoutResult struct {
	Policy  string
	K, M    int
	Samples []Sample
	Failed  string // the layout could not be measured at all
}

// PoolReport is the generated section of the layouts mode.
type PoolReport struct {
	Command   string
	Machine   Machine
	Runs      int
	RunTime   time.Duration
	FioTime   time.Duration
	GoBench   string // the go test command
	DevSize   int64
	VolSize   int64
	FS        string // filesystem of the work directory
	FioTool   string
	StaveInfo string
	Layouts   []LayoutResult
	Notes     []string
}

// runLayouts is the layouts mode.
func (b *bench) runLayouts(ctx context.Context, policies []string) error {
	c := b.cfg
	pr := &PoolReport{
		Command: b.report.Command, Machine: b.report.Machine, Runs: c.runs, RunTime: c.runTime, FioTime: c.fioTime,
		DevSize: c.layoutDev, VolSize: c.layoutVol, FS: filesystemOf(c.work),
		FioTool: "fio " + dpkgVersion("fio"),
	}
	bin, err := b.staveBin(ctx)
	if err != nil {
		return err
	}
	pr.StaveInfo = b.staveRev()
	var cells []Cell
	for _, name := range layoutCells {
		cs, _ := selectCells(name)
		cells = append(cells, cs...)
	}
	for i, pol := range policies {
		if ctx.Err() != nil {
			break
		}
		k, m, err := parsePolicy(pol)
		if err != nil {
			return err
		}
		lr := LayoutResult{Policy: pol, K: k, M: m}
		dir := filepath.Join(c.work, "layout-"+strings.ReplaceAll(pol, "+", "-"))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		var files []string
		for d := range k + m {
			files = append(files, filepath.Join(dir, fmt.Sprintf("dev%d", d)))
		}
		// The files, and room for the pool's index and for whatever
		// else runs on this machine: never fill its disk.
		need := int64(len(files))*c.layoutDev + 4<<30
		if free, err := freeBytes(dir); err == nil && free < need {
			lr.Failed = fmt.Sprintf("not run: %s free in %s, %s needed", sizeText(free>>20<<20), dir, sizeText(need))
			b.logf("layout %s: %s", pol, lr.Failed)
			pr.Layouts = append(pr.Layouts, lr)
			continue
		}
		b.logf("layout %s: %d files of %s in %s", pol, len(files), sizeText(c.layoutDev), dir)
		lr.Samples = append(lr.Samples, b.rawRuns(ctx, pol, cells, files)...)
		t := &staveTarget{key: targetISCSI, bin: bin, dir: filepath.Join(dir, "stave-data"), port: c.poolPort + 10 + i,
			size: c.layoutVol, volume: "bench", initiator: c.initiator, nice: c.nice,
			pool: &poolSpec{Devices: files, DevSize: c.layoutDev, Policy: pol, KeepFiles: true}}
		lr.Samples = append(lr.Samples, b.iscsiRuns(ctx, pol, t, cells, &lr)...)
		pr.Layouts = append(pr.Layouts, lr)
		// The files are 2 GiB each: remove them at once (the logs stay
		// with -work or -keep).
		if c.keep {
			// -keep: keep everything.
		} else if c.keepDir {
			removeData(dir)
		} else {
			os.RemoveAll(dir)
		}
	}
	if ctx.Err() == nil && c.goBenchCount > 0 {
		src := c.src
		pr.GoBench = fmt.Sprintf("go test -run '^$' -bench '^BenchmarkPool$/^(%s)$/' -benchtime %v -count %d ./pool (TMPDIR in the work directory)",
			strings.Join(policies, "|"), c.goBenchTime, c.goBenchCount)
		b.logf("go test -bench BenchmarkPool for %s in %s", strings.Join(policies, ", "), src)
		samples, out, err := runGoBench(ctx, src, filepath.Join(c.work, "gotmp"), policies, c.goBenchTime, c.goBenchCount, c.nice)
		fmt.Fprintf(b.log, "### go test -bench\n%s\n", out)
		if err != nil {
			pr.Notes = append(pr.Notes, "go test -bench failed: "+err.Error())
			b.logf("go test -bench: %v", err)
		}
		for i := range pr.Layouts {
			pr.Layouts[i].Samples = append(pr.Layouts[i].Samples, samples[pr.Layouts[i].Policy]...)
		}
	}
	pr.Machine.LoadAtEnd = loadAvg()
	pr.Machine.Until = time.Now()
	pr.Notes = append(pr.Notes, b.report.Notes...)
	if ctx.Err() != nil {
		return errors.New("interrupted; no report written")
	}
	section := pr.Markdown()
	fmt.Fprintf(b.w, "\n%s", section)
	if c.out != "" {
		if err := writeSectionMarkers(c.out, section, poolBeginMarker, poolEndMarker); err != nil {
			return err
		}
		fmt.Fprintf(b.w, "\nwrote %s\n", c.out)
	}
	if c.jsonOut != "" {
		js, err := json.MarshalIndent(pr, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(c.jsonOut, append(js, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// rawRuns lays the files out with fio and runs every cell on them, raw,
// O_DIRECT and buffered, the modes taking turns run by run.
func (b *bench) rawRuns(ctx context.Context, pol string, cells []Cell, files []string) []Sample {
	c := b.cfg
	var out []Sample
	start := time.Now()
	lay := fioJob{RW: "write", BS: 1 << 20, Depth: 8, Direct: true}
	if _, err := b.client.runFio(ctx, lay, files, c.layoutDev, 0); err != nil {
		b.note("layout %s: laying out the files with fio failed: %v", pol, err)
		return nil
	}
	b.logf("layout %s: files written in %.1fs", pol, time.Since(start).Seconds())
	for _, cell := range cells {
		for r := 1; r <= c.runs; r++ {
			modes := []bool{true, false}
			if r%2 == 0 {
				modes = []bool{false, true}
			}
			for _, direct := range modes {
				if ctx.Err() != nil {
					return out
				}
				key := targetRawBuffered
				if direct {
					key = targetRawDirect
				}
				if !cell.Write && !direct {
					for _, f := range files {
						_ = warmFile(f)
					}
				}
				res, err := b.client.runFio(ctx, fioJobFor(cell, direct), files, c.layoutDev, c.fioTime)
				s := Sample{Target: key, Cell: cell.Name, Run: r}
				what := fmt.Sprintf("run %d/%d", r, c.runs)
				if err != nil {
					s.Err = err.Error()
					b.logf("%-12s %-5s %-18s %s: FAILED: %v", key, pol, cell.Name, what, err)
				} else {
					s.IOPS = res.IOPS()
					b.logf("%-12s %-5s %-18s %s: %8.0f IOPS %8.1f MiB/s", key, pol, cell.Name, what,
						s.IOPS, s.IOPS*float64(cell.BlockSize)/(1<<20))
				}
				fmt.Fprintf(b.log, "### %s %s %s %s err=%v\n%s\n", key, pol, cell.Name, what, err, res.Output)
				out = append(out, s)
			}
		}
	}
	return out
}

// iscsiRuns starts Stave with a pool on the layout's files, fills the
// volume and runs the cells through iSCSI.
func (b *bench) iscsiRuns(ctx context.Context, pol string, t *staveTarget, cells []Cell, lr *LayoutResult) []Sample {
	defer t.Stop()
	b.logf("layout %s: starting stave serve with the pool", pol)
	if err := t.Start(ctx); err != nil {
		lr.Failed = "stave serve with the pool did not start: " + err.Error()
		b.logf("layout %s: %s", pol, lr.Failed)
		return nil
	}
	sub := &bench{cfg: b.cfg, w: b.w, log: b.log, client: b.client, clkTck: b.clkTck, geom: map[string]Geometry{},
		targets: []Target{t}}
	sub.report.Targets = []TargetInfo{{Key: t.Key(), Title: "pool " + pol}}
	start := time.Now()
	fill := Cell{Name: "fill", BlockSize: 1 << 20, Depth: 8, Write: true}
	if _, err := b.client.QemuWrite(ctx, t.URL(), fill, int(t.size>>20), 10*time.Minute); err != nil {
		b.note("layout %s: filling the volume through iSCSI failed: %v", pol, err)
	} else {
		b.logf("layout %s: volume filled through iSCSI in %.1fs", pol, time.Since(start).Seconds())
	}
	for _, cell := range cells {
		if ctx.Err() != nil {
			break
		}
		sub.runCell(ctx, cell)
	}
	for _, n := range sub.report.Notes {
		b.note("layout %s: %s", pol, n)
	}
	return sub.report.Samples
}

// series returns the statistics of one target's samples of a cell.
func (l *LayoutResult) series(target, cell string) Stats {
	r := Report{Samples: l.Samples}
	c, _ := selectCells(cell)
	return r.series(target, cell, rate(c[0]))
}

// medText renders the median of st, or "–".
func medText(st Stats) string {
	if st.N == 0 {
		return "–"
	}
	return num(st.Median)
}

// pct renders a/b as a percentage, or "–".
func pct(a, b Stats, scale float64) string {
	if a.N == 0 || b.N == 0 || b.Median == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f%%", 100*a.Median/(b.Median*scale))
}

// metText says whether a/(b·scale) ≥ goal.
func metText(a, b Stats, scale, goal float64) string {
	if a.N == 0 || b.N == 0 || b.Median == 0 {
		return "not measured"
	}
	if a.Median >= goal*b.Median*scale {
		return "**met**"
	}
	return "**not met**"
}

// Markdown renders the layouts section (without the markers).
func (pr *PoolReport) Markdown() string {
	var b strings.Builder
	m := pr.Machine
	fmt.Fprintf(&b, "## Pool against the raw files (issue 4)\n\n")
	fmt.Fprintf(&b, "Command: `%s`. For each layout k+m: k+m files of %s in one directory, written through once "+
		"(fio, 1 MiB O_DIRECT); raw fio on all the files at once (one job per file, aggregate), %d runs of %v per mode, "+
		"the two modes taking turns; then `stave serve` with a pool on the same files and one %s volume of that "+
		"policy (filled through iSCSI with 1 MiB writes), %d runs of %v per cell through iSCSI; then %s.\n\n",
		pr.Command, sizeText(pr.DevSize), pr.Runs, pr.FioTime, sizeText(pr.VolSize), pr.Runs, pr.RunTime, orDash(pr.GoBench))
	fmt.Fprintf(&b, "| | |\n| --- | --- |\n")
	fmt.Fprintf(&b, "| date | %s – %s |\n", m.Start.UTC().Format("2006-01-02 15:04"), m.Until.UTC().Format("15:04 UTC"))
	fmt.Fprintf(&b, "| machine | %d × %s, %s RAM, Linux %s |\n", m.CPUs, m.CPUModel, m.MemTotal, m.Kernel)
	fmt.Fprintf(&b, "| load average (1, 5, 15 min) | %s at start, %s at end |\n", m.LoadAtStart, m.LoadAtEnd)
	fmt.Fprintf(&b, "| files | %s |\n", pr.FS)
	fmt.Fprintf(&b, "| Stave | %s |\n", pr.StaveInfo)
	fmt.Fprintf(&b, "| clients | %s; %s |\n", pr.FioTool, m.ClientTools)
	fmt.Fprintf(&b, "| Go | %s |\n\n", m.Go)

	b.WriteString("Raw O_DIRECT: fio, libaio, direct=1, same block size and depth per file as the iSCSI cell: what " +
		"the files can do. Raw buffered: fio, io_uring, direct=0, writes with fdatasync after every depth-many " +
		"writes, reads after reading the files through once: the way the pool opens its devices (pool/device.go: " +
		"O_RDWR, no O_DIRECT; every batch synced). go test -bench: pool's BenchmarkPool in process, no iSCSI " +
		"(4 KiB with 32 goroutines, 1 MiB with one: QD1). iSCSI: the same clients as the Stave-vs-tgt table " +
		"(qemu-img bench writes, iscsi-perf reads, the pool's files read through before each read run). " +
		"Median (min–max) of the runs; CPU s/GiB is that of `stave serve` per GiB moved through iSCSI.\n\n")
	b.WriteString("| layout | workload | raw O_DIRECT, all files | raw buffered, all files | go test -bench | iSCSI | " +
		"iSCSI / raw O_DIRECT | iSCSI / raw buffered | iSCSI CPU s/GiB |\n")
	b.WriteString("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for i := range pr.Layouts {
		l := &pr.Layouts[i]
		if l.Failed != "" {
			fmt.Fprintf(&b, "| %s | failed: %s | | | | | | | |\n", l.Policy, shortErr(l.Failed))
		}
		for _, name := range layoutCells {
			cs, _ := selectCells(name)
			cell := cs[0]
			unit := "MiB/s"
			if cell.IOPS {
				unit = "IOPS"
			}
			rd, rb := l.series(targetRawDirect, name), l.series(targetRawBuffered, name)
			gb, is := l.series(targetGoBench, name), l.series(targetISCSI, name)
			fmt.Fprintf(&b, "| %s | %s (%s) | %s | %s | %s | %s | %s | %s | %s |\n", l.Policy, cell.Title, unit,
				cellText(rd), cellText(rb), cellText(gb), cellText(is), ratio(is, rd), ratio(is, rb), cpuText(is))
		}
	}
	b.WriteString("\n")

	// Goals.
	b.WriteString("Goals of issue 4. \"Data devices' raw aggregate\" is k/(k+m) of the raw aggregate of all k+m " +
		"files measured at once (they share one disk here, so the files do not add up to k+m disks' worth).\n\n")
	b.WriteString("| goal | layout | pool, iSCSI | pool, go test -bench | against raw O_DIRECT | against raw buffered | verdict (iSCSI vs O_DIRECT) |\n")
	b.WriteString("| --- | --- | ---: | ---: | ---: | ---: | --- |\n")
	for i := range pr.Layouts {
		l := &pr.Layouts[i]
		share := float64(l.K) / float64(l.K+l.M)
		is, gb := l.series(targetISCSI, "seqwrite-1m-qd8"), l.series(targetGoBench, "seqwrite-1m-qd8")
		rd, rb := l.series(targetRawDirect, "seqwrite-1m-qd8"), l.series(targetRawBuffered, "seqwrite-1m-qd8")
		fmt.Fprintf(&b, "| 1 MiB sequential write ≥ 80%% of the data devices' raw aggregate | %s | %s MiB/s | %s MiB/s | "+
			"%s of %s MiB/s | %s of %s MiB/s | %s |\n", l.Policy, medText(is), medText(gb),
			pct(is, rd, share), num(rd.Median*share), pct(is, rb, share), num(rb.Median*share), metText(is, rd, share, 0.8))
	}
	var single *LayoutResult
	for i := range pr.Layouts {
		if pr.Layouts[i].K == 1 && pr.Layouts[i].M == 0 {
			single = &pr.Layouts[i]
		}
	}
	for i := range pr.Layouts {
		l := &pr.Layouts[i]
		if l.K != 2 || l.M != 1 {
			continue
		}
		is, gb := l.series(targetISCSI, "randwrite-4k-qd32"), l.series(targetGoBench, "randwrite-4k-qd32")
		if single == nil {
			fmt.Fprintf(&b, "| 4 KiB random write IOPS on 2+1 ≥ the raw single file's | 2+1 | %s | %s | – (no 1+0 layout run) | – | not measured |\n",
				medText(is), medText(gb))
			continue
		}
		rd, rb := single.series(targetRawDirect, "randwrite-4k-qd32"), single.series(targetRawBuffered, "randwrite-4k-qd32")
		fmt.Fprintf(&b, "| 4 KiB random write IOPS on 2+1 ≥ the raw single file's (1+0's file) | 2+1 | %s | %s | %s of %s | %s of %s | %s |\n",
			medText(is), medText(gb), pct(is, rd, 1), num(rd.Median), pct(is, rb, 1), num(rb.Median), metText(is, rd, 1, 1))
	}
	b.WriteString("\nCPU per GiB written (`stave serve`, user+system, through iSCSI, median of the runs):\n\n")
	b.WriteString("| layout | 1 MiB sequential write | 4 KiB random write |\n| --- | ---: | ---: |\n")
	for i := range pr.Layouts {
		l := &pr.Layouts[i]
		fmt.Fprintf(&b, "| %s | %s s/GiB | %s s/GiB |\n", l.Policy,
			cpuText(l.series(targetISCSI, "seqwrite-1m-qd8")), cpuText(l.series(targetISCSI, "randwrite-4k-qd32")))
	}
	if len(pr.Notes) > 0 {
		b.WriteString("\nNotes from this run:\n\n")
		for _, n := range pr.Notes {
			fmt.Fprintf(&b, "- %s\n", strings.ReplaceAll(n, "\n", " "))
		}
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "no go test -bench"
	}
	return "`" + s + "`"
}
