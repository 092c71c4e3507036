// Package filedev is a scsi.BlockDevice over a sparse regular file: the
// backing store of a volume until the pool lands, and a test double after.
//
// Layout: byte i of the device is byte i of the file; the file's length is
// the device size and changes only by Grow. Unwritten and unmapped
// ranges are holes and read as zeros.
//
//	device  [0 ............................................ Size)
//	file    |data|  hole  |data|data|    hole    |data|  hole |
//
// I/O maps onto system calls as follows:
//
//	ReadAt       pread(2)
//	WriteAt      pwrite(2), then fdatasync(2) when fua is set
//	Flush        fdatasync(2)
//	Unmap        fallocate(2) FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE
//	             (zeros are written where the file system cannot punch)
//	MapStatus    lseek(2) SEEK_DATA / SEEK_HOLE
//
// *Device implements scsi.BlockDevice and scsi.ProvisioningStatus; the
// assertion lives in cmd/stave so that this package builds without
// target/scsi.
//
// A Device is safe for concurrent use: pread and pwrite carry their own
// offsets, so no lock is held around I/O. Contexts are checked before each
// system call; a call that has started runs to completion.
package filedev

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Sentinel errors.
var (
	// ErrOutOfRange is returned for I/O outside [0, Size).
	ErrOutOfRange = errors.New("filedev: range outside the device")
	// ErrClosed is returned for I/O after Close.
	ErrClosed = errors.New("filedev: device closed")
	// ErrNotRegular is returned by Open when the path is not a regular file.
	ErrNotRegular = errors.New("filedev: not a regular file")
)

// zeroChunk is the size of the zero buffer used when hole punching is not
// supported by the file system.
const zeroChunk = 1 << 20

// Device is a block device over one sparse file. Create it with Open.
type Device struct {
	f      *os.File
	rc     syscall.RawConn // for fd-level calls; keeps the fd valid during them
	path   string
	size   atomic.Int64 // grows only (Grow)
	closed atomic.Bool
}

// Create makes a new sparse file of size bytes at path, with mode 0600,
// and syncs it. It fails if the file exists or size is not positive.
func Create(path string, size int64) error {
	if size <= 0 {
		return fmt.Errorf("filedev: size %d must be positive", size)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("filedev: create: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return fmt.Errorf("filedev: create: %w", err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return fmt.Errorf("filedev: create: %w", err)
	}
	return f.Close()
}

// Open opens the existing backing file at path for reading and writing.
// The device size is the file's length.
func Open(path string) (*Device, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("filedev: open: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("filedev: open: %w", err)
	}
	if !st.Mode().IsRegular() {
		_ = f.Close()
		return nil, fmt.Errorf("%w: %s", ErrNotRegular, path)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("filedev: open: %w", err)
	}
	d := &Device{f: f, rc: rc, path: path}
	d.size.Store(st.Size())
	return d, nil
}

// Path returns the backing file's path.
func (d *Device) Path() string { return d.path }

// Size returns the device capacity in bytes.
func (d *Device) Size() int64 { return d.size.Load() }

// Grow extends the device to size bytes (the new range reads as zeros)
// and syncs the file, so the new size survives a crash once Grow returns.
// A size not larger than the current one is an error. Safe to call
// concurrently with I/O; I/O checks the size it sees at its start.
func (d *Device) Grow(size int64) error {
	if d.closed.Load() {
		return ErrClosed
	}
	if old := d.size.Load(); size <= old {
		return fmt.Errorf("filedev: grow to %d bytes: the device already has %d", size, old)
	}
	if err := d.f.Truncate(size); err != nil {
		return fmt.Errorf("filedev: grow: %w", err)
	}
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("filedev: grow: %w", err)
	}
	d.size.Store(size)
	return nil
}

// check validates an I/O range and the device state.
func (d *Device) check(ctx context.Context, off, n int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.closed.Load() {
		return ErrClosed
	}
	size := d.size.Load()
	if off < 0 || n < 0 || off > size || n > size-off {
		return fmt.Errorf("%w: offset %d length %d, size %d", ErrOutOfRange, off, n, size)
	}
	return nil
}

// ReadAt fills p from offset off. Holes read as zeros.
func (d *Device) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := d.check(ctx, off, int64(len(p))); err != nil {
		return err
	}
	n, err := d.f.ReadAt(p, off)
	if errors.Is(err, io.EOF) {
		// The file was shortened behind our back: what is missing reads as zeros.
		clear(p[n:])
		err = nil
	}
	if err != nil {
		return fmt.Errorf("filedev: read at %d: %w", off, err)
	}
	return nil
}

// WriteAt writes p at off. With fua the data is on stable storage when
// WriteAt returns nil.
func (d *Device) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := d.check(ctx, off, int64(len(p))); err != nil {
		return err
	}
	if _, err := d.f.WriteAt(p, off); err != nil {
		return fmt.Errorf("filedev: write at %d: %w", off, err)
	}
	if fua {
		return d.sync()
	}
	return nil
}

// Flush makes every completed write durable.
func (d *Device) Flush(ctx context.Context) error {
	if err := d.check(ctx, 0, 0); err != nil {
		return err
	}
	return d.sync()
}

func (d *Device) sync() error {
	var serr error
	err := d.control(func(fd int) { serr = unix.Fdatasync(fd) })
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("filedev: fdatasync: %w", err)
	}
	return nil
}

// control runs fn with the file descriptor, keeping the file open meanwhile.
func (d *Device) control(fn func(fd int)) error {
	return d.rc.Control(func(fd uintptr) { fn(int(fd)) })
}

// Unmap deallocates [off, off+length) so that it reads as zeros and the
// file gets sparser. Where the file system cannot punch holes, the range is
// overwritten with zeros instead.
func (d *Device) Unmap(ctx context.Context, off, length int64) error {
	if err := d.check(ctx, off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	var ferr error
	err := d.control(func(fd int) {
		ferr = unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	})
	if err == nil {
		err = ferr
	}
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		return d.writeZeros(ctx, off, length)
	}
	if err != nil {
		return fmt.Errorf("filedev: punch hole at %d+%d: %w", off, length, err)
	}
	return nil
}

func (d *Device) writeZeros(ctx context.Context, off, length int64) error {
	z := make([]byte, min(length, zeroChunk))
	for length > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(length, int64(len(z)))
		if _, err := d.f.WriteAt(z[:n], off); err != nil {
			return fmt.Errorf("filedev: zero at %d: %w", off, err)
		}
		off += n
		length -= n
	}
	return nil
}

// MapStatus reports whether the byte at off is mapped (backed by allocated
// file data) and the length of the run in that state starting at off,
// capped at limit and at the end of the device. Granularity is the file
// system's block size.
func (d *Device) MapStatus(ctx context.Context, off, limit int64) (mapped bool, length int64, err error) {
	if err := d.check(ctx, off, 0); err != nil {
		return false, 0, err
	}
	size := d.size.Load()
	if off == size || limit <= 0 {
		return false, 0, nil
	}
	limit = min(limit, size-off)
	var data, hole int64
	var serr error
	cerr := d.control(func(fd int) {
		data, serr = unix.Seek(fd, off, unix.SEEK_DATA)
		if serr != nil || data != off {
			return
		}
		hole, serr = unix.Seek(fd, off, unix.SEEK_HOLE)
	})
	if cerr != nil {
		return false, 0, fmt.Errorf("filedev: map status: %w", cerr)
	}
	switch {
	case errors.Is(serr, unix.ENXIO):
		// No data at or after off: the rest of the file is a hole.
		return false, limit, nil
	case serr != nil:
		return false, 0, fmt.Errorf("filedev: map status at %d: %w", off, serr)
	case data > off:
		return false, min(data-off, limit), nil
	default:
		return true, min(hole-off, limit), nil
	}
}

// Allocated returns the bytes of storage the backing file occupies
// (st_blocks × 512).
func (d *Device) Allocated() (int64, error) {
	return Allocated(d.path)
}

// Allocated returns the bytes of storage the file at path occupies
// (st_blocks × 512).
func Allocated(path string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("filedev: stat: %w", err)
	}
	return st.Blocks * 512, nil
}

// Close syncs and closes the file. I/O after Close fails with ErrClosed.
// Close is idempotent.
func (d *Device) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	serr := d.sync()
	cerr := d.f.Close()
	if serr != nil {
		return serr
	}
	return cerr
}
