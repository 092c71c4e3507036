package pool

import (
	"context"
	"encoding/hex"
	"fmt"
	"time"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/pool/internal/layout"
)

type segRef struct {
	row     uint32
	members []uint8
	tail    int64
}

func (p *Pool) segments(filter func(*segState) bool) []segRef {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []segRef
	for r := uint32(0); r < uint32(p.rows); r++ {
		s, ok := p.mu.segs[r]
		if !ok || (filter != nil && !filter(s)) {
			continue
		}
		out = append(out, segRef{r, append([]uint8(nil), s.members[:s.width()]...), s.tail})
	}
	return out
}

// Scrub reads every batch (stripe) of every in-use segment, data and
// parity, verifies header and payload checksums, reconstructs and rewrites
// bad chunks. progress, when non-nil, is called after each segment.
func (p *Pool) Scrub(ctx context.Context, progress func(Progress)) (ScrubReport, error) {
	rep, err := p.scrub(ctx, progress, 0, nil)
	if err == nil && rep.Unrecoverable == 0 {
		p.finishRebuilds()
	}
	return rep, err
}

// finishRebuilds clears the rebuild-incomplete marks of healthy devices
// after a complete, clean scrub (which rewrote every missing chunk).
func (p *Pool) finishRebuilds() {
	p.mu.Lock()
	changed := false
	for i := range p.mu.rebuilding {
		if i < len(p.mu.devs) && p.mu.devs[i].healthy() {
			delete(p.mu.rebuilding, i)
			p.mu.poolFileGen++
			changed = true
		}
	}
	p.updateReasonLocked()
	p.mu.Unlock()
	if changed {
		if err := p.savePoolFile(); err != nil {
			p.log.Error("cannot record finished rebuild", logkey.Err, err)
		}
	}
}

// scrub verifies the segments (all when segs is nil), at most rate bytes/s
// (0: unthrottled).
func (p *Pool) scrub(ctx context.Context, progress func(Progress), rate int64, segs []segRef) (ScrubReport, error) {
	if p.closed.Load() {
		return ScrubReport{}, ErrClosed
	}
	start := time.Now()
	var rep ScrubReport
	if segs == nil {
		segs = p.segments(nil)
	}
	pr := Progress{Op: "scrub"}
	for _, s := range segs {
		pr.Total += s.tail * int64(len(s.members))
	}
	for _, s := range segs {
		for off := int64(0); off < s.tail; {
			if err := ctx.Err(); err != nil {
				rep.Duration = time.Since(start)
				return rep, err
			}
			st, n, err := p.repairStripe(s.row, off, s.members)
			if !st.h.Valid() {
				break // no header: end of the log of this segment
			}
			cl := st.h.ChunkLen()
			bad := int64(len(st.valid))
			for _, ok := range st.valid {
				if ok {
					bad--
				}
			}
			rep.Stripes++
			rep.Bytes += cl * int64(len(s.members))
			rep.ChecksumErrors += bad + int64(n)
			rep.Repaired += int64(n)
			pr.Done += cl * int64(len(s.members))
			pr.Repaired += int64(n)
			if err != nil {
				rep.Unrecoverable++
				pr.Unreadable++
				p.log.Error("stripe unrecoverable", "segment", s.row, "offset", off, logkey.Err, err)
			}
			off += cl
			if rate > 0 {
				d := time.Duration(float64(cl*int64(len(s.members))) / float64(rate) * float64(time.Second))
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
				case <-t.C:
				}
				t.Stop()
			}
		}
		if progress != nil {
			progress(pr)
		}
	}
	rep.Duration = time.Since(start)
	return rep, nil
}

// backgroundScrub scrubs the pool continuously at Options.ScrubRate.
// Owned by the pool; stopped by Close.
func (p *Pool) backgroundScrub() {
	defer p.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-p.stop
		cancel()
	}()
	for {
		rep, err := p.scrub(ctx, nil, p.o.ScrubRate, nil)
		if err != nil {
			return
		}
		if rep.Unrecoverable == 0 {
			p.finishRebuilds()
		}
		if rep.Repaired > 0 || rep.Unrecoverable > 0 {
			p.log.Warn("scrub pass done", "stripes", rep.Stripes, "repaired", rep.Repaired, "unrecoverable", rep.Unrecoverable)
		}
		t := time.NewTimer(time.Minute)
		select {
		case <-p.stop:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// prepareNewDevice opens path, refuses a device with a superblock and
// writes a superblock for position index.
func (p *Pool) prepareNewDevice(path string, index, count int) (Device, layout.Superblock, error) {
	var sb layout.Superblock
	dev, err := p.o.OpenDevice(path)
	if err != nil {
		return nil, sb, fmt.Errorf("pool: open %s: %w", path, err)
	}
	if _, err := readSuperblock(dev); err == nil {
		dev.Close()
		return nil, sb, fmt.Errorf("%w: %s holds a Stave superblock", ErrExists, path)
	}
	if dev.Size() < layout.DataStart+int64(p.rows)*p.segSize {
		dev.Close()
		return nil, sb, fmt.Errorf("%w: %s is too small (%d bytes)", ErrInvalid, path, dev.Size())
	}
	zero := make([]byte, layout.BlockSize)
	for off := int64(layout.FreeTableStart); off < layout.DataStart; off += layout.BlockSize {
		if _, err := dev.WriteAt(zero, off); err != nil {
			dev.Close()
			return nil, sb, fmt.Errorf("pool: format %s: %w", path, err)
		}
	}
	for r := 0; r < p.rows; r++ {
		if _, err := dev.WriteAt(zero, p.rowOff(uint32(r))); err != nil {
			dev.Close()
			return nil, sb, fmt.Errorf("pool: format %s: %w", path, err)
		}
	}
	sb = layout.Superblock{Version: layout.FormatVersion, Seq: 1, PoolID: p.poolID, DeviceID: newUUID(),
		DeviceIndex: uint32(index), DeviceCount: uint32(count), SegmentSize: uint64(p.segSize),
		SegmentCount: uint64(p.rows), DataStart: layout.DataStart, Epoch: epoch}
	if err := writeSuperblock(dev, sb); err != nil {
		dev.Close()
		return nil, sb, fmt.Errorf("pool: write superblock %s: %w", path, err)
	}
	return dev, sb, nil
}

// markRebuildingLocked records that device i lacks chunks (pool.json
// `rebuilding`, written by the next savePoolFile).
// REQUIRES: p.mu held.
func (p *Pool) markRebuildingLocked(i int) {
	if !p.mu.rebuilding[i] {
		p.mu.rebuilding[i] = true
		p.mu.poolFileGen++
	}
}

// savePoolFile writes pool.json with the current devices and rebuilding
// marks. Writes are serialised, and one that finds the state already
// written (poolFileGen) is skipped, so the file on disk is never older
// than a state a completed call saw.
func (p *Pool) savePoolFile() error {
	p.poolFileMu.Lock()
	defer p.poolFileMu.Unlock()
	p.mu.Lock()
	gen := p.mu.poolFileGen
	if gen != 0 && gen == p.poolFileSaved {
		p.mu.Unlock()
		return nil
	}
	pf := poolFile{PoolID: hex.EncodeToString(p.poolID[:]), SegmentSize: p.segSize}
	for _, d := range p.mu.devs {
		pf.Devices = append(pf.Devices, d.path)
	}
	for i := range p.mu.rebuilding {
		pf.Rebuilding = append(pf.Rebuilding, i)
	}
	p.mu.Unlock()
	if err := writePoolFile(p.o.MetaDir, pf); err != nil {
		return err
	}
	p.poolFileSaved = gen
	return nil
}

// AddDevice adds a device (at least as large as the others) to the pool.
// New segments may use it at once.
func (p *Pool) AddDevice(ctx context.Context, path string) error {
	p.mu.Lock()
	n := len(p.mu.devs)
	for _, d := range p.mu.devs {
		if d.path == path {
			p.mu.Unlock()
			return fmt.Errorf("%w: %s is in the pool", ErrExists, path)
		}
	}
	p.mu.Unlock()
	if n >= 255 {
		return fmt.Errorf("%w: pool has 255 devices", ErrInvalid)
	}
	dev, sb, err := p.prepareNewDevice(path, n, n+1)
	if err != nil {
		return err
	}
	d := &devSlot{path: path, index: n, dev: dev, sb: sb}
	p.mu.Lock()
	devs := append(append([]*devSlot(nil), p.mu.devs...), d)
	p.mu.devs = devs
	p.mu.poolFileGen++
	p.updateReasonLocked()
	p.mu.Unlock()
	p.log.Info("device added", logkey.Path, path, "device", n)
	return p.savePoolFile()
}

// ReplaceDevice replaces device old (failed, missing or healthy) by the
// new device at path new and rebuilds every chunk that lived on old onto
// new by reconstruction from the other chunks of each stripe. Reads stay
// correct during the rebuild (chunks not yet rebuilt are reconstructed).
// progress, when non-nil, is called after each segment.
func (p *Pool) ReplaceDevice(ctx context.Context, old, new string, progress func(Progress)) error {
	p.mu.Lock()
	var slot *devSlot
	for _, d := range p.mu.devs {
		if d.path == old {
			slot = d
		}
	}
	n := len(p.mu.devs)
	p.mu.Unlock()
	if slot == nil {
		return fmt.Errorf("%w: device %s", ErrNotFound, old)
	}
	dev, sb, err := p.prepareNewDevice(new, slot.index, n)
	if err != nil {
		return err
	}
	nd := &devSlot{path: new, index: slot.index, dev: dev, sb: sb}
	// Swap under swapMu: a batch in flight with the old device is applied
	// first, so the segment list below covers it.
	p.swapMu.Lock()
	p.mu.Lock()
	devs := append([]*devSlot(nil), p.mu.devs...)
	devs[slot.index] = nd
	p.mu.devs = devs
	p.mu.rebuilding[slot.index] = true
	p.mu.poolFileGen++
	p.updateReasonLocked()
	p.mu.Unlock()
	p.swapMu.Unlock()
	if slot.dev != nil {
		slot.dev.Close()
	}
	if err := p.savePoolFile(); err != nil {
		return err
	}
	p.log.Info("device replaced, rebuilding", "old", old, "new", new, "device", slot.index)
	segs := p.segments(func(s *segState) bool {
		for _, mi := range s.members[:s.width()] {
			if int(mi) == slot.index {
				return true
			}
		}
		return false
	})
	var pr Progress
	rep, err := p.scrub(ctx, func(x Progress) {
		pr = x
		pr.Op = "rebuild"
		if progress != nil {
			progress(pr)
		}
	}, 0, segs)
	if err != nil {
		return err
	}
	if rep.Unrecoverable > 0 {
		return fmt.Errorf("%w: rebuild of %s left %d unrecoverable stripes", ErrCorruption, new, rep.Unrecoverable)
	}
	p.mu.Lock()
	delete(p.mu.rebuilding, slot.index)
	p.mu.poolFileGen++
	p.updateReasonLocked()
	p.mu.Unlock()
	p.log.Info("rebuild done", "new", new, "stripes", rep.Stripes, "repaired", rep.Repaired)
	return p.savePoolFile()
}

func errSnap(what string) error { return fmt.Errorf("%w: %s", ErrNotImplemented, what) }

// CreateSnapshot is not implemented yet (pool: not implemented).
func (p *Pool) CreateSnapshot(ctx context.Context, volume, snap string) error {
	return errSnap("snapshots")
}

// DeleteSnapshot is not implemented yet (pool: not implemented).
func (p *Pool) DeleteSnapshot(ctx context.Context, volume, snap string) error {
	return errSnap("snapshots")
}

// Snapshots is not implemented yet (pool: not implemented).
func (p *Pool) Snapshots(volume string) ([]SnapshotInfo, error) {
	return nil, errSnap("snapshots")
}

// Clone is not implemented yet (pool: not implemented).
func (p *Pool) Clone(ctx context.Context, volume, snap, newVolume string) (*Volume, error) {
	return nil, errSnap("clones")
}

// Revert is not implemented yet (pool: not implemented).
func (p *Pool) Revert(ctx context.Context, volume, snap string) error {
	return errSnap("revert")
}
