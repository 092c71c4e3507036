package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"stave.dev/stave/cluster"
	"stave.dev/stave/cluster/owner"
	"stave.dev/stave/internal/adminapi"
	"stave.dev/stave/internal/floatip"
	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/internal/volume"
	"stave.dev/stave/replication"
	"stave.dev/stave/target/scsi"
	"stave.dev/stave/target/scsi/sense"
)

// Replicated volumes (volume.BackendReplicated): every node named in the
// spec's Replicas holds a copy in DATA/volumes/<name>/replica and runs,
// for the volume:
//
//   - an ownership driver (cluster/owner) that competes for the volume's
//     etcd lease and epoch; the winner reconciles the other in-sync
//     replicas with its copy (replication.OpenVolume) and serves;
//   - an iSCSI target over one LU whose device forwards I/O to the
//     epoch's replication.Volume while this node owns the volume;
//   - ALUA: each holder is one target port group (its index in Replicas
//     plus one) whose relative ports are group<<8 + portal index + 1;
//     the owner's group is active/optimized, the others standby, every
//     group transitioning while no owner serves, so REPORT TARGET PORT
//     GROUPS reads the same on every node once they have all seen the
//     ownership record. SendTargets lists every holder's portals.
//
// Replica writes from the owner arrive through the node's
// replication.Server (replication.listen), which finds the volume's
// store through replicaHost.lookup.

const (
	// replicaDir is the directory of a volume's copy under its volume
	// directory.
	replicaDir = "replica"
	// replicaPoll is how often an owner looks for replicas to resync and
	// every holder refreshes the other holders' portals.
	replicaPoll = 2 * time.Second
	// resyncRetry is the pause before a failed resync of a node is tried
	// again.
	resyncRetry = 5 * time.Second
	// claimStagger delays the claim of the n-th node of Replicas by n
	// times this, so that the preferred owner usually wins when all are up.
	claimStagger = 150 * time.Millisecond
	// growTimeout is how long an owner growing a volume waits for each
	// ISR member to grow its copy (it does when it sees the new spec)
	// before it removes the member from the ISR.
	growTimeout = 20 * time.Second
)

// errTransition is the sense of I/O that reaches a holder while it does
// not serve the volume (an ownership change in progress): NOT READY,
// ASYMMETRIC ACCESS STATE TRANSITION, which multipath retries on another
// path.
var errTransition = sense.New(sense.KeyNotReady, sense.ASCLogicalUnitNotAccessibleTransition)

// replicaHost is the node's side of every replicated volume it holds.
type replicaHost struct {
	log    *slog.Logger
	node   string
	cl     *cluster.Cluster
	epochs *replication.EpochStore
	ttl    time.Duration
	// nports is the number of this node's iSCSI portals.
	nports int
	// floatLink is the interface for floating portal addresses; "":
	// this node holds none. portalPort is the port of the node's first
	// portal, on which a floating address is reached.
	floatLink  string
	portalPort string
	// tls is the client side of replication connections; nil: plain TCP.
	tls *tls.Config
	// cat and replaceAfter: an owner moves the copy of a holder that has
	// been down for replaceAfter to another node (0: never).
	cat          *volume.Catalog
	replaceAfter time.Duration

	// pools is the node's pool: copies of replicated volumes live in it
	// when it exists (openCopy); nil in tests without one.
	pools *poolHost

	mu     sync.Mutex
	stores map[string]replication.Store // by volume, for the replication server
}

func newReplicaHost(log *slog.Logger, node string, cl *cluster.Cluster, epochDir string, ttl time.Duration) (*replicaHost, error) {
	ep, err := replication.OpenEpochStore(epochDir)
	if err != nil {
		return nil, err
	}
	return &replicaHost{log: log, node: node, cl: cl, epochs: ep, ttl: ttl, stores: map[string]replication.Store{}}, nil
}

// lookup is the replication server's ServerConfig.Lookup.
func (h *replicaHost) lookup(name string) (replication.Store, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s, ok := h.stores[name]
	return s, ok
}

// nodeMap returns the cluster's node records by ID (up and down).
func (h *replicaHost) nodeMap(ctx context.Context) map[string]cluster.NodeStatus {
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	ns, err := h.cl.Nodes(ctx)
	if err != nil {
		h.log.Debug("node list for replicated volumes", logkey.Err, err)
		return nil
	}
	m := make(map[string]cluster.NodeStatus, len(ns))
	for _, n := range ns {
		m[n.ID] = n
	}
	return m
}

// replica is this node's part of one replicated volume.
type replica struct {
	h     *replicaHost
	log   *slog.Logger
	spec  atomic.Pointer[volume.Spec] // replaced when a replica moves (setSpec)
	group uint16                      // this node's target port group
	store localCopy
	drv   *owner.Driver
	dev   *replicaDevice
	alua  *aluaPorts
	lu    atomic.Pointer[scsi.LU]

	// rs is the LU's reservation store (setReservations); applied asks
	// the publisher to record the revision the LU enforces (capacity 1).
	rs      atomic.Pointer[cluster.ReservationStore]
	applied chan struct{}

	// fip is the floating portal address while this node serves: the
	// claim's goroutine and its cancel (nil when none runs). Touched
	// only from the driver's Handler calls and close.
	fip struct {
		cancel context.CancelFunc
		done   chan struct{}
	}
	// until is the current lease deadline (Serve) in Unix nanoseconds:
	// the floating address is renewed only before it.
	until atomic.Int64

	cancel context.CancelFunc
	wg     sync.WaitGroup

	// growMu serializes grows (the exporter's and growLagging's);
	// growing is set while growLagging's goroutine runs.
	growMu  sync.Mutex
	growing atomic.Bool

	mu struct {
		sync.Mutex
		vol      *replication.Volume // the epoch's volume while reconciling or serving
		serving  bool
		starts   int                                   // epochs this node started serving
		resync   map[string]replication.ResyncProgress // running resyncs by node
		tried    map[string]time.Time                  // last failed resync by node
		down     map[string]time.Time                  // holders seen down, since when (owner only)
		peers    []string                              // other holders' TargetAddress values
		resyncWG sync.WaitGroup
	}
}

// openReplica opens this node's copy of s, registers it with the
// replication server and starts its ownership driver under ctx (the
// daemon's lifetime). close stops everything.
func (h *replicaHost) openReplica(ctx context.Context, s *volume.Spec, dir string) (*replica, error) {
	idx := slices.Index(s.Replicas, h.node)
	if idx < 0 {
		return nil, fmt.Errorf("stave: volume %s: this node holds no replica of it", s.Name)
	}
	st, err := h.openCopy(ctx, s, dir)
	if err != nil {
		return nil, fmt.Errorf("stave: volume %s: opening its replica: %w", s.Name, err)
	}
	if st.Size() < s.Size {
		if err := st.Resize(s.Size); err != nil {
			_ = st.Close()
			return nil, fmt.Errorf("stave: volume %s: growing its replica: %w", s.Name, err)
		}
	}
	r := &replica{h: h, log: h.log.With(logkey.Volume, s.Name), group: uint16(idx + 1), store: st}
	r.spec.Store(s)
	r.mu.resync = map[string]replication.ResyncProgress{}
	r.mu.tried = map[string]time.Time{}
	r.mu.down = map[string]time.Time{}
	r.applied = make(chan struct{}, 1)
	r.dev = &replicaDevice{store: st}
	r.alua = newALUAPorts(len(s.Replicas), r.group)
	drv, err := owner.New(owner.Config{
		Logger:     h.log,
		Client:     h.cl.Client(),
		Volume:     s.Name,
		Self:       h.node,
		Epochs:     h.epochs,
		EpochKey:   s.ReplicationID(),
		TTL:        h.ttl,
		ClaimDelay: time.Duration(idx) * claimStagger,
		Handler:    r,
	})
	if err != nil {
		_ = st.Close()
		return nil, err
	}
	r.drv = drv
	if c, ok := r.floatConfig(); ok {
		// A daemon that was killed left the address on the interface.
		if err := floatip.Release(c); err != nil {
			r.log.Warn("floating portal address left by an earlier run not removed", logkey.Err, err)
		}
	}
	h.mu.Lock()
	h.stores[s.ReplicationID()] = st
	h.mu.Unlock()
	r.refreshPorts(ctx)
	ctx, r.cancel = context.WithCancel(context.WithoutCancel(ctx))
	r.wg.Add(4)
	go func() {
		defer r.wg.Done()
		// Reservations changed through another holder's ports apply here
		// too (one logical unit across every node).
		_ = h.cl.WatchReservations(ctx, s.Name, func(ctx context.Context) error {
			if lu := r.lu.Load(); lu != nil {
				if err := lu.RefreshReservations(ctx); err != nil {
					return err
				}
				r.kickApplied()
			}
			return nil
		})
	}()
	go func() {
		defer r.wg.Done()
		r.publishApplied(ctx)
	}()
	go func() {
		defer r.wg.Done()
		if err := drv.Run(ctx); err != nil && ctx.Err() == nil {
			r.log.Error("ownership driver stopped", logkey.Err, err)
		}
	}()
	go func() {
		defer r.wg.Done()
		r.watch(ctx)
	}()
	return r, nil
}

// setLU tells the replica the LU that serves it, for ALUA unit
// attentions and reservation refreshes.
func (r *replica) setLU(lu *scsi.LU) { r.lu.Store(lu) }

// close stops the driver (which revokes its lease and stops serving),
// the resyncs and the replication server's access, then closes the copy.
func (r *replica) close() error {
	r.cancel()
	r.wg.Wait()
	r.stopServing("volume closed")
	r.mu.resyncWG.Wait()
	r.h.mu.Lock()
	if id := r.specNow().ReplicationID(); r.h.stores[id] == replication.Store(r.store) {
		delete(r.h.stores, id)
	}
	r.h.mu.Unlock()
	return r.store.Close()
}

// watch follows ownership changes (ALUA state) and, while this node
// serves, resyncs holders that are out of the ISR.
func (r *replica) watch(ctx context.Context) {
	t := time.NewTicker(replicaPoll)
	defer t.Stop()
	lastPorts := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.drv.Changed():
		case <-t.C:
		}
		r.updateALUA()
		r.growLagging(ctx)
		if time.Since(lastPorts) >= 5*replicaPoll {
			r.refreshPorts(ctx)
			lastPorts = time.Now()
		}
		r.resyncMissing(ctx)
		r.replaceLost(ctx)
	}
}

// setReservations hands the replica the LU's reservation store: a PR OUT
// saved through this node while it does not serve waits until the
// serving node enforces it.
func (r *replica) setReservations(rs *cluster.ReservationStore) {
	r.rs.Store(rs)
	rs.SetAfterSave(r.waitApplied)
}

// waitApplied is the reservation store's after-save hook: on a node that
// does not serve the volume, wait until the owner has applied revision
// rev, for at most twice the lease TTL (an owner that cannot see etcd
// fences itself within one TTL, and a new owner refreshes before it
// serves).
func (r *replica) waitApplied(ctx context.Context, rev int64) {
	if r.serving() {
		return
	}
	wait := 2 * r.h.ttl
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if err := r.h.cl.WaitReservationsApplied(wctx, r.specNow().Name, rev); err != nil && ctx.Err() == nil {
		r.log.Warn("the owner did not confirm a reservation change in time; it enforces it at the latest when its lease ends",
			"wait", wait, logkey.Err, err)
	}
}

// kickApplied asks the publisher for a pass (coalesced).
func (r *replica) kickApplied() {
	select {
	case r.applied <- struct{}{}:
	default:
	}
}

// publishApplied records, while this node serves, the reservation
// revision its LU enforces, after every refresh and when serving starts.
func (r *replica) publishApplied(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.applied:
		}
		rs := r.rs.Load()
		if rs == nil || !r.serving() {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, statusTimeout)
		if err := r.h.cl.PutReservationsApplied(pctx, r.specNow().Name, r.h.node, rs.Rev()); err != nil && ctx.Err() == nil {
			r.log.Warn("recording the applied reservation state failed; retried at the next change", logkey.Err, err)
		}
		cancel()
	}
}

// specNow returns the volume's current spec.
func (r *replica) specNow() *volume.Spec { return r.spec.Load() }

// setSpec takes a changed spec of the same volume (a replica moved).
func (r *replica) setSpec(s *volume.Spec) {
	if old := r.spec.Swap(s); !slices.Equal(old.Replicas, s.Replicas) {
		r.log.Info("volume's replicas changed", "replicas", s.Replicas)
	}
}

// grow brings this node's part of the volume to size bytes: its copy
// first (an owner growing the volume waits until every ISR member's copy
// holds size bytes), then, while this node owns the volume, the epoch's
// replication.Volume, which grows once every ISR member's copy has or
// removes the members that do not within growTimeout. The caller then
// resizes the LU (CAPACITY DATA HAS CHANGED).
func (r *replica) grow(ctx context.Context, size int64) error {
	r.growMu.Lock()
	defer r.growMu.Unlock()
	if old := r.store.Size(); old < size {
		if err := r.store.Resize(size); err != nil {
			return fmt.Errorf("stave: volume %s: growing this node's copy from %d to %d bytes: %w", r.specNow().Name, old, size, err)
		}
		r.log.Info("copy grown", logkey.Size, size, "old_size", old)
	}
	r.mu.Lock()
	v := r.mu.vol
	r.mu.Unlock()
	if v == nil || v.Size() >= size {
		return nil
	}
	if err := v.Grow(ctx, size); err != nil {
		return fmt.Errorf("stave: volume %s: growing it to %d bytes: %w", r.specNow().Name, size, err)
	}
	return nil
}

// growLagging, on the serving owner, grows the epoch's volume in the
// background when it is smaller than the spec (it was opened while the
// copy grew, or a grow failed), one grow at a time, and resizes the LU.
func (r *replica) growLagging(ctx context.Context) {
	r.mu.Lock()
	v, serving := r.mu.vol, r.mu.serving
	r.mu.Unlock()
	size := r.specNow().Size
	if !serving || v == nil || v.Size() >= size || !r.growing.CompareAndSwap(false, true) {
		return
	}
	r.mu.Lock()
	r.mu.resyncWG.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.mu.resyncWG.Done()
		defer r.growing.Store(false)
		if err := r.grow(ctx, size); err != nil {
			if ctx.Err() == nil {
				r.log.Warn("served volume smaller than its spec; growing it failed, retried", logkey.Size, v.Size(), logkey.Err, err)
			}
			return
		}
		if lu := r.lu.Load(); lu != nil {
			lu.Resize()
		}
	}()
}

// replaceLost, on the serving owner, moves the copy of a holder that has
// been down for replaceAfter to another node (one per pass): the holder
// leaves the ISR if it is still in it, the spec names the new node at the
// same position, and the new node's copy is then resynced like a
// returning one.
func (r *replica) replaceLost(ctx context.Context) {
	r.mu.Lock()
	v, serving := r.mu.vol, r.mu.serving
	if !serving {
		clear(r.mu.down)
	}
	r.mu.Unlock()
	if !serving || v == nil || r.h.replaceAfter <= 0 || r.h.cat == nil {
		return
	}
	sp := r.specNow()
	nodes := r.h.nodeMap(ctx)
	if nodes == nil {
		return
	}
	now := time.Now()
	for _, id := range sp.Replicas {
		if id == r.h.node {
			continue
		}
		r.mu.Lock()
		if n, ok := nodes[id]; ok && n.State == cluster.NodeUp {
			delete(r.mu.down, id)
			r.mu.Unlock()
			continue
		}
		since, seen := r.mu.down[id]
		if !seen {
			r.mu.down[id] = now
		}
		r.mu.Unlock()
		if !seen || now.Sub(since) < r.h.replaceAfter {
			continue
		}
		pick, err := pickReplacement(nodes, sp)
		if err != nil {
			r.log.Warn("a holder is down but no node can take its copy", logkey.Node, id, "down_for", now.Sub(since).Round(time.Second), logkey.Err, err)
			r.mu.Lock()
			r.mu.down[id] = now // warn again after another replaceAfter
			r.mu.Unlock()
			continue
		}
		if slices.Contains(r.drv.Status().ISR, id) {
			if err := r.drv.ISR().Remove(ctx, v.Epoch(), id); err != nil {
				r.log.Warn("a holder that is down could not leave the ISR; its copy stays for now", logkey.Node, id, logkey.Err, err)
				continue
			}
		}
		ns, err := r.h.cat.ReplaceReplica(ctx, sp.Name, id, pick)
		if err != nil {
			r.log.Warn("moving the copy of a holder that is down failed; retried later", logkey.Node, id, logkey.Err, err)
			continue
		}
		r.log.Warn("holder down for too long: its copy moves to another node", "from", id, "to", pick,
			"down_for", now.Sub(since).Round(time.Second))
		r.setSpec(ns)
		r.mu.Lock()
		delete(r.mu.down, id)
		r.mu.Unlock()
		return
	}
}

// pickReplacement chooses the node that takes over a copy of sp: up, with
// a replication address, room, not a holder, in a zone no remaining holder
// is in when there is one.
func pickReplacement(nodes map[string]cluster.NodeStatus, sp *volume.Spec) (string, error) {
	used := map[string]bool{}
	var free, all []cluster.NodeStatus
	for _, id := range sp.Replicas {
		if n, ok := nodes[id]; ok && n.State == cluster.NodeUp && n.Labels["zone"] != "" {
			used[n.Labels["zone"]] = true
		}
	}
	for id, n := range nodes {
		if slices.Contains(sp.Replicas, id) {
			continue
		}
		all = append(all, n)
		if z := n.Labels["zone"]; z == "" || !used[z] {
			free = append(free, n)
		}
	}
	if got, err := placeReplicas(free, 1, sp.Size); err == nil {
		return got[0], nil
	}
	got, err := placeReplicas(all, 1, sp.Size)
	if err != nil {
		return "", err
	}
	return got[0], nil
}

// updateALUA recomputes the port groups' states from the driver and
// raises ASYMMETRIC ACCESS STATE CHANGED when they changed.
func (r *replica) updateALUA() {
	st := r.drv.Status()
	r.mu.Lock()
	serving := r.mu.serving
	r.mu.Unlock()
	ownerGroup := uint16(0)
	if i := slices.Index(r.specNow().Replicas, st.Owner); i >= 0 && st.Owner != "" {
		ownerGroup = uint16(i + 1)
	}
	if ownerGroup == r.group && !serving {
		ownerGroup = 0 // claimed but not serving yet: transitioning
	}
	if r.alua.setOwner(ownerGroup) {
		if lu := r.lu.Load(); lu != nil {
			lu.PortStateChanged()
		}
	}
}

// refreshPorts reads the holders' portals from their node records: the
// other holders' addresses for SendTargets and every group's port count.
func (r *replica) refreshPorts(ctx context.Context) {
	nodes := r.h.nodeMap(ctx)
	var peers []string
	reps := r.specNow().Replicas
	counts := make([]int, len(reps))
	for i, id := range reps {
		if id == r.h.node {
			counts[i] = max(r.h.nports, 1)
			continue
		}
		n, ok := nodes[id]
		counts[i] = max(len(n.Portals), 1)
		if !ok {
			continue
		}
		for _, p := range n.Portals {
			peers = append(peers, p+",1")
		}
	}
	r.alua.setCounts(counts)
	r.mu.Lock()
	r.mu.peers = peers
	r.mu.Unlock()
}

// lead returns the TargetAddress of the volume's floating portal address
// (announced first by SendTargets), nil when it has none.
func (r *replica) lead() []string {
	sp := r.specNow()
	p, err := netip.ParsePrefix(sp.FloatingIP)
	if err != nil || r.h.portalPort == "" {
		return nil
	}
	return []string{net.JoinHostPort(p.Addr().String(), r.h.portalPort) + ",1"}
}

// peers returns the other holders' TargetAddress values.
func (r *replica) peers() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.mu.peers)
}

// replicationPeers returns the replication addresses of nodes.
func (r *replica) replicationPeers(ctx context.Context, nodes []string) []replication.Peer {
	m := r.h.nodeMap(ctx)
	out := make([]replication.Peer, 0, len(nodes))
	for _, id := range nodes {
		// A node without a known address is still passed: dialling ""
		// fails and the volume removes it from the ISR.
		out = append(out, replication.Peer{Node: id, Addr: m[id].Replication})
	}
	return out
}

// Reconcile implements owner.Handler: open the epoch's volume, which
// brings every other ISR member to this node's content (or removes it
// from the ISR), and resume the reservations that other nodes wrote.
func (r *replica) Reconcile(ctx context.Context, epoch uint64, members []string) error {
	r.log.Info("owner: reconciling replicas", "epoch", epoch, "members", members)
	v, err := replication.OpenVolume(ctx, replication.VolumeConfig{
		Logger:   r.log.With(logkey.Component, "replication"),
		Name:     r.specNow().ReplicationID(),
		Node:     r.h.node,
		Epoch:    epoch,
		Local:    r.store,
		Replicas: r.replicationPeers(ctx, members),
		// A replica that does not answer (partitioned) must not hold the
		// new owner back for long: it leaves the ISR and is resynced later.
		DialTimeout: max(time.Second, r.h.ttl/2),
		ISR:         r.drv.ISR(),
		// A replica slower than this is dropped from the ISR (and resynced
		// later); a dead one fails at once (its connection breaks).
		AckTimeout:  max(5*time.Second, 2*r.h.ttl),
		GrowTimeout: growTimeout,
		TLS:         r.h.tls,
	})
	if err != nil {
		return err
	}
	if lu := r.lu.Load(); lu != nil {
		if err := lu.RefreshReservations(ctx); err != nil {
			v.Fence(err)
			_ = v.Close()
			return fmt.Errorf("loading the volume's reservations: %w", err)
		}
	}
	r.mu.Lock()
	old := r.mu.vol
	r.mu.vol, r.mu.serving = v, false
	r.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	return nil
}

// Serve implements owner.Handler: acknowledge I/O until until.
func (r *replica) Serve(epoch uint64, until time.Time) {
	r.mu.Lock()
	v := r.mu.vol
	if v == nil || v.Epoch() != epoch {
		r.mu.Unlock()
		r.log.Error("owner: asked to serve an epoch that was not reconciled", "epoch", epoch)
		return
	}
	v.SetLeaseDeadline(until)
	r.until.Store(until.UnixNano())
	first := !r.mu.serving
	r.mu.serving = true
	if first {
		r.mu.starts++
	}
	r.mu.Unlock()
	if first {
		r.claimFloating()
		r.kickApplied()
		r.dev.cur.Store(v)
		r.log.Info("owner: serving", "epoch", epoch, "isr", v.Members())
		r.updateALUA()
	}
}

// Stop implements owner.Handler: stop acknowledging at once.
func (r *replica) Stop(epoch uint64, reason string) {
	r.log.Info("owner: stopped serving", "epoch", epoch, "reason", reason)
	r.stopServing(reason)
	r.updateALUA()
}

// floatConfig returns the volume's floating portal address on this node,
// ok false when it has none or the node has no floating interface.
func (r *replica) floatConfig() (floatip.Config, bool) {
	sp := r.specNow()
	if sp.FloatingIP == "" || r.h.floatLink == "" {
		return floatip.Config{}, false
	}
	p, err := netip.ParsePrefix(sp.FloatingIP)
	if err != nil {
		return floatip.Config{}, false
	}
	// The kernel drops the address by itself when the lease could have
	// lapsed, so a killed daemon's node stops answering for it.
	return floatip.Config{Link: r.h.floatLink, Prefix: p, Logger: r.log, Lifetime: r.h.ttl}, true
}

// claimFloating adds and announces the floating address in a goroutine
// (announcements take a few hundred ms); releaseFloating undoes it.
func (r *replica) claimFloating() {
	c, ok := r.floatConfig()
	if !ok || r.fip.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	r.fip.cancel, r.fip.done = cancel, done
	go func() {
		defer close(done)
		if err := floatip.Claim(ctx, c); err != nil && ctx.Err() == nil {
			r.log.Error("floating portal address not claimed: hosts without multipath cannot reach the volume through it", logkey.Err, err)
		}
		// Renew the address's lifetime (the lease TTL) while the lease is
		// certainly alive, off the driver's loop: a node that stops
		// getting keepalives loses the address with its lease.
		t := time.NewTicker(max(r.h.ttl/4, 100*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if time.Now().UnixNano() >= r.until.Load() {
				continue
			}
			if err := floatip.Renew(c); err != nil && ctx.Err() == nil {
				r.log.Warn("floating portal address not renewed", logkey.Err, err)
			}
		}
	}()
}

// releaseFloating stops a running claim and removes the address.
func (r *replica) releaseFloating() {
	if r.fip.cancel == nil {
		return
	}
	r.fip.cancel()
	<-r.fip.done
	r.fip.cancel, r.fip.done = nil, nil
	if c, ok := r.floatConfig(); ok {
		if err := floatip.Release(c); err != nil {
			r.log.Warn("floating portal address not removed", logkey.Err, err)
		}
	}
}

// stopServing fences and closes the epoch's volume, if any, and gives
// up the floating address.
func (r *replica) stopServing(reason string) {
	r.releaseFloating()
	r.dev.cur.Store(nil)
	r.mu.Lock()
	v := r.mu.vol
	r.mu.vol, r.mu.serving = nil, false
	r.mu.Unlock()
	if v != nil {
		v.Fence(errors.New(reason))
		_ = v.Close()
	}
}

// resyncMissing starts a resync of every holder that is out of the ISR,
// up, and not being resynced or recently failed, while this node serves.
func (r *replica) resyncMissing(ctx context.Context) {
	r.mu.Lock()
	v, serving := r.mu.vol, r.mu.serving
	r.mu.Unlock()
	if !serving || v == nil {
		return
	}
	isr := r.drv.Status().ISR
	var want []string
	for _, id := range r.specNow().Replicas {
		if id != r.h.node && !slices.Contains(isr, id) && !slices.Contains(v.Members(), id) {
			want = append(want, id)
		}
	}
	if len(want) == 0 {
		return
	}
	nodes := r.h.nodeMap(ctx)
	for _, id := range want {
		n, ok := nodes[id]
		if !ok || n.State != cluster.NodeUp || n.Replication == "" {
			continue
		}
		r.mu.Lock()
		_, running := r.mu.resync[id]
		recent := time.Since(r.mu.tried[id]) < resyncRetry
		if running || recent {
			r.mu.Unlock()
			continue
		}
		r.mu.resync[id] = replication.ResyncProgress{Node: id}
		r.mu.resyncWG.Add(1)
		r.mu.Unlock()
		peer := replication.Peer{Node: id, Addr: n.Replication}
		go func() {
			defer r.mu.resyncWG.Done()
			r.log.Info("resync of a replica started", logkey.Node, id)
			p, err := v.Resync(ctx, peer, func(p replication.ResyncProgress) {
				r.mu.Lock()
				r.mu.resync[id] = p
				r.mu.Unlock()
			})
			r.mu.Lock()
			delete(r.mu.resync, id)
			if err != nil {
				r.mu.tried[id] = time.Now()
			}
			r.mu.Unlock()
			if err != nil {
				r.log.Warn("resync of a replica failed; retried later", logkey.Node, id, logkey.Err, err)
				return
			}
			r.log.Info("replica back in sync", logkey.Node, id, "progress", fmt.Sprintf("%+v", p))
		}()
	}
}

// replicationTLS loads the mutual-TLS configuration of replication
// connections (replication.tls_*): the server side for the node's
// replication listener, the client side for the owner's links. Both nil
// when TLS is not configured.
func replicationTLS(certFile, keyFile, caFile string) (server, client *tls.Config, err error) {
	if certFile == "" {
		return nil, nil, nil
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("replication.tls_cert/tls_key: %w", err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, nil, fmt.Errorf("replication.tls_ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, nil, fmt.Errorf("replication.tls_ca: %s holds no PEM certificate", caFile)
	}
	server = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	client = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, RootCAs: pool}
	return server, client, nil
}

// hasReplicaData reports whether the volume directory dir holds a copy.
func hasReplicaData(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, replicaDir))
	return err == nil
}

// replicaDevice is the LU's BlockDevice of a replicated volume: the
// epoch's replication.Volume while this node serves, NOT READY
// (transition) otherwise.
type replicaDevice struct {
	// store is this node's copy: its size is the device's while this node
	// does not serve (READ CAPACITY on standby ports).
	store interface{ Size() int64 }
	cur   atomic.Pointer[replication.Volume]
}

var _ scsi.BlockDevice = (*replicaDevice)(nil)

// vol returns the serving volume or the transition error.
func (d *replicaDevice) vol() (*replication.Volume, error) {
	v := d.cur.Load()
	if v == nil {
		return nil, errTransition
	}
	return v, nil
}

// mapErr turns a fenced volume's error into the transition sense.
func mapErr(err error) error {
	if err != nil && (errors.Is(err, replication.ErrFenced) || errors.Is(err, replication.ErrClosed)) {
		e := *errTransition
		e.Cause = err
		return &e
	}
	return err
}

// Size implements scsi.BlockDevice: the serving volume's size (which
// grows only once every ISR member's copy has), else the local copy's.
func (d *replicaDevice) Size() int64 {
	if v := d.cur.Load(); v != nil {
		return v.Size()
	}
	return d.store.Size()
}

// ReadAt implements scsi.BlockDevice.
func (d *replicaDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	v, err := d.vol()
	if err != nil {
		return err
	}
	return mapErr(v.ReadAt(ctx, p, off))
}

// WriteAt implements scsi.BlockDevice.
func (d *replicaDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	v, err := d.vol()
	if err != nil {
		return err
	}
	return mapErr(v.WriteAt(ctx, p, off, fua))
}

// Flush implements scsi.BlockDevice.
func (d *replicaDevice) Flush(ctx context.Context) error {
	v, err := d.vol()
	if err != nil {
		return err
	}
	return mapErr(v.Flush(ctx))
}

// Unmap implements scsi.BlockDevice.
func (d *replicaDevice) Unmap(ctx context.Context, off, length int64) error {
	v, err := d.vol()
	if err != nil {
		return err
	}
	return mapErr(v.Unmap(ctx, off, length))
}

// aluaPorts is the scsi.PortState of a replicated volume: one group per
// holder. It is read on every command, so the state is one atomic value.
type aluaPorts struct {
	self uint16
	mu   sync.Mutex // serialises writers
	cur  atomic.Pointer[aluaSnapshot]
}

// aluaSnapshot is an immutable view of the groups.
type aluaSnapshot struct {
	owner  uint16 // group of the serving owner; 0 when none
	groups []scsi.PortGroup
}

func newALUAPorts(n int, self uint16) *aluaPorts {
	a := &aluaPorts{self: self}
	counts := make([]int, n)
	for i := range counts {
		counts[i] = 1
	}
	a.cur.Store(buildALUA(0, counts))
	return a
}

// buildALUA makes the groups for owner and per-group port counts.
func buildALUA(owner uint16, counts []int) *aluaSnapshot {
	s := &aluaSnapshot{owner: owner}
	for i, n := range counts {
		g := uint16(i + 1)
		pg := scsi.PortGroup{ID: g, State: scsi.ALUAStandby}
		switch {
		case owner == 0:
			pg.State = scsi.ALUATransitioning
		case owner == g:
			pg.State, pg.Preferred = scsi.ALUAActiveOptimized, true
		}
		for j := range n {
			pg.Ports = append(pg.Ports, g<<8+uint16(j+1))
		}
		s.groups = append(s.groups, pg)
	}
	return s
}

// counts returns the port count of each group.
func (s *aluaSnapshot) counts() []int {
	out := make([]int, len(s.groups))
	for i, g := range s.groups {
		out[i] = len(g.Ports)
	}
	return out
}

// setOwner makes group owner active/optimized (0: none, all
// transitioning) and reports whether anything changed.
func (a *aluaPorts) setOwner(owner uint16) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	cur := a.cur.Load()
	if cur.owner == owner {
		return false
	}
	a.cur.Store(buildALUA(owner, cur.counts()))
	return true
}

// setCounts sets the number of ports of each group.
func (a *aluaPorts) setCounts(counts []int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	cur := a.cur.Load()
	if slices.Equal(cur.counts(), counts) {
		return
	}
	a.cur.Store(buildALUA(cur.owner, counts))
}

// PortGroups implements scsi.PortState.
func (a *aluaPorts) PortGroups() []scsi.PortGroup { return a.cur.Load().groups }

// AccessState implements scsi.PortState.
func (a *aluaPorts) AccessState(group uint16) scsi.ALUAState {
	s := a.cur.Load()
	if int(group) < 1 || int(group) > len(s.groups) {
		return scsi.ALUAUnavailable
	}
	return s.groups[group-1].State
}

// serving reports whether this node serves the volume now.
func (r *replica) serving() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mu.serving
}

var _ adminapi.ReplicaReporter = (*exporter)(nil)

// ReplicaStatus implements adminapi.ReplicaReporter: the driver's view on
// a holder, else the ownership record in etcd.
func (e *exporter) ReplicaStatus(ctx context.Context, sp *volume.Spec) (*adminapi.Replication, error) {
	out := &adminapi.Replication{Replicas: slices.Clone(sp.Replicas)}
	e.mu.RLock()
	x := e.mu.byIQ[sp.TargetName()]
	e.mu.RUnlock()
	if x != nil && x.rep != nil && x.spec.UUID == sp.UUID {
		st := x.rep.drv.Status()
		out.Owner, out.Epoch, out.ISR, out.State = st.Owner, st.Epoch, st.ISR, st.State
		x.rep.mu.Lock()
		for _, p := range x.rep.mu.resync {
			out.Resync = append(out.Resync, adminapi.ResyncStatus{Node: p.Node, Regions: p.RegionsDone, Total: p.Regions,
				Sent: p.RegionsCopied, Bytes: p.BytesSent})
		}
		x.rep.mu.Unlock()
		slices.SortFunc(out.Resync, func(a, b adminapi.ResyncStatus) int { return strings.Compare(a.Node, b.Node) })
		return out, nil
	}
	if e.cl == nil {
		return out, nil
	}
	rec, err := owner.Read(ctx, e.cl.Client(), sp.Name)
	if err != nil {
		return nil, err
	}
	out.Owner, out.Epoch = string(rec.Owner), uint64(rec.Epoch)
	for _, n := range rec.ISR {
		out.ISR = append(out.ISR, string(n))
	}
	return out, nil
}
