package faulttest

import (
	"context"
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
// and neither sees the other's writes (also after a reopen); deleting the
// clone and the snapshot lets GC free the space A held.
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
}
