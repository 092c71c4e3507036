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
	"unsafe"

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

// pipelineDepth is the most batches the committer has in flight (written,
// not yet applied and acknowledged). Each holds a chunk buffer.
const pipelineDepth = 4

// commitAttempts is how many times a batch is written (on other devices
// after a failure) before its requests fail.
const commitAttempts = 3

// inflight is one batch of the committer: its requests and, once
// dispatched, its header, place and the result of its write. Owned by the
// committer; the writing goroutine sets err and closes written.
type inflight struct {
	group    []*writeReq
	attempts int // failed writes so far
	blocks   [][]byte
	h        layout.ChunkHeader
	row      uint32
	off      int64
	buf      []byte // chunk buffer, back to the free list once written
	prep     *prepared
	err      error
	written  chan struct{}
}

// committer is the group-commit loop: it takes everything queued (up to
// the batch caps) as one batch of one policy and dispatches it (allocate,
// assign seq and versions, encode, then write and sync on the members in
// a goroutine). Up to pipelineDepth batches are in flight, each in its own
// segment (see allocate); they complete in seq order: applied to the index
// and acknowledged, so a batch is acknowledged only once it and every
// earlier batch are durable ("persist, then ack"; a batch whose write
// failed is written again under a new seq, and its requests are
// acknowledged then).
//
// While batches are in flight, new requests wait in p.reqs and join the
// next batch: under load batches grow instead of multiplying syncs.
// Owned by the pool; stopped by Close.
func (p *Pool) committer() {
	defer p.wg.Done()
	var (
		next      *writeReq   // taken from p.reqs, not yet in a batch
		held      *inflight   // waiting for a lane (errLanesBusy)
		pend      []*inflight // dispatched, in seq order
		retry     []*inflight // write failed: written again
		lastGroup int         // requests in the last batch
	)
	for {
		if next == nil && len(pend) < pipelineDepth {
			select {
			case next = <-p.reqs:
			default:
			}
		}
		writing := firstWriting(pend)
		room := len(pend) < pipelineDepth && (held == nil || len(pend) == 0)
		work := held != nil || len(retry) > 0 || next != nil
		// A small batch waits until no batch is in flight: its writers
		// are a closed loop (an initiator's queue), so a batch dispatched
		// while another is in flight takes only part of them, and each
		// batch costs a sync per device whatever its size. Acknowledging
		// the batch in flight brings its writers back for this one. A
		// large batch goes at once: it is bound by bandwidth, not syncs.
		small := held == nil && len(retry) == 0 && next != nil && next.nblocks()*2 < p.batchCap(int(next.k))
		if room && work && (len(pend) == 0 || !small) {
			// A batch holds swapMu shared from allocate until it is
			// applied or abandoned (see dispatch). When a device swap
			// waits for the exclusive lock, finish the batches in flight
			// (they release theirs) before waiting for it.
			if !p.swapMu.TryRLock() {
				if len(pend) > 0 {
					<-pend[0].written
					pend, retry = p.complete(pend, retry)
					continue
				}
				p.swapMu.RLock()
			}
			var b *inflight
			switch {
			case held != nil:
				b, held = held, nil
			case len(retry) > 0:
				b, retry = retry[0], retry[1:]
			default:
				group := []*writeReq{next}
				next = p.gather(next, &group, lastGroup)
				lastGroup = len(group)
				b = &inflight{group: group}
			}
			var busy bool
			if pend, busy = p.dispatch(pend, b); busy {
				held = b
			}
			continue
		}
		if len(pend) > 0 && writing != 0 {
			pend, retry = p.complete(pend, retry)
			continue
		}
		var reqs chan *writeReq
		if len(pend) < pipelineDepth && next == nil {
			reqs = p.reqs
		}
		var wrote chan struct{}
		if writing >= 0 {
			wrote = pend[writing].written
		}
		select {
		case <-p.stop:
			// Finish what is in flight (its writers wait for it), then
			// fail everything else.
			for len(pend) > 0 {
				<-pend[0].written
				pend, retry = p.complete(pend, retry)
			}
			if held != nil {
				retry = append(retry, held)
			}
			for _, b := range retry {
				ackGroup(b.group, ErrClosed)
			}
			if next != nil {
				ackGroup([]*writeReq{next}, ErrClosed)
			}
			for {
				select {
				case r := <-p.reqs:
					ackGroup([]*writeReq{r}, ErrClosed)
				default:
					return
				}
			}
		case r := <-reqs:
			next = r
		case <-wrote:
		}
	}
}

// firstWriting returns the index of the first batch of pend whose write
// has not finished, or -1.
func firstWriting(pend []*inflight) int {
	for i, b := range pend {
		select {
		case <-b.written:
		default:
			return i
		}
	}
	return -1
}

// gather adds to *group (holding r) the queued requests that fit in r's
// batch, and returns the first one that does not (nil if none).
func (p *Pool) gather(r *writeReq, group *[]*writeReq, lastGroup int) *writeReq {
	blocks, recs := r.nblocks(), len(r.recs)
	bcap := p.batchCap(int(r.k))
	yielded := false
	for !r.alone && blocks < bcap && recs < maxBatchRecords {
		select {
		case r2 := <-p.reqs:
			if r2.alone || r2.gc != r.gc || r2.reserve != r.reserve || r2.k != r.k || r2.m != r.m ||
				blocks+r2.nblocks() > bcap || recs+len(r2.recs) > maxBatchRecords {
				return r2
			}
			*group = append(*group, r2)
			blocks += r2.nblocks()
			recs += len(r2.recs)
		default:
			// The writers of the last group were just acknowledged
			// and most resubmit at once: yield once so that they join
			// this batch rather than the next (a batch costs a sync
			// per device whatever its size). A lone writer (last
			// group of one) does not wait.
			if yielded || len(*group) >= lastGroup {
				return nil
			}
			yielded = true
			runtime.Gosched()
		}
	}
	return nil
}

// ackGroup ends the requests of a batch with err.
func ackGroup(group []*writeReq, err error) {
	for _, g := range group {
		g.err = err
		close(g.done)
	}
}

// dispatch starts writing batch b (its group, one policy) and appends it
// to pend. A batch that cannot start (no space, no devices) fails its
// requests at once; busy reports that every lane of its policy has a
// batch in flight (b is not dispatched: try again after a completion).
// Called only by the committer.
//
// REQUIRES: swapMu held shared; the batch keeps it until it is applied or
// abandoned (complete), or dispatch releases it. ReplaceDevice swaps a
// device under the exclusive lock, so every batch written with the old
// device is in the segment tails its rebuild then scans.
func (p *Pool) dispatch(pend []*inflight, b *inflight) (_ []*inflight, busy bool) {
	group := b.group
	k, m := int(group[0].k), int(group[0].m)
	var recs []layout.Record
	b.blocks = b.blocks[:0]
	for _, g := range group {
		recs = append(recs, g.recs...)
		b.blocks = append(b.blocks, g.blocks...)
	}
	var flags uint16
	if group[0].gc {
		flags = flagGC
	}
	for i := range recs {
		if recs[i].Tag != 0 {
			// Any tagged record makes the batch tagged; its untagged
			// records carry tag 0.
			flags |= layout.FlagTagged
			break
		}
	}
	per := max(1, (len(b.blocks)+k-1)/k)
	hdrLen := layout.HeaderLen(len(recs), flags)
	payLen := uint32(per * layout.BlockSize)
	chunkLen := int64(hdrLen) + int64(payLen)
	keep := gcReserve // free segments this batch must leave
	switch {
	case group[0].gc:
		keep = 0
	case group[0].reserve:
		keep = gcReserve - 1
	}
	row, off, members, err := p.allocate(uint8(k), uint8(m), chunkLen, keep, group[0].gc)
	if err != nil {
		p.swapMu.RUnlock()
		if errors.Is(err, errLanesBusy) {
			return pend, true
		}
		ackGroup(group, err)
		return pend, false
	}
	p.seq++
	if !group[0].gc {
		for i := range recs {
			p.counter++
			recs[i].Version = epoch<<epochShift | p.counter
		}
	}
	b.row, b.off, b.err, b.written = row, off, nil, make(chan struct{})
	b.h = layout.ChunkHeader{Version: layout.FormatVersion, Flags: flags, Seq: p.seq, Segment: row, K: uint8(k), M: uint8(m),
		HeaderLen: hdrLen, PayloadLen: payLen, NumBlocks: uint32(len(b.blocks)), Records: recs}
	copy(b.h.Members[:], members)
	b.buf = p.chunkBuffer((k + m) * int(chunkLen))
	chunks, err := p.encodeBatch(&b.h, b.blocks, b.buf)
	if err != nil {
		p.chunkBufs = append(p.chunkBufs, b.buf)
		p.doneInflight(row)
		p.swapMu.RUnlock()
		ackGroup(group, err)
		return pend, false
	}
	go func() {
		// Owned by the committer, which waits for written before it
		// completes the batch or returns.
		b.err = p.writeStripe(row, off, members, chunks, k)
		close(b.written)
	}()
	if len(pend) == 0 {
		b.prep = p.prepareApply(&b.h, row, off)
	}
	return append(pend, b), false
}

// complete ends pend[0], whose write has finished: a durable batch is
// applied to the index and acknowledged; a failed one is written again
// (on other devices: its segment was sealed when a member failed) up to
// commitAttempts times. The batches behind it are not affected: each is
// in its own segment. It returns the rest of pend and retry. Called only
// by the committer.
func (p *Pool) complete(pend, retry []*inflight) ([]*inflight, []*inflight) {
	b := pend[0]
	pend = pend[1:]
	p.chunkBufs = append(p.chunkBufs, b.buf)
	b.buf = nil
	prep := b.prep
	b.prep = nil
	if b.err == nil {
		p.m.batches.Inc()
		p.m.batchBlocks.Observe(float64(len(b.blocks)))
		var err error
		if prep != nil {
			err = p.applyPrepared(prep, &b.h, b.row, b.off)
		} else {
			err = p.applyCommitted(&b.h, b.row, b.off, func(i int) []byte { return b.blocks[i] })
		}
		p.doneInflight(b.row)
		p.swapMu.RUnlock()
		ackGroup(b.group, err)
		return pend, retry
	}
	if prep != nil {
		prep.close()
	}
	p.doneInflight(b.row)
	p.swapMu.RUnlock()
	b.attempts++
	if b.attempts >= commitAttempts {
		ackGroup(b.group, b.err)
		return pend, retry
	}
	p.log.Warn("batch write failed, retrying on other devices", "seq", b.h.Seq, logkey.Err, b.err)
	return pend, append(retry, b)
}

// chunkBuffer returns a buffer of n bytes for a batch's chunks from the
// committer's free list (one per batch in flight), aligned to 4 KiB so
// that devices may write it with O_DIRECT. Called only by the committer.
func (p *Pool) chunkBuffer(n int) []byte {
	for len(p.chunkBufs) > 0 {
		b := p.chunkBufs[len(p.chunkBufs)-1]
		p.chunkBufs = p.chunkBufs[:len(p.chunkBufs)-1]
		if cap(b) >= n {
			return b[:n]
		}
	}
	return alignedBuffer(n)
}

// alignedBuffer allocates n bytes starting at a 4 KiB boundary.
func alignedBuffer(n int) []byte {
	b := make([]byte, n+layout.BlockSize)
	o := int(-uintptr(unsafe.Pointer(&b[0])) & (layout.BlockSize - 1))
	return b[o : o+n : o+n]
}

// encodeBatch builds the k+m chunks of a batch in buf: data payloads from
// blocks, parity by Reed-Solomon, then the headers. Headers are written
// whole by AppendTo, parity by Encode, data payloads and their padding
// below, so buf may hold an older batch.
func (p *Pool) encodeBatch(h *layout.ChunkHeader, blocks [][]byte, buf []byte) ([][]byte, error) {
	k, m := int(h.K), int(h.M)
	cl := int(h.ChunkLen())
	chunks := make([][]byte, k+m)
	for i := range chunks {
		chunks[i] = buf[i*cl : (i+1)*cl : (i+1)*cl]
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
			if err := d.syncs.sync(d.dev); err != nil {
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

// errLanesBusy means that every open segment of the policy has a batch in
// flight and no other may be opened now: the committer waits for a batch
// to complete.
var errLanesBusy = errors.New("pool: every open segment of the policy has a batch in flight")

// allocate reserves chunkLen bytes in an open segment of policy k+m that
// has no batch in flight (a lane), opening a new segment if needed.
// Cleaner batches (gc) go to their own open segments.
//
// INVARIANT: a segment has at most one batch in flight. So a batch is
// written only after the one before it in its segment is durable, and a
// segment's log is torn at most at its end: replay's rule (a torn batch
// followed by a valid one is corruption) holds with several batches in
// flight, and no batch written later survives behind a lost one.
//
// Lane 0 is used whenever it is idle; another lane opens a segment only
// while more than keep+pipelineDepth segments are free, so that lanes
// never eat into the cleaner's reserve. A segment is opened only if more
// than keep free segments remain.
func (p *Pool) allocate(k, m uint8, chunkLen int64, keep int, gc bool) (uint32, int64, []uint8, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	lane := -1 // the first lane without an open segment
	for l := range pipelineDepth {
		key := laneKey(k, m, gc, l)
		row, ok := p.mu.open[key]
		if !ok {
			if lane < 0 {
				lane = l
			}
			continue
		}
		s := p.mu.segs[row]
		if s.inflight > 0 {
			continue
		}
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
		if lane < 0 {
			lane = l
		}
	}
	if lane < 0 || (lane > 0 && p.rows-len(p.mu.segs) <= keep+pipelineDepth) {
		return 0, 0, nil, errLanesBusy
	}
	key := laneKey(k, m, gc, lane)
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

// openKey is the key of p.mu.open for lane 0: the policy, with the high
// bit of m set for the cleaner's segment.
func openKey(k, m uint8, gc bool) [2]uint8 { return laneKey(k, m, gc, 0) }

// laneKey is the key of p.mu.open for a lane: openKey with the lane in
// the top three bits of k (k is at most layout.MaxMembers).
func laneKey(k, m uint8, gc bool, lane int) [2]uint8 {
	if gc {
		m |= 0x80
	}
	return [2]uint8{k | uint8(lane)<<5, m}
}

// prepared is the index work of a batch done while it is written
// (prepareApply): its pebble batch with the records' entries, and the
// applier holding the live deltas.
type prepared struct {
	b *pebble.Batch
	a *applier
}

func (pr *prepared) close() {
	pr.a.close()
	pr.b.Close()
}

// prepareApply does the index work of batch h at (row, off) that needs no
// durability (applyRecords) while the batch is written, so that only
// batchState, finishState and the commit remain once it is durable. It
// does so only for a batch of data records that is the only one in
// flight: nothing else is applied before it, so the index it reads is the
// one it will be applied to (meta records change volumes, and are applied
// the usual way). It returns nil when it does not apply, or on an error
// (applyCommitted then redoes the work and reports it).
// Called only by the committer.
func (p *Pool) prepareApply(h *layout.ChunkHeader, row uint32, off int64) *prepared {
	for i := range h.Records {
		if h.Records[i].Kind != layout.KindData {
			return nil
		}
	}
	b := p.db.NewBatch()
	a, err := p.applyRecords(b, h, row, off, nil)
	if err != nil {
		b.Close()
		return nil
	}
	return &prepared{b: b, a: a}
}

// applyPrepared indexes a durable batch whose records prepareApply
// applied.
func (p *Pool) applyPrepared(pr *prepared, h *layout.ChunkHeader, row uint32, off int64) error {
	p.segMu.Lock()
	defer p.segMu.Unlock()
	defer pr.close()
	p.batchState(pr.b, h, row, off)
	p.finishState(pr.b, pr.a, h.Seq, row)
	if err := pr.b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("pool: index commit: %w", err)
	}
	return nil
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
	best, found := p.readHeader(row, off, members, minSeq)
	if !found {
		return st, false
	}
	devs := p.devices()
	base := p.rowOff(row) + off
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

// readHeader returns the header of the batch at (row, off): the valid
// one with the highest seq among members (all devices when nil), reading
// only the headers. minSeq rejects stale headers. found is false when no
// member holds a valid header.
func (p *Pool) readHeader(row uint32, off int64, members []uint8, minSeq uint64) (best layout.ChunkHeader, found bool) {
	devs := p.devices()
	base := p.rowOff(row) + off
	if off+layout.BlockSize > p.segSize {
		return best, false
	}
	// Find the header with the highest seq among the candidates.
	cands := members
	if cands == nil {
		for _, d := range devs {
			cands = append(cands, uint8(d.index))
		}
	}
	first := make([]byte, layout.BlockSize)
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
	return best, found
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
	if err := p.reopenSegments(found); err != nil {
		return err
	}
	if len(found) > 0 || len(torn) > 0 {
		p.log.Info("log replayed", "batches", len(found), "torn", len(torn), "from_seq", cp.seq, "to_seq", p.seq)
	}
	return nil
}

// reopenSegments picks, per open key (policy, cleaner or not), the
// segment that takes appends after Open and seals the other non-sealed
// ones. The segment written last (highest batch seq found by replay; then
// the index's one, whose batches are all at or below the checkpoint) is
// kept open, so that the segments filled before it are sealed and the
// cleaner may take them. After Recover every segment is found by replay
// and none is marked sealed: an arbitrary choice here (map order) used to
// leave an older, garbage-holding segment open, where the cleaner never
// looks, for as long as no write sealed it.
//
// The segments it seals are recorded in the index at once: after Recover,
// no later Open could tell which segment was written last.
func (p *Pool) reopenSegments(found []scanned) error {
	last := map[uint32]uint64{}
	for i := range found {
		last[found[i].row] = max(last[found[i].row], found[i].h.Seq)
	}
	rows := make([]uint32, 0, len(p.mu.segs))
	for row, s := range p.mu.segs {
		if !s.sealed {
			rows = append(rows, row)
		}
	}
	// Ascending (last seq, row): the last candidate of each key wins.
	sort.Slice(rows, func(i, j int) bool {
		if a, b := last[rows[i]], last[rows[j]]; a != b {
			return a < b
		}
		return rows[i] < rows[j]
	})
	for _, row := range rows {
		s := p.mu.segs[row]
		key := openKey(s.k, s.m, s.gc)
		if cur, ok := p.mu.open[key]; ok {
			p.mu.segs[cur].sealed = true
			p.mu.sealed = append(p.mu.sealed, cur)
		}
		p.mu.open[key] = row
	}
	if len(p.mu.sealed) == 0 {
		return nil
	}
	b := p.db.NewBatch()
	defer b.Close()
	for _, r := range p.mu.sealed {
		if err := b.Set(segKey(r), p.mu.segs[r].appendTo(nil, r, r), nil); err != nil {
			return fmt.Errorf("pool: index: %w", err)
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("pool: index commit: %w", err)
	}
	p.mu.sealed = p.mu.sealed[:0]
	return nil
}

// countLive sets each volume's live block count from the index.
func (p *Pool) countLive() error { return p.countHeadLive() }
