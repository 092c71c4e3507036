package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"

	"stave.dev/stave/cluster"
	"stave.dev/stave/internal/adminapi"
	"stave.dev/stave/internal/config"
	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/internal/volume"
	"stave.dev/stave/target/iscsi"
)

// setupAPI wires what the admin API needs beyond the catalogue, before it
// serves:
//
//  1. How initiators reach a volume (`stave k8s`): the advertised portals
//     of every node that holds it, read from etcd (cl) with this node's
//     (self) own as the fallback, and the discovery CHAP.
//  2. The readiness checks of /readyz: "portals" (every configured
//     portal is bound) and "pool" (a pool the node has is open); the API
//     adds "volumes" itself. The cluster store adds its own check with
//     api.AddReadinessCheck.
//  3. The TCP listener of http.listen, with its bearer token and/or
//     mutual TLS. It is bound here, so that a bad address, an unreadable
//     certificate or a token file others can read stop the start-up.
func setupAPI(log *slog.Logger, cfg *config.Config, api *adminapi.Server, srv *iscsi.Server, ph *poolHost,
	cl *cluster.Cluster, cat *volume.Catalog, self string) error {
	portals := advertisedPortals(cfg, srv.Addrs())
	n := adminapi.NodeConfig{
		// Every node that holds the volume, the serving node's portals
		// first, from the node records in etcd (portals.go).
		Portals: func(name string) []string {
			sp, err := cat.Get(name)
			if err != nil {
				return portals // deleted since the API looked it up
			}
			// NB: NodeConfig.Portals takes no context; the lookup is
			// bounded instead.
			ctx, cancel := context.WithTimeout(context.Background(), portalLookupTimeout)
			defer cancel()
			return volumePortals(ctx, log, cl, sp, self, portals)
		},
	}
	if d := cfg.DiscoveryCHAP; d != nil {
		n.DiscoveryCHAP = &adminapi.DiscoveryCHAP{User: d.User, Secret: d.Secret}
	}
	api.SetNode(n)
	if len(portals) == 0 {
		log.Warn("no portal has an address initiators can be told (a wildcard listen address without advertise): " +
			"`stave k8s pv` cannot name a portal; set portals[].advertise (--advertise)")
	}

	want := len(cfg.Portals)
	api.AddReadinessCheck("portals", func(context.Context) error {
		if got := len(srv.Addrs()); got != want {
			return fmt.Errorf("%d of %d iSCSI portals are listening: see the daemon log", got, want)
		}
		return nil
	})
	api.AddReadinessCheck("pool", func(context.Context) error {
		if !ph.Exists() {
			return nil // no pool: file volumes only
		}
		_, err := ph.get()
		return err
	})

	if cfg.HTTP.Listen == "" {
		return nil
	}
	ac := adminapi.AuthConfig{TokenFile: cfg.HTTP.TokenFile, ClientCA: cfg.HTTP.ClientCA,
		TLSCert: cfg.HTTP.TLSCert, TLSKey: cfg.HTTP.TLSKey}
	auth, err := adminapi.NewAuth(ac)
	if err != nil {
		return err
	}
	tc, err := adminapi.ServerTLSConfig(ac)
	if err != nil {
		return err
	}
	ln, err := adminapi.ListenTCP(cfg.HTTP.Listen, tc)
	if err != nil {
		return err
	}
	if err := api.AddListener(ln, auth); err != nil {
		_ = ln.Close()
		return err
	}
	scheme, mode := "http", "bearer token"
	if tc != nil {
		scheme = "https"
	}
	switch {
	case cfg.HTTP.ClientCA != "" && cfg.HTTP.TokenFile != "":
		mode = "client certificate and bearer token"
	case cfg.HTTP.ClientCA != "":
		mode = "client certificate"
	}
	log.Info("admin API listening on TCP, callers authenticate with a "+mode, logkey.API, scheme+"://"+ln.Addr().String())
	if tc == nil {
		log.Warn("the admin API's TCP listener speaks plain HTTP: its bearer token and the CHAP secrets it serves cross the network in clear text; "+
			"set http.tls_cert and http.tls_key", logkey.API, ln.Addr().String())
	}
	return nil
}

// advertisedPortals returns the HOST:PORT that initiators are told for
// each portal: its advertise address, else its bound address unless that
// is a wildcard (which initiators cannot be told).
func advertisedPortals(cfg *config.Config, bound []net.Addr) []string {
	var out []string
	for i, p := range cfg.Portals {
		if p.Advertise != "" {
			out = append(out, p.Advertise)
			continue
		}
		if i >= len(bound) {
			continue
		}
		ta, ok := bound[i].(*net.TCPAddr)
		if !ok || ta.IP.IsUnspecified() {
			continue
		}
		out = append(out, net.JoinHostPort(ta.IP.String(), strconv.Itoa(ta.Port)))
	}
	return out
}
