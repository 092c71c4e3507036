package main

import (
	"context"
	"errors"
	"math"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// perfOutput is iscsi-perf 1.19's output: progress lines end in \r.
const perfOutput = "iscsi-perf version 0.1 - (c) 2014-2015 by Peter Lieven <pl@kamp.de>\n\n" +
	"connected to iscsi://127.0.0.1:3282/iqn.2026-11.dev.stave:bench-tgt/1\n" +
	"capacity is 4194304 blocks or 2147483648 byte (2048 MB)\n" +
	"performing RANDOM READ with 1 parallel requests\n" +
	"FIXED transfer size of 8 blocks (4096 byte)\n" +
	"will run for 3 seconds.\n\n" +
	"00:00:02 - lba 1459596, iops current 13767 (53 MB/s), iops average 13767 (53 MB/s), in_flight 1, busy 0        \r" +
	"00:00:01 - lba 4098254, iops current 6495 (25 MB/s), iops average 10070 (39 MB/s), in_flight 1, busy 0        \r" +
	"iops average 9009 (35 MB/s)                                                        \n\nfinished.\n"

func TestParsePerf(t *testing.T) {
	v, err := parsePerf(perfOutput)
	if err != nil || v != 9009 {
		t.Fatalf("parsePerf = %v, %v; want 9009", v, err)
	}
	// Killed after a stall: progress lines but no summary.
	stalled := perfOutput[:strings.Index(perfOutput, "iops average 9009")]
	if _, err := parsePerf(stalled); err == nil {
		t.Fatal("parsePerf accepted output without \"finished.\"")
	}
	if _, err := parsePerf("Failed to connect\nfinished.\n"); err == nil {
		t.Fatal("parsePerf accepted output without an average")
	}
}

func TestParseQemuImg(t *testing.T) {
	out := "Sending 20000 write requests, 4096 bytes each, 32 in parallel (starting at offset 0, step size 1052672)\n" +
		"Run completed in 3.595 seconds.\n"
	d, err := parseQemuImg(out)
	if err != nil || d != 3595*time.Millisecond {
		t.Fatalf("parseQemuImg = %v, %v; want 3.595s", d, err)
	}
	for _, bad := range []string{"", "qemu-img: Could not open 'iscsi://…': Failed to connect\n", "Run completed in 0 seconds.\n"} {
		if _, err := parseQemuImg(bad); err == nil {
			t.Errorf("parseQemuImg(%q) succeeded", bad)
		}
	}
}

func TestParseStatCPU(t *testing.T) {
	// A command name with a space and a parenthesis; utime 250, stime 150.
	stat := "4242 (st ave) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 150 0 0 20 0 9 0 100 0 0\n"
	v, err := parseStatCPU(stat, 100)
	if err != nil || v != 4 {
		t.Fatalf("parseStatCPU = %v, %v; want 4", v, err)
	}
	if _, err := parseStatCPU("4242 (x) S 1 2", 100); err == nil {
		t.Fatal("parseStatCPU accepted a short line")
	}
}

func TestParseReadCapacity(t *testing.T) {
	out := "RETURNED LOGICAL BLOCK ADDRESS:4194303\nLOGICAL BLOCK LENGTH IN BYTES:512\n" +
		"P_TYPE:0 PROT_EN:0\nLBPME:1 LBPRZ:1\nTotal size:2147483648\n"
	g, err := parseReadCapacity(out)
	if err != nil || g != (Geometry{BlockSize: 512, Size: 2 << 30}) {
		t.Fatalf("parseReadCapacity = %+v, %v", g, err)
	}
	if _, err := parseReadCapacity("iscsi_connect failed\n"); err == nil {
		t.Fatal("parseReadCapacity accepted garbage")
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"2GiB": 2 << 30, "256MiB": 256 << 20, "1048576": 1 << 20, "1024KiB": 1 << 20} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "2GB", "-1GiB", "1KiB"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded", in)
		}
	}
}

func TestSelectCells(t *testing.T) {
	all, err := selectCells("all")
	if err != nil || len(all) != len(defaultCells()) {
		t.Fatalf("selectCells(all) = %d cells, %v", len(all), err)
	}
	two, err := selectCells("seqread-1m-qd8,randread-4k-qd1")
	if err != nil || len(two) != 2 || two[0].Name != "seqread-1m-qd8" {
		t.Fatalf("selectCells = %+v, %v", two, err)
	}
	if _, err := selectCells("nope"); err == nil {
		t.Fatal("selectCells accepted an unknown cell")
	}
	names := map[string]bool{}
	for _, c := range all {
		if names[c.Name] {
			t.Errorf("duplicate cell %s", c.Name)
		}
		names[c.Name] = true
		if c.BlockSize%4096 != 0 || c.Depth < 1 {
			t.Errorf("cell %s: block size %d, depth %d", c.Name, c.BlockSize, c.Depth)
		}
		if c.Tool != ToolLatency && c.Write != (c.Tool == ToolQemuImg) {
			t.Errorf("cell %s: writes go through qemu-img, reads through iscsi-perf", c.Name)
		}
	}
}

func TestMedian(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median odd = %v", m)
	}
	if m := median([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Errorf("median even = %v", m)
	}
	if m := median(nil); !math.IsNaN(m) {
		t.Errorf("median empty = %v", m)
	}
}

func TestReplaceSection(t *testing.T) {
	doc := "# T\n\nintro\n\n" + beginMarker + "\nold\n" + endMarker + "\n\ntail\n"
	got := replaceSection(doc, "new\n")
	want := "# T\n\nintro\n\n" + beginMarker + "\nnew\n" + endMarker + "\n\ntail\n"
	if got != want {
		t.Errorf("replaceSection =\n%s\nwant\n%s", got, want)
	}
	if again := replaceSection(got, "new\n"); again != got {
		t.Errorf("replaceSection is not idempotent:\n%s", again)
	}
	got = replaceSection("# T\nintro", "new")
	if want := "# T\nintro\n\n" + beginMarker + "\nnew\n" + endMarker + "\n"; got != want {
		t.Errorf("replaceSection without markers =\n%q\nwant\n%q", got, want)
	}
}

func TestMarkdown(t *testing.T) {
	cells := defaultCells()[:2]
	lat, _ := selectCells("lat-read-4k")
	cells = append(cells, lat...)
	r := Report{
		Command: "go run ./tools/bench -out docs/benchmarks.md",
		Runs:    3, RunTime: 5 * time.Second, Size: 2 << 30, Fill: "filled",
		Machine: Machine{CPUs: 2, CPUModel: "AMD EPYC", Kernel: "6.1", MemTotal: "24 GiB",
			Start: time.Date(2026, 11, 22, 1, 0, 0, 0, time.UTC), Until: time.Date(2026, 11, 22, 1, 9, 0, 0, time.UTC)},
		Targets: []TargetInfo{{Key: "stave", Title: "Stave", Version: "stave abc"}, {Key: "pool", Title: "Pool", Version: "stave abc"},
			{Key: "tgt", Title: "tgt", Version: "tgtd 1.0.85"}},
		Cells: cells,
	}
	add := func(target, cell string, iops ...float64) {
		for i, v := range iops {
			r.Samples = append(r.Samples, Sample{Target: target, Cell: cell, Run: i + 1, IOPS: v, Bytes: 1 << 30, CPU: 2})
		}
	}
	add("stave", cells[0].Name, 20000, 22000, 21000)
	add("pool", cells[0].Name, 5000)
	add("tgt", cells[0].Name, 10000, 9000, 11000)
	add("tgt", cells[1].Name, 50000)
	r.Samples = append(r.Samples, Sample{Target: "stave", Cell: cells[1].Name, Run: 1, Err: "iscsi-perf: bench: client stalled"})
	for i, p := range []float64{40, 50, 45} {
		r.Samples = append(r.Samples, Sample{Target: "stave", Cell: "lat-read-4k", Run: i + 1, IOPS: 20000, P50: p, P99: 2 * p})
		r.Samples = append(r.Samples, Sample{Target: "tgt", Cell: "lat-read-4k", Run: i + 1, IOPS: 10000, P50: 2 * p, P99: 8 * p})
	}
	md := r.Markdown()
	for _, want := range []string{
		"| workload | Stave median (min–max) | Pool median (min–max) | tgt median (min–max) | Stave / tgt | Pool / tgt | Stave CPU s/GiB | Pool CPU s/GiB | tgt CPU s/GiB |",
		"| 4 KiB random read, QD1 (IOPS) | 21.0k (20.0k–22.0k) | 5000 | 10.0k (9000–11.0k) | 2.10 | 0.50 | 2.00 | 2.00 | 2.00 |",
		"| 4 KiB random read, QD32 (IOPS) | failed: iscsi-perf: bench: client stalled | – | 50.0k | – | – | – | – | 2.00 |",
		"| 4 KiB random read, QD1 | Stave | 45.0 (40.0–50.0) | 90.0 (80.0–100) | 20.0k | 0.50 | 0.25 |",
		"| 4 KiB random read, QD1 | tgt | 90.0 (80.0–100) | 360 (320–400) | 10.0k |  |  |",
		"Issue 7 goal, Pool ≥ 1.0× tgt at 4 KiB QD32: read –× (not measured).",
		"| date | 2026-11-22 01:00 – 01:09 UTC |",
		"Command: `go run ./tools/bench -out docs/benchmarks.md`",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

// TestClientStall checks that a client facing a target that accepts the
// connection and never answers is killed at its limit and reported as a
// stall, which is what libiscsi 1.19's iscsi-perf needs.
func TestClientStall(t *testing.T) {
	if _, err := exec.LookPath("iscsi-perf"); err != nil {
		t.Skip("iscsi-perf not installed")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				<-done
				c.Close()
			}()
		}
	}()
	url := "iscsi://" + ln.Addr().String() + "/iqn.2026-11.dev.stave:stall/0"
	c := Client{InitiatorName: "iqn.2026-11.dev.stave.bench:test", Grace: time.Second}
	_, err = c.Perf(context.Background(), url, defaultCells()[0], 512, time.Second)
	if !errors.Is(err, errStall) {
		t.Fatalf("Perf against a silent target: %v; want errStall", err)
	}
}
