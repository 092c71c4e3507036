package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"stave.dev/stave/internal/logkey"
)

// Node records. A node keeps two keys (docs/etcd-keys.md):
//
//   - NodeKey (/stave/v1/nodes/<id>), under a lease of NodeTTL that the
//     node keeps alive: the node is up while the key exists;
//   - RegistrationKey (/stave/v1/registrations/<id>), the same record
//     without a lease: a node that stopped or died stays listed, down.
const (
	// NodeTTL is the lease TTL of a node's live record. A node that dies
	// is listed down between about 2/3 of it (the last keep-alive) and
	// all of it after its death, plus an election timeout when it was
	// the etcd leader (a new leader extends every lease).
	NodeTTL = 10 * time.Second
	// nodeRetry is the pause before registering again after a failure or
	// a lost lease.
	nodeRetry = time.Second
	// nodeOpTimeout bounds one etcd request of the node records.
	nodeOpTimeout = 5 * time.Second
)

// Node states.
const (
	// NodeUp means the node's leased record exists.
	NodeUp = "up"
	// NodeDown means only its registration is left: it stopped, died or
	// cannot reach etcd.
	NodeDown = "down"
)

// NodeInfo is what a node's record holds (both keys hold the same).
type NodeInfo struct {
	ID string `json:"id"`
	// Name is the node's name (node.name, default the host name); the
	// embedded etcd member of the node has the same name.
	Name string `json:"name,omitempty"`
	// Host is the host name.
	Host string `json:"host"`
	// Portals are the iSCSI portals the node advertises, HOST:PORT.
	Portals []string `json:"portals"`
	// Replication is the address other nodes dial to send it the writes
	// of the replicated volumes it holds (replication.advertise or
	// .listen); empty: it holds no replicas.
	Replication string `json:"replication,omitempty"`
	// Admin is the admin API address: the TCP listener when there is one
	// (http(s)://HOST:PORT), else unix:PATH (local callers only).
	Admin string `json:"admin,omitempty"`
	// Labels are node.labels, e.g. zone and rack.
	Labels map[string]string `json:"labels,omitempty"`
	// Capacity is the space the node offers, nil when unknown.
	Capacity *Capacity `json:"capacity,omitempty"`
	// EtcdMemberID is the embedded etcd member's ID (hex), empty when the
	// node uses an external etcd.
	EtcdMemberID string `json:"etcd_member_id,omitempty"`
	// EtcdClientURLs are the URLs of the node's embedded etcd member
	// (what --join takes), empty for an external etcd.
	EtcdClientURLs []string  `json:"etcd_client_urls,omitempty"`
	Version        string    `json:"version"`
	Started        time.Time `json:"started"`
	// Updated is when the node last wrote the record.
	Updated time.Time `json:"updated"`
}

// Capacity is a node's space in bytes.
type Capacity struct {
	// Source is "pool" (the node's open pool) or "data_dir" (the file
	// system of the data directory, without a pool).
	Source string `json:"source"`
	Size   int64  `json:"size"`
	Free   int64  `json:"free"`
}

// NodeStatus is a node as Nodes reports it.
type NodeStatus struct {
	NodeInfo
	// State is NodeUp or NodeDown.
	State string `json:"state"`
	// EtcdMember is true when the node's embedded member is in etcd's
	// member list.
	EtcdMember bool `json:"etcd_member"`
}

// sameRecord reports whether a and b differ only in Updated.
func sameRecord(a, b NodeInfo) bool {
	a.Updated, b.Updated = time.Time{}, time.Time{}
	return reflect.DeepEqual(a, b)
}

// RunNode keeps this node's records in etcd until ctx is done, then
// revokes the lease so the node is listed down at once. info is called
// for every write (it must be safe to call from this goroutine); the
// records are rewritten every refresh when info's answer changed
// (capacity), and registered again, with a new lease, when the lease is
// lost (etcd unreachable for longer than NodeTTL). Failures are logged
// and retried; RunNode returns nil when ctx is done.
func (c *Cluster) RunNode(ctx context.Context, info func() NodeInfo, refresh time.Duration) error {
	failed := false
	for ctx.Err() == nil {
		err := c.nodeSession(ctx, info, refresh)
		if ctx.Err() != nil {
			break
		}
		if !failed {
			c.log.Warn("node record lost or not written to etcd; retrying", logkey.Err, err)
		}
		failed = true
		select {
		case <-ctx.Done():
		case <-time.After(nodeRetry):
		}
	}
	return nil
}

// nodeSession registers the node under a new lease and keeps it until
// ctx is done (nil) or the lease is lost (an error).
func (c *Cluster) nodeSession(ctx context.Context, info func() NodeInfo, refresh time.Duration) error {
	octx, cancel := context.WithTimeout(ctx, nodeOpTimeout)
	lease, err := c.cli.Grant(octx, int64(NodeTTL/time.Second))
	cancel()
	if err != nil {
		return fmt.Errorf("cluster: node lease: %w", err)
	}
	defer func() {
		// Revoke even when ctx is done: the node is then down at once.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_, _ = c.cli.Revoke(rctx, lease.ID)
		cancel()
	}()
	last := info()
	if err := c.putNode(ctx, last, lease.ID); err != nil {
		return err
	}
	c.log.Info("node registered", "node", last.ID, "name", last.Name, "lease_ttl", NodeTTL)
	kctx, kcancel := context.WithCancel(ctx)
	defer kcancel()
	ka, err := c.cli.KeepAlive(kctx, lease.ID)
	if err != nil {
		return fmt.Errorf("cluster: node lease keep-alive: %w", err)
	}
	t := time.NewTicker(refresh)
	defer t.Stop()
	for {
		select {
		case _, ok := <-ka:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return errors.New("cluster: node lease expired or keep-alive stopped (etcd unreachable?)")
			}
		case <-t.C:
			n := info()
			if sameRecord(n, last) {
				continue
			}
			if err := c.putNode(ctx, n, lease.ID); err != nil {
				c.log.Warn("node record not refreshed in etcd", logkey.Err, err)
				continue
			}
			last = n
		case <-ctx.Done():
			return nil
		}
	}
}

// putNode writes both records in one transaction.
func (c *Cluster) putNode(ctx context.Context, n NodeInfo, lease clientv3.LeaseID) error {
	n.Updated = time.Now().UTC()
	b, err := json.Marshal(n)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, nodeOpTimeout)
	defer cancel()
	if _, err := c.cli.Txn(ctx).Then(
		clientv3.OpPut(NodeKey(n.ID), string(b), clientv3.WithLease(lease)),
		clientv3.OpPut(RegistrationKey(n.ID), string(b)),
	).Commit(); err != nil {
		return fmt.Errorf("cluster: node record: %w", err)
	}
	return nil
}

// MemberID returns the embedded member's ID, 0 for an external etcd.
func (c *Cluster) MemberID() uint64 { return c.memberID }

// FormatMemberID renders an etcd member ID as etcdctl does (hex).
func FormatMemberID(id uint64) string {
	if id == 0 {
		return ""
	}
	return strconv.FormatUint(id, 16)
}

// Nodes returns every node that ever registered, up or down, sorted by
// name then ID. A node's fields come from its live record when it is up,
// else from its registration (as it was when last written). The reads
// are serializable: the local member answers at once, during an election
// or without a quorum too (then from its possibly stale copy, and leases
// do not expire without a leader). EtcdMember is filled from the local
// member's view of the member list; when that fails it stays false.
func (c *Cluster) Nodes(ctx context.Context) ([]NodeStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, nodeOpTimeout)
	defer cancel()
	resp, err := c.cli.Txn(ctx).Then(
		clientv3.OpGet(nodesPrefix, clientv3.WithPrefix(), clientv3.WithSerializable()),
		clientv3.OpGet(registrationPrefix, clientv3.WithPrefix(), clientv3.WithSerializable()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("%w: reading the node records: %v", ErrUnavailable, err)
	}
	byID := map[string]*NodeStatus{}
	for i, state := range []string{NodeUp, NodeDown} {
		for _, kv := range resp.Responses[i].GetResponseRange().GetKvs() {
			var n NodeInfo
			if err := json.Unmarshal(kv.Value, &n); err != nil || n.ID == "" {
				c.log.Warn("unreadable node record in etcd; skipped", "key", string(kv.Key), logkey.Err, err)
				continue
			}
			if _, ok := byID[n.ID]; !ok {
				byID[n.ID] = &NodeStatus{NodeInfo: n, State: state}
			}
		}
	}
	members := map[string]bool{}
	if ml, err := c.cli.MemberList(ctx, clientv3.WithSerializable()); err == nil {
		for _, m := range ml.Members {
			members[FormatMemberID(m.ID)] = true
		}
	}
	out := make([]NodeStatus, 0, len(byID))
	for _, id := range slices.Sorted(maps.Keys(byID)) {
		n := byID[id]
		n.EtcdMember = n.EtcdMemberID != "" && members[n.EtcdMemberID]
		out = append(out, *n)
	}
	slices.SortStableFunc(out, func(a, b NodeStatus) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}
