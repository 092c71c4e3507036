package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Tool is the client program that drives a cell.
type Tool uint8

const (
	// ToolPerf is libiscsi's iscsi-perf (reads; time-bound runs).
	ToolPerf Tool = iota
	// ToolQemuImg is `qemu-img bench -w` (writes; count-bound runs).
	ToolQemuImg
	// ToolLatency is this program's own initiator (initiator.go): one I/O
	// at a time, each timed, for percentiles; time-bound runs.
	ToolLatency
)

// String returns the program name of t.
func (t Tool) String() string {
	switch t {
	case ToolPerf:
		return "iscsi-perf"
	case ToolQemuImg:
		return "qemu-img bench"
	case ToolLatency:
		return "latency client"
	}
	return fmt.Sprintf("Tool(%d)", uint8(t))
}

// Cell is one row of the matrix: an I/O pattern run against every target.
type Cell struct {
	Name      string // short key, used in logs and -cells
	Title     string // row label in the report
	Tool      Tool
	BlockSize int  // bytes per I/O
	Depth     int  // I/Os in flight
	Random    bool // random (reads) or strided (writes) offsets
	Write     bool
	IOPS      bool // report IOPS (small blocks) rather than MiB/s
}

// strideBlocks is the step, in 4 KiB blocks, of the "random" writes:
// qemu-img bench has no random mode, only a fixed step (-S) that wraps at
// the end of the LU. 257 is prime to the LU's block count (a power of two),
// so consecutive writes land 1 MiB + 4 KiB apart and every block is hit
// once before any is hit twice: no two neighbouring writes merge.
const strideBlocks = 257

// fillPattern is the byte every write carries (qemu-img bench --pattern),
// so that no target can take a shortcut for zero blocks.
const fillPattern = 0xa5

// defaultCells returns the benchmark matrix, in run order.
func defaultCells() []Cell {
	return []Cell{
		{Name: "randread-4k-qd1", Title: "4 KiB random read, QD1", Tool: ToolPerf, BlockSize: 4096, Depth: 1, Random: true, IOPS: true},
		{Name: "randread-4k-qd32", Title: "4 KiB random read, QD32", Tool: ToolPerf, BlockSize: 4096, Depth: 32, Random: true, IOPS: true},
		{Name: "seqread-128k-qd8", Title: "128 KiB sequential read, QD8", Tool: ToolPerf, BlockSize: 128 << 10, Depth: 8},
		{Name: "seqread-1m-qd8", Title: "1 MiB sequential read, QD8", Tool: ToolPerf, BlockSize: 1 << 20, Depth: 8},
		{Name: "randwrite-4k-qd32", Title: "4 KiB random (strided) write, QD32", Tool: ToolQemuImg, BlockSize: 4096, Depth: 32, Random: true, Write: true, IOPS: true},
		{Name: "randwrite-4k-qd1", Title: "4 KiB random (strided) write, QD1", Tool: ToolQemuImg, BlockSize: 4096, Depth: 1, Random: true, Write: true, IOPS: true},
		{Name: "seqwrite-1m-qd8", Title: "1 MiB sequential write, QD8", Tool: ToolQemuImg, BlockSize: 1 << 20, Depth: 8, Write: true},
		{Name: "lat-read-4k", Title: "4 KiB random read, QD1", Tool: ToolLatency, BlockSize: 4096, Depth: 1, Random: true, IOPS: true},
		{Name: "lat-write-4k", Title: "4 KiB random write, QD1", Tool: ToolLatency, BlockSize: 4096, Depth: 1, Random: true, Write: true, IOPS: true},
	}
}

// Result is the outcome of one client run.
type Result struct {
	Ops     float64       // I/Os completed
	Elapsed time.Duration // measured by the client, excluding login and the final flush
	Output  string        // the client's output, for the log
	Lat     Latencies     // ToolLatency runs only
}

// IOPS returns the completed I/Os per second.
func (r Result) IOPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return r.Ops / r.Elapsed.Seconds()
}

// errStall marks a client that did not finish within its time limit.
var errStall = errors.New("bench: client stalled (killed at its time limit)")

// Client runs the benchmark programs against an iSCSI URL.
type Client struct {
	InitiatorName string
	// Grace is how long past its nominal duration a client may run
	// before it is sent SIGTERM (then SIGKILL 5 s later).
	Grace time.Duration
	// Nice is the niceness the clients run at (0: unchanged).
	Nice int
}

// Perf runs iscsi-perf for whole seconds d against url. libiscsi 1.19's
// iscsi-perf never ends after a stall even with -t, hence the limit.
func (c Client) Perf(ctx context.Context, url string, cell Cell, blockSize int, d time.Duration) (Result, error) {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	args := []string{"-i", c.InitiatorName, "-m", strconv.Itoa(cell.Depth),
		"-b", strconv.Itoa(cell.BlockSize / blockSize), "-t", strconv.Itoa(secs)}
	if cell.Random {
		args = append(args, "-r")
	}
	args = append(args, url)
	out, err := c.run(ctx, time.Duration(secs)*time.Second+c.Grace, "iscsi-perf", args...)
	if err != nil {
		return Result{Output: out}, err
	}
	iops, err := parsePerf(out)
	if err != nil {
		return Result{Output: out}, err
	}
	return Result{Ops: iops * float64(secs), Elapsed: time.Duration(secs) * time.Second, Output: out}, nil
}

// QemuWrite runs `qemu-img bench -w` with count writes against url.
// limit bounds the whole command, including the flush at close.
func (c Client) QemuWrite(ctx context.Context, url string, cell Cell, count int, limit time.Duration) (Result, error) {
	step := cell.BlockSize
	if cell.Random {
		step = cell.BlockSize * strideBlocks
	}
	args := []string{"bench", "-w", "-f", "raw", "-t", "none",
		"-d", strconv.Itoa(cell.Depth), "-s", strconv.Itoa(cell.BlockSize), "-S", strconv.Itoa(step),
		"-c", strconv.Itoa(count), "--pattern=" + strconv.Itoa(fillPattern), url}
	out, err := c.run(ctx, limit+c.Grace, "qemu-img", args...)
	if err != nil {
		return Result{Output: out}, err
	}
	el, err := parseQemuImg(out)
	if err != nil {
		return Result{Output: out}, err
	}
	return Result{Ops: float64(count), Elapsed: el, Output: out}, nil
}

// run runs name args with a hard time limit and returns its combined
// output; a non-zero exit or a kill at the limit is an error.
func (c Client) run(ctx context.Context, limit time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmdName, cmdArgs := niced(c.Nice, name, args)
	cmd := exec.CommandContext(ctx, cmdName, cmdArgs...)
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	out := buf.String()
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		return out, fmt.Errorf("%s: %w after %v", name, errStall, limit)
	case err != nil && strings.Contains(out, "Unknown protocol 'iscsi'"):
		return out, fmt.Errorf("%s: no iSCSI driver (apt-get install qemu-block-extra): %s", name, lastLine(out))
	case err != nil:
		return out, fmt.Errorf("%s: %w: %s", name, err, lastLine(out))
	}
	return out, nil
}

var (
	perfAvgRE    = regexp.MustCompile(`iops average ([0-9]+)`)
	qemuImgRunRE = regexp.MustCompile(`Run completed in ([0-9.]+) seconds`)
)

// parsePerf returns the average IOPS of a finished iscsi-perf run: the
// last "iops average N" (progress lines end in \r, the summary follows
// them) and a "finished." line.
func parsePerf(out string) (float64, error) {
	if !strings.Contains(out, "finished.") {
		return 0, fmt.Errorf("iscsi-perf: no \"finished.\" in its output: %s", lastLine(out))
	}
	m := perfAvgRE.FindAllStringSubmatch(out, -1)
	if len(m) == 0 {
		return 0, fmt.Errorf("iscsi-perf: no \"iops average\" in its output: %s", lastLine(out))
	}
	v, err := strconv.ParseFloat(m[len(m)-1][1], 64)
	if err != nil {
		return 0, fmt.Errorf("iscsi-perf: %w", err)
	}
	return v, nil
}

// parseQemuImg returns the run time qemu-img bench reports (it excludes
// opening the image and the flush at close).
func parseQemuImg(out string) (time.Duration, error) {
	m := qemuImgRunRE.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("qemu-img bench: no \"Run completed\" in its output: %s", lastLine(out))
	}
	s, err := strconv.ParseFloat(m[1], 64)
	if err != nil || s <= 0 || math.IsInf(s, 0) {
		return 0, fmt.Errorf("qemu-img bench: bad run time %q", m[1])
	}
	return time.Duration(s * float64(time.Second)), nil
}

// lastLine returns the last non-empty line of out (progress output
// separated by \r counts as lines), trimmed, for error messages.
func lastLine(out string) string {
	lines := strings.FieldsFunc(out, func(r rune) bool { return r == '\n' || r == '\r' })
	for i := len(lines) - 1; i >= 0; i-- {
		if s := strings.TrimSpace(lines[i]); s != "" {
			return s
		}
	}
	return "(no output)"
}
