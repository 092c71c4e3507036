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

// TestGCDeadSegments cleans segments without live blocks, which the
// cleaner scans by their headers only: the tombstones of such a segment
// must still be carried (they hide older data elsewhere), and a batch
// with meta records is still read whole (the volume's create record).
// Recover, which rebuilds the index from the log alone, shows both.
func TestGCDeadSegments(t *testing.T) {
	ctx := context.Background()
	for _, pc := range policies {
		t.Run(pc.pol.String(), func(t *testing.T) {
			tp := newTestPool(t, pc.n, 48<<20)
			p := tp.p
			// seal seals every segment (so the cleaner may take it) and
			// returns the rows that were still open.
			seal := func() []uint32 {
				p.mu.Lock()
				defer p.mu.Unlock()
				var rows []uint32
				for r, s := range p.mu.segs {
					if !s.sealed {
						rows = append(rows, r)
					}
					s.sealed = true
				}
				clear(p.mu.open)
				return rows
			}
			live := func(rows []uint32) int64 {
				p.mu.Lock()
				defer p.mu.Unlock()
				var n int64
				for _, r := range rows {
					n += p.mu.segs[r].live
				}
				return n
			}
			clean := func(what string, rows []uint32) {
				t.Helper()
				if n := live(rows); n != 0 {
					t.Fatalf("%s: %d live blocks, want a dead segment", what, n)
				}
				for _, r := range rows {
					if err := p.cleanSegment(ctx, r); err != nil {
						t.Fatalf("%s: clean segment %d: %v", what, r, err)
					}
				}
			}
			v, err := p.CreateVolume(ctx, "d", 1<<20, Policy{})
			if err != nil {
				t.Fatal(err)
			}
			// 1: the create record and blocks 0-15.
			if err := v.WriteAt(ctx, pattern(1, 64<<10), 0, false); err != nil {
				t.Fatal(err)
			}
			first := seal()
			// 2: tombstones of blocks 0-7 and block 128, overwritten in 3.
			if err := v.Unmap(ctx, 0, 32<<10); err != nil {
				t.Fatal(err)
			}
			if err := v.WriteAt(ctx, pattern(2, 4096), 128*4096, false); err != nil {
				t.Fatal(err)
			}
			second := seal()
			want := pattern(3, 4096)
			if err := v.WriteAt(ctx, want, 128*4096, false); err != nil {
				t.Fatal(err)
			}
			seal()
			model := make([]byte, 1<<20)
			copy(model[32<<10:64<<10], pattern(1, 64<<10)[32<<10:])
			copy(model[128*4096:], want)
			check := func(what string) {
				t.Helper()
				tp.p.Close()
				if err := Recover(ctx, tp.opts); err != nil {
					t.Fatal(err)
				}
				tp.open(t)
				p = tp.p
				got := readAll(t, tp.vol(t, "d"), 0, 1<<20)
				for i := 0; i < 256; i++ {
					if !bytes.Equal(got[i*4096:(i+1)*4096], model[i*4096:(i+1)*4096]) {
						t.Fatalf("%s: after recover, block %d differs", what, i)
					}
				}
			}
			// The tombstones hide blocks 0-7 of the first segment.
			clean("tombstones", second)
			check("tombstones carried")
			// The first segment dies too; its create record is carried.
			v = tp.vol(t, "d")
			if err := v.Unmap(ctx, 32<<10, 32<<10); err != nil {
				t.Fatal(err)
			}
			clear(model[32<<10 : 64<<10])
			seal()
			clean("create record", first)
			check("create record carried")
		})
	}
}

// TestSegStateOthers: the count of non-data records per segment, which
// lets the cleaner free a dead segment without reading it, is kept
// through reopen and Recover, and reads as unknown (-1) from a state
// stored without it.
func TestSegStateOthers(t *testing.T) {
	ctx := context.Background()
	tp := newTestPool(t, 1, 48<<20)
	v, err := tp.p.CreateVolume(ctx, "o", 1<<20, Policy{}) // one meta record
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, pattern(1, 64<<10), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Unmap(ctx, 0, 8<<10); err != nil { // one tombstone
		t.Fatal(err)
	}
	others := func(what string) {
		t.Helper()
		tp.p.mu.Lock()
		defer tp.p.mu.Unlock()
		var n int64
		for _, s := range tp.p.mu.segs {
			n += s.others
		}
		if n != 2 {
			t.Fatalf("%s: %d non-data records counted, want 2 (a create record, a tombstone)", what, n)
		}
	}
	others("written")
	tp.reopen(t)
	others("reopened")
	tp.p.Close()
	if err := Recover(ctx, tp.opts); err != nil {
		t.Fatal(err)
	}
	tp.open(t)
	others("recovered")

	s := segState{k: 2, m: 1, sealed: true, tail: 1 << 20, blocks: 7, live: 3, parity: 4096, minVer: 9, others: 5}
	b := s.appendTo(nil, 0, 1)
	got, err := decodeSegState(b)
	if err != nil || got != s {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, s)
	}
	old, err := decodeSegState(b[:len(b)-8])
	if err != nil || old.others != -1 || old.minVer != 9 {
		t.Fatalf("state without the count: %+v, %v; want others -1", old, err)
	}
}
