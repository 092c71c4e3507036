package pool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble"

	"stave.dev/stave/pool/internal/layout"
)

func TestVisible(t *testing.T) {
	rv := []revertMeta{{S: 10, R: 20}, {S: 15, R: 30}, {S: 35, R: 40}}
	for _, c := range []struct {
		at   uint64
		want []ivl
	}{
		{5, []ivl{{0, 5}}},
		{19, []ivl{{0, 19}}},
		{20, []ivl{{20, 20}, {0, 10}}},
		{25, []ivl{{20, 25}, {0, 10}}},
		// Revert to 15 (a snapshot taken before the first revert): it
		// read (0, 15] itself.
		{30, []ivl{{30, 30}, {0, 15}}},
		{35, []ivl{{30, 35}, {0, 15}}},
		{headVer, []ivl{{40, headVer}, {30, 35}, {0, 15}}},
	} {
		if got := visible(rv, c.at); !reflect.DeepEqual(got, c.want) {
			t.Errorf("visible(%d) = %v, want %v", c.at, got, c.want)
		}
	}
}

func TestCanonical(t *testing.T) {
	d := func(v uint64) ent { return ent{ver: v, l: loc{row: uint32(v)}} }
	m := func(v uint64) ent { return ent{ver: v, marker: true} }
	head := []ivl{{0, headVer}}
	at := func(v uint64) []ivl { return []ivl{{0, v}} }
	for i, c := range []struct {
		ents    []ent
		readers [][]ivl
		clone   bool
		want    []ent
	}{
		// No snapshot: only the newest is kept.
		{[]ent{d(3), d(2), d(1)}, [][]ivl{head}, false, []ent{d(3)}},
		// A snapshot at 2 keeps 2 (and not 1).
		{[]ent{d(3), d(2), d(1)}, [][]ivl{head, at(2)}, false, []ent{d(3), d(2)}},
		// A snapshot at 2.5 reads 2; one at 0 reads nothing.
		{[]ent{d(3), d(2), d(1)}, [][]ivl{head, at(0)}, false, []ent{d(3)}},
		// A tombstone over a kept version stays; alone it goes.
		{[]ent{m(3), d(2)}, [][]ivl{head, at(2)}, false, []ent{m(3), d(2)}},
		{[]ent{m(3), d(2)}, [][]ivl{head}, false, nil},
		// In a clone a tombstone hides the parent: it stays.
		{[]ent{m(3), d(2)}, [][]ivl{head}, true, []ent{m(3)}},
		// A ghost (no head) keeps only what its clones read.
		{[]ent{d(3), d(2), d(1)}, [][]ivl{at(1)}, false, []ent{d(1)}},
		// A revert to 1 at 4: the head reads 5 over 1, 2 and 3 are gone.
		{[]ent{d(5), d(3), d(2), d(1)}, [][]ivl{{{4, headVer}, {0, 1}}, at(1)}, false, []ent{d(5), d(1)}},
	} {
		got := canonical(c.ents, c.readers, c.clone)
		if len(got) == 0 && len(c.want) == 0 {
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("case %d: canonical = %v, want %v", i, got, c.want)
		}
	}
}

// snapBlock is the content of block lba written with seq (0: zeros).
func snapBlock(lba int64, seq uint64) []byte {
	b := make([]byte, layout.BlockSize)
	if seq == 0 {
		return b
	}
	binary.LittleEndian.PutUint64(b, uint64(lba))
	binary.LittleEndian.PutUint64(b[8:], seq)
	for i := 16; i < len(b); i++ {
		b[i] = byte(seq + uint64(i))
	}
	return b
}

// model is what a pool of volumes, snapshots and clones must read.
type model struct {
	vols  map[string]*mvol
	snaps map[string]map[string]*msnap // volume -> snapshot -> content
}

type mvol struct {
	size           int64 // blocks
	blocks         map[int64]uint64
	parent, origin string
}

type msnap struct {
	size   int64
	blocks map[int64]uint64
}

// checkVolume compares every block of volume name with m.
func checkVolume(ctx context.Context, t *testing.T, p *Pool, m *model, name, what string) {
	t.Helper()
	mv := m.vols[name]
	v, err := p.Volume(name)
	if err != nil {
		t.Fatalf("%s: Volume(%q): %v", what, name, err)
	}
	if v.Size() != mv.size*layout.BlockSize {
		t.Fatalf("%s: volume %q size %d, want %d", what, name, v.Size(), mv.size*layout.BlockSize)
	}
	buf := make([]byte, v.Size())
	if err := v.ReadAt(ctx, buf, 0); err != nil {
		t.Fatalf("%s: read %q: %v", what, name, err)
	}
	for lba := int64(0); lba < mv.size; lba++ {
		got := buf[lba*layout.BlockSize : (lba+1)*layout.BlockSize]
		if want := snapBlock(lba, mv.blocks[lba]); string(got) != string(want) {
			t.Fatalf("%s: volume %q block %d holds seq %d (lba %d), want seq %d", what, name, lba,
				binary.LittleEndian.Uint64(got[8:]), binary.LittleEndian.Uint64(got), mv.blocks[lba])
		}
		mapped, _, err := v.MapStatus(ctx, lba*layout.BlockSize, layout.BlockSize)
		if err != nil {
			t.Fatal(err)
		}
		if _, want := mv.blocks[lba]; mapped != want && mv.parent == "" {
			t.Fatalf("%s: volume %q block %d mapped %v, want %v", what, name, lba, mapped, want)
		}
	}
}

// checkAll compares the catalogue and every volume with m, and checks the
// index's accounting (segment live blocks, volume live blocks).
func checkAll(ctx context.Context, t *testing.T, p *Pool, m *model, what string) {
	t.Helper()
	var names []string
	for _, vi := range p.Volumes() {
		names = append(names, vi.Name)
		mv, ok := m.vols[vi.Name]
		if !ok {
			t.Fatalf("%s: unexpected volume %q", what, vi.Name)
		}
		if vi.Parent != mv.parent || vi.ParentSnapshot != mv.origin {
			t.Fatalf("%s: volume %q origin %s@%s, want %s@%s", what, vi.Name, vi.Parent, vi.ParentSnapshot, mv.parent, mv.origin)
		}
		ss, err := p.Snapshots(vi.Name)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, s := range ss {
			got = append(got, s.Name)
		}
		want := slices.Sorted(maps.Keys(m.snaps[vi.Name]))
		sort.Strings(got)
		if !reflect.DeepEqual(got, want) && len(got)+len(want) > 0 {
			t.Fatalf("%s: snapshots of %q = %v, want %v", what, vi.Name, got, want)
		}
	}
	if want := slices.Sorted(maps.Keys(m.vols)); !reflect.DeepEqual(names, want) && len(names)+len(want) > 0 {
		t.Fatalf("%s: volumes %v, want %v", what, names, want)
	}
	for name := range m.vols {
		checkVolume(ctx, t, p, m, name, what)
	}
	checkAccounting(t, p, what)
}

// checkAccounting checks that every segment's live count is the number of
// index entries in it and every volume's live count its head's blocks.
func checkAccounting(t *testing.T, p *Pool, what string) {
	t.Helper()
	rows := map[uint32]int64{}
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixBlock}, UpperBound: []byte{prefixBlock + 1}})
	if err != nil {
		t.Fatal(err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		_, _, ver, _ := parseBlockKey(it.Key())
		e, err := decodeEnt(ver, it.Value())
		if err != nil {
			t.Fatal(err)
		}
		if !e.marker {
			rows[e.l.row]++
		}
	}
	it.Close()
	p.mu.Lock()
	live := map[uint64]int64{}
	for id, vm := range p.mu.volByID {
		live[id] = vm.live
	}
	for r, s := range p.mu.segs {
		if s.live != rows[r] {
			t.Errorf("%s: segment %d live %d, index holds %d", what, r, s.live, rows[r])
		}
	}
	p.mu.Unlock()
	if err := p.countHeadLive(); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, vm := range p.mu.volByID {
		if vm.live != live[id] {
			t.Errorf("%s: volume %q live %d, index holds %d", what, vm.Name, live[id], vm.live)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// cleanEverything seals the open segments and cleans every segment, so
// that every live block, tombstone and meta record is carried forward.
func cleanEverything(t *testing.T, p *Pool) int {
	t.Helper()
	p.mu.Lock()
	for key, row := range p.mu.open {
		p.mu.segs[row].sealed = true
		p.mu.sealed = append(p.mu.sealed, row)
		delete(p.mu.open, key)
	}
	var rows []uint32
	for r := range p.mu.segs {
		rows = append(rows, r)
	}
	p.mu.Unlock()
	slices.Sort(rows)
	n := 0
	for _, r := range rows {
		p.mu.Lock()
		s := p.mu.segs[r]
		skip := s == nil || !s.sealed || s.inflight > 0
		for _, o := range p.mu.open {
			skip = skip || o == r
		}
		p.mu.Unlock()
		if skip {
			continue
		}
		if err := p.cleanSegment(context.Background(), r); err != nil {
			t.Fatalf("clean segment %d: %v", r, err)
		}
		n++
	}
	return n
}

// carryEverything seals the open segments and has the cleaner copy what
// every segment holds, without freeing any.
func carryEverything(t *testing.T, p *Pool) int {
	t.Helper()
	p.mu.Lock()
	for key, row := range p.mu.open {
		p.mu.segs[row].sealed = true
		p.mu.sealed = append(p.mu.sealed, row)
		delete(p.mu.open, key)
	}
	type seg struct {
		row     uint32
		tail    int64
		k, m    uint8
		members []uint8
	}
	var segs []seg
	for r, s := range p.mu.segs {
		segs = append(segs, seg{r, s.tail, s.k, s.m, append([]uint8(nil), s.members[:s.width()]...)})
	}
	p.mu.Unlock()
	for _, s := range segs {
		for off := int64(0); off < s.tail; {
			st, _, err := p.repairStripe(s.row, off, s.members)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.carryForward(context.Background(), s.row, off, &st, s.k, s.m); err != nil {
				t.Fatal(err)
			}
			off += st.h.ChunkLen()
		}
	}
	return len(segs)
}

// recoverPool closes the pool, deletes its index and rebuilds it from the
// devices.
func (tp *testPool) recover(t *testing.T) {
	t.Helper()
	if err := tp.p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(tp.opts.MetaDir, indexDir)); err != nil {
		t.Fatal(err)
	}
	if err := Recover(context.Background(), tp.opts); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	tp.open(t)
}

// TestSnapshotModel runs random writes, unmaps, snapshots, clones,
// reverts, deletes and cleaner passes against a model, and checks every
// block, the catalogue and the accounting after each round, across
// reopens and index rebuilds (Recover).
func TestSnapshotModel(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("STAVE_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	t.Logf("seed %d (replay: STAVE_SEED=%d go test ./pool -run TestSnapshotModel)", seed, seed)
	for _, devs := range []int{1, 3} {
		t.Run(fmt.Sprint(devs), func(t *testing.T) {
			ctx := context.Background()
			rng := rand.New(rand.NewPCG(seed, uint64(devs)))
			tp := newTestPool(t, devs, testDevSize)
			tp.opts.GCInterval = time.Hour // the test runs the cleaner itself
			tp.reopen(t)
			m := &model{vols: map[string]*mvol{}, snaps: map[string]map[string]*msnap{}}
			var seq uint64
			nvol, nsnap := 0, 0
			pick := func() string {
				if len(m.vols) == 0 {
					return ""
				}
				names := slices.Sorted(maps.Keys(m.vols))
				return names[rng.IntN(len(names))]
			}
			pickSnap := func(vol string) string {
				names := slices.Sorted(maps.Keys(m.snaps[vol]))
				if len(names) == 0 {
					return ""
				}
				return names[rng.IntN(len(names))]
			}
			for round := range 10 {
				var old string
				if round%5 == 4 {
					// Keep the index as it is now: the round ends with a
					// replay of everything after it (a crash that lost
					// the index's unsynced tail).
					old = tp.saveIndex(t)
				}
				for range 80 {
					op := rng.IntN(100)
					name := pick()
					switch {
					case name == "" || op < 4:
						nvol++
						name = fmt.Sprintf("v%d", nvol)
						size := int64(32 + rng.IntN(64))
						if _, err := tp.p.CreateVolume(ctx, name, size*layout.BlockSize, Policy{}); err != nil {
							t.Fatal(err)
						}
						m.vols[name] = &mvol{size: size, blocks: map[int64]uint64{}}
					case op < 60:
						mv := m.vols[name]
						n := 1 + rng.Int64N(8)
						lba := rng.Int64N(mv.size - n + 1)
						seq++
						var b []byte
						for i := range n {
							b = append(b, snapBlock(lba+i, seq)...)
							mv.blocks[lba+i] = seq
						}
						v, _ := tp.p.Volume(name)
						if err := v.WriteAt(ctx, b, lba*layout.BlockSize, false); err != nil {
							t.Fatal(err)
						}
					case op < 70:
						mv := m.vols[name]
						n := 1 + rng.Int64N(16)
						lba := rng.Int64N(mv.size - n + 1)
						v, _ := tp.p.Volume(name)
						if err := v.Unmap(ctx, lba*layout.BlockSize, n*layout.BlockSize); err != nil {
							t.Fatal(err)
						}
						for i := range n {
							delete(mv.blocks, lba+i)
						}
					case op < 80:
						nsnap++
						s := fmt.Sprintf("s%d", nsnap)
						if err := tp.p.CreateSnapshot(ctx, name, s); err != nil {
							t.Fatal(err)
						}
						if m.snaps[name] == nil {
							m.snaps[name] = map[string]*msnap{}
						}
						m.snaps[name][s] = &msnap{size: m.vols[name].size, blocks: maps.Clone(m.vols[name].blocks)}
					case op < 85:
						s := pickSnap(name)
						if s == "" {
							continue
						}
						if err := tp.p.DeleteSnapshot(ctx, name, s); err != nil {
							t.Fatal(err)
						}
						delete(m.snaps[name], s)
					case op < 90:
						s := pickSnap(name)
						if s == "" {
							continue
						}
						nvol++
						c := fmt.Sprintf("v%d", nvol)
						if _, err := tp.p.Clone(ctx, name, s, c); err != nil {
							t.Fatal(err)
						}
						ms := m.snaps[name][s]
						m.vols[c] = &mvol{size: ms.size, blocks: maps.Clone(ms.blocks), parent: name, origin: s}
					case op < 94:
						s := pickSnap(name)
						if s == "" {
							continue
						}
						if err := tp.p.Revert(ctx, name, s); err != nil {
							t.Fatal(err)
						}
						m.vols[name].blocks = maps.Clone(m.snaps[name][s].blocks)
					case op < 96:
						mv := m.vols[name]
						grow := int64(rng.IntN(16))
						if err := tp.p.ResizeVolume(ctx, name, (mv.size+grow)*layout.BlockSize); err != nil {
							t.Fatal(err)
						}
						mv.size += grow
					default:
						if err := tp.p.DeleteVolume(ctx, name); err != nil {
							t.Fatal(err)
						}
						delete(m.vols, name)
						delete(m.snaps, name)
					}
				}
				// Snapshot contents through temporary clones.
				for vol, ss := range m.snaps {
					for s, ms := range ss {
						c := "check-" + vol + "-" + s
						if _, err := tp.p.Clone(ctx, vol, s, c); err != nil {
							t.Fatal(err)
						}
						m.vols[c] = &mvol{size: ms.size, blocks: ms.blocks, parent: vol, origin: s}
						checkVolume(ctx, t, tp.p, m, c, fmt.Sprintf("round %d snapshot %s@%s", round, vol, s))
						if err := tp.p.DeleteVolume(ctx, c); err != nil {
							t.Fatal(err)
						}
						delete(m.vols, c)
					}
				}
				checkAll(ctx, t, tp.p, m, fmt.Sprintf("round %d", round))
				switch round % 5 {
				case 0:
					tp.reopen(t)
					checkAll(ctx, t, tp.p, m, fmt.Sprintf("round %d after reopen", round))
				case 1:
					t.Logf("round %d: cleaner freed %d segments", round, cleanEverything(t, tp.p))
					checkAll(ctx, t, tp.p, m, fmt.Sprintf("round %d after gc", round))
				case 2:
					tp.recover(t)
					checkAll(ctx, t, tp.p, m, fmt.Sprintf("round %d after recover", round))
				case 3:
					t.Logf("round %d: cleaner freed %d segments", round, cleanEverything(t, tp.p))
					tp.recover(t)
					checkAll(ctx, t, tp.p, m, fmt.Sprintf("round %d after gc and recover", round))
				case 4:
					// The cleaner copies every batch but frees nothing
					// (a crash before the frees); then the index loses
					// everything since the round began.
					t.Logf("round %d: cleaner copied %d segments", round, carryEverything(t, tp.p))
					tp.replayFrom(t, old)
					checkAll(ctx, t, tp.p, m, fmt.Sprintf("round %d after a replay of copies and originals", round))
				}
			}
			// Delete everything: the cleaner must free every sealed segment.
			for name := range m.vols {
				if err := tp.p.DeleteVolume(ctx, name); err != nil {
					t.Fatal(err)
				}
			}
			m.vols, m.snaps = map[string]*mvol{}, map[string]map[string]*msnap{}
			gcAll(t, tp.p)
			checkAll(ctx, t, tp.p, m, "after deleting everything")
			st := tp.p.Status()
			if st.Space.Logical != 0 || st.Space.Garbage != 0 {
				t.Errorf("after deleting everything and GC: %+v", st.Space)
			}
			tp.p.mu.Lock()
			n := len(tp.p.mu.volByID)
			tp.p.mu.Unlock()
			if n != 0 {
				t.Errorf("%d volumes (ghosts) left in the index", n)
			}
			tp.recover(t)
			checkAll(ctx, t, tp.p, m, "after deleting everything and recover")
		})
	}
}

// TestSnapshotEdges covers the cases one at a time: snapshot of unmapped
// blocks, unmap after a snapshot, clone of a clone, revert then write,
// revert past a later snapshot, deleting a snapshot or a parent that
// clones read through to, and errors.
func TestSnapshotEdges(t *testing.T) {
	ctx := context.Background()
	tp := newTestPool(t, 3, testDevSize)
	p := tp.p
	const blocks = 16
	vol := func(name string) *Volume {
		t.Helper()
		v, err := tp.p.Volume(name)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	write := func(name string, lba int64, seq uint64) {
		t.Helper()
		if err := vol(name).WriteAt(ctx, snapBlock(lba, seq), lba*layout.BlockSize, false); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(name string, want map[int64]uint64, what string) {
		t.Helper()
		v := vol(name)
		for lba := range int64(blocks) {
			b := make([]byte, layout.BlockSize)
			if err := v.ReadAt(ctx, b, lba*layout.BlockSize); err != nil {
				t.Fatal(err)
			}
			if string(b) != string(snapBlock(lba, want[lba])) {
				t.Errorf("%s: %s block %d is seq %d, want %d", what, name, lba, binary.LittleEndian.Uint64(b[8:]), want[lba])
			}
		}
	}
	if _, err := p.CreateVolume(ctx, "a", blocks*layout.BlockSize, Policy{}); err != nil {
		t.Fatal(err)
	}
	// Snapshot of an empty volume, then of a partly mapped one.
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(p.CreateSnapshot(ctx, "a", "empty"))
	write("a", 1, 1)
	write("a", 2, 2)
	must(p.CreateSnapshot(ctx, "a", "s1"))
	// Unmap after the snapshot: the head reads zeros, the snapshot the data.
	must(vol("a").Unmap(ctx, 1*layout.BlockSize, layout.BlockSize))
	write("a", 2, 3)
	write("a", 5, 4)
	_, err := p.Clone(ctx, "a", "s1", "c1")
	must(err)
	_, err = p.Clone(ctx, "a", "empty", "c0")
	must(err)
	expect("a", map[int64]uint64{2: 3, 5: 4}, "head")
	expect("c1", map[int64]uint64{1: 1, 2: 2}, "clone of s1")
	expect("c0", nil, "clone of an empty snapshot")
	// Unmap in a clone hides the parent's block; writes are private.
	must(vol("c1").Unmap(ctx, 2*layout.BlockSize, 2*layout.BlockSize))
	write("c1", 7, 5)
	expect("c1", map[int64]uint64{1: 1, 7: 5}, "clone after unmap + write")
	expect("a", map[int64]uint64{2: 3, 5: 4}, "head after clone writes")
	// Clone of a clone.
	must(p.CreateSnapshot(ctx, "c1", "cs"))
	write("c1", 1, 6)
	_, err = p.Clone(ctx, "c1", "cs", "cc")
	must(err)
	write("cc", 9, 7)
	expect("cc", map[int64]uint64{1: 1, 7: 5, 9: 7}, "clone of a clone")
	// Deleting a snapshot and the parent that clones read through to.
	must(p.DeleteSnapshot(ctx, "a", "s1"))
	must(p.DeleteVolume(ctx, "c1"))
	expect("cc", map[int64]uint64{1: 1, 7: 5, 9: 7}, "clone of a clone after its parent's delete")
	if _, err := p.Volume("c1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted parent: %v", err)
	}
	if _, err := p.CreateVolume(ctx, "c1", layout.BlockSize, Policy{}); err != nil {
		t.Errorf("name of a deleted parent (a ghost) cannot be reused: %v", err)
	}
	tp.recover(t)
	p = tp.p
	expect("cc", map[int64]uint64{1: 1, 7: 5, 9: 7}, "clone of a clone after recover")
	// Revert then write; revert past a later snapshot; revert back.
	must(p.CreateSnapshot(ctx, "a", "s2")) // {2:3, 5:4}
	write("a", 2, 8)
	write("a", 3, 9)
	must(p.CreateSnapshot(ctx, "a", "s3")) // {2:8, 3:9, 5:4}
	write("a", 4, 10)
	must(p.Revert(ctx, "a", "s2"))
	expect("a", map[int64]uint64{2: 3, 5: 4}, "after revert to s2")
	write("a", 6, 11)
	expect("a", map[int64]uint64{2: 3, 5: 4, 6: 11}, "after revert to s2 and a write")
	must(p.Revert(ctx, "a", "s3"))
	expect("a", map[int64]uint64{2: 8, 3: 9, 5: 4}, "after revert to s3 (taken before the first revert)")
	must(p.Revert(ctx, "a", "empty"))
	expect("a", nil, "after revert to the empty snapshot")
	write("a", 0, 12)
	must(p.CreateSnapshot(ctx, "a", "s4"))
	must(p.Revert(ctx, "a", "s4"))
	expect("a", map[int64]uint64{0: 12}, "after revert to s4")
	tp.reopen(t)
	expect("a", map[int64]uint64{0: 12}, "after reopen")
	tp.recover(t)
	p = tp.p
	expect("a", map[int64]uint64{0: 12}, "after recover")
	checkAccounting(t, p, "edges")
	// Errors.
	for _, c := range []struct {
		err  error
		want error
	}{
		{p.CreateSnapshot(ctx, "a", "s4"), ErrExists},
		{p.CreateSnapshot(ctx, "nope", "x"), ErrNotFound},
		{p.CreateSnapshot(ctx, "a", ""), ErrInvalid},
		{p.DeleteSnapshot(ctx, "a", "nope"), ErrNotFound},
		{p.Revert(ctx, "a", "nope"), ErrNotFound},
		{p.Revert(ctx, "nope", "s4"), ErrNotFound},
		{func() error { _, err := p.Clone(ctx, "a", "nope", "x"); return err }(), ErrNotFound},
		{func() error { _, err := p.Clone(ctx, "a", "s4", "cc"); return err }(), ErrExists},
		{func() error { _, err := p.Snapshots("nope"); return err }(), ErrNotFound},
	} {
		if !errors.Is(c.err, c.want) {
			t.Errorf("got %v, want %v", c.err, c.want)
		}
	}
}

// TestResizeVolume grows a volume: the size changes at once, new blocks
// read zeros and take writes, snapshots keep their size, shrinking fails,
// and the size survives a reopen and an index rebuild.
func TestResizeVolume(t *testing.T) {
	ctx := context.Background()
	tp := newTestPool(t, 1, testDevSize)
	v, err := tp.p.CreateVolume(ctx, "v", 8*layout.BlockSize, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, snapBlock(7, 1), 7*layout.BlockSize, false); err != nil {
		t.Fatal(err)
	}
	if err := tp.p.CreateSnapshot(ctx, "v", "small"); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, snapBlock(8, 2), 8*layout.BlockSize, false); !errors.Is(err, ErrInvalid) {
		t.Fatalf("write past the end: %v", err)
	}
	if err := tp.p.ResizeVolume(ctx, "v", 4*layout.BlockSize); !errors.Is(err, ErrInvalid) {
		t.Fatalf("shrink: %v", err)
	}
	if err := tp.p.ResizeVolume(ctx, "v", 16*layout.BlockSize+512); err != nil {
		t.Fatal(err)
	}
	if v.Size() != 16*layout.BlockSize+512 {
		t.Fatalf("Size after grow: %d", v.Size())
	}
	if err := tp.p.ResizeVolume(ctx, "v", 100); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unaligned: %v", err)
	}
	if err := tp.p.ResizeVolume(ctx, "nope", 1<<20); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	tail := make([]byte, 8*layout.BlockSize+512)
	if err := v.ReadAt(ctx, tail, 8*layout.BlockSize); err != nil {
		t.Fatal(err)
	}
	for _, b := range tail {
		if b != 0 {
			t.Fatal("grown area is not zero")
		}
	}
	if err := v.WriteAt(ctx, snapBlock(12, 3), 12*layout.BlockSize, false); err != nil {
		t.Fatal(err)
	}
	c, err := tp.p.Clone(ctx, "v", "small", "c")
	if err != nil {
		t.Fatal(err)
	}
	if c.Size() != 8*layout.BlockSize {
		t.Fatalf("clone of the small snapshot: size %d", c.Size())
	}
	check := func(what string) {
		t.Helper()
		v, err := tp.p.Volume("v")
		if err != nil {
			t.Fatal(err)
		}
		if v.Size() != 16*layout.BlockSize+512 {
			t.Fatalf("%s: size %d", what, v.Size())
		}
		b := make([]byte, layout.BlockSize)
		if err := v.ReadAt(ctx, b, 12*layout.BlockSize); err != nil || string(b) != string(snapBlock(12, 3)) {
			t.Fatalf("%s: block 12: %v", what, err)
		}
		for _, vi := range tp.p.Volumes() {
			if vi.Name == "v" && vi.Size != v.Size() {
				t.Fatalf("%s: Volumes size %d", what, vi.Size)
			}
		}
	}
	check("after grow")
	tp.reopen(t)
	check("after reopen")
	tp.recover(t)
	check("after recover")
}

// TestSnapshotPointInTime takes snapshots while writers run: each snapshot
// holds, per block, at least the last write acknowledged before the call
// and at most the last write started before it returned.
func TestSnapshotPointInTime(t *testing.T) {
	ctx := context.Background()
	tp := newTestPool(t, 1, testDevSize)
	const writers = 4
	v, err := tp.p.CreateVolume(ctx, "v", writers*layout.BlockSize, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	var acked, started [writers]atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := uint64(1); ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				started[w].Store(seq)
				if err := v.WriteAt(ctx, snapBlock(int64(w), seq), int64(w)*layout.BlockSize, false); err != nil {
					errs <- err
					return
				}
				acked[w].Store(seq)
			}
		}()
	}
	type bounds struct{ lo, hi [writers]uint64 }
	var snaps []bounds
	for i := range 20 {
		var b bounds
		for w := range writers {
			b.lo[w] = acked[w].Load()
		}
		if err := tp.p.CreateSnapshot(ctx, "v", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
		for w := range writers {
			b.hi[w] = started[w].Load()
		}
		snaps = append(snaps, b)
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i, b := range snaps {
		c, err := tp.p.Clone(ctx, "v", fmt.Sprint(i), fmt.Sprint("c", i))
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, writers*layout.BlockSize)
		if err := c.ReadAt(ctx, buf, 0); err != nil {
			t.Fatal(err)
		}
		for w := range writers {
			got := binary.LittleEndian.Uint64(buf[w*layout.BlockSize+8:])
			if got < b.lo[w] || got > b.hi[w] {
				t.Errorf("snapshot %d block %d holds seq %d, want within [%d, %d]", i, w, got, b.lo[w], b.hi[w])
			}
		}
	}
}
