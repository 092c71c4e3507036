package replication

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/minio/sha256-simd"
)

// Sizes.
const (
	// SectorSize is the addressing unit of the wire (LBAs) and the
	// granularity of Store offsets and lengths.
	SectorSize = 512
	// BlockSize is the granularity of versions (the pool's block).
	BlockSize = 4096
	// DefaultRegionSize is the resync unit.
	DefaultRegionSize = 1 << 20
	// counterBits is the width of the counter in a version.
	counterBits = 40
)

// VersionOf returns the version of the counter-th write of epoch.
func VersionOf(epoch, counter uint64) uint64 { return epoch<<counterBits | counter&(1<<counterBits-1) }

// EpochOf returns the epoch of a version.
func EpochOf(version uint64) uint64 { return version >> counterBits }

// Store is a node's local copy of one volume, with a version per 4 KiB
// block. Offsets and lengths are multiples of SectorSize. Every mutating
// call is durable when it returns nil. Implementations must be safe for
// concurrent use; calls on overlapping blocks are serialized by the caller
// (the owner's block locks; on a replica, the server orders the requests
// of a connection whose blocks overlap).
//
// The pool satisfies it once it can (1) write with a caller-given version
// instead of assigning one, (2) record unmaps with a version (tombstones
// already carry one), (3) report the version of each block of a range
// cheaply from its index, and (4) set a region to given content and
// versions even when they are lower than the current ones (reconcile).
type Store interface {
	// Size is the volume size in bytes.
	Size() int64
	// ReadAt fills p from off; unmapped blocks read as zeros.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes p at off and sets the version of every block it
	// touches to version.
	WriteAt(ctx context.Context, p []byte, off int64, version uint64) error
	// Unmap deallocates [off, off+length): whole blocks become unmapped
	// (version 0); the covered part of partial blocks reads as zeros and
	// those blocks get version.
	Unmap(ctx context.Context, off, length int64, version uint64) error
	// Flush makes every completed call durable.
	Flush(ctx context.Context) error
	// Versions fills dst[i] with the version of block first+i.
	Versions(ctx context.Context, first int64, dst []uint64) error
	// SetBlocks makes blocks first.. exactly: block i gets versions[i]
	// and, when mapped, the next BlockSize bytes of data; versions[i] == 0
	// unmaps it. Current versions do not matter (the owner's content is
	// truth).
	SetBlocks(ctx context.Context, first int64, versions []uint64, data []byte) error
}

// RegionDigest returns the digest of a region from its block versions.
func RegionDigest(versions []uint64) [DigestSize]byte {
	h := sha256.New()
	var b [8]byte
	for _, v := range versions {
		binary.BigEndian.PutUint64(b[:], v)
		h.Write(b[:])
	}
	var d [DigestSize]byte
	h.Sum(d[:0])
	return d
}

// MemStore is an in-memory Store, for tests and tools. Safe for
// concurrent use.
type MemStore struct {
	mu struct {
		sync.RWMutex
		data []byte
		ver  []uint64
	}
}

// NewMemStore returns an empty MemStore of size bytes (a multiple of
// BlockSize).
func NewMemStore(size int64) *MemStore {
	s := &MemStore{}
	s.mu.data = make([]byte, size)
	s.mu.ver = make([]uint64, (size+BlockSize-1)/BlockSize)
	return s
}

// Size implements Store.
func (s *MemStore) Size() int64 { return int64(len(s.mu.data)) }

func (s *MemStore) check(off, n int64) error {
	if off < 0 || n < 0 || off%SectorSize != 0 || n%SectorSize != 0 || off+n > int64(len(s.mu.data)) {
		return fmt.Errorf("replication: range %d+%d outside or unaligned in a %d-byte store", off, n, len(s.mu.data))
	}
	return nil
}

// ReadAt implements Store.
func (s *MemStore) ReadAt(_ context.Context, p []byte, off int64) error {
	if err := s.check(off, int64(len(p))); err != nil {
		return err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	copy(p, s.mu.data[off:])
	return nil
}

// WriteAt implements Store.
func (s *MemStore) WriteAt(_ context.Context, p []byte, off int64, version uint64) error {
	if err := s.check(off, int64(len(p))); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	copy(s.mu.data[off:], p)
	for b := off / BlockSize; b*BlockSize < off+int64(len(p)); b++ {
		s.mu.ver[b] = version
	}
	return nil
}

// Unmap implements Store.
func (s *MemStore) Unmap(_ context.Context, off, length int64, version uint64) error {
	if err := s.check(off, length); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.mu.data[off : off+length])
	for b := off / BlockSize; b*BlockSize < off+length; b++ {
		if b*BlockSize >= off && (b+1)*BlockSize <= off+length {
			s.mu.ver[b] = 0
		} else {
			s.mu.ver[b] = version
		}
	}
	return nil
}

// Flush implements Store.
func (s *MemStore) Flush(context.Context) error { return nil }

// Versions implements Store.
func (s *MemStore) Versions(_ context.Context, first int64, dst []uint64) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if first < 0 || first+int64(len(dst)) > int64(len(s.mu.ver)) {
		return fmt.Errorf("replication: blocks %d+%d outside the store", first, len(dst))
	}
	copy(dst, s.mu.ver[first:])
	return nil
}

// SetBlocks implements Store.
func (s *MemStore) SetBlocks(_ context.Context, first int64, versions []uint64, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if first < 0 || first+int64(len(versions)) > int64(len(s.mu.ver)) {
		return fmt.Errorf("replication: blocks %d+%d outside the store", first, len(versions))
	}
	for i, v := range versions {
		b := s.mu.data[(first+int64(i))*BlockSize:][:BlockSize]
		if v == 0 {
			clear(b)
		} else {
			if len(data) < BlockSize {
				return fmt.Errorf("replication: SetBlocks data too short")
			}
			copy(b, data[:BlockSize])
			data = data[BlockSize:]
		}
		s.mu.ver[first+int64(i)] = v
	}
	return nil
}

// Equal reports whether s and o hold the same data and versions.
func (s *MemStore) Equal(o *MemStore) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	o.mu.RLock()
	defer o.mu.RUnlock()
	if len(s.mu.ver) != len(o.mu.ver) || string(s.mu.data) != string(o.mu.data) {
		return false
	}
	for i := range s.mu.ver {
		if s.mu.ver[i] != o.mu.ver[i] {
			return false
		}
	}
	return true
}
