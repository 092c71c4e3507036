package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"stave.dev/stave/internal/adminapi"
	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/internal/volume"
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
		Description: "Exports every volume under DATA/volumes as the iSCSI target iqn.2026-11.dev.stave:NAME, LUN 0,\n" +
			"and serves the admin API on a unix socket. Opens the pool in DATA/pool when there is one (see\n" +
			"`stave pool create`). SIGINT or SIGTERM asks initiators to log out and stops.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data-dir", Value: defaultDataDir, Usage: "data directory (volumes, socket)"},
			&cli.StringSliceFlag{Name: "portal", Usage: "iSCSI listen address `HOST:PORT` (repeatable; default " + defaultPortal + ")"},
			&cli.StringSliceFlag{Name: "advertise", Usage: "address `HOST:PORT` announced by SendTargets for the --portal at the same position"},
			&cli.StringFlag{Name: "api", Usage: "admin API address `unix:PATH` (default unix:DATA/" + socketName + ")"},
			&cli.StringFlag{Name: "discovery-chap", Usage: "require CHAP `USER:SECRET` for discovery sessions"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text or json"},
		},
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

func parseServeFlags(c *cli.Context) (*serveOptions, error) {
	o := &serveOptions{dataDir: c.String("data-dir")}
	if o.dataDir == "" {
		return nil, errors.New("--data-dir is empty")
	}
	listen := c.StringSlice("portal")
	if len(listen) == 0 {
		listen = []string{defaultPortal}
	}
	adv := c.StringSlice("advertise")
	if len(adv) > len(listen) {
		return nil, fmt.Errorf("%d --advertise for %d --portal: give at most one --advertise per --portal, in the same order", len(adv), len(listen))
	}
	for i, l := range listen {
		p := iscsi.Portal{Listen: l, TPGT: 1}
		if i < len(adv) {
			p.Advertise = adv[i]
		}
		for _, a := range []string{p.Listen, p.Advertise} {
			if a != "" && !validHostPort(a) {
				return nil, fmt.Errorf("portal address %q: use HOST:PORT, e.g. 0.0.0.0:3260 or [::]:3260", a)
			}
		}
		o.portals = append(o.portals, p)
	}
	api := c.String("api")
	if !c.IsSet("api") {
		// `stave --api X serve` sets the global flag.
		for _, pc := range c.Lineage()[1:] {
			if pc.IsSet("api") {
				api = pc.String("api")
			}
		}
	}
	if api == "" {
		api = "unix:" + filepath.Join(o.dataDir, socketName)
	}
	sock, err := adminapi.SocketPath(api)
	if err != nil {
		return nil, fmt.Errorf("--api: %w", err)
	}
	o.socket = sock
	if s := c.String("discovery-chap"); s != "" {
		u, p, err := parseCred("discovery-chap", s)
		if err != nil {
			return nil, err
		}
		if err := volume.ValidateCHAP("discovery CHAP", u, p); err != nil {
			return nil, errors.New(strings.TrimPrefix(err.Error(), volume.ErrInvalid.Error()+": "))
		}
		o.discoveryAuth = &login.Auth{User: u, Secret: p}
	}
	return o, nil
}

func validHostPort(a string) bool {
	i := strings.LastIndexByte(a, ':')
	if i < 0 || i == len(a)-1 {
		return false
	}
	for _, r := range a[i+1:] {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

func serveAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("serve takes no arguments, got %q", c.Args().Slice())
	}
	log, err := newLogger(c.App.ErrWriter, c.String("log-level"), c.String("log-format"))
	if err != nil {
		return err
	}
	o, err := parseServeFlags(c)
	if err != nil {
		return err
	}
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
	cat, err := volume.Open(volume.Config{Dir: o.dataDir, Logger: log.With(logkey.Component, "volume")})
	if err != nil {
		return err
	}
	// One registry for the daemon: the API serves it at /metrics and the
	// pool registers on it.
	reg := prometheus.NewRegistry()
	ph := newPoolHost(log, o.dataDir, reg)
	ph.open(ctx)
	// Deferred calls run last-in first-out: the exports close, then the
	// pool, after the iSCSI server has drained and the API has stopped.
	defer ph.close()
	exp := newExporter(log.With(logkey.Component, "export"), cat, ph)
	defer exp.closeAll()
	for _, s := range cat.List() {
		if err := exp.Export(ctx, s); err != nil {
			log.Error("volume not exported", logkey.Volume, s.Name, logkey.Err, err)
		}
	}
	ph.warnOrphans(cat)
	srv, err := iscsi.NewServer(iscsi.Config{
		Logger:        log.With(logkey.Component, "iscsi"),
		Portals:       o.portals,
		Targets:       exp,
		DiscoveryAuth: o.discoveryAuth,
		Limits:        login.DefaultLimits(),
	})
	if err != nil {
		return err
	}
	exp.setServer(srv)
	if err := srv.Listen(); err != nil {
		return err
	}
	api, err := adminapi.New(adminapi.Config{
		Logger:   log.With(logkey.Component, "adminapi"),
		Volumes:  cat,
		Targets:  exp,
		Version:  versionString(),
		Registry: reg,
		Pool:     ph,
	})
	if err != nil {
		// Serve with a done context closes the portals' listeners.
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_ = srv.Serve(cctx)
		return err
	}
	var addrs []string
	for _, a := range srv.Addrs() {
		addrs = append(addrs, a.String())
	}
	log.Info("stave serving", logkey.Portal, strings.Join(addrs, ","), logkey.API, "unix:"+o.socket,
		logkey.Volumes, len(cat.List()), logkey.Version, versionString())
	if ready, ok := c.App.Metadata[readyKey].(func()); ok {
		ready()
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Serve(gctx) })
	g.Go(func() error { return api.Serve(gctx, ln) })
	err = g.Wait()
	log.Info("stave stopped")
	return err
}
