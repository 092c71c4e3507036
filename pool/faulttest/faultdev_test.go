package faulttest

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"stave.dev/stave/pool"
)

// errInjected is the I/O error a failed fileDevice returns, like EIO from a
// dead disk.
var errInjected = errors.New("faulttest: injected I/O error")

// faultState says how a device path misbehaves.
type faultState int32

const (
	faultNone faultState = iota
	// faultFail makes every call return errInjected (a dead disk).
	faultFail
)

// faultFiles opens plain files as pool devices and lets a test fail any
// of them (every later call on any handle to that path returns
// errInjected) or zero one under the running pool. Safe for concurrent use.
type faultFiles struct {
	mu struct {
		sync.Mutex
		state map[string]*atomic.Int32
	}
	reads, writes atomic.Int64
}

func newFaultFiles() *faultFiles {
	f := &faultFiles{}
	f.mu.state = map[string]*atomic.Int32{}
	return f
}

func (f *faultFiles) stateOf(path string) *atomic.Int32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.mu.state[path]
	if s == nil {
		s = new(atomic.Int32)
		f.mu.state[path] = s
	}
	return s
}

// set changes how path behaves from now on.
func (f *faultFiles) set(path string, s faultState) { f.stateOf(path).Store(int32(s)) }

// open is a pool OpenDevice function.
func (f *faultFiles) open(path string) (pool.Device, error) {
	st := f.stateOf(path)
	if faultState(st.Load()) == faultFail {
		return nil, fmt.Errorf("open %s: %w", path, errInjected)
	}
	file, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	fi, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, err
	}
	return &fileDevice{f: f, file: file, size: fi.Size(), state: st}, nil
}

// fileDevice is a pool.Device over a plain file with injectable failure.
type fileDevice struct {
	f     *faultFiles
	file  *os.File
	size  int64
	state *atomic.Int32
}

var _ pool.Device = (*fileDevice)(nil)

func (d *fileDevice) failed() bool { return faultState(d.state.Load()) == faultFail }

// ReadAt implements pool.Device.
func (d *fileDevice) ReadAt(p []byte, off int64) (int, error) {
	if d.failed() {
		return 0, errInjected
	}
	d.f.reads.Add(1)
	return d.file.ReadAt(p, off)
}

// WriteAt implements pool.Device.
func (d *fileDevice) WriteAt(p []byte, off int64) (int, error) {
	if d.failed() {
		return 0, errInjected
	}
	d.f.writes.Add(1)
	return d.file.WriteAt(p, off)
}

// Sync implements pool.Device.
func (d *fileDevice) Sync() error {
	if d.failed() {
		return errInjected
	}
	return d.file.Sync()
}

// Size implements pool.Device.
func (d *fileDevice) Size() int64 { return d.size }

// Close implements pool.Device.
func (d *fileDevice) Close() error { return d.file.Close() }

// zeroFile overwrites the whole of path with zeros in place (a blank disk
// swapped in under the running pool).
func zeroFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	zeros := make([]byte, 1<<20)
	for off := int64(0); off < fi.Size(); off += int64(len(zeros)) {
		n := min(int64(len(zeros)), fi.Size()-off)
		if _, err := f.WriteAt(zeros[:n], off); err != nil {
			return err
		}
	}
	return f.Sync()
}
