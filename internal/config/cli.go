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
		&cli.StringFlag{Name: "http-listen", Usage: "admin API and /metrics over TCP at `HOST:PORT` (not implemented yet)"},
		&cli.StringFlag{Name: "http-token-file", Usage: "`FILE` holding the bearer token for --http-listen"},
		&cli.StringFlag{Name: "scrub-rate", Usage: "background scrub rate, a `SIZE` per second (e.g. 50MiB); 0 disables", DefaultText: "0"},
		&cli.DurationFlag{Name: "gc-interval", Usage: "period `DURATION` of the pool's background cleaner", DefaultText: DefaultGCInterval.String()},
	}
}
