package owner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"stave.dev/stave/cluster/ownership"
)

// Sentinel errors.
var (
	// ErrNoRecord means the volume has no ownership record in etcd (it was
	// created without InitOps, or deleted).
	ErrNoRecord = errors.New("owner: volume has no ownership record")
	// ErrCorruptRecord means a key of the record does not decode.
	ErrCorruptRecord = errors.New("owner: malformed ownership record")
)

// ownershipValue is the JSON value at OwnershipKey.
type ownershipValue struct {
	Epoch uint64   `json:"epoch"`
	ISR   []string `json:"isr"`
}

// ownerValue is the JSON value at OwnerKey.
type ownerValue struct {
	Node  string `json:"node"`
	Epoch uint64 `json:"epoch"`
}

func encodeOwnership(epoch ownership.Epoch, isr []ownership.NodeID) string {
	v := ownershipValue{Epoch: uint64(epoch), ISR: make([]string, 0, len(isr))}
	for _, n := range isr {
		v.ISR = append(v.ISR, string(n))
	}
	b, _ := json.Marshal(v) // cannot fail: strings and integers
	return string(b)
}

func encodeOwner(node ownership.NodeID, epoch ownership.Epoch) string {
	b, _ := json.Marshal(ownerValue{Node: string(node), Epoch: uint64(epoch)})
	return string(b)
}

// InitCmp is the comparison that goes with InitOps in a volume-create
// transaction: the ownership key does not exist yet.
func InitCmp(volume string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(OwnershipKey(volume)), "=", 0)
}

// InitOps returns the operations that create a volume's ownership record
// inside the volume-create transaction: epoch 0, no owner, every replica
// in the ISR (a new volume is empty everywhere). Guard the transaction
// with InitCmp (or with the spec's absence, when the record is always
// deleted with the spec by DeleteOps).
func InitOps(volume string, isr []string) []clientv3.Op {
	nodes := make([]ownership.NodeID, 0, len(isr))
	for _, n := range isr {
		nodes = append(nodes, ownership.NodeID(n))
	}
	return []clientv3.Op{
		clientv3.OpPut(OwnershipKey(volume), encodeOwnership(0, nodes)),
		clientv3.OpDelete(OwnerKey(volume)),
	}
}

// DeleteOps returns the operations that delete a volume's ownership
// record, to run in the volume-delete transaction. A driver still running
// for the volume then sees no record: it claims nothing and its owner
// steps down.
//
// NB: cluster.VolumeStore.Delete already deletes every key under the
// volume's directory, these two included; do not add DeleteOps to that
// transaction (etcd refuses a txn that deletes overlapping keys twice).
//
// NB: epochs persisted by the nodes (replication.EpochStore) outlive the
// record; a new volume of the same name starts again at epoch 0, so the
// caller must also forget the persisted epochs of a deleted volume.
func DeleteOps(volume string) []clientv3.Op {
	return []clientv3.Op{
		clientv3.OpDelete(OwnershipKey(volume)),
		clientv3.OpDelete(OwnerKey(volume)),
	}
}

// Read returns a volume's ownership record, read linearizably in one
// range request. It returns an error wrapping ErrNoRecord when the
// ownership key does not exist (the record then still carries the
// revision and an owner, if there is one), ErrCorruptRecord for a value
// that does not decode, and the etcd error otherwise.
func Read(ctx context.Context, cli *clientv3.Client, volume string) (ownership.Record, error) {
	rec, _, err := read(ctx, cli, volume)
	return rec, err
}

// keyRevs are the mod revisions of the record's keys as read (0: absent),
// the guards of the claim and ISR transactions.
type keyRevs struct{ ownership, owner int64 }

func read(ctx context.Context, cli *clientv3.Client, volume string) (ownership.Record, keyRevs, error) {
	resp, err := cli.Get(ctx, OwnerKey(volume), clientv3.WithRange(rangeEnd(volume)))
	if err != nil {
		return ownership.Record{}, keyRevs{}, fmt.Errorf("owner: reading the ownership record of %s: %w", volume, err)
	}
	return decodeRecord(volume, resp.Kvs, resp.Header.Revision)
}

// decodeRecord builds the record from the keys of the volume's range, as
// of revision rev. Keys outside the record are ignored.
func decodeRecord(volume string, kvs []*mvccpb.KeyValue, rev int64) (ownership.Record, keyRevs, error) {
	rec := ownership.Record{Rev: rev}
	var revs keyRevs
	found := false
	for _, kv := range kvs {
		switch string(kv.Key) {
		case OwnershipKey(volume):
			var v ownershipValue
			if err := json.Unmarshal(kv.Value, &v); err != nil {
				return rec, revs, fmt.Errorf("%w: %s: %v", ErrCorruptRecord, kv.Key, err)
			}
			rec.Epoch = ownership.Epoch(v.Epoch)
			for _, n := range v.ISR {
				rec.ISR = append(rec.ISR, ownership.NodeID(n))
			}
			revs.ownership = kv.ModRevision
			found = true
		case OwnerKey(volume):
			var v ownerValue
			if err := json.Unmarshal(kv.Value, &v); err != nil || v.Node == "" {
				return rec, revs, fmt.Errorf("%w: %s: %q", ErrCorruptRecord, kv.Key, kv.Value)
			}
			// NB: an owner key whose epoch differs from the record's can
			// only come from a hand edit; it still blocks claims.
			rec.Owner = ownership.NodeID(v.Node)
			rec.Lease = ownership.LeaseID(kv.Lease)
			revs.owner = kv.ModRevision
		}
	}
	if !found {
		return rec, revs, fmt.Errorf("%w: %s", ErrNoRecord, OwnershipKey(volume))
	}
	return rec, revs, nil
}

// withISR returns isr with node added or removed (order kept, additions
// at the end).
func withISR(isr []ownership.NodeID, node ownership.NodeID, add bool) []ownership.NodeID {
	out := slices.Clone(isr)
	i := slices.Index(out, node)
	switch {
	case add && i < 0:
		out = append(out, node)
	case !add && i >= 0:
		out = slices.Delete(out, i, i+1)
	}
	return out
}
