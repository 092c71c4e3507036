package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	clientv3 "go.etcd.io/etcd/client/v3"

	"stave.dev/stave/target/scsi/pr"
)

// ReservationStore is the pr.Store of one volume in etcd: the State as
// JSON at /stave/v1/reservations/<volume>. Save is a compare-and-swap on
// the revision that the last Load or Save saw, so a node that lost the
// volume cannot overwrite the state its successor wrote; it fails with
// an error wrapping ErrConflict instead. An etcd write is durable
// (fsynced on a quorum) when it returns, which is what pr.Store asks.
//
// The Manager serialises the calls; a ReservationStore is not safe for
// other concurrent use.
type ReservationStore struct {
	c    *Cluster
	name string
	rev  int64 // mod revision of the key as last seen; 0: absent
}

var _ pr.Store = (*ReservationStore)(nil)

// Reservations returns the reservation store of the named volume.
func (c *Cluster) Reservations(volume string) *ReservationStore {
	return &ReservationStore{c: c, name: volume}
}

// Load implements pr.Store.
func (r *ReservationStore) Load(ctx context.Context) (pr.State, error) {
	resp, err := r.c.cli.Get(ctx, ReservationKey(r.name))
	if err != nil {
		return pr.State{}, fmt.Errorf("%w: reservations of %q: %v", ErrUnavailable, r.name, err)
	}
	if len(resp.Kvs) == 0 {
		r.rev = 0
		return pr.State{}, nil
	}
	var s pr.State
	if err := json.Unmarshal(resp.Kvs[0].Value, &s); err != nil {
		return pr.State{}, fmt.Errorf("%w: %s: %v", pr.ErrCorruptState, ReservationKey(r.name), err)
	}
	r.rev = resp.Kvs[0].ModRevision
	return s, nil
}

// Save implements pr.Store.
func (r *ReservationStore) Save(ctx context.Context, s pr.State) error {
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	k := ReservationKey(r.name)
	resp, err := r.c.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", r.rev)).
		Then(clientv3.OpPut(k, string(b))).Commit()
	if err != nil {
		return fmt.Errorf("%w: saving reservations of %q: %v", ErrUnavailable, r.name, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: reservations of volume %q were changed by another node", ErrConflict, r.name)
	}
	r.rev = resp.Header.Revision
	return nil
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
