package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/internal/volume"
)

// VolumeStore is the volume catalogue's Store in etcd: one key per spec,
// /stave/v1/volumes/<name>/spec. It is safe for concurrent use.
type VolumeStore struct {
	c   *Cluster
	log *slog.Logger
}

var _ volume.Store = (*VolumeStore)(nil)

// Volumes returns the volume catalogue's store.
func (c *Cluster) Volumes() *VolumeStore {
	return &VolumeStore{c: c, log: c.log}
}

// SetCreateOps sets a function whose operations run in the transaction
// that creates a volume's spec (e.g. the initial ownership record of a
// replicated volume, package cluster/owner). Call it before volumes are
// created.
func (c *Cluster) SetCreateOps(fn func(*volume.Spec) []clientv3.Op) { c.createOps = fn }

// volumeKeys is the prefix of every key of the named volume.
func volumeKeys(name string) string { return volumesPrefix + name + "/" }

// decode parses a spec value; a bad one is logged and skipped.
func (v *VolumeStore) decode(key string, val []byte) (*volume.Spec, bool) {
	s := new(volume.Spec)
	err := json.Unmarshal(val, s)
	if err == nil {
		err = s.Check()
	}
	if name, _ := parseSpecKey(key); err == nil && s.Name != name {
		err = fmt.Errorf("spec names volume %q", s.Name)
	}
	if err != nil {
		v.log.Error("skipping a volume spec in etcd that cannot be read", logkey.Path, key, logkey.Err, err)
		return nil, false
	}
	return s, true
}

// Load implements volume.Store.
func (v *VolumeStore) Load(ctx context.Context) ([]volume.Stored, int64, error) {
	resp, err := v.c.cli.Get(ctx, volumesPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("%w: loading volumes: %v", ErrUnavailable, err)
	}
	var out []volume.Stored
	for _, kv := range resp.Kvs {
		if _, ok := parseSpecKey(string(kv.Key)); !ok {
			continue
		}
		if s, ok := v.decode(string(kv.Key), kv.Value); ok {
			out = append(out, volume.Stored{Spec: s, ModRev: kv.ModRevision})
		}
	}
	return out, resp.Header.Revision, nil
}

// Create implements volume.Store: create-if-absent.
func (v *VolumeStore) Create(ctx context.Context, s *volume.Spec) (int64, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return 0, fmt.Errorf("cluster: %w", err)
	}
	k := VolumeSpecKey(s.Name)
	ops := []clientv3.Op{clientv3.OpPut(k, string(b))}
	if v.c.createOps != nil {
		ops = append(ops, v.c.createOps(s)...)
	}
	resp, err := v.c.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(ops...).Commit()
	if err != nil {
		return 0, fmt.Errorf("%w: creating volume %q: %v", ErrUnavailable, s.Name, err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("%w: volume %q already exists in the cluster: choose another name or delete it first", volume.ErrExists, s.Name)
	}
	return resp.Header.Revision, nil
}

// Update implements volume.Store: compare mod revision, then put.
func (v *VolumeStore) Update(ctx context.Context, s *volume.Spec, modRev int64) (int64, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return 0, fmt.Errorf("cluster: %w", err)
	}
	k := VolumeSpecKey(s.Name)
	resp, err := v.c.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", modRev)).
		Then(clientv3.OpPut(k, string(b))).Else(clientv3.OpGet(k, clientv3.WithCountOnly())).Commit()
	if err != nil {
		return 0, fmt.Errorf("%w: updating volume %q: %v", ErrUnavailable, s.Name, err)
	}
	if !resp.Succeeded {
		if resp.Responses[0].GetResponseRange().GetCount() == 0 {
			return 0, fmt.Errorf("%w: no volume named %q in the cluster", volume.ErrNotFound, s.Name)
		}
		return 0, fmt.Errorf("%w: volume %q was changed by another request or node: try again", volume.ErrConflict, s.Name)
	}
	return resp.Header.Revision, nil
}

// Delete implements volume.Store: the spec, status, ownership and
// reservations go in one transaction.
func (v *VolumeStore) Delete(ctx context.Context, name string, modRev int64) error {
	k := VolumeSpecKey(name)
	resp, err := v.c.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", modRev)).
		Then(clientv3.OpDelete(volumeKeys(name), clientv3.WithPrefix()), clientv3.OpDelete(ReservationKey(name))).
		Else(clientv3.OpGet(k, clientv3.WithCountOnly())).Commit()
	if err != nil {
		return fmt.Errorf("%w: deleting volume %q: %v", ErrUnavailable, name, err)
	}
	if !resp.Succeeded {
		if resp.Responses[0].GetResponseRange().GetCount() == 0 {
			return fmt.Errorf("%w: no volume named %q in the cluster", volume.ErrNotFound, name)
		}
		return fmt.Errorf("%w: volume %q was changed by another request or node: try again", volume.ErrConflict, name)
	}
	return nil
}

// Watch implements volume.Store.
func (v *VolumeStore) Watch(ctx context.Context, rev int64, fn func(volume.Event)) error {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wc := v.c.cli.Watch(ctx, volumesPrefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for wr := range wc {
		if err := wr.Err(); err != nil {
			return fmt.Errorf("cluster: volume watch: %w", err)
		}
		for _, ev := range wr.Events {
			name, ok := parseSpecKey(string(ev.Kv.Key))
			if !ok {
				continue
			}
			e := volume.Event{Name: name, ModRev: ev.Kv.ModRevision}
			if ev.Type == mvccpb.DELETE {
				fn(e)
				continue
			}
			if s, ok := v.decode(string(ev.Kv.Key), ev.Kv.Value); ok {
				e.Spec = s
				fn(e)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("%w: volume watch closed", ErrUnavailable)
}

// VolumeStatus is what /stave/v1/volumes/<name>/status holds: what the
// serving node has applied of the spec.
type VolumeStatus struct {
	Node     string    `json:"node"`
	Exported bool      `json:"exported"`
	Size     int64     `json:"size"`
	Error    string    `json:"error,omitempty"`
	Updated  time.Time `json:"updated"`
}

// PutVolumeStatus writes a volume's status if its spec still exists, so
// that a status never outlives a deleted volume.
func (c *Cluster) PutVolumeStatus(ctx context.Context, name string, st VolumeStatus) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	_, err = c.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(VolumeSpecKey(name)), ">", 0)).
		Then(clientv3.OpPut(VolumeStatusKey(name), string(b))).Commit()
	if err != nil {
		return fmt.Errorf("%w: volume %q status: %v", ErrUnavailable, name, err)
	}
	return nil
}

// ForgetVolume deletes a volume's status and reservations once its spec
// is gone: the clean-up after a spec deleted by hand (an API delete
// removes all three in one transaction). Nothing is deleted while the
// spec exists, so a volume that moved to another node keeps its state.
func (c *Cluster) ForgetVolume(ctx context.Context, name string) error {
	_, err := c.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(VolumeSpecKey(name)), "=", 0)).
		Then(clientv3.OpDelete(volumeKeys(name), clientv3.WithPrefix()), clientv3.OpDelete(ReservationKey(name))).Commit()
	if err != nil {
		return fmt.Errorf("%w: forgetting volume %q: %v", ErrUnavailable, name, err)
	}
	return nil
}

// VolumeStatus reads a volume's status; ok is false when there is none.
func (c *Cluster) VolumeStatus(ctx context.Context, name string) (st VolumeStatus, ok bool, err error) {
	resp, err := c.cli.Get(ctx, VolumeStatusKey(name))
	if err != nil {
		return st, false, fmt.Errorf("%w: volume %q status: %v", ErrUnavailable, name, err)
	}
	if len(resp.Kvs) == 0 {
		return st, false, nil
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &st); err != nil {
		return st, false, fmt.Errorf("cluster: volume %q status: %w", name, err)
	}
	return st, true, nil
}
