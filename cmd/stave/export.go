package main

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"stave.dev/stave/cluster"
	"stave.dev/stave/internal/adminapi"
	"stave.dev/stave/internal/filedev"
	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/internal/volume"
	"stave.dev/stave/target/iscsi"
	"stave.dev/stave/target/iscsi/login"
	"stave.dev/stave/target/scsi"
	"stave.dev/stave/target/scsi/pr"
)

// exported is one volume being served.
type exported struct {
	spec   *volume.Spec
	dev    scsi.BlockDevice
	close  func() error // releases dev; nil for pool volumes, which the pool owns
	lu     *scsi.LU
	target *iscsi.Target // replaced (not changed) when the ACL, CHAP or peers change
	rep    *replica      // this node's part of a replicated volume; nil otherwise
}

// release closes the backing file of a file volume.
func (x *exported) release() error {
	if x.close == nil {
		return nil
	}
	return x.close()
}

// exporter turns catalogue volumes into iSCSI targets. It is the server's
// iscsi.TargetSource and the admin API's adminapi.Targets, and runs the
// reconcile loop (reconcile.go) that makes what is exported follow the
// catalogue in etcd. It is safe for concurrent use.
//
// Export, Unexport, Resize and the reconcile pass serialise on opMu, so
// an API request and the loop never open or close one volume twice.
type exporter struct {
	log  *slog.Logger
	cat  *volume.Catalog
	pool *poolHost
	cl   *cluster.Cluster // reservations and status; nil in tests without etcd
	node string           // this node's ID
	kick chan struct{}    // asks the reconcile loop for a pass; capacity 1
	// reps runs the replicated volumes this node holds; nil when the node
	// has no replication listener (it then holds no replicas).
	reps *replicaHost
	// life is the daemon's context: replicated volumes' drivers run
	// under it (requests that export them end sooner).
	life context.Context

	opMu sync.Mutex
	// Owned by opMu holders.
	held   map[string]bool         // unexported by the API (delete, revert): the loop leaves them down
	failed map[string]string       // last export error per volume, to log each once
	status map[string]volumeStatus // last status written per volume

	mu struct {
		sync.RWMutex
		srv  *iscsi.Server        // nil until setServer
		byIQ map[string]*exported // by target name
	}
}

var (
	_ scsi.BlockDevice        = (*filedev.Device)(nil)
	_ scsi.ProvisioningStatus = (*filedev.Device)(nil)
	_ iscsi.TargetSource      = (*exporter)(nil)
	_ adminapi.Targets        = (*exporter)(nil)
)

func newExporter(log *slog.Logger, cat *volume.Catalog, ph *poolHost, cl *cluster.Cluster, node string) *exporter {
	e := &exporter{log: log, cat: cat, pool: ph, cl: cl, node: node, kick: make(chan struct{}, 1), life: context.Background(),
		held: make(map[string]bool), failed: make(map[string]string), status: make(map[string]volumeStatus)}
	e.mu.byIQ = make(map[string]*exported)
	return e
}

func (e *exporter) setServer(s *iscsi.Server) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.mu.srv = s
}

// Export opens the volume's storage (its backing file, or its pool
// volume) and logical unit and makes its target visible to logins and
// SendTargets. A volume exported already with the same identity is
// brought up to date with s instead (the reconcile loop may have been
// first). Export ends the volume's Pending state and lifts an Unexport's
// hold.
func (e *exporter) Export(ctx context.Context, s *volume.Spec) error {
	defer e.cat.Settle(s.Name)
	if err := ctx.Err(); err != nil {
		return err
	}
	e.opMu.Lock()
	defer e.opMu.Unlock()
	delete(e.held, s.Name)
	err := e.exportLocked(ctx, s)
	e.poke()
	return err
}

// exportLocked is Export.
// REQUIRES: e.opMu held.
func (e *exporter) exportLocked(ctx context.Context, s *volume.Spec) error {
	iqn := s.TargetName()
	e.mu.RLock()
	cur := e.mu.byIQ[iqn]
	e.mu.RUnlock()
	if cur != nil {
		if cur.spec.UUID == s.UUID {
			return e.updateLocked(ctx, cur, s)
		}
		// Another volume of the same name (deleted and created again).
		e.unexportLocked(s.Name)
	}
	naa, err := s.NAAID()
	if err != nil {
		return err
	}
	x := &exported{spec: s}
	// A sparse file deallocates at any 512-byte boundary it can punch, so
	// it reports physical = logical; the pool's block is 4 KiB (smaller
	// writes are read-modify-write).
	physical := s.BlockSize
	var ports scsi.PortState
	switch {
	case s.Replicated():
		if e.reps == nil {
			return fmt.Errorf("stave: volume %s is replicated onto this node, which has no replication listener: set replication.listen (--replication-listen)", s.Name)
		}
		rep, err := e.reps.openReplica(e.life, s, e.cat.Dir(s.Name))
		if err != nil {
			return err
		}
		x.dev, x.close, x.rep, ports = rep.dev, rep.close, rep, rep.alua
		physical = max(4096, s.BlockSize)
	case s.InPool():
		v, err := e.pool.volume(s.Name)
		if err != nil {
			return err
		}
		x.dev, physical = v, max(4096, s.BlockSize)
	default:
		fd, err := filedev.Open(e.cat.DataPath(s.Name))
		if err != nil {
			return err
		}
		x.dev, x.close = fd, fd.Close
	}
	// A resize whose catalogue write landed before a crash grows the
	// backing store now; if that fails the volume is served at its old
	// size and the error returned (the reconcile loop retries). A store
	// larger than the spec is an error.
	if x.dev.Size() > s.Size {
		_ = x.release()
		return fmt.Errorf("stave: volume %s: backing store is %d bytes, spec says %d", s.Name, x.dev.Size(), s.Size)
	}
	var growErr error
	if x.dev.Size() < s.Size {
		if growErr = e.grow(ctx, x, s.Size); growErr != nil {
			e.log.Error("volume served at its old size: growing it failed", logkey.Volume, s.Name,
				logkey.Size, x.dev.Size(), logkey.Err, growErr)
		}
	}
	log := e.log.With(logkey.Volume, s.Name)
	var rs pr.Store = pr.FileStore{Path: e.cat.PRPath(s.Name)}
	if e.cl != nil {
		if err := e.cl.MigrateReservations(ctx, s.Name, e.cat.PRPath(s.Name)); err != nil {
			_ = x.release()
			return fmt.Errorf("stave: volume %s: moving its reservations into etcd: %w", s.Name, err)
		}
		crs := e.cl.Reservations(s.Name)
		if x.rep != nil {
			x.rep.setReservations(crs)
		}
		rs = crs
	}
	lu, err := scsi.NewLU(scsi.LUConfig{
		Logger:            log,
		Device:            x.dev,
		BlockSize:         s.BlockSize,
		PhysicalBlockSize: physical,
		Name:              s.Name,
		Serial:            s.Serial,
		NAA:               naa,
		Reservations:      rs,
		Ports:             ports,
		// Every holder of a replicated volume serves one logical unit:
		// its reservations are the cluster's, not reset by this start.
		ResumeReservations: s.Replicated(),
	})
	if err != nil {
		_ = x.release()
		return err
	}
	x.lu = lu
	tgt := scsi.NewTarget(scsi.TargetConfig{Logger: log, LUNs: map[uint64]*scsi.LU{0: lu}})
	x.target = newTarget(s, tgt)
	if x.rep != nil {
		x.rep.setLU(lu)
		x.target.PortGroup, x.target.RelativePortBase, x.target.Peers = x.rep.group, x.rep.group<<8, x.rep.peers()
		x.target.Lead = x.rep.lead()
	}
	e.mu.Lock()
	e.mu.byIQ[iqn] = x
	e.mu.Unlock()
	log.Info("volume exported", logkey.Target, iqn, logkey.Size, x.dev.Size())
	return growErr
}

// newTarget is the iSCSI target of a volume: its name, ACL and CHAP over
// the SCSI target dev.
func newTarget(s *volume.Spec, dev scsi.Device) *iscsi.Target {
	it := &iscsi.Target{Name: s.TargetName(), Alias: s.Name, ACL: slices.Clone(s.ACL), Device: dev}
	if s.CHAP != nil {
		it.Auth = &login.Auth{User: s.CHAP.User, Secret: s.CHAP.Secret,
			MutualUser: s.CHAP.MutualUser, MutualSecret: s.CHAP.MutualSecret}
	}
	return it
}

// updateLocked applies a changed spec to an exported volume: a new ACL or
// CHAP applies to the next login (sessions in progress stay), a larger
// size grows the backing store and the LU, which reports CAPACITY DATA
// HAS CHANGED.
// REQUIRES: e.opMu held.
func (e *exporter) updateLocked(ctx context.Context, x *exported, s *volume.Spec) error {
	var peers, lead []string
	if x.rep != nil {
		x.rep.setSpec(s)
		peers, lead = x.rep.peers(), x.rep.lead()
	}
	if !slices.Equal(x.spec.ACL, s.ACL) || !reflect.DeepEqual(x.spec.CHAP, s.CHAP) || !slices.Equal(x.target.Peers, peers) ||
		!slices.Equal(x.target.Lead, lead) {
		nt := newTarget(s, x.target.Device)
		nt.PortGroup, nt.RelativePortBase, nt.Peers, nt.Lead = x.target.PortGroup, x.target.RelativePortBase, peers, lead
		e.mu.Lock()
		x.target = nt
		e.mu.Unlock()
		e.log.Info("volume access rules changed", logkey.Volume, s.Name, "acl", len(s.ACL), "chap", s.CHAP != nil)
	}
	if s.Size > x.dev.Size() {
		if err := e.grow(ctx, x, s.Size); err != nil {
			return err
		}
	}
	if x.lu != nil {
		x.lu.Resize() // no-op unless the size changed
	}
	e.mu.Lock()
	x.spec = s
	e.mu.Unlock()
	return nil
}

// poolResizer is the pool's online grow (pool helper's
// (*pool.Pool).ResizeVolume). A pool without it cannot grow volumes.
type poolResizer interface {
	ResizeVolume(ctx context.Context, name string, size int64) error
}

// grow extends a volume's backing store to size bytes.
func (e *exporter) grow(ctx context.Context, x *exported, size int64) error {
	switch d := x.dev.(type) {
	case *replicaDevice:
		if err := x.rep.grow(ctx, size); err != nil {
			return err
		}
		if x.rep.serving() && d.Size() < size {
			return fmt.Errorf("stave: volume %s: serving %d bytes after growing it to %d", x.spec.Name, d.Size(), size)
		}
	case *filedev.Device:
		if err := d.Grow(size); err != nil {
			return fmt.Errorf("stave: growing volume %s: %w", x.spec.Name, err)
		}
	default:
		p, err := e.pool.get()
		if err != nil {
			return err
		}
		r, ok := any(p).(poolResizer)
		if !ok {
			return fmt.Errorf("%w: this build's pool cannot grow volumes yet (no pool.ResizeVolume): volume %q keeps %d bytes",
				adminapi.ErrUnsupported, x.spec.Name, x.dev.Size())
		}
		if err := r.ResizeVolume(ctx, x.spec.Name, size); err != nil {
			return poolErr(err, "")
		}
		if x.dev.Size() != size {
			return fmt.Errorf("stave: volume %s: the pool reports %d bytes after growing it to %d", x.spec.Name, x.dev.Size(), size)
		}
	}
	e.log.Info("volume grown", logkey.Volume, x.spec.Name, logkey.Size, size)
	return nil
}

// CheckResize reports whether the volume's storage can grow here: a pool
// volume needs a pool with online grow; file and replicated volumes grow
// (every holder grows its copy when it sees the new spec).
func (e *exporter) CheckResize(s *volume.Spec) error {
	if s.Replicated() || !s.InPool() {
		return nil
	}
	p, err := e.pool.get()
	if err != nil {
		return err
	}
	if _, ok := any(p).(poolResizer); !ok {
		return fmt.Errorf("%w: this build's pool cannot grow volumes yet (no pool.ResizeVolume): volume %q keeps its size",
			adminapi.ErrUnsupported, s.Name)
	}
	return nil
}

// Resize applies a grown spec to the exported volume now (the admin API's
// resize calls it after the catalogue write, so the request returns once
// the LU reports the new capacity). A file or pool volume that is not
// exported here is left to the node that serves it: nil. A replicated
// volume grows this node's copy if it holds one, and unless this node
// serves it, Resize then waits (up to resizeWait) until the serving node
// reports the new size in etcd, or returns an error saying what is
// pending.
func (e *exporter) Resize(ctx context.Context, s *volume.Spec) error {
	e.opMu.Lock()
	e.mu.RLock()
	x := e.mu.byIQ[s.TargetName()]
	e.mu.RUnlock()
	var err error
	here := x != nil && x.spec.UUID == s.UUID
	if here {
		err = e.updateLocked(ctx, x, s)
		e.poke()
	}
	e.opMu.Unlock()
	if err != nil || !s.Replicated() || (here && x.rep != nil && x.rep.serving()) {
		return err
	}
	return e.awaitServed(ctx, s)
}

// resizeWait bounds how long a resize of a replicated volume, requested
// on a node that does not serve it, waits for the serving node: longer
// than the owner's wait for its replicas (growTimeout).
const resizeWait = growTimeout + 15*time.Second

// awaitServed waits until the serving node of the replicated volume s
// reports, in its etcd status, that it serves s.Size bytes without error
// (it writes the status after applying the spec), for up to resizeWait.
// Without etcd (tests) it returns nil at once.
func (e *exporter) awaitServed(ctx context.Context, s *volume.Spec) error {
	if e.cl == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, resizeWait)
	defer cancel()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		st, ok, err := e.cl.VolumeStatus(ctx, s.Name)
		if err == nil && ok && st.Exported && st.Size >= s.Size && st.Error == "" {
			return nil
		}
		select {
		case <-t.C:
			continue
		case <-ctx.Done():
		}
		switch {
		case err != nil:
			return fmt.Errorf("the serving node's status could not be read to confirm the grow: %w", err)
		case !ok || st.Node == "":
			return fmt.Errorf("no node serves volume %q now; its holders grow it when one does", s.Name)
		case st.Error != "":
			return fmt.Errorf("the serving node %s has not applied the new size (it serves %d bytes): %s", st.Node, st.Size, st.Error)
		}
		return fmt.Errorf("the serving node %s did not confirm the new size within %v (it reports %d bytes): it applies it when it sees the spec",
			st.Node, resizeWait, st.Size)
	}
}

// Unexport hides the volume's target from new logins, closes its sessions
// and closes its backing file. Once started it runs to completion. The
// reconcile loop leaves the volume unexported until Export is called or
// its spec is deleted.
func (e *exporter) Unexport(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	e.opMu.Lock()
	defer e.opMu.Unlock()
	e.held[name] = true
	e.unexportLocked(name)
	return nil
}

// unexportLocked is Unexport without the hold.
// REQUIRES: e.opMu held.
func (e *exporter) unexportLocked(name string) {
	iqn := volume.TargetName(name)
	e.mu.Lock()
	x, ok := e.mu.byIQ[iqn]
	delete(e.mu.byIQ, iqn)
	srv := e.mu.srv
	e.mu.Unlock()
	if !ok {
		return
	}
	if srv != nil {
		srv.CloseTarget(iqn)
	}
	if err := x.release(); err != nil {
		e.log.Warn("closing backing file", logkey.Volume, name, logkey.Err, err)
	}
	e.log.Info("volume unexported", logkey.Volume, name, logkey.Target, iqn)
}

// Exported implements adminapi.Targets.
func (e *exporter) Exported(name string) bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	_, ok := e.mu.byIQ[volume.TargetName(name)]
	return ok
}

// Target implements iscsi.TargetSource.
func (e *exporter) Target(name string) (*iscsi.Target, bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	x, ok := e.mu.byIQ[name]
	if !ok {
		return nil, false
	}
	return x.target, true
}

// Targets implements iscsi.TargetSource, sorted by name.
func (e *exporter) Targets() []*iscsi.Target {
	e.mu.RLock()
	out := make([]*iscsi.Target, 0, len(e.mu.byIQ))
	for _, x := range e.mu.byIQ {
		out = append(out, x.target)
	}
	e.mu.RUnlock()
	slices.SortFunc(out, func(a, b *iscsi.Target) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Sessions implements adminapi.Targets.
func (e *exporter) Sessions() []adminapi.Session {
	e.mu.RLock()
	srv := e.mu.srv
	e.mu.RUnlock()
	if srv == nil {
		return nil
	}
	infos := srv.Sessions()
	out := make([]adminapi.Session, 0, len(infos))
	for _, si := range infos {
		out = append(out, adminapi.Session{
			InitiatorName: si.InitiatorName, InitiatorAlias: si.InitiatorAlias, TargetName: si.TargetName,
			ISID: si.ISID, TSIH: si.TSIH, Type: si.Type, Portal: si.Portal, Remote: si.Remote,
			Connections: si.Connections, Params: paramMap(si.Params),
		})
	}
	return out
}

// stopReplicated unexports every replicated volume: the node gives up
// their ownership (its lease is revoked, so another holder takes over at
// once) and floating addresses. The daemon calls it when shutdown starts,
// before the iSCSI server drains, so that a stopping owner hands over
// instead of holding the volumes through the drain.
func (e *exporter) stopReplicated() {
	e.opMu.Lock()
	defer e.opMu.Unlock()
	e.mu.RLock()
	var names []string
	for _, x := range e.mu.byIQ {
		if x.rep != nil {
			names = append(names, x.spec.Name)
		}
	}
	e.mu.RUnlock()
	for _, name := range names {
		e.held[name] = true // the reconcile loop must not export it again
		e.unexportLocked(name)
	}
}

// closeAll closes every backing file; called once the server has stopped
// and before the pool closes.
func (e *exporter) closeAll() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for iqn, x := range e.mu.byIQ {
		if err := x.release(); err != nil {
			e.log.Warn("closing backing file", logkey.Volume, x.spec.Name, logkey.Err, err)
		}
		delete(e.mu.byIQ, iqn)
	}
}

// paramMap renders negotiated parameters by their RFC 7143 key names.
func paramMap(p login.Params) map[string]string {
	yn := func(b bool) string {
		if b {
			return "Yes"
		}
		return "No"
	}
	dg := func(b bool) string {
		if b {
			return "CRC32C"
		}
		return "None"
	}
	u := func(v uint32) string { return strconv.FormatUint(uint64(v), 10) }
	return map[string]string{
		"HeaderDigest":                   dg(p.HeaderDigest),
		"DataDigest":                     dg(p.DataDigest),
		"MaxConnections":                 u(uint32(p.MaxConnections)),
		"InitialR2T":                     yn(p.InitialR2T),
		"ImmediateData":                  yn(p.ImmediateData),
		"MaxRecvDataSegmentLength":       u(p.InitiatorMaxRecvDataSegmentLength),
		"TargetMaxRecvDataSegmentLength": u(p.TargetMaxRecvDataSegmentLength),
		"MaxBurstLength":                 u(p.MaxBurstLength),
		"FirstBurstLength":               u(p.FirstBurstLength),
		"DefaultTime2Wait":               u(uint32(p.DefaultTime2Wait)),
		"DefaultTime2Retain":             u(uint32(p.DefaultTime2Retain)),
		"MaxOutstandingR2T":              u(uint32(p.MaxOutstandingR2T)),
		"DataPDUInOrder":                 yn(p.DataPDUInOrder),
		"DataSequenceInOrder":            yn(p.DataSequenceInOrder),
		"ErrorRecoveryLevel":             u(uint32(p.ErrorRecoveryLevel)),
	}
}
