package pool

import (
	"bytes"
	"context"
	"testing"
)

func gcAll(t *testing.T, p *Pool) int {
	t.Helper()
	n := 0
	for {
		k, err := p.gcOnce(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if k == 0 {
			return n
		}
		n += k
	}
}

// TestGC overwrites and unmaps data, cleans, and checks that space comes
// back and that data survive reopen and Recover.
func TestGC(t *testing.T) {
	ctx := context.Background()
	for _, pc := range policies {
		t.Run(pc.pol.String(), func(t *testing.T) {
			tp := newTestPool(t, pc.n, 48<<20)
			v, err := tp.p.CreateVolume(ctx, "g", 8<<20, Policy{})
			if err != nil {
				t.Fatal(err)
			}
			model := make([]byte, 8<<20)
			for round := 0; round < 4; round++ {
				for off := int64(0); off < 6<<20; off += 1 << 20 {
					b := pattern(int64(round*100)+off, 1<<20)
					copy(model[off:], b)
					if err := v.WriteAt(ctx, b, off, false); err != nil {
						t.Fatalf("round %d off %d: %v", round, off, err)
					}
				}
			}
			if err := v.Unmap(ctx, 1<<20, 2<<20); err != nil {
				t.Fatal(err)
			}
			clear(model[1<<20 : 3<<20])
			before := tp.p.Status().Space
			tp.p.mu.Lock()
			for r, s := range tp.p.mu.segs { // seal everything to clean it
				s.sealed = true
				delete(tp.p.mu.open, [2]uint8{s.k, s.m})
				_ = r
			}
			tp.p.mu.Unlock()
			if gcAll(t, tp.p) == 0 {
				t.Fatal("nothing cleaned")
			}
			after := tp.p.Status().Space
			if after.Free <= before.Free || after.Garbage >= before.Garbage || after.Logical != before.Logical {
				t.Fatalf("space before %+v after %+v", before, after)
			}
			check := func(what string) {
				v := tp.vol(t, "g")
				if got := readAll(t, v, 0, 8<<20); !bytes.Equal(got, model) {
					t.Fatalf("%s: data differ", what)
				}
			}
			check("after gc")
			tp.reopen(t)
			check("after reopen")
			tp.p.Close()
			if err := Recover(ctx, tp.opts); err != nil {
				t.Fatal(err)
			}
			tp.open(t)
			check("after recover")
			if l := tp.p.Status().Space.Logical; l != 4<<20 {
				t.Fatalf("logical after recover %d", l)
			}
		})
	}
}

// TestGCKeepsPoolWritable overwrites a small volume many times its pool's
// capacity: the cleaner must keep up (writes wait for it, never fail).
func TestGCKeepsPoolWritable(t *testing.T) {
	ctx := context.Background()
	tp := newTestPool(t, 3, 32<<20) // 7 segments of 4 MiB per device
	v, err := tp.p.CreateVolume(ctx, "w", 4<<20, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	model := make([]byte, 4<<20)
	for i := 0; i < 120; i++ {
		off := int64(i%4) << 20
		b := pattern(int64(i), 1<<20)
		copy(model[off:], b)
		if err := v.WriteAt(ctx, b, off, false); err != nil {
			t.Fatalf("write %d: %v (space %+v)", i, err, tp.p.Status().Space)
		}
	}
	if got := readAll(t, v, 0, 4<<20); !bytes.Equal(got, model) {
		t.Fatal("data differ")
	}
	tp.reopen(t)
	if got := readAll(t, tp.vol(t, "w"), 0, 4<<20); !bytes.Equal(got, model) {
		t.Fatal("data differ after reopen")
	}
}
