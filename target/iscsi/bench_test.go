package iscsi

import (
	"context"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"stave.dev/stave/target/scsi"
)

// nullDev answers READ with a shared zero buffer and WRITE with GOOD, to
// measure the transport alone.
type nullDev struct{ zero []byte }

func (d *nullDev) Execute(ctx context.Context, t *scsi.Task) scsi.Result {
	if t.CDB[0] == 0x28 || t.CDB[0] == 0x88 {
		return scsi.Result{Data: d.zero[:t.ExpectedDataIn]}
	}
	return scsi.Result{}
}
func (d *nullDev) TaskManagement(context.Context, scsi.Nexus, scsi.TMF, uint64, uint64) scsi.TMFResponse {
	return scsi.TMFComplete
}
func (d *nullDev) NexusLost(scsi.Nexus) {}

// benchQD runs b.N 4 KiB commands at queue depth qd over loopback TCP.
func benchQD(b *testing.B, qd int, write bool) {
	// STAVE_BENCH_ADDR=host:port and STAVE_BENCH_LUN=n run the same client
	// against another target (for example tgtd) for comparison.
	var ts *testServer
	addr, lun := os.Getenv("STAVE_BENCH_ADDR"), 0
	if addr == "" {
		dev := &nullDev{zero: make([]byte, 1<<20)}
		ts = startServer(b, func(c *Config) { c.Targets = staticTargets{{Name: testTarget, Device: dev}} })
		addr = ts.addr
	} else {
		lun, _ = strconv.Atoi(os.Getenv("STAVE_BENCH_LUN"))
	}
	ti := newInitiator(b, dialTCP(b, addr), 1)
	ti.login(testTarget)
	ti.nc.SetDeadline(time.Time{})
	// Clear the power-on unit attention.
	for range 3 {
		h := ti.scsiHeader([]byte{0, 0, 0, 0, 0, 0}, false, false, 0, true)
		h[offLUN+1] = byte(lun)
		ti.send(h, nil, nil)
		if rh, _ := ti.recv(); rh[offByte3] == 0 {
			break
		}
	}
	payload := make([]byte, 4096)
	var wmu sync.Mutex
	wbuf := make([]byte, 0, 8192)
	send := func() {
		wmu.Lock()
		defer wmu.Unlock()
		var h BHS
		if write {
			h = ti.scsiHeader(cdb10(0x2a, 0, 8), false, true, 4096, true)
			h[offLUN+1] = byte(lun)
			wbuf = AppendPDU(wbuf[:0], h, nil, payload, false, false)
		} else {
			h = ti.scsiHeader(cdb10(0x28, 0, 8), true, false, 4096, true)
			h[offLUN+1] = byte(lun)
			wbuf = AppendPDU(wbuf[:0], h, nil, nil, false, false)
		}
		if _, err := ti.nc.Write(wbuf); err != nil {
			b.Error(err)
		}
	}
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	inflight := 0
	for ; inflight < qd && inflight < b.N; inflight++ {
		send()
	}
	sent := inflight
	for done := 0; done < b.N; {
		p, err := ti.r.ReadPDU()
		if err != nil {
			b.Fatal(err)
		}
		h := p.BHS
		if h.Opcode() == OpSCSIResponse || (h.Opcode() == OpSCSIDataIn && h.Flags()&dataInFlagStatus != 0) {
			if h.Opcode() == OpSCSIResponse && h[offByte3] != 0 {
				b.Fatalf("status %d", h[offByte3])
			}
			done++
			if sent < b.N {
				send()
				sent++
			}
		}
	}
	b.StopTimer()
	if ts == nil {
		ti.logout()
		return
	}
	if n := ts.srv.stats.batches.Load(); n > 0 {
		b.ReportMetric(float64(ts.srv.stats.pdus.Load())/float64(n), "pdus/writev")
	}
	ti.logout()
}

func BenchmarkRead4KQD32(b *testing.B)  { benchQD(b, 32, false) }
func BenchmarkWrite4KQD32(b *testing.B) { benchQD(b, 32, true) }
func BenchmarkRead4KQD1(b *testing.B)   { benchQD(b, 1, false) }

// TestHotPathAllocs pins the zero-allocation I/O path: a 4 KiB write and a
// 4 KiB read round trip allocate nothing in the server (the client below
// reuses its buffers too).
func TestHotPathAllocs(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("short or -race")
	}
	dev := &nullDev{zero: make([]byte, 1<<20)}
	ts := startServer(t, func(c *Config) { c.Targets = staticTargets{{Name: testTarget, Device: dev}} })
	ti := newInitiator(t, dialTCP(t, ts.addr), 1)
	ti.login(testTarget)
	wh := ti.scsiHeader(cdb10(0x2a, 0, 8), false, true, 4096, true)
	rh := ti.scsiHeader(cdb10(0x28, 0, 8), true, false, 4096, true)
	ti.cmdSN -= 2 // roundTrip numbers the commands
	ti.nc.SetDeadline(time.Now().Add(time.Minute))
	wire := make([]byte, 0, 8192)
	payload := make([]byte, 4096)
	roundTrip := func(h BHS, data []byte) {
		h.put32(offField24, ti.cmdSN)
		h.put32(offITT, ti.cmdSN)
		ti.cmdSN++
		wire = AppendPDU(wire[:0], h, nil, data, false, false)
		if _, err := ti.nc.Write(wire); err != nil {
			t.Fatal(err)
		}
		for {
			p, err := ti.r.ReadPDU()
			if err != nil {
				t.Fatal(err)
			}
			if p.BHS.Opcode() == OpSCSIResponse || p.BHS.Flags()&dataInFlagStatus != 0 {
				return
			}
		}
	}
	for range 100 { // warm up pools and workers
		roundTrip(wh, payload)
		roundTrip(rh, nil)
	}
	allocs := testing.AllocsPerRun(500, func() {
		roundTrip(wh, payload)
		roundTrip(rh, nil)
	})
	t.Logf("%.2f allocs per round trip", allocs)
	if allocs > 0.2 {
		t.Fatalf("%.2f allocations per write+read round trip", allocs)
	}
	ti.logout()
}

// TestServeForBench serves the null device on STAVE_BENCH_SERVE (host:port)
// until the test binary is killed or times out, so that the benchmark
// client can run in another process (STAVE_BENCH_ADDR) and the server's CPU
// time be measured alone.
func TestServeForBench(t *testing.T) {
	addr := os.Getenv("STAVE_BENCH_SERVE")
	if addr == "" {
		t.Skip("STAVE_BENCH_SERVE not set")
	}
	dev := &nullDev{zero: make([]byte, 1<<20)}
	srv, err := NewServer(Config{Portals: []Portal{{Listen: addr}}, Targets: staticTargets{{Name: testTarget, Device: dev}}})
	if err != nil {
		t.Fatal(err)
	}
	d := 10 * time.Minute
	if s, err := strconv.Atoi(os.Getenv("STAVE_BENCH_SECONDS")); err == nil {
		d = time.Duration(s) * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := srv.Serve(ctx); err != nil {
		t.Fatal(err)
	}
}
