package pool

import (
	"bytes"
	"context"
	"flag"
	"math/rand"
	"sync"
	"testing"
	"time"
)

var seedFlag = flag.Int64("seed", 0, "seed for the metamorphic test (0: time-based)")

type mop struct {
	kind   string // write, unmap, read, reopen
	off, n int64
	seed   int64
}

func genOps(rng *rand.Rand, n int, size int64) []mop {
	var ops []mop
	sectors := size / 512
	for i := 0; i < n; i++ {
		off := rng.Int63n(sectors) * 512
		ln := (1 + rng.Int63n(min(64, sectors-off/512))) * 512
		if rng.Intn(4) == 0 { // whole, aligned blocks
			off = off / 4096 * 4096
			ln = (1 + rng.Int63n(16)) * 4096
			if off+ln > size {
				ln = size - off
			}
		}
		switch r := rng.Intn(100); {
		case r < 50:
			ops = append(ops, mop{kind: "write", off: off, n: ln, seed: rng.Int63()})
		case r < 62:
			ops = append(ops, mop{kind: "unmap", off: off, n: ln})
		case r < 97:
			ops = append(ops, mop{kind: "read", off: off, n: ln})
		default:
			ops = append(ops, mop{kind: "reopen"})
		}
	}
	return ops
}

// TestMetamorphic runs the same seeded op list against 1+0, 2+1 and 4+2
// pools and an in-memory model and compares every read (STYLE §27).
func TestMetamorphic(t *testing.T) {
	seed := *seedFlag
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	t.Logf("seed %d (replay: go test ./pool -run TestMetamorphic -seed %d)", seed, seed)
	const size = 2 << 20
	ops := genOps(rand.New(rand.NewSource(seed)), 400, size)
	ctx := context.Background()
	model := make([]byte, size)
	var pools []*testPool
	var vols []*Volume
	for _, pc := range policies {
		tp := newTestPool(t, pc.n, testDevSize)
		v, err := tp.p.CreateVolume(ctx, "m", size, Policy{})
		if err != nil {
			t.Fatal(err)
		}
		pools, vols = append(pools, tp), append(vols, v)
	}
	for i, op := range ops {
		switch op.kind {
		case "write":
			b := pattern(op.seed, int(op.n))
			copy(model[op.off:], b)
			for j, v := range vols {
				if err := v.WriteAt(ctx, b, op.off, false); err != nil {
					t.Fatalf("seed %d op %d %+v on %v: %v", seed, i, op, policies[j].pol, err)
				}
			}
		case "unmap":
			clear(model[op.off : op.off+op.n])
			for j, v := range vols {
				if err := v.Unmap(ctx, op.off, op.n); err != nil {
					t.Fatalf("seed %d op %d %+v on %v: %v", seed, i, op, policies[j].pol, err)
				}
			}
		case "read":
			for j, v := range vols {
				got := make([]byte, op.n)
				if err := v.ReadAt(ctx, got, op.off); err != nil {
					t.Fatalf("seed %d op %d %+v on %v: %v", seed, i, op, policies[j].pol, err)
				}
				if !bytes.Equal(got, model[op.off:op.off+op.n]) {
					t.Fatalf("seed %d op %d %+v on %v: read differs from the model", seed, i, op, policies[j].pol)
				}
			}
		case "reopen":
			for j, tp := range pools {
				tp.reopen(t)
				vols[j] = tp.vol(t, "m")
			}
		}
	}
	for j, v := range vols {
		got := make([]byte, size)
		if err := v.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, model) {
			t.Fatalf("seed %d: final read on %v differs (%v)", seed, policies[j].pol, err)
		}
		var mapped int64
		for off := int64(0); off < size; {
			m, n, err := v.MapStatus(ctx, off, size)
			if err != nil || n <= 0 {
				t.Fatalf("MapStatus(%d) = %v %d %v", off, m, n, err)
			}
			if m {
				mapped += n
			}
			off += n
		}
		if l := pools[j].p.Status().Space.Logical; l != mapped {
			t.Fatalf("%v: logical %d, mapped %d", policies[j].pol, l, mapped)
		}
	}
}

// TestConcurrentWriters checks group commit and sub-block locking: many
// goroutines write distinct 512-byte sectors of the same 4 KiB blocks.
func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	tp := newTestPool(t, 3, testDevSize)
	v, err := tp.p.CreateVolume(ctx, "c", 1<<20, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	const workers = 8
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 32; i++ {
				// Worker w owns sector w of every block i.
				b := bytes.Repeat([]byte{byte(w*32 + i)}, 512)
				if err := v.WriteAt(ctx, b, int64(i)*4096+int64(w)*512, false); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	tp.reopen(t)
	v = tp.vol(t, "c")
	for i := 0; i < 32; i++ {
		got := readAll(t, v, int64(i)*4096, 4096)
		for w := 0; w < workers; w++ {
			if got[w*512] != byte(w*32+i) || got[w*512+511] != byte(w*32+i) {
				t.Fatalf("block %d sector %d: %d", i, w, got[w*512])
			}
		}
	}
	if n := testutilCount(tp.p); n == 0 {
		t.Fatal("no batches")
	}
}

func testutilCount(p *Pool) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var n int64
	for _, s := range p.mu.segs {
		n += s.blocks
	}
	return n
}
