package poolstore

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"stave.dev/stave/pool"
	"stave.dev/stave/replication"
	"stave.dev/stave/replication/replicatest"
)

var seedFlag = flag.Uint64("seed", 0, "seed of TestModel (0: derived from the time)")

const (
	testSize    = 1 << 20 // 256 blocks
	testDevSize = 64 << 20
	testSegSize = 4 << 20
)

// testPool is a pool of n files in a temporary directory.
type testPool struct {
	opts pool.Options
	p    *pool.Pool
}

func newTestPool(t *testing.T, n int) *testPool {
	t.Helper()
	dir := t.TempDir()
	var devs []string
	for i := range n {
		path := filepath.Join(dir, fmt.Sprintf("dev%d", i))
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, testDevSize); err != nil {
			t.Fatal(err)
		}
		devs = append(devs, path)
	}
	meta := filepath.Join(dir, "meta")
	if err := pool.Create(context.Background(), pool.CreateOptions{Devices: devs, MetaDir: meta, SegmentSize: testSegSize}); err != nil {
		t.Fatal(err)
	}
	tp := &testPool{opts: pool.Options{MetaDir: meta}}
	tp.open(t)
	t.Cleanup(func() { tp.p.Close() })
	return tp
}

func (tp *testPool) open(t *testing.T) {
	t.Helper()
	p, err := pool.Open(context.Background(), tp.opts)
	if err != nil {
		t.Fatal(err)
	}
	tp.p = p
}

// store returns the Store of volume name, creating it.
func (tp *testPool) store(t *testing.T, name string) *Store {
	t.Helper()
	v, err := tp.p.Volume(name)
	if errors.Is(err, pool.ErrNotFound) {
		v, err = tp.p.CreateVolume(context.Background(), name, testSize, pool.Policy{})
	}
	if err != nil {
		t.Fatal(err)
	}
	return Open(v)
}

// reopen closes and opens the pool; with recover, the index is rebuilt
// from the devices in between.
func (tp *testPool) reopen(t *testing.T, recover bool) {
	t.Helper()
	if err := tp.p.Close(); err != nil {
		t.Fatal(err)
	}
	if recover {
		if err := pool.Recover(context.Background(), tp.opts); err != nil {
			t.Fatal(err)
		}
	}
	tp.open(t)
}

// sameStores reports how a and b differ (data or versions), "" if not.
func sameStores(a, b replication.Store) string {
	ctx := context.Background()
	if a.Size() != b.Size() {
		return fmt.Sprintf("sizes %d and %d", a.Size(), b.Size())
	}
	n := a.Size() / replication.BlockSize
	va, vb := make([]uint64, n), make([]uint64, n)
	if err := a.Versions(ctx, 0, va); err != nil {
		return err.Error()
	}
	if err := b.Versions(ctx, 0, vb); err != nil {
		return err.Error()
	}
	for i := range va {
		if va[i] != vb[i] {
			return fmt.Sprintf("block %d: version %#x and %#x", i, va[i], vb[i])
		}
	}
	da, db := make([]byte, a.Size()), make([]byte, b.Size())
	if err := a.ReadAt(ctx, da, 0); err != nil {
		return err.Error()
	}
	if err := b.ReadAt(ctx, db, 0); err != nil {
		return err.Error()
	}
	for i := range da {
		if da[i] != db[i] {
			return fmt.Sprintf("byte %d (block %d): %#x and %#x", i, i/replication.BlockSize, da[i], db[i])
		}
	}
	return ""
}

// TestModel runs random Store calls (sector-aligned, partial blocks,
// random versions, lower ones included) on a Store over a 2+1 pool volume
// and on a replication.MemStore, and compares them after every call,
// after reopens of the pool and after Recover. Replay a failure with
// -seed.
func TestModel(t *testing.T) {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with -seed %d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	ctx := context.Background()
	tp := newTestPool(t, 3)
	s := tp.store(t, "m")
	model := replication.NewMemStore(testSize)
	const nblocks = testSize / replication.BlockSize
	version := func() uint64 {
		// Few epochs and counters: equal, lower and higher versions.
		return replication.VersionOf(1+rng.Uint64N(3), 1+rng.Uint64N(500))
	}
	sectorRange := func(maxSectors int64) (int64, int64) {
		off := rng.Int64N(testSize/replication.SectorSize) * replication.SectorSize
		n := (1 + rng.Int64N(maxSectors)) * replication.SectorSize
		return off, min(n, testSize-off)
	}
	const ops = 800
	counts := map[string]int{}
	for i := range ops {
		var op string
		var err error
		var lo, hi int64 // the bytes touched
		switch x := rng.IntN(100); {
		case x < 35:
			op = "write"
			off, n := sectorRange(40)
			p := make([]byte, n)
			for j := range p {
				p[j] = byte(rng.Uint32())
			}
			ver := version()
			if merr := model.WriteAt(ctx, p, off, ver); merr != nil {
				t.Fatal(merr)
			}
			err, lo, hi = s.WriteAt(ctx, p, off, ver), off, off+n
		case x < 50:
			op = "unmap"
			off, n := sectorRange(100)
			ver := version()
			if merr := model.Unmap(ctx, off, n, ver); merr != nil {
				t.Fatal(merr)
			}
			err, lo, hi = s.Unmap(ctx, off, n, ver), off, off+n
		case x < 70:
			op = "setblocks"
			first := rng.Int64N(nblocks)
			n := 1 + rng.Int64N(min(12, nblocks-first))
			vers := make([]uint64, n)
			var data []byte
			for j := range vers {
				if rng.IntN(3) > 0 {
					vers[j] = version()
					b := make([]byte, replication.BlockSize)
					for k := range b {
						b[k] = byte(rng.Uint32())
					}
					data = append(data, b...)
				}
			}
			if merr := model.SetBlocks(ctx, first, vers, data); merr != nil {
				t.Fatal(merr)
			}
			err, lo, hi = s.SetBlocks(ctx, first, vers, data), first*replication.BlockSize, (first+n)*replication.BlockSize
		case x < 85:
			op = "versions"
			first := rng.Int64N(nblocks)
			got := make([]uint64, 1+rng.Int64N(nblocks-first))
			want := make([]uint64, len(got))
			if merr := model.Versions(ctx, first, want); merr != nil {
				t.Fatal(merr)
			}
			if err = s.Versions(ctx, first, got); err == nil && !slices.Equal(got, want) {
				t.Fatalf("op %d: Versions(%d, %d) = %#x, want %#x", i, first, len(got), got, want)
			}
		default:
			op = "read"
			off, n := sectorRange(64)
			got, want := make([]byte, n), make([]byte, n)
			if merr := model.ReadAt(ctx, want, off); merr != nil {
				t.Fatal(merr)
			}
			if err = s.ReadAt(ctx, got, off); err == nil && !bytes.Equal(got, want) {
				t.Fatalf("op %d: ReadAt(%d, %d) differs", i, off, n)
			}
			lo, hi = off, off+n
		}
		counts[op]++
		if err != nil {
			t.Fatalf("op %d (%s): %v", i, op, err)
		}
		// After every call: all versions, and the bytes it touched (all
		// of them every 25 calls).
		if i%25 == 0 {
			lo, hi = 0, testSize
		}
		lo, hi = lo/replication.BlockSize*replication.BlockSize, min(testSize, (hi+replication.BlockSize-1)/replication.BlockSize*replication.BlockSize)
		got, want := make([]uint64, nblocks), make([]uint64, nblocks)
		if err := s.Versions(ctx, 0, got); err != nil {
			t.Fatal(err)
		}
		model.Versions(ctx, 0, want)
		if !slices.Equal(got, want) {
			for b := range got {
				if got[b] != want[b] {
					t.Fatalf("after op %d (%s): block %d has version %#x, want %#x", i, op, b, got[b], want[b])
				}
			}
		}
		if hi > lo {
			gb, wb := make([]byte, hi-lo), make([]byte, hi-lo)
			if err := s.ReadAt(ctx, gb, lo); err != nil {
				t.Fatal(err)
			}
			model.ReadAt(ctx, wb, lo)
			if !bytes.Equal(gb, wb) {
				t.Fatalf("after op %d (%s): bytes [%d, %d) differ", i, op, lo, hi)
			}
		}
		if i%200 == 199 {
			tp.reopen(t, false)
			s = tp.store(t, "m")
			if d := sameStores(s, model); d != "" {
				t.Fatalf("after op %d and a reopen: %s", i, d)
			}
		}
	}
	t.Logf("ops: %v", counts)
	tp.reopen(t, true)
	s = tp.store(t, "m")
	if d := sameStores(s, model); d != "" {
		t.Fatalf("after Recover: %s", d)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if s.Size() != testSize {
		t.Fatalf("size %d", s.Size())
	}
}

// fakeISR is the ISR record in etcd, in memory.
type fakeISR struct {
	mu      sync.Mutex
	members []string
}

func (f *fakeISR) Remove(_ context.Context, _ uint64, node string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.members = slices.DeleteFunc(f.members, func(m string) bool { return m == node })
	return nil
}

func (f *fakeISR) Add(_ context.Context, _ uint64, node string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.Contains(f.members, node) {
		f.members = append(f.members, node)
	}
	return nil
}

// replica serves one Store as volume "vol" on loopback TCP.
type replica struct {
	p    replication.Peer
	stop func()
}

func startReplica(t *testing.T, node string, st replication.Store, epochDir string) *replica {
	t.Helper()
	p, stop := replicatest.Serve(t, node, st, epochDir)
	return &replica{p: p, stop: stop}
}

func (r *replica) peer() replication.Peer { return r.p }

// writeSome writes n random sector-aligned extents through the owner.
func writeSome(t *testing.T, v *replication.Volume, rng *rand.Rand, n int) {
	t.Helper()
	ctx := context.Background()
	for range n {
		off := rng.Int64N(testSize/replication.SectorSize) * replication.SectorSize
		l := min((1+rng.Int64N(32))*replication.SectorSize, testSize-off)
		var err error
		if rng.IntN(5) == 0 {
			err = v.Unmap(ctx, off, l)
		} else {
			p := make([]byte, l)
			for j := range p {
				p[j] = byte(rng.Uint32())
			}
			err = v.WriteAt(ctx, p, off, false)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestReplicated runs replication.Volume over Stores on two pools: the
// replica stays identical to the owner, is resynced after missing writes,
// and when it becomes the owner of the next epoch, the old owner's
// unacknowledged tail (a higher version) is replaced by the new owner's
// lower versions, which stay after a reopen and Recover of its pool.
func TestReplicated(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	pa, pb := newTestPool(t, 3), newTestPool(t, 1)
	a, b := pa.store(t, "vol"), pb.store(t, "vol")
	rb := startReplica(t, "b", b, t.TempDir())
	isr := &fakeISR{members: []string{"a", "b"}}
	owner, err := replication.OpenVolume(ctx, replication.VolumeConfig{Name: "vol", Node: "a", Epoch: 1, Local: a,
		Replicas: []replication.Peer{rb.peer()}, ISR: isr, RegionSize: 64 << 10, AckTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	writeSome(t, owner, rng, 60)
	if d := sameStores(a, b); d != "" {
		t.Fatalf("replica differs: %s", d)
	}
	// b misses writes, then is resynced.
	rb.stop()
	writeSome(t, owner, rng, 30)
	if !slices.Equal(isr.members, []string{"a"}) {
		t.Fatalf("ISR %v after the replica stopped", isr.members)
	}
	rb = startReplica(t, "b", b, t.TempDir())
	st, err := owner.Resync(ctx, rb.peer(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.RegionsCopied == 0 {
		t.Fatalf("resync copied nothing: %+v", st)
	}
	writeSome(t, owner, rng, 20)
	if d := sameStores(a, b); d != "" {
		t.Fatalf("replica differs after resync: %s", d)
	}
	// An unacknowledged tail on a only (epoch 1, a high counter) over a
	// block both have, then a fails over to b (epoch 2).
	if err := owner.WriteAt(ctx, bytes.Repeat([]byte{0x77}, replication.BlockSize), 7*replication.BlockSize, false); err != nil {
		t.Fatal(err)
	}
	acked := make([]uint64, 1)
	if err := b.Versions(ctx, 7, acked); err != nil || acked[0] == 0 {
		t.Fatalf("block 7 on the replica: %#x %v", acked[0], err)
	}
	tail := bytes.Repeat([]byte{0xee}, replication.BlockSize)
	if err := a.WriteAt(ctx, tail, 7*replication.BlockSize, replication.VersionOf(1, 1<<30)); err != nil {
		t.Fatal(err)
	}
	if err := a.WriteAt(ctx, tail, 200*replication.BlockSize, replication.VersionOf(1, 1<<30+1)); err != nil {
		t.Fatal(err)
	}
	owner.Close()
	rb.stop()
	ra := startReplica(t, "a", a, t.TempDir())
	owner2, err := replication.OpenVolume(ctx, replication.VolumeConfig{Name: "vol", Node: "b", Epoch: 2, Local: b,
		Replicas: []replication.Peer{ra.peer()}, ISR: isr, RegionSize: 64 << 10, AckTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer owner2.Close()
	if d := sameStores(a, b); d != "" {
		t.Fatalf("old owner not reconciled: %s", d)
	}
	vers := make([]uint64, 1)
	if err := a.Versions(ctx, 7, vers); err != nil || vers[0] != acked[0] {
		t.Fatalf("block 7 of the old owner: version %#x, %v; want the acknowledged, lower %#x", vers[0], err, acked[0])
	}
	writeSome(t, owner2, rng, 20)
	ra.stop()
	if d := sameStores(a, b); d != "" {
		t.Fatalf("after writes in epoch 2: %s", d)
	}
	pa.reopen(t, false)
	a = pa.store(t, "vol")
	if d := sameStores(a, b); d != "" {
		t.Fatalf("old owner after a reopen: %s", d)
	}
	pa.reopen(t, true)
	a = pa.store(t, "vol")
	if d := sameStores(a, b); d != "" {
		t.Fatalf("old owner after Recover: %s", d)
	}
}

func TestVersionZeroRefused(t *testing.T) {
	ctx := context.Background()
	s := newTestPool(t, 1).store(t, "z")
	if err := s.WriteAt(ctx, make([]byte, 512), 0, 0); !errors.Is(err, pool.ErrInvalid) {
		t.Fatalf("WriteAt version 0: %v", err)
	}
	if err := s.Unmap(ctx, 0, 512, 0); !errors.Is(err, pool.ErrInvalid) {
		t.Fatalf("Unmap version 0: %v", err)
	}
}
