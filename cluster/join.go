package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"

	"stave.dev/stave/internal/logkey"
)

// memberName is the embedded member's name: the node's name, or
// "stave-<node id>" when it has none (single-member data dirs of earlier
// releases keep their member's name).
func (cfg *Config) memberName() string {
	if cfg.Name != "" {
		return cfg.Name
	}
	return "stave-" + cfg.NodeID
}

// hasMemberData reports whether dir (DATA/etcd) holds a member's data
// (its write-ahead log): such a member restarts from it, whatever the
// initial cluster or join options say.
func hasMemberData(dir string) bool {
	ents, err := os.ReadDir(filepath.Join(dir, "member", "wal"))
	return err == nil && len(ents) > 0
}

// JoinURL turns the --join argument (HOST:PORT or a URL) into a client
// URL.
func JoinURL(s string) (string, error) {
	if s == "" {
		return "", errors.New("cluster: --join is empty: give HOST:PORT of a running member's etcd client URL")
	}
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := urlsOrFree([]string{s}, "--join")
	if err != nil {
		return "", err
	}
	if u[0].Port() == "" {
		return "", fmt.Errorf("cluster: --join %q has no port: give HOST:PORT of a running member's etcd client URL (etcd.listen_client_urls, e.g. 10.0.0.1:2379)", s)
	}
	return u[0].String(), nil
}

// joinCluster asks the running member at cfg.Join to add this member's
// peer URLs (unless an earlier, interrupted attempt already did), and
// sets ec to start as a member of the existing cluster. Like `etcdctl
// member add`, it names every member in the initial cluster (members
// added but not started yet have no name).
func (c *Cluster) joinCluster(ctx context.Context, cfg Config, ec *embed.Config) error {
	endpoint, err := JoinURL(cfg.Join)
	if err != nil {
		return err
	}
	zl := newZapLogger(c.base.With(logkey.Component, "etcd"), zapcore.ErrorLevel, &c.closing)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: dialTimeout, Logger: zl})
	if err != nil {
		return fmt.Errorf("cluster: --join %s: %w", endpoint, err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	peers := make([]string, 0, len(ec.AdvertisePeerUrls))
	for _, u := range ec.AdvertisePeerUrls {
		peers = append(peers, u.String())
	}
	// Serializable: the member answers without a quorum too, which an
	// added member that never started (this one) may be what is missing.
	list, err := cli.MemberList(ctx, clientv3.WithSerializable())
	if err != nil {
		return fmt.Errorf("%w: --join %s: listing the cluster's members: %v: is a member running there? "+
			"--join takes a running node's etcd client address (its etcd.listen_client_urls)", ErrUnavailable, endpoint, err)
	}
	var self uint64
	for _, m := range list.Members {
		if slices.Equal(slices.Sorted(slices.Values(m.PeerURLs)), slices.Sorted(slices.Values(peers))) {
			if m.Name != "" && m.Name != ec.Name {
				return fmt.Errorf("cluster: --join %s: member %q already uses peer URLs %s: "+
					"remove it first (etcdctl member remove %x) or use other etcd.listen_peer_urls", endpoint, m.Name, strings.Join(peers, ","), m.ID)
			}
			self = m.ID // added by an earlier attempt that did not start
		} else if m.Name == ec.Name {
			return fmt.Errorf("cluster: --join %s: the cluster already has a member named %q (peer URLs %s): "+
				"give this node another node.name, or remove that member (etcdctl member remove %x)", endpoint, ec.Name, strings.Join(m.PeerURLs, ","), m.ID)
		}
	}
	members := list.Members
	if self == 0 {
		// etcd refuses to add a voting member unless enough members
		// have been connected for a while ("unhealthy cluster", e.g.
		// right after a member restarted): wait for it.
		var resp *clientv3.MemberAddResponse
		for {
			resp, err = cli.MemberAdd(ctx, peers)
			if err == nil || !errors.Is(err, rpctypes.ErrUnhealthy) || ctx.Err() != nil {
				break
			}
			c.log.Info("etcd cluster not ready to add a member yet; retrying", "join", endpoint, logkey.Err, err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
		if err != nil {
			return fmt.Errorf("%w: --join %s: adding member %s (%s): %v: every member must be up and connected "+
				"(etcd needs a majority of the grown cluster healthy)", ErrUnavailable, endpoint, ec.Name, strings.Join(peers, ","), err)
		}
		self, members = resp.Member.ID, resp.Members
		c.log.Info("etcd member added", "member", ec.Name, "member_id", strconv.FormatUint(self, 16), "join", endpoint)
	} else {
		c.log.Info("etcd member was already added; starting it", "member", ec.Name, "member_id", strconv.FormatUint(self, 16))
	}
	var ic []string
	for _, m := range members {
		name := m.Name
		if m.ID == self {
			name = ec.Name
		}
		for _, u := range m.PeerURLs {
			ic = append(ic, name+"="+u)
		}
	}
	ec.InitialCluster = strings.Join(ic, ",")
	ec.ClusterState = embed.ClusterStateFlagExisting
	return nil
}
