package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
	"go.uber.org/zap/zapcore"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/internal/volume"
)

// Sentinel errors.
var (
	// ErrSchemaMismatch means etcd holds keys of another schema version.
	ErrSchemaMismatch = errors.New("cluster: etcd key schema version mismatch")
	// ErrConflict means a compare-and-swap lost: the key changed since it
	// was read.
	ErrConflict = errors.New("cluster: key changed concurrently")
	// ErrUnavailable means etcd could not be reached in time.
	ErrUnavailable = errors.New("cluster: etcd unavailable")
)

// Timing of the embedded member. One member elects itself: the election
// timeout only delays start-up, so it is short (etcd requires at least
// five heartbeats). Members of a multi-member cluster talk over the
// network and must not call elections on a scheduling hiccup or a busy
// disk, yet a dead leader delays the expiry of every lease it held (the
// new leader extends them by about an election timeout), which is what
// a replicated volume's failover waits for: 50 ms heartbeats and a
// 600 ms election timeout, so a dead leader is replaced in about 0.6-1.2 s.
const (
	embeddedTickMs     = 50
	embeddedElectionMs = 250
	clusterTickMs      = 50
	clusterElectionMs  = 600
	// clusterToken is the initial-cluster-token of the clusters Stave
	// bootstraps from a static initial cluster.
	clusterToken = "stave"
	startTimeout = 60 * time.Second
	dialTimeout  = 5 * time.Second
	// EtcdDir is the directory of the embedded member under the data dir.
	EtcdDir = "etcd"
	// endpointFile, in EtcdDir, records the embedded member's client URLs
	// for etcdctl and tests.
	endpointFile = "endpoints"
)

// Config configures Open.
type Config struct {
	// DataDir is the daemon's data directory; the embedded member keeps
	// its data in DataDir/etcd.
	DataDir string
	// NodeID identifies the node; without Name the embedded member is
	// named "stave-<node id>".
	NodeID string
	// Name is the embedded member's name (the node's name); it must be
	// the node's entry in InitialCluster. Empty: "stave-<node id>".
	Name string
	// InitialCluster bootstraps a multi-member embedded cluster: one
	// "NAME=PEER-URL" per member, this node's Name among them, the same
	// list on every member. Empty (and no Join): a single member.
	InitialCluster []string
	// Join is the client URL (or HOST:PORT) of a running member: the
	// node asks it to add this member (MemberAdd of ListenPeerURLs), then
	// starts with initial-cluster-state=existing. A member that already
	// has data in DataDir/etcd restarts from it; InitialCluster and Join
	// are then ignored.
	Join string
	// Endpoints of an external etcd cluster; empty embeds a member.
	Endpoints []string
	// CAFile, CertFile and KeyFile are the TLS client settings for
	// Endpoints (PEM files); all empty: plain connections unless an
	// endpoint is https, which then uses the system roots.
	CAFile, CertFile, KeyFile string
	// ListenClientURLs and ListenPeerURLs of the embedded member; empty:
	// http://127.0.0.1 on a port free at start.
	ListenClientURLs, ListenPeerURLs []string
	// Logger receives state changes and etcd's own warnings; nil discards.
	Logger *slog.Logger
}

// Cluster is a connection to the etcd that holds the cluster's state,
// and the embedded member when there is one. It is safe for concurrent
// use.
type Cluster struct {
	log        *slog.Logger // component=cluster
	base       *slog.Logger // as given, for etcd's own component
	cli        *clientv3.Client
	etcd       *embed.Etcd // nil: external
	clientURLs []string
	memberID   uint64      // the embedded member's ID; 0: external
	closing    atomic.Bool // quiets etcd's logs while it stops
	// createOps adds operations to a volume create (SetCreateOps).
	createOps func(*volume.Spec) []clientv3.Op
}

// Open starts the embedded member (or connects to Config.Endpoints) and
// checks the key schema version. It returns when etcd answers, or fails
// after a minute with an error wrapping ErrUnavailable, or with
// ErrSchemaMismatch.
func Open(ctx context.Context, cfg Config) (*Cluster, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Cluster{log: log.With(logkey.Component, "cluster"), base: log}
	zl := newZapLogger(log.With(logkey.Component, "etcd"), zapcore.WarnLevel, &c.closing)
	if len(cfg.Endpoints) == 0 {
		if err := c.startEmbedded(ctx, cfg); err != nil {
			return nil, err
		}
	} else {
		tc := clientv3.Config{Endpoints: cfg.Endpoints, DialTimeout: dialTimeout, Logger: zl}
		if cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" {
			if (cfg.CertFile == "") != (cfg.KeyFile == "") {
				return nil, errors.New("cluster: etcd client certificate and key go together: give both --etcd-cert and --etcd-key, or neither")
			}
			ti := transport.TLSInfo{TrustedCAFile: cfg.CAFile, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile}
			tcfg, err := ti.ClientConfig()
			if err != nil {
				return nil, fmt.Errorf("cluster: etcd TLS settings: %w", err)
			}
			tc.TLS = tcfg
		}
		if tc.TLS == nil && slices.ContainsFunc(cfg.Endpoints, func(e string) bool { return strings.HasPrefix(e, "https://") }) {
			tc.TLS = &tls.Config{MinVersion: tls.VersionTLS12} // the system's roots
		}
		cli, err := clientv3.New(tc)
		if err != nil {
			return nil, fmt.Errorf("cluster: etcd endpoints %s: %w", strings.Join(cfg.Endpoints, ","), err)
		}
		c.cli, c.clientURLs = cli, cfg.Endpoints
	}
	if err := c.checkSchema(ctx); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// startEmbedded starts the single embedded member.
func (c *Cluster) startEmbedded(ctx context.Context, cfg Config) error {
	dir := filepath.Join(cfg.DataDir, EtcdDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	ec := embed.NewConfig()
	ec.Dir = dir
	ec.Name = cfg.memberName()
	multi := len(cfg.InitialCluster) > 0 || cfg.Join != ""
	ec.TickMs, ec.ElectionMs = embeddedTickMs, embeddedElectionMs
	if multi {
		ec.TickMs, ec.ElectionMs = clusterTickMs, clusterElectionMs
		if len(cfg.ListenPeerURLs) == 0 {
			return errors.New("cluster: etcd.initial_cluster and --join need etcd.listen_peer_urls " +
				"(--etcd-listen-peer-urls http://ADDRESS:2380): the other members reach this one there")
		}
	}
	restart := hasMemberData(dir)
	ec.LogLevel = "warn"
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(newZapLogger(c.base.With(logkey.Component, "etcd"), zapcore.WarnLevel, &c.closing))
	// Keep an hour of history; older revisions are compacted away.
	ec.AutoCompactionMode, ec.AutoCompactionRetention = "periodic", "1h"
	ec.EnableGRPCGateway = false
	start := time.Now()
	var e *embed.Etcd
	// A port found free may be taken before etcd binds it (daemons and
	// tests start side by side): choose again, a few times.
	for attempt := 1; ; attempt++ {
		var err error
		if ec.ListenClientUrls, err = urlsOrFree(cfg.ListenClientURLs, "etcd.listen_client_urls"); err != nil {
			return err
		}
		if ec.ListenPeerUrls, err = urlsOrFree(cfg.ListenPeerURLs, "etcd.listen_peer_urls"); err != nil {
			return err
		}
		ec.AdvertiseClientUrls, ec.AdvertisePeerUrls = ec.ListenClientUrls, ec.ListenPeerUrls
		ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
		switch {
		case restart:
			// The member's data holds the membership; etcd ignores the
			// initial cluster, which only has to parse.
			c.log.Info("embedded etcd restarting from its data", logkey.Path, dir, "member", ec.Name)
		case cfg.Join != "":
			if err := c.joinCluster(ctx, cfg, ec); err != nil {
				return err
			}
		case len(cfg.InitialCluster) > 0:
			ec.InitialCluster = strings.Join(cfg.InitialCluster, ",")
			ec.InitialClusterToken = clusterToken
			ec.ClusterState = embed.ClusterStateFlagNew
		}
		e, err = embed.StartEtcd(ec)
		if err == nil {
			break
		}
		auto := len(cfg.ListenClientURLs) == 0 || len(cfg.ListenPeerURLs) == 0
		if !auto || attempt == 3 || !(errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")) {
			return fmt.Errorf("cluster: starting the embedded etcd in %s: %w (is another process using its ports? set etcd.listen_client_urls and etcd.listen_peer_urls)", dir, err)
		}
		c.log.Info("embedded etcd port taken meanwhile; choosing another", logkey.Err, err)
	}
	t := time.NewTimer(startTimeout)
	defer t.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		c.closing.Store(true)
		e.Close()
		return fmt.Errorf("cluster: embedded etcd in %s: %w", dir, err)
	case <-ctx.Done():
		c.closing.Store(true)
		e.Close()
		return ctx.Err()
	case <-t.C:
		c.closing.Store(true)
		e.Close()
		hint := "see the log above"
		if multi {
			hint = "a member of a cluster becomes ready only when a majority of the members run and reach each other " +
				"on their peer URLs: start the others, and check etcd.initial_cluster and the peer URLs"
		}
		return fmt.Errorf("%w: the embedded etcd in %s did not become ready in %s: %s", ErrUnavailable, dir, startTimeout, hint)
	}
	c.etcd = e
	c.memberID = uint64(e.Server.MemberID())
	c.cli = v3client.New(e.Server)
	for _, u := range ec.AdvertiseClientUrls {
		c.clientURLs = append(c.clientURLs, u.String())
	}
	if err := os.WriteFile(filepath.Join(dir, endpointFile), []byte(strings.Join(c.clientURLs, ",")+"\n"), 0o600); err != nil {
		c.log.Warn("cannot record the etcd endpoints", logkey.Err, err)
	}
	c.log.Info("embedded etcd ready", logkey.Path, dir, "client_urls", strings.Join(c.clientURLs, ","),
		"elapsed", time.Since(start).Round(time.Millisecond))
	return nil
}

// urlsOrFree parses the given URLs, or returns one http://127.0.0.1 URL
// on a port that is free now.
func urlsOrFree(raw []string, option string) ([]url.URL, error) {
	if len(raw) == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("cluster: finding a free port for %s: %w", option, err)
		}
		addr := l.Addr().String()
		_ = l.Close()
		raw = []string{"http://" + addr}
	}
	out := make([]url.URL, 0, len(raw))
	for _, s := range raw {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("cluster: %s %q: use http://HOST:PORT, e.g. http://127.0.0.1:2379", option, s)
		}
		out = append(out, *u)
	}
	return out, nil
}

// checkSchema writes SchemaVersion into an empty etcd, or checks the
// version found.
func (c *Cluster) checkSchema(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	resp, err := c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(SchemaKey), "=", 0)).
		Then(clientv3.OpPut(SchemaKey, SchemaVersion)).
		Else(clientv3.OpGet(SchemaKey)).Commit()
	if err != nil {
		return fmt.Errorf("%w: %s: %v: check --etcd-endpoints and the TLS options", ErrUnavailable, strings.Join(c.clientURLs, ","), err)
	}
	if resp.Succeeded {
		c.log.Info("etcd key schema initialised", "schema", SchemaVersion)
		return nil
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 1 && string(kvs[0].Value) == SchemaVersion {
		return nil
	}
	got := "?"
	if len(kvs) == 1 {
		got = string(kvs[0].Value)
	}
	return fmt.Errorf("%w: etcd at %s holds Stave key schema %q under %s, this stave understands %q: "+
		"run a stave release that understands it, or use another etcd (docs/etcd-keys.md)",
		ErrSchemaMismatch, strings.Join(c.clientURLs, ","), got, SchemaKey, SchemaVersion)
}

// Client returns the etcd client. It stays valid until Close.
func (c *Cluster) Client() *clientv3.Client { return c.cli }

// Embedded reports whether this process runs the etcd member.
func (c *Cluster) Embedded() bool { return c.etcd != nil }

// ClientURLs returns the URLs etcd clients reach it on.
func (c *Cluster) ClientURLs() []string { return c.clientURLs }

// Healthy checks that etcd serves a linearizable read within timeout.
func (c *Cluster) Healthy(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := c.cli.Get(ctx, SchemaKey); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return nil
}

// Close closes the client and stops the embedded member.
func (c *Cluster) Close() error {
	c.closing.Store(true)
	var err error
	if c.cli != nil {
		err = c.cli.Close()
	}
	if c.etcd != nil {
		c.etcd.Close()
		c.log.Info("embedded etcd stopped")
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("cluster: %w", err)
	}
	return nil
}
