package iscsi

import (
	"context"
	"encoding/binary"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"stave.dev/stave/internal/filedev"
	"stave.dev/stave/target/scsi"
)

// memBlockDev is a scsi.BlockDevice over a byte slice, to measure the
// target's own cost (transport, SCSI layer) without file-system calls.
type memBlockDev struct {
	mu   sync.RWMutex
	data []byte
}

func (d *memBlockDev) Size() int64 { return int64(len(d.data)) }

func (d *memBlockDev) ReadAt(_ context.Context, p []byte, off int64) error {
	d.mu.RLock()
	copy(p, d.data[off:])
	d.mu.RUnlock()
	return nil
}

func (d *memBlockDev) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	d.mu.Lock()
	copy(d.data[off:], p)
	d.mu.Unlock()
	return nil
}

func (d *memBlockDev) Flush(context.Context) error { return nil }

func (d *memBlockDev) Unmap(_ context.Context, off, n int64) error {
	d.mu.Lock()
	clear(d.data[off : off+n])
	d.mu.Unlock()
	return nil
}

// hotPathSize is the LU size of the full-path benchmarks and tests.
const hotPathSize = 64 << 20

// startLUServer serves a real scsi.Target with one 512-byte-block LU over
// an in-memory device (file=false) or a filedev sparse file in a
// temporary directory (file=true), as `stave serve` does for a file
// volume.
func startLUServer(tb testing.TB, file bool) *testServer {
	tb.Helper()
	var dev scsi.BlockDevice
	if file {
		path := filepath.Join(tb.TempDir(), "data")
		if err := filedev.Create(path, hotPathSize); err != nil {
			tb.Fatal(err)
		}
		fd, err := filedev.Open(path)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { fd.Close() })
		// Allocate the blocks so that reads hit data, not holes.
		buf := make([]byte, 1<<20)
		for i := range buf {
			buf[i] = 0xa5
		}
		for off := int64(0); off < hotPathSize; off += int64(len(buf)) {
			if err := fd.WriteAt(context.Background(), buf, off, false); err != nil {
				tb.Fatal(err)
			}
		}
		dev = fd
	} else {
		dev = &memBlockDev{data: make([]byte, hotPathSize)}
	}
	lu, err := scsi.NewLU(scsi.LUConfig{Device: dev, BlockSize: 512, PhysicalBlockSize: 512,
		Name: "vol0", Serial: "0001"})
	if err != nil {
		tb.Fatal(err)
	}
	tgt := scsi.NewTarget(scsi.TargetConfig{LUNs: map[uint64]*scsi.LU{0: lu}})
	return startServer(tb, func(c *Config) { c.Targets = staticTargets{{Name: testTarget, Device: tgt}} })
}

// hotClient is a QD1 client that reuses every buffer: one write per
// command (with immediate data for WRITE) and one ReadPDU per response PDU.
type hotClient struct {
	tb      testing.TB
	ti      *testInitiator
	rh, wh  BHS
	wire    []byte
	payload []byte
	rng     uint64
	blocks  uint32 // LU size in 512-byte blocks
}

func newHotClient(tb testing.TB, addr string) *hotClient {
	ti := newInitiator(tb, dialTCP(tb, addr), 1)
	ti.login(testTarget)
	ti.nc.SetDeadline(time.Time{})
	hc := &hotClient{tb: tb, ti: ti, wire: make([]byte, 0, 8192), payload: make([]byte, 4096),
		rng: 0x9e3779b97f4a7c15, blocks: hotPathSize / 512}
	hc.wh = ti.scsiHeader(cdb10(0x2a, 0, 8), false, true, 4096, true)
	hc.rh = ti.scsiHeader(cdb10(0x28, 0, 8), true, false, 4096, true)
	ti.cmdSN -= 2 // do numbers the commands
	// TEST UNIT READY until GOOD (no power-on unit attention is expected,
	// but a changed target may raise one).
	for range 3 {
		if r := ti.do([]byte{0, 0, 0, 0, 0, 0}, 0, nil, false); r.status == 0 {
			break
		}
	}
	return hc
}

// do sends one 4 KiB READ(10) or WRITE(10) at a pseudo-random 4 KiB
// aligned LBA and waits for its status.
func (hc *hotClient) do(write bool) {
	ti := hc.ti
	hc.rng ^= hc.rng << 13
	hc.rng ^= hc.rng >> 7
	hc.rng ^= hc.rng << 17
	lba := uint32(hc.rng%uint64(hc.blocks/8)) * 8
	h, data := hc.rh, []byte(nil)
	if write {
		h, data = hc.wh, hc.payload
	}
	h.put32(offITT, ti.cmdSN)
	h.put32(offField24, ti.cmdSN)
	h.put32(offField28, ti.expStatSN)
	binary.BigEndian.PutUint32(h[offField32+2:], lba)
	ti.cmdSN++
	hc.wire = AppendPDU(hc.wire[:0], h, nil, data, false, false)
	if _, err := ti.nc.Write(hc.wire); err != nil {
		hc.tb.Fatal(err)
	}
	for {
		p, err := ti.r.ReadPDU()
		if err != nil {
			hc.tb.Fatal(err)
		}
		ph := p.BHS
		switch {
		case ph.Opcode() == OpSCSIResponse:
			if ph[offByte3] != 0 {
				hc.tb.Fatalf("status %#x", ph[offByte3])
			}
		case ph.Opcode() == OpSCSIDataIn && ph.Flags()&dataInFlagStatus != 0:
		default:
			continue
		}
		ti.expStatSN = ph.StatSN() + 1
		return
	}
}

// cpuTime returns the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchHotPath runs b.N 4 KiB commands at QD1 through the whole target
// (iSCSI connection, session, scsi.Target, LU, device). cpu-ns/op is the
// CPU time of the whole process (target and client) per command.
func benchHotPath(b *testing.B, file, write bool) {
	ts := startLUServer(b, file)
	hc := newHotClient(b, ts.addr)
	for range 200 {
		hc.do(write)
	}
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		hc.do(write)
	}
	cpu := cpuTime() - cpu0
	b.StopTimer()
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	st := &ts.srv.stats
	b.ReportMetric(float64(st.inline.Load())/float64(b.N), "inline/op")
	b.ReportMetric(float64(st.rescues.Load())/float64(b.N), "rescues/op")
	hc.ti.logout()
}

func BenchmarkHotPathMemRead4KQD1(b *testing.B)   { benchHotPath(b, false, false) }
func BenchmarkHotPathMemWrite4KQD1(b *testing.B)  { benchHotPath(b, false, true) }
func BenchmarkHotPathFileRead4KQD1(b *testing.B)  { benchHotPath(b, true, false) }
func BenchmarkHotPathFileWrite4KQD1(b *testing.B) { benchHotPath(b, true, true) }

// TestHotPathAllocsFull pins the allocations of a 4 KiB READ(10) and a
// 4 KiB WRITE(10) through the whole target (scsi.Target, LU, device) in
// the steady state: none, for both an in-memory device and filedev.
func TestHotPathAllocsFull(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("short or -race")
	}
	for _, file := range []bool{false, true} {
		name := "mem"
		if file {
			name = "file"
		}
		t.Run(name, func(t *testing.T) {
			ts := startLUServer(t, file)
			hc := newHotClient(t, ts.addr)
			for range 200 { // warm up pools and workers
				hc.do(true)
				hc.do(false)
			}
			for _, write := range []bool{false, true} {
				allocs := testing.AllocsPerRun(1000, func() { hc.do(write) })
				t.Logf("write=%v: %.3f allocs per command", write, allocs)
				if allocs > 0.05 {
					t.Errorf("write=%v: %.3f allocations per 4 KiB command, want 0", write, allocs)
				}
			}
			hc.ti.logout()
		})
	}
}

// TestInlineRescue checks that a command the reader runs itself (the only
// one in flight) does not hold up the connection when the device blocks:
// after inlineRescue another goroutine reads on, so a command sent behind
// it completes, and an ABORT TASK on the same connection ends it.
func TestInlineRescue(t *testing.T) {
	ts := startServer(t)
	ts.dev.started = make(chan uint64, 1)
	ti := newInitiator(t, dialTCP(t, ts.addr), 1)
	ti.login(testTarget)

	h := ti.scsiHeader(cdb10(0x28, blockLBA, 1), true, false, 512, true)
	blocked, blockedSN := h.ITT(), h.CmdSN()
	ti.send(h, nil, nil)
	select {
	case <-ts.dev.started:
	case <-time.After(10 * time.Second):
		t.Fatal("blocked task never started")
	}
	if n := ts.srv.stats.inline.Load(); n != 1 {
		t.Fatalf("%d inline commands, want the blocked one", n)
	}
	// A second command behind the stuck one completes.
	if r := ti.do(cdb10(0x28, 0, 1), 512, nil, true); r.status != 0 || len(r.data) != 512 {
		t.Fatalf("read behind a stuck command: status %#x, %d bytes", r.status, len(r.data))
	}
	if n := ts.srv.stats.rescues.Load(); n != 1 {
		t.Fatalf("%d rescues, want 1", n)
	}
	// ABORT TASK for the stuck command, on the same connection.
	tm := make(BHS, BHSLen)
	tm.SetOpcode(OpTaskMgmtReq, true)
	tm[offFlags] = flagFinal | 1
	tm.put32(offITT, ti.nextITT())
	tm.put32(offField20, blocked)
	tm.put32(offField24, ti.cmdSN)
	tm.put32(offField28, ti.expStatSN)
	tm.put32(offField32, blockedSN)
	ti.send(tm, nil, nil)
	for {
		rh, _ := ti.recv()
		if rh.Opcode() == OpTaskMgmtResp {
			if rh[offByte2] != 0 {
				t.Fatalf("ABORT TASK: response %d", rh[offByte2])
			}
			break
		}
		if rh.ITT() == blocked {
			t.Fatalf("aborted task got a response (%s)", rh.Opcode())
		}
	}
	// The connection goes on with one reader.
	for range 10 {
		if r := ti.do(cdb10(0x28, 0, 8), 4096, nil, true); r.status != 0 {
			t.Fatalf("status %#x", r.status)
		}
	}
	ti.logout()
}
