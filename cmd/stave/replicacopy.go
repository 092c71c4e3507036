package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/internal/volume"
	"stave.dev/stave/pool"
	"stave.dev/stave/replication"
	"stave.dev/stave/replication/filestore"
	"stave.dev/stave/replication/poolstore"
)

// localCopy is this node's copy of a replicated volume: a volume in the
// node's pool (poolCopy) or, on a node without a pool, a
// replication/filestore in the volume's directory.
type localCopy interface {
	replication.Store
	// Resize grows the copy to size bytes.
	Resize(size int64) error
	// Close releases the copy; it stays on disk.
	Close() error
}

// poolCopy is a copy kept in the node's pool (replication/poolstore):
// checksummed, erasure-coded, repaired and scrubbed like every pool
// volume.
type poolCopy struct {
	*poolstore.Store
	p    *pool.Pool
	name string
}

// Resize implements localCopy.
func (c *poolCopy) Resize(size int64) error {
	return c.p.ResizeVolume(context.Background(), c.name, size)
}

// Close implements localCopy: the pool owns the volume.
func (c *poolCopy) Close() error { return nil }

// openCopy opens this node's copy of s, creating it if needed: the
// filestore in dir/replica when one exists (a copy made before this node
// had a pool keeps living there), else a volume of the node's pool when it
// has one, else a new filestore. A pool that exists but did not open is an
// error rather than a silent fallback to a file.
func (h *replicaHost) openCopy(ctx context.Context, s *volume.Spec, dir string) (localCopy, error) {
	if hasReplicaData(dir) || h.pools == nil || !h.pools.exists() {
		// An existing copy opens at its own size: a grow that did not
		// finish on this node leaves it smaller than the spec, and
		// openReplica grows it.
		path, size := filepath.Join(dir, replicaDir), s.Size
		if filestore.Exists(path) {
			size = 0
		}
		st, err := filestore.Open(path, size, filestore.Options{})
		if err != nil {
			return nil, err
		}
		return st, nil
	}
	p, err := h.pools.get()
	if err != nil {
		return nil, err
	}
	name := s.ReplicaCopyName()
	v, err := p.Volume(name)
	if errors.Is(err, pool.ErrNotFound) {
		if v, err = p.CreateVolume(ctx, name, s.Size, pool.Policy{}); err == nil {
			h.log.Info("replica copy created in the pool", logkey.Volume, s.Name, "pool_volume", name, logkey.Size, s.Size)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("its copy in the pool (%s): %w", name, err)
	}
	return &poolCopy{Store: poolstore.Open(v), p: p, name: name}, nil
}

// hasCopy reports whether this node holds a copy of s: a filestore in
// dir or a volume in the pool.
func (h *replicaHost) hasCopy(s *volume.Spec, dir string) bool {
	if hasReplicaData(dir) {
		return true
	}
	if h.pools == nil {
		return false
	}
	p, err := h.pools.get()
	if err != nil {
		return false
	}
	_, err = p.Volume(s.ReplicaCopyName())
	return err == nil
}

// removeReplicaData deletes a replicated volume's local copy (file or
// pool) and its persisted epoch after its spec was deleted or its copy
// moved to another node.
func (h *replicaHost) removeReplicaData(s *volume.Spec, dir string) error {
	if err := os.RemoveAll(filepath.Join(dir, replicaDir)); err != nil {
		return err
	}
	if h.pools != nil && h.pools.exists() {
		p, err := h.pools.get()
		if err != nil {
			return err
		}
		if err := p.DeleteVolume(context.Background(), s.ReplicaCopyName()); err != nil && !errors.Is(err, pool.ErrNotFound) {
			return err
		}
	}
	if err := h.epochs.Forget(s.ReplicationID()); err != nil {
		return err
	}
	err := os.Remove(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// dropOrphanCopies deletes the pool copies of replicated volumes that
// the catalogue no longer has (deleted, or created again with another
// UUID, while this node was down); copies of volumes that still exist but
// moved off this node are removed through removeReplicaData.
func (h *replicaHost) dropOrphanCopies(ctx context.Context, specs []*volume.Spec) {
	if h.pools == nil || !h.pools.exists() {
		return
	}
	p, err := h.pools.get()
	if err != nil {
		return
	}
	live := map[string]bool{}
	for _, s := range specs {
		if s.Replicated() {
			live[s.ReplicaCopyName()] = true
		}
	}
	for _, vi := range p.Volumes() {
		if !strings.HasPrefix(vi.Name, volume.ReplicaCopyPrefix) || live[vi.Name] {
			continue
		}
		if err := p.DeleteVolume(ctx, vi.Name); err != nil && !errors.Is(err, pool.ErrNotFound) {
			h.log.Warn("pool copy of a deleted replicated volume not removed", "pool_volume", vi.Name, logkey.Err, err)
			continue
		}
		h.log.Info("pool copy of a deleted replicated volume removed", "pool_volume", vi.Name)
	}
}
