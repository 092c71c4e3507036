package adminapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/internal/volume"
)

// Pool errors. A Pool returns errors wrapping these, or volume.ErrInvalid,
// volume.ErrNotFound or volume.ErrExists, to choose the HTTP status; any
// other error is a 500.
var (
	// ErrNoPool means the node has no pool yet.
	ErrNoPool = errors.New("adminapi: no pool")
	// ErrConflict means the request conflicts with the current state (a
	// pool exists already, sessions are logged in, an operation runs).
	ErrConflict = errors.New("adminapi: conflict")
	// ErrUnsupported means the request needs a feature the pool does not
	// have yet.
	ErrUnsupported = errors.New("adminapi: not implemented")
)

// NoPoolHint is what the API says when a request needs a pool and there is
// none.
const NoPoolHint = "this node has no pool yet: create one with `stave pool create --device PATH [--device PATH]...`"

// Pool is what the API needs from the node's pool (package pool behind an
// adapter in cmd/stave). Implementations are safe for concurrent use.
// Errors wrap ErrNoPool, ErrConflict, ErrUnsupported, volume.ErrInvalid,
// volume.ErrNotFound or volume.ErrExists when they are the caller's to fix,
// with a message that says how.
type Pool interface {
	// Exists reports whether the node has a pool (open or failed to
	// open). New volumes then live in it.
	Exists() bool
	// Create creates a pool on the devices and opens it.
	Create(ctx context.Context, req PoolCreateRequest) error
	// Status reports the pool's devices and space.
	Status(ctx context.Context) (*PoolStatus, error)
	// ResolvePolicy parses a "k+m" policy and checks it against the
	// pool's devices; "" returns the default for the device count.
	ResolvePolicy(policy string) (volume.Policy, error)
	// AddDevice adds a device to the pool.
	AddDevice(ctx context.Context, path string) error
	// CheckReplace checks, quickly, that ReplaceDevice(old, newDev) may
	// start: old is a device of the pool, newDev is usable and not one.
	CheckReplace(old, newDev string) error
	// ReplaceDevice rebuilds the contents of device old onto device new,
	// reporting progress, and drops old from the pool.
	ReplaceDevice(ctx context.Context, old, new string, progress func(Progress)) error
	// Scrub reads and verifies everything, repairing what it can.
	Scrub(ctx context.Context, progress func(Progress)) (*ScrubReport, error)
	// CreateVolume creates an empty volume in the pool.
	CreateVolume(ctx context.Context, name string, size int64, p volume.Policy) error
	// DeleteVolume deletes a volume and its snapshots from the pool.
	DeleteVolume(ctx context.Context, name string) error
	// Allocated returns the bytes of a pool volume's mapped blocks.
	Allocated(name string) (int64, bool)
	// CreateSnapshot takes a snapshot of a volume.
	CreateSnapshot(ctx context.Context, vol, snap string) (*Snapshot, error)
	// DeleteSnapshot deletes a snapshot.
	DeleteSnapshot(ctx context.Context, vol, snap string) error
	// Snapshots lists the snapshots of a volume, oldest first.
	Snapshots(ctx context.Context, vol string) ([]Snapshot, error)
	// Clone creates volume newVol reading through to vol@snap.
	Clone(ctx context.Context, vol, snap, newVol string) error
	// Revert sets a volume's content back to a snapshot. The volume is
	// not exported meanwhile.
	Revert(ctx context.Context, vol, snap string) error
}

// PoolCreateRequest is the body of POST /v1/pool.
type PoolCreateRequest struct {
	// Devices are absolute paths of regular files or block devices.
	Devices []string `json:"devices"`
	// SegmentSize in bytes; zero lets the pool choose (64 MiB).
	SegmentSize int64 `json:"segment_size,omitempty"`
}

// Validate checks the request's shape (the pool checks the devices).
// Errors wrap volume.ErrInvalid.
func (r *PoolCreateRequest) Validate() error {
	if len(r.Devices) == 0 {
		return fmt.Errorf("%w: no devices: give at least one --device PATH (three for a 2+1 pool that survives a device failure)", volume.ErrInvalid)
	}
	seen := map[string]bool{}
	for _, d := range r.Devices {
		if err := ValidateDevicePath(d); err != nil {
			return err
		}
		c := filepath.Clean(d)
		if seen[c] {
			return fmt.Errorf("%w: device %s is given twice: each device can hold one chunk of a stripe", volume.ErrInvalid, d)
		}
		seen[c] = true
	}
	if r.SegmentSize < 0 {
		return fmt.Errorf("%w: segment size %d: give a positive size such as 64MiB", volume.ErrInvalid, r.SegmentSize)
	}
	return nil
}

// ValidateDevicePath checks that a device path is absolute: the daemon
// does not share the client's working directory.
func ValidateDevicePath(p string) error {
	if p == "" {
		return fmt.Errorf("%w: empty device path", volume.ErrInvalid)
	}
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%w: device path %q is relative: give an absolute path (the daemon has its own working directory)", volume.ErrInvalid, p)
	}
	return nil
}

// PoolDevice is one device in PoolStatus.
type PoolDevice struct {
	Index          int    `json:"index"`
	Path           string `json:"path"`
	State          string `json:"state"` // ok, failed, missing
	Size           int64  `json:"size"`
	Used           int64  `json:"used"`
	ReadErrors     int64  `json:"read_errors"`
	WriteErrors    int64  `json:"write_errors"`
	ChecksumErrors int64  `json:"checksum_errors"`
	Repairs        int64  `json:"repairs"`
}

// PoolSpace is the pool's space accounting in bytes.
type PoolSpace struct {
	// Logical is the live data of all volumes.
	Logical int64 `json:"logical"`
	// Physical is what in-use segments occupy on the devices (data, parity, headers).
	Physical int64 `json:"physical"`
	// Parity is the part of Physical that is parity.
	Parity int64 `json:"parity"`
	// Garbage is dead data that the cleaner will reclaim.
	Garbage int64 `json:"garbage"`
	// Free is the space of free segments.
	Free int64 `json:"free"`
	// Capacity is the space of all segments.
	Capacity int64 `json:"capacity"`
}

// PoolStatus is the body of GET /v1/pool.
type PoolStatus struct {
	ID      string       `json:"id,omitempty"`
	MetaDir string       `json:"meta_dir,omitempty"`
	State   string       `json:"state"` // ok, degraded
	Reason  string       `json:"reason,omitempty"`
	Devices []PoolDevice `json:"devices"`
	Space   PoolSpace    `json:"space"`
	Volumes int          `json:"volumes"`
	// Operations lists running and recent long operations, newest last.
	Operations []Operation `json:"operations,omitempty"`
}

// Progress is the progress of a long operation.
type Progress struct {
	// Done and Total are bytes processed and to process (an estimate).
	Done  int64 `json:"done"`
	Total int64 `json:"total"`
	// Repaired counts chunks repaired so far.
	Repaired int64 `json:"repaired,omitempty"`
	// Unreadable counts stripes that could not be reconstructed.
	Unreadable int64 `json:"unreadable,omitempty"`
}

// ScrubReport is the outcome of a scrub.
type ScrubReport struct {
	Stripes        int64         `json:"stripes"`
	Bytes          int64         `json:"bytes"`
	ChecksumErrors int64         `json:"checksum_errors"`
	Repaired       int64         `json:"repaired"`
	Unrecoverable  int64         `json:"unrecoverable"`
	Duration       time.Duration `json:"duration_ns"`
}

// Operation states.
const (
	OpRunning = "running"
	OpDone    = "done"
	OpFailed  = "failed"
)

// Operation kinds.
const (
	OpReplaceDevice = "replace-device"
	OpScrub         = "scrub"
)

// Operation is a long pool operation: POST /v1/pool/replace-device and
// POST /v1/pool/scrub start one and answer 202 with it; GET
// /v1/pool/operations/{id} follows it.
type Operation struct {
	ID       string     `json:"id"`
	Kind     string     `json:"kind"`
	Args     []string   `json:"args,omitempty"`
	State    string     `json:"state"`
	Progress Progress   `json:"progress"`
	Started  time.Time  `json:"started"`
	Finished *time.Time `json:"finished,omitempty"`
	// Error says why a failed operation failed.
	Error string `json:"error,omitempty"`
	// Scrub is the report of a finished scrub.
	Scrub *ScrubReport `json:"scrub,omitempty"`
}

// AddDeviceRequest is the body of POST /v1/pool/devices.
type AddDeviceRequest struct {
	Path string `json:"path"`
}

// ReplaceDeviceRequest is the body of POST /v1/pool/replace-device.
type ReplaceDeviceRequest struct {
	Old string `json:"old"`
	New string `json:"new"`
}

// Snapshot is one snapshot of a pool volume.
type Snapshot struct {
	Volume  string    `json:"volume"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	// Version is the pool's write version the snapshot retains.
	Version uint64 `json:"version,omitempty"`
}

// SnapshotRequest is the body of POST /v1/volumes/{name}/snapshots.
type SnapshotRequest struct {
	Name string `json:"name"`
}

// CloneRequest is the body of POST /v1/volumes/{name}/clone: a new volume
// Name reading through to snapshot Snapshot of the volume in the path. The
// clone keeps the parent's size, block size, policy, ACL and CHAP.
type CloneRequest struct {
	Snapshot string `json:"snapshot"`
	Name     string `json:"name"`
}

// RevertRequest is the body of POST /v1/volumes/{name}/revert.
type RevertRequest struct {
	Snapshot string `json:"snapshot"`
}

// maxOps bounds the finished operations the server remembers.
const maxOps = 32

// ops tracks long operations. Safe for concurrent use.
type ops struct {
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	now    func() time.Time

	mu struct {
		sync.Mutex
		next int
		list []*Operation // oldest first
	}
}

func newOps() *ops {
	o := &ops{now: time.Now}
	o.ctx, o.cancel = context.WithCancel(context.Background())
	return o
}

// start runs fn in a goroutine as a new operation, unless another one is
// running: one long operation at a time keeps rebuilds and scrubs from
// competing for the same devices.
func (o *ops) start(kind string, args []string, fn func(ctx context.Context, progress func(Progress)) (*ScrubReport, error)) (Operation, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.ctx.Err(); err != nil {
		return Operation{}, fmt.Errorf("%w: the daemon is shutting down", ErrConflict)
	}
	for _, op := range o.mu.list {
		if op.State == OpRunning {
			return Operation{}, fmt.Errorf("%w: %s %s (operation %s) is running: wait for it to finish (see `stave pool status`)",
				ErrConflict, op.Kind, strings.Join(op.Args, " "), op.ID)
		}
	}
	o.mu.next++
	op := &Operation{ID: strconv.Itoa(o.mu.next), Kind: kind, Args: args, State: OpRunning, Started: o.now().UTC()}
	o.mu.list = append(o.mu.list, op)
	if n := len(o.mu.list); n > maxOps {
		o.mu.list = slices.Delete(o.mu.list, 0, n-maxOps)
	}
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		rep, err := fn(o.ctx, func(p Progress) {
			o.mu.Lock()
			op.Progress = p
			o.mu.Unlock()
		})
		o.mu.Lock()
		defer o.mu.Unlock()
		t := o.now().UTC()
		op.Finished = &t
		op.Scrub = rep
		if err != nil {
			op.State = OpFailed
			op.Error = userMessage(err)
			if o.ctx.Err() != nil {
				op.Error = "interrupted by the daemon's shutdown: run it again: " + op.Error
			}
			return
		}
		op.State = OpDone
		if op.Progress.Total > 0 {
			op.Progress.Done = op.Progress.Total
		}
	}()
	return *op, nil
}

func (o *ops) get(id string) (Operation, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, op := range o.mu.list {
		if op.ID == id {
			return *op, true
		}
	}
	return Operation{}, false
}

func (o *ops) all() []Operation {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]Operation, 0, len(o.mu.list))
	for _, op := range o.mu.list {
		out = append(out, *op)
	}
	return out
}

// close cancels running operations and waits for them.
func (o *ops) close() {
	o.mu.Lock()
	o.cancel()
	o.mu.Unlock()
	o.wg.Wait()
}

// decode reads a JSON body into v, refusing unknown fields; it writes the
// 400 and returns false on failure.
func decode(w http.ResponseWriter, r *http.Request, what string, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "bad JSON body for "+what+": "+err.Error())
		return false
	}
	return true
}

// needPool writes the no-pool error and returns false when there is none.
func (s *Server) needPool(w http.ResponseWriter) bool {
	if s.pool == nil || !s.pool.Exists() {
		writeError(w, http.StatusConflict, NoPoolHint)
		return false
	}
	return true
}

func (s *Server) poolRoot(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		if !s.needPool(w) {
			return
		}
		st, err := s.pool.Status(r.Context())
		if err != nil {
			s.fail(w, "pool status", err)
			return
		}
		st.Operations = s.ops.all()
		writeJSON(w, http.StatusOK, st)
	case http.MethodPost:
		var req PoolCreateRequest
		if !decode(w, r, "a pool create request", &req) {
			return
		}
		if err := req.Validate(); err != nil {
			s.fail(w, "pool create", err)
			return
		}
		if s.pool == nil {
			s.fail(w, "pool create", fmt.Errorf("%w: this daemon runs without pool support", ErrUnsupported))
			return
		}
		s.opMu.Lock()
		defer s.opMu.Unlock()
		if err := s.pool.Create(r.Context(), req); err != nil {
			s.fail(w, "pool create", err)
			return
		}
		st, err := s.pool.Status(r.Context())
		if err != nil {
			s.fail(w, "pool status", err)
			return
		}
		writeJSON(w, http.StatusCreated, st)
	default:
		methodNotAllowed(w, "GET, POST")
	}
}

func (s *Server) poolDevices(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		methodNotAllowed(w, "POST")
		return
	}
	var req AddDeviceRequest
	if !decode(w, r, "an add-device request", &req) || !s.needPool(w) {
		return
	}
	if err := ValidateDevicePath(req.Path); err != nil {
		s.fail(w, "pool add-device", err)
		return
	}
	if err := s.pool.AddDevice(r.Context(), req.Path); err != nil {
		s.fail(w, "pool add-device", err)
		return
	}
	st, err := s.pool.Status(r.Context())
	if err != nil {
		s.fail(w, "pool status", err)
		return
	}
	st.Operations = s.ops.all()
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) poolReplace(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		methodNotAllowed(w, "POST")
		return
	}
	var req ReplaceDeviceRequest
	if !decode(w, r, "a replace-device request", &req) || !s.needPool(w) {
		return
	}
	for _, p := range []string{req.Old, req.New} {
		if err := ValidateDevicePath(p); err != nil {
			s.fail(w, "pool replace-device", err)
			return
		}
	}
	if filepath.Clean(req.Old) == filepath.Clean(req.New) {
		s.fail(w, "pool replace-device", fmt.Errorf("%w: old and new device are both %s: give the new device to rebuild onto", volume.ErrInvalid, req.Old))
		return
	}
	if err := s.pool.CheckReplace(req.Old, req.New); err != nil {
		s.fail(w, "pool replace-device", err)
		return
	}
	op, err := s.ops.start(OpReplaceDevice, []string{req.Old, req.New},
		func(ctx context.Context, progress func(Progress)) (*ScrubReport, error) {
			s.log.Info("replacing pool device", logkey.Path, req.Old+" -> "+req.New)
			err := s.pool.ReplaceDevice(ctx, req.Old, req.New, progress)
			if err != nil {
				s.log.Error("replace-device failed", logkey.Path, req.Old, logkey.Err, err)
			} else {
				s.log.Info("pool device replaced", logkey.Path, req.Old+" -> "+req.New)
			}
			return nil, err
		})
	if err != nil {
		s.fail(w, "pool replace-device", err)
		return
	}
	writeJSON(w, http.StatusAccepted, op)
}

func (s *Server) poolScrub(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		methodNotAllowed(w, "POST")
		return
	}
	if !s.needPool(w) {
		return
	}
	// A pool that did not open fails here, not in the background.
	if _, err := s.pool.Status(r.Context()); err != nil {
		s.fail(w, "pool scrub", err)
		return
	}
	op, err := s.ops.start(OpScrub, nil, func(ctx context.Context, progress func(Progress)) (*ScrubReport, error) {
		rep, err := s.pool.Scrub(ctx, progress)
		if err != nil {
			s.log.Error("scrub failed", logkey.Err, err)
		}
		return rep, err
	})
	if err != nil {
		s.fail(w, "pool scrub", err)
		return
	}
	writeJSON(w, http.StatusAccepted, op)
}

func (s *Server) poolOperations(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		methodNotAllowed(w, "GET")
		return
	}
	writeJSON(w, http.StatusOK, s.ops.all())
}

func (s *Server) poolOperation(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		methodNotAllowed(w, "GET")
		return
	}
	op, ok := s.ops.get(r.PathValue("id"))
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no operation %q: see `stave pool status`", r.PathValue("id")))
		return
	}
	writeJSON(w, http.StatusOK, op)
}

// poolVolume returns the spec of a pool volume, or writes the error.
func (s *Server) poolVolume(w http.ResponseWriter, op, name string) (*volume.Spec, bool) {
	sp, err := s.vols.Get(name)
	if err != nil {
		s.fail(w, op, err)
		return nil, false
	}
	if sp.Replicated() {
		s.fail(w, op, fmt.Errorf("%w: volume %q is replicated: snapshots, clones and reverts of replicated volumes are not supported yet "+
			"(a snapshot must be taken at the same write on every copy)", ErrUnsupported, name))
		return nil, false
	}
	if !sp.InPool() {
		s.fail(w, op, fmt.Errorf("%w: volume %q lives in a sparse file (it was created before the pool): snapshots, clones and reverts need a pool volume",
			volume.ErrInvalid, name))
		return nil, false
	}
	if !s.needPool(w) {
		return nil, false
	}
	return sp, true
}

func (s *Server) snapshots(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	switch r.Method {
	case http.MethodGet:
		if _, ok := s.poolVolume(w, "list snapshots", name); !ok {
			return
		}
		ss, err := s.pool.Snapshots(r.Context(), name)
		if err != nil {
			s.fail(w, "list snapshots", err)
			return
		}
		if ss == nil {
			ss = []Snapshot{}
		}
		writeJSON(w, http.StatusOK, ss)
	case http.MethodPost:
		var req SnapshotRequest
		if !decode(w, r, "a snapshot request", &req) {
			return
		}
		if err := volume.ValidateSnapshotName(req.Name); err != nil {
			s.fail(w, "create snapshot", err)
			return
		}
		s.opMu.Lock()
		defer s.opMu.Unlock()
		if _, ok := s.poolVolume(w, "create snapshot", name); !ok {
			return
		}
		snap, err := s.pool.CreateSnapshot(r.Context(), name, req.Name)
		if err != nil {
			s.fail(w, "create snapshot", err)
			return
		}
		s.log.Info("snapshot created", logkey.Volume, name+"@"+req.Name)
		writeJSON(w, http.StatusCreated, snap)
	default:
		methodNotAllowed(w, "GET, POST")
	}
}

func (s *Server) snapshot(w http.ResponseWriter, r *http.Request) {
	name, snap := r.PathValue("name"), r.PathValue("snap")
	if r.Method != http.MethodDelete {
		methodNotAllowed(w, "DELETE")
		return
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if _, ok := s.poolVolume(w, "delete snapshot", name); !ok {
		return
	}
	if err := s.pool.DeleteSnapshot(r.Context(), name, snap); err != nil {
		s.fail(w, "delete snapshot", err)
		return
	}
	s.log.Info("snapshot deleted", logkey.Volume, name+"@"+snap)
	w.WriteHeader(http.StatusNoContent)
}

// allSnapshots serves GET /v1/snapshots: the snapshots of every pool volume.
func (s *Server) allSnapshots(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		methodNotAllowed(w, "GET")
		return
	}
	out := []Snapshot{}
	if s.pool == nil || !s.pool.Exists() {
		writeJSON(w, http.StatusOK, out)
		return
	}
	for _, sp := range s.vols.List() {
		if !sp.InPool() {
			continue
		}
		ss, err := s.pool.Snapshots(r.Context(), sp.Name)
		if errors.Is(err, volume.ErrNotFound) {
			continue // catalogued but missing from the pool: volume list shows it unexported
		}
		if err != nil {
			s.fail(w, "list snapshots", err)
			return
		}
		out = append(out, ss...)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) clone(w http.ResponseWriter, r *http.Request) {
	parent := r.PathValue("name")
	if r.Method != http.MethodPost {
		methodNotAllowed(w, "POST")
		return
	}
	var req CloneRequest
	if !decode(w, r, "a clone request", &req) {
		return
	}
	if err := volume.ValidateSnapshotName(req.Snapshot); err != nil {
		s.fail(w, "clone", err)
		return
	}
	if err := volume.ValidateName(req.Name); err != nil {
		s.fail(w, "clone", err)
		return
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	psp, ok := s.poolVolume(w, "clone", parent)
	if !ok {
		return
	}
	creq := volume.CreateRequest{Name: req.Name, Size: psp.Size, BlockSize: psp.BlockSize, ACL: psp.ACL, CHAP: psp.CHAP,
		Policy: psp.Policy, Backend: volume.BackendPool, Origin: parent + "@" + req.Snapshot}
	sp, err := s.vols.Create(r.Context(), creq)
	if err != nil {
		s.fail(w, "clone", err)
		return
	}
	if err := s.pool.Clone(r.Context(), parent, req.Snapshot, req.Name); err != nil {
		s.rollbackCreate(r.Context(), sp.Name, false)
		s.fail(w, "clone", err)
		return
	}
	if !s.export(w, r, sp) {
		return
	}
	s.log.Info("volume cloned", logkey.Volume, sp.Name, logkey.Op, "clone of "+sp.Origin)
	writeJSON(w, http.StatusCreated, s.toVolume(sp, nil))
}

func (s *Server) revert(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if r.Method != http.MethodPost {
		methodNotAllowed(w, "POST")
		return
	}
	var req RevertRequest
	if !decode(w, r, "a revert request", &req) {
		return
	}
	if err := volume.ValidateSnapshotName(req.Snapshot); err != nil {
		s.fail(w, "revert", err)
		return
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	sp, ok := s.poolVolume(w, "revert", name)
	if !ok {
		return
	}
	// Bad input first: an unknown snapshot is the caller's mistake
	// whatever the sessions are.
	snaps, err := s.pool.Snapshots(r.Context(), name)
	if err != nil {
		s.fail(w, "revert", err)
		return
	}
	if !slices.ContainsFunc(snaps, func(sn Snapshot) bool { return sn.Name == req.Snapshot }) {
		s.fail(w, "revert", fmt.Errorf("%w: volume %q has no snapshot %q (see stave snapshot list %s)", volume.ErrNotFound, name, req.Snapshot, name))
		return
	}
	var inits []string
	for _, ss := range s.targets.Sessions() {
		if ss.TargetName == sp.TargetName() {
			inits = append(inits, ss.InitiatorName)
		}
	}
	if len(inits) > 0 {
		s.fail(w, "revert", fmt.Errorf("%w: volume %q has %d iSCSI session(s) logged in (%s): reverting under a host that has it mounted corrupts its file system; "+
			"unmount it and log out first (iscsiadm -m node -T %s --logout), then revert", ErrConflict, name, len(inits),
			strings.Join(inits, ", "), sp.TargetName()))
		return
	}
	// Hide the target while the content changes under it, so that no
	// login sneaks in between the check above and the revert.
	if err := s.targets.Unexport(r.Context(), name); err != nil {
		s.fail(w, "revert", fmt.Errorf("stopping the target of volume %q: %w", name, err))
		return
	}
	rerr := s.pool.Revert(r.Context(), name, req.Snapshot)
	if err := s.targets.Export(context.WithoutCancel(r.Context()), sp); err != nil {
		s.log.Error("re-export after revert failed", logkey.Volume, name, logkey.Err, err)
		if rerr == nil {
			rerr = fmt.Errorf("volume %q was reverted but could not be exported again: %w (see the daemon log; restarting the daemon retries)", name, err)
		}
	}
	if rerr != nil {
		s.fail(w, "revert", rerr)
		return
	}
	s.log.Info("volume reverted", logkey.Volume, name+"@"+req.Snapshot)
	writeJSON(w, http.StatusOK, s.toVolume(sp, nil))
}
