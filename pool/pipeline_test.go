package pool

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"stave.dev/stave/pool/internal/layout"
)

// gate holds the chunk writes of one batch (the first whose header it
// sees once armed) while later batches are written, so that a test can
// take a crash image with several batches in flight and an earlier one
// torn or missing.
type gate struct {
	mu      sync.Mutex
	cond    *sync.Cond
	armed   bool
	target  uint64 // seq held (0: not chosen yet)
	hold    int    // chunk indices below hold are held
	held    int    // writes of target blocked now
	passed  int    // writes of target let through
	later   int    // writes of seqs above target done
	release bool
}

func newGate() *gate {
	g := &gate{}
	g.cond = sync.NewCond(&g.mu)
	return g
}

// arm holds, in the next batch, the chunks with index < hold.
func (g *gate) arm(hold int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.armed, g.hold = true, hold
}

// waitFor waits until cond (called with g.mu held) holds, for at most 10 s.
func (g *gate) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	stop := time.AfterFunc(10*time.Second, func() {
		g.mu.Lock()
		g.cond.Broadcast()
		g.mu.Unlock()
	})
	defer stop.Stop()
	g.mu.Lock()
	defer g.mu.Unlock()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s (held %d, passed %d, later %d)", what, g.held, g.passed, g.later)
		}
		g.cond.Wait()
	}
}

func (g *gate) open(path string) (Device, error) {
	d, err := openOSDevice(path)
	if err != nil {
		return nil, err
	}
	return gateDev{d, g}, nil
}

type gateDev struct {
	Device
	g *gate
}

func (d gateDev) WriteAt(p []byte, off int64) (int, error) {
	g := d.g
	var h layout.ChunkHeader
	isChunk := false
	if hl, err := layout.PeekHeaderLen(p); err == nil && int(hl) <= len(p) {
		if h, err = layout.DecodeChunkHeader(p[:hl], nil); err == nil {
			isChunk = true
		}
	}
	g.mu.Lock()
	if isChunk && g.armed && g.target == 0 {
		g.target = h.Seq
	}
	hold := isChunk && g.target != 0 && h.Seq == g.target && int(h.Index) < g.hold
	if hold {
		g.held++
		g.cond.Broadcast()
		for !g.release {
			g.cond.Wait()
		}
	}
	g.mu.Unlock()
	n, err := d.Device.WriteAt(p, off)
	g.mu.Lock()
	switch {
	case !isChunk || g.target == 0:
	case h.Seq == g.target && !hold:
		g.passed++
	case h.Seq > g.target:
		g.later++
	}
	g.cond.Broadcast()
	g.mu.Unlock()
	return n, err
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestCrashPipelined takes a crash image of a 2+1 pool while four batches
// are in flight: the first torn (only its parity chunk written) or
// missing (no chunk written), the three behind it (written concurrently,
// so not acknowledged) complete. Each batch in flight has a segment of
// its own, so the torn one is the end of its segment's log: Open must
// replay without an error, keep every acknowledged write, drop the torn
// batch, and may keep the three unacknowledged ones, but then for good:
// they read the same after a new write (which lands where the torn batch
// was), a reopen and a Recover.
func TestCrashPipelined(t *testing.T) {
	for _, c := range []struct {
		name string
		hold int
	}{{"torn", 2}, {"missing", 3}} {
		t.Run(c.name, func(t *testing.T) { crashPipelined(t, c.hold) })
	}
}

func crashPipelined(t *testing.T, hold int) {
	ctx := context.Background()
	tp := newTestPool(t, 3, testDevSize)
	v, err := tp.p.CreateVolume(ctx, "v", 8<<20, Policy{2, 1})
	if err != nil {
		t.Fatal(err)
	}
	base := pattern(1, 64<<10)
	if err := v.WriteAt(ctx, base, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := tp.p.Close(); err != nil {
		t.Fatal(err)
	}
	// The index as it was before the batches in flight (Open replays
	// from its checkpoint).
	metaCopy := filepath.Join(tp.dir, "meta-before")
	copyDir(t, tp.opts.MetaDir, metaCopy)

	g := newGate()
	opts := tp.opts
	opts.OpenDevice = g.open
	p, err := Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	v, err = p.Volume("v")
	if err != nil {
		t.Fatal(err)
	}
	g.arm(hold)
	// Write i: one block at LBA 100 (the held batch), then batches large
	// enough to be dispatched while another is written (half a batch).
	nblk := func(i int) int {
		if i == 0 || i == 9 {
			return 1
		}
		return tp.p.batchCap(2) / 2
	}
	blk := func(i int) []byte { return bytes.Repeat([]byte{byte(0x40 + i)}, nblk(i)*layout.BlockSize) }
	lba := func(i int) int64 {
		if i == 0 {
			return 100
		}
		// Clear of LBA 100's lock stripe (LBAs 100+1024j) and of LBA 600.
		return 200 + int64(i-1)*int64(nblk(i))
	}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	write := func(i int) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = v.WriteAt(ctx, blk(i), lba(i)*layout.BlockSize, false)
		}()
	}
	write(0)
	g.waitFor(t, "the first batch held", func() bool { return g.held == hold && g.passed == 3-hold })
	for i := 1; i < 4; i++ {
		write(i)
		g.waitFor(t, fmt.Sprintf("batch %d written", i), func() bool { return g.later == 3*i })
	}
	// The crash image: what the devices hold now.
	img := filepath.Join(tp.dir, "img")
	if err := os.Mkdir(img, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, d := range tp.devs {
		copyFile(t, d, filepath.Join(img, fmt.Sprint(i)))
	}
	g.mu.Lock()
	g.release = true
	g.cond.Broadcast()
	g.mu.Unlock()
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for i, d := range tp.devs {
		copyFile(t, filepath.Join(img, fmt.Sprint(i)), d)
	}
	if err := os.RemoveAll(tp.opts.MetaDir); err != nil {
		t.Fatal(err)
	}
	copyDir(t, metaCopy, tp.opts.MetaDir)

	var kept [4][]byte
	check := func(what string, tp *testPool, extra bool) {
		t.Helper()
		v := tp.vol(t, "v")
		if got := readAll(t, v, 0, len(base)); !bytes.Equal(got, base) {
			t.Fatalf("%s: acknowledged data lost", what)
		}
		for i := range 4 {
			got := readAll(t, v, lba(i)*layout.BlockSize, nblk(i)*layout.BlockSize)
			zero := make([]byte, len(got))
			switch {
			case i == 0 && !bytes.Equal(got, zero):
				t.Fatalf("%s: block 100 of the torn batch reads %#x..., want zeros", what, got[0])
			case !bytes.Equal(got, zero) && !bytes.Equal(got, blk(i)):
				t.Fatalf("%s: write %d reads %#x..., want zeros or its unacknowledged write", what, i, got[0])
			case kept[i] == nil:
				kept[i] = got
			case !bytes.Equal(got, kept[i]):
				t.Fatalf("%s: write %d changed from %#x... to %#x...", what, i, kept[i][0], got[0])
			}
		}
		if extra {
			if got := readAll(t, v, 600*layout.BlockSize, layout.BlockSize); !bytes.Equal(got, blk(9)) {
				t.Fatalf("%s: block written after the crash lost", what)
			}
		}
	}
	tp.open(t) // replays the crash image from the old checkpoint
	check("after the crash", tp, false)
	// The batches written behind the held one went to other segments.
	rows := map[uint32]bool{}
	for i := 1; i < 4; i++ {
		if kept[i][0] != 0 {
			l, _ := blockLoc(t, tp.p, tp.vol(t, "v"), uint64(lba(i)))
			if rows[l.row] {
				t.Fatalf("two batches in flight at once in segment %d", l.row)
			}
			rows[l.row] = true
		}
	}
	// One block: a batch the size of the torn one, at its offset.
	if err := tp.vol(t, "v").WriteAt(ctx, blk(9), 600*layout.BlockSize, false); err != nil {
		t.Fatal(err)
	}
	tp.reopen(t)
	check("after a write and a reopen", tp, true)
	tp.recover(t)
	check("after Recover", tp, true)
}
