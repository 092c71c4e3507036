// Package poolstore is a replication.Store on a pool volume: the local
// copy of a replicated volume kept in the node's pool, with the pool's
// checksums, erasure coding, repair, scrub and GC (Stave issue 4).
//
// A replication version is stored as the pool's per-block tag
// (pool.Volume.WriteTagged and friends; see pool/tagged.go): the pool
// orders its records by its own versions, so SetBlocks may give a block a
// lower version than it has (a resync after failover) and that lower
// version wins at every later reopen or index Recover.
//
// Mapping of the Store calls:
//
//	WriteAt(p, off, ver)    Volume.WriteTagged: every touched block gets ver
//	Unmap(off, n, ver)      Volume.UnmapTagged: whole blocks unmapped
//	                        (version 0), partial blocks zeroed and given ver
//	Versions(first, dst)    Volume.Tags (0: unmapped)
//	SetBlocks(first, v, d)  Volume.SetBlocks
//	Flush                   nothing to do: the pool acknowledges a write
//	                        only once it is durable (every batch is synced
//	                        before its ack), so Flush only checks that the
//	                        volume still exists
//	Size                    the volume's size
//
// Version 0 is refused by WriteAt and Unmap (it means unmapped). A block
// written to the volume by pool.Volume.WriteAt rather than through the
// store reports pool.UntaggedBit | a hash: a version no owner assigns, so
// a resync copies it.
package poolstore

import (
	"context"

	"stave.dev/stave/pool"
	"stave.dev/stave/replication"
)

// Store is a replication.Store on one pool volume. It holds no state of
// its own: it is safe for concurrent use as the volume is, and stays valid
// while the volume's pool is open (calls after the pool's Close fail with
// pool.ErrClosed, after the volume's deletion with pool.ErrNotFound).
// As replication.Store requires, callers serialize calls on overlapping
// blocks.
type Store struct {
	v *pool.Volume
}

var _ replication.Store = (*Store)(nil)

// Open returns the Store of volume v.
func Open(v *pool.Volume) *Store { return &Store{v: v} }

// Volume returns the pool volume of s.
func (s *Store) Volume() *pool.Volume { return s.v }

// Size implements replication.Store: the volume's size in bytes.
func (s *Store) Size() int64 { return s.v.Size() }

// ReadAt implements replication.Store. Every block read is verified
// against its checksum (and reconstructed from parity if it fails).
func (s *Store) ReadAt(ctx context.Context, p []byte, off int64) error {
	return s.v.ReadAt(ctx, p, off)
}

// WriteAt implements replication.Store; durable on return.
func (s *Store) WriteAt(ctx context.Context, p []byte, off int64, version uint64) error {
	return s.v.WriteTagged(ctx, p, off, version)
}

// Unmap implements replication.Store; durable on return.
func (s *Store) Unmap(ctx context.Context, off, length int64, version uint64) error {
	return s.v.UnmapTagged(ctx, off, length, version)
}

// Flush implements replication.Store. Every call that returned is
// durable already, so it only reports a deleted volume.
func (s *Store) Flush(ctx context.Context) error { return s.v.Flush(ctx) }

// Versions implements replication.Store from the pool's index alone.
func (s *Store) Versions(ctx context.Context, first int64, dst []uint64) error {
	return s.v.Tags(ctx, first, dst)
}

// SetBlocks implements replication.Store; durable on return. Each block
// ends as given even when its version is lower than the one it has; the
// call is not atomic (after a crash each block is as before or as given).
func (s *Store) SetBlocks(ctx context.Context, first int64, versions []uint64, data []byte) error {
	return s.v.SetBlocks(ctx, first, versions, data)
}
