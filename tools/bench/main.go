// Command bench measures Stave against Debian's tgt on this machine, on
// loopback, with the same clients and the same matrix, and writes the
// results into docs/benchmarks.md between the markers
// <!-- bench:begin --> and <!-- bench:end -->.
//
// Usage:
//
//	go run ./tools/bench [-stave-bin bin/stave] [-out docs/benchmarks.md]
//	    [-targets stave,tgt] [-cells all|NAME,...] [-runs 3] [-time 5s]
//	    [-size 2GiB] [-fill iscsi|file|none] [-work DIR] [-keep] [-json FILE]
//
// It starts `stave serve` (portal 127.0.0.1:3281, one volume "bench", LUN 0)
// and `tgtd -f` (portal 127.0.0.1:3282, control port 9, an rdwr backing
// store on a file of the same size in the same work directory, LUN 1),
// both at once, and puts only one of them under load at a time. It first
// fills each LU completely (1 MiB sequential writes, so that reads hit
// allocated, non-zero data), then runs every cell -runs times, the targets
// taking turns run by run so that the noise of this shared machine falls on
// both alike:
//
//   - reads: libiscsi's iscsi-perf (-r random, -m in flight, -b blocks per
//     I/O, -t seconds), 4 KiB random at QD1 and QD32, 128 KiB and 1 MiB
//     sequential at QD8. Before each read run the backing file is read
//     through, since this machine reclaims idle page cache within ~30 s.
//     libiscsi 1.19's iscsi-perf never ends after a stall, so every client
//     runs under a hard time limit (SIGTERM, then SIGKILL) and a run that
//     hits it is reported as a stall;
//   - writes: `qemu-img bench -w -f raw -t none` (no FUA; the image is
//     flushed at close, outside the timed part), 4 KiB at QD32 and QD1 with
//     a step of 257 blocks (qemu-img bench has no random mode; the step
//     wraps at the end of the LU and never lets two writes merge), 1 MiB
//     sequential at QD8. Write runs are count-bound: a short calibration run
//     per target sets the count for about -time.
//
// For every run it reads the target daemon's utime+stime from
// /proc/PID/stat before and after and reports CPU seconds per GiB moved.
// QD1 latency is 1/IOPS (neither client reports percentiles).
//
// Everything it starts is stopped on exit, also on failure or ^C. Only
// loopback traffic; ports 3281 and 3282 and tgtd control port 9 unless
// told otherwise.
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
	stavePort  int
	tgtPort    int
	tgtControl int
	initiator  string
	nice       int
	args       []string
}

func main() {
	var c config
	var size string
	flag.StringVar(&c.staveBin, "stave-bin", "", "stave binary (default: go build ./cmd/stave into the work dir)")
	flag.StringVar(&c.out, "out", "", "markdown file whose generated section to rewrite (default: print it only)")
	flag.StringVar(&c.targets, "targets", "stave,tgt", "comma-separated targets to measure: stave, tgt")
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
	flag.IntVar(&c.tgtPort, "tgt-port", 3282, "tgtd portal port on 127.0.0.1")
	flag.IntVar(&c.tgtControl, "tgt-control", 9, "tgtd control port (tgtadm -C)")
	flag.IntVar(&c.nice, "nice", 0, "niceness of the daemons and clients (e.g. -5 to be less disturbed by other jobs; 0: unchanged)")
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
	for _, tool := range []string{"iscsi-perf", "iscsi-readcapacity16", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (apt-get install libiscsi-bin qemu-utils qemu-block-extra)", tool)
		}
	}
	if c.work == "" {
		if c.work, err = os.MkdirTemp("", "stave-bench-"); err != nil {
			return err
		}
	} else {
		// A directory the user names is never removed.
		c.keep = true
		if err := os.MkdirAll(c.work, 0o755); err != nil {
			return err
		}
	}
	if c.work, err = filepath.Abs(c.work); err != nil {
		return err
	}
	defer func() {
		if c.keep {
			fmt.Fprintf(w, "work directory kept: %s\n", c.work)
		} else {
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
			bin := c.staveBin
			if bin == "" {
				bin = filepath.Join(c.work, "stave")
				b.logf("building %s", bin)
				out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/stave").CombinedOutput()
				if err != nil {
					return fmt.Errorf("go build ./cmd/stave: %v: %s", err, out)
				}
			}
			info.Title, info.Version = "Stave", gitRevision()
			t = &staveTarget{bin: bin, dir: filepath.Join(c.work, "stave-data"), port: c.stavePort,
				size: c.size, volume: "bench", initiator: c.initiator, nice: c.nice}
		case "tgt":
			info.Title = "tgt"
			info.Version = "tgtd " + dpkgVersion("tgt") + ", rdwr backing store"
			t = &tgtTarget{dir: c.work, port: c.tgtPort, control: c.tgtControl, size: c.size, initiator: c.initiator, nice: c.nice}
		default:
			return fmt.Errorf("unknown target %q (want stave or tgt)", key)
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
			b.note("%s: filling the LU through iSCSI failed (%v); wrote the backing file directly", b.title(t), err)
			b.logf("%s: fill through iSCSI failed: %v", t.Key(), err)
		}
		if err := fillFile(t.BackingFile()); err != nil {
			b.note("%s: could not fill the backing file: %v", b.title(t), err)
			continue
		}
		b.logf("%s: filled %s in %.1fs", t.Key(), t.BackingFile(), time.Since(start).Seconds())
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
		if err := warmFile(t.BackingFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
			b.logf("%s: warming %s: %v", t.Key(), t.BackingFile(), err)
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
	if err != nil {
		b.logf("%-5s %-18s %s: FAILED: %v", t.Key(), cell.Name, what, err)
	} else {
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
	return "stave " + rev + ", file-backed volume"
}
