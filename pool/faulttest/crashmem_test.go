package faulttest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"stave.dev/stave/pool"
)

// memOp is one planned operation of the in-memory crash workload.
type memOp struct {
	seq   uint64
	lba   int64
	n     int
	unmap bool
	fua   bool
}

// planWorkload returns per-worker op lists over a volume of blocks blocks.
func planWorkload(rng *rand.Rand, workers, opsPerWorker int, blocks int64) [][]memOp {
	var seq uint64
	plan := make([][]memOp, workers)
	for w := range plan {
		for range opsPerWorker {
			seq++
			n := 1 + rng.IntN(8)
			if rng.IntN(4) == 0 {
				// Large writes carry the log across segment boundaries.
				n = 64 + rng.IntN(193)
			}
			plan[w] = append(plan[w], memOp{
				seq:   seq,
				lba:   rng.Int64N(blocks - int64(n) + 1),
				n:     n,
				unmap: rng.IntN(10) == 0,
				fua:   rng.IntN(3) != 0,
			})
		}
	}
	return plan
}

// runWorkload runs plan against v, one goroutine per worker, recording
// every op in m with stamps (see model). stop, when it returns true, ends
// the workers early (after the crash every op fails anyway).
func runWorkload(ctx context.Context, v interface {
	reader
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	Flush(ctx context.Context) error
	Unmap(ctx context.Context, off, length int64) error
}, m *model, plan [][]memOp, stop func() bool) (acked, failed int) {
	var clock atomic.Uint64
	var mu sync.Mutex // guards m, acked, failed
	var wg sync.WaitGroup
	for _, ops := range plan {
		wg.Go(func() {
			for _, o := range ops {
				if stop() || ctx.Err() != nil {
					return
				}
				mu.Lock()
				m.issued(op{seq: o.seq, lba: o.lba, n: o.n, unmap: o.unmap, issue: clock.Add(1)})
				mu.Unlock()
				var err error
				if o.unmap {
					err = v.Unmap(ctx, o.lba*BlockSize, int64(o.n)*BlockSize)
				} else {
					err = v.WriteAt(ctx, blockData(o.lba, o.n, o.seq), o.lba*BlockSize, o.fua)
				}
				if err == nil && (o.unmap || !o.fua) {
					err = v.Flush(ctx)
				}
				stamp := clock.Add(1)
				mu.Lock()
				if err == nil {
					_ = m.acked(o.seq, stamp)
					acked++
				} else {
					failed++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return acked, failed
}

// closeWithin closes p, failing the test if Close hangs (it must return
// even when every device fails).
func closeWithin(t *testing.T, p *pool.Pool, what string) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: Close did not return within 30s", what)
		return nil
	}
}

// TestCrashMem runs a concurrent workload on pools of crashable in-memory
// devices and crashes them at the k-th device write for many k: each
// device keeps its synced data plus, by crash mode, none, a torn prefix or
// a random sector subset of its unsynced writes. The pool's metadata
// directory (pebble index) is copied at the same instant with device I/O
// frozen. Two recoveries must each yield every acknowledged write, whole:
// (a) Open with the index as it was at the crash ("index may be behind"),
// (b) the index deleted, Recover, Open. Policies 1+0, 2+1 and 4+2; on
// 2+1 and 4+2 every other crash point also has one device die (every call
// fails) before the crash, coming back with stale contents at reboot.
func TestCrashMem(t *testing.T) {
	seed := testSeed(t)
	points := 16
	if heavy() {
		points = 200
	}
	for _, c := range []struct {
		name     string
		devices  int
		segments int
		points   int
	}{
		{"1+0", 1, 5, points}, {"2+1", 3, 5, points}, {"4+2", 6, 5, points},
		// Room for the committer's lanes: large writes from several
		// workers are in flight together, each batch in its own segment.
		{"2+1-lanes", 3, 16, points / 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			crashMemPolicy(t, seed+uint64(c.devices)*1000+uint64(c.segments), c.devices, c.segments, c.points)
		})
	}
}

func crashMemPolicy(t *testing.T, seed uint64, devices, segments, points int) {
	ctx := testContext(t, 3*time.Minute)
	dir := t.TempDir()
	const blocks = 2048
	const volume = "mem"
	// Five segments per device: the workload's log fills them, so the
	// cleaner (GCInterval 2 ms) runs and crashes in the middle of passes.
	// With more, the committer has room for its lanes.
	devSize := superblockArea + int64(segments)*testSegmentSize
	disks := newMemDisks()
	var paths []string
	for i := range devices {
		p := filepath.Join(dir, fmt.Sprintf("mem%d", i))
		disks.add(p, devSize)
		paths = append(paths, p)
	}
	baseMeta := filepath.Join(dir, "meta")
	if err := pool.Create(ctx, pool.CreateOptions{Devices: paths, MetaDir: baseMeta, SegmentSize: testSegmentSize, OpenDevice: disks.open}); err != nil {
		must(t, err, "Create")
	}
	p, err := pool.Open(ctx, pool.Options{MetaDir: baseMeta, OpenDevice: disks.open})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if _, err := p.CreateVolume(ctx, volume, blocks*BlockSize, pool.Policy{}); err != nil {
		must(t, err, "CreateVolume")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	rng := newRand(seed, 0)
	workers := 1 + rng.IntN(3)
	plan := planWorkload(rng, workers, 100/workers, blocks)

	// A crash-free run counts the device writes the workload makes.
	total := 0
	var spaceAfter pool.SpaceStatus
	{
		d := disks.clone()
		meta := filepath.Join(dir, "count")
		if err := copyDir(baseMeta, meta); err != nil {
			t.Fatal(err)
		}
		p, err := pool.Open(ctx, pool.Options{MetaDir: meta, OpenDevice: d.open, GCInterval: 2 * time.Millisecond})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		v, err := p.Volume(volume)
		if err != nil {
			t.Fatal(err)
		}
		d.arm(0, crashDropUnsynced, nil, nil)
		m := newModel(nil)
		if _, failed := runWorkload(ctx, v, m, plan, func() bool { return false }); failed > 0 {
			t.Fatalf("%d ops failed without a crash", failed)
		}
		total, _ = d.counts()
		spaceAfter = p.Status().Space
		if _, errs := verifyVolume(ctx, v, m, blocks); len(errs) > 0 {
			t.Fatalf("crash-free run reads back wrong: %v", errs)
		}
		if err := closeWithin(t, p, "crash-free run"); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	t.Logf("%d workers, %d ops, %d device writes without a crash; space %+v", workers, len(plan)*len(plan[0]), total, spaceAfter)

	// Crash points: the first few writes, then spread over the run, and one
	// past the end (power loss after the workload).
	var ks []int
	for k := 1; k <= min(4, total); k++ {
		ks = append(ks, k)
	}
	for i := range points {
		ks = append(ks, 1+(total*(2*i+1))/(2*points)+rng.IntN(3))
	}
	ks = append(ks, total+1)
	for i, k := range ks {
		if ctx.Err() != nil {
			t.Fatalf("out of time after %d crash points", i)
		}
		mode := crashMode(rng.IntN(int(numCrashModes)))
		// On redundant pools every other point also loses a device
		// before the crash (it returns at reboot with stale contents).
		failDev, failAt := "", 0
		if devices > 1 && i%2 == 1 {
			failDev, failAt = paths[rng.IntN(devices)], 1+rng.IntN(k)
		}
		crashMemOnce(ctx, t, seed, dir, i, k, mode, failDev, failAt, disks, baseMeta, volume, blocks, plan)
		if t.Failed() {
			return
		}
	}
	t.Logf("%d crash points verified with the index at the crash and with a recovered index", len(ks))
}

// crashMemOnce runs the workload with a crash at device write k, then
// checks both recoveries.
func crashMemOnce(ctx context.Context, t *testing.T, seed uint64, dir string, i, k int, mode crashMode,
	failDev string, failAt int, base *memDisks, baseMeta, volume string, blocks int64, plan [][]memOp) {
	t.Helper()
	what := fmt.Sprintf("seed %d crash point %d (device write k=%d, mode %s)", seed, i, k, mode)
	if failDev != "" {
		what += fmt.Sprintf(", %s failed from write %d", filepath.Base(failDev), failAt)
	}
	d := base.clone()
	d.failDevice(failDev, failAt)
	meta := filepath.Join(dir, fmt.Sprintf("k%d", i))
	crashMeta := meta + "-at-crash"
	if err := copyDir(baseMeta, meta); err != nil {
		t.Fatal(err)
	}
	p, err := pool.Open(ctx, pool.Options{MetaDir: meta, OpenDevice: d.open, GCInterval: 2 * time.Millisecond})
	if err != nil {
		t.Fatalf("%s: Open: %v", what, err)
	}
	v, err := p.Volume(volume)
	if err != nil {
		t.Fatal(err)
	}
	var copyErr error
	d.arm(k, mode, newRand(seed, uint64(k)<<16|uint64(i)), func() {
		copyErr = copyDirStable(meta, crashMeta)
	})
	m := newModel(nil)
	acked, _ := runWorkload(ctx, v, m, plan, d.crashed)
	d.crashNow()                // no-op if the crash already happened
	_ = closeWithin(t, p, what) // errors expected: the devices are gone
	if copyErr != nil {
		t.Fatalf("%s: copying the metadata directory at the crash: %v", what, copyErr)
	}

	// (a) Reopen with the index as it was at the crash.
	check := func(variant string, d *memDisks, meta string) {
		p, err := pool.Open(ctx, pool.Options{MetaDir: meta, OpenDevice: d.open, GCInterval: 2 * time.Millisecond})
		if err != nil {
			t.Errorf("%s, %s: Open: %v", what, variant, err)
			return
		}
		defer p.Close()
		v, err := p.Volume(volume)
		if err != nil {
			t.Errorf("%s, %s: Volume: %v", what, variant, err)
			return
		}
		_, errs := verifyVolume(ctx, v, m, blocks)
		for _, e := range errs {
			t.Errorf("%s, %s, %d acked: %v", what, variant, acked, e)
		}
	}
	check("index at crash", d.afterCrash(), crashMeta)

	// (b) Lose the index, Recover from the devices, reopen.
	lostMeta := meta + "-lost"
	if err := copyDir(crashMeta, lostMeta); err != nil {
		t.Fatal(err)
	}
	deleteIndex(t, lostMeta)
	d2 := d.afterCrash()
	if err := pool.Recover(ctx, pool.Options{MetaDir: lostMeta, OpenDevice: d2.open}); err != nil {
		t.Errorf("%s: Recover: %v", what, err)
		return
	}
	check("index deleted + Recover", d2, lostMeta)
}

// TestRecoverAfterDegradedGC: on a 2+1 (and a 1+1) pool of memory
// devices, one device dies (every call fails) and the cleaner frees
// segments while it is dead, so their log is invalidated on the healthy
// members only. A quarter of the ops are UNMAPs, whose tombstones the
// cleaner may drop once nothing older survives. Power fails; at reboot
// the dead device is back with its stale contents. The index is lost too.
// Recover must rebuild it, every acknowledged write must read back and no
// unmapped or overwritten data may come back from the freed segments.
func TestRecoverAfterDegradedGC(t *testing.T) {
	seed := testSeed(t)
	for _, devices := range []int{3, 2} {
		t.Run(pool.PolicyFor(devices, false).String(), func(t *testing.T) {
			recoverAfterDegradedGC(t, seed+uint64(devices), devices)
		})
	}
}

func recoverAfterDegradedGC(t *testing.T, seed uint64, devices int) {
	ctx := testContext(t, time.Minute)
	dir := t.TempDir()
	disks := newMemDisks()
	var paths []string
	for i := range devices {
		p := filepath.Join(dir, fmt.Sprintf("mem%d", i))
		disks.add(p, superblockArea+6*testSegmentSize)
		paths = append(paths, p)
	}
	meta := filepath.Join(dir, "meta")
	must(t, pool.Create(ctx, pool.CreateOptions{Devices: paths, MetaDir: meta, SegmentSize: testSegmentSize, OpenDevice: disks.open}), "Create")
	p, err := pool.Open(ctx, pool.Options{MetaDir: meta, OpenDevice: disks.open, GCInterval: time.Millisecond})
	must(t, err, "Open")
	const blocks = 1024
	v, err := p.CreateVolume(ctx, "g", blocks*BlockSize, pool.Policy{})
	must(t, err, "CreateVolume")
	rng := newRand(seed, 0)
	m := newModel(nil)
	var seq, stamp uint64
	failed := 0
	write := func(n int) {
		for range n {
			seq++
			lba := rng.Int64N(blocks - 64)
			unmap := rng.IntN(4) == 0
			stamp++
			m.issued(op{seq: seq, lba: lba, n: 64, issue: stamp, unmap: unmap})
			var err error
			if unmap {
				err = v.Unmap(ctx, lba*BlockSize, 64*BlockSize)
			} else {
				err = v.WriteAt(ctx, blockData(lba, 64, seq), lba*BlockSize, true)
			}
			stamp++
			if err != nil {
				if failed == 0 {
					t.Errorf("seed %d: op seq %d on a %d-device pool with one dead device, 6 segments per device and a 4 MiB volume: %v", seed, seq, devices, err)
				}
				failed++
				continue
			}
			_ = m.acked(seq, stamp)
		}
	}
	write(80) // 20 MiB over a 4 MiB volume: sealed segments full of garbage
	disks.arm(0, crashDropUnsynced, newRand(seed, 1), nil)
	disks.failDevice(paths[0], 1)
	freedBefore := p.Status().Space.Free
	write(160)
	ok := waitFor(ctx, 5*time.Second, func() bool { return p.Status().Space.Free > freedBefore })
	t.Logf("with %s dead: space %+v (free before %d)", filepath.Base(paths[0]), p.Status().Space, freedBefore)
	if !ok {
		t.Logf("the cleaner freed no segment while the device was dead; the scenario is weaker")
	}
	disks.crashNow()
	_ = closeWithin(t, p, "after the crash")
	after := disks.afterCrash()
	deleteIndex(t, meta)
	if err := pool.Recover(ctx, pool.Options{MetaDir: meta, OpenDevice: after.open}); err != nil {
		t.Fatalf("seed %d: Recover after GC with a dead device and a crash: %v", seed, err)
	}
	p, err = pool.Open(ctx, pool.Options{MetaDir: meta, OpenDevice: after.open})
	if err != nil {
		t.Fatalf("seed %d: Open after Recover: %v", seed, err)
	}
	defer p.Close()
	v, err = p.Volume("g")
	if err != nil {
		t.Fatal(err)
	}
	if failed > 0 {
		t.Logf("%d of %d writes failed", failed, seq)
	}
	_, errs := verifyVolume(ctx, v, m, blocks)
	for _, e := range errs {
		t.Errorf("seed %d: after Recover: %v", seed, e)
	}
}

// TestCrashDuringRebuild: a 2+1 pool of memory devices loses a device and
// ReplaceDevice rebuilds it onto a spare while a writer runs; power fails
// at the k-th device write, for k spread over the rebuild. After reboot
// (index as at the crash) every acknowledged write must read back; then,
// unless the pool reports itself degraded (rebuild unfinished), it must
// also survive losing another device: a pool that claims full redundancy
// must have it.
func TestCrashDuringRebuild(t *testing.T) {
	seed := testSeed(t)
	ctx := testContext(t, 2*time.Minute)
	dir := t.TempDir()
	base := newMemDisks()
	var paths []string
	for i := range 4 { // mem3 is the spare
		p := filepath.Join(dir, fmt.Sprintf("mem%d", i))
		base.add(p, superblockArea+5*testSegmentSize)
		paths = append(paths, p)
	}
	baseMeta := filepath.Join(dir, "meta")
	must(t, pool.Create(ctx, pool.CreateOptions{Devices: paths[:3], MetaDir: baseMeta, SegmentSize: testSegmentSize, OpenDevice: base.open}), "Create")
	p, err := pool.Open(ctx, pool.Options{MetaDir: baseMeta, OpenDevice: base.open})
	must(t, err, "Open")
	const blocks = 2048
	v, err := p.CreateVolume(ctx, "r", blocks*BlockSize, pool.Policy{})
	must(t, err, "CreateVolume")
	exp := map[int64]uint64{}
	for lba := int64(0); lba < blocks; lba += 64 {
		writeSeq(ctx, t, v, exp, lba, 64, uint64(lba)+1)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	rng := newRand(seed, 0)
	plan := planWorkload(rng, 1, 30, blocks)
	for i := range plan[0] {
		plan[0][i].seq += 1 << 32
	}

	run := func(i, k int) (writes int) {
		d := base.clone()
		meta := filepath.Join(dir, fmt.Sprintf("r%d", i))
		crashMeta := meta + "-at-crash"
		if err := copyDir(baseMeta, meta); err != nil {
			t.Fatal(err)
		}
		what := fmt.Sprintf("seed %d point %d (crash at device write %d of the rebuild)", seed, i, k)
		p, err := pool.Open(ctx, pool.Options{MetaDir: meta, OpenDevice: d.open})
		if err != nil {
			t.Fatalf("%s: Open: %v", what, err)
		}
		v, err := p.Volume("r")
		if err != nil {
			t.Fatal(err)
		}
		var copyErr error
		d.failDevice(paths[1], 1)
		d.arm(k, crashMode(rng.IntN(int(numCrashModes))), newRand(seed, uint64(k)), func() {
			copyErr = copyDirStable(meta, crashMeta)
		})
		m := newModel(exp)
		var wg sync.WaitGroup
		wg.Go(func() { runWorkload(ctx, v, m, plan, d.crashed) })
		rerr := p.ReplaceDevice(ctx, paths[1], paths[3], nil)
		wg.Wait()
		writes, _ = d.counts()
		d.crashNow()
		_ = closeWithin(t, p, what)
		if k == 0 {
			if rerr != nil {
				t.Fatalf("%s: ReplaceDevice without a crash: %v", what, rerr)
			}
			return writes
		}
		if copyErr != nil {
			t.Fatalf("%s: copying the metadata directory: %v", what, copyErr)
		}
		after := d.afterCrash()
		p, err = pool.Open(ctx, pool.Options{MetaDir: crashMeta, OpenDevice: after.open})
		if err != nil {
			t.Errorf("%s: Open after the crash: %v", what, err)
			return writes
		}
		defer p.Close()
		v, err = p.Volume("r")
		if err != nil {
			t.Fatal(err)
		}
		state, errs := verifyVolume(ctx, v, m, blocks)
		for _, e := range errs {
			t.Errorf("%s: %v", what, e)
		}
		if st := p.Status(); !st.Degraded {
			// Claims full redundancy: prove it by losing one of the
			// other devices (one only: the pool keeps the first one
			// marked failed).
			other := paths[[]int{0, 2}[rng.IntN(2)]]
			after.arm(0, crashDropUnsynced, nil, nil)
			after.failDevice(other, 1)
			_, errs := verifyVolume(ctx, v, newModel(state), blocks)
			for _, e := range errs {
				t.Errorf("%s: Status not degraded after reboot (devices %+v), yet with %s lost: %v",
					what, st.Devices, filepath.Base(other), e)
			}
		}
		return writes
	}
	total := run(0, 0)
	points := 8
	if heavy() {
		points = 40
	}
	for i := 1; i <= points; i++ {
		k := 1 + total*i/(points+1) + rng.IntN(3)
		run(i, k)
		if t.Failed() {
			return
		}
	}
	t.Logf("%d device writes in a crash-free rebuild; %d crash points verified", total, points)
}
