package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// goBenchResult is one result line of `go test -bench`.
type goBenchResult struct {
	Name    string  // sub-benchmark path without the GOMAXPROCS suffix, e.g. "BenchmarkPool/2+1/4KiB-randwrite"
	N       int     // iterations
	NsPerOp float64 //
	MBps    float64 // SetBytes throughput, 10^6 bytes per second; 0 if absent
	IOPS    float64 // the "iops" metric; 0 if absent
}

var goBenchLineRE = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+(\d+)\s+([0-9.]+) ns/op(.*)$`)

// parseGoBench returns the result lines of `go test -bench` output.
func parseGoBench(out string) []goBenchResult {
	var res []goBenchResult
	for line := range strings.SplitSeq(out, "\n") {
		m := goBenchLineRE.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		r := goBenchResult{Name: m[1]}
		r.N, _ = strconv.Atoi(m[2])
		r.NsPerOp, _ = strconv.ParseFloat(m[3], 64)
		f := strings.Fields(m[4])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "MB/s":
				r.MBps = v
			case "iops":
				r.IOPS = v
			}
		}
		res = append(res, r)
	}
	return res
}

// goBenchCells maps BenchmarkPool's sub-benchmark names to the cells of
// the layout table.
var goBenchCells = map[string]string{
	"4KiB-randwrite": "randwrite-4k-qd32",
	"4KiB-randread":  "randread-4k-qd32",
	"1MiB-seqwrite":  "seqwrite-1m-qd8",
	"1MiB-seqread":   "seqread-1m-qd8",
}

// runGoBench runs pool's BenchmarkPool for the layouts in src (the module
// root) with its temporary files under tmp, count times, and returns the
// samples keyed by layout ("2+1"), at niceness nice (0: unchanged).
func runGoBench(ctx context.Context, src, tmp string, layouts []string, benchtime time.Duration, count, nice int) (map[string][]Sample, string, error) {
	quoted := make([]string, len(layouts))
	for i, l := range layouts {
		quoted[i] = strings.ReplaceAll(l, "+", `\+`)
	}
	pattern := "^BenchmarkPool$/^(" + strings.Join(quoted, "|") + ")$/"
	args := []string{"test", "-run", "^$", "-bench", pattern, "-benchtime", benchtime.String(),
		"-count", strconv.Itoa(count), "-timeout", "30m", "./pool"}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, "", err
	}
	name, nargs := niced(nice, "go", args)
	cmd := exec.CommandContext(ctx, name, nargs...)
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	outb, err := cmd.CombinedOutput()
	out := string(outb)
	if err != nil {
		return nil, out, fmt.Errorf("go %s: %w: %s", strings.Join(args, " "), err, lastLine(out))
	}
	samples := map[string][]Sample{}
	runs := map[string]int{}
	for _, r := range parseGoBench(out) {
		parts := strings.Split(r.Name, "/")
		if len(parts) != 3 || parts[0] != "BenchmarkPool" {
			continue
		}
		cell, ok := goBenchCells[parts[2]]
		if !ok {
			continue
		}
		layout := parts[1]
		bs := 4096.0
		if strings.HasPrefix(parts[2], "1MiB") {
			bs = 1 << 20
		}
		iops := r.IOPS
		if iops == 0 && r.MBps > 0 {
			iops = r.MBps * 1e6 / bs
		}
		runs[layout+cell]++
		samples[layout] = append(samples[layout], Sample{Target: targetGoBench, Cell: cell, Run: runs[layout+cell],
			IOPS: iops})
	}
	return samples, out, nil
}
