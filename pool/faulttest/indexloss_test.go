package faulttest

import (
	"bytes"
	"context"
	"fmt"
	"reflect"
	"sort"
	"testing"
	"time"

	"stave.dev/stave/pool"
)

// readAll returns the whole content of every volume of p, by name.
func readAll(ctx context.Context, t *testing.T, p *pool.Pool) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, vi := range p.Volumes() {
		v, err := p.Volume(vi.Name)
		if err != nil {
			t.Fatalf("Volume(%q): %v", vi.Name, err)
		}
		b := make([]byte, v.Size())
		if err := v.ReadAt(ctx, b, 0); err != nil {
			t.Fatalf("read volume %q: %v", vi.Name, err)
		}
		out[vi.Name] = b
	}
	return out
}

// catalogue describes volumes and snapshots for comparison (IDs and
// creation times may legitimately be re-derived, so they are left out).
func catalogue(t *testing.T, p *pool.Pool) []string {
	t.Helper()
	var out []string
	for _, vi := range p.Volumes() {
		out = append(out, fmt.Sprintf("volume %s size %d policy %s parent %q@%q", vi.Name, vi.Size, vi.Policy, vi.Parent, vi.ParentSnapshot))
		snaps, err := p.Snapshots(vi.Name)
		if err != nil {
			t.Fatalf("Snapshots(%q): %v", vi.Name, err)
		}
		for _, s := range snaps {
			out = append(out, fmt.Sprintf("snapshot %s@%s version %d", s.Volume, s.Name, s.Version))
		}
	}
	sort.Strings(out)
	return out
}

// TestIndexLoss writes several volumes (overwrites, unmaps, a snapshot and
// a clone), closes the pool, deletes the pebble index from the metadata
// directory, runs Recover and reopens: every volume, snapshot and block
// must be identical.
func TestIndexLoss(t *testing.T) {
	seed := testSeed(t)
	for _, c := range []struct {
		name    string
		devices int
	}{{"1+0", 1}, {"2+1", 3}, {"4+2", 6}} {
		t.Run(c.name, func(t *testing.T) {
			ctx := testContext(t, time.Minute)
			rng := newRand(seed, uint64(c.devices))
			f := newFilePool(ctx, t, c.devices, 64<<20, time.Hour)
			const blocks = 1024
			var seq uint64
			for i, name := range []string{"a", "b", "c"} {
				v, err := f.p.CreateVolume(ctx, name, (blocks+int64(i)*256)*BlockSize, pool.Policy{})
				if err != nil {
					t.Fatalf("CreateVolume(%q): %v", name, err)
				}
				for range 150 {
					seq++
					n := 1 + rng.IntN(32)
					lba := rng.Int64N(blocks - int64(n))
					var err error
					switch rng.IntN(8) {
					case 0:
						err = v.Unmap(ctx, lba*BlockSize, int64(n)*BlockSize)
					case 1:
						// A sub-block (512-byte granularity) write.
						off := lba*BlockSize + int64(rng.IntN(8))*512
						err = v.WriteAt(ctx, bytes.Repeat([]byte{byte(seq)}, 512*(1+rng.IntN(8))), off, false)
					default:
						err = v.WriteAt(ctx, blockData(lba, n, seq), lba*BlockSize, false)
					}
					if err != nil {
						t.Fatalf("op %d on %q: %v", seq, name, err)
					}
				}
				if i == 0 {
					// Snapshots are part of the log too.
					err := f.p.CreateSnapshot(ctx, name, "s")
					if err == nil {
						_, err = f.p.Clone(ctx, name, "s", "a-clone")
					}
					if err != nil {
						t.Fatalf("snapshot + clone: %v", err)
					}
				}
				if err := v.Flush(ctx); err != nil {
					t.Fatal(err)
				}
			}
			// Overwrite and unmap parts of "a" after its snapshot, and
			// write to the clone: the index then holds versions kept only
			// for the snapshot (which the clone reads through to).
			for i, name := range []string{"a", "a-clone"} {
				v := f.volume(name)
				for j := range 8 {
					seq++
					lba := int64(j*100 + i*37)
					if err := v.WriteAt(ctx, blockData(lba, 16, seq), lba*BlockSize, false); err != nil {
						t.Fatal(err)
					}
				}
				if err := v.Unmap(ctx, int64(500+i*200)*BlockSize, 64*BlockSize); err != nil {
					t.Fatal(err)
				}
			}
			wantData := readAll(ctx, t, f.p)
			wantCat := catalogue(t, f.p)
			f.close()
			deleteIndex(t, f.opts.MetaDir)
			if err := pool.Recover(ctx, f.opts); err != nil {
				must(t, err, fmt.Sprintf("seed %d: Recover", seed))
			}
			f.open(ctx)
			if gotCat := catalogue(t, f.p); !reflect.DeepEqual(gotCat, wantCat) {
				t.Errorf("seed %d: after Recover the catalogue differs:\n got %q\nwant %q", seed, gotCat, wantCat)
			}
			gotData := readAll(ctx, t, f.p)
			for name, want := range wantData {
				got, ok := gotData[name]
				if !ok {
					continue // reported with the catalogue
				}
				if i := firstDiff(got, want); i >= 0 {
					t.Errorf("seed %d: after Recover volume %q differs first at byte %d (block %d)", seed, name, i, i/BlockSize)
				}
			}
			// The recovered pool must keep working.
			v := f.volume("a")
			exp := map[int64]uint64{}
			writeSeq(ctx, t, v, exp, 0, 8, 1<<40)
			f.close()
			f.open(ctx)
			buf := make([]byte, 8*BlockSize)
			if err := f.volume("a").ReadAt(ctx, buf, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf, blockData(0, 8, 1<<40)) {
				t.Errorf("seed %d: a write after Recover did not survive a reopen", seed)
			}
		})
	}
}

// firstDiff returns the first index where a and b differ, or -1.
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}
