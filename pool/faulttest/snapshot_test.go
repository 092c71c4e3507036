package faulttest

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"stave.dev/stave/pool"
)

// waitFor polls cond (every 20 ms, up to limit) and reports whether it
// became true. The pool's cleaner runs on its own GCInterval timer, so
// there is no event to wait on.
func waitFor(ctx context.Context, limit time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			return cond()
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// TestSnapshot: write A, snapshot, overwrite with B; a clone of the
// snapshot reads A; the clone and the parent are written independently
// and neither sees the other's writes (also after a reopen and after an
// index rebuild from the devices); deleting the clone and the snapshot
// lets GC free the space A held.
func TestSnapshot(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	f := newFilePool(ctx, t, 3, 128<<20, 50*time.Millisecond)
	const blocks = 4096 // 16 MiB: A fills whole segments
	v, err := f.p.CreateVolume(ctx, "v", blocks*BlockSize, pool.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	a := map[int64]uint64{}
	for lba := int64(0); lba < blocks; lba += 64 {
		writeSeq(ctx, t, v, a, lba, 64, 1<<32|uint64(lba))
	}
	if err := f.p.CreateSnapshot(ctx, "v", "s1"); err != nil {
		must(t, err, "CreateSnapshot")
	}
	snaps, err := f.p.Snapshots("v")
	if err != nil || len(snaps) != 1 || snaps[0].Name != "s1" {
		t.Fatalf("Snapshots(v) = %+v, %v; want [s1]", snaps, err)
	}
	vExp := map[int64]uint64{}
	for lba := int64(0); lba < blocks; lba += 64 {
		writeSeq(ctx, t, v, vExp, lba, 64, 2<<32|uint64(lba))
	}
	c, err := f.p.Clone(ctx, "v", "s1", "c")
	if err != nil {
		must(t, err, "Clone")
	}
	cExp := copyMap(a)
	expectBlocks(ctx, t, c, cExp, blocks, "clone of s1 (want A)")
	expectBlocks(ctx, t, v, vExp, blocks, "parent after snapshot + overwrite (want B)")

	// Independent writes: clone's first half, parent's second half, plus
	// an unmap on each.
	for lba := int64(0); lba < blocks/2; lba += 64 {
		writeSeq(ctx, t, c, cExp, lba, 64, 3<<32|uint64(lba))
	}
	for lba := int64(blocks / 2); lba < blocks; lba += 64 {
		writeSeq(ctx, t, v, vExp, lba, 64, 4<<32|uint64(lba))
	}
	if err := c.Unmap(ctx, 100*BlockSize, 10*BlockSize); err != nil {
		t.Fatal(err)
	}
	for lba := int64(100); lba < 110; lba++ {
		delete(cExp, lba)
	}
	if err := v.Unmap(ctx, 3000*BlockSize, 10*BlockSize); err != nil {
		t.Fatal(err)
	}
	for lba := int64(3000); lba < 3010; lba++ {
		delete(vExp, lba)
	}
	for _, d := range []interface{ Flush(context.Context) error }{v, c} {
		if err := d.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	expectBlocks(ctx, t, c, cExp, blocks, "clone after independent writes")
	expectBlocks(ctx, t, v, vExp, blocks, "parent after independent writes")
	f.close()
	f.open(ctx)
	v, c = f.volume("v"), f.volume("c")
	expectBlocks(ctx, t, c, cExp, blocks, "clone after reopen")
	expectBlocks(ctx, t, v, vExp, blocks, "parent after reopen")
	// A second clone of the same snapshot still reads A.
	c2, err := f.p.Clone(ctx, "v", "s1", "c2")
	if err != nil {
		t.Fatalf("second Clone: %v", err)
	}
	expectBlocks(ctx, t, c2, a, blocks, "second clone of s1 (want A)")
	if t.Failed() {
		t.FailNow()
	}
	// Lose the index: Recover rebuilds snapshots, clones and every
	// retained version from the log.
	f.close()
	deleteIndex(t, f.opts.MetaDir)
	must(t, pool.Recover(ctx, f.opts), "Recover")
	f.open(ctx)
	if snaps, err := f.p.Snapshots("v"); err != nil || len(snaps) != 1 || snaps[0].Name != "s1" {
		t.Fatalf("Snapshots(v) after Recover = %+v, %v; want [s1]", snaps, err)
	}
	for _, vi := range f.p.Volumes() {
		if (vi.Name == "c" || vi.Name == "c2") && (vi.Parent != "v" || vi.ParentSnapshot != "s1") {
			t.Errorf("after Recover clone %s has origin %s@%s, want v@s1", vi.Name, vi.Parent, vi.ParentSnapshot)
		}
	}
	v = f.volume("v")
	expectBlocks(ctx, t, f.volume("c"), cExp, blocks, "clone after Recover")
	expectBlocks(ctx, t, f.volume("c2"), a, blocks, "second clone after Recover")
	expectBlocks(ctx, t, v, vExp, blocks, "parent after Recover")
	if t.Failed() {
		t.FailNow()
	}

	// Drop everything that pins A; GC must give the space back.
	before := f.p.Status().Space
	for _, name := range []string{"c", "c2"} {
		if err := f.p.DeleteVolume(ctx, name); err != nil {
			t.Fatalf("DeleteVolume(%s): %v", name, err)
		}
	}
	if err := f.p.DeleteSnapshot(ctx, "v", "s1"); err != nil {
		t.Fatalf("DeleteSnapshot: %v", err)
	}
	if snaps, err := f.p.Snapshots("v"); err != nil || len(snaps) != 0 {
		t.Errorf("Snapshots(v) after delete = %+v, %v; want none", snaps, err)
	}
	// A is 16 MiB of data (24 MiB with parity); demand at least half back.
	const want = 12 << 20
	var after pool.SpaceStatus
	ok := waitFor(ctx, 30*time.Second, func() bool {
		after = f.p.Status().Space
		return after.Physical <= before.Physical-want && after.Free >= before.Free+want
	})
	t.Logf("space before delete %+v, after GC %+v", before, after)
	if !ok {
		t.Errorf("GC did not free the deleted snapshot's space within 30s: physical %d -> %d, free %d -> %d (want >= %d bytes back)",
			before.Physical, after.Physical, before.Free, after.Free, want)
	}
	expectBlocks(ctx, t, v, vExp, blocks, "parent after snapshot delete + GC")
	f.close()
	f.open(ctx)
	expectBlocks(ctx, t, f.volume("v"), vExp, blocks, "parent after GC + reopen")
	f.close()
	deleteIndex(t, f.opts.MetaDir)
	must(t, pool.Recover(ctx, f.opts), "Recover")
	f.open(ctx)
	expectBlocks(ctx, t, f.volume("v"), vExp, blocks, "parent after GC + Recover")
	if vs := f.p.Volumes(); len(vs) != 1 {
		t.Errorf("volumes after GC + Recover: %+v, want only v", vs)
	}
	if snaps, err := f.p.Snapshots("v"); err != nil || len(snaps) != 0 {
		t.Errorf("Snapshots(v) after GC + Recover = %+v, %v; want none", snaps, err)
	}
}

// TestSnapshotRevert: write A, snapshot s1, overwrite part with B and
// unmap some of A, snapshot s2, write C; revert to s1 reads A exactly, a
// write after the revert lands on top, s2 still reads B; the result
// survives a reopen and an index rebuild; deleting the snapshots lets GC
// take back the space of the versions only they read.
func TestSnapshotRevert(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	f := newFilePool(ctx, t, 3, 128<<20, 50*time.Millisecond)
	const blocks = 2048
	v, err := f.p.CreateVolume(ctx, "v", blocks*BlockSize, pool.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	a := map[int64]uint64{}
	for lba := int64(0); lba < blocks; lba += 64 {
		writeSeq(ctx, t, v, a, lba, 64, 1<<32|uint64(lba))
	}
	must(t, f.p.CreateSnapshot(ctx, "v", "s1"), "CreateSnapshot s1")
	b := copyMap(a)
	for lba := int64(0); lba < blocks/2; lba += 64 {
		writeSeq(ctx, t, v, b, lba, 64, 2<<32|uint64(lba))
	}
	must(t, v.Unmap(ctx, (blocks-256)*BlockSize, 128*BlockSize), "Unmap")
	for lba := int64(blocks - 256); lba < blocks-128; lba++ {
		delete(b, lba)
	}
	must(t, f.p.CreateSnapshot(ctx, "v", "s2"), "CreateSnapshot s2")
	cur := copyMap(b)
	for lba := int64(blocks / 4); lba < blocks; lba += 64 {
		writeSeq(ctx, t, v, cur, lba, 64, 3<<32|uint64(lba))
	}
	expectBlocks(ctx, t, v, cur, blocks, "head before revert")
	// Filler in another volume seals the segments holding B and C, so
	// that the cleaner may take them once no snapshot reads them.
	const fill = 4096
	fv, err := f.p.CreateVolume(ctx, "filler", fill*BlockSize, pool.Policy{})
	must(t, err, "CreateVolume filler")
	for lba := int64(0); lba < fill; lba += 64 {
		writeSeq(ctx, t, fv, map[int64]uint64{}, lba, 64, 5<<32|uint64(lba))
	}
	must(t, f.p.Revert(ctx, "v", "s1"), "Revert")
	expectBlocks(ctx, t, v, a, blocks, "head after revert to s1 (want A)")
	cur = copyMap(a)
	writeSeq(ctx, t, v, cur, 10, 20, 4<<32)
	must(t, v.Unmap(ctx, 100*BlockSize, 5*BlockSize), "Unmap after revert")
	for lba := int64(100); lba < 105; lba++ {
		delete(cur, lba)
	}
	expectBlocks(ctx, t, v, cur, blocks, "head after revert + writes")
	check := func(what string) {
		t.Helper()
		v := f.volume("v")
		expectBlocks(ctx, t, v, cur, blocks, "head "+what)
		c, err := f.p.Clone(ctx, "v", "s2", "check")
		must(t, err, "Clone s2")
		expectBlocks(ctx, t, c, b, blocks, "s2 "+what)
		must(t, f.p.DeleteVolume(ctx, "check"), "DeleteVolume check")
		if t.Failed() {
			t.FailNow()
		}
	}
	check("after revert")
	f.close()
	f.open(ctx)
	check("after reopen")
	f.close()
	deleteIndex(t, f.opts.MetaDir)
	must(t, pool.Recover(ctx, f.opts), "Recover")
	f.open(ctx)
	check("after Recover")
	// Only the head's blocks stay live once the snapshots are gone.
	before := f.p.Status().Space
	must(t, f.p.DeleteSnapshot(ctx, "v", "s1"), "DeleteSnapshot s1")
	must(t, f.p.DeleteSnapshot(ctx, "v", "s2"), "DeleteSnapshot s2")
	var after pool.SpaceStatus
	ok := waitFor(ctx, 30*time.Second, func() bool {
		after = f.p.Status().Space
		return after.Physical < before.Physical && after.Garbage < before.Garbage+BlockSize
	})
	t.Logf("space before snapshot deletes %+v, after GC %+v", before, after)
	if !ok {
		t.Errorf("GC did not free the space only the snapshots read: physical %d -> %d", before.Physical, after.Physical)
	}
	if want := int64(len(cur)+fill) * BlockSize; after.Logical != want {
		t.Errorf("logical %d after GC, want %d (the head's blocks and the filler)", after.Logical, want)
	}
	expectBlocks(ctx, t, f.volume("v"), cur, blocks, "head after snapshot deletes + GC")
	f.close()
	deleteIndex(t, f.opts.MetaDir)
	must(t, pool.Recover(ctx, f.opts), "Recover")
	f.open(ctx)
	expectBlocks(ctx, t, f.volume("v"), cur, blocks, "head after GC + Recover")
}

// snapState is what a pool of volumes and snapshots must read: per volume
// its blocks (LBA -> write seq) and its snapshots' blocks.
type snapState struct {
	vols  map[string]map[int64]uint64
	snaps map[string]map[string]map[int64]uint64
}

func (s snapState) clone() snapState {
	c := snapState{vols: map[string]map[int64]uint64{}, snaps: map[string]map[string]map[int64]uint64{}}
	for v, b := range s.vols {
		c.vols[v] = copyMap(b)
	}
	for v, ss := range s.snaps {
		c.snaps[v] = map[string]map[int64]uint64{}
		for n, b := range ss {
			c.snaps[v][n] = b // snapshots never change
		}
	}
	return c
}

// snapOp is one step of TestCrashSnapshot's script.
type snapOp struct {
	kind     string // write, unmap, snapshot, unsnapshot, clone, revert, delete
	vol, arg string
	to       string // clone: the new volume
	lba      int64
	n        int
	seq      uint64
}

// apply runs op on p and returns the state after it.
func (o snapOp) apply(ctx context.Context, p *pool.Pool, s snapState) (snapState, error) {
	n := s.clone()
	var err error
	switch o.kind {
	case "write":
		var v *pool.Volume
		if v, err = p.Volume(o.vol); err == nil {
			err = v.WriteAt(ctx, blockData(o.lba, o.n, o.seq), o.lba*BlockSize, true)
		}
		for i := range int64(o.n) {
			n.vols[o.vol][o.lba+i] = o.seq
		}
	case "unmap":
		var v *pool.Volume
		if v, err = p.Volume(o.vol); err == nil {
			err = v.Unmap(ctx, o.lba*BlockSize, int64(o.n)*BlockSize)
		}
		for i := range int64(o.n) {
			delete(n.vols[o.vol], o.lba+i)
		}
	case "snapshot":
		err = p.CreateSnapshot(ctx, o.vol, o.arg)
		if n.snaps[o.vol] == nil {
			n.snaps[o.vol] = map[string]map[int64]uint64{}
		}
		n.snaps[o.vol][o.arg] = copyMap(s.vols[o.vol])
	case "unsnapshot":
		err = p.DeleteSnapshot(ctx, o.vol, o.arg)
		delete(n.snaps[o.vol], o.arg)
	case "clone":
		_, err = p.Clone(ctx, o.vol, o.arg, o.to)
		n.vols[o.to] = copyMap(s.snaps[o.vol][o.arg])
	case "revert":
		err = p.Revert(ctx, o.vol, o.arg)
		n.vols[o.vol] = copyMap(s.snaps[o.vol][o.arg])
	case "delete":
		err = p.DeleteVolume(ctx, o.vol)
		delete(n.vols, o.vol)
		delete(n.snaps, o.vol)
	}
	return n, err
}

// snapScript is a random script over volume v (blocks blocks): writes,
// unmaps, snapshots, clones (written too), reverts and deletes.
func snapScript(rng interface {
	IntN(int) int
	Int64N(int64) int64
}, blocks int64, steps int) []snapOp {
	var ops []snapOp
	var seq uint64
	snaps := []string{}
	clones := []string{}
	for i := range steps {
		seq++
		vol := "v"
		if len(clones) > 0 && rng.IntN(4) == 0 {
			vol = clones[rng.IntN(len(clones))]
		}
		n := 1 + rng.IntN(64)
		lba := rng.Int64N(blocks - int64(n))
		switch r := rng.IntN(20); {
		case r < 11:
			ops = append(ops, snapOp{kind: "write", vol: vol, lba: lba, n: n, seq: seq})
		case r < 13:
			ops = append(ops, snapOp{kind: "unmap", vol: vol, lba: lba, n: n})
		case r < 15:
			name := fmt.Sprintf("s%d", i)
			snaps = append(snaps, name)
			ops = append(ops, snapOp{kind: "snapshot", vol: "v", arg: name})
		case r < 16 && len(snaps) > 0:
			j := rng.IntN(len(snaps))
			name := fmt.Sprintf("c%d", i)
			ops = append(ops, snapOp{kind: "clone", vol: "v", arg: snaps[j], to: name})
			clones = append(clones, name)
		case r < 17 && len(snaps) > 0:
			ops = append(ops, snapOp{kind: "revert", vol: "v", arg: snaps[rng.IntN(len(snaps))]})
		case r < 18 && len(snaps) > 0:
			j := rng.IntN(len(snaps))
			ops = append(ops, snapOp{kind: "unsnapshot", vol: "v", arg: snaps[j]})
			snaps = append(snaps[:j], snaps[j+1:]...)
		case r < 19 && len(clones) > 0:
			j := rng.IntN(len(clones))
			ops = append(ops, snapOp{kind: "delete", vol: clones[j]})
			clones = append(clones[:j], clones[j+1:]...)
		default:
			ops = append(ops, snapOp{kind: "write", vol: "v", lba: lba, n: n, seq: seq})
		}
	}
	return ops
}

// snapDiff returns how p differs from s ("" if it does not).
func snapDiff(ctx context.Context, p *pool.Pool, s snapState, blocks int64) string {
	var names []string
	for _, vi := range p.Volumes() {
		names = append(names, vi.Name)
	}
	var want []string
	for v := range s.vols {
		want = append(want, v)
	}
	sort.Strings(want)
	if fmt.Sprint(names) != fmt.Sprint(want) {
		return fmt.Sprintf("volumes %v, want %v", names, want)
	}
	content := func(v *pool.Volume, exp map[int64]uint64, what string) string {
		b := make([]byte, blocks*BlockSize)
		if err := v.ReadAt(ctx, b, 0); err != nil {
			return fmt.Sprintf("%s: read: %v", what, err)
		}
		w := make([]byte, BlockSize)
		for lba := range blocks {
			fillBlock(w, lba, exp[lba])
			if string(b[lba*BlockSize:(lba+1)*BlockSize]) != string(w) {
				return fmt.Sprintf("%s: block %d differs (want seq %d)", what, lba, exp[lba])
			}
		}
		return ""
	}
	for _, name := range names {
		v, err := p.Volume(name)
		if err != nil {
			return err.Error()
		}
		if d := content(v, s.vols[name], "volume "+name); d != "" {
			return d
		}
		ss, err := p.Snapshots(name)
		if err != nil {
			return err.Error()
		}
		var got, want []string
		for _, x := range ss {
			got = append(got, x.Name)
		}
		for x := range s.snaps[name] {
			want = append(want, x)
		}
		sort.Strings(got)
		sort.Strings(want)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Sprintf("snapshots of %s %v, want %v", name, got, want)
		}
		for _, x := range got {
			c, err := p.Clone(ctx, name, x, "check")
			if err != nil {
				return err.Error()
			}
			d := content(c, s.snaps[name][x], "snapshot "+name+"@"+x)
			if err := p.DeleteVolume(ctx, "check"); err != nil {
				return err.Error()
			}
			if d != "" {
				return d
			}
		}
	}
	return ""
}

// TestCrashSnapshot runs a script of writes, unmaps, snapshots, clones,
// reverts and deletes on a 2+1 pool of crashable memory devices with the
// cleaner running, and crashes at device write k for a sweep of k. After
// the crash (with the index as it was, and with the index lost and
// rebuilt by Recover) the pool must read exactly the state after the last
// acknowledged step, or after the step in flight: volumes, snapshots and
// every block of each.
func TestCrashSnapshot(t *testing.T) {
	seed := testSeed(t)
	ctx := testContext(t, 3*time.Minute)
	dir := t.TempDir()
	base := newMemDisks()
	var paths []string
	for i := range 3 {
		p := filepath.Join(dir, fmt.Sprintf("mem%d", i))
		base.add(p, superblockArea+8*testSegmentSize)
		paths = append(paths, p)
	}
	baseMeta := filepath.Join(dir, "meta")
	must(t, pool.Create(ctx, pool.CreateOptions{Devices: paths, MetaDir: baseMeta, SegmentSize: testSegmentSize, OpenDevice: base.open}), "Create")
	p, err := pool.Open(ctx, pool.Options{MetaDir: baseMeta, OpenDevice: base.open})
	must(t, err, "Open")
	const blocks = 256
	_, err = p.CreateVolume(ctx, "v", blocks*BlockSize, pool.Policy{})
	must(t, err, "CreateVolume")
	must(t, p.Close(), "Close")
	// About 16 MiB of writes over a 1 MiB volume: segments seal and the
	// cleaner (every 2 ms) moves kept versions around.
	script := snapScript(newRand(seed, 0), blocks, 150)
	start := snapState{vols: map[string]map[int64]uint64{"v": {}}, snaps: map[string]map[string]map[int64]uint64{}}
	// A dry run counts the device writes of the whole script.
	total := 0
	{
		d := base.clone()
		meta := filepath.Join(dir, "dry")
		if err := copyDir(baseMeta, meta); err != nil {
			t.Fatal(err)
		}
		p, err := pool.Open(ctx, pool.Options{MetaDir: meta, OpenDevice: d.open, GCInterval: 2 * time.Millisecond})
		must(t, err, "Open")
		d.arm(0, crashDropUnsynced, newRand(seed, 1), nil)
		s := start
		for _, o := range script {
			if s, err = o.apply(ctx, p, s); err != nil {
				t.Fatalf("dry run: %+v: %v", o, err)
			}
		}
		total, _ = d.counts()
		t.Logf("dry run: space %+v", p.Status().Space)
		must(t, p.Close(), "Close")
	}
	points := 16
	if heavy() {
		points = 80
	}
	t.Logf("%d steps, %d device writes, %d crash points", len(script), total, points)
	for i := range points {
		k := 1 + i*total/points
		mode := crashMode(i % int(numCrashModes))
		what := fmt.Sprintf("seed %d crash at device write %d (%s)", seed, k, mode)
		d := base.clone()
		meta := filepath.Join(dir, fmt.Sprintf("k%d", i))
		crashMeta := meta + "-at-crash"
		if err := copyDir(baseMeta, meta); err != nil {
			t.Fatal(err)
		}
		p, err := pool.Open(ctx, pool.Options{MetaDir: meta, OpenDevice: d.open, GCInterval: 2 * time.Millisecond})
		if err != nil {
			t.Fatalf("%s: Open: %v", what, err)
		}
		var copyErr error
		d.arm(k, mode, newRand(seed, uint64(k)), func() { copyErr = copyDirStable(meta, crashMeta) })
		acked, inflight := start, snapState{}
		done := 0
		for _, o := range script {
			if d.crashed() {
				break
			}
			next, err := o.apply(ctx, p, acked)
			if err != nil {
				inflight = next
				break
			}
			acked = next
			done++
		}
		d.crashNow()
		_ = closeWithin(t, p, what)
		if copyErr != nil {
			t.Fatalf("%s: copying the metadata directory: %v", what, copyErr)
		}
		if done == len(script) {
			t.Logf("%s: the script ended before the crash", what)
		}
		check := func(variant string, d *memDisks, meta string) {
			t.Helper()
			p, err := pool.Open(ctx, pool.Options{MetaDir: meta, OpenDevice: d.open, GCInterval: time.Hour})
			if err != nil {
				t.Errorf("%s, %s: Open: %v", what, variant, err)
				return
			}
			defer p.Close()
			da := snapDiff(ctx, p, acked, blocks)
			if da == "" {
				return
			}
			if inflight.vols != nil {
				// The diff checks clone snapshots through clones it
				// deletes again: compare with the other candidate.
				if di := snapDiff(ctx, p, inflight, blocks); di == "" {
					return
				} else {
					t.Errorf("%s, %s, after %d of %d steps: neither the acknowledged state (%s) nor the one with step %+v (%s)",
						what, variant, done, len(script), da, script[done], di)
					return
				}
			}
			t.Errorf("%s, %s, after %d of %d steps: %s", what, variant, done, len(script), da)
		}
		check("index at crash", d.afterCrash(), crashMeta)
		lost := meta + "-lost"
		if err := copyDir(crashMeta, lost); err != nil {
			t.Fatal(err)
		}
		deleteIndex(t, lost)
		d2 := d.afterCrash()
		if err := pool.Recover(ctx, pool.Options{MetaDir: lost, OpenDevice: d2.open}); err != nil {
			t.Errorf("%s: Recover: %v", what, err)
			continue
		}
		check("index deleted + Recover", d2, lost)
	}
}
