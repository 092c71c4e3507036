package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// fioJob is one raw workload run with fio on a set of files at once, one
// fio job per file, reported as their aggregate (group_reporting).
type fioJob struct {
	RW     string // fio rw=: randwrite, randread, write, read
	BS     int    // bytes per I/O
	Depth  int    // iodepth per file
	Direct bool   // O_DIRECT (libaio); otherwise buffered (io_uring)
	// SyncEvery, when non-zero, issues fdatasync after that many writes
	// (fio fdatasync=), like the pool's group commit.
	SyncEvery int
}

// write reports whether the job writes.
func (j fioJob) write() bool { return j.RW == "write" || j.RW == "randwrite" }

// args returns fio's command line for the job on files of size bytes each,
// time-bound to d (or, with d == 0, one pass over each file).
func (j fioJob) args(files []string, size int64, d time.Duration) []string {
	engine, direct := "io_uring", "0"
	if j.Direct {
		engine, direct = "libaio", "1"
	}
	a := []string{"--output-format=json", "--group_reporting", "--ioengine=" + engine, "--direct=" + direct,
		"--rw=" + j.RW, "--bs=" + strconv.Itoa(j.BS), "--iodepth=" + strconv.Itoa(j.Depth),
		"--size=" + strconv.FormatInt(size, 10), "--randrepeat=0", "--buffer_pattern=0xa5"}
	if d > 0 {
		a = append(a, "--time_based", "--runtime="+strconv.Itoa(max(1, int(d/time.Second))))
	}
	if j.SyncEvery > 0 {
		a = append(a, "--fdatasync="+strconv.Itoa(j.SyncEvery))
	}
	for i, f := range files {
		a = append(a, "--name=f"+strconv.Itoa(i), "--filename="+f)
	}
	return a
}

// fioOutput is the part of fio's JSON output (--output-format=json) that
// the benchmark reads.
type fioOutput struct {
	FioVersion string `json:"fio version"`
	Jobs       []struct {
		JobName string  `json:"jobname"`
		Error   int     `json:"error"`
		Read    fioRate `json:"read"`
		Write   fioRate `json:"write"`
		UsrCPU  float64 `json:"usr_cpu"` // percent of one CPU over the job's runtime
		SysCPU  float64 `json:"sys_cpu"`
	} `json:"jobs"`
}

// fioRate is one direction of a fio job.
type fioRate struct {
	IOPS    float64 `json:"iops"`
	BWBytes float64 `json:"bw_bytes"` // bytes per second
	IOBytes float64 `json:"io_bytes"` // bytes moved
	Runtime float64 `json:"runtime"`  // ms
}

// parseFio returns the aggregate IOPS and bytes moved of the direction
// the job measures from fio's JSON output.
func parseFio(out []byte, write bool) (iops, bytes float64, elapsed time.Duration, err error) {
	var o fioOutput
	if err := json.Unmarshal(out, &o); err != nil {
		return 0, 0, 0, fmt.Errorf("fio: bad JSON output: %w", err)
	}
	if len(o.Jobs) == 0 {
		return 0, 0, 0, errors.New("fio: no jobs in the output")
	}
	j := o.Jobs[0]
	if j.Error != 0 {
		return 0, 0, 0, fmt.Errorf("fio: job %s failed with error %d", j.JobName, j.Error)
	}
	r := j.Read
	if write {
		r = j.Write
	}
	if r.IOPS <= 0 || r.Runtime <= 0 {
		return 0, 0, 0, fmt.Errorf("fio: job %s moved nothing", j.JobName)
	}
	return r.IOPS, r.IOBytes, time.Duration(r.Runtime * float64(time.Millisecond)), nil
}

// runFio runs job on files and returns its aggregate rate.
func (c Client) runFio(ctx context.Context, job fioJob, files []string, size int64, d time.Duration) (Result, error) {
	limit := d + 2*time.Minute
	out, err := c.run(ctx, limit, "fio", job.args(files, size, d)...)
	if err != nil {
		if msg := fioErrors(out); msg != "" {
			err = fmt.Errorf("%w (%s)", err, msg)
		}
		return Result{Output: out}, err
	}
	// fio may print warnings before the JSON document.
	js := []byte(out)
	if i := indexJSON(js); i > 0 {
		js = js[i:]
	}
	iops, _, el, err := parseFio(js, job.write())
	if err != nil {
		return Result{Output: out}, err
	}
	return Result{Ops: iops * el.Seconds(), Elapsed: el, Output: out}, nil
}

// indexJSON returns the offset of the first line that starts a JSON
// object, or -1.
func indexJSON(b []byte) int {
	for i := 0; i < len(b); i++ {
		if b[i] == '{' && (i == 0 || b[i-1] == '\n') {
			return i
		}
	}
	return -1
}

// fioErrors returns fio's error lines ("fio: ..." and "...: err=N") from
// its output, joined, for error messages: the JSON document that ends the
// output says little.
func fioErrors(out string) string {
	var msgs []string
	for line := range strings.SplitSeq(out, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "fio:") || strings.Contains(line, "err=") {
			msgs = append(msgs, line)
		}
	}
	if len(msgs) > 3 {
		msgs = msgs[:3]
	}
	return strings.Join(msgs, "; ")
}
