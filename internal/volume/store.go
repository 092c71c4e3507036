package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"stave.dev/stave/internal/filedev"
	"stave.dev/stave/internal/logkey"
)

// ErrConflict means a spec changed between read and write (another node
// or request changed it): read it again and retry.
var ErrConflict = errors.New("volume: changed concurrently")

// MigratedSuffix is appended to volume.json and pr.json once their
// contents have moved into a Store, so they are imported only once.
const MigratedSuffix = ".migrated"

// Store keeps the specs outside the data directory: in etcd (package
// cluster). With a Store, DATA/volumes/<name>/ holds only the backing
// file of a file volume. Implementations are safe for concurrent use.
type Store interface {
	// Load returns every spec with its modification revision, and the
	// store revision the snapshot was taken at.
	Load(ctx context.Context) (specs []Stored, rev int64, err error)
	// Create stores a new spec if no spec of that name exists (else an
	// error wrapping ErrExists) and returns its revision.
	Create(ctx context.Context, s *Spec) (modRev int64, err error)
	// Update replaces the spec if its revision is still modRev (else an
	// error wrapping ErrConflict, or ErrNotFound when it is gone).
	Update(ctx context.Context, s *Spec, modRev int64) (int64, error)
	// Delete removes the spec and everything stored with it (status,
	// reservations) if its revision is still modRev.
	Delete(ctx context.Context, name string, modRev int64) error
	// Watch calls fn for every change after revision rev, in order, until
	// ctx is done (it then returns ctx.Err()) or the watch fails (for
	// example because rev was compacted: Load again).
	Watch(ctx context.Context, rev int64, fn func(Event)) error
}

// Stored is a spec and the store revision that last changed it.
type Stored struct {
	Spec   *Spec
	ModRev int64
}

// Event is one change seen by Store.Watch.
type Event struct {
	// Name of the volume.
	Name string
	// Spec is the new spec; nil when the volume was deleted.
	Spec *Spec
	// ModRev is the revision of the change.
	ModRev int64
}

// Check validates a spec read back from storage.
func (s *Spec) Check() error {
	if _, err := s.NAAID(); err != nil {
		return err
	}
	if ValidateName(s.Name) != nil || s.Size <= 0 || s.BlockSize <= 0 || s.Size%int64(s.BlockSize) != 0 {
		return fmt.Errorf("volume: %s: invalid spec (name, size or block size)", s.Name)
	}
	switch s.Backend {
	case "", BackendFile:
	case BackendPool:
		if _, err := ParsePolicy(s.Policy); err != nil {
			return fmt.Errorf("volume: %s: %w", s.Name, err)
		}
	case BackendReplicated:
		if len(s.Replicas) == 0 || len(s.Replicas) > MaxReplicas || s.Node != s.Replicas[0] {
			return fmt.Errorf("volume: %s: a replicated volume's spec needs 1 to %d replicas, the first as its node", s.Name, MaxReplicas)
		}
	default:
		return fmt.Errorf("volume: %s: unknown backend %q (written by a newer stave?)", s.Name, s.Backend)
	}
	return nil
}

// openStore loads the catalogue from c.store and imports the spec files
// of an older data directory (migration, once per volume).
func (c *Catalog) openStore(ctx context.Context) error {
	specs, rev, err := c.store.Load(ctx)
	if err != nil {
		return err
	}
	for _, st := range specs {
		c.mu.specs[st.Spec.Name] = st.Spec
		c.mu.revs[st.Spec.Name] = st.ModRev
	}
	c.mu.rev = rev
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	for _, e := range ents {
		p := filepath.Join(c.dir, e.Name())
		if strings.HasPrefix(e.Name(), tmpPrefix) || strings.HasPrefix(e.Name(), delPrefix) {
			c.log.Info("removing leftover of an interrupted volume operation", logkey.Path, p)
			if err := os.RemoveAll(p); err != nil {
				return fmt.Errorf("volume: %w", err)
			}
			continue
		}
		if !e.IsDir() || ValidateName(e.Name()) != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(p, SpecFile)); err != nil {
			if _, ok := c.mu.specs[e.Name()]; !ok {
				c.log.Warn("volume directory without a spec (a create interrupted by a crash, or a volume deleted while this node was down): "+
					"remove it to reuse the name", logkey.Path, p)
			}
			continue
		}
		if err := c.migrate(ctx, p, e.Name()); err != nil {
			c.log.Error("volume spec not migrated to the cluster store; it stays in its file and is retried at the next start",
				logkey.Volume, e.Name(), logkey.Err, err)
		}
	}
	return nil
}

// migrate moves one volume.json into the store and renames the file to
// volume.json.migrated. A spec already in the store with the same UUID
// (a migration interrupted before the rename) is left as it is.
func (c *Catalog) migrate(ctx context.Context, dir, name string) error {
	s, err := readSpec(dir)
	if err != nil {
		return err
	}
	if s.Name != name {
		return fmt.Errorf("volume: %s: spec names volume %q", dir, s.Name)
	}
	if s.Backend == "" {
		s.Backend = BackendFile
	}
	if s.Node == "" {
		s.Node = c.node
	}
	if old, ok := c.mu.specs[name]; ok {
		if old.UUID != s.UUID {
			return fmt.Errorf("%w: the cluster already has a different volume %q (uuid %s, file has %s): rename one",
				ErrExists, name, old.UUID, s.UUID)
		}
	} else {
		rev, err := c.store.Create(ctx, s)
		if err != nil {
			return err
		}
		c.mu.specs[name], c.mu.revs[name] = s, rev
		c.log.Info("volume spec migrated to the cluster store", logkey.Volume, name)
	}
	f := filepath.Join(dir, SpecFile)
	if err := os.Rename(f, f+MigratedSuffix); err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	return syncDir(dir)
}

// createStored is Create with a Store: the backing file first (in a
// temporary directory renamed into place), then the spec, create-if-absent.
// A crash in between leaves a directory without a spec, which Open
// reports.
// REQUIRES: c.mu held.
func (c *Catalog) createStoredLocked(ctx context.Context, s *Spec) error {
	final := c.Dir(s.Name)
	made := false
	if s.HasDataFile() {
		if _, err := os.Lstat(final); err == nil {
			return fmt.Errorf("%w: %s is in the way (left by an interrupted create or a deleted volume): remove it or choose another name", ErrExists, final)
		}
		tmp, err := os.MkdirTemp(c.dir, tmpPrefix+s.Name+"-")
		if err != nil {
			return fmt.Errorf("volume: %w", err)
		}
		if err := filedev.Create(filepath.Join(tmp, DataFile), s.Size); err != nil {
			_ = os.RemoveAll(tmp)
			if errors.Is(err, syscall.EFBIG) || errors.Is(err, syscall.EINVAL) {
				return fmt.Errorf("%w: size %d bytes is more than the file system under %s allows for one file: choose a smaller size",
					ErrInvalid, s.Size, c.dir)
			}
			return fmt.Errorf("volume: %s: %w", s.Name, err)
		}
		if err := os.Rename(tmp, final); err != nil {
			_ = os.RemoveAll(tmp)
			return fmt.Errorf("volume: %w", err)
		}
		made = true
		if err := syncDir(c.dir); err != nil {
			_ = os.RemoveAll(final)
			return err
		}
	}
	rev, err := c.store.Create(ctx, s)
	if err != nil {
		if made {
			_ = os.RemoveAll(final)
		}
		return err
	}
	c.mu.specs[s.Name], c.mu.revs[s.Name] = s, rev
	return nil
}

// Resize grows the named volume to size bytes in the catalogue (the
// caller grows its storage and logical unit). It returns the new spec.
// Errors wrap ErrNotFound, ErrInvalid (not larger, not a multiple of the
// block size) or ErrConflict.
func (c *Catalog) Resize(ctx context.Context, name string, size int64) (*Spec, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old, ok := c.mu.specs[name]
	if !ok {
		return nil, notFound(name)
	}
	switch bs := int64(old.BlockSize); {
	case size == old.Size:
		return old.clone(), nil
	case size < old.Size:
		return nil, fmt.Errorf("%w: volume %q is %d bytes; %d is smaller and shrinking is not supported: give a larger size",
			ErrInvalid, name, old.Size, size)
	case size%bs != 0:
		return nil, fmt.Errorf("%w: size %d bytes is not a multiple of the %d-byte block size: round it up to %d",
			ErrInvalid, size, bs, (size/bs+1)*bs)
	}
	s := old.clone()
	s.Size = size
	if c.store != nil {
		rev, err := c.store.Update(ctx, s, c.mu.revs[name])
		if err != nil {
			return nil, err
		}
		c.mu.revs[name] = rev
	} else if err := rewriteSpec(c.Dir(name), s); err != nil {
		return nil, err
	}
	c.mu.specs[name] = s
	c.log.Info("volume resized in the catalogue", logkey.Volume, name, logkey.Size, size)
	c.notify()
	return s.clone(), nil
}

// rewriteSpec replaces DIR/volume.json atomically.
func rewriteSpec(dir string, s *Spec) error {
	tmp, err := os.MkdirTemp(dir, tmpPrefix)
	if err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := writeSpec(tmp, s); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(tmp, SpecFile), filepath.Join(dir, SpecFile)); err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	return syncDir(dir)
}

// Changed returns a channel that receives a value (coalesced) after every
// change of the catalogue: local writes and changes seen in the Store.
// The reconcile loop waits on it.
func (c *Catalog) Changed() <-chan struct{} { return c.changed }

func (c *Catalog) notify() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// Run follows the Store's changes into the catalogue until ctx is done,
// signalling Changed after each. A failed watch (etcd unreachable,
// history compacted) reloads the whole catalogue and watches again. It
// returns nil when ctx is done; without a Store it just waits for that.
func (c *Catalog) Run(ctx context.Context) error {
	if c.store == nil {
		<-ctx.Done()
		return nil
	}
	c.mu.Lock()
	rev := c.mu.rev
	c.mu.Unlock()
	fails := 0
	for {
		start := time.Now()
		err := c.store.Watch(ctx, rev, c.apply)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > time.Minute {
			fails = 0 // it worked for a while: retry at once
		}
		// Back off 1 s, 2 s, … up to 30 s while the store stays away.
		delay := min(30*time.Second, time.Second<<min(fails, 5))
		fails++
		c.log.Warn("volume watch ended; reloading the catalogue", logkey.Err, err, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		specs, r, err := c.store.Load(ctx)
		if err != nil {
			c.log.Warn("volume catalogue reload failed", logkey.Err, err)
			continue
		}
		c.mu.Lock()
		clear(c.mu.specs)
		clear(c.mu.revs)
		for _, st := range specs {
			c.mu.specs[st.Spec.Name], c.mu.revs[st.Spec.Name] = st.Spec, st.ModRev
		}
		c.mu.rev, rev = r, r
		c.mu.Unlock()
		c.notify()
	}
}

// apply applies one watched change unless the cache already has it.
func (c *Catalog) apply(ev Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ev.ModRev > c.mu.rev {
		c.mu.rev = ev.ModRev
	}
	if ev.Spec == nil {
		if _, ok := c.mu.specs[ev.Name]; !ok {
			return
		}
		delete(c.mu.specs, ev.Name)
		delete(c.mu.revs, ev.Name)
	} else {
		if c.mu.revs[ev.Name] >= ev.ModRev {
			return // our own write, applied already
		}
		c.mu.specs[ev.Name], c.mu.revs[ev.Name] = ev.Spec, ev.ModRev
	}
	c.notify()
}

// Pending reports whether a Create of this catalogue made the volume and
// its creator has not yet called Settle: the creator exports it, so the
// reconcile loop leaves it alone.
func (c *Catalog) Pending(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.mu.pending[name]
	return ok
}

// Settle ends the Pending state of a volume; the exporter calls it once
// it has exported (or failed to export) a new volume.
func (c *Catalog) Settle(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.mu.pending, name)
}

// Node returns the node ID the catalogue assigns new volumes to.
func (c *Catalog) Node() string { return c.node }

// ReplaceReplica makes node repl hold the replicated volume's copy in
// place of node old, at the same position of Replicas (the node at
// position 0 is also Spec.Node). It fails when the volume is not
// replicated, old does not hold it, repl already does, or the spec
// changed since this node read it (ErrConflict). It returns the new spec.
func (c *Catalog) ReplaceReplica(ctx context.Context, name, old, repl string) (*Spec, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	cur, ok := c.mu.specs[name]
	if !ok {
		return nil, notFound(name)
	}
	i := slices.Index(cur.Replicas, old)
	switch {
	case !cur.Replicated():
		return nil, fmt.Errorf("%w: volume %q is not replicated", ErrInvalid, name)
	case i < 0:
		return nil, fmt.Errorf("%w: node %s holds no copy of volume %q", ErrInvalid, old, name)
	case slices.Contains(cur.Replicas, repl) || repl == "":
		return nil, fmt.Errorf("%w: node %q cannot take a copy of volume %q it already holds", ErrInvalid, repl, name)
	}
	s := cur.clone()
	s.Replicas[i] = repl
	s.Node = s.Replicas[0]
	if c.store != nil {
		rev, err := c.store.Update(ctx, s, c.mu.revs[name])
		if err != nil {
			return nil, err
		}
		c.mu.revs[name] = rev
	} else if err := rewriteSpec(c.Dir(name), s); err != nil {
		return nil, err
	}
	c.mu.specs[name] = s
	c.log.Info("replica moved to another node", logkey.Volume, name, logkey.Node, repl, "from", old)
	c.notify()
	return s.clone(), nil
}
