package faulttest

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"sync"

	"stave.dev/stave/pool"
)

// errCrashed is what every device call returns after the simulated crash.
var errCrashed = errors.New("faulttest: device crashed (simulated power loss)")

// errClosedDevice is returned by a closed memDevice handle.
var errClosedDevice = errors.New("faulttest: device handle closed")

const pageSize = 4096

// pages is a sparse byte image: absent pages read as zeros.
type pages map[int64]*[pageSize]byte

func (p pages) clone() pages {
	c := make(pages, len(p))
	for k, v := range p {
		cp := *v
		c[k] = &cp
	}
	return c
}

func (p pages) readAt(b []byte, off int64) {
	for len(b) > 0 {
		pg, in := off/pageSize, off%pageSize
		n := min(int64(len(b)), pageSize-in)
		if v := p[pg]; v != nil {
			copy(b[:n], v[in:in+n])
		} else {
			clear(b[:n])
		}
		b, off = b[n:], off+n
	}
}

func (p pages) writeAt(b []byte, off int64) {
	for len(b) > 0 {
		pg, in := off/pageSize, off%pageSize
		n := min(int64(len(b)), pageSize-in)
		v := p[pg]
		if v == nil {
			v = new([pageSize]byte)
			p[pg] = v
		}
		copy(v[in:in+n], b[:n])
		b, off = b[n:], off+n
	}
}

// pendingWrite is a write not yet covered by a Sync.
type pendingWrite struct {
	off  int64
	data []byte
}

// memImage is one device's contents: what reads see (cur), what has
// survived a Sync (durable) and the writes in between.
type memImage struct {
	size    int64
	cur     pages
	durable pages
	pending []pendingWrite
}

// crashMode says which unsynced writes survive a crash.
type crashMode int

// Crash modes.
const (
	// crashDropUnsynced keeps only synced data.
	crashDropUnsynced crashMode = iota
	// crashPrefix keeps, per device, a random prefix of the unsynced
	// writes in issue order, the last one torn at a sector boundary.
	crashPrefix
	// crashRandomSectors keeps each unsynced 512-byte sector write with
	// probability 1/2, in any order (a volatile write cache).
	crashRandomSectors
	numCrashModes
)

func (c crashMode) String() string {
	switch c {
	case crashDropUnsynced:
		return "drop-unsynced"
	case crashPrefix:
		return "prefix"
	case crashRandomSectors:
		return "random-sectors"
	}
	return fmt.Sprintf("crashMode(%d)", int(c))
}

// crashImage returns what the device holds after power loss.
func (m *memImage) crashImage(mode crashMode, rng *rand.Rand) *memImage {
	img := m.durable.clone()
	switch mode {
	case crashPrefix:
		if len(m.pending) > 0 {
			keep := rng.IntN(len(m.pending) + 1)
			for i, w := range m.pending[:keep] {
				data := w.data
				if i == keep-1 {
					secs := (len(data) + sectorSize - 1) / sectorSize
					data = data[:min(len(data), rng.IntN(secs+1)*sectorSize)]
				}
				img.writeAt(data, w.off)
			}
		}
	case crashRandomSectors:
		for _, w := range m.pending {
			for s := 0; s < len(w.data); s += sectorSize {
				if rng.IntN(2) == 0 {
					img.writeAt(w.data[s:min(len(w.data), s+sectorSize)], w.off+int64(s))
				}
			}
		}
	}
	return &memImage{size: m.size, cur: img, durable: img.clone()}
}

// memDisks is a set of in-memory devices, addressed by path, sharing one
// crash controller: the crashAt-th device write (counting from Arm) is
// torn into the images, the crash callback runs, and from then on every
// device call fails with errCrashed.
//
// It is safe for concurrent use; device calls are serialised, which also
// freezes the pool's device I/O while the crash callback runs.
type memDisks struct {
	mu struct {
		sync.Mutex
		images  map[string]*memImage
		armed   bool
		writes  int // device writes since Arm
		syncs   int
		crashAt int // 0: never
		crashed bool
		mode    crashMode
		rng     *rand.Rand
		onCrash func()
		// failPath, when set, is a device that fails (every call returns
		// errInjected) from the failAt-th armed write on, until the crash.
		failPath string
		failAt   int
		// crashImages are the images taken at the crash.
		crashImages map[string]*memImage
	}
}

func newMemDisks() *memDisks {
	d := &memDisks{}
	d.mu.images = map[string]*memImage{}
	return d
}

// add creates an empty device of size bytes at path.
func (d *memDisks) add(path string, size int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mu.images[path] = &memImage{size: size, cur: pages{}, durable: pages{}}
}

// open is a pool OpenDevice function over d.
func (d *memDisks) open(path string) (pool.Device, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.mu.images[path]; !ok {
		return nil, fmt.Errorf("faulttest: no memory device %q", path)
	}
	return &memDevice{d: d, path: path}, nil
}

// arm starts counting device writes: the crashAt-th write from now (if
// crashAt > 0) crashes every device in mode, after which onCrash runs
// with device I/O frozen.
func (d *memDisks) arm(crashAt int, mode crashMode, rng *rand.Rand, onCrash func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mu.armed = true
	d.mu.writes, d.mu.syncs = 0, 0
	d.mu.crashAt, d.mu.mode, d.mu.rng, d.mu.onCrash = crashAt, mode, rng, onCrash
}

// failDevice makes path fail every call from the at-th armed device write
// on (a dead disk or cable); after the crash it is healthy again (it came
// back at reboot, holding whatever it held when it died).
func (d *memDisks) failDevice(path string, at int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mu.failPath, d.mu.failAt = path, at
}

// counts returns the device writes and syncs since arm.
func (d *memDisks) counts() (writes, syncs int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mu.writes, d.mu.syncs
}

// crashNow crashes the devices now (if not crashed yet).
func (d *memDisks) crashNow() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.crashLocked()
}

// REQUIRES: d.mu held.
func (d *memDisks) crashLocked() {
	if d.mu.crashed {
		return
	}
	d.mu.crashed = true
	d.mu.crashImages = map[string]*memImage{}
	paths := make([]string, 0, len(d.mu.images))
	for p := range d.mu.images {
		paths = append(paths, p)
	}
	sort.Strings(paths) // deterministic use of rng
	for _, p := range paths {
		d.mu.crashImages[p] = d.mu.images[p].crashImage(d.mu.mode, d.mu.rng)
	}
	if d.mu.onCrash != nil {
		d.mu.onCrash()
	}
}

// crashed reports whether the crash happened.
func (d *memDisks) crashed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mu.crashed
}

// afterCrash returns a fresh, uncrashed memDisks holding the crash images.
func (d *memDisks) afterCrash() *memDisks {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := newMemDisks()
	for p, img := range d.mu.crashImages {
		n.mu.images[p] = &memImage{size: img.size, cur: img.cur.clone(), durable: img.durable.clone()}
	}
	return n
}

// clone returns an independent copy of the current (uncrashed) images, as
// if every write had been synced.
func (d *memDisks) clone() *memDisks {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := newMemDisks()
	for p, img := range d.mu.images {
		n.mu.images[p] = &memImage{size: img.size, cur: img.cur.clone(), durable: img.cur.clone()}
	}
	return n
}

// memDevice is one open handle on a memDisks image; it implements
// pool.Device.
type memDevice struct {
	d      *memDisks
	path   string
	closed bool // guarded by d.mu
}

var _ pool.Device = (*memDevice)(nil)

func (m *memDevice) image() (*memImage, error) {
	if m.closed {
		return nil, errClosedDevice
	}
	if m.d.mu.crashed {
		return nil, errCrashed
	}
	if m.d.mu.armed && m.path == m.d.mu.failPath && m.d.mu.failAt > 0 && m.d.mu.writes+1 >= m.d.mu.failAt {
		return nil, errInjected
	}
	return m.d.mu.images[m.path], nil
}

// ReadAt implements pool.Device.
func (m *memDevice) ReadAt(p []byte, off int64) (int, error) {
	m.d.mu.Lock()
	defer m.d.mu.Unlock()
	img, err := m.image()
	if err != nil {
		return 0, err
	}
	if off < 0 || off >= img.size {
		return 0, io.EOF
	}
	n := len(p)
	if int64(n) > img.size-off {
		n = int(img.size - off)
	}
	img.cur.readAt(p[:n], off)
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt implements pool.Device.
func (m *memDevice) WriteAt(p []byte, off int64) (int, error) {
	m.d.mu.Lock()
	defer m.d.mu.Unlock()
	img, err := m.image()
	if err != nil {
		return 0, err
	}
	if off < 0 || off+int64(len(p)) > img.size {
		return 0, fmt.Errorf("faulttest: write [%d+%d] beyond device size %d", off, len(p), img.size)
	}
	img.cur.writeAt(p, off)
	img.pending = append(img.pending, pendingWrite{off: off, data: append([]byte(nil), p...)})
	if m.d.mu.armed {
		m.d.mu.writes++
		if m.d.mu.crashAt > 0 && m.d.mu.writes >= m.d.mu.crashAt {
			// The write reached the device (maybe torn) and power went.
			m.d.crashLocked()
			return 0, errCrashed
		}
	}
	return len(p), nil
}

// Sync implements pool.Device.
func (m *memDevice) Sync() error {
	m.d.mu.Lock()
	defer m.d.mu.Unlock()
	img, err := m.image()
	if err != nil {
		return err
	}
	for _, w := range img.pending {
		img.durable.writeAt(w.data, w.off)
	}
	img.pending = nil
	if m.d.mu.armed {
		m.d.mu.syncs++
	}
	return nil
}

// Size implements pool.Device.
func (m *memDevice) Size() int64 {
	m.d.mu.Lock()
	defer m.d.mu.Unlock()
	return m.d.mu.images[m.path].size
}

// Close implements pool.Device.
func (m *memDevice) Close() error {
	m.d.mu.Lock()
	defer m.d.mu.Unlock()
	m.closed = true
	return nil
}
