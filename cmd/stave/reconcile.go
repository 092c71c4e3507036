package main

import (
	"context"
	"slices"
	"time"

	"stave.dev/stave/cluster"
	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/internal/volume"
)

// resyncInterval is how often the reconcile loop makes a pass without
// being asked, retrying exports that failed.
const resyncInterval = 30 * time.Second

// statusTimeout bounds one status write to etcd.
const statusTimeout = 5 * time.Second

// volumeStatus is the part of cluster.VolumeStatus that changes; the
// loop writes a status only when it differs from the last one written.
type volumeStatus struct {
	exported bool
	size     int64
	err      string
}

// mine reports whether this node serves the volume: its spec names this
// node, or no node (specs written before etcd belong to the node whose
// data dir held them), or this node holds one of its replicas.
func (e *exporter) mine(s *volume.Spec) bool {
	return s.Node == "" || s.Node == e.node || slices.Contains(s.Replicas, e.node)
}

// reportsStatus reports whether this node writes the volume's status: the
// node that serves it, which for a replicated volume is its current owner.
func (e *exporter) reportsStatus(s *volume.Spec) bool {
	if !s.Replicated() {
		return true
	}
	e.mu.RLock()
	x := e.mu.byIQ[s.TargetName()]
	e.mu.RUnlock()
	return x != nil && x.rep != nil && x.rep.serving()
}

// poke asks the reconcile loop for a pass (coalesced).
func (e *exporter) poke() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// reconcile runs passes until ctx is done: one at once, then one after
// every catalogue change (a spec written here or on any node and seen
// through the etcd watch), after every poke and every resyncInterval.
// It returns nil when ctx is done.
func (e *exporter) reconcile(ctx context.Context) error {
	t := time.NewTicker(resyncInterval)
	defer t.Stop()
	for {
		e.pass(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-e.cat.Changed():
		case <-e.kick:
		case <-t.C:
		}
	}
}

// pass makes the exports follow the catalogue once:
//
//  1. A spec of this node that is not exported, not held down by an API
//     Unexport and not Pending (its creator exports it) is exported.
//  2. An exported volume whose spec changed gets the change: ACL and
//     CHAP for the next login, a larger size (grow, CAPACITY DATA HAS
//     CHANGED).
//  3. An exported volume whose spec is gone, or now names another node,
//     is unexported (its sessions are closed).
//  4. Each volume's status (exported, size, last error) is written to
//     etcd when it changed; the status and reservations of a volume whose
//     spec was deleted behind the API's back are deleted.
func (e *exporter) pass(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	specs := e.cat.List()
	want := make(map[string]*volume.Spec, len(specs))
	for _, s := range specs {
		if e.mine(s) {
			want[s.Name] = s
		}
	}
	e.opMu.Lock()
	for name := range e.held {
		if _, ok := want[name]; !ok {
			delete(e.held, name) // deleted: nothing to hold any more
		}
	}
	e.mu.RLock()
	var gone []string
	var dropData []*volume.Spec // replicated volumes whose copy here goes with them
	for _, x := range e.mu.byIQ {
		if s, ok := want[x.spec.Name]; !ok || s.UUID != x.spec.UUID {
			gone = append(gone, x.spec.Name)
			if x.rep != nil {
				// Gone, another volume of the name, or its copy moved
				// off this node.
				if cur, err := e.cat.Get(x.spec.Name); err != nil || cur.UUID != x.spec.UUID || !e.mine(cur) {
					dropData = append(dropData, x.spec)
				}
			}
		}
	}
	e.mu.RUnlock()
	for _, name := range gone {
		e.unexportLocked(name)
	}
	// A copy left by a node that no longer holds the volume (its copy
	// moved elsewhere while it was down) is stale: drop it.
	if e.reps != nil {
		for _, s := range specs {
			if s.Replicated() && !e.mine(s) && !slices.ContainsFunc(dropData, func(d *volume.Spec) bool { return d.Name == s.Name }) &&
				e.reps.hasCopy(s, e.cat.Dir(s.Name)) {
				dropData = append(dropData, s)
			}
		}
	}
	if e.reps != nil {
		e.reps.dropOrphanCopies(ctx, specs)
	}
	for _, s := range dropData {
		if err := e.reps.removeReplicaData(s, e.cat.Dir(s.Name)); err != nil {
			e.log.Warn("replica of a deleted volume not removed", logkey.Volume, s.Name, logkey.Err, err)
		} else {
			e.log.Info("replica of a deleted volume removed", logkey.Volume, s.Name)
		}
	}
	statuses := make(map[string]volumeStatus, len(want))
	for _, s := range specs {
		if !e.mine(s) || e.held[s.Name] || e.cat.Pending(s.Name) {
			continue
		}
		err := e.exportLocked(ctx, s)
		st := volumeStatus{exported: e.Exported(s.Name), size: s.Size}
		if err != nil {
			st.err = err.Error()
			if e.failed[s.Name] != st.err {
				msg := "volume not exported"
				if st.exported {
					msg = "volume exported but not in step with its spec"
				}
				e.log.Error(msg, logkey.Volume, s.Name, logkey.Err, err)
			}
			e.failed[s.Name] = st.err
		} else {
			delete(e.failed, s.Name)
		}
		// A replicated volume's status is its owner's to write; the other
		// holders only log their errors.
		if e.reportsStatus(s) {
			statuses[s.Name] = st
		}
	}
	for name := range e.failed {
		if _, ok := want[name]; !ok {
			delete(e.failed, name)
		}
	}
	var changed []string
	for name, st := range statuses {
		if e.status[name] != st {
			changed = append(changed, name)
		}
	}
	var forget []string
	for name := range e.status {
		if _, ok := statuses[name]; !ok {
			delete(e.status, name)
			if _, err := e.cat.Get(name); err != nil {
				forget = append(forget, name) // the spec is gone, not just held or moved
			}
		}
	}
	e.opMu.Unlock()
	if e.cl == nil {
		return
	}
	for _, name := range forget {
		sctx, cancel := context.WithTimeout(ctx, statusTimeout)
		if err := e.cl.ForgetVolume(sctx, name); err != nil {
			e.log.Warn("status and reservations of a deleted volume left in etcd", logkey.Volume, name, logkey.Err, err)
		}
		cancel()
	}
	for _, name := range changed {
		st := statuses[name]
		sctx, cancel := context.WithTimeout(ctx, statusTimeout)
		err := e.cl.PutVolumeStatus(sctx, name, cluster.VolumeStatus{Node: e.node, Exported: st.exported, Size: st.size,
			Error: st.err, Updated: time.Now().UTC()})
		cancel()
		if err != nil {
			e.log.Warn("volume status not written to etcd; retried at the next pass", logkey.Volume, name, logkey.Err, err)
			continue
		}
		e.opMu.Lock()
		e.status[name] = st
		e.opMu.Unlock()
	}
}
