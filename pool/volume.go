package pool

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/sha256-simd"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/pool/internal/layout"
	"stave.dev/stave/target/scsi/sense"
)

// sectorSize is the granularity of the Volume interface (the LU's logical
// block size).
const sectorSize = 512

// Volume is one volume of a pool. It implements scsi.BlockDevice and
// scsi.ProvisioningStatus at 512-byte granularity; writes that do not
// cover whole 4 KiB pool blocks are read-modify-write under a block lock.
// Every acknowledged write is durable (each batch is synced before the
// ack), so Flush has nothing to do. Safe for concurrent use.
type Volume struct {
	p       *Pool
	id      uint64
	name    string
	size    atomic.Int64 // grows with ResizeVolume
	k, m    uint8
	deleted atomic.Bool
}

// CreateVolume creates a thin volume of size bytes (a multiple of 512)
// with policy pol (zero: PolicyFor the pool's device count). It returns
// ErrExists for a taken name, ErrInvalid for a bad size or policy, and
// ErrDegraded when the healthy devices cannot meet the policy.
func (p *Pool) CreateVolume(ctx context.Context, name string, size int64, pol Policy) (*Volume, error) {
	if name == "" || len(name) > 255 || size <= 0 || size%sectorSize != 0 {
		return nil, fmt.Errorf("%w: volume %q size %d", ErrInvalid, name, size)
	}
	p.mu.Lock()
	ndev := len(p.mu.devs)
	if pol == (Policy{}) {
		pol = PolicyFor(ndev, false)
	}
	if pol.Data < 1 || pol.Parity < 0 || pol.Data+pol.Parity > ndev || pol.Data+pol.Parity > layout.MaxMembers {
		p.mu.Unlock()
		return nil, fmt.Errorf("%w: policy %v on %d devices", ErrInvalid, pol, ndev)
	}
	p.mu.Unlock()
	p.metaMu.Lock()
	defer p.metaMu.Unlock()
	p.mu.Lock()
	if _, ok := p.mu.vols[name]; ok {
		p.mu.Unlock()
		return nil, fmt.Errorf("%w: volume %q", ErrExists, name)
	}
	p.mu.maxVolID++
	id := p.mu.maxVolID
	p.mu.Unlock()
	vm := volMeta{Op: "create", ID: id, Name: name, Size: size, K: pol.Data, M: pol.Parity}
	if err := p.writeMeta(ctx, vm); err != nil {
		return nil, err
	}
	p.log.Info("volume created", logkey.Volume, name, logkey.Size, size, "policy", pol.String())
	return p.Volume(name)
}

// writeMeta logs one volume metadata record in a batch of its own.
func (p *Pool) writeMeta(ctx context.Context, vm volMeta) error {
	blk := encodeMeta(vm)
	// Deletes free space: they may use the GC reserve, like tombstones.
	r := &writeReq{k: uint8(vm.K), m: uint8(vm.M), alone: true, blocks: [][]byte{blk}, reserve: vm.Op == opDelete || vm.Op == opUnsnapshot,
		recs: []layout.Record{{Volume: metaVolume, LBA: vm.ID, Kind: layout.KindMeta, SHA: sha256.Sum256(blk)}}}
	return mapWriteErr(p.submit(ctx, r))
}

// Volume returns the volume called name, or ErrNotFound.
func (p *Pool) Volume(name string) (*Volume, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	vm, ok := p.mu.vols[name]
	if !ok {
		return nil, fmt.Errorf("%w: volume %q", ErrNotFound, name)
	}
	if vm.handle == nil {
		vm.handle = &Volume{p: p, id: vm.ID, name: vm.Name, k: uint8(vm.K), m: uint8(vm.M)}
		vm.handle.size.Store(vm.Size)
	}
	return vm.handle, nil
}

// Volumes lists the volumes.
func (p *Pool) Volumes() []VolumeInfo {
	healthy := p.healthyCount()
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []VolumeInfo
	for _, vm := range p.mu.vols {
		out = append(out, VolumeInfo{Name: vm.Name, ID: vm.ID, Size: vm.Size, Policy: Policy{vm.K, vm.M},
			Parent: vm.ParentName, ParentSnapshot: vm.ParentSnap,
			Logical: vm.live * layout.BlockSize, ReadOnly: vm.K > healthy})
	}
	sortInfos(out)
	return out
}

// DeleteVolume deletes a volume and its snapshots and unmaps all its
// blocks (their space is garbage for GC). Clones of its snapshots keep
// reading them: the volume stays, hidden and nameless (its name may be
// reused), holding only the blocks they read, until its last clone is
// deleted. Open handles fail with ErrNotFound afterwards.
func (p *Pool) DeleteVolume(ctx context.Context, name string) error {
	p.metaMu.Lock()
	defer p.metaMu.Unlock()
	p.mu.Lock()
	vm, ok := p.mu.vols[name]
	var d volMeta
	if ok {
		d = vm.record(opDelete)
	}
	p.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: volume %q", ErrNotFound, name)
	}
	if err := p.writeMeta(ctx, d); err != nil {
		return err
	}
	p.log.Info("volume deleted", logkey.Volume, name)
	return nil
}

// Size returns the volume size in bytes.
func (v *Volume) Size() int64 { return v.size.Load() }

// Name returns the volume name.
func (v *Volume) Name() string { return v.name }

// Policy returns the volume's erasure-coding policy.
func (v *Volume) Policy() Policy { return Policy{int(v.k), int(v.m)} }

func (v *Volume) check(off, n int64) error {
	if v.deleted.Load() {
		return fmt.Errorf("%w: volume %q deleted", ErrNotFound, v.name)
	}
	if v.p.closed.Load() {
		return ErrClosed
	}
	if size := v.size.Load(); off < 0 || n < 0 || off%sectorSize != 0 || n%sectorSize != 0 || off+n > size {
		return fmt.Errorf("%w: range [%d, +%d) of volume %q (%d bytes)", ErrInvalid, off, n, v.name, size)
	}
	return nil
}

// mapWriteErr wraps out-of-space and degraded errors in the SCSI sense
// the initiator must see.
func mapWriteErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNoSpace):
		e := sense.New(sense.KeyDataProtect, sense.ASCSpaceAllocationFailedWriteProtect)
		e.Cause = err
		return e
	case errors.Is(err, ErrDegraded):
		e := sense.New(sense.KeyDataProtect, sense.ASCWriteProtected)
		e.Cause = err
		return e
	}
	return err
}

// ReadAt fills b from off. Unmapped blocks read as zeros. Every block is
// verified against its SHA-256; a bad or unreadable block is reconstructed
// from the stripe and repaired. ErrCorruption means it could not be.
func (v *Volume) ReadAt(ctx context.Context, b []byte, off int64) error {
	if err := v.check(off, int64(len(b))); err != nil {
		return err
	}
	if len(b) == 0 {
		return nil
	}
	lba0 := uint64(off / layout.BlockSize)
	lba1 := uint64((off + int64(len(b)) + layout.BlockSize - 1) / layout.BlockSize)
	clear(b)
	var tmp []byte
	v.p.readMu.RLock()
	defer v.p.readMu.RUnlock()
	return v.p.forEachMapped(v.id, lba0, lba1, func(lba uint64, l *loc) error {
		bs := int64(lba) * layout.BlockSize
		lo, hi := max(bs, off), min(bs+layout.BlockSize, off+int64(len(b)))
		if lo == bs && hi == bs+layout.BlockSize {
			return v.p.readBlock(l, b[lo-off:hi-off])
		}
		if tmp == nil {
			tmp = make([]byte, layout.BlockSize)
		}
		if err := v.p.readBlock(l, tmp); err != nil {
			return err
		}
		copy(b[lo-off:hi-off], tmp[lo-bs:hi-bs])
		return nil
	})
}

// forEachMapped calls fn, in LBA order, for each block of vol in [lba0,
// lba1) that the volume's head reads as data (see forEachVisible).
func (p *Pool) forEachMapped(vol, lba0, lba1 uint64, fn func(lba uint64, l *loc) error) error {
	return p.forEachVisible(vol, lba0, lba1, fn)
}

// members returns the member devices of segment row.
func (p *Pool) members(row uint32) ([]uint8, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.mu.segs[row]
	if !ok {
		return nil, fmt.Errorf("%w: index points at free segment %d", ErrCorruption, row)
	}
	return append([]uint8(nil), s.members[:s.width()]...), nil
}

// chunkDevice returns the device that holds chunk c of segment row.
func (p *Pool) chunkDevice(row uint32, c int) (*devSlot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.mu.segs[row]
	if !ok {
		return nil, fmt.Errorf("%w: index points at free segment %d", ErrCorruption, row)
	}
	if c >= s.width() {
		return nil, fmt.Errorf("%w: chunk %d outside the %d+%d stripe of segment %d", ErrCorruption, c, s.k, s.m, row)
	}
	return p.mu.devs[s.members[c]], nil
}

// readBlock reads the block at l into dst (4 KiB) and verifies it; on a
// device error or checksum mismatch it reconstructs and repairs the stripe.
// The path without an error does not allocate.
func (p *Pool) readBlock(l *loc, dst []byte) error {
	c, boff := l.chunk()
	d, err := p.chunkDevice(l.row, c)
	if err != nil {
		return err
	}
	base := p.rowOff(l.row) + l.batchOff
	err = d.readFull(dst, base+boff)
	if err == nil {
		if sha256.Sum256(dst) == l.sha {
			p.m.readBytes.Add(layout.BlockSize)
			return nil
		}
		d.csumErrs.Add(1)
		p.m.checksumErrors.Inc()
		p.log.Warn("checksum mismatch", "device", d.index, logkey.Path, d.path, "segment", l.row, "offset", l.batchOff+boff)
	} else {
		p.noteReadError(d, err)
	}
	members, err := p.members(l.row)
	if err != nil {
		return err
	}
	st, _, rerr := p.repairStripe(l.row, l.batchOff, members)
	if rerr != nil {
		return fmt.Errorf("pool: read segment %d offset %d: %w", l.row, l.batchOff+boff, rerr)
	}
	copy(dst, st.chunks[c][boff:boff+layout.BlockSize])
	if sha256.Sum256(dst) != l.sha {
		p.m.unrecoverable.Inc()
		return fmt.Errorf("%w: block at segment %d offset %d fails its checksum after reconstruction", ErrCorruption, l.row, l.batchOff+boff)
	}
	p.m.readBytes.Add(layout.BlockSize)
	return nil
}

// writable reports ErrDegraded (as a sense error) when fewer healthy
// devices than the policy's k remain (its minimum: below k+m healthy
// devices, batches are written as degraded stripes).
func (v *Volume) writable() error {
	if h := v.p.healthyCount(); int(v.k) > h {
		v.p.log.Error("volume read-only: too few healthy devices", logkey.Volume, v.name, "policy", v.Policy().String(), "healthy", h)
		return mapWriteErr(fmt.Errorf("%w: volume %q (%d+%d) needs at least %d healthy devices, %d healthy", ErrDegraded, v.name, v.k, v.m, v.k, h))
	}
	return nil
}

// WriteAt writes b at off. It returns once the data is durable (fua or
// not: every batch is synced before it is acknowledged). A full pool
// yields DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT, a volume
// below its policy DATA PROTECT / WRITE PROTECTED (as *sense.Error
// wrapping ErrNoSpace or ErrDegraded).
func (v *Volume) WriteAt(ctx context.Context, b []byte, off int64, fua bool) error {
	return v.write(ctx, b, off, 0)
}

// write is WriteAt, with every touched block tagged tag (0: untagged).
func (v *Volume) write(ctx context.Context, b []byte, off int64, tag uint64) error {
	if err := v.check(off, int64(len(b))); err != nil {
		return err
	}
	if len(b) == 0 {
		return nil
	}
	if err := v.writable(); err != nil {
		return err
	}
	for {
		err := v.writeOnce(ctx, b, off, tag)
		if err == nil {
			v.p.m.writeBytes.Add(float64(len(b)))
			return nil
		}
		// Out of space: wait (without block locks, which the cleaner
		// needs) while the cleaner frees segments, then redo the write.
		if !errors.Is(err, ErrNoSpace) || !v.p.waitForSpace(ctx, 10*time.Second) {
			return mapWriteErr(err)
		}
	}
}

// writeOnce does one attempt of write under the block locks.
func (v *Volume) writeOnce(ctx context.Context, b []byte, off int64, tag uint64) error {
	lba0 := uint64(off / layout.BlockSize)
	lba1 := uint64((off + int64(len(b)) + layout.BlockSize - 1) / layout.BlockSize)
	unlock := v.p.lockBlocks(v.id, lba0, int(lba1-lba0))
	defer unlock()
	var reqs []*writeReq
	var cur *writeReq
	for lba := lba0; lba < lba1; lba++ {
		bs := int64(lba) * layout.BlockSize
		lo, hi := max(bs, off), min(bs+layout.BlockSize, off+int64(len(b)))
		var blk []byte
		if lo == bs && hi == bs+layout.BlockSize {
			blk = b[lo-off : hi-off]
		} else {
			blk = make([]byte, layout.BlockSize)
			if err := v.readOne(lba, blk); err != nil {
				return err
			}
			copy(blk[lo-bs:hi-bs], b[lo-off:hi-off])
		}
		if cur == nil || len(cur.blocks) >= v.p.batchCap(int(v.k)) {
			cur = &writeReq{k: v.k, m: v.m}
			reqs = append(reqs, cur)
		}
		cur.blocks = append(cur.blocks, blk)
		cur.recs = append(cur.recs, layout.Record{Volume: v.id, LBA: lba, Kind: layout.KindData, Tag: tag})
	}
	hashBlocks(reqs)
	return v.p.submitAll(ctx, reqs)
}

// parallelHashBlocks is the smallest write whose block checksums are
// computed on several cores.
const parallelHashBlocks = 64

// hashBlocks sets the SHA-256 of every data record of reqs (each record
// i holds block i), on up to GOMAXPROCS goroutines for large writes:
// hashing is most of a large write's CPU and the writer waits for it.
func hashBlocks(reqs []*writeReq) {
	var n int
	for _, r := range reqs {
		n += len(r.recs)
	}
	workers := min(runtime.GOMAXPROCS(0), n/(parallelHashBlocks/2))
	if workers <= 1 {
		for _, r := range reqs {
			for i := range r.recs {
				r.recs[i].SHA = sha256.Sum256(r.blocks[i])
			}
		}
		return
	}
	hash := func(w int) {
		lo, hi := w*n/workers, (w+1)*n/workers
		j := 0
		for _, r := range reqs {
			for i := range r.recs {
				if j >= lo && j < hi {
					r.recs[i].SHA = sha256.Sum256(r.blocks[i])
				}
				j++
			}
		}
	}
	var wg sync.WaitGroup
	for w := 1; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hash(w)
		}()
	}
	hash(0)
	wg.Wait()
}

// readOne reads block lba (zeros when unmapped).
func (v *Volume) readOne(lba uint64, dst []byte) error {
	clear(dst)
	v.p.readMu.RLock()
	defer v.p.readMu.RUnlock()
	return v.p.forEachMapped(v.id, lba, lba+1, func(_ uint64, l *loc) error { return v.p.readBlock(l, dst) })
}

// submitAll queues all requests and waits for all of them.
func (p *Pool) submitAll(ctx context.Context, reqs []*writeReq) error {
	if len(reqs) == 1 {
		return p.submit(ctx, reqs[0])
	}
	errs := make(chan error, len(reqs))
	for _, r := range reqs {
		go func() { errs <- p.submit(ctx, r) }()
	}
	var first error
	for range reqs {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Flush returns at once: every acknowledged write is already durable.
func (v *Volume) Flush(ctx context.Context) error {
	if v.deleted.Load() {
		return fmt.Errorf("%w: volume %q deleted", ErrNotFound, v.name)
	}
	return nil
}

// maxTombstone caps the blocks of one tombstone record.
const maxTombstone = 1 << 30

// Unmap deallocates [off, off+length): whole 4 KiB blocks get a tombstone
// record in the log (and leave the index); partial blocks are zeroed by a
// read-modify-write. The range then reads as zeros.
func (v *Volume) Unmap(ctx context.Context, off, length int64) error {
	return v.unmap(ctx, off, length, 0)
}

// unmap is Unmap; partial blocks, and the tombstones, are tagged tag (0:
// untagged).
func (v *Volume) unmap(ctx context.Context, off, length int64, tag uint64) error {
	if err := v.check(off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	if err := v.writable(); err != nil {
		return err
	}
	end := off + length
	first := (off + layout.BlockSize - 1) / layout.BlockSize * layout.BlockSize
	last := end / layout.BlockSize * layout.BlockSize
	if first >= last {
		return v.write(ctx, make([]byte, length), off, tag)
	}
	if off < first {
		if err := v.write(ctx, make([]byte, first-off), off, tag); err != nil {
			return err
		}
	}
	if last < end {
		if err := v.write(ctx, make([]byte, end-last), last, tag); err != nil {
			return err
		}
	}
	lba0, lba1 := uint64(first/layout.BlockSize), uint64(last/layout.BlockSize)
	for {
		err := v.unmapOnce(ctx, lba0, lba1, tag)
		if err == nil {
			return nil
		}
		if !errors.Is(err, ErrNoSpace) || !v.p.waitForSpace(ctx, 10*time.Second) {
			return mapWriteErr(err)
		}
	}
}

// unmapOnce logs tombstones for blocks [lba0, lba1) under the block locks.
func (v *Volume) unmapOnce(ctx context.Context, lba0, lba1, tag uint64) error {
	unlock := v.p.lockBlocks(v.id, lba0, int(min(lba1-lba0, lockStripes)))
	defer unlock()
	r := &writeReq{k: v.k, m: v.m}
	for lba := lba0; lba < lba1; lba += maxTombstone {
		n := min(lba1-lba, maxTombstone)
		r.recs = append(r.recs, layout.Record{Volume: v.id, LBA: lba, Kind: layout.KindTombstone, Count: uint32(n), Tag: tag})
	}
	r.reserve = true // tombstones free space
	return v.p.submit(ctx, r)
}

// MapStatus reports whether the extent at off is mapped and the length in
// bytes of the run in the same state, up to limit bytes (GET LBA STATUS).
func (v *Volume) MapStatus(ctx context.Context, off, limit int64) (bool, int64, error) {
	if err := v.check(off, 0); err != nil {
		return false, 0, err
	}
	end := min(v.size.Load(), off+limit)
	if off >= end {
		return false, 0, nil
	}
	lba0 := uint64(off / layout.BlockSize)
	lba1 := uint64((end + layout.BlockSize - 1) / layout.BlockSize)
	mapped := false
	runEnd := lba0
	errStop := errors.New("stop")
	err := v.p.forEachMapped(v.id, lba0, lba1, func(lba uint64, _ *loc) error {
		if lba == lba0 {
			mapped = true
			runEnd = lba + 1
			return nil
		}
		if mapped && lba == runEnd {
			runEnd++
			return nil
		}
		if !mapped {
			runEnd = lba
		}
		return errStop
	})
	if err != nil && !errors.Is(err, errStop) {
		return false, 0, err
	}
	if err == nil && !mapped {
		runEnd = lba1
	}
	n := min(int64(runEnd)*layout.BlockSize, end) - off
	return mapped, n, nil
}
