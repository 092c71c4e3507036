package main

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

// fioJSON is fio 3.33's --output-format=json, trimmed to what parseFio reads
// (and a warning line before it, as fio prints some on stderr).
const fioJSON = `fio: some warning
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "f0",
      "error" : 0,
      "read" : {"io_bytes" : 0, "bw_bytes" : 0, "iops" : 0.000000, "runtime" : 0},
      "write" : {"io_bytes" : 141586432, "bw_bytes" : 141450986, "iops" : 34533.932136, "runtime" : 1002},
      "usr_cpu" : 1.449275,
      "sys_cpu" : 15.142429
    }
  ]
}
`

func TestParseFio(t *testing.T) {
	js := []byte(fioJSON)
	js = js[indexJSON(js):]
	iops, b, el, err := parseFio(js, true)
	if err != nil || iops != 34533.932136 || b != 141586432 || el != 1002*time.Millisecond {
		t.Fatalf("parseFio = %v, %v, %v, %v", iops, b, el, err)
	}
	if _, _, _, err := parseFio(js, false); err == nil {
		t.Fatal("parseFio accepted a job that read nothing")
	}
	if _, _, _, err := parseFio([]byte(`{"jobs":[{"jobname":"f0","error":5}]}`), true); err == nil {
		t.Fatal("parseFio accepted a failed job")
	}
	if _, _, _, err := parseFio([]byte("fio: no such engine\n"), true); err == nil {
		t.Fatal("parseFio accepted garbage")
	}
	if i := indexJSON([]byte("no json")); i != -1 {
		t.Fatalf("indexJSON = %d", i)
	}
}

func TestFioJobArgs(t *testing.T) {
	cs, _ := selectCells("randwrite-4k-qd32")
	j := fioJobFor(cs[0], false)
	got := strings.Join(j.args([]string{"/w/dev0", "/w/dev1"}, 1<<30, 3*time.Second), " ")
	for _, want := range []string{"--ioengine=io_uring --direct=0 --rw=randwrite --bs=4096 --iodepth=32 --size=1073741824",
		"--time_based --runtime=3 --fdatasync=32", "--name=f0 --filename=/w/dev0 --name=f1 --filename=/w/dev1"} {
		if !strings.Contains(got, want) {
			t.Errorf("args %q lack %q", got, want)
		}
	}
	cs, _ = selectCells("seqread-1m-qd8")
	j = fioJobFor(cs[0], true)
	if j.RW != "read" || !j.Direct || j.SyncEvery != 0 || j.write() {
		t.Errorf("fioJobFor(seqread, direct) = %+v", j)
	}
	if a := strings.Join(j.args([]string{"f"}, 1<<20, 0), " "); strings.Contains(a, "time_based") || !strings.Contains(a, "--ioengine=libaio --direct=1") {
		t.Errorf("one-pass direct args %q", a)
	}
}

// goBenchOutput is `go test -bench` output of BenchmarkPool.
const goBenchOutput = `goos: linux
goarch: amd64
pkg: stave.dev/stave/pool
cpu: AMD EPYC
BenchmarkPool/1+0/4KiB-randwrite-2         	   12000	     98765 ns/op	  41.47 MB/s	     10125 iops
BenchmarkPool/1+0/1MiB-seqwrite-2          	     130	   7812345 ns/op	 134.22 MB/s
BenchmarkPool/2+1/1MiB-seqread             	     200	   2000000 ns/op	 524.29 MB/s
BenchmarkPool/2+1/other-2                  	     200	   2000000 ns/op
PASS
ok  	stave.dev/stave/pool	12.345s
`

func TestParseGoBench(t *testing.T) {
	res := parseGoBench(goBenchOutput)
	if len(res) != 4 {
		t.Fatalf("parseGoBench: %d results, want 4: %+v", len(res), res)
	}
	want := goBenchResult{Name: "BenchmarkPool/1+0/4KiB-randwrite", N: 12000, NsPerOp: 98765, MBps: 41.47, IOPS: 10125}
	if res[0] != want {
		t.Errorf("res[0] = %+v, want %+v", res[0], want)
	}
	if res[2].Name != "BenchmarkPool/2+1/1MiB-seqread" || res[2].MBps != 524.29 || res[2].IOPS != 0 {
		t.Errorf("res[2] = %+v", res[2])
	}
}

func TestSummarise(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Microsecond)
	}
	l := summarise(d)
	if l.P50 != 50 || l.P99 != 99 || l.Mean != 50.5 || l.Max != 100 {
		t.Errorf("summarise = %+v", l)
	}
	if l := summarise([]time.Duration{7 * time.Microsecond}); l.P50 != 7 || l.P99 != 7 {
		t.Errorf("summarise one = %+v", l)
	}
	if rank(1, 0.5) != 0 || rank(3, 0.99) != 2 || rank(3, 0.5) != 1 {
		t.Error("rank")
	}
}

func TestParsePolicy(t *testing.T) {
	if k, m, err := parsePolicy("4+2"); err != nil || k != 4 || m != 2 {
		t.Fatalf("parsePolicy = %d, %d, %v", k, m, err)
	}
	for _, bad := range []string{"", "2", "0+1", "a+1", "2+-1"} {
		if _, _, err := parsePolicy(bad); err == nil {
			t.Errorf("parsePolicy(%q) succeeded", bad)
		}
	}
}

func TestMountOf(t *testing.T) {
	mounts := "/dev/vda / ext4 rw 0 0\nproc /proc proc rw 0 0\ntmpfs /tmp tmpfs rw 0 0\n/dev/vdb /tmp/a\\040b xfs rw 0 0\n"
	for path, want := range map[string]string{
		"/work/x":    "ext4 (/dev/vda on /)",
		"/tmp/bench": "tmpfs (tmpfs on /tmp)",
		"/tmpfoo":    "ext4 (/dev/vda on /)",
		"/tmp/a b/c": "xfs (/dev/vdb on /tmp/a b)",
	} {
		if got := mountOf(mounts, path); got != want {
			t.Errorf("mountOf(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestPoolReportMarkdown(t *testing.T) {
	pr := PoolReport{Command: "go run ./tools/bench -layouts 1+0,2+1", Runs: 1, RunTime: time.Second, FioTime: time.Second,
		DevSize: 2 << 30, VolSize: 1 << 30, FS: "ext4"}
	add := func(l *LayoutResult, target, cell string, iops float64) {
		l.Samples = append(l.Samples, Sample{Target: target, Cell: cell, Run: 1, IOPS: iops, Bytes: iops * 4096, CPU: 1})
	}
	one := LayoutResult{Policy: "1+0", K: 1}
	add(&one, targetRawDirect, "randwrite-4k-qd32", 50000)
	add(&one, targetRawBuffered, "randwrite-4k-qd32", 25000)
	two := LayoutResult{Policy: "2+1", K: 2, M: 1}
	add(&two, targetISCSI, "randwrite-4k-qd32", 30000)
	add(&two, targetRawDirect, "seqwrite-1m-qd8", 1500) // 1 MiB I/Os: 1500 MiB/s
	add(&two, targetISCSI, "seqwrite-1m-qd8", 900)
	pr.Layouts = []LayoutResult{one, two}
	md := pr.Markdown()
	for _, want := range []string{
		"| 2+1 | 1 MiB sequential write, QD8 (MiB/s) | 1500 | – | – | 900 | 0.60 | – |",
		"| 1 MiB sequential write ≥ 80% of the data devices' raw aggregate | 2+1 | 900 MiB/s | – MiB/s | 90% of 1000 MiB/s | – of 0.00 MiB/s | **met** |",
		"| 4 KiB random write IOPS on 2+1 ≥ the raw single file's (1+0's file) | 2+1 | 30.0k | – | 60% of 50.0k | 120% of 25.0k | **not met** |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestWarmFileSparse(t *testing.T) {
	path := t.TempDir() + "/sparse"
	if err := createFile(path, 64<<20); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{1}, 1<<20), 32<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := warmFile(path); err != nil {
		t.Fatalf("warmFile: %v", err)
	}
	if err := warmFile(path + ".missing"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("warmFile of a missing file: %v", err)
	}
}

func TestFioErrors(t *testing.T) {
	out := "fio: io_u error on file /w/dev3: No space left on device: write offset=1, buflen=1048576\n" +
		"f3: (groupid=0, jobs=1): err=28 (file:io_u.c:1889, func=io_u error, error=No space left on device): pid=1\n{\n}\n"
	got := fioErrors(out)
	if !strings.Contains(got, "No space left on device") || !strings.Contains(got, "err=28") {
		t.Errorf("fioErrors = %q", got)
	}
	if fioErrors("{\n}\n") != "" {
		t.Error("fioErrors found errors in clean output")
	}
}

func TestRemoveData(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"runs.log", "tgt.img", "pool-dev0", "stave-data/volumes/bench/data", "layout-2-1/dev0", "layout-2-1/iscsi-serve.log"} {
		if err := os.MkdirAll(dir+"/"+p[:strings.LastIndex(p, "/")+1], 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dir+"/"+p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	removeData(dir)
	for p, want := range map[string]bool{"runs.log": true, "layout-2-1/iscsi-serve.log": true, "tgt.img": false,
		"pool-dev0": false, "stave-data": false, "layout-2-1/dev0": false} {
		if _, err := os.Stat(dir + "/" + p); (err == nil) != want {
			t.Errorf("%s: exists %v, want %v", p, err == nil, want)
		}
	}
}
