package filestore

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path"
	"sync"
)

// errCrashed is what every mutating operation returns once a memFS has
// crashed.
var errCrashed = errors.New("memfs: crashed")

// memFS is a crashable in-memory file system, like pebble's
// vfs.NewCrashableMem: each file keeps what its last sync made durable and
// the operations since. It crashes at its crashAt-th mutating operation
// (WriteAt, Sync, Punch, Truncate): that one and every later one fail
// without effect. crashClone then builds the file system a power loss
// could leave: the durable content plus a random subset of the unsynced
// operations, writes torn into independent 512-byte sectors. Names
// (create, rename, remove) are durable at once; the store's ordering
// questions are about file contents.
type memFS struct {
	mu      sync.Mutex
	files   map[string]*memFile
	ops     int // mutating operations so far
	crashAt int // 0: never
	crashed bool
}

type memFile struct {
	vol     []byte // what reads see
	dur     []byte // what survives a crash for sure
	pending []memOp
}

type memOpKind int

const (
	opWrite memOpKind = iota
	opPunch
	opTruncate
)

type memOp struct {
	kind memOpKind
	off  int64
	data []byte // opWrite
	n    int64  // opPunch length, opTruncate size
}

func newMemFS() *memFS { return &memFS{files: map[string]*memFile{}} }

// setCrashAfter makes the fs crash at the n-th mutating operation from now
// (n >= 1); 0 disarms.
func (fs *memFS) setCrashAfter(n int) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if n == 0 {
		fs.crashAt = 0
		return
	}
	fs.crashAt = fs.ops + n
}

// crash makes the fs crash now.
func (fs *memFS) crash() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.crashed = true
}

// uncrash lets mutating operations succeed again (a transient error).
func (fs *memFS) uncrash() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.crashed, fs.crashAt = false, 0
}

func (fs *memFS) isCrashed() bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.crashed
}

// mutating counts one mutating operation; it returns errCrashed when the
// fs has crashed. REQUIRES: fs.mu held.
func (fs *memFS) mutatingLocked() error {
	if fs.crashed {
		return errCrashed
	}
	fs.ops++
	if fs.crashAt != 0 && fs.ops >= fs.crashAt {
		fs.crashed = true
		return errCrashed
	}
	return nil
}

// crashClone returns the file system after a power loss of fs.
func (fs *memFS) crashClone(r *rand.Rand) *memFS {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	out := newMemFS()
	for name, f := range fs.files {
		b := append([]byte(nil), f.dur...)
		for _, op := range f.pending {
			switch op.kind {
			case opWrite:
				for s := op.off &^ 511; s < op.off+int64(len(op.data)); s += 512 {
					if r.IntN(2) == 0 {
						continue
					}
					lo, hi := max(s, op.off), min(s+512, op.off+int64(len(op.data)))
					b = applyOp(b, memOp{kind: opWrite, off: lo, data: op.data[lo-op.off : hi-op.off]})
				}
			case opPunch:
				for s := op.off &^ 511; s < op.off+op.n; s += 512 {
					if r.IntN(2) == 0 {
						lo, hi := max(s, op.off), min(s+512, op.off+op.n)
						b = applyOp(b, memOp{kind: opPunch, off: lo, n: hi - lo})
					}
				}
			case opTruncate:
				if r.IntN(2) == 0 {
					b = applyOp(b, op)
				}
			}
		}
		out.files[name] = &memFile{vol: b, dur: append([]byte(nil), b...)}
	}
	return out
}

func applyOp(b []byte, op memOp) []byte {
	switch op.kind {
	case opWrite:
		if end := op.off + int64(len(op.data)); end > int64(len(b)) {
			b = append(b, make([]byte, end-int64(len(b)))...)
		}
		copy(b[op.off:], op.data)
	case opPunch:
		lo, hi := min(op.off, int64(len(b))), min(op.off+op.n, int64(len(b)))
		clear(b[lo:hi])
	case opTruncate:
		if op.n <= int64(len(b)) {
			b = b[:op.n]
		} else {
			b = append(b, make([]byte, op.n-int64(len(b)))...)
		}
	}
	return b
}

func (fs *memFS) MkdirAll(string) error { return nil }

func (fs *memFS) Open(name string, create bool) (file, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	name = path.Clean(name)
	f := fs.files[name]
	if f == nil {
		if !create {
			return nil, fmt.Errorf("memfs: open %s: %w", name, os.ErrNotExist)
		}
		if fs.crashed {
			return nil, errCrashed
		}
		f = &memFile{}
		fs.files[name] = f
	}
	return &memHandle{fs: fs, f: f, name: name}, nil
}

func (fs *memFS) Rename(oldname, newname string) error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.crashed {
		return errCrashed
	}
	f := fs.files[path.Clean(oldname)]
	if f == nil {
		return fmt.Errorf("memfs: rename %s: %w", oldname, os.ErrNotExist)
	}
	delete(fs.files, path.Clean(oldname))
	fs.files[path.Clean(newname)] = f
	return nil
}

func (fs *memFS) Remove(name string) error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	delete(fs.files, path.Clean(name))
	return nil
}

func (fs *memFS) SyncDir(string) error { return nil }

// memHandle is an open memFile.
type memHandle struct {
	fs     *memFS
	f      *memFile
	name   string
	closed bool
}

func (h *memHandle) ReadAt(p []byte, off int64) (int, error) {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	if h.closed {
		return 0, os.ErrClosed
	}
	if off >= int64(len(h.f.vol)) {
		return 0, io.EOF
	}
	n := copy(p, h.f.vol[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (h *memHandle) mutate(op memOp) error {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	if h.closed {
		return os.ErrClosed
	}
	if err := h.fs.mutatingLocked(); err != nil {
		return err
	}
	if op.kind == opWrite {
		op.data = append([]byte(nil), op.data...)
	}
	h.f.vol = applyOp(h.f.vol, op)
	h.f.pending = append(h.f.pending, op)
	return nil
}

func (h *memHandle) WriteAt(p []byte, off int64) (int, error) {
	if err := h.mutate(memOp{kind: opWrite, off: off, data: p}); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (h *memHandle) Punch(off, n int64) error {
	return h.mutate(memOp{kind: opPunch, off: off, n: n})
}

func (h *memHandle) Truncate(n int64) error {
	return h.mutate(memOp{kind: opTruncate, n: n})
}

func (h *memHandle) Allocate(n int64) error {
	h.fs.mu.Lock()
	size := int64(len(h.f.vol))
	h.fs.mu.Unlock()
	if n <= size {
		return nil
	}
	return h.Truncate(n)
}

func (h *memHandle) Sync(bool) error {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	if h.closed {
		return os.ErrClosed
	}
	if err := h.fs.mutatingLocked(); err != nil {
		return err
	}
	for _, op := range h.f.pending {
		h.f.dur = applyOp(h.f.dur, op)
	}
	h.f.pending = nil
	return nil
}

func (h *memHandle) Size() (int64, error) {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	return int64(len(h.f.vol)), nil
}

func (h *memHandle) Close() error {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	h.closed = true
	return nil
}
