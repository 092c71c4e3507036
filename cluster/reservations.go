package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/target/scsi/pr"
)

// ReservationStore is the pr.Store of one volume in etcd: the State as
// JSON at /stave/v1/reservations/<volume>. Save is a compare-and-swap on
// the revision that the last Load or Save saw, so a node that lost the
// volume cannot overwrite the state its successor wrote, and two nodes
// that export the volume cannot overwrite each other's PERSISTENT RESERVE
// OUT; it fails with an error wrapping both ErrConflict and
// pr.ErrConflict instead, and the pr.Manager reloads and decides again.
// An etcd write is durable (fsynced on a quorum) when it returns, which is
// what pr.Store asks.
//
// It is a pr.SharedStore: every node that exports the volume has its own
// ReservationStore and pr.Manager over the one key, and runs
// WatchReservations to refresh its Manager when another node changes it.
//
// The Manager serialises the calls; a ReservationStore is not safe for
// other concurrent use.
type ReservationStore struct {
	c    *Cluster
	name string
	rev  atomic.Int64 // mod revision of the key as last seen; 0: absent
	// afterSave, when set, runs after every successful Save with the
	// revision it wrote (SetAfterSave).
	afterSave func(ctx context.Context, rev int64)
}

// SetAfterSave makes fn run after every successful Save, with the etcd
// revision of the saved state, before Save returns: a node that does not
// serve a replicated volume waits there until the serving node has
// applied the change (WaitReservationsApplied), so that a PERSISTENT
// RESERVE OUT completed through any port is in force on the owner. Call
// it before the store is used.
func (r *ReservationStore) SetAfterSave(fn func(ctx context.Context, rev int64)) { r.afterSave = fn }

// Rev returns the mod revision of the state the store last loaded or
// saved (0: none).
func (r *ReservationStore) Rev() int64 { return r.rev.Load() }

var _ pr.SharedStore = (*ReservationStore)(nil)

// Reservations returns the reservation store of the named volume.
func (c *Cluster) Reservations(volume string) *ReservationStore {
	return &ReservationStore{c: c, name: volume}
}

// Shared implements pr.SharedStore: other nodes write the same key.
func (r *ReservationStore) Shared() bool { return true }

// Load implements pr.Store.
func (r *ReservationStore) Load(ctx context.Context) (pr.State, error) {
	resp, err := r.c.cli.Get(ctx, ReservationKey(r.name))
	if err != nil {
		return pr.State{}, fmt.Errorf("%w: reservations of %q: %v", ErrUnavailable, r.name, err)
	}
	if len(resp.Kvs) == 0 {
		r.rev.Store(0)
		return pr.State{}, nil
	}
	var s pr.State
	if err := json.Unmarshal(resp.Kvs[0].Value, &s); err != nil {
		return pr.State{}, fmt.Errorf("%w: %s: %v", pr.ErrCorruptState, ReservationKey(r.name), err)
	}
	r.rev.Store(resp.Kvs[0].ModRevision)
	return s, nil
}

// Save implements pr.Store.
func (r *ReservationStore) Save(ctx context.Context, s pr.State) error {
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	k := ReservationKey(r.name)
	resp, err := r.c.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", r.rev.Load())).
		Then(clientv3.OpPut(k, string(b))).Commit()
	if err != nil {
		return fmt.Errorf("%w: saving reservations of %q: %v", ErrUnavailable, r.name, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: %w: reservations of volume %q were changed by another node", ErrConflict, pr.ErrConflict, r.name)
	}
	r.rev.Store(resp.Header.Revision)
	if r.afterSave != nil {
		r.afterSave(ctx, resp.Header.Revision)
	}
	return nil
}

// reservationsApplied is the value of a volume's reservations-applied key.
type reservationsApplied struct {
	Node string `json:"node"`
	Rev  int64  `json:"rev"`
}

// reservationsAppliedKey is where the node serving a replicated volume
// records the revision of the reservation state its LU enforces (under
// the volume's keys, so it goes with the volume).
func reservationsAppliedKey(volume string) string { return volumeKeys(volume) + "reservations-applied" }

// PutReservationsApplied records that node, serving the volume, enforces
// the reservation state of etcd revision rev.
func (c *Cluster) PutReservationsApplied(ctx context.Context, volume, node string, rev int64) error {
	b, err := json.Marshal(reservationsApplied{Node: node, Rev: rev})
	if err != nil {
		return err
	}
	// Only while the spec exists, so the key never outlives the volume.
	_, err = c.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(VolumeSpecKey(volume)), ">", 0)).
		Then(clientv3.OpPut(reservationsAppliedKey(volume), string(b))).Commit()
	if err != nil {
		return fmt.Errorf("%w: recording applied reservations of %q: %v", ErrUnavailable, volume, err)
	}
	return nil
}

// WaitReservationsApplied waits until the node serving the volume has
// recorded (PutReservationsApplied) a revision of at least rev, or ctx
// ends. It returns nil once the revision is applied.
func (c *Cluster) WaitReservationsApplied(ctx context.Context, volume string, rev int64) error {
	k := reservationsAppliedKey(volume)
	applied := func(b []byte) bool {
		var a reservationsApplied
		return json.Unmarshal(b, &a) == nil && a.Rev >= rev
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, err := c.cli.Get(ctx, k)
	if err != nil {
		return err
	}
	if len(resp.Kvs) > 0 && applied(resp.Kvs[0].Value) {
		return nil
	}
	for wr := range c.cli.Watch(ctx, k, clientv3.WithRev(resp.Header.Revision+1)) {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			if ev.Kv != nil && applied(ev.Kv.Value) {
				return nil
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("cluster: watch of applied reservations ended")
}

// Backoff of WatchReservations after a failed watch or callback.
const (
	watchRetryMin = 100 * time.Millisecond
	watchRetryMax = 5 * time.Second
)

// WatchReservations calls fn each time the reservations of volume change
// in etcd (a PERSISTENT RESERVE OUT through any node, or the volume's
// deletion), until ctx ends; it then returns ctx.Err(). The daemon runs
// it, in a goroutine it owns, for every volume it exports, with fn the
// LU's RefreshReservations.
//
//  1. fn is called once as soon as the watch is established, so that
//     changes made before it are not missed, and once more each time the
//     watch is established again.
//  2. fn is called from one goroutine, never concurrently with itself.
//     Changes that arrive while it runs are coalesced into one more call.
//  3. When fn fails (etcd unreachable), it is called again after a
//     backoff (100 ms doubling to 5 s) even if nothing else changes, and
//     a warning is logged.
//  4. When the watch fails (etcd unreachable, this member lost its leader,
//     the revision was compacted), a warning is logged and the watch is
//     established again after the same backoff.
func (c *Cluster) WatchReservations(ctx context.Context, volume string, fn func(context.Context) error) error {
	log := c.log.With(logkey.Volume, volume)
	backoff := watchRetryMin
	for {
		established, err := c.watchReservations(ctx, ReservationKey(volume), fn, log)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if established {
			backoff = watchRetryMin
		}
		log.Warn("reservation watch failed; watching again", logkey.Err, err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, watchRetryMax)
	}
}

// watchReservations runs one etcd watch of key for WatchReservations. It
// returns when the watch fails or ctx ends, reporting whether the watch
// was established.
func (c *Cluster) watchReservations(ctx context.Context, key string, fn func(context.Context) error, log *slog.Logger) (bool, error) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wc := c.cli.Watch(wctx, key, clientv3.WithCreatedNotify())
	established, dirty := false, false
	backoff := watchRetryMin
	var retry *time.Timer // non-nil while a failed fn waits for its retry
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	for {
		var retryC <-chan time.Time
		if retry != nil {
			retryC = retry.C
		}
		select {
		case <-ctx.Done():
			return established, ctx.Err()
		case wr, ok := <-wc:
			if !ok {
				return established, fmt.Errorf("%w: watch of %s closed", ErrUnavailable, key)
			}
			if err := wr.Err(); err != nil {
				return established, fmt.Errorf("%w: watch of %s: %v", ErrUnavailable, key, err)
			}
			if wr.Created {
				established = true
			}
			// Created (catch up) or changed: refresh. A response of
			// progress only (no events) is not a change.
			dirty = dirty || wr.Created || len(wr.Events) > 0
		case <-retryC:
			retry = nil
		}
		if !dirty || retry != nil {
			continue
		}
		// Coalesce the responses already queued into this call; a failure
		// among them ends the watch after it.
		var failed error
	drain:
		for {
			select {
			case wr, ok := <-wc:
				switch {
				case !ok:
					failed = fmt.Errorf("%w: watch of %s closed", ErrUnavailable, key)
					break drain
				case wr.Err() != nil:
					failed = fmt.Errorf("%w: watch of %s: %v", ErrUnavailable, key, wr.Err())
					break drain
				}
			default:
				break drain
			}
		}
		err := fn(ctx)
		if failed != nil {
			return established, failed
		}
		if err != nil {
			if ctx.Err() != nil {
				return established, ctx.Err()
			}
			log.Warn("refreshing reservations failed; retrying", logkey.Err, err, "retry_in", backoff)
			retry = time.NewTimer(backoff)
			backoff = min(2*backoff, watchRetryMax)
			continue
		}
		dirty, backoff = false, watchRetryMin
	}
}

// MigrateReservations imports the pr.FileStore file at path (an older
// data directory's DATA/volumes/<name>/pr.json) into etcd unless etcd has
// state for the volume already, then renames the file to
// path+".migrated". A missing file is nothing to do.
func (c *Cluster) MigrateReservations(ctx context.Context, volume, path string) error {
	st, err := pr.FileStore{Path: path}.Load(ctx)
	if err != nil {
		return err
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	k := ReservationKey(volume)
	if _, err := c.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, string(b))).Commit(); err != nil {
		return fmt.Errorf("%w: migrating reservations of %q: %v", ErrUnavailable, volume, err)
	}
	if err := os.Rename(path, path+".migrated"); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	return nil
}
