// Package filestore is a replication.Store on the local file system: one
// directory per volume holding the volume's bytes in a sparse file and a
// version and checksum per 4 KiB block, durable when each call returns and
// crash-consistent: after a crash at any point, a block never reports a
// version whose data it does not hold.
//
// # Layout
//
// A store is a directory of three files (integers big-endian):
//
//	data      the volume, byte i at offset i; unmapped blocks are holes
//	versions  a 4 KiB header, then one 16-byte entry per block
//	          (preallocated, like intent, so that overwriting entries
//	          changes no file system metadata):
//
//	  header   magic "STVFSTR1" (8 bytes) | format u32 (1) |
//	           block size u32 (4096) | chunk blocks u32 (256) | 0 u32 |
//	           size u64 (bytes) | CRC32C u32 of bytes 0-31 | zeros
//	  entry    version u64 | CRC32C u32 of the block's 4096 bytes | 0 u32
//
//	intent    one byte per chunk of 256 blocks (1 MiB): 1 = armed
//
// An entry of version 0 (unmapped) has CRC 0 and its block reads as zeros.
// The versions file exists only once creation is complete (it is written as
// versions.tmp, synced and renamed).
//
// # Crash consistency
//
// A chunk is armed while writes to it may be in flight: recovery checks
// the CRC of every block of an armed chunk against its data and only there.
// A mutating call (WriteAt, Unmap, SetBlocks) on blocks [b0, b1):
//
//  1. Arms the chunks of [b0, b1) that are not armed: sets their intent
//     bytes (and the next chunk's, so that a sequential stream finds it
//     armed) and fdatasyncs the intent file (group commit). No data of a
//     chunk is written before its intent is durable.
//  2. Writes the data (pwrite, or a punched hole for unmapped blocks).
//  3. Writes the blocks' entries: the new version and the CRC32C of the
//     block's new content (partial blocks are read, merged and summed).
//  4. fdatasyncs data and versions concurrently (group commit; fsync of
//     the data file when a hole was punched), then returns: the version
//     and the data are durable together.
//  5. Leaves the chunks armed. When more than MaxArmedChunks are armed,
//     the least recently used idle ones (no call in flight) are disarmed:
//     their intent byte is cleared without a sync, which is safe because
//     every write to them has completed step 4.
//
// After a crash, Open reads the intent file and, for each armed chunk,
// compares each block's data with its entry (a version-0 entry expects
// zeros). A block that does not match was caught mid-write: its entry
// becomes (dirty, CRC of what it holds), where dirty has bit 63 set (real
// versions are epoch<<40|counter with epoch < 2^23) and 63 random bits
// drawn at each Open, so it equals no real version and no other node's
// dirty marker: the owner's region digests differ and reconcile or resync
// rewrites the block. A dirty block stays dirty until it is written; it
// is never made clean by recovery. The chunks are disarmed once the fixed
// entries are synced. A crash during recovery is recovered the same way.
//
// Assumptions: an aligned 16-byte entry is never torn (512-byte sector
// writes are atomic); a torn block matches its new CRC32C with
// probability 2^-32. Compared with marking entries dirty before each write
// and clean after it (three syncs in sequence), a write costs one round of
// concurrent fdatasyncs on an armed chunk and two on an idle one; the
// price is that recovery reads up to MaxArmedChunks MiB.
//
// An I/O error in a mutating call, or a failed sync, fails the store for
// good (after a failed fsync the page cache cannot be trusted): every later
// mutating call returns an error wrapping ErrFailed, chunks stay armed, and
// the store must be closed and reopened, which recovers it.
package filestore

import (
	"container/list"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/replication"
)

// Sizes and layout constants (see the package doc).
const (
	// BlockSize is the unit of versions (replication.BlockSize).
	BlockSize = replication.BlockSize
	// ChunkBlocks is the number of blocks per intent byte.
	ChunkBlocks = 256
	// DefaultMaxArmedChunks is the default of Options.MaxArmedChunks.
	DefaultMaxArmedChunks = 64

	headerSize  = 4096
	entrySize   = 16
	magic       = "STVFSTR1"
	format      = 1
	hdrCRCOff   = 32
	dataName    = "data"
	versName    = "versions"
	intentName  = "intent"
	tmpSuffix   = ".tmp"
	chunkBytes  = ChunkBlocks * BlockSize
	dirtyBit    = uint64(1) << 63
	armedMarker = 1
)

// Sentinel errors.
var (
	// ErrClosed reports a call on a closed store.
	ErrClosed = errors.New("filestore: store closed")
	// ErrFailed reports a store that saw an I/O error in a mutating call:
	// close and reopen it (Open recovers it).
	ErrFailed = errors.New("filestore: store failed")
	// ErrCorrupt reports a store directory whose files do not hold a
	// valid store.
	ErrCorrupt = errors.New("filestore: corrupt store")
	// ErrRange reports an offset, length or block range outside the
	// store or not aligned to its unit.
	ErrRange = errors.New("filestore: range outside the store or unaligned")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// zeroCRC is the CRC32C of a block of zeros.
var zeroCRC = crc32.Checksum(make([]byte, BlockSize), castagnoli)

// IsDirty reports whether version is a dirty marker: a block caught
// mid-write by a crash, whose content is unknown.
func IsDirty(version uint64) bool { return version&dirtyBit != 0 }

// Options configures a Store.
type Options struct {
	// Logger receives log lines; nil discards them.
	Logger *slog.Logger
	// MaxArmedChunks bounds the chunks (1 MiB each) left armed between
	// writes, hence the data that recovery reads after a crash; zero
	// means DefaultMaxArmedChunks. Writes to an armed chunk skip one
	// sync.
	MaxArmedChunks int

	fs    fsys // nil: the OS; tests set a crashable one
	noArm bool // tests only: skip step 1, to prove the crash test sees it
}

// Store is a replication.Store in a directory (see the package doc). Safe
// for concurrent use; calls on overlapping blocks must be serialized by the
// caller, as replication.Store requires. Contexts are checked when a call
// starts: a call that has started writing runs to completion, so that it
// never leaves a chunk disarmed under unsynced data.
type Store struct {
	dir                string
	log                *slog.Logger
	fs                 fsys
	data, vers, intent file
	maxArmed           int
	noArm              bool
	salt               uint64 // dirty marker of this Open: dirtyBit | 63 random bits

	size   atomic.Int64
	failed atomic.Pointer[error]
	// punched is set after a hole is punched; the next commit round to
	// start clears it and fsyncs (not fdatasyncs) the data file, so that
	// the new extent map is durable.
	punched atomic.Bool

	intentSync *syncer // fdatasync of the intent file
	commitSync *syncer // fdatasync of data and versions, concurrently

	// ops is held shared by every call and exclusively by Close.
	ops struct {
		sync.RWMutex
		closed bool
	}
	resizeMu sync.Mutex // serializes Resize

	// entMu orders entry writes with entry reads (a reader must not see
	// an entry half copied).
	entMu sync.RWMutex

	mu struct {
		sync.Mutex
		chunks map[int64]*chunk
		idle   list.List // of int64 chunk numbers: armed, nothing in flight, LRU first
	}
}

// chunk is the in-memory state of an armed or arming chunk; chunks absent
// from Store.mu.chunks are disarmed.
type chunk struct {
	armed    bool          // the intent byte is durable
	inflight int           // calls between arm and release
	elem     *list.Element // in Store.mu.idle when armed and inflight == 0
}

// Exists reports whether dir holds a store (its versions file), which
// Open with size 0 opens at its own size.
func Exists(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, versName))
	return err == nil
}

// Open opens the store in dir, creating it (and dir) with size bytes, a
// positive multiple of BlockSize, when dir holds none. An existing store
// must have size bytes, or size may be 0 to take its size; it is recovered
// if it was not closed (see the package doc). Open returns an error
// wrapping ErrCorrupt for files that do not hold a valid store.
func Open(dir string, size int64, opts Options) (*Store, error) {
	s := &Store{dir: dir, log: opts.Logger, fs: opts.fs, maxArmed: opts.MaxArmedChunks, noArm: opts.noArm}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With(logkey.Path, dir)
	if s.fs == nil {
		s.fs = osFS{}
	}
	if s.maxArmed <= 0 {
		s.maxArmed = DefaultMaxArmedChunks
	}
	s.salt = dirtyBit | rand.Uint64()>>1
	s.mu.chunks = map[int64]*chunk{}
	if err := s.fs.MkdirAll(dir); err != nil {
		return nil, fmt.Errorf("filestore: create %s: %w", dir, err)
	}
	vers, err := s.fs.Open(s.path(versName), false)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := s.create(size); err != nil {
			return nil, err
		}
		vers, err = s.fs.Open(s.path(versName), false)
		if err != nil {
			return nil, fmt.Errorf("filestore: open %s: %w", s.path(versName), err)
		}
	case err != nil:
		return nil, fmt.Errorf("filestore: open %s: %w", s.path(versName), err)
	}
	s.vers = vers
	if err := s.open(size); err != nil {
		s.closeFiles()
		return nil, err
	}
	s.intentSync = newSyncer(func() error { return s.intent.Sync(false) })
	s.commitSync = newSyncer(s.commitRound)
	return s, nil
}

func (s *Store) path(name string) string { return filepath.Join(s.dir, name) }

func blocksOf(size int64) int64 { return (size + BlockSize - 1) / BlockSize }
func chunksOf(size int64) int64 { return (blocksOf(size) + ChunkBlocks - 1) / ChunkBlocks }
func versSize(size int64) int64 { return headerSize + blocksOf(size)*entrySize }

func encodeHeader(size int64) []byte {
	h := make([]byte, headerSize)
	copy(h, magic)
	binary.BigEndian.PutUint32(h[8:], format)
	binary.BigEndian.PutUint32(h[12:], BlockSize)
	binary.BigEndian.PutUint32(h[16:], ChunkBlocks)
	binary.BigEndian.PutUint64(h[24:], uint64(size))
	binary.BigEndian.PutUint32(h[hdrCRCOff:], crc32.Checksum(h[:hdrCRCOff], castagnoli))
	return h
}

// create makes a new store of size bytes: data and intent first, then the
// versions file under a temporary name, renamed into place once synced.
func (s *Store) create(size int64) error {
	if size <= 0 || size%BlockSize != 0 {
		return fmt.Errorf("%w: size %d: a new store needs a positive multiple of %d bytes", ErrRange, size, BlockSize)
	}
	mk := func(name string, n int64, content []byte) error {
		f, err := s.fs.Open(s.path(name), true)
		if err != nil {
			return err
		}
		err = f.Truncate(0)
		if err == nil && name == dataName {
			err = f.Truncate(n) // sparse
		} else if err == nil {
			err = f.Allocate(n)
		}
		if err == nil && content != nil {
			_, err = f.WriteAt(content, 0)
		}
		if err == nil {
			err = f.Sync(true)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	}
	tmp := versName + tmpSuffix
	err := mk(dataName, size, nil)
	if err == nil {
		err = mk(intentName, chunksOf(size), nil)
	}
	if err == nil {
		err = mk(tmp, versSize(size), encodeHeader(size))
	}
	if err == nil {
		err = s.fs.Rename(s.path(tmp), s.path(versName))
	}
	if err == nil {
		err = s.fs.SyncDir(s.dir)
	}
	if err != nil {
		return fmt.Errorf("filestore: create store in %s: %w", s.dir, err)
	}
	s.log.Info("store created", logkey.Size, size)
	return nil
}

// open reads the header, opens data and intent, trims what a crashed
// Resize left beyond the size, and recovers armed chunks.
func (s *Store) open(size int64) error {
	h := make([]byte, headerSize)
	if _, err := s.vers.ReadAt(h, 0); err != nil {
		return fmt.Errorf("%w: %s: header: %v", ErrCorrupt, s.path(versName), err)
	}
	if string(h[:8]) != magic || binary.BigEndian.Uint32(h[hdrCRCOff:]) != crc32.Checksum(h[:hdrCRCOff], castagnoli) {
		return fmt.Errorf("%w: %s: bad magic or header checksum", ErrCorrupt, s.path(versName))
	}
	if f, bs, cb := binary.BigEndian.Uint32(h[8:]), binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:]); f != format || bs != BlockSize || cb != ChunkBlocks {
		return fmt.Errorf("%w: %s: format %d, block size %d, chunk %d blocks: this build reads format %d, %d, %d",
			ErrCorrupt, s.path(versName), f, bs, cb, format, BlockSize, ChunkBlocks)
	}
	stored := int64(binary.BigEndian.Uint64(h[24:]))
	if stored <= 0 || stored%BlockSize != 0 {
		return fmt.Errorf("%w: %s: size %d", ErrCorrupt, s.path(versName), stored)
	}
	if size != 0 && size != stored {
		return fmt.Errorf("filestore: the store in %s has %d bytes, not %d: open it with size 0 or %d, and grow it with Resize",
			s.dir, stored, size, stored)
	}
	s.size.Store(stored)
	var err error
	if s.data, err = s.fs.Open(s.path(dataName), false); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrCorrupt, s.path(dataName), err)
	}
	if s.intent, err = s.fs.Open(s.path(intentName), false); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrCorrupt, s.path(intentName), err)
	}
	for _, f := range []struct {
		f    file
		name string
		n    int64
	}{{s.data, dataName, stored}, {s.vers, versName, versSize(stored)}, {s.intent, intentName, chunksOf(stored)}} {
		have, err := f.f.Size()
		if err != nil {
			return fmt.Errorf("filestore: %s: %w", s.path(f.name), err)
		}
		if have < f.n {
			return fmt.Errorf("%w: %s has %d bytes, the store needs %d", ErrCorrupt, s.path(f.name), have, f.n)
		}
		if have > f.n { // an interrupted Resize: the tail was never used
			if err := f.f.Truncate(f.n); err != nil {
				return fmt.Errorf("filestore: trim %s: %w", s.path(f.name), err)
			}
			if err := f.f.Sync(true); err != nil {
				return fmt.Errorf("filestore: trim %s: %w", s.path(f.name), err)
			}
		}
	}
	return s.recover()
}

// recover checks every block of every armed chunk against its entry,
// marks the blocks that differ dirty, syncs the entries and disarms the
// chunks.
func (s *Store) recover() error {
	size := s.size.Load()
	nchunks := chunksOf(size)
	nblocks := blocksOf(size)
	marks := make([]byte, nchunks)
	if _, err := s.intent.ReadAt(marks, 0); err != nil {
		return fmt.Errorf("filestore: read %s: %w", s.path(intentName), err)
	}
	var armed []int64
	for c, m := range marks {
		if m != 0 {
			armed = append(armed, int64(c))
		}
	}
	if len(armed) == 0 {
		return nil
	}
	ents := make([]byte, ChunkBlocks*entrySize)
	data := make([]byte, chunkBytes)
	var dirty int
	for _, c := range armed {
		b0 := c * ChunkBlocks
		n := min(ChunkBlocks, nblocks-b0)
		if _, err := s.vers.ReadAt(ents[:n*entrySize], headerSize+b0*entrySize); err != nil {
			return fmt.Errorf("filestore: recover chunk %d: read entries: %w", c, err)
		}
		if err := readFull(s.data, data[:n*BlockSize], b0*BlockSize); err != nil {
			return fmt.Errorf("filestore: recover chunk %d: read data: %w", c, err)
		}
		changed := false
		for i := range n {
			e := ents[i*entrySize : (i+1)*entrySize]
			v, sum := binary.BigEndian.Uint64(e), binary.BigEndian.Uint32(e[8:])
			if v == 0 {
				sum = zeroCRC
			}
			got := crc32.Checksum(data[i*BlockSize:(i+1)*BlockSize], castagnoli)
			if got == sum {
				continue
			}
			putEntry(e, s.salt, got)
			changed = true
			dirty++
		}
		if changed {
			if _, err := s.vers.WriteAt(ents[:n*entrySize], headerSize+b0*entrySize); err != nil {
				return fmt.Errorf("filestore: recover chunk %d: write entries: %w", c, err)
			}
		}
	}
	if err := s.vers.Sync(false); err != nil {
		return fmt.Errorf("filestore: recover: sync %s: %w", s.path(versName), err)
	}
	for _, c := range armed {
		if _, err := s.intent.WriteAt([]byte{0}, c); err != nil {
			return fmt.Errorf("filestore: recover: disarm chunk %d: %w", c, err)
		}
	}
	if err := s.intent.Sync(false); err != nil {
		return fmt.Errorf("filestore: recover: sync %s: %w", s.path(intentName), err)
	}
	lvl := slog.LevelInfo
	if dirty > 0 {
		lvl = slog.LevelWarn
	}
	s.log.Log(context.Background(), lvl, "store recovered after a crash", "chunks_checked", len(armed), "blocks_dirty", dirty)
	return nil
}

// readFull reads len(p) bytes at off; bytes past the end read as zeros.
func readFull(f file, p []byte, off int64) error {
	n, err := f.ReadAt(p, off)
	if errors.Is(err, io.EOF) {
		clear(p[n:])
		err = nil
	}
	return err
}

func putEntry(e []byte, version uint64, sum uint32) {
	if version == 0 {
		sum = 0
	}
	binary.BigEndian.PutUint64(e, version)
	binary.BigEndian.PutUint32(e[8:], sum)
	binary.BigEndian.PutUint32(e[12:], 0)
}

// commitRound is one group commit of data and entries: both files are
// synced concurrently, so that the device can merge the flushes.
func (s *Store) commitRound() error {
	meta := s.punched.Swap(false)
	var derr error
	var wg sync.WaitGroup
	wg.Go(func() { derr = s.data.Sync(meta) })
	verr := s.vers.Sync(false)
	wg.Wait()
	if derr != nil {
		return fmt.Errorf("sync %s: %w", s.path(dataName), derr)
	}
	if verr != nil {
		return fmt.Errorf("sync %s: %w", s.path(versName), verr)
	}
	return nil
}

// begin starts a call: it holds s.ops shared until the returned function
// runs and checks the context, the store's state and the byte range
// [off, off+n) (sector aligned).
func (s *Store) begin(ctx context.Context, off, n int64, mutating bool) (func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.ops.RLock()
	if s.ops.closed {
		s.ops.RUnlock()
		return nil, ErrClosed
	}
	if mutating {
		if err := s.failure(); err != nil {
			s.ops.RUnlock()
			return nil, err
		}
	}
	if size := s.size.Load(); off < 0 || n < 0 || off%replication.SectorSize != 0 || n%replication.SectorSize != 0 || off > size || n > size-off {
		s.ops.RUnlock()
		return nil, fmt.Errorf("%w: %d+%d in a %d-byte store (sectors of %d bytes)", ErrRange, off, n, size, replication.SectorSize)
	}
	return s.ops.RUnlock, nil
}

// failure returns the error that failed the store, or nil.
func (s *Store) failure() error {
	if p := s.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// fail fails the store for good with err and returns the error to report.
func (s *Store) fail(err error) error {
	ferr := fmt.Errorf("%w: %w", ErrFailed, err)
	if s.failed.CompareAndSwap(nil, &ferr) {
		s.log.Error("store failed: writes refused until it is reopened", logkey.Err, err)
	}
	return ferr
}

// arm makes chunks [c0, c1] armed (intent durable) and counts the call in
// flight on them; release must follow.
func (s *Store) arm(c0, c1 int64) error {
	s.mu.Lock()
	need := false
	var werr error
	for c := c0; c <= c1; c++ {
		ch := s.mu.chunks[c]
		if ch == nil {
			ch = &chunk{armed: s.noArm}
			s.mu.chunks[c] = ch
			if _, err := s.writeIntent(c, armedMarker); err != nil && werr == nil {
				werr = err
			}
		}
		if ch.elem != nil {
			s.mu.idle.Remove(ch.elem)
			ch.elem = nil
		}
		ch.inflight++
		need = need || !ch.armed
	}
	// Arm ahead: a sequential stream then finds its next chunk armed,
	// for the price of one more intent byte in the same sync.
	ahead := c1 + 1
	if !need || s.noArm || ahead >= chunksOf(s.size.Load()) || s.mu.chunks[ahead] != nil {
		ahead = -1
	} else {
		s.mu.chunks[ahead] = &chunk{}
		if _, err := s.writeIntent(ahead, armedMarker); err != nil && werr == nil {
			werr = err
		}
	}
	s.mu.Unlock()
	if werr != nil {
		return s.fail(fmt.Errorf("arm: write %s: %w", s.path(intentName), werr))
	}
	if !need {
		return nil
	}
	// The sync starts after this call, hence after every intent write
	// of these chunks (done under s.mu before we looked at them).
	if err := s.intentSync.sync(); err != nil {
		return s.fail(fmt.Errorf("arm: %w", err))
	}
	s.mu.Lock()
	for c := c0; c <= c1; c++ {
		s.mu.chunks[c].armed = true
	}
	// The chunk armed ahead has no call in flight (unless one started
	// meanwhile): it joins the idle list.
	if ch := s.mu.chunks[ahead]; ahead >= 0 && ch != nil {
		ch.armed = true
		if ch.inflight == 0 && ch.elem == nil {
			ch.elem = s.mu.idle.PushBack(ahead)
		}
	}
	s.mu.Unlock()
	return nil
}

// writeIntent sets the intent byte of chunk c (nothing with noArm).
func (s *Store) writeIntent(c int64, b byte) (int, error) {
	if s.noArm {
		return 1, nil
	}
	return s.intent.WriteAt([]byte{b}, c)
}

// release ends a call on chunks [c0, c1] and disarms the least recently
// used idle chunks beyond the limit. Every call that wrote to a chunk has
// synced before releasing it, so clearing the intent byte needs no sync;
// a failed store disarms nothing.
func (s *Store) release(c0, c1 int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := c0; c <= c1; c++ {
		ch := s.mu.chunks[c]
		ch.inflight--
		if ch.inflight == 0 {
			ch.elem = s.mu.idle.PushBack(c)
		}
	}
	if s.failure() != nil {
		return
	}
	for len(s.mu.chunks) > s.maxArmed && s.mu.idle.Len() > 0 {
		c := s.mu.idle.Remove(s.mu.idle.Front()).(int64)
		delete(s.mu.chunks, c)
		if _, err := s.intent.WriteAt([]byte{0}, c); err != nil {
			s.fail(fmt.Errorf("disarm: write %s: %w", s.path(intentName), err))
			return
		}
	}
}

// mutate runs one mutating call on blocks [b0, b1): arm, write (data, then
// entries), commit, release (steps 1-5 of the package doc).
func (s *Store) mutate(b0, b1 int64, write func() error) error {
	if b0 >= b1 {
		return nil
	}
	c0, c1 := b0/ChunkBlocks, (b1-1)/ChunkBlocks
	err := s.arm(c0, c1)
	if err == nil {
		if err = write(); err != nil {
			err = s.fail(err)
		}
	}
	if err == nil {
		if err = s.commitSync.sync(); err != nil {
			err = s.fail(fmt.Errorf("commit: %w", err))
		}
	}
	s.release(c0, c1)
	return err
}

// writeEntries writes the entries of blocks b0.. from ents.
func (s *Store) writeEntries(b0 int64, ents []byte) error {
	s.entMu.Lock()
	defer s.entMu.Unlock()
	if _, err := s.vers.WriteAt(ents, headerSize+b0*entrySize); err != nil {
		return fmt.Errorf("write entries of blocks %d+%d: %w", b0, len(ents)/entrySize, err)
	}
	return nil
}

// readEntries reads the entries of blocks b0.. into ents.
func (s *Store) readEntries(b0 int64, ents []byte) error {
	s.entMu.RLock()
	defer s.entMu.RUnlock()
	if _, err := s.vers.ReadAt(ents, headerSize+b0*entrySize); err != nil {
		return fmt.Errorf("filestore: read entries of blocks %d+%d: %w", b0, len(ents)/entrySize, err)
	}
	return nil
}

// Size implements replication.Store.
func (s *Store) Size() int64 { return s.size.Load() }

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// ReadAt implements replication.Store: unmapped blocks read as zeros.
func (s *Store) ReadAt(ctx context.Context, p []byte, off int64) error {
	end, err := s.begin(ctx, off, int64(len(p)), false)
	if err != nil {
		return err
	}
	defer end()
	if err := readFull(s.data, p, off); err != nil {
		return fmt.Errorf("filestore: read %d+%d: %w", off, len(p), err)
	}
	return nil
}

// WriteAt implements replication.Store: it writes p at off and gives every
// block it touches version, durable when it returns nil. A partial block
// is read and merged to checksum it.
func (s *Store) WriteAt(ctx context.Context, p []byte, off int64, version uint64) error {
	end, err := s.begin(ctx, off, int64(len(p)), true)
	if err != nil {
		return err
	}
	defer end()
	if len(p) == 0 {
		return nil
	}
	stop := off + int64(len(p))
	b0, b1 := off/BlockSize, (stop+BlockSize-1)/BlockSize
	ents := make([]byte, (b1-b0)*entrySize)
	var blk []byte
	for b := b0; b < b1; b++ {
		lo, hi := b*BlockSize, (b+1)*BlockSize
		var content []byte
		if lo >= off && hi <= stop {
			content = p[lo-off : hi-off]
		} else {
			if blk == nil {
				blk = make([]byte, BlockSize)
			}
			if err := readFull(s.data, blk, lo); err != nil {
				return fmt.Errorf("filestore: read block %d to merge a partial write: %w", b, err)
			}
			from, to := max(lo, off), min(hi, stop)
			copy(blk[from-lo:to-lo], p[from-off:to-off])
			content = blk
		}
		putEntry(ents[(b-b0)*entrySize:], version, crc32.Checksum(content, castagnoli))
	}
	err = s.mutate(b0, b1, func() error {
		if _, err := s.data.WriteAt(p, off); err != nil {
			return fmt.Errorf("write %d+%d: %w", off, len(p), err)
		}
		return s.writeEntries(b0, ents)
	})
	if err != nil {
		return fmt.Errorf("filestore: write %d+%d: %w", off, len(p), err)
	}
	return nil
}

// Unmap implements replication.Store: whole blocks of [off, off+length)
// become holes with version 0; the covered part of a partial block is
// zeroed and the block gets version.
func (s *Store) Unmap(ctx context.Context, off, length int64, version uint64) error {
	end, err := s.begin(ctx, off, length, true)
	if err != nil {
		return err
	}
	defer end()
	if length == 0 {
		return nil
	}
	stop := off + length
	b0, b1 := off/BlockSize, (stop+BlockSize-1)/BlockSize
	fb, lb := (off+BlockSize-1)/BlockSize, stop/BlockSize // whole blocks [fb, lb)
	ents := make([]byte, (b1-b0)*entrySize)               // whole blocks: zero entries
	type edge struct {
		b   int64
		blk []byte
	}
	var edges []edge
	for _, b := range []int64{b0, b1 - 1} {
		if b >= b0 && b < b1 && (b < fb || b >= lb) && (len(edges) == 0 || edges[0].b != b) {
			lo := b * BlockSize
			blk := make([]byte, BlockSize)
			if err := readFull(s.data, blk, lo); err != nil {
				return fmt.Errorf("filestore: read block %d to merge a partial unmap: %w", b, err)
			}
			from, to := max(lo, off), min(lo+BlockSize, stop)
			clear(blk[from-lo : to-lo])
			putEntry(ents[(b-b0)*entrySize:], version, crc32.Checksum(blk, castagnoli))
			edges = append(edges, edge{b, blk})
		}
	}
	err = s.mutate(b0, b1, func() error {
		for _, e := range edges {
			if _, err := s.data.WriteAt(e.blk, e.b*BlockSize); err != nil {
				return fmt.Errorf("zero block %d: %w", e.b, err)
			}
		}
		if fb < lb {
			if err := s.data.Punch(fb*BlockSize, (lb-fb)*BlockSize); err != nil {
				return fmt.Errorf("punch blocks %d+%d: %w", fb, lb-fb, err)
			}
			// After the punch: the round that consumes the flag
			// started after it.
			s.punched.Store(true)
		}
		return s.writeEntries(b0, ents)
	})
	if err != nil {
		return fmt.Errorf("filestore: unmap %d+%d: %w", off, length, err)
	}
	return nil
}

// Flush implements replication.Store. Every call is durable when it
// returns, so Flush only reports a failed store.
func (s *Store) Flush(ctx context.Context) error {
	end, err := s.begin(ctx, 0, 0, true)
	if err != nil {
		return err
	}
	end()
	return nil
}

// checkBlocks validates the block range [first, first+n).
func (s *Store) checkBlocks(first int64, n int) error {
	if nb := blocksOf(s.size.Load()); first < 0 || first > nb || int64(n) > nb-first {
		return fmt.Errorf("%w: blocks %d+%d of %d", ErrRange, first, n, nb)
	}
	return nil
}

// Versions implements replication.Store. A block caught mid-write by a
// crash reports a dirty marker (IsDirty).
func (s *Store) Versions(ctx context.Context, first int64, dst []uint64) error {
	end, err := s.begin(ctx, 0, 0, false)
	if err != nil {
		return err
	}
	defer end()
	if err := s.checkBlocks(first, len(dst)); err != nil {
		return err
	}
	ents := make([]byte, min(len(dst), ChunkBlocks)*entrySize)
	for len(dst) > 0 {
		n := min(len(dst), ChunkBlocks)
		if err := s.readEntries(first, ents[:n*entrySize]); err != nil {
			return err
		}
		for i := range n {
			dst[i] = binary.BigEndian.Uint64(ents[i*entrySize:])
		}
		first += int64(n)
		dst = dst[n:]
	}
	return nil
}

// SetBlocks implements replication.Store: block first+i gets versions[i]
// and, when it is not 0, the next BlockSize bytes of data (len(data) must
// be BlockSize times the mapped blocks); 0 unmaps it. Versions may go down.
func (s *Store) SetBlocks(ctx context.Context, first int64, versions []uint64, data []byte) error {
	end, err := s.begin(ctx, 0, 0, true)
	if err != nil {
		return err
	}
	defer end()
	if err := s.checkBlocks(first, len(versions)); err != nil {
		return err
	}
	mapped := 0
	for _, v := range versions {
		if v != 0 {
			mapped++
		}
	}
	if len(data) != mapped*BlockSize {
		return fmt.Errorf("%w: SetBlocks of %d mapped blocks needs %d bytes of data, got %d", ErrRange, mapped, mapped*BlockSize, len(data))
	}
	n := int64(len(versions))
	cur := make([]byte, n*entrySize)
	if err := s.readEntries(first, cur); err != nil {
		return err
	}
	ents := make([]byte, n*entrySize)
	d := data
	for i, v := range versions {
		var sum uint32
		if v != 0 {
			sum = crc32.Checksum(d[:BlockSize], castagnoli)
			d = d[BlockSize:]
		}
		putEntry(ents[i*entrySize:], v, sum)
	}
	err = s.mutate(first, first+n, func() error {
		d := data
		for i := int64(0); i < n; {
			j := i + 1
			mappedRun := versions[i] != 0
			for j < n && (versions[j] != 0) == mappedRun {
				j++
			}
			if mappedRun {
				k := (j - i) * BlockSize
				if _, err := s.data.WriteAt(d[:k], (first+i)*BlockSize); err != nil {
					return fmt.Errorf("write blocks %d+%d: %w", first+i, j-i, err)
				}
				d = d[k:]
			} else {
				// Punch only what is mapped now: a version-0 block
				// already reads as zeros.
				for a := i; a < j; {
					for a < j && binary.BigEndian.Uint64(cur[a*entrySize:]) == 0 {
						a++
					}
					e := a
					for e < j && binary.BigEndian.Uint64(cur[e*entrySize:]) != 0 {
						e++
					}
					if e > a {
						if err := s.data.Punch((first+a)*BlockSize, (e-a)*BlockSize); err != nil {
							return fmt.Errorf("punch blocks %d+%d: %w", first+a, e-a, err)
						}
						s.punched.Store(true)
					}
					a = e
				}
			}
			i = j
		}
		return s.writeEntries(first, ents)
	})
	if err != nil {
		return fmt.Errorf("filestore: set blocks %d+%d: %w", first, n, err)
	}
	return nil
}

// MapStatus reports whether the block holding byte off is mapped (version
// not 0) and the length in bytes of the run of blocks in the same state
// from off, capped at limit and at the end of the store. It has the
// signature of scsi.ProvisioningStatus (GET LBA STATUS).
func (s *Store) MapStatus(ctx context.Context, off, limit int64) (mapped bool, length int64, err error) {
	end, err := s.begin(ctx, off, 0, false)
	if err != nil {
		return false, 0, err
	}
	defer end()
	size := s.size.Load()
	if off == size || limit <= 0 {
		return false, 0, nil
	}
	limit = min(limit, size-off)
	ents := make([]byte, ChunkBlocks*entrySize)
	b, stopAt := off/BlockSize, (off+limit+BlockSize-1)/BlockSize
	first := true
	for b < stopAt {
		n := min(stopAt-b, ChunkBlocks)
		if err := s.readEntries(b, ents[:n*entrySize]); err != nil {
			return false, 0, err
		}
		for i := range n {
			m := binary.BigEndian.Uint64(ents[i*entrySize:]) != 0
			if first {
				mapped, first = m, false
			} else if m != mapped {
				return mapped, min((b+i)*BlockSize-off, limit), nil
			}
		}
		b += n
	}
	return mapped, limit, nil
}

// Resize grows the store to size bytes, a multiple of BlockSize larger
// than the current size; the new blocks are unmapped. It is durable when it
// returns nil (a crash before leaves the old size) and safe to call
// concurrently with I/O, which sees the new size once Resize returns.
func (s *Store) Resize(size int64) error {
	end, err := s.begin(context.Background(), 0, 0, true)
	if err != nil {
		return err
	}
	defer end()
	s.resizeMu.Lock()
	defer s.resizeMu.Unlock()
	old := s.size.Load()
	if size <= old || size%BlockSize != 0 {
		return fmt.Errorf("%w: resize from %d to %d bytes: the store only grows, by multiples of %d", ErrRange, old, size, BlockSize)
	}
	// The files grow first (the tail reads as zeros: unmapped, version
	// 0, disarmed); the header commits the new size.
	for _, f := range []struct {
		f    file
		name string
		n    int64
	}{{s.data, dataName, size}, {s.vers, versName, versSize(size)}, {s.intent, intentName, chunksOf(size)}} {
		grow := f.f.Allocate
		if f.f == s.data {
			grow = f.f.Truncate // sparse
		}
		if err := grow(f.n); err != nil {
			return s.fail(fmt.Errorf("resize %s: %w", s.path(f.name), err))
		}
		if err := f.f.Sync(true); err != nil {
			return s.fail(fmt.Errorf("resize %s: %w", s.path(f.name), err))
		}
	}
	if _, err := s.vers.WriteAt(encodeHeader(size), 0); err != nil {
		return s.fail(fmt.Errorf("resize: write header: %w", err))
	}
	if err := s.vers.Sync(false); err != nil {
		return s.fail(fmt.Errorf("resize: sync header: %w", err))
	}
	s.size.Store(size)
	s.log.Info("store resized", logkey.Size, size, "old_size", old)
	return nil
}

// Close disarms every chunk (every completed call is durable), syncs the
// intent file and closes the files; a failed store keeps its chunks armed
// for recovery. Calls after Close fail with ErrClosed; Close waits for
// calls in flight and is idempotent.
func (s *Store) Close() error {
	s.ops.Lock()
	defer s.ops.Unlock()
	if s.ops.closed {
		return nil
	}
	s.ops.closed = true
	var err error
	if s.failure() == nil {
		s.mu.Lock()
		for c := range s.mu.chunks {
			if _, werr := s.intent.WriteAt([]byte{0}, c); werr != nil && err == nil {
				err = werr
			}
		}
		clear(s.mu.chunks)
		s.mu.idle.Init()
		s.mu.Unlock()
		if err == nil {
			err = s.intent.Sync(false)
		}
		if err != nil {
			err = fmt.Errorf("filestore: close %s: disarm: %w", s.dir, err)
		}
	}
	if cerr := s.closeFiles(); err == nil {
		err = cerr
	}
	return err
}

func (s *Store) closeFiles() error {
	var err error
	for _, f := range []file{s.data, s.vers, s.intent} {
		if f == nil {
			continue
		}
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("filestore: close: %w", cerr)
		}
	}
	return err
}

// Interface check.
var _ replication.Store = (*Store)(nil)
