// Command bench measures Stave against Debian's tgt on this machine, on
// loopback, with the same clients and the same matrix, and writes the
// results into docs/benchmarks.md between the markers
// <!-- bench:begin --> and <!-- bench:end -->.
//
// Usage:
//
//	go run ./tools/bench [-stave-bin bin/stave] [-out docs/benchmarks.md]
//	    [-targets stave,pool,tgt] [-cells all|NAME,...] [-runs 3] [-time 5s]
//	    [-size 2GiB] [-pool-policy 2+1] [-fill iscsi|file|none] [-work DIR]
//	    [-keep] [-json FILE]
//	go run ./tools/bench -layouts 1+0,2+1,4+2 [-out docs/benchmarks.md] ...
//
// It starts `stave serve` twice, once with a file volume (portal
// 127.0.0.1:3281) and once with a pool of k+m files and a volume of
// policy -pool-policy in it (portal 127.0.0.1:3283; checksums are always
// on in the pool), and `tgtd -f` (portal 127.0.0.1:3282, control port 9,
// an rdwr backing store on a file of the same size in the same work
// directory, LUN 1), all at once, and puts only one of them under load at
// a time. It first fills each LU completely (1 MiB sequential writes, so
// that reads hit allocated, non-zero data), then runs every cell -runs
// times, the targets taking turns run by run (ABBA order) so that the
// noise of this shared machine falls on all alike:
//
//   - reads: libiscsi's iscsi-perf (-r random, -m in flight, -b blocks per
//     I/O, -t seconds), 4 KiB random at QD1 and QD32, 128 KiB and 1 MiB
//     sequential at QD8. Before each read run the backing files are read
//     through, since this machine reclaims idle page cache within ~30 s.
//     libiscsi 1.19's iscsi-perf never ends after a stall, so every client
//     runs under a hard time limit (SIGTERM, then SIGKILL) and a run that
//     hits it is reported as a stall;
//   - writes: `qemu-img bench -w -f raw -t none` (no FUA; the image is
//     flushed at close, outside the timed part), 4 KiB at QD32 and QD1 with
//     a step of 257 blocks (qemu-img bench has no random mode; the step
//     wraps at the end of the LU and never lets two writes merge), 1 MiB
//     sequential at QD8. Write runs are count-bound: a short calibration run
//     per target sets the count for about -time;
//   - QD1 latency: this program's own minimal initiator (initiator.go; no
//     client on this machine reports percentiles, and Debian's fio has no
//     libiscsi engine) times every 4 KiB read or write at random aligned
//     offsets and reports p50 and p99.
//
// For every run it reads the target daemon's utime+stime from
// /proc/PID/stat before and after and reports CPU seconds per GiB moved.
//
// The layouts mode (-layouts; layouts.go) measures the pool against the
// raw files under it instead, and rewrites the section between
// <!-- bench-pool:begin --> and <!-- bench-pool:end -->.
//
// Everything it starts is stopped on exit, also on failure or ^C. Only
// loopback traffic; ports 3281 to 3283 (and 3293 on for the layouts) and
// tgtd control port 9 unless told otherwise.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// config is the command line.
type config struct {
	staveBin   string
	out        string
	jsonOut    string
	targets    string
	cells      string
	runs       int
	runTime    time.Duration
	size       int64
	fill       string
	work       string
	keep       bool
	keepDir    bool // -work named the directory: keep it, remove its data files
	stavePort  int
	poolPort   int
	poolPolicy string
	poolDev    int64
	tgtPort    int
	tgtControl int
	initiator  string
	nice       int
	args       []string
	// The layouts mode.
	layouts      string
	layoutDev    int64
	layoutVol    int64
	fioTime      time.Duration
	goBenchTime  time.Duration
	goBenchCount int
	src          string
	staveRev     string
}

func main() {
	var c config
	var size, poolDev, layoutDev, layoutVol string
	flag.StringVar(&c.staveBin, "stave-bin", "", "stave binary (default: go build ./cmd/stave into the work dir)")
	flag.StringVar(&c.out, "out", "", "markdown file whose generated section to rewrite (default: print it only)")
	flag.StringVar(&c.targets, "targets", "stave,pool,tgt", "comma-separated targets to measure: stave (file volume), pool (pool volume), tgt; ratios are against the last")
	flag.StringVar(&c.cells, "cells", "all", "comma-separated cells to run (names as printed by -list), or all")
	list := flag.Bool("list", false, "list the cells and exit")
	flag.IntVar(&c.runs, "runs", 3, "runs per cell and target")
	flag.DurationVar(&c.runTime, "time", 5*time.Second, "length of one run (reads: whole seconds)")
	flag.StringVar(&size, "size", "2GiB", "size of each logical unit (KiB, MiB, GiB)")
	flag.StringVar(&c.fill, "fill", "iscsi", "how to fill the LUs before the runs: iscsi (1 MiB writes through the target; "+
		"falls back to file), file (write the backing file directly), none")
	flag.StringVar(&c.work, "work", "", "work directory for the data dir, tgt's file and logs, kept afterwards (default: a new temporary directory, removed unless -keep)")
	flag.StringVar(&c.jsonOut, "json", "", "also write the report with every run's figures as JSON to this file")
	flag.BoolVar(&c.keep, "keep", false, "keep the work directory (logs of every run)")
	flag.IntVar(&c.stavePort, "stave-port", 3281, "Stave portal port on 127.0.0.1")
	flag.IntVar(&c.poolPort, "pool-port", 3283, "portal port on 127.0.0.1 of the Stave serving the pool volume")
	flag.StringVar(&c.poolPolicy, "pool-policy", "2+1", "policy k+m of the pool volume; the pool gets k+m device files")
	flag.StringVar(&poolDev, "pool-dev-size", "", "size of each pool device file (default: -size)")
	flag.IntVar(&c.tgtPort, "tgt-port", 3282, "tgtd portal port on 127.0.0.1")
	flag.IntVar(&c.tgtControl, "tgt-control", 9, "tgtd control port (tgtadm -C)")
	flag.IntVar(&c.nice, "nice", 0, "niceness of the daemons and clients (e.g. -5 to be less disturbed by other jobs; 0: unchanged)")
	flag.StringVar(&c.layouts, "layouts", "", "layouts mode (make bench-pool): comma-separated policies, e.g. 1+0,2+1,4+2: "+
		"raw fio on k+m files, then a pool on them through iSCSI, then go test -bench; rewrites the bench-pool section")
	flag.StringVar(&layoutDev, "layout-dev-size", "2GiB", "layouts mode: size of each file")
	flag.StringVar(&layoutVol, "layout-vol-size", "1GiB", "layouts mode: size of the pool volume")
	flag.DurationVar(&c.fioTime, "fio-time", 3*time.Second, "layouts mode: length of one fio run")
	flag.DurationVar(&c.goBenchTime, "gobench-time", time.Second, "layouts mode: go test -benchtime")
	flag.IntVar(&c.goBenchCount, "gobench-count", 3, "layouts mode: go test -count (0: no go test -bench)")
	flag.StringVar(&c.src, "src", ".", "layouts mode: module root to run go test -bench ./pool in")
	flag.StringVar(&c.staveRev, "stave-rev", "", "what the report says the stave binary was built from (default: this tree's git revision, +dirty if changed)")
	flag.StringVar(&c.initiator, "initiator", "iqn.2026-11.dev.stave.bench:client", "initiator name of iscsi-perf")
	flag.Parse()
	if *list {
		for _, cell := range defaultCells() {
			fmt.Printf("%-20s %s\n", cell.Name, cell.Title)
		}
		return
	}
	var err error
	if c.size, err = parseSize(size); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if c.layoutDev, err = parseSize(layoutDev); err == nil {
		c.layoutVol, err = parseSize(layoutVol)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	c.poolDev = c.size + 1<<30
	if poolDev != "" {
		if c.poolDev, err = parseSize(poolDev); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(2)
		}
	}
	c.args = os.Args[1:]
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, c, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// parseSize parses "2GiB", "512MiB", "64KiB" or a byte count.
func parseSize(s string) (int64, error) {
	mul := int64(1)
	t := strings.TrimSpace(s)
	for _, u := range []struct {
		s string
		n int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if v, ok := strings.CutSuffix(t, u.s); ok {
			t, mul = v, u.n
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bad size %q: use e.g. 2GiB", s)
	}
	if (n*mul)%(1<<20) != 0 {
		return 0, fmt.Errorf("size %q is not a whole number of MiB", s)
	}
	return n * mul, nil
}

// selectCells returns the cells named in spec ("all" or a comma list).
func selectCells(spec string) ([]Cell, error) {
	all := defaultCells()
	if spec == "" || spec == "all" {
		return all, nil
	}
	var out []Cell
	for name := range strings.SplitSeq(spec, ",") {
		found := false
		for _, c := range all {
			if c.Name == strings.TrimSpace(name) {
				out = append(out, c)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown cell %q (see -list)", name)
		}
	}
	return out, nil
}

// bench is one benchmark session.
type bench struct {
	cfg     config
	w       io.Writer
	log     *os.File // every client's output, in the work dir
	client  Client
	clkTck  float64
	targets []Target
	geom    map[string]Geometry
	report  Report
}

func run(ctx context.Context, c config, w io.Writer) error {
	cells, err := selectCells(c.cells)
	if err != nil {
		return err
	}
	tools := []string{"iscsi-perf", "iscsi-readcapacity16", "qemu-img"}
	if c.layouts != "" {
		tools = append(tools, "fio")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (apt-get install libiscsi-bin qemu-utils qemu-block-extra fio)", tool)
		}
	}
	if c.work == "" {
		if c.work, err = os.MkdirTemp("", "stave-bench-"); err != nil {
			return err
		}
	} else {
		// A directory the user names is never removed; only the large
		// data files in it are, unless -keep.
		c.keepDir = true
		if err := os.MkdirAll(c.work, 0o755); err != nil {
			return err
		}
	}
	if c.work, err = filepath.Abs(c.work); err != nil {
		return err
	}
	defer func() {
		switch {
		case c.keep:
			fmt.Fprintf(w, "work directory kept: %s\n", c.work)
		case c.keepDir:
			removeData(c.work)
			fmt.Fprintf(w, "work directory kept (logs; data files removed): %s\n", c.work)
		default:
			os.RemoveAll(c.work)
		}
	}()
	b := &bench{
		cfg:    c,
		w:      w,
		client: Client{InitiatorName: c.initiator, Grace: 20 * time.Second, Nice: c.nice},
		clkTck: clockTicks(),
		geom:   map[string]Geometry{},
	}
	if b.log, err = os.Create(filepath.Join(c.work, "runs.log")); err != nil {
		return err
	}
	defer b.log.Close()
	b.report = Report{
		Command: "go run ./tools/bench " + strings.Join(quoteArgs(c.args), " "),
		Runs:    c.runs,
		RunTime: c.runTime,
		Size:    c.size,
		Cells:   cells,
		Machine: machine(),
	}
	b.report.Command = strings.TrimSpace(b.report.Command)
	b.report.Machine.FS = filesystemOf(c.work)
	if c.layouts != "" {
		var pols []string
		for p := range strings.SplitSeq(c.layouts, ",") {
			pols = append(pols, strings.TrimSpace(p))
		}
		return b.runLayouts(ctx, pols)
	}

	defer func() {
		for _, t := range b.targets {
			t.Stop()
		}
	}()
	if err := b.startTargets(ctx); err != nil {
		return err
	}
	b.fillAll(ctx)
	for _, cell := range cells {
		if ctx.Err() != nil {
			break
		}
		b.runCell(ctx, cell)
	}
	b.report.Machine.LoadAtEnd = loadAvg()
	b.report.Machine.Until = time.Now()
	if ctx.Err() != nil {
		return errors.New("interrupted; no report written")
	}
	section := b.report.Markdown()
	fmt.Fprintf(w, "\n%s", section)
	if c.out != "" {
		if err := writeSection(c.out, section); err != nil {
			return err
		}
		fmt.Fprintf(w, "\nwrote %s\n", c.out)
	}
	if c.jsonOut != "" {
		js, err := json.MarshalIndent(&b.report, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(c.jsonOut, append(js, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// removeData removes the files of dir (recursively) that hold data rather
// than logs: backing files, pool devices, data directories.
func removeData(dir string) {
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == dir {
			return nil
		}
		if d.IsDir() {
			if strings.HasSuffix(d.Name(), "-data") || d.Name() == "gotmp" {
				os.RemoveAll(p)
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(d.Name(), ".log") && !strings.HasSuffix(d.Name(), ".json") {
			os.Remove(p)
		}
		return nil
	})
}

// freeBytes returns the space available to this user on the filesystem
// that holds dir.
func freeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// quoteArgs quotes the arguments that the shell would split.
func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t'\"$`\\*?") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return out
}

// logf prints a progress line.
func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.w, "%s %s\n", time.Now().UTC().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// startTargets starts the requested targets; one that fails to start is
// reported and left out, the others are measured.
func (b *bench) startTargets(ctx context.Context) error {
	c := b.cfg
	for key := range strings.SplitSeq(c.targets, ",") {
		var t Target
		info := TargetInfo{Key: strings.TrimSpace(key)}
		switch info.Key {
		case "stave":
			bin, err := b.staveBin(ctx)
			if err != nil {
				return err
			}
			info.Title, info.Version = "Stave file", b.staveRev()+", file-backed volume"
			t = &staveTarget{key: info.Key, bin: bin, dir: filepath.Join(c.work, "stave-data"), port: c.stavePort,
				size: c.size, volume: "bench", initiator: c.initiator, nice: c.nice}
		case "pool":
			bin, err := b.staveBin(ctx)
			if err != nil {
				return err
			}
			k, m, err := parsePolicy(c.poolPolicy)
			if err != nil {
				return err
			}
			ps := &poolSpec{DevSize: c.poolDev, Policy: c.poolPolicy}
			for i := range k + m {
				ps.Devices = append(ps.Devices, filepath.Join(c.work, fmt.Sprintf("pool-dev%d", i)))
			}
			info.Title = "Stave pool " + c.poolPolicy
			info.Version = fmt.Sprintf("%s, pool volume %s on %d files of %s (checksums on)",
				b.staveRev(), c.poolPolicy, k+m, sizeText(c.poolDev))
			t = &staveTarget{key: info.Key, bin: bin, dir: filepath.Join(c.work, "stave-pool-data"), port: c.poolPort,
				size: c.size, volume: "bench", initiator: c.initiator, nice: c.nice, pool: ps}
		case "tgt":
			info.Title = "tgt"
			info.Version = "tgtd " + dpkgVersion("tgt") + ", rdwr backing store"
			t = &tgtTarget{dir: c.work, port: c.tgtPort, control: c.tgtControl, size: c.size, initiator: c.initiator, nice: c.nice}
		default:
			return fmt.Errorf("unknown target %q (want stave, pool or tgt)", key)
		}
		b.logf("starting %s", info.Title)
		if err := t.Start(ctx); err != nil {
			t.Stop()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.logf("%s did not start: %v", info.Title, err)
			info.Failed = "did not start: " + err.Error()
			b.report.Targets = append(b.report.Targets, info)
			continue
		}
		b.logf("%s is up: %s (pid %d)", info.Title, t.URL(), t.PID())
		b.targets = append(b.targets, t)
		b.report.Targets = append(b.report.Targets, info)
	}
	if len(b.targets) == 0 {
		return errors.New("no target started")
	}
	return nil
}

// staveBin returns the stave binary: -stave-bin, or one built from the
// tree into the work directory (once).
func (b *bench) staveBin(ctx context.Context) (string, error) {
	if b.cfg.staveBin != "" {
		return b.cfg.staveBin, nil
	}
	bin := filepath.Join(b.cfg.work, "stave")
	b.logf("building %s", bin)
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/stave").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/stave: %v: %s", err, out)
	}
	b.cfg.staveBin = bin
	return bin, nil
}

// parsePolicy parses "k+m".
func parsePolicy(s string) (k, m int, err error) {
	a, c, ok := strings.Cut(s, "+")
	if ok {
		k, err = strconv.Atoi(a)
		if err == nil {
			m, err = strconv.Atoi(c)
		}
	}
	if !ok || err != nil || k < 1 || m < 0 || k+m > 32 {
		return 0, 0, fmt.Errorf("bad policy %q: want k+m, e.g. 2+1", s)
	}
	return k, m, nil
}

// fillAll writes every LU through, so that reads hit allocated data.
func (b *bench) fillAll(ctx context.Context) {
	mode := b.cfg.fill
	switch mode {
	case "none":
		b.report.Fill = "not filled (-fill none)"
		return
	case "file":
		b.report.Fill = "backing files written directly with the pattern 0xa5"
	default:
		b.report.Fill = "1 MiB writes of the pattern 0xa5 through each target, then SYNCHRONIZE CACHE"
	}
	for _, t := range b.targets {
		start := time.Now()
		if mode == "iscsi" {
			cell := Cell{Name: "fill", BlockSize: 1 << 20, Depth: 8, Write: true}
			_, err := b.client.QemuWrite(ctx, t.URL(), cell, int(b.cfg.size>>20), 10*time.Minute)
			if err == nil {
				b.logf("%s: filled through iSCSI in %.1fs", t.Key(), time.Since(start).Seconds())
				continue
			}
			if ctx.Err() != nil {
				return
			}
			b.logf("%s: fill through iSCSI failed: %v", t.Key(), err)
			if !t.Fillable() {
				b.note("%s: filling the LU through iSCSI failed (%v); not filled (its blocks live in a pool)", b.title(t), err)
				continue
			}
			b.note("%s: filling the LU through iSCSI failed (%v); wrote the backing file directly", b.title(t), err)
		}
		if !t.Fillable() {
			b.note("%s: not filled (-fill file): its blocks live in a pool", b.title(t))
			continue
		}
		file := t.BackingFiles()[0]
		if err := fillFile(file); err != nil {
			b.note("%s: could not fill the backing file: %v", b.title(t), err)
			continue
		}
		b.logf("%s: filled %s in %.1fs", t.Key(), file, time.Since(start).Seconds())
	}
}

func (b *bench) note(format string, args ...any) {
	b.report.Notes = append(b.report.Notes, fmt.Sprintf(format, args...))
}

func (b *bench) title(t Target) string {
	for _, i := range b.report.Targets {
		if i.Key == t.Key() {
			return i.Title
		}
	}
	return t.Key()
}

// calibration is the count of the first, untimed write run of a cell,
// meant to take about a second.
func calibration(c Cell) int {
	switch {
	case c.BlockSize >= 1<<20:
		return 100
	case c.Depth == 1:
		return 1000
	}
	return 4000
}

// runCell runs one cell: for write cells a calibration run per target,
// then -runs rounds in which each target runs once, in alternating order.
// After a stall (or a failed calibration) the target's other runs of the
// cell are skipped: each would only wait for its time limit.
func (b *bench) runCell(ctx context.Context, cell Cell) {
	counts := map[string]int{}
	skip := map[string]string{} // target key → why its runs are skipped
	if cell.Tool == ToolQemuImg {
		for _, t := range b.targets {
			if b.dead(t) != "" {
				continue
			}
			n := calibration(cell)
			res, err := b.client.QemuWrite(ctx, t.URL(), cell, n, 60*time.Second)
			b.logRun(t, cell, 0, res, err)
			if err != nil {
				skip[t.Key()] = "calibration run failed: " + err.Error()
				continue
			}
			want := res.IOPS() * b.cfg.runTime.Seconds()
			counts[t.Key()] = int(min(max(want, 100), 5e6))
		}
	}
	for r := 1; r <= b.cfg.runs; r++ {
		order := b.targets
		if r%2 == 0 {
			order = reversed(order)
		}
		for _, t := range order {
			if ctx.Err() != nil {
				return
			}
			var s Sample
			if why, ok := skip[t.Key()]; ok {
				s = Sample{Target: t.Key(), Cell: cell.Name, Run: r, Err: why}
			} else {
				s = b.runOnce(ctx, t, cell, r, counts[t.Key()])
				if s.Stalled {
					skip[t.Key()] = "not run: run " + strconv.Itoa(r) + " stalled: " + s.Err
				}
			}
			b.report.Samples = append(b.report.Samples, s)
		}
	}
}

func reversed(ts []Target) []Target {
	out := make([]Target, len(ts))
	for i, t := range ts {
		out[len(ts)-1-i] = t
	}
	return out
}

// dead returns why t can no longer be measured, or "".
func (b *bench) dead(t Target) string {
	if ok, err := t.Exited(); ok {
		return fmt.Sprintf("daemon exited (%v)", err)
	}
	return ""
}

// runOnce runs cell once against t and returns its sample.
func (b *bench) runOnce(ctx context.Context, t Target, cell Cell, r, count int) Sample {
	s := Sample{Target: t.Key(), Cell: cell.Name, Run: r}
	if why := b.dead(t); why != "" {
		s.Err = why
		return s
	}
	if !cell.Write {
		for _, f := range t.BackingFiles() {
			if err := warmFile(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				b.logf("%s: warming %s: %v", t.Key(), f, err)
			}
		}
	}
	cpu0, cerr0 := cpuSeconds(t.PID(), b.clkTck)
	var res Result
	var err error
	switch cell.Tool {
	case ToolPerf:
		res, err = b.client.Perf(ctx, t.URL(), cell, b.blockSize(ctx, t), b.cfg.runTime)
	case ToolQemuImg:
		limit := 3*b.cfg.runTime + 30*time.Second
		res, err = b.client.QemuWrite(ctx, t.URL(), cell, count, limit)
	case ToolLatency:
		res, err = b.client.Latency(ctx, t.URL(), cell, b.cfg.runTime)
	}
	cpu1, cerr1 := cpuSeconds(t.PID(), b.clkTck)
	b.logRun(t, cell, r, res, err)
	if err != nil {
		s.Err = err.Error()
		s.Stalled = errors.Is(err, errStall)
		if why := b.dead(t); why != "" {
			s.Err += "; " + why
		}
		return s
	}
	s.IOPS = res.IOPS()
	s.Bytes = res.Ops * float64(cell.BlockSize)
	s.P50, s.P99 = res.Lat.P50, res.Lat.P99
	if cerr0 == nil && cerr1 == nil {
		s.CPU = cpu1 - cpu0
	}
	return s
}

// blockSize returns the LU's logical block size (iscsi-perf counts in
// blocks), asking READ CAPACITY once per target.
func (b *bench) blockSize(ctx context.Context, t Target) int {
	if g, ok := b.geom[t.Key()]; ok {
		return g.BlockSize
	}
	g, err := waitLU(ctx, t.URL(), b.cfg.initiator, 10*time.Second, func() error { return nil })
	if err != nil {
		b.logf("%s: READ CAPACITY: %v; assuming 512-byte blocks", t.Key(), err)
		return 512
	}
	b.geom[t.Key()] = g
	return g.BlockSize
}

// logRun prints a progress line and appends the client's output to runs.log.
func (b *bench) logRun(t Target, cell Cell, r int, res Result, err error) {
	what := fmt.Sprintf("run %d/%d", r, b.cfg.runs)
	if r == 0 {
		what = "calibration"
	}
	switch {
	case err != nil:
		b.logf("%-5s %-18s %s: FAILED: %v", t.Key(), cell.Name, what, err)
	case cell.Tool == ToolLatency:
		b.logf("%-5s %-18s %s: %8.0f IOPS  p50 %6.1f µs  p99 %6.1f µs", t.Key(), cell.Name, what,
			res.IOPS(), res.Lat.P50, res.Lat.P99)
	default:
		b.logf("%-5s %-18s %s: %8.0f IOPS %8.1f MiB/s", t.Key(), cell.Name, what,
			res.IOPS(), res.IOPS()*float64(cell.BlockSize)/(1<<20))
	}
	fmt.Fprintf(b.log, "### %s %s %s err=%v\n%s\n", t.Key(), cell.Name, what, err,
		strings.ReplaceAll(res.Output, "\r", "\n"))
}

// cpuSeconds returns utime+stime of process pid (all its threads).
func cpuSeconds(pid int, clkTck float64) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(b), clkTck)
}

// parseStatCPU parses utime and stime, fields 14 and 15 of /proc/PID/stat
// (proc(5)); the command name in field 2 may hold spaces and parentheses,
// so fields are counted from the last ')'.
func parseStatCPU(stat string, clkTck float64) (float64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("bench: malformed /proc/PID/stat")
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 13 {
		return 0, errors.New("bench: short /proc/PID/stat")
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("bench: malformed utime/stime in /proc/PID/stat")
	}
	return float64(ut+st) / clkTck, nil
}

// clockTicks returns sysconf(_SC_CLK_TCK), asking getconf; 100 otherwise.
func clockTicks() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
			return v
		}
	}
	return 100
}

// machine describes this machine for the report.
func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), Start: time.Now(), LoadAtStart: loadAvg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				if kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64); err == nil {
					m.MemTotal = fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
				}
			}
		}
	}
	m.ClientTools = fmt.Sprintf("iscsi-perf (libiscsi-bin %s), qemu-img bench (qemu-utils %s)",
		dpkgVersion("libiscsi-bin"), dpkgVersion("qemu-utils"))
	return m
}

// filesystemOf returns the filesystem type and source of the mount that
// holds path, from /proc/mounts (the longest matching mount point).
func filesystemOf(path string) string {
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return "unknown"
	}
	return mountOf(string(b), path)
}

// mountOf finds path's mount in the text of /proc/mounts.
func mountOf(mounts, path string) string {
	best, bestLen := "unknown", -1
	for line := range strings.SplitSeq(mounts, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		mp := strings.ReplaceAll(f[1], `\040`, " ")
		if path != mp && !strings.HasPrefix(path, strings.TrimSuffix(mp, "/")+"/") {
			continue
		}
		if len(mp) > bestLen {
			best, bestLen = fmt.Sprintf("%s (%s on %s)", f[2], f[0], mp), len(mp)
		}
	}
	return best
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], ", ")
}

func dpkgVersion(pkg string) string {
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", pkg).Output()
	if err != nil || len(out) == 0 {
		return "unknown"
	}
	return string(out)
}

// staveRev names the stave build in the report: -stave-rev, or this
// tree's revision.
func (b *bench) staveRev() string {
	if b.cfg.staveRev != "" {
		return "stave " + b.cfg.staveRev
	}
	return gitRevision()
}

// gitRevision names the tree the stave binary was built from.
func gitRevision() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown revision"
	}
	rev := strings.TrimSpace(string(out))
	if exec.Command("git", "diff", "--quiet", "HEAD").Run() != nil {
		rev += "+dirty"
	}
	return "stave " + rev
}
