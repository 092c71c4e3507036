package pool

// Snapshots, clones, revert and volume grow.
//
// Every change is a meta record in the log (kind meta, volume 0, a JSON
// volMeta block) whose version is assigned by the committer like any
// block's, so it takes its place in the pool's single order of versions:
//
//	create     a volume; a clone is a create with parent, parent_ver (the
//	           snapshot's version it reads through to) and names
//	snapshot   snap = name: the volume is pinned at S = the record's version
//	unsnapshot snap = name: the pin is dropped
//	revert     snap_ver = S: from the record's version R on, the volume
//	           reads what snapshot S reads plus what is written after R
//	resize     size = the new (larger) size
//	delete     the volume and its snapshots are gone (see "ghosts")
//
// Readers. A volume is read by its head (at version ^0, unless deleted),
// by each of its snapshots (at S) and by each clone of it (at the clone's
// parent_ver). A reader at version P sees the versions in the intervals
// visible(P): (R, P] for the latest revert (S, R) with R <= P, then,
// recursively, visible(S); with no revert, (0, P]. Per LBA, a reader
// resolves to the newest index entry whose version it sees: a data block,
// a tombstone (zeros) or nothing (zeros, or, for a clone, what the parent
// reads at parent_ver, recursively).
//
// Index. The index keeps, per (volume, LBA), exactly the entries some
// reader resolves to (canonical): data locations as before and tombstone
// markers (a one-byte value) where a tombstone hides an older entry still
// kept for a snapshot or, in a clone, data of the parent. A tombstone
// with nothing older left is dropped (except in clones). So a block is
// live for GC, and counted in its segment's live blocks, exactly while the
// head, a snapshot or a clone reads it; dropping a snapshot or a clone, a
// revert or a delete recomputes the volume's entries (reconcile) and the
// blocks nobody reads any more become garbage.
//
// Ghosts. Deleting a volume that clones still read through to keeps it,
// hidden, with only the clones' readers, until its last clone is deleted.
// Deleting a snapshot that clones read through to keeps the version
// pinned by the clones. Neither is refused.
//
// Replay. Replay (Open's tail and Recover's whole log) applies the records
// of every batch found in version order (ties: the higher batch seq, a
// GC copy, last), which is the order in which they were applied when
// written, in one index batch with the checkpoint. The cleaner keeps the
// meta records of every volume still in the index and every delete
// record, every data block some reader resolves to, and every tombstone
// that may still hide an older record; the blocks it drops are ones no
// reader resolves to, whose absence changes no reader's resolution.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/cockroachdb/pebble"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/pool/internal/layout"
)

// Meta record ops.
const (
	opCreate     = "create"
	opDelete     = "delete"
	opSnapshot   = "snapshot"
	opUnsnapshot = "unsnapshot"
	opRevert     = "revert"
	opResize     = "resize"
)

// headVer is the version at which a volume's head reads.
const headVer = math.MaxUint64

// markerValue is the index value of a tombstone marker.
var markerValue = []byte{'T'}

// maxNameLen bounds snapshot and volume names.
const maxNameLen = 255

// snapMeta is one snapshot of a volume (in the index's volume state).
type snapMeta struct {
	Name    string `json:"name"`
	Version uint64 `json:"version"`
	Created int64  `json:"created,omitempty"` // unix ns
	Size    int64  `json:"size"`              // the volume's size when taken
}

// revertMeta is one revert: readers at or after R see what a reader at S
// sees, plus versions after R.
type revertMeta struct {
	S uint64 `json:"s"`
	R uint64 `json:"r"`
}

// record returns the meta record of op for vm: its identity and policy,
// without the state that only the index holds.
func (vm *volMeta) record(op string) volMeta {
	return volMeta{Op: op, ID: vm.ID, Name: vm.Name, Size: vm.Size, K: vm.K, M: vm.M}
}

func (vm *volMeta) snap(name string) (snapMeta, bool) {
	for _, s := range vm.Snaps {
		if s.Name == name {
			return s, true
		}
	}
	return snapMeta{}, false
}

// ivl is the version interval (lo, hi].
type ivl struct{ lo, hi uint64 }

func seen(ivs []ivl, v uint64) bool {
	for _, iv := range ivs {
		if v > iv.lo && v <= iv.hi {
			return true
		}
	}
	return false
}

// visible returns the version intervals a reader at version at sees,
// given the volume's reverts.
func visible(rv []revertMeta, at uint64) []ivl {
	var out []ivl
	hi := at
	for range len(rv) + 1 {
		best := -1
		for i, r := range rv {
			if r.R <= hi && r.S < r.R && (best < 0 || r.R > rv[best].R) {
				best = i
			}
		}
		if best < 0 {
			break
		}
		out = append(out, ivl{rv[best].R, hi})
		hi = rv[best].S
	}
	return append(out, ivl{0, hi})
}

// ent is one index entry of an LBA: a data location or a tombstone marker.
type ent struct {
	ver    uint64
	marker bool
	l      loc
}

func decodeEnt(ver uint64, v []byte) (ent, error) {
	if len(v) == len(markerValue) && v[0] == markerValue[0] {
		return ent{ver: ver, marker: true}, nil
	}
	l, err := decodeLoc(v)
	return ent{ver: ver, l: l}, err
}

// resolve returns the index in ents (newest first) of the entry a reader
// seeing ivs resolves to, or -1.
func resolve(ents []ent, ivs []ivl) int {
	for i, e := range ents {
		if seen(ivs, e.ver) {
			return i
		}
	}
	return -1
}

// canonical returns the entries of ents (newest first) that some reader
// resolves to; without keepBottom, tombstones with nothing older are
// dropped too (they hide nothing).
func canonical(ents []ent, readers [][]ivl, keepBottom bool) []ent {
	keep := make([]bool, len(ents))
	for _, ivs := range readers {
		if i := resolve(ents, ivs); i >= 0 {
			keep[i] = true
		}
	}
	out := make([]ent, 0, len(ents))
	for i, e := range ents {
		if keep[i] {
			out = append(out, e)
		}
	}
	if !keepBottom {
		for len(out) > 0 && out[len(out)-1].marker {
			out = out[:len(out)-1]
		}
	}
	return out
}

// headData reports whether the head (ivs; nil: no head) resolves to data.
func headData(ents []ent, ivs []ivl) bool {
	if ivs == nil {
		return false
	}
	i := resolve(ents, ivs)
	return i >= 0 && !ents[i].marker
}

// volView is how the index must keep one volume's entries.
type volView struct {
	head    []ivl   // the head's intervals; nil for a deleted volume (ghost)
	readers [][]ivl // every reader's intervals
	clone   bool
}

// hasChildLocked reports whether a volume (clone or ghost) reads through
// to volume id.
// REQUIRES: p.mu held.
func (p *Pool) hasChildLocked(id uint64) bool {
	for _, c := range p.mu.volByID {
		if c.Parent == id {
			return true
		}
	}
	return false
}

// viewLocked returns the view of volume id, nil for an unknown volume.
// REQUIRES: p.mu held.
func (p *Pool) viewLocked(id uint64) *volView {
	vm := p.mu.volByID[id]
	if vm == nil {
		return nil
	}
	v := &volView{clone: vm.Parent != 0}
	if !vm.Deleted {
		v.head = visible(vm.Reverts, headVer)
		v.readers = append(v.readers, v.head)
	}
	for _, s := range vm.Snaps {
		v.readers = append(v.readers, visible(vm.Reverts, s.Version))
	}
	for _, c := range p.mu.volByID {
		if c.Parent == id {
			v.readers = append(v.readers, visible(vm.Reverts, c.ParentVer))
		}
	}
	return v
}

// level is one volume of a read chain and what its reader sees.
type level struct {
	vol uint64
	ivs []ivl
}

// chainLocked returns the read chain of volume id read at version at: the
// volume, then its parent at the clone's parent_ver, and so on.
// REQUIRES: p.mu held.
func (p *Pool) chainLocked(id, at uint64) []level {
	var out []level
	for id != 0 && len(out) <= len(p.mu.volByID) {
		vm := p.mu.volByID[id]
		if vm == nil {
			break
		}
		out = append(out, level{id, visible(vm.Reverts, at)})
		id, at = vm.Parent, vm.ParentVer
	}
	return out
}

// levelIter walks one level of a read chain LBA by LBA.
type levelIter struct {
	it    *pebble.Iterator
	ivs   []ivl
	valid bool
	lba   uint64
	e     ent
}

// next moves to the next LBA (from the iterator's position) that the
// level's reader resolves to something.
func (l *levelIter) next(ok bool) error {
	for ok {
		_, lba, _, kok := parseBlockKey(l.it.Key())
		if !kok {
			ok = l.it.Next()
			continue
		}
		found := false
		for ok {
			_, lba2, ver, kok := parseBlockKey(l.it.Key())
			if !kok || lba2 != lba {
				break
			}
			if !found && seen(l.ivs, ver) {
				e, err := decodeEnt(ver, l.it.Value())
				if err != nil {
					return err
				}
				l.e, found = e, true
			}
			ok = l.it.Next()
		}
		if found {
			l.valid, l.lba = true, lba
			return nil
		}
	}
	l.valid = false
	return l.it.Error()
}

// forEachVisible calls fn, in LBA order, for each block in [lba0, lba1)
// that the head of volume vol reads as data (its own, or its parent's
// for a clone), with the block's location.
func (p *Pool) forEachVisible(vol, lba0, lba1 uint64, fn func(lba uint64, l *loc) error) error {
	return p.forEachVisibleEnt(vol, lba0, lba1, func(lba uint64, e *ent) error { return fn(lba, &e.l) })
}

// forEachVisibleEnt is forEachVisible with the index entry (location and
// version) of each block.
func (p *Pool) forEachVisibleEnt(vol, lba0, lba1 uint64, fn func(lba uint64, e *ent) error) error {
	p.mu.Lock()
	chain := p.chainLocked(vol, headVer)
	p.mu.Unlock()
	if len(chain) == 0 {
		chain = []level{{vol, []ivl{{0, headVer}}}}
	}
	its := make([]*levelIter, len(chain))
	for i, lv := range chain {
		it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: blockPrefix(nil, lv.vol, lba0), UpperBound: blockPrefix(nil, lv.vol, lba1)})
		if err != nil {
			return fmt.Errorf("pool: index: %w", err)
		}
		defer it.Close()
		its[i] = &levelIter{it: it, ivs: lv.ivs}
		if err := its[i].next(it.First()); err != nil {
			return err
		}
	}
	for {
		var m *levelIter
		for _, l := range its {
			if l.valid && (m == nil || l.lba < m.lba) {
				m = l
			}
		}
		if m == nil {
			return nil
		}
		lba := m.lba
		if !m.e.marker {
			if err := fn(lba, &m.e); err != nil {
				return err
			}
		}
		for _, l := range its {
			if l.valid && l.lba == lba {
				if err := l.next(l.it.Valid()); err != nil {
					return err
				}
			}
		}
	}
}

// lookupVersion returns the location of version ver of (vol, lba), if the
// index holds it as data.
func (p *Pool) lookupVersion(vol, lba, ver uint64) (loc, bool, error) {
	v, closer, err := p.db.Get(blockKey(nil, vol, lba, ver))
	if errors.Is(err, pebble.ErrNotFound) {
		return loc{}, false, nil
	}
	if err != nil {
		return loc{}, false, fmt.Errorf("pool: index: %w", err)
	}
	defer closer.Close()
	e, err := decodeEnt(ver, v)
	if err != nil || e.marker {
		return loc{}, false, err
	}
	return e.l, true, nil
}

// tombstoneNeeded reports whether the index holds an entry at or below
// tombstone r's version in its range: then r may still hide something
// (an entry kept for a snapshot, a clone's parent data) and the cleaner
// must carry it.
func (p *Pool) tombstoneNeeded(r layout.Record) (bool, error) {
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: blockPrefix(nil, r.Volume, r.LBA),
		UpperBound: blockPrefix(nil, r.Volume, r.LBA+uint64(r.Count))})
	if err != nil {
		return false, fmt.Errorf("pool: index: %w", err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		if _, _, ver, kok := parseBlockKey(it.Key()); kok && ver <= r.Version {
			return true, nil
		}
	}
	return false, it.Error()
}

// countHeadLive sets each volume's live block count (blocks its head reads
// as its own data) from the index.
func (p *Pool) countHeadLive() error {
	p.mu.Lock()
	heads := map[uint64][]ivl{}
	for id, vm := range p.mu.volByID {
		if !vm.Deleted {
			heads[id] = visible(vm.Reverts, headVer)
		}
	}
	p.mu.Unlock()
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixBlock}, UpperBound: []byte{prefixBlock + 1}})
	if err != nil {
		return fmt.Errorf("pool: index: %w", err)
	}
	defer it.Close()
	counts := map[uint64]int64{}
	var pv, pl uint64
	first, done := true, false
	for ok := it.First(); ok; ok = it.Next() {
		vol, lba, ver, kok := parseBlockKey(it.Key())
		if !kok {
			continue
		}
		if first || vol != pv || lba != pl {
			first, pv, pl, done = false, vol, lba, false
		}
		ivs, ok := heads[vol]
		if done || !ok || !seen(ivs, ver) {
			continue
		}
		done = true
		if e, err := decodeEnt(ver, it.Value()); err == nil && !e.marker {
			counts[vol]++
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, vm := range p.mu.volByID {
		vm.live = counts[id]
	}
	return it.Error()
}

// lbaEnts is the applier's copy of one LBA's entries.
type lbaEnts struct {
	orig  []ent // as in the index when loaded
	cur   []ent // newest first
	dirty bool
	gone  bool // the volume was purged: write nothing
}

// applier applies records to a pebble batch. It keeps the entries of the
// LBAs it touched (the batch is not readable), the live deltas of
// segments and volumes. Used by one goroutine (the committer, or Open).
type applier struct {
	p      *Pool
	b      *pebble.Batch
	it     *pebble.Iterator // the index before this batch
	replay bool
	lbas   map[lbaKey]*lbaEnts
	views  map[uint64]*volView
	live   map[uint32]int64
	vlive  map[uint64]int64
	vabs   map[uint64]int64 // volumes whose live count was recounted
	seek   []byte           // load's seek key
}

func (p *Pool) newApplier(b *pebble.Batch, replay bool) (*applier, error) {
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixBlock}, UpperBound: []byte{prefixBlock + 1}})
	if err != nil {
		return nil, fmt.Errorf("pool: index: %w", err)
	}
	return &applier{p: p, b: b, it: it, replay: replay, lbas: map[lbaKey]*lbaEnts{}, views: map[uint64]*volView{},
		live: map[uint32]int64{}, vlive: map[uint64]int64{}, vabs: map[uint64]int64{}}, nil
}

func (a *applier) close() { a.it.Close() }

func (a *applier) view(vol uint64) *volView {
	if v, ok := a.views[vol]; ok {
		return v
	}
	a.p.mu.Lock()
	v := a.p.viewLocked(vol)
	a.p.mu.Unlock()
	a.views[vol] = v
	return v
}

// load returns the entries of (vol, lba).
func (a *applier) load(vol, lba uint64) (*lbaEnts, error) {
	k := lbaKey{vol, lba}
	if le, ok := a.lbas[k]; ok {
		return le, nil
	}
	le := &lbaEnts{}
	a.seek = blockPrefix(a.seek[:0], vol, lba)
	n := len(a.seek)
	for ok := a.it.SeekGE(a.seek); ok; ok = a.it.SeekGE(a.seek) {
		key := a.it.Key()
		if len(key) != blockKeyLen || string(key[:n]) != string(a.seek[:n]) {
			break
		}
		_, _, ver, _ := parseBlockKey(key)
		e, err := decodeEnt(ver, a.it.Value())
		if err != nil {
			return nil, err
		}
		le.orig = append(le.orig, e)
		// The next entry: seek to the key's immediate successor rather
		// than Next, so that the iterator only ever seeks forward, which
		// pebble turns into steps (the load of the next LBA up then
		// starts where this one ended; see preload).
		a.seek = append(append(a.seek[:0], key...), 0)
	}
	if err := a.it.Error(); err != nil {
		return nil, fmt.Errorf("pool: index: %w", err)
	}
	le.cur = le.orig
	a.lbas[k] = le
	return le, nil
}

// preload loads the entries of the LBAs of recs' data records in key
// order, before they are applied in record order: the index iterator
// then moves only forward, which costs pebble a step where a batch in
// LBA order (a sequential write) would otherwise cost a seek per block.
// It reads the same index as load would later (the iterator's, from
// before the batch).
func (a *applier) preload(recs []layout.Record) error {
	keys := make([]lbaKey, 0, len(recs))
	for i := range recs {
		if recs[i].Kind == layout.KindData {
			keys = append(keys, lbaKey{recs[i].Volume, recs[i].LBA})
		}
	}
	slices.SortFunc(keys, func(x, y lbaKey) int {
		if c := cmp.Compare(x.vol, y.vol); c != 0 {
			return c
		}
		return cmp.Compare(x.lba, y.lba)
	})
	for _, k := range keys {
		if _, err := a.load(k.vol, k.lba); err != nil {
			return err
		}
	}
	return nil
}

func sameEnt(a, b ent) bool { return a.ver == b.ver && a.marker == b.marker && a.l == b.l }

func hasEnt(es []ent, e ent) bool {
	for _, x := range es {
		if sameEnt(x, e) {
			return true
		}
	}
	return false
}

// set replaces the entries of (vol, lba) and accounts live blocks.
func (a *applier) set(le *lbaEnts, vol uint64, v *volView, nw []ent) {
	old := le.cur
	for _, e := range old {
		if !e.marker && !hasEnt(nw, e) {
			a.live[e.l.row]--
		}
	}
	for _, e := range nw {
		if !e.marker && !hasEnt(old, e) {
			a.live[e.l.row]++
		}
	}
	if v != nil {
		if headData(old, v.head) {
			a.vlive[vol]--
		}
		if headData(nw, v.head) {
			a.vlive[vol]++
		}
	}
	le.cur, le.dirty = nw, true
}

// insert returns es (newest first) with e added.
func insert(es []ent, e ent) []ent {
	i := sort.Search(len(es), func(i int) bool { return es[i].ver < e.ver })
	out := make([]ent, 0, len(es)+1)
	out = append(out, es[:i]...)
	out = append(out, e)
	return append(out, es[i:]...)
}

// data applies a data record at location l.
func (a *applier) data(r *layout.Record, l loc, gc bool) error {
	v := a.view(r.Volume)
	if v == nil {
		return nil // a deleted volume's block
	}
	le, err := a.load(r.Volume, r.LBA)
	if err != nil {
		return err
	}
	for i, e := range le.cur {
		if e.ver != r.Version {
			continue
		}
		if !e.marker && e.l == l {
			return nil
		}
		// A copy by the cleaner: the version moves.
		nw := slices.Clone(le.cur)
		nw[i] = ent{ver: r.Version, l: l}
		a.set(le, r.Volume, v, nw)
		return nil
	}
	if gc && !a.replay {
		return nil // no reader needs this version any more
	}
	a.set(le, r.Volume, v, canonical(insert(le.cur, ent{ver: r.Version, l: l}), v.readers, v.clone))
	return nil
}

// lbasOf returns the LBAs in [lo, hi) of vol that have entries, sorted.
func (a *applier) lbasOf(vol, lo, hi uint64) ([]uint64, error) {
	set := map[uint64]bool{}
	upper := blockPrefix(nil, vol, hi)
	if hi == headVer {
		upper = blockPrefix(nil, vol+1, 0)
	}
	for ok := a.it.SeekGE(blockPrefix(nil, vol, lo)); ok && string(a.it.Key()) < string(upper); ok = a.it.Next() {
		if _, lba, _, kok := parseBlockKey(a.it.Key()); kok {
			if _, inOverlay := a.lbas[lbaKey{vol, lba}]; !inOverlay {
				set[lba] = true
			}
		}
	}
	if err := a.it.Error(); err != nil {
		return nil, fmt.Errorf("pool: index: %w", err)
	}
	if hi-lo <= 4096 {
		for lba := lo; lba < hi; lba++ {
			if le, ok := a.lbas[lbaKey{vol, lba}]; ok && len(le.cur) > 0 && !le.gone {
				set[lba] = true
			}
		}
	} else {
		for k, le := range a.lbas {
			if k.vol == vol && k.lba >= lo && k.lba < hi && len(le.cur) > 0 && !le.gone {
				set[k.lba] = true
			}
		}
	}
	out := make([]uint64, 0, len(set))
	for lba := range set {
		out = append(out, lba)
	}
	slices.Sort(out)
	return out, nil
}

// chainData reports whether the read chain levels resolve lba to data.
func (a *applier) chainData(levels []level, lba uint64) (bool, error) {
	for _, lv := range levels {
		le, err := a.load(lv.vol, lba)
		if err != nil {
			return false, err
		}
		if i := resolve(le.cur, lv.ivs); i >= 0 {
			return !le.cur[i].marker, nil
		}
	}
	return false, nil
}

// tombstone applies a tombstone record.
func (a *applier) tombstone(r *layout.Record) error {
	v := a.view(r.Volume)
	if v == nil {
		return nil
	}
	lo, hi := r.LBA, r.LBA+uint64(r.Count)
	lbas, err := a.lbasOf(r.Volume, lo, hi)
	if err != nil {
		return err
	}
	var anc []level
	if v.clone {
		// A clone's tombstone also hides its parent's data.
		a.p.mu.Lock()
		chain := a.p.chainLocked(r.Volume, headVer)
		a.p.mu.Unlock()
		if len(chain) > 1 {
			anc = chain[1:]
		}
		for _, lv := range anc {
			more, err := a.lbasOf(lv.vol, lo, hi)
			if err != nil {
				return err
			}
			lbas = append(lbas, more...)
		}
		slices.Sort(lbas)
		lbas = slices.Compact(lbas)
	}
	for _, lba := range lbas {
		le, err := a.load(r.Volume, lba)
		if err != nil {
			return err
		}
		if slices.ContainsFunc(le.cur, func(e ent) bool { return e.ver == r.Version }) {
			continue
		}
		if len(le.cur) == 0 {
			if anc == nil {
				continue
			}
			if ok, err := a.chainData(anc, lba); err != nil || !ok {
				if err != nil {
					return err
				}
				continue
			}
		}
		a.set(le, r.Volume, v, canonical(insert(le.cur, ent{ver: r.Version, marker: true}), v.readers, v.clone))
	}
	return nil
}

// reconcile recomputes the entries of volume vol after its readers
// changed, and recounts its live blocks.
func (a *applier) reconcile(vol uint64) error {
	v := a.view(vol)
	if v == nil {
		return nil
	}
	lbas, err := a.lbasOf(vol, 0, headVer)
	if err != nil {
		return err
	}
	var n int64
	for _, lba := range lbas {
		le, err := a.load(vol, lba)
		if err != nil {
			return err
		}
		nw := canonical(le.cur, v.readers, v.clone)
		if len(nw) != len(le.cur) {
			a.set(le, vol, v, nw)
		}
		if headData(le.cur, v.head) {
			n++
		}
	}
	a.vabs[vol], a.vlive[vol] = n, 0
	return nil
}

// purge drops every entry of volume vol.
func (a *applier) purge(vol uint64) error {
	lo, hi := blockPrefix(nil, vol, 0), blockPrefix(nil, vol+1, 0)
	for ok := a.it.SeekGE(lo); ok && string(a.it.Key()) < string(hi); ok = a.it.Next() {
		_, lba, ver, kok := parseBlockKey(a.it.Key())
		if !kok {
			continue
		}
		if _, inOverlay := a.lbas[lbaKey{vol, lba}]; inOverlay {
			continue
		}
		if e, err := decodeEnt(ver, a.it.Value()); err == nil && !e.marker {
			a.live[e.l.row]--
		}
	}
	if err := a.it.Error(); err != nil {
		return fmt.Errorf("pool: index: %w", err)
	}
	for k, le := range a.lbas {
		if k.vol != vol {
			continue
		}
		for _, e := range le.cur {
			if !e.marker {
				a.live[e.l.row]--
			}
		}
		le.cur, le.gone = nil, true
	}
	delete(a.vlive, vol)
	delete(a.vabs, vol)
	return a.b.DeleteRange(lo, hi, nil)
}

// meta applies a meta record of version ver.
func (a *applier) meta(ver uint64, blk []byte) error {
	rec, err := decodeMeta(blk)
	if err != nil {
		return err
	}
	var reconcile, purge []uint64
	p := a.p
	p.mu.Lock()
	if rec.ID > p.mu.maxVolID {
		p.mu.maxVolID = rec.ID
	}
	cur := p.mu.volByID[rec.ID]
	if (cur != nil && ver <= cur.MetaVer) || (cur == nil && rec.Op != opCreate) {
		p.mu.Unlock()
		return nil // applied already, or the volume is gone
	}
	switch rec.Op {
	case opCreate:
		if cur == nil {
			vm := rec
			vm.Op = ""
			cur = &vm
			p.mu.volByID[vm.ID] = cur
			p.mu.vols[vm.Name] = cur
		}
	case opSnapshot:
		if _, ok := cur.snap(rec.Snap); !ok {
			cur.Snaps = append(cur.Snaps, snapMeta{Name: rec.Snap, Version: ver, Created: rec.Created, Size: cur.Size})
		}
	case opUnsnapshot:
		cur.Snaps = slices.DeleteFunc(cur.Snaps, func(s snapMeta) bool { return s.Name == rec.Snap })
		reconcile = append(reconcile, cur.ID)
	case opRevert:
		cur.Reverts = append(cur.Reverts, revertMeta{S: rec.SnapVer, R: ver})
		reconcile = append(reconcile, cur.ID)
	case opResize:
		if rec.Size > cur.Size {
			cur.Size = rec.Size
			if cur.handle != nil {
				cur.handle.size.Store(rec.Size)
			}
		}
	case opDelete:
		cur.Deleted, cur.Snaps = true, nil
		if p.mu.vols[cur.Name] == cur {
			delete(p.mu.vols, cur.Name)
		}
		if cur.handle != nil {
			cur.handle.deleted.Store(true)
		}
		// Drop the volume unless clones read through to it, and then
		// its parents that only it kept.
		for id := cur.ID; id != 0; {
			vm := p.mu.volByID[id]
			if vm == nil {
				break
			}
			if vm.Deleted && !p.hasChildLocked(id) {
				purge = append(purge, id)
				delete(p.mu.volByID, id)
				id = vm.Parent
				continue
			}
			reconcile = append(reconcile, id)
			break
		}
	default:
		p.mu.Unlock()
		return fmt.Errorf("%w: meta op %q", ErrCorruption, rec.Op)
	}
	cur.MetaVer = ver
	var states [][]byte
	var ids []uint64
	for _, id := range append([]uint64{cur.ID}, reconcile...) {
		if vm := p.mu.volByID[id]; vm != nil {
			j, _ := json.Marshal(vm)
			states, ids = append(states, j), append(ids, id)
		}
	}
	p.mu.Unlock()
	clear(a.views)
	for i, id := range ids {
		if err := a.b.Set(volKey(id), states[i], nil); err != nil {
			return err
		}
	}
	for _, id := range purge {
		if err := a.b.Delete(volKey(id), nil); err != nil {
			return err
		}
		if err := a.purge(id); err != nil {
			return err
		}
	}
	for _, id := range reconcile {
		if err := a.reconcile(id); err != nil {
			return err
		}
	}
	return nil
}

// record applies one record of batch h at (row, off); bi is the index of
// its block in the batch (-1: none).
func (a *applier) record(r *layout.Record, h *layout.ChunkHeader, row uint32, off int64, bi int, block func(int) []byte) error {
	switch r.Kind {
	case layout.KindData:
		l := loc{row: row, batchOff: off, hdrLen: h.HeaderLen, payloadLen: h.PayloadLen, block: uint32(bi),
			k: h.K, m: h.M, sha: r.SHA, tag: r.Tag}
		return a.data(r, l, h.Flags&flagGC != 0)
	case layout.KindTombstone:
		return a.tombstone(r)
	case layout.KindMeta:
		return a.meta(r.Version, block(bi))
	}
	return nil
}

// finish writes the changed entries to the batch.
func (a *applier) finish() error {
	var kb []byte
	var vb []byte
	for k, le := range a.lbas {
		if !le.dirty || le.gone {
			continue
		}
		for _, e := range le.orig {
			if !slices.ContainsFunc(le.cur, func(x ent) bool { return x.ver == e.ver }) {
				if err := a.b.Delete(blockKey(kb[:0], k.vol, k.lba, e.ver), nil); err != nil {
					return err
				}
			}
		}
		for _, e := range le.cur {
			if hasEnt(le.orig, e) {
				continue
			}
			v := markerValue
			if !e.marker {
				vb = e.l.appendTo(vb[:0])
				v = vb
			}
			if err := a.b.Set(blockKey(kb[:0], k.vol, k.lba, e.ver), v, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// batchState adds batch h at (row, off) to its segment's state (tail,
// blocks, parity, lowest version) and the pool's seq and counter.
func (p *Pool) batchState(b *pebble.Batch, h *layout.ChunkHeader, row uint32, off int64) {
	gc := h.Flags&flagGC != 0
	var maxVer uint64
	minVer := uint64(math.MaxUint64)
	var dataBlocks int64
	for i := range h.Records {
		r := &h.Records[i]
		maxVer = max(maxVer, r.Version)
		if r.Kind != layout.KindMeta {
			minVer = min(minVer, r.Version) // what tombstones may shadow
		}
		if r.Kind == layout.KindData {
			dataBlocks++
		}
	}
	others := int64(len(h.Records)) - dataBlocks
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.mu.segs[row]
	if s == nil {
		s = &segState{k: h.K, m: h.M, members: h.Members, gc: gc}
		p.mu.segs[row] = s
	}
	if end := off + h.ChunkLen(); end > s.tail {
		s.tail = end
	}
	s.blocks += dataBlocks
	if s.others >= 0 {
		s.others += others
	}
	if minVer != math.MaxUint64 && (s.minVer == 0 || minVer < s.minVer) {
		s.minVer = minVer
	}
	s.parity += int64(h.M) * h.ChunkLen()
	b.Set(segKey(row), s.appendTo(nil, row, row), nil)
	if h.Seq > p.seq {
		p.seq = h.Seq
	}
	if h.Seq > p.lastSeq.Load() {
		p.lastSeq.Store(h.Seq)
	}
	// NB: GC batches count too: after the cleaner rewrote every batch
	// of a segment, they hold the highest versions left in the log.
	if c := maxVer & counterMask; c > p.counter {
		p.counter = c
	}
}

// finishState adds the applier's live deltas to the segments and volumes,
// persists the segments sealed since the last batch and the checkpoint.
// row is the segment of the batch being applied (still counted in flight
// there).
//
// A sealed segment is recorded as sealed only once no batch is in flight
// there but this one (see segState.appendTo): until then it stays in
// p.mu.sealed.
func (p *Pool) finishState(b *pebble.Batch, a *applier, seq uint64, row uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for r, d := range a.live {
		if ss := p.mu.segs[r]; ss != nil && d != 0 {
			ss.live += d
			b.Set(segKey(r), ss.appendTo(nil, r, row), nil)
		}
	}
	later := p.mu.sealed[:0]
	for _, r := range p.mu.sealed {
		ss := p.mu.segs[r]
		if ss == nil {
			continue
		}
		if ss.inflight > 1 || (ss.inflight == 1 && r != row) {
			later = append(later, r)
			continue
		}
		b.Set(segKey(r), ss.appendTo(nil, r, row), nil)
	}
	p.mu.sealed = later
	for id, n := range a.vabs {
		if vm := p.mu.volByID[id]; vm != nil {
			vm.live = n
		}
	}
	for id, d := range a.vlive {
		if vm := p.mu.volByID[id]; vm != nil {
			vm.live += d
		}
	}
	cp := checkpoint{seq: seq, maxVersion: epoch<<epochShift | p.counter, maxVolID: p.mu.maxVolID}
	b.Set(checkpointKey, cp.appendTo(nil), nil)
}

// applyBatch applies batch h at (row, off) (the committer's path).
func (p *Pool) applyBatch(b *pebble.Batch, h *layout.ChunkHeader, row uint32, off int64, block func(int) []byte) error {
	a, err := p.applyRecords(b, h, row, off, block)
	if err != nil {
		return err
	}
	defer a.close()
	p.batchState(b, h, row, off)
	p.finishState(b, a, h.Seq, row)
	return nil
}

// applyRecords adds the index entries of the records of batch h at (row,
// off) to b: the part of applyBatch that changes no shared state (the
// caller then adds batchState and finishState, and closes the applier).
// For a batch of data records alone, the committer does it while the
// batch is written (see prepareApply).
func (p *Pool) applyRecords(b *pebble.Batch, h *layout.ChunkHeader, row uint32, off int64, block func(int) []byte) (*applier, error) {
	a, err := p.newApplier(b, false)
	if err != nil {
		return nil, err
	}
	if err := a.preload(h.Records); err != nil {
		a.close()
		return nil, err
	}
	blk := 0
	for i := range h.Records {
		r := &h.Records[i]
		bi := -1
		if r.Kind.HasBlock() {
			bi = blk
			blk++
		}
		if err := a.record(r, h, row, off, bi, block); err != nil {
			a.close()
			return nil, err
		}
	}
	if err := a.finish(); err != nil {
		a.close()
		return nil, err
	}
	return a, nil
}

// replay applies the batches found by Open's scan (sorted by seq): their
// segment states in seq order, their records in version order (a GC copy
// after the record it copies), in one index batch with the checkpoint.
func (p *Pool) replay(found []scanned) error {
	if len(found) == 0 {
		return nil
	}
	p.segMu.Lock()
	defer p.segMu.Unlock()
	b := p.db.NewBatch()
	defer b.Close()
	a, err := p.newApplier(b, true)
	if err != nil {
		return err
	}
	defer a.close()
	type rec struct {
		r  *layout.Record
		sc *scanned
		bi int
	}
	var recs []rec
	for i := range found {
		sc := &found[i]
		p.batchState(b, &sc.h, sc.row, sc.off)
		blk := 0
		for j := range sc.h.Records {
			r := &sc.h.Records[j]
			bi := -1
			if r.Kind.HasBlock() {
				bi = blk
				blk++
			}
			recs = append(recs, rec{r, sc, bi})
		}
	}
	slices.SortStableFunc(recs, func(x, y rec) int {
		if c := cmp.Compare(x.r.Version, y.r.Version); c != 0 {
			return c
		}
		return cmp.Compare(x.sc.h.Seq, y.sc.h.Seq)
	})
	for _, x := range recs {
		if err := a.record(x.r, &x.sc.h, x.sc.row, x.sc.off, x.bi, func(b int) []byte { return x.sc.meta[b] }); err != nil {
			return err
		}
	}
	if err := a.finish(); err != nil {
		return err
	}
	p.finishState(b, a, found[len(found)-1].h.Seq, found[len(found)-1].row)
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("pool: index commit: %w", err)
	}
	return nil
}

// checkName checks a snapshot or volume name.
func checkName(what, name string) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("%w: %s name %q", ErrInvalid, what, name)
	}
	return nil
}

// volumeLocked returns the volume called name.
// REQUIRES: p.mu held.
func (p *Pool) volumeLocked(name string) (*volMeta, error) {
	vm, ok := p.mu.vols[name]
	if !ok {
		return nil, fmt.Errorf("%w: volume %q", ErrNotFound, name)
	}
	return vm, nil
}

// CreateSnapshot takes snapshot snap of volume: it pins the volume's
// current version S, so that the snapshot reads, per LBA, the newest
// version at or below S. Every write acknowledged before the call is in
// the snapshot; no write submitted after it returns is. Nothing is
// copied. It returns ErrNotFound for a missing volume, ErrExists for a
// taken snapshot name, ErrInvalid for a bad name.
func (p *Pool) CreateSnapshot(ctx context.Context, volume, snap string) error {
	if err := checkName("snapshot", snap); err != nil {
		return err
	}
	p.metaMu.Lock()
	defer p.metaMu.Unlock()
	p.mu.Lock()
	vm, err := p.volumeLocked(volume)
	if err != nil {
		p.mu.Unlock()
		return err
	}
	if _, ok := vm.snap(snap); ok {
		p.mu.Unlock()
		return fmt.Errorf("%w: snapshot %s@%s", ErrExists, volume, snap)
	}
	rec := vm.record(opSnapshot)
	rec.Snap, rec.Created = snap, time.Now().UnixNano()
	p.mu.Unlock()
	if err := p.writeMeta(ctx, rec); err != nil {
		return err
	}
	p.log.Info("snapshot created", logkey.Volume, volume+"@"+snap)
	return nil
}

// DeleteSnapshot deletes snapshot snap of volume. The blocks only it read
// become garbage for the cleaner; clones of it keep reading it (their
// version stays pinned until they are deleted). It returns ErrNotFound
// for a missing volume or snapshot.
func (p *Pool) DeleteSnapshot(ctx context.Context, volume, snap string) error {
	p.metaMu.Lock()
	defer p.metaMu.Unlock()
	p.mu.Lock()
	vm, err := p.volumeLocked(volume)
	if err != nil {
		p.mu.Unlock()
		return err
	}
	if _, ok := vm.snap(snap); !ok {
		p.mu.Unlock()
		return fmt.Errorf("%w: snapshot %s@%s", ErrNotFound, volume, snap)
	}
	rec := vm.record(opUnsnapshot)
	rec.Snap = snap
	p.mu.Unlock()
	if err := p.writeMeta(ctx, rec); err != nil {
		return err
	}
	p.log.Info("snapshot deleted", logkey.Volume, volume+"@"+snap)
	return nil
}

// Snapshots lists the snapshots of volume, oldest first, or returns
// ErrNotFound.
func (p *Pool) Snapshots(volume string) ([]SnapshotInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	vm, err := p.volumeLocked(volume)
	if err != nil {
		return nil, err
	}
	out := make([]SnapshotInfo, 0, len(vm.Snaps))
	for _, s := range vm.Snaps {
		out = append(out, SnapshotInfo{Name: s.Name, Volume: vm.Name, Version: s.Version, Created: time.Unix(0, s.Created)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// Clone creates volume newVolume from snapshot snap of volume: same
// policy, the size the volume had when the snapshot was taken. Blocks
// the clone has not written read through to the snapshot; nothing is
// copied, and the two are written independently. The snapshot may be
// deleted afterwards (the clone keeps its version pinned), and so may the
// volume (it stays, hidden, while clones read through to it). It returns
// ErrNotFound for a missing volume or snapshot and ErrExists for a taken
// name.
func (p *Pool) Clone(ctx context.Context, volume, snap, newVolume string) (*Volume, error) {
	if err := checkName("volume", newVolume); err != nil {
		return nil, err
	}
	p.metaMu.Lock()
	defer p.metaMu.Unlock()
	p.mu.Lock()
	vm, err := p.volumeLocked(volume)
	if err != nil {
		p.mu.Unlock()
		return nil, err
	}
	s, ok := vm.snap(snap)
	if !ok {
		p.mu.Unlock()
		return nil, fmt.Errorf("%w: snapshot %s@%s", ErrNotFound, volume, snap)
	}
	if _, ok := p.mu.vols[newVolume]; ok {
		p.mu.Unlock()
		return nil, fmt.Errorf("%w: volume %q", ErrExists, newVolume)
	}
	p.mu.maxVolID++
	rec := volMeta{Op: opCreate, ID: p.mu.maxVolID, Name: newVolume, Size: s.Size, K: vm.K, M: vm.M,
		Parent: vm.ID, ParentVer: s.Version, ParentName: vm.Name, ParentSnap: snap}
	p.mu.Unlock()
	if err := p.writeMeta(ctx, rec); err != nil {
		return nil, err
	}
	p.log.Info("volume cloned", logkey.Volume, newVolume, "origin", volume+"@"+snap)
	return p.Volume(newVolume)
}

// Revert sets the content of volume back to snapshot snap: from now on it
// reads what the snapshot reads, and later writes on top. It copies
// nothing: a revert record makes the versions written between the
// snapshot and the revert invisible to the volume (snapshots taken in
// between keep reading them). Open handles stay valid. It returns
// ErrNotFound for a missing volume or snapshot.
func (p *Pool) Revert(ctx context.Context, volume, snap string) error {
	p.metaMu.Lock()
	defer p.metaMu.Unlock()
	p.mu.Lock()
	vm, err := p.volumeLocked(volume)
	if err != nil {
		p.mu.Unlock()
		return err
	}
	s, ok := vm.snap(snap)
	if !ok {
		p.mu.Unlock()
		return fmt.Errorf("%w: snapshot %s@%s", ErrNotFound, volume, snap)
	}
	rec := vm.record(opRevert)
	rec.Snap, rec.SnapVer = snap, s.Version
	p.mu.Unlock()
	if err := p.writeMeta(ctx, rec); err != nil {
		return err
	}
	p.log.Info("volume reverted", logkey.Volume, volume+"@"+snap)
	return nil
}

// ResizeVolume grows volume name to newSize bytes (a multiple of 512).
// The new blocks read as zeros; Size reflects the new size once it
// returns. Snapshots keep their size. Shrinking is refused with
// ErrInvalid; the same size is a no-op. ErrNotFound for a missing volume.
func (p *Pool) ResizeVolume(ctx context.Context, name string, newSize int64) error {
	if newSize <= 0 || newSize%sectorSize != 0 {
		return fmt.Errorf("%w: volume %q size %d (a positive multiple of %d)", ErrInvalid, name, newSize, sectorSize)
	}
	p.metaMu.Lock()
	defer p.metaMu.Unlock()
	p.mu.Lock()
	vm, err := p.volumeLocked(name)
	if err != nil {
		p.mu.Unlock()
		return err
	}
	if newSize < vm.Size {
		p.mu.Unlock()
		return fmt.Errorf("%w: volume %q is %d bytes: shrinking to %d is not supported, only growing", ErrInvalid, name, vm.Size, newSize)
	}
	if newSize == vm.Size {
		p.mu.Unlock()
		return nil
	}
	rec := vm.record(opResize)
	rec.Size = newSize
	p.mu.Unlock()
	if err := p.writeMeta(ctx, rec); err != nil {
		return err
	}
	p.log.Info("volume resized", logkey.Volume, name, logkey.Size, newSize)
	return nil
}
