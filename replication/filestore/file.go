package filestore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// file is what the store needs of an open file. The OS implementation is
// osFile; the tests substitute a crashable in-memory file that keeps only
// synced writes (and a random subset of the others) across a crash.
type file interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Sync makes the file durable: its data and the metadata needed to
	// read it back (fdatasync), or all metadata when meta is set (fsync).
	Sync(meta bool) error
	// Punch deallocates [off, off+n) without changing the size; the
	// range reads as zeros afterwards.
	Punch(off, n int64) error
	Truncate(n int64) error
	// Allocate grows the file to n bytes (zeros) with its blocks
	// allocated, so that later overwrites change no metadata.
	Allocate(n int64) error
	Size() (int64, error)
	Close() error
}

// fsys is what the store needs of a file system (see file).
type fsys interface {
	MkdirAll(dir string) error
	// Open opens name for reading and writing; with create it is created
	// (empty) when missing. A missing file without create yields an error
	// wrapping os.ErrNotExist.
	Open(name string, create bool) (file, error)
	Rename(oldname, newname string) error
	Remove(name string) error
	SyncDir(dir string) error
}

// osFS is the operating system's file system.
type osFS struct{}

func (osFS) MkdirAll(dir string) error { return os.MkdirAll(dir, 0o700) }

func (osFS) Open(name string, create bool) (file, error) {
	flag := os.O_RDWR
	if create {
		flag |= os.O_CREATE
	}
	f, err := os.OpenFile(name, flag, 0o600)
	if err != nil {
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &osFile{File: f, rc: rc}, nil
}

func (osFS) Rename(oldname, newname string) error { return os.Rename(oldname, newname) }

func (osFS) Remove(name string) error {
	if err := os.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func (osFS) SyncDir(dir string) error {
	d, err := os.Open(filepath.Clean(dir))
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// osFile is a regular file; Sync(false) is fdatasync(2), Punch is
// fallocate(2) PUNCH_HOLE|KEEP_SIZE (zeros are written where the file
// system cannot punch).
type osFile struct {
	*os.File
	rc syscall.RawConn
}

func (f *osFile) Sync(meta bool) error {
	if meta {
		return f.File.Sync()
	}
	var serr error
	if err := f.rc.Control(func(fd uintptr) {
		for {
			serr = unix.Fdatasync(int(fd))
			if serr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: serr}
	}
	return nil
}

func (f *osFile) Punch(off, n int64) error {
	if n <= 0 {
		return nil
	}
	var ferr error
	if err := f.rc.Control(func(fd uintptr) {
		ferr = unix.Fallocate(int(fd), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	}); err != nil {
		return err
	}
	if errors.Is(ferr, unix.EOPNOTSUPP) || errors.Is(ferr, unix.ENOSYS) {
		z := make([]byte, min(n, 1<<20))
		for n > 0 {
			k := min(n, int64(len(z)))
			if _, err := f.WriteAt(z[:k], off); err != nil {
				return err
			}
			off += k
			n -= k
		}
		return nil
	}
	if ferr != nil {
		return &os.PathError{Op: "fallocate punch hole", Path: f.Name(), Err: ferr}
	}
	return nil
}

func (f *osFile) Allocate(n int64) error {
	var ferr error
	if err := f.rc.Control(func(fd uintptr) { ferr = unix.Fallocate(int(fd), 0, 0, n) }); err != nil {
		return err
	}
	if errors.Is(ferr, unix.EOPNOTSUPP) || errors.Is(ferr, unix.ENOSYS) {
		return f.Truncate(n)
	}
	if ferr != nil {
		return &os.PathError{Op: "fallocate", Path: f.Name(), Err: ferr}
	}
	return nil
}

func (f *osFile) Size() (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if !st.Mode().IsRegular() {
		return 0, fmt.Errorf("%s is not a regular file", f.Name())
	}
	return st.Size(), nil
}
