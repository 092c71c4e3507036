package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"stave.dev/stave/internal/adminapi"
	"stave.dev/stave/internal/config"
	"stave.dev/stave/internal/volume"
)

const (
	defaultDataDir = config.DefaultDataDir
	socketName     = config.DefaultSocketName
	apiEnv         = "STAVE_API"
)

// versionString returns the build's version: module version, VCS revision
// when stamped, and the Go version.
func versionString() string {
	v, rev, dirty := "(devel)", "", false
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" {
		v += " " + rev
		if dirty {
			v += "-dirty"
		}
	}
	return v + " " + runtime.Version()
}

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:                 "stave",
		Usage:                "user-space iSCSI target",
		Version:              versionString(),
		HideVersion:          true,
		Writer:               stdout,
		ErrWriter:            stderr,
		EnableBashCompletion: true, // `stave completion bash` prints the script (k8s.go)
		// Errors are printed once, by run; never exit from inside cli.
		ExitErrHandler: func(*cli.Context, error) {},
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "api", Value: "unix:" + defaultDataDir + "/" + socketName, EnvVars: []string{apiEnv},
				Usage: "admin API `ADDRESS`: unix:PATH, unix:///PATH, a socket path, or http(s)://HOST:PORT (the daemon's http.listen)"},
			&cli.StringFlag{Name: "api-token-file", EnvVars: []string{"STAVE_API_TOKEN_FILE"},
				Usage: "`FILE` holding the bearer token of a TCP --api (the daemon's http.token_file)"},
			&cli.StringFlag{Name: "api-cert", EnvVars: []string{"STAVE_API_CERT"}, Usage: "client certificate `FILE` (PEM) for an https --api with mutual TLS"},
			&cli.StringFlag{Name: "api-key", EnvVars: []string{"STAVE_API_KEY"}, Usage: "key `FILE` (PEM) of --api-cert"},
			&cli.StringFlag{Name: "api-ca", EnvVars: []string{"STAVE_API_CA"}, Usage: "CA `FILE` (PEM) that signed the daemon's certificate (default: system roots)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "output format: table or json"},
		},
		Commands: []*cli.Command{
			serveCommand(),
			{
				Name:  "volume",
				Usage: "manage volumes",
				Subcommands: []*cli.Command{
					{
						Name:      "create",
						Usage:     "create a volume and export it as iqn.2026-11.dev.stave:NAME",
						ArgsUsage: "NAME",
						Flags: []cli.Flag{
							&cli.StringFlag{Name: "size", Usage: "`SIZE`, e.g. 1GiB; units " + acceptedUnits, Required: true},
							&cli.StringSliceFlag{Name: "allow", Usage: "initiator name `IQN` allowed to log in (repeatable; none: any initiator)"},
							&cli.StringFlag{Name: "chap", Usage: "one-way CHAP credentials `USER:SECRET` (secret 12 to 255 characters)"},
							&cli.StringFlag{Name: "mutual-chap", Usage: "target's CHAP credentials `USER:SECRET` for mutual CHAP"},
							&cli.IntFlag{Name: "block-size", Value: volume.DefaultBlockSize, Usage: "logical block size in `BYTES`: 512 or 4096"},
							&cli.StringFlag{Name: "policy", Usage: "erasure-coding `K+M` of a pool volume, e.g. 2+1 (default: from the pool's device count)"},
							&cli.IntFlag{Name: "replicas", Usage: "keep a copy on `N` nodes (1 to 3); above 1 the volume survives the loss of its serving node"},
							&cli.StringFlag{Name: "floating-ip", Usage: "floating portal `ADDR/LEN` (e.g. 10.0.20.100/24) held by the owner of a replicated volume"},
							&cli.StringSliceFlag{Name: "on", Usage: "pin copies to `NODE` (name or ID; repeatable; the first is the preferred owner)"},
						},
						Action: volumeCreate,
					},
					{Name: "list", Aliases: []string{"ls"}, Usage: "list volumes", Action: volumeList},
					{Name: "show", Usage: "show one volume", ArgsUsage: "NAME", Action: volumeShow},
					{Name: "delete", Aliases: []string{"rm"}, Usage: "close a volume's sessions and delete it with its data",
						ArgsUsage: "NAME", Action: volumeDelete},
					{Name: "clone", Usage: "create a new pool volume from a snapshot (same size, policy, ACL and CHAP)",
						ArgsUsage: "VOLUME SNAPSHOT NEWVOLUME (or VOLUME@SNAPSHOT NEWVOLUME)", Action: volumeClone},
					{Name: "revert", Usage: "set a pool volume back to a snapshot; refused while initiators are logged in to it",
						ArgsUsage: "VOLUME SNAPSHOT (or VOLUME@SNAPSHOT)", Action: volumeRevert},
					{Name: "resize", Usage: "grow a volume online; initiators see CAPACITY DATA HAS CHANGED (then rescan and grow the file system)",
						ArgsUsage: "NAME", Flags: []cli.Flag{
							&cli.StringFlag{Name: "size", Usage: "new, larger `SIZE`, e.g. 2GiB; units " + acceptedUnits, Required: true},
						}, Action: volumeResize},
				},
			},
			snapshotCommand(),
			poolCommand(),
			nodeCommand(),
			healthCommand(), // health.go
			k8sCommand(),
			completionCommand(),
			{
				Name:  "session",
				Usage: "inspect iSCSI sessions",
				Subcommands: []*cli.Command{
					{Name: "list", Aliases: []string{"ls"}, Usage: "list sessions", Action: sessionList},
				},
			},
			{
				Name:   "version",
				Usage:  "print the client's and the daemon's versions",
				Action: versionAction,
			},
		},
	}
}

// client returns an API client for the global --api flag and its
// credentials (--api-token-file, --api-cert, --api-key, --api-ca).
func client(c *cli.Context) (*adminapi.Client, error) {
	return adminapi.NewClientWith(c.String("api"), adminapi.ClientOptions{TokenFile: c.String("api-token-file"),
		Cert: c.String("api-cert"), Key: c.String("api-key"), CA: c.String("api-ca")})
}

// withAPI is the common preamble of the client verbs: it validates
// --output, connects to the admin API and runs fn with a call-scoped
// context, closing both afterwards.
func withAPI(c *cli.Context, fn func(ctx context.Context, cl *adminapi.Client, o string) error) error {
	o, err := output(c)
	if err != nil {
		return err
	}
	cl, err := client(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := callCtx(c)
	defer cancel()
	return fn(ctx, cl, o)
}

// output returns the global --output format, validated.
func output(c *cli.Context) (string, error) {
	o := c.String("output")
	if o != "table" && o != "json" {
		return "", fmt.Errorf("--output %q: use table or json", o)
	}
	return o, nil
}

// oneArg returns the single positional argument named what.
func oneArg(c *cli.Context, what string) (string, error) {
	switch c.NArg() {
	case 1:
		return c.Args().First(), nil
	case 0:
		return "", fmt.Errorf("%s: missing %s", c.Command.FullName(), what)
	default:
		return "", fmt.Errorf("%s: want one %s, got %q", c.Command.FullName(), what, c.Args().Slice())
	}
}

// callCtx bounds one API call.
func callCtx(c *cli.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.Context, 2*time.Minute)
}

// parseCred parses USER:SECRET.
func parseCred(flag, s string) (user, secret string, err error) {
	user, secret, ok := strings.Cut(s, ":")
	if !ok || user == "" || secret == "" {
		return "", "", fmt.Errorf("--%s: give USER:SECRET, e.g. --%s alice:0123456789ab", flag, flag)
	}
	return user, secret, nil
}

func volumeCreate(c *cli.Context) error {
	name, err := oneArg(c, "volume NAME")
	if err != nil {
		return err
	}
	o, err := output(c)
	if err != nil {
		return err
	}
	size, err := parseSize(c.String("size"))
	if err != nil {
		return fmt.Errorf("--size: %w", err)
	}
	req := adminapi.CreateRequest{Name: name, Size: size, BlockSize: c.Int("block-size"), ACL: c.StringSlice("allow"),
		Policy: c.String("policy"), Replicas: c.Int("replicas"), On: c.StringSlice("on"),
		FloatingIP: c.String("floating-ip")}
	if s := c.String("chap"); s != "" {
		u, p, err := parseCred("chap", s)
		if err != nil {
			return err
		}
		req.CHAP = &volume.CHAP{User: u, Secret: p}
	}
	if s := c.String("mutual-chap"); s != "" {
		if req.CHAP == nil {
			return errors.New("--mutual-chap needs --chap too: the initiator authenticates first (RFC 7143 §12.1.3)")
		}
		u, p, err := parseCred("mutual-chap", s)
		if err != nil {
			return err
		}
		req.CHAP.MutualUser, req.CHAP.MutualSecret = u, p
	}
	// Validate here too, so that mistakes are reported without a daemon.
	if err := req.Validate(); err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), volume.ErrInvalid.Error()+": "))
	}
	cl, err := client(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := callCtx(c)
	defer cancel()
	v, err := cl.CreateVolume(ctx, req)
	if err != nil {
		return err
	}
	if o == "json" {
		return writeJSON(c.App.Writer, v)
	}
	where := "in a sparse file"
	switch {
	case v.Backend == volume.BackendPool:
		where = "in the pool, policy " + v.Policy
	case v.Replication != nil:
		where = fmt.Sprintf("%d replicas, on nodes %s", len(v.Replication.Replicas), strings.Join(v.Replication.Replicas, ", "))
	}
	fmt.Fprintf(c.App.Writer, "created volume %s (%s, %s), target %s LUN %d\n", v.Name, formatSize(v.Size), where, v.Target, v.LUN)
	return nil
}

func volumeList(c *cli.Context) error {
	o, err := output(c)
	if err != nil {
		return err
	}
	if c.NArg() > 0 {
		return fmt.Errorf("volume list takes no arguments, got %q", c.Args().Slice())
	}
	cl, err := client(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := callCtx(c)
	defer cancel()
	vs, err := cl.ListVolumes(ctx)
	if err != nil {
		return err
	}
	if o == "json" {
		return writeJSON(c.App.Writer, vs)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSIZE\tUSED\tBLOCK\tBACKEND\tSESSIONS\tTARGET")
	for _, v := range vs {
		tgt := v.Target
		switch {
		case v.Remote:
			tgt += " (served by node " + v.Node + ")"
		case !v.Exported:
			tgt += " (not exported: see the daemon log)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%s\n", v.Name, formatSize(v.Size), formatSize(v.Allocated), v.BlockSize,
			backendText(v), v.Sessions, tgt)
	}
	return tw.Flush()
}

func volumeShow(c *cli.Context) error {
	name, err := oneArg(c, "volume NAME")
	if err != nil {
		return err
	}
	return withAPI(c, func(ctx context.Context, cl *adminapi.Client, o string) error {
		v, err := cl.GetVolume(ctx, name)
		if err != nil {
			return err
		}
		if o == "json" {
			return writeJSON(c.App.Writer, v)
		}
		acl := "any initiator"
		if len(v.ACL) > 0 {
			acl = strings.Join(v.ACL, ", ")
		}
		chap := "off"
		if v.CHAPUser != "" {
			chap = "user " + v.CHAPUser
			if v.MutualCHAPUser != "" {
				chap += ", mutual (target user " + v.MutualCHAPUser + ")"
			}
		}
		tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
		rows := [][2]string{
			{"Name", v.Name},
			{"Target", v.Target},
			{"LUN", strconv.Itoa(v.LUN)},
			{"Size", fmt.Sprintf("%s (%d bytes)", formatSize(v.Size), v.Size)},
			{"Used", fmt.Sprintf("%s (%d bytes)", formatSize(v.Allocated), v.Allocated)},
			{"Block size", strconv.Itoa(v.BlockSize)},
			{"Backend", backendText(*v)},
			{"Created", v.Created.Format(time.RFC3339)},
			{"UUID", v.UUID},
			{"Serial", v.Serial},
			{"NAA", v.NAA},
			{"ACL", acl},
			{"CHAP", chap},
			{"Sessions", strconv.Itoa(v.Sessions)},
			{"Exported", exportedText(v.Exported)},
		}
		if r := v.Replication; r != nil {
			owner := r.Owner
			if owner == "" {
				owner = "none (ownership moving)"
			}
			rows = append(rows, [][2]string{
				{"Replicas", strings.Join(r.Replicas, ", ")},
				{"Owner", owner},
				{"Epoch", strconv.FormatUint(r.Epoch, 10)},
				{"In sync", strings.Join(r.ISR, ", ")},
			}...)
			if r.FloatingIP != "" {
				rows = append(rows, [2]string{"Floating IP", r.FloatingIP})
			}
			if r.State != "" {
				rows = append(rows, [2]string{"This node", r.State})
			}
			for _, p := range r.Resync {
				pct := 0.0
				if p.Total > 0 {
					pct = 100 * float64(p.Regions) / float64(p.Total)
				}
				rows = append(rows, [2]string{"Resync " + p.Node, fmt.Sprintf("%.0f%% (%d of %d regions compared, %d sent, %s)",
					pct, p.Regions, p.Total, p.Sent, formatSize(p.Bytes))})
			}
		}
		for _, kv := range rows {
			if kv[0] == "Backend" && v.Origin != "" {
				kv[1] += ", clone of " + v.Origin
			}
			fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
		}
		return tw.Flush()
	})
}

// backendText renders where a volume lives: "file" or "pool 2+1".
func backendText(v adminapi.Volume) string {
	if v.Backend == volume.BackendPool {
		return "pool " + v.Policy
	}
	if v.Replication != nil {
		return fmt.Sprintf("replicated x%d", len(v.Replication.Replicas))
	}
	return volume.BackendFile
}

func exportedText(ok bool) string {
	if ok {
		return "yes"
	}
	return "NO: the daemon could not open this volume; see its log"
}

func volumeDelete(c *cli.Context) error {
	name, err := oneArg(c, "volume NAME")
	if err != nil {
		return err
	}
	return withAPI(c, func(ctx context.Context, cl *adminapi.Client, o string) error {
		if err := cl.DeleteVolume(ctx, name); err != nil {
			return err
		}
		if o == "json" {
			return writeJSON(c.App.Writer, map[string]string{"deleted": name})
		}
		fmt.Fprintf(c.App.Writer, "deleted volume %s\n", name)
		return nil
	})
}

func volumeResize(c *cli.Context) error {
	name, err := oneArg(c, "volume NAME")
	if err != nil {
		return err
	}
	size, err := parseSize(c.String("size"))
	if err != nil {
		return fmt.Errorf("--size: %w", err)
	}
	return withAPI(c, func(ctx context.Context, cl *adminapi.Client, o string) error {
		v, err := cl.ResizeVolume(ctx, name, size)
		if err != nil {
			return err
		}
		if o == "json" {
			return writeJSON(c.App.Writer, v)
		}
		fmt.Fprintf(c.App.Writer, "resized volume %s to %s (%d bytes); on the host: rescan (iscsiadm -m session -R), then grow the file system\n",
			v.Name, formatSize(v.Size), v.Size)
		return nil
	})
}

// paramSummary renders the negotiated parameters worth a glance, in order.
func paramSummary(p map[string]string) string {
	var b strings.Builder
	for _, k := range []string{
		"HeaderDigest", "DataDigest", "MaxRecvDataSegmentLength", "MaxBurstLength",
		"FirstBurstLength", "ImmediateData", "InitialR2T", "MaxOutstandingR2T", "ErrorRecoveryLevel",
	} {
		if v, ok := p[k]; ok {
			if b.Len() > 0 {
				b.WriteByte(' ')
			}
			fmt.Fprintf(&b, "%s=%s", k, v)
		}
	}
	return b.String()
}

func sessionList(c *cli.Context) error {
	return withAPI(c, func(ctx context.Context, cl *adminapi.Client, o string) error {
		ss, err := cl.Sessions(ctx)
		if err != nil {
			return err
		}
		if o == "json" {
			return writeJSON(c.App.Writer, ss)
		}
		tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "INITIATOR\tISID\tTSIH\tTYPE\tTARGET\tPORTAL\tREMOTE\tCONNS\tPARAMETERS")
		for _, s := range ss {
			tgt := s.TargetName
			if tgt == "" {
				tgt = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%d\t%s\n", s.InitiatorName, s.ISID, s.TSIH, s.Type, tgt,
				s.Portal, s.Remote, s.Connections, paramSummary(s.Params))
		}
		return tw.Flush()
	})
}

func versionAction(c *cli.Context) error {
	o, err := output(c)
	if err != nil {
		return err
	}
	out := map[string]string{"client": versionString()}
	if cl, err := client(c); err == nil {
		ctx, cancel := context.WithTimeout(c.Context, 5*time.Second)
		if h, err := cl.Health(ctx); err == nil {
			out["daemon"] = h.Version
		}
		cancel()
		cl.Close()
	}
	if o == "json" {
		return writeJSON(c.App.Writer, out)
	}
	fmt.Fprintf(c.App.Writer, "stave %s\n", out["client"])
	if d, ok := out["daemon"]; ok {
		fmt.Fprintf(c.App.Writer, "daemon %s\n", d)
	} else {
		fmt.Fprintf(c.App.Writer, "daemon not reachable at %s\n", c.String("api"))
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
