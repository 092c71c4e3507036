// Package volume is the catalogue of volumes: their identity, access
// rules and where their blocks live.
//
// The specs live in a Store (etcd, package cluster) when Config.Store is
// set, as the daemon does; then DATA/volumes/<name>/ holds only a file
// volume's backing file, and Open imports the volume.json files of an
// older data directory into the Store once (renaming each to
// volume.json.migrated). Without a Store the specs are files as below.
//
// On-disk layout:
//
//	DATA/volumes/
//	    <name>/
//	        volume.json   Spec as JSON, mode 0600 (holds CHAP secrets)
//	        data          sparse backing file, Spec.Size bytes (internal/filedev);
//	                      only for Backend "file"
//	        pr.json       persistent reservations (target/scsi/pr FileStore)
//	    .tmp-<name>-<rand>/   a Create in progress (removed at Open)
//	    .del-<name>-<rand>/   a Delete in progress (removed at Open)
//
// Create builds the volume in a temporary directory, syncs it, and renames
// it into place, so a crash leaves either a whole volume or nothing under
// its name. Delete renames the directory away before removing it.
//
// A Catalog is safe for concurrent use.
package volume

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"stave.dev/stave/internal/filedev"
	"stave.dev/stave/internal/logkey"
)

// Sentinel errors. Errors returned by Catalog wrap one of these, with a
// message that says what to fix.
var (
	// ErrInvalid marks a request that fails validation.
	ErrInvalid = errors.New("volume: invalid request")
	// ErrExists means a volume of that name already exists.
	ErrExists = errors.New("volume: already exists")
	// ErrNotFound means no volume of that name exists.
	ErrNotFound = errors.New("volume: not found")
)

// File names inside a volume directory.
const (
	SpecFile = "volume.json"
	DataFile = "data"
	PRFile   = "pr.json"
)

// DefaultBlockSize is the logical block size when a request leaves it zero.
const DefaultBlockSize = 512

const (
	volumesDir = "volumes"
	tmpPrefix  = ".tmp-"
	delPrefix  = ".del-"
)

// stavecid is the IEEE company ID placed in NAA-6 designators. It has the
// X bit (0x02 of the first octet) set: a locally assigned CID, not an OUI
// bought from the IEEE (IEEE "Guidelines for use of EUI, OUI, and CID").
const stavecid = 0x535456 // "STV"

// CHAP holds CHAP credentials for one volume (RFC 7143 §12.1.3). User and
// Secret authenticate the initiator; MutualUser and MutualSecret, when
// set, are what the target answers with to authenticate itself.
type CHAP struct {
	User         string `json:"user"`
	Secret       string `json:"secret"`
	MutualUser   string `json:"mutual_user,omitempty"`
	MutualSecret string `json:"mutual_secret,omitempty"`
}

// Backends: where a volume's blocks live.
const (
	// BackendFile is a sparse file DATA/volumes/<name>/data. Specs written
	// before the pool have no backend and mean this one.
	BackendFile = "file"
	// BackendPool is a volume of the node's pool (package pool), which
	// holds its blocks and snapshots.
	BackendPool = "pool"
	// BackendReplicated is a volume with a copy on each of several nodes
	// (Spec.Replicas), each in DATA/volumes/<name>/replica (package
	// replication/filestore), kept in step by the owner (package
	// replication).
	BackendReplicated = "replicated"
)

// MaxReplicas bounds CreateRequest.Replicas.
const MaxReplicas = 3

// Spec is what volume.json holds: a volume's identity, access rules and
// backend.
type Spec struct {
	Name      string    `json:"name"`
	Size      int64     `json:"size"`
	BlockSize int       `json:"block_size"`
	Created   time.Time `json:"created"`
	UUID      string    `json:"uuid"`
	// Serial is the SCSI unit serial number (VPD page 0x80).
	Serial string `json:"serial"`
	// NAA is the 16-byte NAA-6 designator (VPD page 0x83) in 32 hex digits.
	NAA string `json:"naa"`
	// ACL lists the initiator names allowed to log in; empty allows any.
	ACL  []string `json:"acl,omitempty"`
	CHAP *CHAP    `json:"chap,omitempty"`
	// Backend is BackendFile or BackendPool; empty means BackendFile.
	Backend string `json:"backend,omitempty"`
	// Policy is a pool volume's erasure-coding policy, "k+m".
	Policy string `json:"policy,omitempty"`
	// Origin is "VOLUME@SNAPSHOT" for a clone.
	Origin string `json:"origin,omitempty"`
	// Node is the ID of the node that serves the volume (package
	// cluster); empty in specs written before etcd, meaning this node.
	Node string `json:"node,omitempty"`
	// Replicas lists the nodes that hold a copy of a replicated volume,
	// in placement order (package cluster); Node is then the first of
	// them and the owner at any moment is in the volume's ownership
	// record. Empty for a volume with one copy, served by Node.
	Replicas []string `json:"replicas,omitempty"`
	// FloatingIP is a replicated volume's floating portal address with
	// its prefix length (e.g. 10.0.20.100/24): the owner holds it on its
	// replication.floating_interface, for hosts without multipath.
	FloatingIP string `json:"floating_ip,omitempty"`
}

// Nodes returns the IDs of the nodes that hold the volume: Replicas, or
// Node alone for a volume with one copy (nothing when Node is empty).
func (s *Spec) Nodes() []string {
	if len(s.Replicas) > 0 {
		return append([]string(nil), s.Replicas...)
	}
	if s.Node == "" {
		return nil
	}
	return []string{s.Node}
}

// HasDataFile reports whether the volume's data is the sparse file
// DATA/volumes/<name>/data that the catalogue creates with the volume.
func (s *Spec) HasDataFile() bool { return !s.InPool() && !s.Replicated() }

// Replicated reports whether the volume has copies on several nodes.
func (s *Spec) Replicated() bool { return s.Backend == BackendReplicated }

// ReplicaCopyName is the name, in a node's pool, of that node's copy of
// the replicated volume s: "replica:NAME@UUID", so that a volume created
// again under a deleted one's name gets a new copy, and no single-node
// pool volume (named after its volume) can share it.
func (s *Spec) ReplicaCopyName() string { return ReplicaCopyPrefix + s.ReplicationID() }

// ReplicationID is the name of a replicated volume in the replication
// protocol and the epoch store: NAME@UUID, so that a volume created again
// under a deleted one's name is a new volume everywhere.
func (s *Spec) ReplicationID() string { return s.Name + "@" + s.UUID }

// ReplicaCopyPrefix starts the pool name of every replica copy
// (ReplicaCopyName).
const ReplicaCopyPrefix = "replica:"

// InPool reports whether the volume lives in the pool.
func (s *Spec) InPool() bool { return s.Backend == BackendPool }

// NAAID returns the NAA designator as bytes.
func (s *Spec) NAAID() ([16]byte, error) {
	var id [16]byte
	b, err := hex.DecodeString(s.NAA)
	if err != nil || len(b) != 16 {
		return id, fmt.Errorf("volume: %s: bad NAA id %q", s.Name, s.NAA)
	}
	copy(id[:], b)
	return id, nil
}

// TargetName returns the iSCSI target name that exports the volume.
func (s *Spec) TargetName() string { return TargetName(s.Name) }

// CreateRequest asks for a new volume.
type CreateRequest struct {
	Name string `json:"name"`
	// Size in bytes: positive and a multiple of BlockSize.
	Size int64 `json:"size"`
	// BlockSize is 512 (default when zero) or 4096.
	BlockSize int `json:"block_size,omitempty"`
	// ACL lists allowed initiator names; empty allows any.
	ACL []string `json:"acl,omitempty"`
	// CHAP enables one-way CHAP (and mutual CHAP when its Mutual fields are set).
	CHAP *CHAP `json:"chap,omitempty"`
	// Policy is the erasure-coding policy "k+m" of a pool volume; empty
	// lets the daemon choose from the pool's device count.
	Policy string `json:"policy,omitempty"`
	// Replicas is the number of nodes that hold a copy, 1 (default when
	// zero) to MaxReplicas. More than one makes a replicated volume.
	Replicas int `json:"replicas,omitempty"`
	// On pins placement: names or IDs of nodes that must hold copies of
	// a replicated volume, the first the preferred owner; the daemon
	// chooses the rest.
	On []string `json:"on,omitempty"`
	// FloatingIP gives a replicated volume a floating portal address,
	// ADDR/PREFIXLEN, held by whichever node owns it.
	FloatingIP string `json:"floating_ip,omitempty"`

	// Backend is BackendFile (also when empty), BackendPool or
	// BackendReplicated. The daemon chooses it; it is not part of the
	// API request.
	Backend string `json:"-"`
	// Nodes are the nodes chosen to hold a replicated volume, the
	// preferred owner first; set by the daemon.
	Nodes []string `json:"-"`
	// Origin is recorded in a clone's spec; set by the daemon.
	Origin string `json:"-"`
}

// Validate checks the request and returns an error wrapping ErrInvalid
// that says what to fix.
func (r *CreateRequest) Validate() error {
	if err := ValidateName(r.Name); err != nil {
		return err
	}
	bs := r.BlockSize
	if bs == 0 {
		bs = DefaultBlockSize
	}
	if bs != 512 && bs != 4096 {
		return fmt.Errorf("%w: block size %d: use 512 or 4096", ErrInvalid, r.BlockSize)
	}
	if r.Size <= 0 {
		return fmt.Errorf("%w: size %d: give a positive size such as 1GiB", ErrInvalid, r.Size)
	}
	if r.Size%int64(bs) != 0 {
		return fmt.Errorf("%w: size %d bytes is not a multiple of the %d-byte block size: round it up to %d",
			ErrInvalid, r.Size, bs, (r.Size/int64(bs)+1)*int64(bs))
	}
	for _, a := range r.ACL {
		if err := ValidateInitiatorName(a); err != nil {
			return err
		}
	}
	if r.Policy != "" {
		if _, err := ParsePolicy(r.Policy); err != nil {
			return err
		}
	}
	if r.Replicas < 0 || r.Replicas > MaxReplicas {
		return fmt.Errorf("%w: replicas %d: use 1 to %d", ErrInvalid, r.Replicas, MaxReplicas)
	}
	if len(r.On) > max(r.Replicas, 1) {
		return fmt.Errorf("%w: %d nodes given with --on for %d replicas: give at most one per replica", ErrInvalid, len(r.On), max(r.Replicas, 1))
	}
	if r.FloatingIP != "" {
		if r.Replicas < 2 {
			return fmt.Errorf("%w: --floating-ip follows the owner of a replicated volume: add --replicas 2 or 3", ErrInvalid)
		}
		p, err := netip.ParsePrefix(r.FloatingIP)
		if err != nil || p.Addr() == p.Masked().Addr() || !p.Addr().IsGlobalUnicast() && !p.Addr().IsPrivate() {
			return fmt.Errorf("%w: floating IP %q: give a host address with its subnet's prefix length, e.g. 10.0.20.100/24", ErrInvalid, r.FloatingIP)
		}
	}
	if len(r.On) > 0 && r.Replicas < 2 {
		return fmt.Errorf("%w: --on places the copies of a replicated volume: add --replicas 2 or 3", ErrInvalid)
	}
	if r.Replicas > 1 && r.Size%4096 != 0 {
		return fmt.Errorf("%w: size %d bytes: a replicated volume's size is a multiple of 4 KiB: round it up to %d",
			ErrInvalid, r.Size, (r.Size/4096+1)*4096)
	}
	switch r.Backend {
	case "", BackendFile:
	case BackendPool:
		if r.Policy == "" {
			return fmt.Errorf("%w: a pool volume needs a policy", ErrInvalid)
		}
	case BackendReplicated:
		if len(r.Nodes) != max(r.Replicas, 1) {
			return fmt.Errorf("%w: a replicated volume of %d replicas placed on %d nodes", ErrInvalid, r.Replicas, len(r.Nodes))
		}
	default:
		return fmt.Errorf("%w: backend %q: use %s, %s or %s", ErrInvalid, r.Backend, BackendFile, BackendPool, BackendReplicated)
	}
	if c := r.CHAP; c != nil {
		if err := ValidateCHAP("CHAP", c.User, c.Secret); err != nil {
			return err
		}
		if c.MutualUser != "" || c.MutualSecret != "" {
			if err := ValidateCHAP("mutual CHAP", c.MutualUser, c.MutualSecret); err != nil {
				return err
			}
			// RFC 7143 §12.1.3: a secret used to authenticate initiators
			// MUST NOT be used to authenticate targets.
			if c.MutualSecret == c.Secret {
				return fmt.Errorf("%w: mutual CHAP secret equals the CHAP secret: use a different one (RFC 7143 §12.1.3)", ErrInvalid)
			}
		}
	}
	return nil
}

// Config configures a Catalog.
type Config struct {
	// Dir is the data directory; volumes live in Dir/volumes.
	Dir string
	// Logger receives state transitions; nil discards.
	Logger *slog.Logger
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// Rand supplies UUIDs; nil means crypto/rand.
	Rand io.Reader
	// Store keeps the specs (etcd); nil keeps them in volume.json files.
	Store Store
	// Node is the node ID recorded in new specs (Spec.Node).
	Node string
}

// Catalog is the set of volumes in a data directory.
type Catalog struct {
	dir  string // Dir/volumes
	log  *slog.Logger
	now  func() time.Time
	rand io.Reader

	store   Store         // nil: spec files
	node    string        // Spec.Node of new volumes
	changed chan struct{} // see Changed; capacity 1

	mu struct {
		sync.Mutex
		specs   map[string]*Spec
		revs    map[string]int64    // store revision of each spec
		pending map[string]struct{} // see Pending
		rev     int64               // store revision the cache has seen
	}
}

// Open loads every volume under cfg.Dir/volumes, creating the directory if
// needed and removing leftovers of interrupted Create and Delete calls. A
// volume whose spec cannot be read is logged at Error and skipped.
func Open(cfg Config) (*Catalog, error) { return OpenContext(context.Background(), cfg) }

// OpenContext is Open with a context for the Store's calls. With a Store
// it loads the specs from it and migrates spec files into it.
func OpenContext(ctx context.Context, cfg Config) (*Catalog, error) {
	c := &Catalog{dir: filepath.Join(cfg.Dir, volumesDir), log: cfg.Logger, now: cfg.Now, rand: cfg.Rand,
		store: cfg.Store, node: cfg.Node, changed: make(chan struct{}, 1)}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.rand == nil {
		c.rand = rand.Reader
	}
	c.mu.specs = make(map[string]*Spec)
	c.mu.revs = make(map[string]int64)
	c.mu.pending = make(map[string]struct{})
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return nil, fmt.Errorf("volume: %w", err)
	}
	if c.store != nil {
		if err := c.openStore(ctx); err != nil {
			return nil, err
		}
		return c, nil
	}
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, fmt.Errorf("volume: %w", err)
	}
	for _, e := range ents {
		p := filepath.Join(c.dir, e.Name())
		if strings.HasPrefix(e.Name(), tmpPrefix) || strings.HasPrefix(e.Name(), delPrefix) {
			c.log.Info("removing leftover of an interrupted volume operation", logkey.Path, p)
			if err := os.RemoveAll(p); err != nil {
				return nil, fmt.Errorf("volume: %w", err)
			}
			continue
		}
		if !e.IsDir() || ValidateName(e.Name()) != nil {
			continue
		}
		s, err := readSpec(p)
		if err == nil && s.Name != e.Name() {
			err = fmt.Errorf("volume: %s: spec names volume %q", p, s.Name)
		}
		if err != nil {
			c.log.Error("skipping unreadable volume", logkey.Volume, e.Name(), logkey.Err, err)
			continue
		}
		c.mu.specs[s.Name] = s
	}
	return c, nil
}

func readSpec(dir string) (*Spec, error) {
	b, err := os.ReadFile(filepath.Join(dir, SpecFile))
	if err != nil {
		return nil, fmt.Errorf("volume: %w", err)
	}
	s := new(Spec)
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("volume: %s: %w", dir, err)
	}
	if err := s.Check(); err != nil {
		return nil, fmt.Errorf("volume: %s: %w", dir, err)
	}
	return s, nil
}

// Dir returns the directory of the named volume (which may not exist).
func (c *Catalog) Dir(name string) string { return filepath.Join(c.dir, name) }

// DataPath returns the path of the volume's backing file.
func (c *Catalog) DataPath(name string) string { return filepath.Join(c.dir, name, DataFile) }

// PRPath returns the path of the volume's persistent-reservation state.
func (c *Catalog) PRPath(name string) string { return filepath.Join(c.dir, name, PRFile) }

// Create validates req and makes the volume: without a Store atomically
// (one directory rename), with one the backing file first and then the
// spec, create-if-absent (a crash in between leaves a directory without a
// spec, which Open reports). The new volume is Pending until Settle. It
// returns the new spec. Errors wrap ErrInvalid or ErrExists, or are I/O
// or Store errors.
func (c *Catalog) Create(ctx context.Context, req CreateRequest) (*Spec, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if req.BlockSize == 0 {
		req.BlockSize = DefaultBlockSize
	}
	var u [16]byte
	if _, err := io.ReadFull(c.rand, u[:]); err != nil {
		return nil, fmt.Errorf("volume: random: %w", err)
	}
	u[6] = u[6]&0x0f | 0x40 // RFC 9562 version 4
	u[8] = u[8]&0x3f | 0x80 // variant 10
	s := &Spec{
		Name:      req.Name,
		Size:      req.Size,
		BlockSize: req.BlockSize,
		Created:   c.now().UTC().Truncate(time.Second),
		UUID:      formatUUID(u),
		Serial:    hex.EncodeToString(u[:])[:20],
		NAA:       hex.EncodeToString(naa6(u)),
		ACL:       slices.Clone(req.ACL),
		Backend:   req.Backend,
		Origin:    req.Origin,
		Node:      c.node,
	}
	if s.Backend == "" {
		s.Backend = BackendFile
	}
	if s.InPool() {
		p, _ := ParsePolicy(req.Policy) // validated above
		s.Policy = p.String()
	}
	if s.Replicated() {
		s.Replicas = slices.Clone(req.Nodes)
		s.Node = s.Replicas[0]
		s.FloatingIP = req.FloatingIP
	}
	if req.CHAP != nil {
		ch := *req.CHAP
		s.CHAP = &ch
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	final := c.Dir(s.Name)
	if _, ok := c.mu.specs[s.Name]; ok {
		return nil, fmt.Errorf("%w: volume %q already exists: choose another name or delete it first", ErrExists, s.Name)
	}
	if c.store != nil {
		if err := c.createStoredLocked(ctx, s); err != nil {
			return nil, err
		}
		c.mu.pending[s.Name] = struct{}{}
		c.log.Info("volume created", logkey.Volume, s.Name, logkey.Size, s.Size)
		c.notify()
		return s.clone(), nil
	}
	if _, err := os.Lstat(final); err == nil {
		return nil, fmt.Errorf("%w: %s is in the way (an unreadable volume?): remove it or choose another name", ErrExists, final)
	}
	tmp, err := os.MkdirTemp(c.dir, tmpPrefix+s.Name+"-")
	if err != nil {
		return nil, fmt.Errorf("volume: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(tmp)
		}
	}()
	if s.HasDataFile() {
		if err := filedev.Create(filepath.Join(tmp, DataFile), s.Size); err != nil {
			if errors.Is(err, syscall.EFBIG) || errors.Is(err, syscall.EINVAL) {
				return nil, fmt.Errorf("%w: size %d bytes is more than the file system under %s allows for one file: choose a smaller size",
					ErrInvalid, s.Size, c.dir)
			}
			return nil, fmt.Errorf("volume: %s: %w", s.Name, err)
		}
	}
	if err := writeSpec(tmp, s); err != nil {
		return nil, err
	}
	if err := syncDir(tmp); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return nil, fmt.Errorf("volume: %w", err)
	}
	ok = true
	if err := syncDir(c.dir); err != nil {
		return nil, err
	}
	c.mu.specs[s.Name] = s
	c.mu.pending[s.Name] = struct{}{}
	c.log.Info("volume created", logkey.Volume, s.Name, logkey.Size, s.Size)
	c.notify()
	cp := s.clone()
	return cp, nil
}

func writeSpec(dir string, s *Spec) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, SpecFile), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		_ = f.Close()
		return fmt.Errorf("volume: %w", err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("volume: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("volume: sync %s: %w", dir, err)
	}
	return nil
}

func (s *Spec) clone() *Spec {
	cp := *s
	cp.ACL = slices.Clone(s.ACL)
	cp.Replicas = slices.Clone(s.Replicas)
	if s.CHAP != nil {
		ch := *s.CHAP
		cp.CHAP = &ch
	}
	return &cp
}

// List returns a copy of every volume's spec, sorted by name.
func (c *Catalog) List() []*Spec {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*Spec, 0, len(c.mu.specs))
	for _, s := range c.mu.specs {
		out = append(out, s.clone())
	}
	slices.SortFunc(out, func(a, b *Spec) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Get returns a copy of the named volume's spec, or an error wrapping
// ErrNotFound.
func (c *Catalog) Get(name string) (*Spec, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.mu.specs[name]
	if !ok {
		return nil, notFound(name)
	}
	return s.clone(), nil
}

func notFound(name string) error {
	return fmt.Errorf("%w: no volume named %q: see 'stave volume list'", ErrNotFound, name)
}

// Delete removes the named volume and its data: with a Store the spec
// (compare-and-delete on the revision read, ErrConflict if it changed),
// then the backing file. The caller stops serving it first. Errors wrap
// ErrNotFound or ErrConflict, or are I/O or Store errors.
func (c *Catalog) Delete(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.mu.specs[name]; !ok {
		return notFound(name)
	}
	delete(c.mu.pending, name)
	if c.store != nil {
		if err := c.store.Delete(ctx, name, c.mu.revs[name]); err != nil {
			return err
		}
		delete(c.mu.specs, name)
		delete(c.mu.revs, name)
		c.notify()
		// A pool volume has no directory; a file volume's goes like below.
		if _, err := os.Lstat(c.Dir(name)); err != nil {
			c.log.Info("volume deleted", logkey.Volume, name)
			return nil
		}
	}
	var r [6]byte
	if _, err := io.ReadFull(c.rand, r[:]); err != nil {
		return fmt.Errorf("volume: random: %w", err)
	}
	gone := filepath.Join(c.dir, delPrefix+name+"-"+hex.EncodeToString(r[:]))
	if err := os.Rename(c.Dir(name), gone); err != nil {
		return fmt.Errorf("volume: delete %s: %w", name, err)
	}
	delete(c.mu.specs, name)
	c.notify()
	if err := syncDir(c.dir); err != nil {
		c.log.Warn("volume delete: sync", logkey.Err, err)
	}
	if err := os.RemoveAll(gone); err != nil {
		// The volume is gone from the catalogue; Open removes the rest.
		c.log.Warn("volume delete: remove", logkey.Path, gone, logkey.Err, err)
	}
	c.log.Info("volume deleted", logkey.Volume, name)
	return nil
}

func formatUUID(u [16]byte) string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// naa6 builds an NAA IEEE Registered Extended designator (SPC-4 §7.8.6.6.6):
//
//	byte 0      NAA (6) << 4 | company ID bits 23..20
//	bytes 1-2   company ID bits 19..4
//	byte 3      company ID bits 3..0 << 4 | vendor specific identifier bits 35..32
//	bytes 4-7   vendor specific identifier bits 31..0
//	bytes 8-15  vendor specific identifier extension
//
// The 100 vendor-specific bits come from the volume's random UUID.
func naa6(u [16]byte) []byte {
	b := make([]byte, 16)
	cid := uint32(stavecid)
	b[0] = 0x60 | byte(cid>>20)&0x0f
	b[1] = byte(cid >> 12)
	b[2] = byte(cid >> 4)
	b[3] = byte(cid&0x0f)<<4 | u[0]&0x0f
	copy(b[4:8], u[1:5])
	copy(b[8:16], u[8:16])
	return b
}

// Local reports whether this node serves the volume: its spec names this
// node, or no node (a spec written before volumes had nodes), or this
// node holds one of its replicas.
func (c *Catalog) Local(s *Spec) bool {
	return s.Node == "" || s.Node == c.node || slices.Contains(s.Replicas, c.node)
}
