package scsi

import (
	"context"
	"errors"
	"sync"
)

// memDev is an in-memory thin BlockDevice with ProvisioningStatus: blocks
// of gran bytes are mapped on write and dropped by Unmap.
type memDev struct {
	gran int64
	mu   sync.Mutex
	size int64
	blk  map[int64][]byte // block index -> contents (gran bytes)
	// failRead/failWrite inject errors.
	failRead, failWrite error
	flushes             int
	fuaWrites           int
	// gate, when non-nil, holds reads and writes until it is closed; each
	// held call first sends on entered.
	gate    chan struct{}
	entered chan struct{}
}

// hold blocks while the gate is shut.
func (d *memDev) hold(ctx context.Context) error {
	d.mu.Lock()
	g, e := d.gate, d.entered
	d.mu.Unlock()
	if g == nil {
		return nil
	}
	e <- struct{}{}
	select {
	case <-g:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func newMemDev(size, gran int64) *memDev {
	return &memDev{gran: gran, size: size, blk: map[int64][]byte{}}
}

var errMemRange = errors.New("memdev: out of range")

func (d *memDev) Size() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.size
}

func (d *memDev) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := d.hold(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failRead != nil {
		return d.failRead
	}
	if off < 0 || off+int64(len(p)) > d.size {
		return errMemRange
	}
	for i := int64(0); i < int64(len(p)); {
		a := off + i
		b, o := a/d.gran, a%d.gran
		n := min(d.gran-o, int64(len(p))-i)
		if blk := d.blk[b]; blk != nil {
			copy(p[i:i+n], blk[o:o+n])
		} else {
			clear(p[i : i+n])
		}
		i += n
	}
	return nil
}

func (d *memDev) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := d.hold(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failWrite != nil {
		return d.failWrite
	}
	if off < 0 || off+int64(len(p)) > d.size {
		return errMemRange
	}
	if fua {
		d.fuaWrites++
	}
	for i := int64(0); i < int64(len(p)); {
		a := off + i
		b, o := a/d.gran, a%d.gran
		n := min(d.gran-o, int64(len(p))-i)
		blk := d.blk[b]
		if blk == nil {
			blk = make([]byte, d.gran)
			d.blk[b] = blk
		}
		copy(blk[o:o+n], p[i:i+n])
		i += n
	}
	return nil
}

func (d *memDev) Flush(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.flushes++
	return nil
}

func (d *memDev) Unmap(ctx context.Context, off, length int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 0 || off+length > d.size {
		return errMemRange
	}
	for i := int64(0); i < length; {
		a := off + i
		b, o := a/d.gran, a%d.gran
		n := min(d.gran-o, length-i)
		if blk := d.blk[b]; blk != nil {
			if n == d.gran {
				delete(d.blk, b)
			} else {
				clear(blk[o : o+n])
			}
		}
		i += n
	}
	return nil
}

func (d *memDev) MapStatus(ctx context.Context, off, limit int64) (bool, int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 0 || off >= d.size {
		return false, 0, errMemRange
	}
	first := d.blk[off/d.gran] != nil
	var n int64
	for a := off; a < d.size && n < limit; {
		if (d.blk[a/d.gran] != nil) != first {
			break
		}
		step := d.gran - a%d.gran
		n += step
		a += step
	}
	return first, min(n, limit), nil
}

// noProvDev hides ProvisioningStatus.
type noProvDev struct{ *memDev }

func (d noProvDev) MapStatus() {}
