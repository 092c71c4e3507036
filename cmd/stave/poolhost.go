package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"stave.dev/stave/internal/adminapi"
	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/internal/volume"
	"stave.dev/stave/pool"
	"stave.dev/stave/target/scsi"
)

var (
	_ adminapi.Pool           = (*poolHost)(nil)
	_ scsi.BlockDevice        = (*pool.Volume)(nil)
	_ scsi.ProvisioningStatus = (*pool.Volume)(nil)
)

// poolHost owns the daemon's pool: it opens DATA/pool at start-up when it
// exists, creates it on request, hands pool volumes to the exporter, adapts
// package pool to adminapi.Pool (types and error classes) and closes the
// pool at shutdown. It is safe for concurrent use.
type poolHost struct {
	log     *slog.Logger
	dataDir string
	metaDir string // DATA/pool
	opts    pool.Options

	// createMu serialises Create; mu is not held during pool.Create and
	// pool.Open, so status and metrics do not wait for them.
	createMu sync.Mutex

	mu struct {
		sync.Mutex
		p       *pool.Pool // nil: no pool, or it failed to open
		exists  bool       // metaDir exists
		openErr error      // why p is nil while exists
	}
}

// newPoolHost returns the host of the pool in dataDir/pool. The pool logs
// through log with its own component key; the host's lines carry
// component=poolhost.
func newPoolHost(log *slog.Logger, dataDir string, reg prometheus.Registerer) *poolHost {
	meta := filepath.Join(dataDir, poolMetaDir)
	return &poolHost{log: log.With(logkey.Component, "poolhost"), dataDir: dataDir, metaDir: meta,
		opts: pool.Options{MetaDir: meta, Logger: log, Registerer: reg}}
}

// open opens the pool if the data dir has one. A pool that fails to open
// is logged and reported by every pool request; the daemon still serves
// its file volumes.
func (h *poolHost) open(ctx context.Context) {
	if _, err := os.Stat(h.metaDir); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			h.setOpen(nil, err)
		}
		return
	}
	p, err := pool.Open(ctx, h.opts)
	h.setOpen(p, err)
	if err != nil {
		h.log.Error("pool not opened: its volumes are not exported", logkey.Path, h.metaDir, logkey.Err, err)
		return
	}
}

func (h *poolHost) setOpen(p *pool.Pool, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.mu.exists, h.mu.p, h.mu.openErr = true, p, err
}

// close closes the pool; the iSCSI server and the API have stopped.
func (h *poolHost) close() {
	h.mu.Lock()
	p := h.mu.p
	h.mu.p = nil
	h.mu.Unlock()
	if p == nil {
		return
	}
	if err := p.Close(); err != nil {
		h.log.Error("closing the pool", logkey.Err, err)
	}
}

// exists reports whether the data dir has a pool (open or not).
func (h *poolHost) exists() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.mu.exists
}

// get returns the open pool or an error that says why there is none.
func (h *poolHost) get() (*pool.Pool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.mu.p != nil:
		return h.mu.p, nil
	case !h.mu.exists:
		return nil, fmt.Errorf("%w: %s", adminapi.ErrNoPool, adminapi.NoPoolHint)
	}
	return nil, fmt.Errorf("%w: the pool in %s could not be opened at start-up: %v: fix or reattach its devices and restart the daemon, "+
		"or stop the daemon and rebuild the index with `stave pool recover --data-dir %s`", adminapi.ErrConflict, h.metaDir, h.mu.openErr, h.dataDir)
}

// volume returns the named pool volume for export.
func (h *poolHost) volume(name string) (*pool.Volume, error) {
	p, err := h.get()
	if err != nil {
		return nil, err
	}
	v, err := p.Volume(name)
	if err != nil {
		return nil, poolErr(err, fmt.Sprintf("volume %q is catalogued but not in the pool (a create interrupted by a crash?): delete it with `stave volume delete %s`", name, name))
	}
	return v, nil
}

// poolErr translates a pool error into the API's classes; notFound is the
// message for pool.ErrNotFound.
func poolErr(err error, notFound string) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, pool.ErrNotFound):
		if notFound == "" {
			notFound = err.Error()
		}
		return fmt.Errorf("%w: %s", volume.ErrNotFound, notFound)
	case errors.Is(err, pool.ErrExists):
		return fmt.Errorf("%w: %v", volume.ErrExists, err)
	case errors.Is(err, pool.ErrInvalid):
		return fmt.Errorf("%w: %v", volume.ErrInvalid, err)
	case errors.Is(err, pool.ErrNotImplemented):
		return fmt.Errorf("%w: %v: the pool does not do this yet", adminapi.ErrUnsupported, err)
	case errors.Is(err, pool.ErrNoSpace):
		return fmt.Errorf("%w: %v: add a device with `stave pool add-device PATH`, delete volumes or snapshots", adminapi.ErrConflict, err)
	case errors.Is(err, pool.ErrDegraded):
		return fmt.Errorf("%w: %v: replace the failed device with `stave pool replace-device OLD NEW` (see `stave pool status`)", adminapi.ErrConflict, err)
	case errors.Is(err, pool.ErrClosed):
		return fmt.Errorf("%w: %v: the daemon is shutting down", adminapi.ErrConflict, err)
	}
	return err
}

// Exists implements adminapi.Pool.
func (h *poolHost) Exists() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.mu.exists
}

// checkDevicePath checks, on the daemon's side, that a device exists and
// is a regular file or a block device.
func checkDevicePath(p string) error {
	if err := checkDevice(p); err != nil {
		return fmt.Errorf("%w: %v", volume.ErrInvalid, err)
	}
	return nil
}

// Create implements adminapi.Pool: pool.Create then pool.Open.
func (h *poolHost) Create(ctx context.Context, req adminapi.PoolCreateRequest) error {
	h.createMu.Lock()
	defer h.createMu.Unlock()
	h.mu.Lock()
	exists, open := h.mu.exists, h.mu.p
	h.mu.Unlock()
	if exists {
		n := 0
		if open != nil {
			n = len(open.Status().Devices)
		}
		return fmt.Errorf("%w: this node has a pool already (%s, %d devices): add devices with `stave pool add-device PATH`",
			adminapi.ErrConflict, h.metaDir, n)
	}
	if _, err := os.Stat(h.metaDir); err == nil {
		return fmt.Errorf("%w: %s exists but the daemon did not open it at start-up: restart the daemon, or move it away to start afresh",
			adminapi.ErrConflict, h.metaDir)
	}
	for _, d := range req.Devices {
		if err := checkDevicePath(d); err != nil {
			return err
		}
	}
	err := pool.Create(ctx, pool.CreateOptions{Devices: slices.Clone(req.Devices), MetaDir: h.metaDir,
		SegmentSize: req.SegmentSize, Logger: h.opts.Logger, OpenDevice: h.opts.OpenDevice})
	if err != nil {
		// Leave no half-made pool behind: the next start would try it.
		if rerr := os.RemoveAll(h.metaDir); rerr != nil {
			h.log.Error("removing a half-created pool", logkey.Path, h.metaDir, logkey.Err, rerr)
		}
		if errors.Is(err, pool.ErrExists) {
			return fmt.Errorf("%w: %v: a device that holds a Stave superblock belongs to a pool (this node's or another's); "+
				"if it is really free, wipe its first MiB (dd if=/dev/zero of=DEVICE bs=1M count=1) and try again", volume.ErrExists, err)
		}
		return poolErr(err, "")
	}
	p, err := pool.Open(ctx, h.opts)
	h.setOpen(p, err)
	if err != nil {
		h.log.Error("pool created but not opened", logkey.Path, h.metaDir, logkey.Err, err)
		return fmt.Errorf("pool created in %s but it could not be opened: %w", h.metaDir, poolErr(err, ""))
	}
	return nil
}

// Status implements adminapi.Pool.
func (h *poolHost) Status(context.Context) (*adminapi.PoolStatus, error) {
	p, err := h.get()
	if err != nil {
		return nil, err
	}
	st := p.Status()
	out := &adminapi.PoolStatus{ID: st.PoolID, MetaDir: h.metaDir, State: "ok", Reason: st.Reason, Volumes: st.Volumes,
		Devices: make([]adminapi.PoolDevice, 0, len(st.Devices)),
		Space: adminapi.PoolSpace{Logical: st.Space.Logical, Physical: st.Space.Physical, Parity: st.Space.Parity,
			Garbage: st.Space.Garbage, Free: st.Space.Free, Capacity: st.Space.Capacity}}
	if st.Degraded {
		out.State = "degraded"
	}
	for _, d := range st.Devices {
		out.Devices = append(out.Devices, adminapi.PoolDevice{Index: d.Index, Path: d.Path, State: d.State.String(),
			Size: d.Size, Used: d.Used, ReadErrors: d.ReadErrors, WriteErrors: d.WriteErrors,
			ChecksumErrors: d.ChecksumErrors, Repairs: d.Repairs})
	}
	return out, nil
}

// ResolvePolicy implements adminapi.Pool.
func (h *poolHost) ResolvePolicy(s string) (volume.Policy, error) {
	p, err := h.get()
	if err != nil {
		return volume.Policy{}, err
	}
	n := len(p.Status().Devices)
	if s == "" {
		d := pool.PolicyFor(n, false)
		return volume.Policy{Data: d.Data, Parity: d.Parity}, nil
	}
	pol, err := volume.ParsePolicy(s)
	if err != nil {
		return volume.Policy{}, err
	}
	if pol.Width() > n {
		d := pool.PolicyFor(n, false)
		return volume.Policy{}, fmt.Errorf("%w: policy %s spreads each stripe over %d devices and the pool has %d: "+
			"add devices with `stave pool add-device PATH` or use --policy %s", volume.ErrInvalid, pol, pol.Width(), n, d)
	}
	return pol, nil
}

// AddDevice implements adminapi.Pool.
func (h *poolHost) AddDevice(ctx context.Context, path string) error {
	p, err := h.get()
	if err != nil {
		return err
	}
	for _, d := range p.Status().Devices {
		if filepath.Clean(d.Path) == filepath.Clean(path) {
			return fmt.Errorf("%w: %s is device %d of this pool already", volume.ErrExists, path, d.Index)
		}
	}
	if err := checkDevicePath(path); err != nil {
		return err
	}
	if err := p.AddDevice(ctx, path); err != nil {
		if errors.Is(err, pool.ErrExists) {
			return fmt.Errorf("%w: %v: the device holds a Stave superblock (it belongs to a pool); if it is really free, "+
				"wipe its first MiB (dd if=/dev/zero of=DEVICE bs=1M count=1) and try again", volume.ErrExists, err)
		}
		return poolErr(err, "")
	}
	h.log.Info("pool device added", logkey.Path, path)
	return nil
}

func toProgress(p pool.Progress) adminapi.Progress {
	return adminapi.Progress{Done: p.Done, Total: p.Total, Repaired: p.Repaired, Unreadable: p.Unreadable}
}

// CheckReplace implements adminapi.Pool.
func (h *poolHost) CheckReplace(old, newDev string) error {
	p, err := h.get()
	if err != nil {
		return err
	}
	found := false
	var paths []string
	for _, d := range p.Status().Devices {
		paths = append(paths, d.Path)
		if filepath.Clean(d.Path) == filepath.Clean(newDev) {
			return fmt.Errorf("%w: %s is device %d of this pool already: give a new device", volume.ErrInvalid, newDev, d.Index)
		}
		found = found || filepath.Clean(d.Path) == filepath.Clean(old)
	}
	if !found {
		return fmt.Errorf("%w: %s is not a device of the pool; its devices are %v (see `stave pool status`)", volume.ErrNotFound, old, paths)
	}
	return checkDevicePath(newDev)
}

// ReplaceDevice implements adminapi.Pool.
func (h *poolHost) ReplaceDevice(ctx context.Context, old, newDev string, progress func(adminapi.Progress)) error {
	p, err := h.get()
	if err != nil {
		return err
	}
	if err := h.CheckReplace(old, newDev); err != nil {
		return err
	}
	err = p.ReplaceDevice(ctx, old, newDev, func(pr pool.Progress) { progress(toProgress(pr)) })
	if errors.Is(err, pool.ErrExists) {
		return fmt.Errorf("%w: %v: if it is really free, wipe its first MiB (dd if=/dev/zero of=DEVICE bs=1M count=1) and try again",
			volume.ErrExists, err)
	}
	return poolErr(err, "")
}

// Scrub implements adminapi.Pool.
func (h *poolHost) Scrub(ctx context.Context, progress func(adminapi.Progress)) (*adminapi.ScrubReport, error) {
	p, err := h.get()
	if err != nil {
		return nil, err
	}
	r, err := p.Scrub(ctx, func(pr pool.Progress) { progress(toProgress(pr)) })
	if err != nil {
		return nil, poolErr(err, "")
	}
	return &adminapi.ScrubReport{Stripes: r.Stripes, Bytes: r.Bytes, ChecksumErrors: r.ChecksumErrors,
		Repaired: r.Repaired, Unrecoverable: r.Unrecoverable, Duration: r.Duration}, nil
}

// CreateVolume implements adminapi.Pool.
func (h *poolHost) CreateVolume(ctx context.Context, name string, size int64, pol volume.Policy) error {
	p, err := h.get()
	if err != nil {
		return err
	}
	_, err = p.CreateVolume(ctx, name, size, pool.Policy{Data: pol.Data, Parity: pol.Parity})
	return poolErr(err, "")
}

// DeleteVolume implements adminapi.Pool.
func (h *poolHost) DeleteVolume(ctx context.Context, name string) error {
	p, err := h.get()
	if err != nil {
		return err
	}
	return poolErr(p.DeleteVolume(ctx, name), fmt.Sprintf("no volume named %q in the pool", name))
}

// Allocated implements adminapi.Pool.
func (h *poolHost) Allocated(name string) (int64, bool) {
	p, err := h.get()
	if err != nil {
		return 0, false
	}
	for _, vi := range p.Volumes() {
		if vi.Name == name {
			return vi.Logical, true
		}
	}
	return 0, false
}

func snapNotFound(vol, snap string) string {
	return fmt.Sprintf("volume %q has no snapshot %q: see `stave snapshot list %s`", vol, snap, vol)
}

// CreateSnapshot implements adminapi.Pool.
func (h *poolHost) CreateSnapshot(ctx context.Context, vol, snap string) (*adminapi.Snapshot, error) {
	p, err := h.get()
	if err != nil {
		return nil, err
	}
	if err := p.CreateSnapshot(ctx, vol, snap); err != nil {
		if errors.Is(err, pool.ErrExists) {
			return nil, fmt.Errorf("%w: volume %q has a snapshot %q already: choose another name or delete it first", volume.ErrExists, vol, snap)
		}
		return nil, poolErr(err, fmt.Sprintf("no volume named %q in the pool", vol))
	}
	ss, err := p.Snapshots(vol)
	if err != nil {
		return nil, poolErr(err, "")
	}
	for _, s := range ss {
		if s.Name == snap {
			out := toSnapshot(s)
			return &out, nil
		}
	}
	return &adminapi.Snapshot{Volume: vol, Name: snap}, nil
}

func toSnapshot(s pool.SnapshotInfo) adminapi.Snapshot {
	return adminapi.Snapshot{Volume: s.Volume, Name: s.Name, Created: s.Created, Version: s.Version}
}

// DeleteSnapshot implements adminapi.Pool.
func (h *poolHost) DeleteSnapshot(ctx context.Context, vol, snap string) error {
	p, err := h.get()
	if err != nil {
		return err
	}
	return poolErr(p.DeleteSnapshot(ctx, vol, snap), snapNotFound(vol, snap))
}

// Snapshots implements adminapi.Pool.
func (h *poolHost) Snapshots(_ context.Context, vol string) ([]adminapi.Snapshot, error) {
	p, err := h.get()
	if err != nil {
		return nil, err
	}
	ss, err := p.Snapshots(vol)
	if err != nil {
		return nil, poolErr(err, fmt.Sprintf("no volume named %q in the pool", vol))
	}
	out := make([]adminapi.Snapshot, 0, len(ss))
	for _, s := range ss {
		out = append(out, toSnapshot(s))
	}
	return out, nil
}

// Clone implements adminapi.Pool.
func (h *poolHost) Clone(ctx context.Context, vol, snap, newVol string) error {
	p, err := h.get()
	if err != nil {
		return err
	}
	_, err = p.Clone(ctx, vol, snap, newVol)
	return poolErr(err, snapNotFound(vol, snap))
}

// Revert implements adminapi.Pool.
func (h *poolHost) Revert(ctx context.Context, vol, snap string) error {
	p, err := h.get()
	if err != nil {
		return err
	}
	return poolErr(p.Revert(ctx, vol, snap), snapNotFound(vol, snap))
}

// warnOrphans logs pool volumes that the catalogue does not know (left by
// a crash in the middle of a delete): they use space but are not served.
func (h *poolHost) warnOrphans(cat *volume.Catalog) {
	p, err := h.get()
	if err != nil {
		return
	}
	for _, vi := range p.Volumes() {
		if rest, ok := strings.CutPrefix(vi.Name, volume.ReplicaCopyPrefix); ok {
			// A replica copy: the reconcile loop removes it once its
			// volume is gone (replicaHost.dropOrphanCopies).
			name, _, _ := strings.Cut(rest, "@")
			if s, err := cat.Get(name); err == nil && s.ReplicaCopyName() == vi.Name {
				continue
			}
		}
		if _, err := cat.Get(vi.Name); err != nil {
			h.log.Warn("pool volume without a catalogue entry: not exported", logkey.Volume, vi.Name, logkey.Size, vi.Size)
		}
	}
}

// recoverPool rebuilds the index of the pool in metaDir (pool recover).
func recoverPool(ctx context.Context, metaDir string, log *slog.Logger) error {
	if err := pool.Recover(ctx, pool.Options{MetaDir: metaDir, Logger: log}); err != nil {
		if errors.Is(err, pool.ErrNotImplemented) {
			return fmt.Errorf("%v: the pool does not do this yet", err)
		}
		return err
	}
	return nil
}
