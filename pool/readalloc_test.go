package pool

import (
	"bytes"
	"context"
	"testing"
)

// TestReadBlockNoAlloc pins the block read of the read path (a healthy
// chunk that passes its checksum) at zero allocations.
func TestReadBlockNoAlloc(t *testing.T) {
	ctx := context.Background()
	tp := newTestPool(t, 3, 64<<20)
	v, err := tp.p.CreateVolume(ctx, "a", 1<<20, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{7}, 4096)
	if err := v.WriteAt(ctx, want, 4096, true); err != nil {
		t.Fatal(err)
	}
	var l loc
	found := false
	if err := tp.p.forEachMapped(v.id, 1, 2, func(_ uint64, x *loc) error {
		l, found = *x, true
		return nil
	}); err != nil || !found {
		t.Fatalf("lookup: found %v, %v", found, err)
	}
	dst := make([]byte, 4096)
	var rerr error
	allocs := testing.AllocsPerRun(100, func() {
		if err := tp.p.readBlock(&l, dst); err != nil {
			rerr = err
		}
	})
	if rerr != nil {
		t.Fatal(rerr)
	}
	if !bytes.Equal(dst, want) {
		t.Fatal("read back wrong data")
	}
	if allocs != 0 {
		t.Errorf("readBlock: %v allocations per block, want 0", allocs)
	}
}
