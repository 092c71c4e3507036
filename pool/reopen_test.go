package pool

import (
	"context"
	"testing"

	"stave.dev/stave/pool/internal/layout"
)

// TestRecoverReopensLastSegment: after Recover (no segment is known to be
// sealed) the segment written last must take the appends and every older
// one must be sealed, so that the cleaner can take the older ones. An
// arbitrary pick (map order) used to leave a full, dead segment open and
// out of the cleaner's reach (TestSnapshotRevert's flake). The pick is
// checked over several Recovers, each of which used to pick at random
// among the segments.
func TestRecoverReopensLastSegment(t *testing.T) {
	ctx := context.Background()
	tp := newTestPool(t, 1, 64<<20)
	const blocks = 4096
	v, err := tp.p.CreateVolume(ctx, "v", blocks*layout.BlockSize, Policy{1, 0})
	if err != nil {
		t.Fatal(err)
	}
	for lba := int64(0); lba < blocks; lba += 256 {
		if err := v.WriteAt(ctx, pattern(lba, 256*layout.BlockSize), lba*layout.BlockSize, true); err != nil {
			t.Fatal(err)
		}
	}
	// Overwrite everything: the segments written first become garbage.
	for lba := int64(0); lba < blocks; lba += 256 {
		if err := v.WriteAt(ctx, pattern(lba+1, 256*layout.BlockSize), lba*layout.BlockSize, true); err != nil {
			t.Fatal(err)
		}
	}
	// The batch written last: one block, one batch.
	if err := v.WriteAt(ctx, pattern(blocks, layout.BlockSize), 0, true); err != nil {
		t.Fatal(err)
	}
	l, _ := blockLoc(t, tp.p, v, 0)
	want := l.row
	key := openKey(1, 0, false)
	tp.p.mu.Lock()
	nsegs := len(tp.p.mu.segs)
	tp.p.mu.Unlock()
	if nsegs < 4 {
		t.Fatalf("setup: %d segments in use, want at least 4", nsegs)
	}
	for i := range 6 {
		tp.recover(t)
		tp.p.mu.Lock()
		got := tp.p.mu.open[key]
		var unsealed []uint32
		for row, s := range tp.p.mu.segs {
			if !s.sealed && row != got {
				unsealed = append(unsealed, row)
			}
		}
		tp.p.mu.Unlock()
		if got != want || len(unsealed) > 0 {
			t.Fatalf("Recover %d: open segment %d, want %d (written last); other segments not sealed: %v", i, got, want, unsealed)
		}
	}
	if n := gcAll(t, tp.p); n == 0 {
		t.Fatalf("the cleaner freed nothing after Recover; space %+v", tp.p.Status().Space)
	}
	v = tp.vol(t, "v")
	for lba := int64(0); lba < blocks; lba += 256 {
		want := pattern(lba+1, 256*layout.BlockSize)
		if lba == 0 {
			copy(want, pattern(blocks, layout.BlockSize))
		}
		if got := readAll(t, v, lba*layout.BlockSize, 256*layout.BlockSize); string(got) != string(want) {
			t.Fatalf("blocks at LBA %d differ after Recover and GC", lba)
		}
	}
}
