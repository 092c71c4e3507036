package config

import (
	"github.com/urfave/cli/v2"
)

// CLIFlags returns the flags of `stave serve` that override the file:
// one per `flag` tag of Config (a test keeps the two in step), plus
// --config and --print-config. No flag has a Value: an unset flag
// leaves the file's value (or the default) in place, and DefaultText
// shows the default in --help.
func CLIFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "configuration file `PATH`; a missing file is an error unless it is the default", DefaultText: DefaultPath},
		&cli.BoolFlag{Name: "print-config", Usage: "print the effective configuration (file, then flags) as YAML and exit"},
		&cli.StringFlag{Name: "data-dir", Usage: "data directory `DIR` (volumes, pool index, socket)", DefaultText: DefaultDataDir},
		&cli.StringSliceFlag{Name: "portal", Usage: "iSCSI listen address `HOST:PORT` (repeatable; replaces the file's portals)", DefaultText: DefaultPortal},
		&cli.StringSliceFlag{Name: "advertise", Usage: "address `HOST:PORT` announced by SendTargets for the portal at the same position"},
		&cli.StringFlag{Name: "api", Usage: "admin API address `unix:PATH`", DefaultText: "unix:DATA/" + DefaultSocketName},
		&cli.StringFlag{Name: "discovery-chap", Usage: "require CHAP `USER:SECRET` for discovery sessions (\"\" turns it off)"},
		&cli.StringFlag{Name: "log-level", Usage: "`LEVEL`: debug, info, warn or error", DefaultText: DefaultLogLevel},
		&cli.StringFlag{Name: "log-format", Usage: "`FORMAT`: text or json", DefaultText: DefaultLogFormat},
		&cli.DurationFlag{Name: "nop-interval", Usage: "ping idle initiators with NOP-In after `DURATION`; 0 disables", DefaultText: "0s"},
		&cli.DurationFlag{Name: "nop-timeout", Usage: "drop a connection whose NOP-In ping is unanswered for `DURATION`", DefaultText: "nop-interval"},
		&cli.IntFlag{Name: "queue-depth", Usage: "commands outstanding per session (CmdSN window), `N` from 1 to 4096", DefaultText: "128"},
		&cli.StringFlag{Name: "http-listen", Usage: "also serve the admin API and /metrics over TCP at `HOST:PORT` (needs --http-token-file or --http-client-ca)"},
		&cli.StringFlag{Name: "http-token-file", Usage: "`FILE` (mode 0600) holding the bearer token for --http-listen"},
		&cli.StringFlag{Name: "http-tls-cert", Usage: "PEM certificate `FILE` of --http-listen (HTTPS)"},
		&cli.StringFlag{Name: "http-tls-key", Usage: "PEM key `FILE` of --http-tls-cert"},
		&cli.StringFlag{Name: "http-client-ca", Usage: "PEM CA `FILE`: --http-listen requires client certificates it signed (mutual TLS)"},
		&cli.StringFlag{Name: "scrub-rate", Usage: "background scrub rate, a `SIZE` per second (e.g. 50MiB); 0 disables", DefaultText: "0"},
		&cli.StringSliceFlag{Name: "etcd-endpoints", Usage: "client `URL` of an external etcd (repeatable); none: run an embedded member"},
		&cli.StringFlag{Name: "etcd-ca", Usage: "CA certificate `FILE` (PEM) of the external etcd"},
		&cli.StringFlag{Name: "etcd-cert", Usage: "client certificate `FILE` (PEM) for the external etcd"},
		&cli.StringFlag{Name: "etcd-key", Usage: "client key `FILE` (PEM) for the external etcd"},
		&cli.StringSliceFlag{Name: "etcd-listen-client-urls", Usage: "client `URL` of the embedded etcd (repeatable)", DefaultText: "127.0.0.1, a free port"},
		&cli.StringSliceFlag{Name: "etcd-listen-peer-urls", Usage: "peer `URL` of the embedded etcd (repeatable)", DefaultText: "127.0.0.1, a free port"},
		&cli.StringSliceFlag{Name: "initial-cluster", Usage: "start a new embedded etcd cluster of these members, `NAME=PEER-URL`,... (this node's --node-name among them)"},
		&cli.StringFlag{Name: "join", Usage: "join the embedded etcd cluster of the node whose etcd client address is `HOST:PORT`"},
		&cli.StringFlag{Name: "node-name", Usage: "node `NAME` (also its etcd member's name)", DefaultText: "the host name"},
		&cli.StringSliceFlag{Name: "label", Usage: "node label `KEY=VALUE`, e.g. zone=a (repeatable; replaces the file's labels)"},
		&cli.StringFlag{Name: "replication-listen", Usage: "receive replica writes at `HOST:PORT`; none: hold no replicas"},
		&cli.StringFlag{Name: "replication-advertise", Usage: "address `HOST:PORT` other nodes dial for --replication-listen", DefaultText: "replication-listen"},
		&cli.DurationFlag{Name: "owner-lease-ttl", Usage: "TTL `DURATION` of a replicated volume owner's etcd lease", DefaultText: DefaultLeaseTTL.String()},
		&cli.StringFlag{Name: "floating-interface", Usage: "interface `NAME` that carries the floating portal addresses of volumes this node owns"},
		&cli.StringFlag{Name: "replication-tls-cert", Usage: "PEM certificate `FILE` for replication traffic (mutual TLS, with --replication-tls-key and --replication-tls-ca)"},
		&cli.StringFlag{Name: "replication-tls-key", Usage: "PEM key `FILE` of --replication-tls-cert"},
		&cli.StringFlag{Name: "replication-tls-ca", Usage: "PEM CA `FILE` that signs every node's replication certificate"},
		&cli.DurationFlag{Name: "replace-after", Usage: "move a copy off a node down for `DURATION` (0: never)", DefaultText: DefaultReplaceAfter.String()},
		&cli.DurationFlag{Name: "gc-interval", Usage: "period `DURATION` of the pool's background cleaner", DefaultText: DefaultGCInterval.String()},
	}
}
