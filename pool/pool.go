package pool

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/klauspost/reedsolomon"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/pool/internal/layout"
)

const (
	defaultSegmentSize = 64 << 20
	minSegmentSize     = 4 << 20
	poolJSON           = "pool.json"
	indexDir           = "index"
	// maxBatchBlocks caps the data blocks of one batch (group commit).
	maxBatchBlocks = 256
	// maxBatchRecords caps the records of one batch.
	maxBatchRecords = 1024
	// epoch is the owner epoch in versions (epoch<<40 | counter).
	epoch       = 1
	epochShift  = 40
	counterMask = 1<<epochShift - 1
	lockStripes = 1024
	// metaVolume is the volume id of metadata records.
	metaVolume = 0
)

// poolFile is the content of MetaDir/pool.json.
type poolFile struct {
	PoolID      string   `json:"pool_id"`
	Devices     []string `json:"devices"`
	SegmentSize int64    `json:"segment_size"`
	// Rebuilding lists device indices whose rebuild (ReplaceDevice) has
	// not finished: they lack chunks until a rebuild or scrub completes.
	Rebuilding []int `json:"rebuilding,omitempty"`
}

// Pool is an open pool. All methods are safe for concurrent use. Close
// stops the committer and background goroutines.
type Pool struct {
	o       Options
	log     *slog.Logger
	db      *pebble.DB
	poolID  [16]byte
	tagSalt uint64 // the pool id, mixed into the tags of untagged blocks (tagOf)
	segSize int64
	rows    int // segments per device
	m       *metrics

	reqs    chan *writeReq
	stop    chan struct{}
	wg      sync.WaitGroup
	closed  atomic.Bool
	closeMu sync.RWMutex // held shared by operations that submit; exclusive by Close

	locks [lockStripes]sync.Mutex

	// seq and counter are owned by the committer goroutine (and by Open
	// before it starts).
	seq     uint64
	counter uint64
	// chunkBufs are free chunk buffers (4 KiB aligned), one per batch in
	// flight at most; owned by the committer (dispatch and complete).
	chunkBufs [][]byte

	encMu sync.Mutex
	encs  map[[2]int]reedsolomon.Encoder

	// swapMu is held shared by each batch in flight, from allocate until
	// it is applied or abandoned, and exclusively by ReplaceDevice while
	// it swaps in the new device, so that no batch written with the old
	// device is applied after the rebuild took its list of segments and
	// tails.
	swapMu sync.RWMutex
	// repairMu serialises stripe repairs; freeSegment holds it while it
	// frees a segment (see scrubStripe).
	repairMu sync.Mutex
	// poolFileMu serialises writes of pool.json; poolFileSaved is the
	// Pool.mu.poolFileGen last written (guarded by poolFileMu).
	poolFileMu    sync.Mutex
	poolFileSaved uint64
	// segMu orders index updates with segment frees (held by
	// applyCommitted and freeSegment).
	segMu sync.Mutex
	// metaMu serialises volume metadata records (create, delete, and
	// their GC copies).
	metaMu sync.Mutex
	gcKick chan struct{}
	// readMu is held shared by reads from lookup to the end of the read;
	// the cleaner takes it exclusively before it frees a segment.
	readMu sync.RWMutex
	// lastSeq is the seq of the last batch applied to the index.
	lastSeq atomic.Uint64
	// gcRunning is set while the cleaner runs a pass.
	gcRunning atomic.Bool

	mu struct {
		sync.Mutex
		devs       []*devSlot
		segs       map[uint32]*segState
		open       map[[2]uint8]uint32 // (k,m) -> open segment row
		sealed     []uint32            // rows sealed since the last index update
		freed      chan struct{}       // closed (and replaced) when GC frees a segment
		rebuilding map[int]bool        // devices whose rebuild is incomplete
		// poolFileGen counts changes to what pool.json records (devices,
		// rebuilding); see savePoolFile.
		poolFileGen uint64
		vols        map[string]*volMeta
		volByID     map[uint64]*volMeta
		maxVolID    uint64
		reason      string
	}
}

// volMeta is a volume's metadata, stored in meta records and in the index.
type volMeta struct {
	Op   string `json:"op,omitempty"` // in meta records: see snapshot.go ("create", "delete", ...)
	ID   uint64 `json:"id"`
	Name string `json:"name"`
	Size int64  `json:"size"`
	K    int    `json:"k"`
	M    int    `json:"m"`
	// A clone's origin: the parent volume, the snapshot version it reads
	// through to, and their names at clone time.
	Parent     uint64 `json:"parent,omitempty"`
	ParentVer  uint64 `json:"parent_ver,omitempty"`
	ParentName string `json:"parent_name,omitempty"`
	ParentSnap string `json:"parent_snap,omitempty"`
	// Arguments of snapshot, unsnapshot and revert records.
	Snap    string `json:"snap,omitempty"`
	SnapVer uint64 `json:"snap_ver,omitempty"`
	Created int64  `json:"created,omitempty"`
	// State kept in the index only (guarded by Pool.mu): snapshots,
	// reverts, deleted (a ghost that clones still read through to), and
	// the version of the last meta record applied.
	Snaps   []snapMeta   `json:"snaps,omitempty"`
	Reverts []revertMeta `json:"reverts,omitempty"`
	Deleted bool         `json:"deleted,omitempty"`
	MetaVer uint64       `json:"meta_ver,omitempty"`
	live    int64        // blocks the head reads as its own; guarded by Pool.mu
	handle  *Volume
}

func newUUID() [16]byte {
	var u [16]byte
	_, _ = rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// Create formats the devices as a new pool and creates an empty index in
// MetaDir. It refuses (ErrExists) a device that already holds a Stave
// superblock or a MetaDir that already holds a pool.
func Create(ctx context.Context, o CreateOptions) error {
	if len(o.Devices) == 0 || len(o.Devices) > 255 || o.MetaDir == "" {
		return fmt.Errorf("%w: need 1-255 devices and a MetaDir", ErrInvalid)
	}
	if o.SegmentSize == 0 {
		o.SegmentSize = defaultSegmentSize
	}
	if o.SegmentSize < minSegmentSize || o.SegmentSize%(1<<20) != 0 {
		return fmt.Errorf("%w: segment size %d (multiple of 1 MiB, at least 4 MiB)", ErrInvalid, o.SegmentSize)
	}
	if o.OpenDevice == nil {
		o.OpenDevice = openOSDevice
	}
	if o.Logger == nil {
		o.Logger = discard()
	}
	if _, err := os.Stat(filepath.Join(o.MetaDir, poolJSON)); err == nil {
		return fmt.Errorf("%w: %s holds a pool", ErrExists, o.MetaDir)
	}
	var devs []Device
	defer func() {
		for _, d := range devs {
			d.Close()
		}
	}()
	rows := int64(-1)
	for _, path := range o.Devices {
		d, err := o.OpenDevice(path)
		if err != nil {
			return fmt.Errorf("pool: open %s: %w", path, err)
		}
		devs = append(devs, d)
		if _, err := readSuperblock(d); err == nil {
			return fmt.Errorf("%w: %s holds a Stave superblock", ErrExists, path)
		}
		r := min((d.Size()-layout.DataStart)/o.SegmentSize, layout.MaxSegments)
		if r < 2 {
			return fmt.Errorf("%w: %s is too small (%d bytes)", ErrInvalid, path, d.Size())
		}
		if rows < 0 || r < rows {
			rows = r
		}
	}
	pid := newUUID()
	for i, d := range devs {
		sb := layout.Superblock{Version: layout.FormatVersion, Seq: 1, PoolID: pid, DeviceID: newUUID(),
			DeviceIndex: uint32(i), DeviceCount: uint32(len(devs)), SegmentSize: uint64(o.SegmentSize),
			SegmentCount: uint64(rows), DataStart: layout.DataStart, Epoch: epoch}
		// Invalidate the first chunk header of every segment so that old
		// bytes on a reused device are never mistaken for a log.
		zero := make([]byte, layout.BlockSize)
		for off := int64(layout.FreeTableStart); off < layout.DataStart; off += layout.BlockSize {
			if _, err := d.WriteAt(zero, off); err != nil {
				return fmt.Errorf("pool: format %s: %w", o.Devices[i], err)
			}
		}
		for r := int64(0); r < rows; r++ {
			if _, err := d.WriteAt(zero, layout.DataStart+r*o.SegmentSize); err != nil {
				return fmt.Errorf("pool: format %s: %w", o.Devices[i], err)
			}
		}
		if err := writeSuperblock(d, sb); err != nil {
			return fmt.Errorf("pool: write superblock %s: %w", o.Devices[i], err)
		}
	}
	if err := os.MkdirAll(o.MetaDir, 0o755); err != nil {
		return fmt.Errorf("pool: %w", err)
	}
	db, err := openIndex(filepath.Join(o.MetaDir, indexDir), o.Logger)
	if err != nil {
		return err
	}
	if err := db.Close(); err != nil {
		return fmt.Errorf("pool: close index: %w", err)
	}
	pf := poolFile{PoolID: hex.EncodeToString(pid[:]), Devices: o.Devices, SegmentSize: o.SegmentSize}
	if err := writePoolFile(o.MetaDir, pf); err != nil {
		return err
	}
	o.Logger.Info("pool created", "pool", pf.PoolID, "devices", len(devs), "segment_size", o.SegmentSize, "segments", rows)
	return nil
}

func writePoolFile(dir string, pf poolFile) error {
	b, err := json.MarshalIndent(pf, "", "  ")
	if err != nil {
		return fmt.Errorf("pool: %w", err)
	}
	tmp := filepath.Join(dir, poolJSON+".tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("pool: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("pool: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("pool: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("pool: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, poolJSON)); err != nil {
		return fmt.Errorf("pool: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

func readPoolFile(dir string) (poolFile, error) {
	var pf poolFile
	b, err := os.ReadFile(filepath.Join(dir, poolJSON))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return pf, fmt.Errorf("%w: no pool in %s", ErrNotFound, dir)
		}
		return pf, fmt.Errorf("pool: %w", err)
	}
	if err := json.Unmarshal(b, &pf); err != nil {
		return pf, fmt.Errorf("%w: %s: %v", ErrCorruption, poolJSON, err)
	}
	return pf, nil
}

// pebbleLogger adapts slog to pebble's logger.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	if p.l.Enabled(context.Background(), slog.LevelDebug) {
		p.l.Debug(fmt.Sprintf(format, args...), logkey.Component, "pebble")
	}
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), logkey.Component, "pebble")
}

// Fatalf logs and panics: pebble requires Fatalf not to return.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.Error(msg, logkey.Component, "pebble")
	panic("pool: pebble fatal: " + msg)
}

// indexCacheSize is the index's block cache. Every batch looks up the
// entries of each LBA it writes; with pebble's default 8 MiB most of those
// lookups miss and read and decompress a block.
const indexCacheSize = 64 << 20

func openIndex(dir string, log *slog.Logger) (*pebble.DB, error) {
	cache := pebble.NewCache(indexCacheSize)
	defer cache.Unref()
	db, err := pebble.Open(dir, &pebble.Options{Logger: pebbleLogger{log}, Cache: cache})
	if err != nil {
		return nil, fmt.Errorf("pool: open index: %w", err)
	}
	return db, nil
}

// Open opens the pool described by MetaDir/pool.json: it reads the
// superblocks (a device that cannot be opened or has no matching
// superblock is marked missing), runs the erasure-coding self-test, opens
// the index and replays the log after the index checkpoint.
//
// Replay discards a torn last batch (logged with ErrTornTail) and fails
// with ErrCorruption for a broken batch in the middle of a segment.
func Open(ctx context.Context, o Options) (*Pool, error) {
	if o.Logger == nil {
		o.Logger = discard()
	}
	if o.OpenDevice == nil {
		o.OpenDevice = openOSDevice
	}
	if o.GCInterval == 0 {
		o.GCInterval = 10 * time.Second
	}
	if err := erasureSelfTest(); err != nil {
		return nil, err
	}
	pf, err := readPoolFile(o.MetaDir)
	if err != nil {
		return nil, err
	}
	p := &Pool{o: o, log: o.Logger.With(logkey.Component, "pool"), segSize: pf.SegmentSize,
		encs: map[[2]int]reedsolomon.Encoder{}, reqs: make(chan *writeReq, 256), stop: make(chan struct{}),
		gcKick: make(chan struct{}, 1)}
	if _, err := hex.Decode(p.poolID[:], []byte(pf.PoolID)); err != nil {
		return nil, fmt.Errorf("%w: pool id %q", ErrCorruption, pf.PoolID)
	}
	p.tagSalt = mix64(binary.LittleEndian.Uint64(p.poolID[:8]) ^ mix64(binary.LittleEndian.Uint64(p.poolID[8:])))
	p.mu.segs = map[uint32]*segState{}
	p.mu.freed = make(chan struct{})
	p.mu.rebuilding = map[int]bool{}
	for _, i := range pf.Rebuilding {
		p.mu.rebuilding[i] = true
	}
	p.mu.open = map[[2]uint8]uint32{}
	p.mu.vols = map[string]*volMeta{}
	p.mu.volByID = map[uint64]*volMeta{}
	p.rows = -1
	healthy := 0
	var attachErrs []error
	for i, path := range pf.Devices {
		d := &devSlot{path: path, index: i}
		p.mu.devs = append(p.mu.devs, d)
		if err := p.attach(d); err != nil {
			d.state.Store(uint32(DeviceMissing))
			p.log.Error("device missing", logkey.Path, path, logkey.Err, err)
			attachErrs = append(attachErrs, err)
			continue
		}
		healthy++
	}
	if healthy == 0 {
		return nil, fmt.Errorf("%w: no device of the pool could be opened: %w", ErrNotFound, errors.Join(attachErrs...))
	}
	p.m = newMetrics(o.Registerer, p)
	db, err := openIndex(filepath.Join(o.MetaDir, indexDir), p.log)
	if err != nil {
		p.closeDevices()
		return nil, err
	}
	p.db = db
	if err := p.load(ctx); err != nil {
		db.Close()
		p.closeDevices()
		return nil, err
	}
	// Persist the rebuilding marks found by replay before the pool is
	// used (and a device missing chunks could be counted as healthy).
	if err := p.savePoolFile(); err != nil {
		db.Close()
		p.closeDevices()
		return nil, err
	}
	p.updateReason()
	p.wg.Add(2)
	go p.committer()
	go p.cleaner()
	if o.ScrubRate > 0 {
		p.wg.Add(1)
		go p.backgroundScrub()
	}
	p.log.Info("pool open", "pool", pf.PoolID, "devices", len(pf.Devices), "healthy", healthy,
		logkey.Volumes, len(p.mu.vols), "seq", p.seq)
	return p, nil
}

// attach opens d's device and checks its superblock against the pool.
func (p *Pool) attach(d *devSlot) error {
	dev, err := p.o.OpenDevice(d.path)
	if err != nil {
		return err
	}
	sb, err := readSuperblock(dev)
	if err != nil {
		dev.Close()
		return err
	}
	if sb.PoolID != p.poolID || int(sb.DeviceIndex) != d.index || int64(sb.SegmentSize) != p.segSize {
		dev.Close()
		return fmt.Errorf("pool: superblock of %s belongs to another pool or position", d.path)
	}
	if p.rows < 0 || int(sb.SegmentCount) < p.rows {
		p.rows = int(sb.SegmentCount)
	}
	d.dev, d.sb = dev, sb
	d.state.Store(uint32(DeviceOK))
	return nil
}

func (p *Pool) closeDevices() {
	for _, d := range p.mu.devs {
		if d.dev != nil {
			d.dev.Close()
		}
	}
}

// Recover rebuilds the whole index from a scan of all devices: it deletes
// the index directory and replays every segment. The pool must not be open.
func Recover(ctx context.Context, o Options) error {
	if _, err := readPoolFile(o.MetaDir); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(o.MetaDir, indexDir)); err != nil {
		return fmt.Errorf("pool: remove index: %w", err)
	}
	o.ScrubRate = 0
	p, err := Open(ctx, o)
	if err != nil {
		return err
	}
	return p.Close()
}

// Close stops the committer and background work, waits for them, closes
// the index and the devices. Writes submitted after Close fail with
// ErrClosed.
func (p *Pool) Close() error {
	p.closeMu.Lock()
	if p.closed.Swap(true) {
		p.closeMu.Unlock()
		return ErrClosed
	}
	close(p.stop)
	p.closeMu.Unlock()
	p.wg.Wait()
	var errs []error
	if err := p.db.Flush(); err != nil {
		errs = append(errs, err)
	}
	if err := p.db.Close(); err != nil {
		errs = append(errs, err)
	}
	p.mu.Lock()
	p.closeDevices()
	p.mu.Unlock()
	p.m.unregister()
	p.log.Info("pool closed")
	return errors.Join(errs...)
}

// encoder returns the cached Reed-Solomon encoder for k+m (m > 0).
func (p *Pool) encoder(k, m int) (reedsolomon.Encoder, error) {
	p.encMu.Lock()
	defer p.encMu.Unlock()
	if e, ok := p.encs[[2]int{k, m}]; ok {
		return e, nil
	}
	e, err := reedsolomon.New(k, m)
	if err != nil {
		return nil, fmt.Errorf("pool: reedsolomon %d+%d: %w", k, m, err)
	}
	p.encs[[2]int{k, m}] = e
	return e, nil
}

// batchCap returns the most data blocks of one batch for k data chunks:
// maxBatchBlocks, less in small segments so that a segment holds at
// least 16 batches (little space is lost at a segment's end).
func (p *Pool) batchCap(k int) int {
	c := int(p.segSize/16/layout.BlockSize) * k
	return max(1, min(maxBatchBlocks, c))
}

// rowOff returns the device offset of segment row.
func (p *Pool) rowOff(row uint32) int64 { return layout.DataStart + int64(row)*p.segSize }

// lockBlocks locks the stripes of blocks [lba, lba+n) of vol in order and
// returns the unlock function.
func (p *Pool) lockBlocks(vol, lba uint64, n int) func() {
	keys := make([]lbaKey, 0, min(n, lockStripes))
	for i := 0; i < n && i < lockStripes; i++ {
		keys = append(keys, lbaKey{vol, lba + uint64(i)})
	}
	return p.lockSet(keys)
}

// lockSet locks the stripes of the given blocks in ascending stripe order
// (so that any two lockers agree on the order) and returns the unlock
// function.
func (p *Pool) lockSet(keys []lbaKey) func() {
	var seen [lockStripes / 64]uint64
	idx := make([]int, 0, len(keys))
	for _, k := range keys {
		s := int((k.vol*0x9E3779B97F4A7C15 + k.lba) % lockStripes)
		if seen[s/64]&(1<<(s%64)) == 0 {
			seen[s/64] |= 1 << (s % 64)
			idx = append(idx, s)
		}
	}
	sort.Ints(idx)
	for _, i := range idx {
		p.locks[i].Lock()
	}
	return func() {
		for j := len(idx) - 1; j >= 0; j-- {
			p.locks[idx[j]].Unlock()
		}
	}
}

// failDevice marks d failed after an I/O error.
func (p *Pool) failDevice(d *devSlot, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if DeviceState(d.state.Load()) != DeviceOK {
		return
	}
	d.state.Store(uint32(DeviceFailed))
	// The device misses every chunk written from now on, also if it comes
	// back at the next Open: mark it as lacking chunks until a rebuild or
	// scrub. writeStripe persists the mark (savePoolFile) before a batch
	// that skipped the device is acknowledged.
	p.markRebuildingLocked(d.index)
	// Seal open segments that use d: new batches go elsewhere.
	for key, row := range p.mu.open {
		s := p.mu.segs[row]
		for _, mi := range s.members[:s.width()] {
			if int(mi) == d.index {
				s.sealed = true
				p.mu.sealed = append(p.mu.sealed, row)
				delete(p.mu.open, key)
				break
			}
		}
	}
	p.log.Error("device failed", logkey.Path, d.path, "device", d.index, logkey.Err, err)
	p.updateReasonLocked()
}

func (p *Pool) updateReason() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.updateReasonLocked()
}

// updateReasonLocked recomputes the degraded reason.
// REQUIRES: p.mu held.
func (p *Pool) updateReasonLocked() {
	var bad []string
	healthy := 0
	for _, d := range p.mu.devs {
		if d.healthy() {
			healthy++
		} else {
			bad = append(bad, fmt.Sprintf("device %d (%s) %s", d.index, d.path, DeviceState(d.state.Load())))
		}
	}
	for i := range p.mu.rebuilding {
		if i < len(p.mu.devs) {
			bad = append(bad, fmt.Sprintf("device %d (%s) rebuild incomplete (run ReplaceDevice or Scrub)", i, p.mu.devs[i].path))
		}
	}
	if len(bad) == 0 {
		p.mu.reason = ""
		return
	}
	r := fmt.Sprintf("%v; %d healthy devices", bad, healthy)
	for _, v := range p.mu.volByID {
		if v.Deleted {
			continue // a ghost kept for its clones
		}
		if v.K > healthy {
			r += fmt.Sprintf("; volume %s (%d+%d) is read-only", v.Name, v.K, v.M)
		} else if v.K+v.M > healthy {
			r += fmt.Sprintf("; volume %s (%d+%d) writes degraded stripes", v.Name, v.K, v.M)
		}
	}
	p.mu.reason = r
}

func (p *Pool) healthyCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.healthyLocked()
}

// healthyLocked counts healthy devices.
// REQUIRES: p.mu held.
func (p *Pool) healthyLocked() int {
	n := 0
	for _, d := range p.mu.devs {
		if d.healthy() {
			n++
		}
	}
	return n
}
