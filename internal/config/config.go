// Package config is the configuration of the daemon, `stave serve`: one
// YAML file (/etc/stave/stave.yaml by default) whose options mirror the
// command-line flags, and flags that override it.
//
// The order is fixed:
//
//  1. Default() returns every option at its default.
//  2. Load or LoadFile decodes the file over those defaults. Decoding is
//     strict: an unknown key, a value of the wrong type or a second
//     document is an error naming the file, the line and the key.
//  3. Merge copies the flags the operator set explicitly over the file's
//     values (an unset flag never overrides the file).
//  4. Finish fills the options whose defaults derive from others (the API
//     socket lives in the data directory) and validates everything. Its
//     error lists every problem, each saying what to change and, for
//     values from the file, on which line.
//
// Print renders the effective configuration as YAML (`stave serve
// --print-config`), with secrets redacted. docs/configuration.md is
// generated from the field comments and tags below by this package's
// tests (`go test ./internal/config -update` rewrites it).
//
// Tags on Config's fields: `yaml` is the key, `flag` the `stave serve`
// flag that overrides it (empty: file only), `default` the default to
// document where Default's value would not say it ('x' becomes `x`).
//
// The package reads no flags and no environment: cmd/stave passes the
// flags in through the Flags interface, which *cli.Context satisfies.
package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// DefaultPath is where the daemon looks for its configuration file.
const DefaultPath = "/etc/stave/stave.yaml"

// Defaults of the options, as documented in docs/configuration.md.
const (
	DefaultDataDir      = "./stave-data"
	DefaultPortal       = "[::]:3260"
	DefaultSocketName   = "stave.sock"
	DefaultLogLevel     = "info"
	DefaultLogFormat    = "text"
	DefaultQueueDepth   = 128
	DefaultGCInterval   = 10 * time.Second
	DefaultLeaseTTL     = 2 * time.Second
	DefaultReplaceAfter = 10 * time.Minute
	MinCHAPSecret       = 12
	MaxCHAPSecret       = 255
	MaxQueueDepth       = 4096
	maxUnixSocketPath   = 107 // sun_path is 108 bytes with the NUL
	redacted            = "<redacted>"
	defaultISCSIPort    = 3260
	minValidPortNumber  = 1
)

// ErrInvalid marks every validation error returned by Finish.
var ErrInvalid = errors.New("config: invalid configuration")

// Config is the whole configuration of `stave serve`. The zero value is
// not usable: start from Default.
type Config struct {
	// Directory for the daemon's state: volumes, the pool's index and
	// the admin API socket (unless api says otherwise). Created, mode
	// 0700, if missing; one daemon per directory.
	DataDir string `yaml:"data_dir" flag:"data-dir"`
	// iSCSI portals: the addresses the target listens on, each with the
	// address SendTargets announces for it.
	Portals []Portal `yaml:"portals" default:"one: listen '[::]:3260'"`
	// Admin API address, `unix:PATH`; the socket is created mode 0600.
	API string `yaml:"api" flag:"api" default:"'unix:<data_dir>/stave.sock'"`
	// CHAP credentials that discovery (SendTargets) sessions must
	// present; absent: discovery needs no CHAP.
	DiscoveryCHAP *CHAP `yaml:"discovery_chap,omitempty" flag:"discovery-chap" default:"none"`
	// Logging to standard error.
	Log Log `yaml:"log"`
	// iSCSI session settings.
	ISCSI ISCSI `yaml:"iscsi"`
	// TCP listener for the admin API and /metrics, beside the unix
	// socket. Callers authenticate with a bearer token, a client
	// certificate (mutual TLS) or both; /healthz and /readyz answer
	// without.
	HTTP HTTP `yaml:"http"`
	// Pool (block store) settings; the pool itself is created with
	// `stave pool create` and lives in `<data_dir>/pool`.
	Pool Pool `yaml:"pool"`
	// etcd, which holds the cluster's state (volumes, ACLs, CHAP
	// secrets, reservations; docs/etcd-keys.md). Without endpoints the
	// daemon runs an etcd member of its own with its data in
	// `<data_dir>/etcd`.
	Etcd Etcd `yaml:"etcd"`
	// This node's name and labels, shown by `stave node list`.
	Node Node `yaml:"node"`
	// The data path between the nodes that hold copies of replicated
	// volumes (`volume create --replicas N`).
	Replication Replication `yaml:"replication"`

	src *source // where values came from, for error positions; may be nil
}

// Portal is one iSCSI listen address.
type Portal struct {
	// Address to listen on, `HOST:PORT`; `[::]:3260` is every address
	// (IPv4 and IPv6).
	Listen string `yaml:"listen" flag:"portal"`
	// Address SendTargets announces for this portal, `HOST:PORT`, e.g.
	// the node's public address behind NAT. Without it, SendTargets
	// announces listen or, for a wildcard listen address, the address
	// the initiator connected to. The flag is matched to --portal by
	// position.
	Advertise string `yaml:"advertise,omitempty" flag:"advertise" default:"listen, see meaning"`
}

// CHAP is a CHAP user name and secret.
type CHAP struct {
	// CHAP user name. The flag takes `USER:SECRET`.
	User string `yaml:"user"`
	// CHAP secret, 12 to 255 characters (Windows initiators need 12 to 16).
	Secret string `yaml:"secret"`
}

// Log configures the daemon's structured log.
type Log struct {
	// Least severe level logged: debug, info, warn or error.
	Level string `yaml:"level" flag:"log-level"`
	// Line format: text (logfmt) or json.
	Format string `yaml:"format" flag:"log-format"`
}

// ISCSI configures sessions and connections.
type ISCSI struct {
	// Idle time after which the target pings the initiator with a
	// NOP-In; 0 disables pings.
	NOPInterval time.Duration `yaml:"nop_interval" flag:"nop-interval"`
	// How long to wait for the answer to a NOP-In ping before dropping
	// the connection; 0 means nop_interval.
	NOPTimeout time.Duration `yaml:"nop_timeout" flag:"nop-timeout" default:"nop_interval"`
	// Commands one session may have outstanding (the CmdSN window),
	// 1 to 4096.
	QueueDepth int `yaml:"queue_depth" flag:"queue-depth"`
}

// HTTP configures the admin API's TCP listener.
type HTTP struct {
	// Address `HOST:PORT` for the admin API and /metrics over TCP;
	// empty: no TCP listener.
	Listen string `yaml:"listen" flag:"http-listen"`
	// File holding the bearer token that TCP clients must send
	// (`Authorization: Bearer TOKEN`), at least 32 characters; it must
	// not be readable by others (chmod 600). With listen, give this,
	// client_ca, or both.
	TokenFile string `yaml:"token_file" flag:"http-token-file"`
	// PEM certificate (chain) of the TCP listener; with tls_key it
	// serves HTTPS.
	TLSCert string `yaml:"tls_cert,omitempty" flag:"http-tls-cert"`
	// PEM private key of tls_cert.
	TLSKey string `yaml:"tls_key,omitempty" flag:"http-tls-key"`
	// PEM file of the CAs whose client certificates the TCP listener
	// accepts (mutual TLS): a client must present one. Needs tls_cert
	// and tls_key.
	ClientCA string `yaml:"client_ca,omitempty" flag:"http-client-ca"`
}

// Pool configures the pool's background work.
type Pool struct {
	// Rate of the background scrub, a size per second (e.g. 50MiB);
	// 0 disables the background scrub.
	ScrubRate Size `yaml:"scrub_rate" flag:"scrub-rate"`
	// Period of the background cleaner (garbage collection).
	GCInterval time.Duration `yaml:"gc_interval" flag:"gc-interval"`
}

// Etcd configures the etcd that holds the cluster's state.
type Etcd struct {
	// Client URLs of an external etcd cluster, e.g.
	// `https://10.0.0.1:2379`; empty: run an embedded member. The flag
	// is repeatable.
	Endpoints []string `yaml:"endpoints,omitempty" flag:"etcd-endpoints" default:"none: embedded"`
	// PEM file of the CA that signed the external etcd's server
	// certificates; empty: the system's roots.
	CA string `yaml:"ca,omitempty" flag:"etcd-ca"`
	// PEM client certificate for the external etcd (with key).
	Cert string `yaml:"cert,omitempty" flag:"etcd-cert"`
	// PEM private key of cert.
	Key string `yaml:"key,omitempty" flag:"etcd-key"`
	// URLs the embedded member serves clients (etcdctl) on,
	// `http://HOST:PORT`; empty: 127.0.0.1 on a port free at start,
	// written to `<data_dir>/etcd/endpoints`.
	ListenClientURLs []string `yaml:"listen_client_urls,omitempty" flag:"etcd-listen-client-urls" default:"127.0.0.1, a free port"`
	// URLs the embedded member listens on for peers, `http://HOST:PORT`;
	// empty: 127.0.0.1 on a port free at start.
	ListenPeerURLs []string `yaml:"listen_peer_urls,omitempty" flag:"etcd-listen-peer-urls" default:"127.0.0.1, a free port"`
	// Members of a new embedded etcd cluster, `NAME=PEER-URL` each (e.g.
	// `n1=http://10.0.0.1:2380`), node.name among them, the same list on
	// every member (three or five); empty: a single member. The URLs are
	// advertised as given, so listen_peer_urls (and listen_client_urls)
	// must be this node's own addresses, not wildcards. A member with
	// data in `<data_dir>/etcd` restarts from it and ignores this. The
	// flag takes a comma-separated list.
	InitialCluster []string `yaml:"initial_cluster,omitempty" flag:"initial-cluster" default:"none: single member"`
	// Join a running embedded cluster: the etcd client address
	// `HOST:PORT` (or URL) of one of its nodes. This node's member is
	// added with its listen_peer_urls and started; a member with data in
	// `<data_dir>/etcd` just restarts.
	Join string `yaml:"join,omitempty" flag:"join"`
}

// Node names this node and describes where it is.
type Node struct {
	// Name of the node in `stave node list`, and of its embedded etcd
	// member (the name in etcd.initial_cluster). Required with
	// etcd.initial_cluster or etcd.join.
	Name string `yaml:"name,omitempty" flag:"node-name" default:"the host name"`
	// Labels of the node, e.g. `zone: a` and `rack: r1`. The flag takes
	// `KEY=VALUE` and is repeatable.
	Labels map[string]string `yaml:"labels,omitempty" flag:"label" default:"none"`
}

// Replication configures replica traffic and volume ownership.
type Replication struct {
	// Address `HOST:PORT` on which this node receives the writes of the
	// volumes it holds a replica of; empty: this node holds no replicas
	// (replicated volumes are placed on other nodes).
	Listen string `yaml:"listen,omitempty" flag:"replication-listen" default:"none"`
	// Address other nodes dial for listen, `HOST:PORT`; needed when
	// listen is a wildcard address.
	Advertise string `yaml:"advertise,omitempty" flag:"replication-advertise" default:"listen"`
	// TTL of the etcd lease by which a node owns a replicated volume. The
	// owner stops serving before it can lapse; when the owner dies, another
	// replica takes over about this long later.
	LeaseTTL time.Duration `yaml:"lease_ttl" flag:"owner-lease-ttl"`
	// How long a node that holds a copy may stay down before the owner
	// moves its copy to another node (rebuilt there by a resync); 0
	// never moves copies.
	ReplaceAfter time.Duration `yaml:"replace_after" flag:"replace-after"`
	// Interface that carries the floating portal addresses of the
	// replicated volumes this node owns (`volume create --floating-ip`);
	// empty: this node holds none (hosts reach it through its portals).
	FloatingInterface string `yaml:"floating_interface,omitempty" flag:"floating-interface"`
	// PEM certificate (chain) this node presents on replication
	// connections, as server and as client; with tls_key and tls_ca the
	// replication traffic is mutual TLS. Its SANs must hold the address
	// other nodes dial (replication.advertise or .listen).
	TLSCert string `yaml:"tls_cert,omitempty" flag:"replication-tls-cert"`
	// PEM private key of tls_cert.
	TLSKey string `yaml:"tls_key,omitempty" flag:"replication-tls-key"`
	// PEM file of the CAs that sign the nodes' replication certificates;
	// peers must present one (both directions).
	TLSCA string `yaml:"tls_ca,omitempty" flag:"replication-tls-ca"`
}

// Default returns the configuration used when there is no file and no
// flag: a single node serving on [::]:3260 from ./stave-data.
func Default() *Config {
	return &Config{
		DataDir:     DefaultDataDir,
		Portals:     []Portal{{Listen: DefaultPortal}},
		Log:         Log{Level: DefaultLogLevel, Format: DefaultLogFormat},
		ISCSI:       ISCSI{QueueDepth: DefaultQueueDepth},
		Pool:        Pool{GCInterval: DefaultGCInterval},
		Replication: Replication{LeaseTTL: DefaultLeaseTTL, ReplaceAfter: DefaultReplaceAfter},
	}
}

// SocketPath returns the path of the admin API's unix socket. Call it
// after Finish.
func (c *Config) SocketPath() string {
	return strings.TrimPrefix(c.API, "unix:")
}

// Clone returns a deep copy of c.
func (c *Config) Clone() *Config {
	d := *c
	d.src = c.src.clone()
	d.Portals = append([]Portal(nil), c.Portals...)
	if c.DiscoveryCHAP != nil {
		a := *c.DiscoveryCHAP
		d.DiscoveryCHAP = &a
	}
	d.Etcd.Endpoints = append([]string(nil), c.Etcd.Endpoints...)
	d.Etcd.ListenClientURLs = append([]string(nil), c.Etcd.ListenClientURLs...)
	d.Etcd.ListenPeerURLs = append([]string(nil), c.Etcd.ListenPeerURLs...)
	d.Etcd.InitialCluster = append([]string(nil), c.Etcd.InitialCluster...)
	d.Node.Labels = maps.Clone(c.Node.Labels)
	return &d
}

// Finish fills the options whose defaults derive from others and
// validates c. The error wraps ErrInvalid and lists every problem found,
// one per line, each naming the option and saying what to change.
func (c *Config) Finish() error {
	return c.finish(c.src)
}

// finish is Finish, prefixing each problem with its file position when
// src knows it.
func (c *Config) finish(src *source) error {
	if c.API == "" && c.DataDir != "" {
		c.API = "unix:" + strings.TrimSuffix(c.DataDir, "/") + "/" + DefaultSocketName
	}
	if c.ISCSI.NOPTimeout == 0 {
		c.ISCSI.NOPTimeout = c.ISCSI.NOPInterval
	}
	var v validator
	c.validate(&v)
	return v.err(src)
}

// problem is one validation failure: the option's YAML path
// (portals[1].listen) and what is wrong with it.
type problem struct {
	path, msg string
}

type validator struct{ problems []problem }

func (v *validator) addf(path, format string, args ...any) {
	v.problems = append(v.problems, problem{path, fmt.Sprintf(format, args...)})
}

func (v *validator) err(src *source) error {
	if len(v.problems) == 0 {
		return nil
	}
	var b strings.Builder
	b.WriteString(ErrInvalid.Error())
	for _, p := range v.problems {
		b.WriteString("\n  ")
		if pos := src.position(p.path); pos != "" {
			b.WriteString(pos)
			b.WriteString(": ")
		}
		b.WriteString(p.path)
		b.WriteString(": ")
		b.WriteString(p.msg)
	}
	return &Error{msg: b.String()}
}

// Error is a configuration error. It wraps ErrInvalid when the problem is
// a value (not a file that cannot be read).
type Error struct{ msg string }

func (e *Error) Error() string { return e.msg }

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *Error) Unwrap() error { return ErrInvalid }

func (c *Config) validate(v *validator) {
	if c.DataDir == "" {
		v.addf("data_dir", "is empty: give a directory, e.g. /var/lib/stave")
	}
	if len(c.Portals) == 0 {
		v.addf("portals", "none: give at least one, e.g. - listen: %q", DefaultPortal)
	}
	seen := map[string]int{}
	for i, p := range c.Portals {
		path := fmt.Sprintf("portals[%d]", i)
		key, ok := checkHostPort(v, path+".listen", p.Listen, true)
		if ok {
			if j, dup := seen[key]; dup {
				v.addf(path+".listen", "%q duplicates portals[%d]: give each address once", p.Listen, j)
			}
			seen[key] = i
		}
		if p.Advertise != "" {
			checkHostPort(v, path+".advertise", p.Advertise, false)
		}
	}
	switch path, ok := strings.CutPrefix(c.API, "unix:"); {
	case !ok || path == "":
		v.addf("api", "%q: use unix:PATH, e.g. unix:/run/stave/stave.sock", c.API)
	case len(path) > maxUnixSocketPath:
		v.addf("api", "socket path is %d bytes, more than a unix socket allows (%d): use a shorter path", len(path), maxUnixSocketPath)
	}
	if a := c.DiscoveryCHAP; a != nil {
		checkCHAP(v, "discovery_chap", a.User, a.Secret)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		v.addf("log.level", "%q: use debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		v.addf("log.format", "%q: use text or json", c.Log.Format)
	}
	if c.ISCSI.NOPInterval < 0 {
		v.addf("iscsi.nop_interval", "%s is negative: use 0 (no pings) or a duration such as 10s", c.ISCSI.NOPInterval)
	} else if c.ISCSI.NOPInterval > 0 && c.ISCSI.NOPInterval < time.Second {
		v.addf("iscsi.nop_interval", "%s is under 1s: use at least 1s, or 0 for no pings", c.ISCSI.NOPInterval)
	}
	if c.ISCSI.NOPTimeout < 0 {
		v.addf("iscsi.nop_timeout", "%s is negative: use a duration such as 10s", c.ISCSI.NOPTimeout)
	} else if c.ISCSI.NOPTimeout > 0 && c.ISCSI.NOPInterval == 0 {
		v.addf("iscsi.nop_timeout", "is set but nop_interval is 0 (no pings): set nop_interval too, or remove nop_timeout")
	}
	if q := c.ISCSI.QueueDepth; q < 1 || q > MaxQueueDepth {
		v.addf("iscsi.queue_depth", "%d: use 1 to %d", q, MaxQueueDepth)
	}
	checkHTTP(v, &c.HTTP)
	if c.Pool.ScrubRate < 0 {
		v.addf("pool.scrub_rate", "%s is negative: use 0 (off) or a rate such as 50MiB", c.Pool.ScrubRate)
	}
	if c.Pool.GCInterval <= 0 {
		v.addf("pool.gc_interval", "%s: use a positive duration such as 10s", c.Pool.GCInterval)
	}
	c.Etcd.validate(v)
	c.Node.validate(v)
	c.Replication.validate(v)
	c.validateCluster(v)
}

// validate checks the replication options.
func (r *Replication) validate(v *validator) {
	if r.Listen != "" {
		checkHostPort(v, "replication.listen", r.Listen, true)
	}
	if r.Advertise != "" {
		if r.Listen == "" {
			v.addf("replication.advertise", "is set but replication.listen is empty: set replication.listen (--replication-listen) too, or remove it")
		} else {
			checkHostPort(v, "replication.advertise", r.Advertise, false)
		}
	} else if r.Listen != "" {
		if h, _, err := net.SplitHostPort(r.Listen); err == nil {
			if ip := net.ParseIP(h); h == "" || (ip != nil && ip.IsUnspecified()) {
				v.addf("replication.listen", "%q is a wildcard address: set replication.advertise (--replication-advertise) to the address other nodes reach this one at", r.Listen)
			}
		}
	}
	if r.LeaseTTL < time.Second || r.LeaseTTL > time.Minute || r.LeaseTTL%time.Second != 0 {
		v.addf("replication.lease_ttl", "%s: use whole seconds from 1s to 1m, e.g. 2s (etcd leases have whole-second TTLs)", r.LeaseTTL)
	}
	if set := btoi(r.TLSCert != "") + btoi(r.TLSKey != "") + btoi(r.TLSCA != ""); set != 0 && set != 3 {
		v.addf("replication.tls_cert", "replication TLS needs tls_cert, tls_key and tls_ca together (mutual TLS): set all three or none")
	} else if set == 3 && r.Listen == "" {
		v.addf("replication.tls_cert", "is set but replication.listen is empty: set replication.listen (--replication-listen) too, or remove it")
	}
	if r.ReplaceAfter < 0 {
		v.addf("replication.replace_after", "%s is negative: use 0 (never) or a duration such as 10m", r.ReplaceAfter)
	}
}

// btoi is 1 for true.
func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// checkHTTP validates the TCP listener's options. The files themselves
// are read when the daemon starts.
func checkHTTP(v *validator, h *HTTP) {
	if h.Listen == "" {
		for _, o := range []struct{ path, val string }{
			{"http.token_file", h.TokenFile}, {"http.tls_cert", h.TLSCert}, {"http.tls_key", h.TLSKey}, {"http.client_ca", h.ClientCA},
		} {
			if o.val != "" {
				v.addf(o.path, "is set but http.listen is empty: set http.listen (--http-listen) too, or remove it")
			}
		}
		return
	}
	checkHostPort(v, "http.listen", h.Listen, true)
	if h.TokenFile == "" && h.ClientCA == "" {
		v.addf("http.token_file", "is empty while http.listen is set: give a file holding the API token, "+
			"or http.client_ca for mutual TLS (the TCP API can read every CHAP secret, so it needs authentication)")
	}
	if (h.TLSCert == "") != (h.TLSKey == "") {
		v.addf("http.tls_cert", "and http.tls_key go together: give both, or neither for plain HTTP")
	}
	if h.ClientCA != "" && h.TLSCert == "" {
		v.addf("http.client_ca", "needs TLS: set http.tls_cert and http.tls_key too")
	}
}

// checkHostPort validates a HOST:PORT option. A listen address may have
// an empty host (every address) and port 0 (any free port, for tests);
// an announced address needs both. It returns a canonical form of the
// address for duplicate detection.
func checkHostPort(v *validator, path, addr string, listen bool) (string, bool) {
	example := "e.g. 0.0.0.0:3260 or [::]:3260"
	if !listen {
		example = "e.g. 192.0.2.10:3260 or [2001:db8::10]:3260"
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		if _, perr := strconv.Atoi(addr); perr == nil || !strings.Contains(addr, ":") {
			v.addf(path, "%q has no port: use HOST:PORT, %s", addr, example)
		} else {
			v.addf(path, "%q: use HOST:PORT with an IPv6 host in brackets, %s", addr, example)
		}
		return "", false
	}
	n, err := strconv.Atoi(port)
	min := minValidPortNumber
	if listen {
		min = 0
	}
	if err != nil || n < min || n > 65535 {
		v.addf(path, "port %q of %q is out of range: use %d to 65535 (iSCSI's is %d)", port, addr, min, defaultISCSIPort)
		return "", false
	}
	if host == "" {
		if !listen {
			v.addf(path, "%q has no host: give the address initiators connect to, %s", addr, example)
			return "", false
		}
		return net.JoinHostPort("", port), true
	}
	if ip := net.ParseIP(strings.SplitN(host, "%", 2)[0]); ip != nil {
		if !listen && ip.IsUnspecified() {
			v.addf(path, "%q is a wildcard address: announce an address initiators can reach, %s", addr, example)
			return "", false
		}
		return net.JoinHostPort(ip.String(), port), true
	}
	if !validHostname(host) {
		v.addf(path, "host %q of %q is neither an IP address nor a host name: %s", host, addr, example)
		return "", false
	}
	return net.JoinHostPort(strings.ToLower(host), port), true
}

// validHostname reports whether h is a DNS name (RFC 1123 labels).
func validHostname(h string) bool {
	if len(h) == 0 || len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// checkCHAP applies the rules of internal/volume.ValidateCHAP (the same
// limits as volume CHAP), without importing it.
func checkCHAP(v *validator, path, user, secret string) {
	if user == "" {
		v.addf(path+".user", "is empty: give the CHAP user name")
	}
	if strings.ContainsAny(user, "\x00\n\r") {
		v.addf(path+".user", "contains NUL or a line break: remove it")
	}
	if strings.ContainsAny(secret, "\x00\n\r") {
		v.addf(path+".secret", "contains NUL or a line break: remove it")
	}
	if n := len(secret); n < MinCHAPSecret || n > MaxCHAPSecret {
		v.addf(path+".secret", "is %d characters: use %d to %d (RFC 7143 recommends at least 12; Windows initiators need 12 to 16)",
			n, MinCHAPSecret, MaxCHAPSecret)
	}
}

// ParseCHAP parses the `USER:SECRET` form of the --discovery-chap flag.
// The secret may contain colons; the user may not.
func ParseCHAP(s string) (*CHAP, error) {
	u, p, ok := strings.Cut(s, ":")
	if !ok {
		return nil, fmt.Errorf("%w: %q: use USER:SECRET", ErrInvalid, redactSecret(s))
	}
	return &CHAP{User: u, Secret: p}, nil
}

// redactSecret hides everything after the first colon.
func redactSecret(s string) string {
	if u, _, ok := strings.Cut(s, ":"); ok {
		return u + ":" + redacted
	}
	if len(s) > 0 {
		return redacted
	}
	return s
}

// validate checks the etcd options.
func (e *Etcd) validate(v *validator) {
	checkURLs := func(path string, urls []string, example string) {
		for i, raw := range urls {
			u, err := url.Parse(raw)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Port() == "" {
				v.addf(fmt.Sprintf("%s[%d]", path, i), "%q: use http://HOST:PORT or https://HOST:PORT, e.g. %s", raw, example)
			}
		}
	}
	checkURLs("etcd.endpoints", e.Endpoints, "https://10.0.0.1:2379")
	checkURLs("etcd.listen_client_urls", e.ListenClientURLs, "http://127.0.0.1:2379")
	checkURLs("etcd.listen_peer_urls", e.ListenPeerURLs, "http://127.0.0.1:2380")
	if (e.Cert == "") != (e.Key == "") {
		v.addf("etcd.cert", "and etcd.key go together: give both (a client certificate and its key) or neither")
	}
	if len(e.Endpoints) == 0 && (e.CA != "" || e.Cert != "" || e.Key != "") {
		v.addf("etcd.endpoints", "is empty while etcd TLS files are set: give the external etcd's endpoints, or remove ca, cert and key")
	}
	if len(e.Endpoints) > 0 && (len(e.ListenClientURLs) > 0 || len(e.ListenPeerURLs) > 0) {
		v.addf("etcd.listen_client_urls", "is set with etcd.endpoints: listen URLs are for the embedded member; remove them or the endpoints")
	}
}

// MaxLabels bounds node.labels.
const MaxLabels = 32

// validate checks the node's name and labels: names and keys are 1 to 63
// letters, digits, '.', '-', '_' (keys also '/'), starting with a letter
// or digit; values at most 63 printable characters.
func (n *Node) validate(v *validator) {
	if n.Name != "" && !validName(n.Name, false) {
		v.addf("node.name", "%q: use 1 to 63 letters, digits, '.', '-' or '_', starting with a letter or digit, e.g. node-1", n.Name)
	}
	if len(n.Labels) > MaxLabels {
		v.addf("node.labels", "%d labels: use at most %d", len(n.Labels), MaxLabels)
	}
	for k, val := range n.Labels {
		if !validName(k, true) {
			v.addf("node.labels", "key %q: use 1 to 63 letters, digits, '.', '-', '_' or '/', starting with a letter or digit, e.g. zone", k)
		}
		if len(val) > 63 || strings.IndexFunc(val, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
			v.addf("node.labels", "value of %q: use at most 63 printable characters", k)
		}
	}
}

func validName(s string, slash bool) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i, r := range s {
		alnum := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
		if !alnum && (i == 0 || !(r == '.' || r == '-' || r == '_' || slash && r == '/')) {
			return false
		}
	}
	return true
}

// ParseLabel parses the `KEY=VALUE` form of --label.
func ParseLabel(s string) (key, value string, err error) {
	k, val, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return "", "", fmt.Errorf("%w: --label %q: use KEY=VALUE, e.g. --label zone=a", ErrInvalid, s)
	}
	return k, val, nil
}

// ParseMember parses one `NAME=PEER-URL` entry of etcd.initial_cluster.
func ParseMember(s string) (name, peerURL string, err error) {
	name, peerURL, ok := strings.Cut(s, "=")
	u, uerr := url.Parse(peerURL)
	if !ok || name == "" || uerr != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Port() == "" {
		return "", "", fmt.Errorf("%q: use NAME=http://HOST:PORT, e.g. n1=http://10.0.0.1:2380", s)
	}
	return name, peerURL, nil
}

// validateCluster checks the options of a multi-member embedded etcd.
func (c *Config) validateCluster(v *validator) {
	e := &c.Etcd
	if len(e.InitialCluster) == 0 && e.Join == "" {
		return
	}
	if len(e.Endpoints) > 0 {
		v.addf("etcd.endpoints", "is set with etcd.initial_cluster or etcd.join, which are for embedded members: remove one or the other")
		return
	}
	if len(e.InitialCluster) > 0 && e.Join != "" {
		v.addf("etcd.join", "is set with etcd.initial_cluster: give initial_cluster on the members that start the cluster together, join on a node added later")
	}
	if c.Node.Name == "" {
		v.addf("node.name", "is empty while etcd.initial_cluster or etcd.join is set: name the node (--node-name), as in initial_cluster")
	}
	if len(e.ListenPeerURLs) == 0 {
		v.addf("etcd.listen_peer_urls", "is empty while etcd.initial_cluster or etcd.join is set: give this node's peer URL, e.g. http://10.0.0.1:2380")
	}
	for _, path := range []string{"etcd.listen_peer_urls", "etcd.listen_client_urls"} {
		urls := e.ListenPeerURLs
		if path == "etcd.listen_client_urls" {
			urls = e.ListenClientURLs
		}
		for i, raw := range urls {
			if u, err := url.Parse(raw); err == nil {
				if ip := net.ParseIP(u.Hostname()); ip != nil && ip.IsUnspecified() {
					v.addf(fmt.Sprintf("%s[%d]", path, i), "%q is a wildcard: members advertise these URLs to each other, give this node's own address", raw)
				}
			}
		}
	}
	seen := map[string]bool{}
	self := false
	for i, m := range e.InitialCluster {
		name, peer, err := ParseMember(m)
		if err != nil {
			v.addf(fmt.Sprintf("etcd.initial_cluster[%d]", i), "%v", err)
			continue
		}
		if seen[name] {
			v.addf(fmt.Sprintf("etcd.initial_cluster[%d]", i), "member %q is listed twice: give each member once", name)
		}
		seen[name] = true
		if name == c.Node.Name {
			self = true
			if len(e.ListenPeerURLs) > 0 && !slices.Contains(e.ListenPeerURLs, peer) {
				v.addf(fmt.Sprintf("etcd.initial_cluster[%d]", i), "this node's peer URL %q is not in etcd.listen_peer_urls %v: make them the same", peer, e.ListenPeerURLs)
			}
		}
	}
	if len(e.InitialCluster) > 0 && c.Node.Name != "" && !self {
		v.addf("etcd.initial_cluster", "does not list this node (node.name %q): add %s=<its peer URL>", c.Node.Name, c.Node.Name)
	}
	if len(e.InitialCluster) == 2 || len(e.InitialCluster) == 4 {
		v.addf("etcd.initial_cluster", "has %d members: use 3 or 5 (an even count tolerates no more failures than one member fewer)", len(e.InitialCluster))
	}
}
