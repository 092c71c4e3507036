package pool

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/pool/internal/layout"
)

// writeReq is one unit of work for the committer: records of one policy
// and the blocks of its data and meta records (in record order). Blocks
// are borrowed until done is closed.
type writeReq struct {
	k, m   uint8
	recs   []layout.Record
	blocks [][]byte
	alone  bool // commit in a batch of its own (metadata)
	// gc marks a cleaner rewrite: records keep their versions and the
	// batch header carries flagGC.
	gc bool
	// reserve lets the request use all but one segment of the GC
	// reserve (tombstone-only requests, which free space; cleaner
	// rewrites, marked gc, may use all of it).
	reserve bool
	err     error
	done    chan struct{}
}

func (r *writeReq) nblocks() int { return len(r.blocks) }

// submit queues r for the committer and waits until it is durable and
// indexed ("persist, then ack").
func (p *Pool) submit(ctx context.Context, r *writeReq) error {
	r.done = make(chan struct{})
	p.closeMu.RLock()
	if p.closed.Load() {
		p.closeMu.RUnlock()
		return ErrClosed
	}
	select {
	case p.reqs <- r:
	case <-ctx.Done():
		p.closeMu.RUnlock()
		return ctx.Err()
	case <-p.stop:
		p.closeMu.RUnlock()
		return ErrClosed
	}
	p.closeMu.RUnlock()
	// NB: once queued, the request is committed or failed by the
	// committer; we must wait for it even if ctx ends, because the
	// committer borrows r.blocks.
	<-r.done
	return r.err
}

// committer is the group-commit loop: it takes everything queued (up to
// the batch caps), writes one batch per policy, syncs, indexes and acks.
// Owned by the pool; stopped by Close.
func (p *Pool) committer() {
	defer p.wg.Done()
	var next *writeReq
	var group []*writeReq
	lastGroup := 0 // requests in the last batch
	for {
		r := next
		next = nil
		if r == nil {
			select {
			case <-p.stop:
				for {
					select {
					case r := <-p.reqs:
						r.err = ErrClosed
						close(r.done)
					default:
						return
					}
				}
			case r = <-p.reqs:
			}
		}
		group = append(group[:0], r)
		blocks, recs := r.nblocks(), len(r.recs)
		bcap := p.batchCap(int(r.k))
		yielded := false
	drain:
		for !r.alone && blocks < bcap && recs < maxBatchRecords {
			select {
			case r2 := <-p.reqs:
				if r2.alone || r2.gc != r.gc || r2.reserve != r.reserve || r2.k != r.k || r2.m != r.m ||
					blocks+r2.nblocks() > bcap || recs+len(r2.recs) > maxBatchRecords {
					next = r2
					break drain
				}
				group = append(group, r2)
				blocks += r2.nblocks()
				recs += len(r2.recs)
			default:
				// The writers of the last group were just acknowledged
				// and most resubmit at once: yield once so that they join
				// this batch rather than the next (a batch costs a sync
				// per device whatever its size). A lone writer (last
				// group of one) does not wait.
				if yielded || len(group) >= lastGroup {
					break drain
				}
				yielded = true
				runtime.Gosched()
			}
		}
		lastGroup = len(group)
		err := p.commit(group)
		for _, g := range group {
			g.err = err
			close(g.done)
		}
	}
}

// commit writes the requests of group (one policy) as one batch.
// Called only by the committer.
func (p *Pool) commit(group []*writeReq) error {
	k, m := int(group[0].k), int(group[0].m)
	var recs []layout.Record
	var blocks [][]byte
	for _, g := range group {
		recs = append(recs, g.recs...)
		blocks = append(blocks, g.blocks...)
	}
	per := (len(blocks) + k - 1) / k
	if per == 0 {
		per = 1
	}
	hdrLen := layout.HeaderLenFor(len(recs))
	payLen := uint32(per * layout.BlockSize)
	chunkLen := int64(hdrLen) + int64(payLen)
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		keep := gcReserve // free segments this batch must leave
		switch {
		case group[0].gc:
			keep = 0
		case group[0].reserve:
			keep = gcReserve - 1
		}
		// swapMu is held from allocate until the batch is applied (tail
		// moved) or abandoned: ReplaceDevice swaps a device under it, so
		// every batch written with the old device is in the segment
		// tails its rebuild then scans.
		p.swapMu.Lock()
		row, off, members, err := p.allocate(uint8(k), uint8(m), chunkLen, keep, group[0].gc)
		if err != nil {
			p.swapMu.Unlock()
			return err
		}
		p.seq++
		var flags uint16
		if group[0].gc {
			flags = flagGC
		} else {
			for i := range recs {
				p.counter++
				recs[i].Version = epoch<<epochShift | p.counter
			}
		}
		h := layout.ChunkHeader{Version: layout.FormatVersion, Flags: flags, Seq: p.seq, Segment: row, K: uint8(k), M: uint8(m),
			HeaderLen: hdrLen, PayloadLen: payLen, NumBlocks: uint32(len(blocks)), Records: recs}
		copy(h.Members[:], members)
		chunks, err := p.encodeBatch(&h, blocks)
		if err == nil {
			err = p.writeStripe(row, off, members, chunks, k)
			if err != nil {
				p.log.Warn("batch write failed, retrying on other devices", "seq", h.Seq, logkey.Err, err)
			}
		}
		if err == nil {
			p.m.batches.Inc()
			p.m.batchBlocks.Observe(float64(len(blocks)))
			err = p.applyCommitted(&h, row, off, func(i int) []byte { return blocks[i] })
			p.doneInflight(row)
			p.swapMu.Unlock()
			return err
		}
		p.doneInflight(row)
		p.swapMu.Unlock()
		lastErr = err
	}
	return lastErr
}

// encodeBatch builds the k+m chunks of a batch: data payloads from blocks,
// parity by Reed-Solomon, then the headers.
func (p *Pool) encodeBatch(h *layout.ChunkHeader, blocks [][]byte) ([][]byte, error) {
	k, m := int(h.K), int(h.M)
	cl := int(h.ChunkLen())
	// The chunks live in the committer's buffer, reused by the next batch
	// (writeStripe has returned by then): headers are written whole by
	// AppendTo, parity by Encode, data payloads below, padding cleared.
	if need := (k + m) * cl; cap(p.chunkBuf) < need {
		p.chunkBuf = make([]byte, need)
	}
	chunks := make([][]byte, k+m)
	for i := range chunks {
		chunks[i] = p.chunkBuf[i*cl : (i+1)*cl : (i+1)*cl]
	}
	per := h.PerChunk()
	for b, blk := range blocks {
		c, s := b/per, b%per
		dst := chunks[c][int(h.HeaderLen)+s*layout.BlockSize:][:layout.BlockSize]
		clear(dst[copy(dst, blk):])
	}
	for b := len(blocks); b < k*per; b++ {
		c, s := b/per, b%per
		clear(chunks[c][int(h.HeaderLen)+s*layout.BlockSize:][:layout.BlockSize])
	}
	if m > 0 {
		enc, err := p.encoder(k, m)
		if err != nil {
			return nil, err
		}
		shards := make([][]byte, k+m)
		for i := range shards {
			shards[i] = chunks[i][h.HeaderLen:]
		}
		if err := enc.Encode(shards); err != nil {
			return nil, fmt.Errorf("pool: encode: %w", err)
		}
	}
	for i := range chunks {
		hh := *h
		hh.Index = uint8(i)
		hh.PayloadCRC = layout.CRC(chunks[i][h.HeaderLen:])
		hh.AppendTo(chunks[i][:0])
	}
	return chunks, nil
}

// writeStripe writes chunk i to members[i] at off in row and syncs every
// device. A device that fails is marked failed; chunks of failed devices
// are skipped. It succeeds when at least k chunks are durable (a degraded
// stripe, rebuilt by ReplaceDevice or Scrub).
func (p *Pool) writeStripe(row uint32, off int64, members []uint8, chunks [][]byte, k int) error {
	errs := make([]error, len(chunks))
	var written atomic.Int32
	var wg sync.WaitGroup
	devs := p.devices()
	for i := range chunks {
		d := devs[members[i]]
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !d.healthy() {
				return
			}
			if _, err := d.dev.WriteAt(chunks[i], p.rowOff(row)+off); err != nil {
				d.writeErrs.Add(1)
				errs[i] = err
				p.failDevice(d, err)
				return
			}
			if err := d.dev.Sync(); err != nil {
				d.writeErrs.Add(1)
				errs[i] = err
				p.failDevice(d, err)
				return
			}
			written.Add(1)
		}()
	}
	wg.Wait()
	if int(written.Load()) >= k {
		if int(written.Load()) < len(chunks) {
			// A degraded stripe: the devices that missed their chunk are
			// marked (failDevice); persist the marks before the batch is
			// acknowledged, or a device that comes back at the next Open
			// would count as a full member while lacking this chunk.
			if err := p.savePoolFile(); err != nil {
				return fmt.Errorf("%w: cannot record degraded stripe: %w", ErrDegraded, err)
			}
		}
		return nil
	}
	return fmt.Errorf("%w: %d of %d chunks durable: %w", ErrDegraded, written.Load(), len(chunks), errors.Join(errs...))
}

func (p *Pool) devices() []*devSlot {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.devs
}

// allocate reserves chunkLen bytes in the open segment of policy k+m,
// opening a new segment if needed.
// A new segment is opened only if more than keep free segments remain.
// Cleaner batches (gc) go to their own open segment.
func (p *Pool) allocate(k, m uint8, chunkLen int64, keep int, gc bool) (uint32, int64, []uint8, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := openKey(k, m, gc)
	if row, ok := p.mu.open[key]; ok {
		s := p.mu.segs[row]
		// Keep appending while the segment uses as many healthy devices
		// as the pool has (a degraded segment is sealed once a replaced
		// device is back).
		hm := 0
		for _, mi := range s.members[:s.width()] {
			if p.mu.devs[mi].healthy() {
				hm++
			}
		}
		good := !s.sealed && hm == min(s.width(), p.healthyLocked()) && hm >= int(k)
		off := max(s.tail, s.reserved)
		if good && off+chunkLen <= p.segSize {
			// Reserve the space; tail (what readers and scrub may scan)
			// moves in applyCommitted once the batch is durable.
			s.reserved = off + chunkLen
			s.inflight++
			return row, off, append([]uint8(nil), s.members[:s.width()]...), nil
		}
		s.sealed = true
		p.mu.sealed = append(p.mu.sealed, row)
		delete(p.mu.open, key)
	}
	var healthy, absent []uint8
	for _, d := range p.mu.devs {
		if d.healthy() {
			healthy = append(healthy, uint8(d.index))
		} else {
			absent = append(absent, uint8(d.index))
		}
	}
	if len(healthy) < int(k) || len(healthy)+len(absent) < int(k)+int(m) {
		return 0, 0, nil, fmt.Errorf("%w: %d+%d needs at least %d healthy devices, %d healthy", ErrDegraded, k, m, k, len(healthy))
	}
	row := -1
	for r := 0; r < p.rows; r++ {
		if _, used := p.mu.segs[uint32(r)]; !used {
			row = r
			break
		}
	}
	if free := p.rows - len(p.mu.segs); row < 0 || free <= keep {
		p.kickGC()
		return 0, 0, nil, ErrNoSpace
	}
	if p.rows-len(p.mu.segs) <= gcReserve+1 {
		p.kickGC()
	}
	s := &segState{k: k, m: m, gc: gc}
	// Members: healthy devices in rotation, then (degraded write) failed
	// devices whose chunks are skipped and rebuilt by ReplaceDevice.
	start := row % len(healthy)
	for i := 0; i < int(k)+int(m); i++ {
		if i < len(healthy) {
			s.members[i] = healthy[(start+i)%len(healthy)]
		} else {
			s.members[i] = absent[i-len(healthy)]
		}
	}
	s.reserved = chunkLen
	s.inflight = 1
	p.mu.segs[uint32(row)] = s
	p.mu.open[key] = uint32(row)
	return uint32(row), 0, append([]uint8(nil), s.members[:s.width()]...), nil
}

// doneInflight ends a batch allocated in segment row.
func (p *Pool) doneInflight(row uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.mu.segs[row]; s != nil && s.inflight > 0 {
		s.inflight--
	}
}

// openKey is the key of p.mu.open: the policy, with the high bit of m
// set for the cleaner's segment.
func openKey(k, m uint8, gc bool) [2]uint8 {
	if gc {
		m |= 0x80
	}
	return [2]uint8{k, m}
}

// applyCommitted indexes a durable batch written at (row, off).
func (p *Pool) applyCommitted(h *layout.ChunkHeader, row uint32, off int64, block func(int) []byte) error {
	p.segMu.Lock()
	defer p.segMu.Unlock()
	b := p.db.NewBatch()
	defer b.Close()
	if err := p.apply(b, h, row, off, block); err != nil {
		return err
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("pool: index commit: %w", err)
	}
	return nil
}

type lbaKey struct{ vol, lba uint64 }

// apply adds the effects of batch h at (row, off) to pebble batch b and to
// the in-memory state (see snapshot.go: the index keeps, per LBA, the
// versions some reader resolves to). block(i) returns the i-th block of
// the batch (needed for meta records). Only the committer calls it.
func (p *Pool) apply(b *pebble.Batch, h *layout.ChunkHeader, row uint32, off int64, block func(int) []byte) error {
	return p.applyBatch(b, h, row, off, block)
}

// metaOp is the payload of a meta record: a length-prefixed JSON volMeta.
func encodeMeta(v volMeta) []byte {
	j, _ := json.Marshal(v)
	blk := make([]byte, layout.BlockSize)
	binary.LittleEndian.PutUint32(blk, uint32(len(j)))
	copy(blk[4:], j)
	return blk
}

func decodeMeta(blk []byte) (volMeta, error) {
	var v volMeta
	if len(blk) < 4 {
		return v, fmt.Errorf("%w: short meta record", ErrCorruption)
	}
	n := binary.LittleEndian.Uint32(blk)
	if int(n) > len(blk)-4 {
		return v, fmt.Errorf("%w: meta record length %d", ErrCorruption, n)
	}
	if err := json.Unmarshal(blk[4:4+n], &v); err != nil {
		return v, fmt.Errorf("%w: meta record: %v", ErrCorruption, err)
	}
	return v, nil
}

// stripe is one batch read back from the devices.
type stripe struct {
	h      layout.ChunkHeader
	chunks [][]byte // full chunks (header+payload); nil when unreadable
	valid  []bool
	nvalid int
}

// readStripe reads the batch at (row, off). members, when nil, are taken
// from the first valid header found. minSeq rejects stale headers (seq <
// minSeq). It returns found=false when no member holds a valid header.
func (p *Pool) readStripe(row uint32, off int64, members []uint8, minSeq uint64) (st stripe, found bool) {
	devs := p.devices()
	base := p.rowOff(row) + off
	if off+layout.BlockSize > p.segSize {
		return st, false
	}
	// Find the header with the highest seq among the candidates.
	cands := members
	if cands == nil {
		for _, d := range devs {
			cands = append(cands, uint8(d.index))
		}
	}
	first := make([]byte, layout.BlockSize)
	var best layout.ChunkHeader
	for _, mi := range cands {
		if int(mi) >= len(devs) {
			continue
		}
		d := devs[mi]
		if d.readFull(first, base) != nil {
			continue
		}
		hl, err := layout.PeekHeaderLen(first)
		if err != nil || off+int64(hl) > p.segSize {
			continue
		}
		hb := first
		if hl > layout.BlockSize {
			hb = make([]byte, hl)
			if d.readFull(hb, base) != nil {
				continue
			}
		}
		h, err := layout.DecodeChunkHeader(hb, nil)
		if err != nil || h.Seq < minSeq || off+h.ChunkLen() > p.segSize {
			continue
		}
		if members != nil && (int(h.K)+int(h.M) != len(members) || string(h.Members[:len(members)]) != string(members)) {
			continue
		}
		if !found || h.Seq > best.Seq {
			best, found = h, true
		}
	}
	if !found {
		return st, false
	}
	st.h = best
	w := int(best.K) + int(best.M)
	st.chunks = make([][]byte, w)
	st.valid = make([]bool, w)
	for i := 0; i < w; i++ {
		mi := best.Members[i]
		if int(mi) >= len(devs) {
			continue
		}
		d := devs[mi]
		c := make([]byte, best.ChunkLen())
		if err := d.readFull(c, base); err != nil {
			p.noteReadError(d, err)
			continue
		}
		st.chunks[i] = c
		h, err := layout.DecodeChunkHeader(c[:best.HeaderLen], nil)
		if err != nil || h.Seq != best.Seq || int(h.Index) != i || h.PayloadLen != best.PayloadLen ||
			layout.CRC(c[best.HeaderLen:]) != h.PayloadCRC {
			continue
		}
		st.valid[i] = true
		st.nvalid++
	}
	return st, true
}

// noteReadError counts a read error and fails the device past the
// threshold.
func (p *Pool) noteReadError(d *devSlot, err error) {
	if d.readErrs.Load() >= errorThreshold {
		p.failDevice(d, err)
	}
}

// reconstruct fills the invalid chunks of st from the valid ones (payload
// by Reed-Solomon, header re-encoded). It returns ErrCorruption when fewer
// than k chunks are valid.
func (p *Pool) reconstruct(st *stripe) error {
	k, m := int(st.h.K), int(st.h.M)
	if st.nvalid == k+m {
		return nil
	}
	if st.nvalid < k {
		return fmt.Errorf("%w: stripe seq %d has %d of %d+%d chunks", ErrCorruption, st.h.Seq, st.nvalid, k, m)
	}
	enc, err := p.encoder(k, m)
	if err != nil {
		return err
	}
	hl := st.h.HeaderLen
	shards := make([][]byte, k+m)
	for i := range shards {
		if st.valid[i] {
			shards[i] = st.chunks[i][hl:]
		}
	}
	if err := enc.Reconstruct(shards); err != nil {
		return fmt.Errorf("%w: reconstruct seq %d: %v", ErrCorruption, st.h.Seq, err)
	}
	for i := range shards {
		if st.valid[i] {
			continue
		}
		c := make([]byte, st.h.ChunkLen())
		copy(c[hl:], shards[i])
		hh := st.h
		hh.Index = uint8(i)
		hh.PayloadCRC = layout.CRC(shards[i])
		hh.AppendTo(c[:0])
		st.chunks[i] = c
	}
	return nil
}

// repairStripe reads the batch at (row, off), reconstructs bad chunks and
// rewrites them on healthy devices. It returns the stripe (all chunks
// valid) and the number of chunks rewritten.
func (p *Pool) repairStripe(row uint32, off int64, members []uint8) (stripe, int, error) {
	p.repairMu.Lock()
	defer p.repairMu.Unlock()
	return p.repairStripeLocked(row, off, members)
}

// repairStripeLocked is repairStripe.
// REQUIRES: p.repairMu held.
func (p *Pool) repairStripeLocked(row uint32, off int64, members []uint8) (stripe, int, error) {
	st, found := p.readStripe(row, off, members, 0)
	if !found {
		return st, 0, fmt.Errorf("%w: no batch header at segment %d offset %d", ErrCorruption, row, off)
	}
	bad := st.nvalid < len(st.valid)
	if err := p.reconstruct(&st); err != nil {
		p.m.unrecoverable.Inc()
		return st, 0, err
	}
	if !bad {
		return st, 0, nil
	}
	devs := p.devices()
	n := 0
	for i, ok := range st.valid {
		if ok {
			continue
		}
		d := devs[st.h.Members[i]]
		d.csumErrs.Add(1)
		p.m.checksumErrors.Inc()
		if !d.healthy() {
			continue
		}
		if _, err := d.dev.WriteAt(st.chunks[i], p.rowOff(row)+off); err != nil {
			d.writeErrs.Add(1)
			p.failDevice(d, err)
			continue
		}
		if err := d.dev.Sync(); err != nil {
			d.writeErrs.Add(1)
			p.failDevice(d, err)
			continue
		}
		d.repairs.Add(1)
		p.m.repairs.Inc()
		n++
		st.valid[i] = true
		p.log.Warn("chunk repaired", "device", d.index, logkey.Path, d.path, "segment", row, "offset", off, "seq", st.h.Seq)
	}
	return st, n, nil
}

// scanned is one batch found by the replay scan.
type scanned struct {
	row  uint32
	off  int64
	h    layout.ChunkHeader
	meta map[int][]byte // blocks of meta records, by block index
}

// load reads the index state and replays the log after the checkpoint.
func (p *Pool) load(ctx context.Context) error {
	var cp checkpoint
	if v, closer, err := p.db.Get(checkpointKey); err == nil {
		cp, err = decodeCheckpoint(v)
		closer.Close()
		if err != nil {
			return err
		}
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return fmt.Errorf("pool: index: %w", err)
	}
	p.seq, p.counter = cp.seq, cp.maxVersion&counterMask
	p.mu.maxVolID = cp.maxVolID
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixSegment}, UpperBound: []byte{prefixVolume + 1}})
	if err != nil {
		return fmt.Errorf("pool: index: %w", err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		switch k[0] {
		case prefixSegment:
			s, err := decodeSegState(it.Value())
			if err != nil {
				it.Close()
				return err
			}
			p.mu.segs[binary.BigEndian.Uint32(k[1:])] = &s
		case prefixVolume:
			var v volMeta
			if err := json.Unmarshal(it.Value(), &v); err != nil {
				it.Close()
				return fmt.Errorf("%w: volume record: %v", ErrCorruption, err)
			}
			if !v.Deleted {
				p.mu.vols[v.Name] = &v
			}
			p.mu.volByID[v.ID] = &v
		}
	}
	it.Close()

	var found []scanned
	var torn []scanned
	maxSeq := cp.seq
	freed := p.freeTable()
	for row := uint32(0); row < uint32(p.rows); row++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		var members []uint8
		var off int64
		if s, ok := p.mu.segs[row]; ok {
			if s.sealed {
				continue
			}
			members = append([]uint8(nil), s.members[:s.width()]...)
			off = s.tail
		}
		last := max(cp.seq, freed[row])
		for {
			st, ok := p.readStripe(row, off, members, last+1)
			if !ok {
				break
			}
			if st.h.Seq > maxSeq {
				maxSeq = st.h.Seq
			}
			if st.nvalid < int(st.h.K) {
				// Fewer than k chunks: torn, unless a later batch follows.
				// At offset 0 it is a torn first batch or the stale log
				// of a freed segment on a device that missed the free.
				next, ok := p.readStripe(row, off+st.h.ChunkLen(), st.h.Members[:int(st.h.K)+int(st.h.M)], st.h.Seq+1)
				if off > 0 && ok && next.nvalid >= int(next.h.K) {
					return fmt.Errorf("%w: batch seq %d in segment %d at %d has %d of %d+%d chunks and is followed by seq %d",
						ErrCorruption, st.h.Seq, row, off, st.nvalid, st.h.K, st.h.M, next.h.Seq)
				}
				torn = append(torn, scanned{row: row, off: off, h: st.h})
				break
			}
			if st.nvalid < len(st.valid) {
				// A degraded stripe not yet in the index (written but
				// maybe not acknowledged before a crash, so its marks may
				// not be in pool.json): its members that miss their chunk
				// lack chunks until a rebuild or scrub.
				p.mu.Lock()
				for i, ok := range st.valid {
					if !ok {
						p.markRebuildingLocked(int(st.h.Members[i]))
					}
				}
				p.mu.Unlock()
			}
			sc := scanned{row: row, off: off, h: st.h}
			for _, r := range st.h.Records {
				if r.Kind == layout.KindMeta {
					if err := p.reconstruct(&st); err != nil {
						return err
					}
					sc.meta = map[int][]byte{}
					blk := 0
					for _, r2 := range st.h.Records {
						if r2.Kind.HasBlock() {
							if r2.Kind == layout.KindMeta {
								c, s := blk/st.h.PerChunk(), blk%st.h.PerChunk()
								o := int(st.h.HeaderLen) + s*layout.BlockSize
								sc.meta[blk] = append([]byte(nil), st.chunks[c][o:o+layout.BlockSize]...)
							}
							blk++
						}
					}
					break
				}
			}
			found = append(found, sc)
			last = st.h.Seq
			if members == nil {
				members = append([]uint8(nil), st.h.Members[:int(st.h.K)+int(st.h.M)]...)
			}
			off += st.h.ChunkLen()
		}
		if s, ok := p.mu.segs[row]; ok && off > s.tail {
			s.tail = off
		}
	}
	if err := p.countLive(); err != nil {
		return err
	}
	sort.Slice(found, func(i, j int) bool { return found[i].h.Seq < found[j].h.Seq })
	for _, t := range torn {
		p.log.Warn("discarding torn batch", "segment", t.row, "offset", t.off, "seq", t.h.Seq, logkey.Err, ErrTornTail)
		p.m.tornBatches.Inc()
	}
	if err := p.replay(found); err != nil {
		return err
	}
	for _, f := range freed {
		maxSeq = max(maxSeq, f)
	}
	if maxSeq > p.seq {
		p.seq = maxSeq
	}
	p.lastSeq.Store(p.seq)
	// Reopen the non-sealed segments for appends.
	for row, s := range p.mu.segs {
		if s.sealed {
			continue
		}
		key := openKey(s.k, s.m, s.gc)
		if cur, ok := p.mu.open[key]; ok {
			p.mu.segs[cur].sealed = true
			p.mu.sealed = append(p.mu.sealed, cur)
		}
		p.mu.open[key] = row
	}
	if len(found) > 0 || len(torn) > 0 {
		p.log.Info("log replayed", "batches", len(found), "torn", len(torn), "from_seq", cp.seq, "to_seq", p.seq)
	}
	return nil
}

// countLive sets each volume's live block count from the index.
func (p *Pool) countLive() error { return p.countHeadLive() }
