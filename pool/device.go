package pool

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"stave.dev/stave/pool/internal/layout"
)

// osDevice is the default Device: a regular file or a block device.
// Reads go through the page cache (f); aligned writes (the committer's
// chunks) go through a second handle opened O_DIRECT, when the file
// system allows it: no copy into the page cache and no dirty pages for
// the sync to write back (on a sparse ext4 file, 3-4 times the 512 KiB
// chunk throughput). Linux keeps the two coherent: a direct write
// flushes and then invalidates the cached pages of its range.
type osDevice struct {
	f      *os.File
	direct *os.File // nil when O_DIRECT is refused (tmpfs)
	size   int64
}

// openOSDevice opens path O_RDWR. A block device is opened O_EXCL too:
// Linux then refuses it (EBUSY) while it is mounted, part of an md or
// device-mapper device, or open O_EXCL elsewhere (another pool), and
// holds it against those until Close. The size of a block device is
// found by seeking to its end.
func openOSDevice(path string) (Device, error) {
	flags := os.O_RDWR
	if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0 {
		flags |= syscall.O_EXCL
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		if errors.Is(err, syscall.EBUSY) {
			return nil, fmt.Errorf("pool: device %s is in use (mounted, held by another pool, or open exclusively by another program): %w", path, syscall.EBUSY)
		}
		return nil, err
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, err
	}
	d := &osDevice{f: f, size: size}
	// Not O_EXCL: f holds a block device exclusively already.
	if df, err := os.OpenFile(path, os.O_RDWR|syscall.O_DIRECT, 0); err == nil {
		d.direct = df
	}
	return d, nil
}

// directAlign is the alignment of O_DIRECT writes: offset, length and
// buffer address (4 KiB covers 512-byte and 4Kn logical blocks).
const directAlign = 4096

func (d *osDevice) ReadAt(p []byte, off int64) (int, error) { return d.f.ReadAt(p, off) }

// WriteAt writes p at off, with O_DIRECT when p is aligned (see osDevice).
func (d *osDevice) WriteAt(p []byte, off int64) (int, error) {
	if d.direct != nil && len(p) > 0 && off%directAlign == 0 && len(p)%directAlign == 0 &&
		uintptr(unsafe.Pointer(&p[0]))%directAlign == 0 {
		return d.direct.WriteAt(p, off)
	}
	return d.f.WriteAt(p, off)
}

// Sync makes every write durable (fdatasync covers both handles: it
// syncs the file, not the handle).
func (d *osDevice) Sync() error { return syncData(d.f) }
func (d *osDevice) Size() int64 { return d.size }

// Close closes both handles.
func (d *osDevice) Close() error {
	if d.direct != nil {
		d.direct.Close()
	}
	return d.f.Close()
}

// errorThreshold is the number of read errors after which a device is
// marked failed. Any write or sync error fails a device at once.
const errorThreshold = 16

// devSlot is one device position of the pool.
type devSlot struct {
	path  string
	index int
	dev   Device // nil when missing
	sb    layout.Superblock
	// state is a DeviceState; written under Pool.mu, read lock-free.
	state atomic.Uint32

	readErrs, writeErrs, csumErrs, repairs atomic.Int64

	// syncs coalesces the syncs of the batches in flight on the device.
	syncs syncer
}

// syncer coalesces the syncs of batches written concurrently to one
// device (group sync): a caller needs a sync that starts after its write
// returned, and one sync serves every caller waiting when it starts.
type syncer struct {
	mu      sync.Mutex
	cond    sync.Cond
	started uint64 // syncs started
	done    uint64 // syncs finished
	running bool
	err     error // the first sync error (the device is failed then)
}

// sync makes every write to dev that returned before the call durable.
func (s *syncer) sync(dev Device) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cond.L == nil {
		s.cond.L = &s.mu
	}
	need := s.started + 1
	for s.done < need {
		if s.running {
			s.cond.Wait()
			continue
		}
		s.running = true
		s.started++
		g := s.started
		s.mu.Unlock()
		err := dev.Sync()
		s.mu.Lock()
		s.running, s.done = false, g
		if err != nil && s.err == nil {
			s.err = err
		}
		s.cond.Broadcast()
	}
	return s.err
}

func (d *devSlot) healthy() bool { return d.dev != nil && DeviceState(d.state.Load()) == DeviceOK }

// readFull reads len(b) bytes at off, counting errors.
func (d *devSlot) readFull(b []byte, off int64) error {
	if !d.healthy() {
		return fmt.Errorf("pool: device %d (%s) is %s", d.index, d.path, DeviceState(d.state.Load()))
	}
	n, err := d.dev.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	d.readErrs.Add(1)
	return fmt.Errorf("pool: read device %d (%s) at %d: %w", d.index, d.path, off, err)
}

// readSuperblock reads both superblock copies of dev and returns the good
// one with the highest sequence number.
func readSuperblock(dev Device) (layout.Superblock, error) {
	var best layout.Superblock
	var firstErr error
	found := false
	buf := make([]byte, layout.SuperblockSize)
	for c := 0; c < layout.SuperblockCopies; c++ {
		if _, err := dev.ReadAt(buf, int64(c)*layout.SuperblockSize); err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		sb, err := layout.DecodeSuperblock(buf)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if !found || sb.Seq > best.Seq {
			best, found = sb, true
		}
	}
	if !found {
		return best, fmt.Errorf("pool: no valid superblock: %w", firstErr)
	}
	return best, nil
}

// writeSuperblock writes both copies of sb (copy 1 first, then copy 0,
// each synced) so that a crash leaves at least one good copy.
func writeSuperblock(dev Device, sb layout.Superblock) error {
	buf := sb.AppendTo(nil)
	for _, c := range []int64{1, 0} {
		if _, err := dev.WriteAt(buf, c*layout.SuperblockSize); err != nil {
			return err
		}
		if err := dev.Sync(); err != nil {
			return err
		}
	}
	return nil
}
