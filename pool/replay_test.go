package pool

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// blockLoc returns the location and member devices of block lba of v.
func blockLoc(t *testing.T, p *Pool, v *Volume, lba uint64) (loc, []uint8) {
	t.Helper()
	var got *loc
	if err := p.forEachMapped(v.id, lba, lba+1, func(_ uint64, l *loc) error { c := *l; got = &c; return nil }); err != nil || got == nil {
		t.Fatalf("block %d not mapped: %v", lba, err)
	}
	m, err := p.members(got.row)
	if err != nil {
		t.Fatal(err)
	}
	return *got, m
}

// smash overwrites n bytes at off of the file with 0xA5.
func smash(t *testing.T, path string, off int64, n int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xa5}, n), off); err != nil {
		t.Fatal(err)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	os.RemoveAll(to)
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
}

// saveIndex closes the pool, keeps a copy of its index (MetaDir) in
// DIR/meta-old and opens the pool again. It returns the copy's path, for
// replayFrom.
func (tp *testPool) saveIndex(t *testing.T) string {
	t.Helper()
	saved := filepath.Join(tp.dir, "meta-old")
	tp.p.Close()
	copyDir(t, tp.opts.MetaDir, saved)
	tp.open(t)
	return saved
}

// replayFrom closes the pool, puts the index copy saved back and opens
// the pool, which replays everything logged since the copy was made.
func (tp *testPool) replayFrom(t *testing.T, saved string) {
	t.Helper()
	tp.p.Close()
	copyDir(t, saved, tp.opts.MetaDir)
	tp.open(t)
}

func readAll(t *testing.T, v *Volume, off int64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if err := v.ReadAt(context.Background(), b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestReplayTornTail replays the log after an old index checkpoint with a
// torn last batch (discarded) and with a broken batch in the middle
// (ErrCorruption).
func TestReplayTornTail(t *testing.T) {
	ctx := context.Background()
	for _, pc := range policies {
		for _, middle := range []bool{false, true} {
			name := pc.pol.String() + "/tail"
			if middle {
				name = pc.pol.String() + "/middle"
			}
			t.Run(name, func(t *testing.T) {
				tp := newTestPool(t, pc.n, testDevSize)
				v, err := tp.p.CreateVolume(ctx, "v", 8<<20, Policy{})
				if err != nil {
					t.Fatal(err)
				}
				a, b, c := pattern(10, 16384), pattern(11, 16384), pattern(12, 16384)
				if err := v.WriteAt(ctx, a, 0, false); err != nil {
					t.Fatal(err)
				}
				tp.reopen(t)
				old := tp.saveIndex(t)
				v = tp.vol(t, "v")
				if err := v.WriteAt(ctx, b, 40960, false); err != nil {
					t.Fatal(err)
				}
				if err := v.WriteAt(ctx, c, 81920, false); err != nil {
					t.Fatal(err)
				}
				victim := uint64(20)
				if middle {
					victim = 10
				}
				l, members := blockLoc(t, tp.p, v, victim)
				tp.p.Close()
				copyDir(t, old, tp.opts.MetaDir)
				// Tear m+1 chunks: their last 4 KiB never reached the disk.
				cl := int64(l.hdrLen) + int64(l.payloadLen)
				for i := 0; i <= pc.pol.Parity; i++ {
					smash(t, tp.devs[members[i]], tp.p.rowOff(l.row)+l.batchOff+cl-4096, 4096)
				}
				p, err := Open(ctx, tp.opts)
				if middle {
					if !errors.Is(err, ErrCorruption) {
						t.Fatalf("Open with a broken middle batch: %v, want ErrCorruption", err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				tp.p = p
				v = tp.vol(t, "v")
				if !bytes.Equal(readAll(t, v, 0, 16384), a) || !bytes.Equal(readAll(t, v, 40960, 16384), b) {
					t.Fatal("acknowledged data lost")
				}
				if !bytes.Equal(readAll(t, v, 81920, 16384), make([]byte, 16384)) {
					t.Fatal("torn batch applied")
				}
				d := pattern(13, 16384)
				if err := v.WriteAt(ctx, d, 81920, false); err != nil {
					t.Fatal(err)
				}
				tp.reopen(t)
				v = tp.vol(t, "v")
				if !bytes.Equal(readAll(t, v, 81920, 16384), d) || !bytes.Equal(readAll(t, v, 40960, 16384), b) {
					t.Fatal("data after torn tail lost")
				}
			})
		}
	}
}

// TestReconstructAfterCorruption flips bytes of a data block on disk: the
// read returns the right data, counts the error and repairs the chunk.
func TestReconstructAfterCorruption(t *testing.T) {
	ctx := context.Background()
	for _, pc := range policies[1:] {
		t.Run(pc.pol.String(), func(t *testing.T) {
			tp := newTestPool(t, pc.n, testDevSize)
			v, err := tp.p.CreateVolume(ctx, "v", 8<<20, Policy{})
			if err != nil {
				t.Fatal(err)
			}
			a := pattern(20, 256<<10)
			if err := v.WriteAt(ctx, a, 0, false); err != nil {
				t.Fatal(err)
			}
			// Corrupt block 3 (data) and, for 4+2, a second chunk's block.
			l, members := blockLoc(t, tp.p, v, 3)
			c, boff := l.chunk()
			dev := tp.devs[members[c]]
			off := tp.p.rowOff(l.row) + l.batchOff + boff
			smash(t, dev, off+100, 10)
			if pc.pol.Parity == 2 {
				l2, _ := blockLoc(t, tp.p, v, 60)
				c2, boff2 := l2.chunk()
				if c2 != c {
					smash(t, tp.devs[members[c2]], tp.p.rowOff(l2.row)+l2.batchOff+boff2, 4096)
				}
			}
			if got := readAll(t, v, 0, 256<<10); !bytes.Equal(got, a) {
				t.Fatal("wrong data after corruption")
			}
			st := tp.p.Status()
			var cs, rep int64
			for _, d := range st.Devices {
				cs += d.ChecksumErrors
				rep += d.Repairs
			}
			if cs == 0 || rep == 0 {
				t.Fatalf("checksum errors %d repairs %d", cs, rep)
			}
			// Repaired in place: the bytes on disk are right again.
			f, _ := os.Open(dev)
			buf := make([]byte, 4096)
			f.ReadAt(buf, off)
			f.Close()
			if !bytes.Equal(buf, a[3*4096:4*4096]) {
				t.Fatal("block not repaired in place")
			}
			rep2, err := tp.p.Scrub(ctx, nil)
			if err != nil || rep2.Unrecoverable != 0 || rep2.ChecksumErrors != 0 || rep2.Stripes == 0 {
				t.Fatalf("scrub after repair: %+v %v", rep2, err)
			}
		})
	}
}

// TestMissingDevice opens a pool with m devices gone: reads reconstruct,
// writes go on as degraded stripes, ReplaceDevice rebuilds, then another
// device may fail.
func TestMissingDevice(t *testing.T) {
	ctx := context.Background()
	for _, pc := range policies[1:] {
		t.Run(pc.pol.String(), func(t *testing.T) {
			tp := newTestPool(t, pc.n, testDevSize)
			v, err := tp.p.CreateVolume(ctx, "v", 8<<20, Policy{})
			if err != nil {
				t.Fatal(err)
			}
			a := pattern(30, 1<<20)
			if err := v.WriteAt(ctx, a, 0, false); err != nil {
				t.Fatal(err)
			}
			tp.p.Close()
			for i := 0; i < pc.pol.Parity; i++ {
				os.Remove(tp.devs[i])
			}
			tp.open(t)
			st := tp.p.Status()
			if !st.Degraded || st.Devices[0].State != DeviceMissing {
				t.Fatalf("status %+v", st)
			}
			v = tp.vol(t, "v")
			if !bytes.Equal(readAll(t, v, 0, 1<<20), a) {
				t.Fatal("wrong data with missing devices")
			}
			b := pattern(31, 64<<10)
			if err := v.WriteAt(ctx, b, 2<<20, false); err != nil {
				t.Fatalf("degraded write: %v", err)
			}
			for i := 0; i < pc.pol.Parity; i++ {
				nd := tp.devs[i] + ".new"
				os.WriteFile(nd, nil, 0o644)
				os.Truncate(nd, testDevSize)
				var last Progress
				if err := tp.p.ReplaceDevice(ctx, tp.devs[i], nd, func(p Progress) { last = p }); err != nil {
					t.Fatal(err)
				}
				if last.Done != last.Total || last.Repaired == 0 {
					t.Fatalf("progress %+v", last)
				}
			}
			// Lose m other devices: the rebuilt chunks must serve.
			tp.reopen(t)
			tp.p.Close()
			for i := pc.pol.Parity; i < 2*pc.pol.Parity; i++ {
				os.Remove(tp.devs[i])
			}
			tp.open(t)
			v = tp.vol(t, "v")
			if !bytes.Equal(readAll(t, v, 0, 1<<20), a) || !bytes.Equal(readAll(t, v, 2<<20, 64<<10), b) {
				t.Fatal("wrong data after rebuild and a second loss")
			}
		})
	}
}
