package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"stave.dev/stave/cluster"
	"stave.dev/stave/cluster/owner"
	"stave.dev/stave/internal/adminapi"
	"stave.dev/stave/internal/config"
	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/internal/sdnotify"
	"stave.dev/stave/internal/volume"
	"stave.dev/stave/replication"
	"stave.dev/stave/target/iscsi"
	"stave.dev/stave/target/iscsi/login"
)

// lockDataDir takes an exclusive lock on DIR/lock so that two daemons
// never serve one data directory. The lock goes when the process does.
func lockDataDir(dir string) (unlock func(), err error) {
	p := filepath.Join(dir, "lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data dir lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("data dir %s is in use by another 'stave serve': stop it or use another --data-dir", dir)
		}
		return nil, fmt.Errorf("data dir lock %s: %w", p, err)
	}
	return func() { _ = f.Close() }, nil
}

// readyKey names an optional func() in cli.App.Metadata that serve calls
// once its portals and API socket accept connections.
const readyKey = "stave.ready"

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the iSCSI target and the admin API",
		Description: "Exports every volume of this node as the iSCSI target iqn.2026-11.dev.stave:NAME, LUN 0,\n" +
			"and serves the admin API on a unix socket. The volumes, their ACLs and CHAP secrets and the\n" +
			"persistent reservations live in etcd: an embedded member in DATA/etcd, or --etcd-endpoints\n" +
			"(docs/etcd-keys.md); the daemon follows changes made there. Opens the pool in DATA/pool when\n" +
			"there is one (see `stave pool create`). SIGINT or SIGTERM asks initiators to log out and stops.\n\n" +
			"Options come from the file given by --config (default " + config.DefaultPath + ", read when it exists),\n" +
			"then from the flags given, which override the file; see docs/configuration.md.",
		// Every flag of serve overrides an option of the configuration file
		// and is defined in package config (docs/configuration.md).
		Flags:  config.CLIFlags(),
		Action: serveAction,
	}
}

// newLogger returns a logger writing to w at the given level and format.
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", format)
}

// serveOptions are the validated flags of `stave serve`.
type serveOptions struct {
	dataDir       string
	portals       []iscsi.Portal
	socket        string
	discoveryAuth *login.Auth
}

// loadConfig reads the configuration file, applies the flags set on the
// command line and validates the result (docs/configuration.md). Without
// --config it reads config.DefaultPath if that exists; --config "" reads
// no file.
func loadConfig(c *cli.Context) (*config.Config, error) {
	cfg := config.Default()
	switch path := c.String("config"); {
	case !c.IsSet("config"):
		var err error
		if cfg, err = config.LoadFile(config.DefaultPath, true); err != nil {
			return nil, err
		}
	case path != "":
		var err error
		if cfg, err = config.LoadFile(path, false); err != nil {
			return nil, err
		}
	}
	if err := cfg.Merge(c); err != nil {
		return nil, err
	}
	if !c.IsSet("api") {
		// `stave --api X serve` (or $STAVE_API) sets the global flag.
		for _, pc := range c.Lineage()[1:] {
			if pc.IsSet("api") {
				cfg.API = pc.String("api")
			}
		}
	}
	if err := cfg.Finish(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func serveOptionsFrom(cfg *config.Config) *serveOptions {
	o := &serveOptions{dataDir: cfg.DataDir, socket: cfg.SocketPath()}
	for _, p := range cfg.Portals {
		o.portals = append(o.portals, iscsi.Portal{Listen: p.Listen, Advertise: p.Advertise, TPGT: 1})
	}
	if a := cfg.DiscoveryCHAP; a != nil {
		o.discoveryAuth = &login.Auth{User: a.User, Secret: a.Secret}
	}
	return o
}

func serveAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("serve takes no arguments, got %q", c.Args().Slice())
	}
	cfg, err := loadConfig(c)
	if err != nil {
		return err
	}
	if c.Bool("print-config") {
		return cfg.Print(c.App.Writer)
	}
	log, err := newLogger(c.App.ErrWriter, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return err
	}
	o := serveOptionsFrom(cfg)
	ctx := c.Context
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	unlock, err := lockDataDir(o.dataDir)
	if err != nil {
		return err
	}
	defer unlock()
	ln, err := adminapi.ListenUnix(o.socket)
	if err != nil {
		return err
	}
	defer os.Remove(o.socket)
	defer ln.Close() // after Serve, a no-op
	// etcd holds the catalogue and the reservations (docs/etcd-keys.md);
	// it closes last, after everything that uses it.
	nodeID, cl, err := openCluster(ctx, log, cfg)
	if err != nil {
		return err
	}
	defer cl.Close()
	cat, err := volume.OpenContext(ctx, volume.Config{Dir: o.dataDir, Logger: log.With(logkey.Component, "volume"),
		Store: cl.Volumes(), Node: nodeID})
	if err != nil {
		return err
	}
	// One registry for the daemon: the API serves it at /metrics and the
	// pool registers on it.
	reg := prometheus.NewRegistry()
	if err := reg.Register(etcdUpGauge(ctx, cl)); err != nil {
		return err
	}
	// Per-volume I/O metrics wrap the targets the iSCSI server sees
	// (iometrics.go).
	iom := newIOMetrics()
	if err := reg.Register(iom); err != nil {
		return err
	}
	ph := newPoolHost(log, o.dataDir, reg)
	ph.opts.ScrubRate = int64(cfg.Pool.ScrubRate)
	ph.opts.GCInterval = cfg.Pool.GCInterval
	ph.open(ctx)
	// Deferred calls run last-in first-out: the exports close, then the
	// pool, after the iSCSI server has drained and the API has stopped.
	defer ph.close()
	exp := newExporter(log.With(logkey.Component, "export"), cat, ph, cl, nodeID)
	exp.life = ctx
	defer exp.closeAll()
	if err := reg.Register(newReplicationMetrics(exp)); err != nil {
		return err
	}
	// Replicated volumes: the initial ownership record is created with the
	// spec; a node with a replication listener holds replicas.
	cl.SetCreateOps(func(s *volume.Spec) []clientv3.Op {
		if !s.Replicated() {
			return nil
		}
		return owner.InitOps(s.Name, s.Replicas)
	})
	var repLn net.Listener
	var repServerTLS *tls.Config
	if cfg.Replication.Listen != "" {
		reps, err := newReplicaHost(log.With(logkey.Component, "replica"), nodeID, cl, filepath.Join(o.dataDir, "epochs"), cfg.Replication.LeaseTTL)
		if err != nil {
			return err
		}
		reps.nports = len(o.portals)
		reps.cat, reps.replaceAfter = cat, cfg.Replication.ReplaceAfter
		reps.pools = ph
		reps.floatLink = cfg.Replication.FloatingInterface
		if len(o.portals) > 0 {
			if _, port, err := net.SplitHostPort(o.portals[0].Listen); err == nil {
				reps.portalPort = port
			}
		}
		if repServerTLS, reps.tls, err = replicationTLS(cfg.Replication.TLSCert, cfg.Replication.TLSKey, cfg.Replication.TLSCA); err != nil {
			return err
		}
		exp.reps = reps
		if repLn, err = net.Listen("tcp", cfg.Replication.Listen); err != nil {
			return fmt.Errorf("replication.listen: %w", err)
		}
		defer repLn.Close() // after Serve, a no-op
	}
	// The first reconcile pass exports this node's volumes before the
	// portals open; the loop started below keeps them in step with etcd.
	exp.pass(ctx)
	ph.warnOrphans(cat)
	publishPool(ctx, ph, cl, nodeID)
	srv, err := iscsi.NewServer(iscsi.Config{
		Logger:        log.With(logkey.Component, "iscsi"),
		Portals:       o.portals,
		Targets:       iom.source(exp),
		DiscoveryAuth: o.discoveryAuth,
		Limits:        login.DefaultLimits(),
		NOPInterval:   cfg.ISCSI.NOPInterval,
		NOPTimeout:    cfg.ISCSI.NOPTimeout,
		QueueDepth:    cfg.ISCSI.QueueDepth,
	})
	if err != nil {
		return err
	}
	exp.setServer(srv)
	if err := srv.Listen(); err != nil {
		return err
	}
	api, err := adminapi.New(adminapi.Config{
		Logger:    log.With(logkey.Component, "adminapi"),
		Volumes:   cat,
		Targets:   exp,
		Version:   versionString(),
		Registry:  reg,
		Pool:      ph,
		Placement: clusterPlacement{cl: cl},
	})
	if err != nil {
		// Serve with a done context closes the portals' listeners.
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_ = srv.Serve(cctx)
		return err
	}
	if err := setupAPI(log, cfg, api, srv, ph, cl, cat, nodeID); err != nil { // apilisten.go: portals, readiness, TCP listener
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_ = srv.Serve(cctx)
		return err
	}
	api.AddReadinessCheck("etcd", func(ctx context.Context) error { return cl.Healthy(ctx, etcdProbeTimeout) })
	api.SetNodes(clusterNodes{cl: cl, self: nodeID}) // GET /v1/nodes (nodecmd.go)
	var addrs []string
	for _, a := range srv.Addrs() {
		addrs = append(addrs, a.String())
	}
	log.Info("stave serving", logkey.Portal, strings.Join(addrs, ","), logkey.API, "unix:"+o.socket,
		logkey.Volumes, len(cat.List()), logkey.Version, versionString())
	if ready, ok := c.App.Metadata[readyKey].(func()); ok {
		ready()
	}
	// systemd (Type=notify) learns that start-up is over, and later that
	// shutdown began: on a signal, or when the server or the API fails.
	notify := os.Getenv("NOTIFY_SOCKET")
	if _, err := sdnotify.Notify(notify, sdnotify.Ready, sdnotify.Status("serving on "+strings.Join(addrs, ","))); err != nil {
		log.Warn("systemd notification failed", logkey.Err, err)
	}
	var stopping sync.Once
	notifyStopping := func() {
		stopping.Do(func() {
			if _, err := sdnotify.Notify(notify, sdnotify.Stopping, sdnotify.Status("stopping")); err != nil {
				log.Warn("systemd notification failed", logkey.Err, err)
			}
		})
	}
	g, gctx := errgroup.WithContext(ctx)
	context.AfterFunc(gctx, notifyStopping)
	// Replicated volumes hand over to another holder as soon as shutdown
	// starts, not after the iSCSI drain.
	context.AfterFunc(gctx, exp.stopReplicated)
	g.Go(func() error { return srv.Serve(gctx) })
	g.Go(func() error { return api.Serve(gctx, ln) })
	g.Go(func() error { return cat.Run(gctx) })
	g.Go(func() error { return exp.reconcile(gctx) })
	if repLn != nil {
		rs := replication.NewServer(replication.ServerConfig{Logger: log.With(logkey.Component, "replication"),
			Node: nodeID, Epochs: exp.reps.epochs, Lookup: exp.reps.lookup, TLS: repServerTLS})
		g.Go(func() error { return rs.Serve(gctx, repLn) })
	}
	// The node record names the portals initiators can be told (other
	// nodes announce them in SendTargets), else the bound addresses.
	recPortals := advertisedPortals(cfg, srv.Addrs())
	if len(recPortals) == 0 {
		recPortals = addrs
	}
	rec := nodeRecord(cfg, cl, ph, nodeID, recPortals)
	if repLn != nil {
		repAddr := cfg.Replication.Advertise
		if repAddr == "" {
			repAddr = repLn.Addr().String()
		}
		base := rec
		rec = func() cluster.NodeInfo {
			n := base()
			n.Replication = repAddr
			return n
		}
	}
	g.Go(func() error { return cl.RunNode(gctx, rec, nodeRefresh) }) // nodecmd.go
	err = g.Wait()
	notifyStopping() // sent before serve returns, whichever runs first
	log.Info("stave stopped")
	return err
}
