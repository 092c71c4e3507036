package config

import (
	"fmt"
	"time"
)

// Flags is what Merge reads flags through. *cli.Context (urfave/cli/v2)
// satisfies it. IsSet must report only flags the operator gave
// explicitly: a flag left at its default never overrides the file.
type Flags interface {
	IsSet(name string) bool
	String(name string) string
	StringSlice(name string) []string
	Int(name string) int
	Duration(name string) time.Duration
}

// Merge copies the explicitly set flags of `stave serve` over c (the file's
// values). Flags that f does not define are never set, so an older or
// newer flag set is fine. --portal replaces the file's portals;
// --advertise alone sets the announced addresses of the file's portals,
// by position. An empty --discovery-chap removes discovery CHAP. Merge
// returns an error only for a flag value that cannot be parsed; Finish
// validates the rest.
func (c *Config) Merge(f Flags) error {
	if c.src == nil {
		c.src = &source{lines: map[string]int{}, flags: map[string]string{}}
	}
	mark := func(path, flag string) { c.src.flags[path] = "--" + flag }
	str := func(flag, path string, dst *string) {
		if f.IsSet(flag) {
			*dst = f.String(flag)
			mark(path, flag)
		}
	}
	dur := func(flag, path string, dst *time.Duration) {
		if f.IsSet(flag) {
			*dst = f.Duration(flag)
			mark(path, flag)
		}
	}
	str("data-dir", "data_dir", &c.DataDir)
	if f.IsSet("portal") {
		c.Portals = nil
		for _, l := range f.StringSlice("portal") {
			c.Portals = append(c.Portals, Portal{Listen: l})
		}
		mark("portals", "portal")
		// Lines of the file's portals no longer apply.
		for p := range c.src.lines {
			if len(p) >= len("portals") && p[:len("portals")] == "portals" {
				delete(c.src.lines, p)
			}
		}
	}
	if f.IsSet("advertise") {
		adv := f.StringSlice("advertise")
		if len(adv) > len(c.Portals) {
			return fmt.Errorf("%w: %d --advertise for %d portals: give at most one --advertise per --portal, in the same order",
				ErrInvalid, len(adv), len(c.Portals))
		}
		for i, a := range adv {
			c.Portals[i].Advertise = a
			mark(fmt.Sprintf("portals[%d].advertise", i), "advertise")
		}
	}
	str("api", "api", &c.API)
	if f.IsSet("discovery-chap") {
		c.DiscoveryCHAP = nil
		if s := f.String("discovery-chap"); s != "" {
			a, err := ParseCHAP(s)
			if err != nil {
				return fmt.Errorf("--discovery-chap: %w", err)
			}
			c.DiscoveryCHAP = a
		}
		mark("discovery_chap", "discovery-chap")
	}
	str("log-level", "log.level", &c.Log.Level)
	str("log-format", "log.format", &c.Log.Format)
	dur("nop-interval", "iscsi.nop_interval", &c.ISCSI.NOPInterval)
	dur("nop-timeout", "iscsi.nop_timeout", &c.ISCSI.NOPTimeout)
	if f.IsSet("queue-depth") {
		c.ISCSI.QueueDepth = f.Int("queue-depth")
		mark("iscsi.queue_depth", "queue-depth")
	}
	str("http-listen", "http.listen", &c.HTTP.Listen)
	str("http-token-file", "http.token_file", &c.HTTP.TokenFile)
	str("http-tls-cert", "http.tls_cert", &c.HTTP.TLSCert)
	str("http-tls-key", "http.tls_key", &c.HTTP.TLSKey)
	str("http-client-ca", "http.client_ca", &c.HTTP.ClientCA)
	if f.IsSet("scrub-rate") {
		s, err := ParseSize(f.String("scrub-rate"))
		if err != nil {
			return fmt.Errorf("%w: --scrub-rate: %v", ErrInvalid, err)
		}
		c.Pool.ScrubRate = s
		mark("pool.scrub_rate", "scrub-rate")
	}
	dur("gc-interval", "pool.gc_interval", &c.Pool.GCInterval)
	strs := func(flag, path string, dst *[]string) {
		if f.IsSet(flag) {
			*dst = append([]string(nil), f.StringSlice(flag)...)
			mark(path, flag)
		}
	}
	strs("etcd-endpoints", "etcd.endpoints", &c.Etcd.Endpoints)
	str("etcd-ca", "etcd.ca", &c.Etcd.CA)
	str("etcd-cert", "etcd.cert", &c.Etcd.Cert)
	str("etcd-key", "etcd.key", &c.Etcd.Key)
	strs("etcd-listen-client-urls", "etcd.listen_client_urls", &c.Etcd.ListenClientURLs)
	strs("etcd-listen-peer-urls", "etcd.listen_peer_urls", &c.Etcd.ListenPeerURLs)
	strs("initial-cluster", "etcd.initial_cluster", &c.Etcd.InitialCluster)
	str("join", "etcd.join", &c.Etcd.Join)
	str("replication-listen", "replication.listen", &c.Replication.Listen)
	str("replication-advertise", "replication.advertise", &c.Replication.Advertise)
	dur("owner-lease-ttl", "replication.lease_ttl", &c.Replication.LeaseTTL)
	dur("replace-after", "replication.replace_after", &c.Replication.ReplaceAfter)
	str("floating-interface", "replication.floating_interface", &c.Replication.FloatingInterface)
	str("replication-tls-cert", "replication.tls_cert", &c.Replication.TLSCert)
	str("replication-tls-key", "replication.tls_key", &c.Replication.TLSKey)
	str("replication-tls-ca", "replication.tls_ca", &c.Replication.TLSCA)
	str("node-name", "node.name", &c.Node.Name)
	if f.IsSet("label") {
		labels := map[string]string{}
		for _, l := range f.StringSlice("label") {
			k, v, err := ParseLabel(l)
			if err != nil {
				return err
			}
			labels[k] = v
		}
		c.Node.Labels = labels // replaces the file's labels, like --portal
		mark("node.labels", "label")
	}
	return nil
}
