package pool

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/minio/sha256-simd"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/pool/internal/layout"
)

const (
	// flagGC marks a batch written by the cleaner: its records keep the
	// versions they had.
	flagGC = 1
	// gcReserve is the number of free segments that ordinary writes leave
	// free: tombstone-only batches may use all but one of them, the
	// cleaner all of them.
	gcReserve = 2
	// gcRate throttles the cleaner (bytes/s of rewritten blocks) unless
	// the pool is out of space.
	gcRate = 64 << 20
)

// kickGC wakes the cleaner without blocking.
func (p *Pool) kickGC() {
	select {
	case p.gcKick <- struct{}{}:
	default:
	}
}

// cleaner is the GC loop: every GCInterval, or when a write finds the
// pool (nearly) full, it rewrites the live blocks of mostly-dead sealed
// segments and frees them. Owned by the pool; stopped by Close.
func (p *Pool) cleaner() {
	defer p.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-p.stop
		cancel()
	}()
	t := time.NewTicker(p.o.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		case <-p.gcKick:
		}
		p.gcRunning.Store(true)
		// At most one pass over the pool per wake-up: a segment of
		// records that must be carried is written again by its cleaning.
		for range p.rows {
			n, err := p.gcOnce(ctx)
			if err != nil {
				if ctx.Err() == nil {
					p.log.Warn("gc pass failed", logkey.Err, err)
				}
				break
			}
			if n == 0 {
				break
			}
		}
		p.gcRunning.Store(false)
	}
}

// gcVictims returns sealed segments worth cleaning, emptiest first. Under
// space pressure any sealed segment with dead blocks qualifies; otherwise
// those at most half live.
func (p *Pool) gcVictims() []uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	pressure := p.rows-len(p.mu.segs) <= gcReserve+1
	open := map[uint32]bool{}
	for _, r := range p.mu.open {
		open[r] = true
	}
	var out []uint32
	for r, s := range p.mu.segs {
		if !s.sealed || open[r] || s.inflight > 0 {
			continue
		}
		if s.gc && s.blocks == 0 && !pressure {
			// Only records the cleaner carried (meta records of live
			// volumes, delete records, tombstones): cleaning it would
			// most likely write them all again.
			continue
		}
		if s.live == 0 || (pressure && s.live < s.blocks) || s.live*2 <= s.blocks {
			if p.gcFitsLocked(s) {
				out = append(out, r)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return p.mu.segs[out[i]].live < p.mu.segs[out[j]].live })
	return out
}

// gcFitsLocked reports whether the live blocks of s (plus one batch of
// carried records) fit in the open segment of its policy and the free
// segments, so that cleaning it cannot exhaust the pool.
// REQUIRES: p.mu held.
func (p *Pool) gcFitsLocked(s *segState) bool {
	k := int(s.k)
	per := p.batchCap(k)
	// Tagged records (the longer kind) bound the header.
	cl := int64(layout.HeaderLen(per, layout.FlagTagged)) + int64((per+k-1)/k)*layout.BlockSize
	need := (s.live+int64(per)-1)/int64(per) + 1
	if s.live == 0 {
		return true
	}
	have := int64(p.rows-len(p.mu.segs)) * (p.segSize / cl)
	if row, ok := p.mu.open[openKey(s.k, s.m, true)]; ok {
		o := p.mu.segs[row]
		have += (p.segSize - max(o.tail, o.reserved)) / cl
	}
	return need <= have
}

// gcOnce cleans the best victim segment and reports how many it freed.
func (p *Pool) gcOnce(ctx context.Context) (int, error) {
	victims := p.gcVictims()
	if len(victims) == 0 {
		return 0, nil
	}
	row := victims[0]
	if err := p.cleanSegment(ctx, row); err != nil {
		return 0, err
	}
	return 1, nil
}

// cleanSegment rewrites the live records of segment row and frees it.
//
//  1. Scan the segment's batches (reconstructing damaged chunks). A
//     segment without live blocks is scanned by its headers only, except
//     for batches holding meta records, and not at all when it holds no
//     tombstones or meta records either (segState.others).
//  2. For each data record still indexed at this location, rewrite the
//     block with its version (flagGC batch) while holding its block lock,
//     so no foreground write or unmap can interleave.
//  3. Carry forward tombstones and volume-delete records that may still
//     shadow older versions elsewhere, and create records of live volumes.
//  4. Zero the segment's first chunk header on every member, sync, and
//     drop the segment from the index.
func (p *Pool) cleanSegment(ctx context.Context, row uint32) error {
	p.mu.Lock()
	s, ok := p.mu.segs[row]
	if !ok {
		p.mu.Unlock()
		return nil
	}
	members := append([]uint8(nil), s.members[:s.width()]...)
	tail := s.tail
	k, m := s.k, s.m
	// No index entry points into a segment without live blocks, and none
	// can come to: writes and the cleaner's copies go to open segments.
	// Its data records need no carrying, so a batch without meta records
	// is read only for its header (the tombstones); the segment's data is
	// never read (a segment emptied by overwrites, the common victim).
	dead := s.live == 0
	if dead && s.others == 0 {
		// Nothing but dead data: nothing to read at all.
		tail = 0
	}
	p.mu.Unlock()
	moved := int64(0)
	start := time.Now()
	for off := int64(0); off < tail; {
		if err := ctx.Err(); err != nil {
			return err
		}
		if dead {
			h, found := p.readHeader(row, off, members, 0)
			if !found {
				break // as below: no batch at off
			}
			if !slices.ContainsFunc(h.Records, func(r layout.Record) bool { return r.Kind == layout.KindMeta }) {
				if err := p.carryTombstones(ctx, &h, p.minVersionElsewhere(row), k, m); err != nil {
					return err
				}
				off += h.ChunkLen()
				continue
			}
		}
		st, _, err := p.repairStripe(row, off, members)
		if !st.h.Valid() {
			break
		}
		if err != nil {
			return fmt.Errorf("pool: gc segment %d: %w", row, err)
		}
		n, err := p.carryForward(ctx, row, off, &st, k, m)
		if err != nil {
			return err
		}
		moved += n
		off += st.h.ChunkLen()
		if !p.underPressure() && n > 0 {
			d := time.Duration(float64(n*layout.BlockSize) / gcRate * float64(time.Second))
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
	}
	p.mu.Lock()
	live, inflight := p.mu.segs[row].live, p.mu.segs[row].inflight
	p.mu.Unlock()
	if live != 0 || inflight != 0 {
		return fmt.Errorf("pool: gc segment %d still has %d live blocks, %d batches in flight", row, live, inflight)
	}
	if err := p.freeSegment(row, members); err != nil {
		return err
	}
	p.log.Info("segment cleaned", "segment", row, "moved_blocks", moved, logkey.Duration, time.Since(start))
	return nil
}

func (p *Pool) underPressure() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rows-len(p.mu.segs) <= gcReserve+1
}

// minVersionElsewhere returns the lowest record version in in-use
// segments other than row.
func (p *Pool) minVersionElsewhere(row uint32) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	mv := uint64(1<<64 - 1)
	for r, s := range p.mu.segs {
		if r != row && s.minVer != 0 && s.minVer < mv {
			mv = s.minVer
		}
	}
	return mv
}

// carryForward rewrites what must survive of batch st at (row, off).
func (p *Pool) carryForward(ctx context.Context, row uint32, off int64, st *stripe, k, m uint8) (int64, error) {
	h := &st.h
	per := h.PerChunk()
	block := func(b int) []byte {
		c, sl := b/per, b%per
		o := int(h.HeaderLen) + sl*layout.BlockSize
		return st.chunks[c][o : o+layout.BlockSize]
	}
	minElse := p.minVersionElsewhere(row)
	var moved int64
	blk := 0
	type liveRec struct {
		r layout.Record
		b int
	}
	var data []liveRec
	for _, r := range h.Records {
		switch r.Kind {
		case layout.KindData:
			data = append(data, liveRec{r, blk})
			blk++
		case layout.KindMeta:
			b := block(blk)
			blk++
			vm, err := decodeMeta(b)
			if err != nil {
				return 0, err
			}
			p.metaMu.Lock()
			p.mu.Lock()
			_, exists := p.mu.volByID[vm.ID]
			p.mu.Unlock()
			// Every meta record of a volume still in the index is
			// carried (replay applies them in version order); delete
			// records always: they shadow create records, whose
			// versions minVer does not track.
			if exists || vm.Op == opDelete {
				cp := append([]byte(nil), b...)
				req := &writeReq{k: k, m: m, gc: true, reserve: true, alone: true, blocks: [][]byte{cp},
					recs: []layout.Record{r}}
				err := p.submit(ctx, req)
				p.metaMu.Unlock()
				if err != nil {
					return 0, err
				}
				continue
			}
			p.metaMu.Unlock()
		}
	}
	if err := p.carryTombstones(ctx, h, minElse, k, m); err != nil {
		return 0, err
	}
	cap := p.batchCap(int(k))
	for i := 0; i < len(data); i += cap {
		group := data[i:min(i+cap, len(data))]
		// Lock every block of the group, then keep those still indexed
		// at this batch.
		req := &writeReq{k: k, m: m, gc: true, reserve: true}
		keys := make([]lbaKey, len(group))
		for j, d := range group {
			keys[j] = lbaKey{d.r.Volume, d.r.LBA}
		}
		unlock := p.lockSet(keys)
		for _, d := range group {
			l, ok, err := p.lookupVersion(d.r.Volume, d.r.LBA, d.r.Version)
			if err != nil {
				unlock()
				return 0, err
			}
			if !ok || l.row != row || l.batchOff != off || l.block != uint32(d.b) {
				continue
			}
			b := block(d.b)
			if sha256.Sum256(b) != d.r.SHA {
				unlock()
				return 0, fmt.Errorf("%w: gc: block %d of segment %d offset %d fails its checksum", ErrCorruption, d.b, row, off)
			}
			req.recs = append(req.recs, d.r)
			req.blocks = append(req.blocks, b)
		}
		var err error
		if len(req.recs) > 0 {
			err = p.submit(ctx, req)
			moved += int64(len(req.recs))
		}
		unlock()
		if err != nil {
			return 0, err
		}
	}
	return moved, nil
}

// carryTombstones rewrites the tombstones of batch h that may still hide
// an older record elsewhere, or an entry kept in the index (for a
// snapshot, or a clone's parent data). minElse is the batch's segment's
// minVersionElsewhere, taken before any of the batch's records were
// carried.
func (p *Pool) carryTombstones(ctx context.Context, h *layout.ChunkHeader, minElse uint64, k, m uint8) error {
	var keep []layout.Record
	for _, r := range h.Records {
		if r.Kind != layout.KindTombstone {
			continue
		}
		need := r.Version > minElse
		if !need {
			var err error
			if need, err = p.tombstoneNeeded(r); err != nil {
				return err
			}
		}
		if need {
			keep = append(keep, r)
		}
	}
	if len(keep) == 0 {
		return nil
	}
	return p.submit(ctx, &writeReq{k: k, m: m, gc: true, reserve: true, recs: keep})
}

// freeSegment invalidates the log of segment row and returns it to the
// free list.
func (p *Pool) freeSegment(row uint32, members []uint8) error {
	// Wait for readers that looked up a location in this segment before
	// the cleaner moved its blocks.
	p.readMu.Lock()
	p.readMu.Unlock() //lint:ignore SA2001 a barrier: wait for readers that hold readMu.RLock
	// Hold repairMu until the segment is gone from p.mu.segs: a scrub or
	// rebuild working from an older list of segments checks, under
	// repairMu, that the segment is still the one it listed
	// (scrubStripe), so it never rewrites a chunk of the old log into the
	// row once the row is free for a new one.
	p.repairMu.Lock()
	defer p.repairMu.Unlock()
	zero := make([]byte, layout.BlockSize)
	devs := p.devices()
	// Record the free in the free table of every healthy device, so that
	// stale chunks on a device that misses it (failed now, readable
	// later) are never replayed, then invalidate every healthy member.
	if err := p.recordFree(row, p.lastSeq.Load()); err != nil {
		return err
	}
	for _, mi := range members {
		d := devs[mi]
		if !d.healthy() {
			continue
		}
		if _, err := d.dev.WriteAt(zero, p.rowOff(row)); err != nil {
			d.writeErrs.Add(1)
			p.failDevice(d, err)
			return fmt.Errorf("pool: gc: free segment %d: %w", row, err)
		}
		if err := d.dev.Sync(); err != nil {
			d.writeErrs.Add(1)
			p.failDevice(d, err)
			return fmt.Errorf("pool: gc: free segment %d: %w", row, err)
		}
	}
	p.segMu.Lock()
	defer p.segMu.Unlock()
	// Synced: the row may be reused at once, and Open must then scan it
	// rather than trust a stale "sealed" record.
	if err := p.db.Delete(segKey(row), pebble.Sync); err != nil {
		return fmt.Errorf("pool: index: %w", err)
	}
	p.mu.Lock()
	delete(p.mu.segs, row)
	close(p.mu.freed)
	p.mu.freed = make(chan struct{})
	p.mu.Unlock()
	p.m.segmentsFreed.Inc()
	return nil
}

// waitForSpace waits until the cleaner frees a segment, for at most d, and
// reports whether one was freed. It returns false at once when the cleaner
// has nothing to clean.
func (p *Pool) waitForSpace(ctx context.Context, d time.Duration) bool {
	if len(p.gcVictims()) == 0 && !p.gcRunning.Load() {
		return false
	}
	p.mu.Lock()
	ch := p.mu.freed
	p.mu.Unlock()
	p.kickGC()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
	case <-ctx.Done():
	case <-p.stop:
	}
	return false
}

// recordFree writes seq into the free-table slot of row on every healthy
// device and syncs.
func (p *Pool) recordFree(row uint32, seq uint64) error {
	off := int64(layout.FreeTableStart) + int64(row)*8
	blk := off / layout.BlockSize * layout.BlockSize
	buf := make([]byte, layout.BlockSize)
	n := 0
	for _, d := range p.devices() {
		if !d.healthy() {
			continue
		}
		if err := d.readFull(buf, blk); err != nil {
			p.noteReadError(d, err)
			continue
		}
		binary.LittleEndian.PutUint64(buf[off-blk:], seq)
		if _, err := d.dev.WriteAt(buf, blk); err != nil {
			d.writeErrs.Add(1)
			p.failDevice(d, err)
			continue
		}
		if err := d.dev.Sync(); err != nil {
			d.writeErrs.Add(1)
			p.failDevice(d, err)
			continue
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("pool: gc: no device recorded the free of segment %d", row)
	}
	return nil
}

// freeTable reads the free tables of all healthy devices and returns the
// highest freed-at seq per segment.
func (p *Pool) freeTable() []uint64 {
	out := make([]uint64, p.rows)
	size := (int64(p.rows)*8 + layout.BlockSize - 1) / layout.BlockSize * layout.BlockSize
	buf := make([]byte, size)
	for _, d := range p.devices() {
		if !d.healthy() || d.readFull(buf, layout.FreeTableStart) != nil {
			continue
		}
		for r := range out {
			out[r] = max(out[r], binary.LittleEndian.Uint64(buf[r*8:]))
		}
	}
	return out
}
