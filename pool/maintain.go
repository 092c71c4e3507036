package pool

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"time"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/pool/internal/layout"
)

// segRef is a segment as listed for a scrub or rebuild.
type segRef struct {
	row     uint32
	members []uint8
	tail    int64
	// state identifies the segment: the cleaner may free the row and a
	// new segment reuse it while the scrub works through its list.
	state *segState
}

// errSegmentGone reports that a listed segment was freed meanwhile.
var errSegmentGone = errors.New("pool: segment freed")

// scrubStripe is repairStripe for the batch at off in segment s: it fails
// with errSegmentGone when s.row no longer holds segment s. freeSegment
// drops a segment under repairMu, so the segment stays for the whole
// repair and no chunk of a freed log is written into a reused row.
func (p *Pool) scrubStripe(s segRef, off int64) (stripe, int, error) {
	p.repairMu.Lock()
	defer p.repairMu.Unlock()
	p.mu.Lock()
	cur := p.mu.segs[s.row]
	p.mu.Unlock()
	if cur != s.state {
		return stripe{}, 0, errSegmentGone
	}
	return p.repairStripeLocked(s.row, off, s.members)
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
		out = append(out, segRef{r, append([]uint8(nil), s.members[:s.width()]...), s.tail, s})
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
			st, n, err := p.scrubStripe(s, off)
			if errors.Is(err, errSegmentGone) {
				break // freed by the cleaner: nothing left to verify
			}
			if !st.h.Valid() {
				// Every offset below the tail starts a batch that was
				// durable on at least k members: no header there means
				// unreadable members, not the end of the log (and the
				// rest of the segment cannot be found).
				rep.Unrecoverable++
				pr.Unreadable++
				p.log.Error("segment unreadable", "segment", s.row, "offset", off, "tail", s.tail, logkey.Err, err)
				break
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
	pf := p.poolFileLocked(p.mu.devs, -1)
	p.mu.Unlock()
	if err := writePoolFile(p.o.MetaDir, pf); err != nil {
		return err
	}
	p.poolFileSaved = gen
	return nil
}

// poolFileLocked returns the content of pool.json for the device list
// devs and the rebuilding marks, plus device mark if mark >= 0.
// REQUIRES: p.mu held.
func (p *Pool) poolFileLocked(devs []*devSlot, mark int) poolFile {
	pf := poolFile{PoolID: hex.EncodeToString(p.poolID[:]), SegmentSize: p.segSize}
	for _, d := range devs {
		pf.Devices = append(pf.Devices, d.path)
	}
	for i := range p.mu.rebuilding {
		pf.Rebuilding = append(pf.Rebuilding, i)
	}
	if mark >= 0 && !p.mu.rebuilding[mark] {
		pf.Rebuilding = append(pf.Rebuilding, mark)
	}
	sort.Ints(pf.Rebuilding)
	return pf
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
	err = p.publishDevices(func(devs []*devSlot) ([]*devSlot, error) {
		if len(devs) != n {
			return nil, fmt.Errorf("%w: the pool's devices changed while %s was prepared", ErrInvalid, path)
		}
		return append(devs, d), nil
	}, -1)
	if err != nil {
		dev.Close()
		return err
	}
	p.log.Info("device added", logkey.Path, path, "device", n)
	return nil
}

// publishDevices makes edit(devices) the pool's device list, marking
// device mark (if >= 0) as lacking chunks. It writes pool.json first and
// changes the list in memory only once the file is durable.
//
// INVARIANT: a chunk is only written to a device that pool.json lists.
// Open reads the devices pool.json names, so a chunk counted towards the
// k chunks of an acknowledged batch on a device that pool.json did not
// list yet (a ReplaceDevice or AddDevice cut short by a crash) would be
// lost, and the batch with it.
//
//  1. Take swapMu: no batch is in flight (each holds it shared from
//     allocate to apply), and none starts with the old list.
//  2. Take poolFileMu: no other pool.json write can land between ours
//     and the switch, putting the old list back.
//  3. Write and sync pool.json with the new list and the marks.
//  4. Switch the list in memory.
func (p *Pool) publishDevices(edit func(devs []*devSlot) ([]*devSlot, error), mark int) error {
	p.swapMu.Lock()
	defer p.swapMu.Unlock()
	p.poolFileMu.Lock()
	defer p.poolFileMu.Unlock()
	p.mu.Lock()
	devs, err := edit(append([]*devSlot(nil), p.mu.devs...))
	if err != nil {
		p.mu.Unlock()
		return err
	}
	gen := p.mu.poolFileGen
	pf := p.poolFileLocked(devs, mark)
	p.mu.Unlock()
	if err := writePoolFile(p.o.MetaDir, pf); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mu.devs = devs
	if mark >= 0 {
		p.mu.rebuilding[mark] = true
	}
	// The file holds this state unless a mark was added meanwhile (a
	// device failed): then the next savePoolFile must write it.
	unchanged := p.mu.poolFileGen == gen
	p.mu.poolFileGen++
	if unchanged {
		p.poolFileSaved = p.mu.poolFileGen
	}
	p.updateReasonLocked()
	return nil
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
	// Swap with pool.json recording the new device (rebuilding) before
	// any chunk is written to it, and under swapMu: a batch in flight
	// with the old device is applied first, so the segment list below
	// covers it.
	err = p.publishDevices(func(devs []*devSlot) ([]*devSlot, error) {
		if devs[slot.index] != slot {
			return nil, fmt.Errorf("%w: device %s was replaced meanwhile", ErrNotFound, old)
		}
		devs[slot.index] = nd
		return devs, nil
	}, slot.index)
	if err != nil {
		dev.Close()
		return err
	}
	if slot.dev != nil {
		slot.dev.Close()
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
