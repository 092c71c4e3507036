package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"stave.dev/stave/internal/adminapi"
	"stave.dev/stave/internal/volume"
)

// poolMetaDir is the pool's metadata directory under the data dir.
const poolMetaDir = "pool"

func poolCommand() *cli.Command {
	return &cli.Command{
		Name:  "pool",
		Usage: "manage the node's pool of devices, where new volumes live",
		Subcommands: []*cli.Command{
			{
				Name:  "create",
				Usage: "create the pool on devices (files or block devices); volumes created afterwards live in it",
				Description: "The daemon writes a superblock on each device and keeps the pool's index in DATA/pool.\n" +
					"A device that already holds a Stave superblock is refused. 3 devices give 2+1 (survives one\n" +
					"failure), 6 give 4+2. Existing volumes stay in their sparse files and keep working.",
				Flags: []cli.Flag{
					&cli.StringSliceFlag{Name: "device", Usage: "device `PATH` (repeatable), e.g. /dev/sdb or a file", Required: true},
					&cli.StringFlag{Name: "segment-size", Usage: "segment `SIZE` on each device, e.g. 64MiB (default: the pool's, 64MiB)"},
				},
				Action: poolCreate,
			},
			{Name: "status", Usage: "show devices (state, errors, repairs), space and running operations", Action: poolStatus},
			{Name: "add-device", Usage: "add a device to the pool", ArgsUsage: "PATH", Action: poolAddDevice},
			{
				Name:      "replace-device",
				Usage:     "rebuild the contents of device OLD onto device NEW, then drop OLD (shows progress)",
				ArgsUsage: "OLD NEW",
				Action:    poolReplaceDevice,
			},
			{Name: "scrub", Usage: "read and verify every block now, repairing what fails (shows progress)", Action: poolScrub},
			{
				Name:  "recover",
				Usage: "OFFLINE: with the daemon stopped, rebuild the pool's index from the devices",
				Description: "Run this with `stave serve` stopped: it takes the data directory's lock. It scans the log on\n" +
					"every device of the pool in DIR/pool and rebuilds the index from it (the log is the truth;\n" +
					"the index is a cache of it). Use it when the daemon cannot open the pool because its index\n" +
					"is lost or damaged. Then start `stave serve` again.",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "data-dir", Value: defaultDataDir, Usage: "the daemon's data directory `DIR`"},
				},
				Action: poolRecover,
			},
		},
	}
}

func snapshotCommand() *cli.Command {
	return &cli.Command{
		Name:  "snapshot",
		Usage: "manage snapshots of pool volumes",
		Subcommands: []*cli.Command{
			{Name: "create", Usage: "take a snapshot of a volume", ArgsUsage: "VOLUME NAME (or VOLUME@NAME)", Action: snapshotCreate},
			{Name: "list", Aliases: []string{"ls"}, Usage: "list the snapshots of one volume, or of all", ArgsUsage: "[VOLUME]", Action: snapshotList},
			{Name: "delete", Aliases: []string{"rm"}, Usage: "delete a snapshot", ArgsUsage: "VOLUME NAME (or VOLUME@NAME)", Action: snapshotDelete},
		},
	}
}

// absPath makes a device path absolute: the daemon has another working
// directory than the client.
func absPath(p string) (string, error) {
	if p == "" {
		return "", errors.New("empty device path")
	}
	a, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("device %s: %w", p, err)
	}
	return a, nil
}

// checkDevice gives early, local errors for a device path the daemon on
// this machine will open.
func checkDevice(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("device %s does not exist: give a block device (e.g. /dev/sdb) or an existing file (create one with `truncate -s 10G FILE`)", p)
		}
		return fmt.Errorf("device %s: %w", p, err)
	}
	if !st.Mode().IsRegular() && st.Mode().Type() != os.ModeDevice {
		return fmt.Errorf("device %s is a %s: give a block device or a regular file", p, fileKind(st.Mode()))
	}
	if st.Mode().Type() == os.ModeDevice && st.Mode()&os.ModeCharDevice != 0 {
		return fmt.Errorf("device %s is a character device: give a block device or a regular file", p)
	}
	if st.Mode().Type() == os.ModeDevice {
		// Linux: O_EXCL on a block device fails with EBUSY while it is
		// mounted or claimed (by the device mapper, md, another pool).
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("device %s is in use (mounted, or claimed by LVM, md or another program): unmount or release it, or choose another", p)
		}
		if err == nil {
			_ = unix.Close(fd)
		}
	}
	return nil
}

func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&os.ModeSymlink != 0:
		return "symbolic link"
	case m&os.ModeNamedPipe != 0:
		return "named pipe"
	case m&os.ModeSocket != 0:
		return "socket"
	}
	return "special file"
}

// errArgs returns a usage error for c.
func errArgs(c *cli.Context, want string) error {
	return fmt.Errorf("%s: want %s, got %q (see `stave %s --help`)", c.Command.FullName(), want, c.Args().Slice(), c.Command.FullName())
}

func poolCreate(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("pool create takes its devices as --device PATH, got arguments %q", c.Args().Slice())
	}
	o, err := output(c)
	if err != nil {
		return err
	}
	req := adminapi.PoolCreateRequest{}
	for _, d := range c.StringSlice("device") {
		a, err := absPath(d)
		if err != nil {
			return err
		}
		if err := checkDevice(a); err != nil {
			return err
		}
		req.Devices = append(req.Devices, a)
	}
	if s := c.String("segment-size"); s != "" {
		n, err := parseSize(s)
		if err != nil {
			return fmt.Errorf("--segment-size: %w", err)
		}
		if n <= 0 {
			return errors.New("--segment-size: give a positive size such as 64MiB")
		}
		req.SegmentSize = n
	}
	if err := req.Validate(); err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), volume.ErrInvalid.Error()+": "))
	}
	cl, err := client(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(c.Context, 10*time.Minute)
	defer cancel()
	st, err := cl.CreatePool(ctx, req)
	if err != nil {
		return err
	}
	if o == "json" {
		return writeJSON(c.App.Writer, st)
	}
	fmt.Fprintf(c.App.Writer, "created pool %s on %d device(s), %s free; new volumes live in it\n",
		st.ID, len(st.Devices), formatSize(st.Space.Free))
	return nil
}

func poolStatus(c *cli.Context) error {
	if c.NArg() > 0 {
		return errArgs(c, "no arguments")
	}
	return withAPI(c, func(ctx context.Context, cl *adminapi.Client, o string) error {
		st, err := cl.PoolStatus(ctx)
		if err != nil {
			return err
		}
		if o == "json" {
			return writeJSON(c.App.Writer, st)
		}
		return writePoolStatus(c.App.Writer, st)
	})
}

func writePoolStatus(w io.Writer, st *adminapi.PoolStatus) error {
	state := st.State
	if st.Reason != "" {
		state += ": " + st.Reason
	}
	fmt.Fprintf(w, "Pool %s: %s\n", st.ID, state)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tDEVICE\tSTATE\tSIZE\tUSED\tREAD ERR\tWRITE ERR\tCHECKSUM ERR\tREPAIRS")
	for _, d := range st.Devices {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\n", d.Index, d.Path, d.State, formatSize(d.Size), formatSize(d.Used),
			d.ReadErrors, d.WriteErrors, d.ChecksumErrors, d.Repairs)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	sp := st.Space
	fmt.Fprintf(w, "Space: logical %s, physical %s (parity %s), garbage %s, free %s of %s\n",
		formatSize(sp.Logical), formatSize(sp.Physical), formatSize(sp.Parity), formatSize(sp.Garbage),
		formatSize(sp.Free), formatSize(sp.Capacity))
	fmt.Fprintf(w, "Volumes: %d\n", st.Volumes)
	if len(st.Operations) > 0 {
		fmt.Fprintln(w, "Operations:")
		for _, op := range st.Operations {
			fmt.Fprintf(w, "  %s\n", opLine(op))
		}
	}
	return nil
}

// opLine renders an operation in one line.
func opLine(op adminapi.Operation) string {
	s := fmt.Sprintf("%s %s", op.ID, op.Kind)
	if len(op.Args) > 0 {
		s += " " + strings.Join(op.Args, " ")
	}
	s += ": " + op.State
	switch op.State {
	case adminapi.OpRunning:
		s += " " + progressText(op.Progress)
	case adminapi.OpFailed:
		s += ": " + op.Error
	case adminapi.OpDone:
		s += " in " + opDuration(&op)
		if r := op.Scrub; r != nil {
			s += fmt.Sprintf(": %d checksum errors, %d repaired, %d unrecoverable", r.ChecksumErrors, r.Repaired, r.Unrecoverable)
		}
	}
	return s
}

func poolAddDevice(c *cli.Context) error {
	if c.NArg() != 1 {
		return errArgs(c, "one device PATH")
	}
	o, err := output(c)
	if err != nil {
		return err
	}
	p, err := absPath(c.Args().First())
	if err != nil {
		return err
	}
	if err := checkDevice(p); err != nil {
		return err
	}
	cl, err := client(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(c.Context, 10*time.Minute)
	defer cancel()
	st, err := cl.AddDevice(ctx, p)
	if err != nil {
		return err
	}
	if o == "json" {
		return writeJSON(c.App.Writer, st)
	}
	fmt.Fprintf(c.App.Writer, "added %s: the pool has %d device(s), %s free\n", p, len(st.Devices), formatSize(st.Space.Free))
	return nil
}

func poolReplaceDevice(c *cli.Context) error {
	if c.NArg() != 2 {
		return errArgs(c, "OLD and NEW device paths")
	}
	o, err := output(c)
	if err != nil {
		return err
	}
	old, err := absPath(c.Args().Get(0))
	if err != nil {
		return err
	}
	nw, err := absPath(c.Args().Get(1))
	if err != nil {
		return err
	}
	if err := checkDevice(nw); err != nil {
		return err
	}
	cl, err := client(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := callCtx(c)
	op, err := cl.ReplaceDevice(ctx, old, nw)
	cancel()
	if err != nil {
		return err
	}
	op, err = follow(c, cl, op)
	if err != nil {
		return err
	}
	if o == "json" {
		return writeJSON(c.App.Writer, op)
	}
	fmt.Fprintf(c.App.Writer, "replaced %s with %s: rebuilt %s in %s\n", old, nw, formatSize(op.Progress.Done), opDuration(op))
	return nil
}

func poolScrub(c *cli.Context) error {
	if c.NArg() > 0 {
		return errArgs(c, "no arguments")
	}
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
	op, err := cl.Scrub(ctx)
	cancel()
	if err != nil {
		return err
	}
	op, err = follow(c, cl, op)
	if err != nil {
		return err
	}
	if o == "json" {
		return writeJSON(c.App.Writer, op)
	}
	r := op.Scrub
	if r == nil {
		fmt.Fprintf(c.App.Writer, "scrub done in %s\n", opDuration(op))
		return nil
	}
	fmt.Fprintf(c.App.Writer, "scrub done in %s: %d stripes, %s verified, %d checksum errors, %d chunks repaired, %d unrecoverable stripes\n",
		opDuration(op), r.Stripes, formatSize(r.Bytes), r.ChecksumErrors, r.Repaired, r.Unrecoverable)
	if r.Unrecoverable > 0 {
		return fmt.Errorf("scrub found %d stripes that cannot be reconstructed: their blocks are lost; see `stave pool status` "+
			"and replace failed devices with `stave pool replace-device OLD NEW`", r.Unrecoverable)
	}
	return nil
}

func opDuration(op *adminapi.Operation) string {
	if op.Finished == nil {
		return "?"
	}
	d := op.Finished.Sub(op.Started)
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(100 * time.Millisecond).String()
}

// pollInterval is how often follow asks for an operation's progress.
const pollInterval = 200 * time.Millisecond

// follow polls an operation until it ends, drawing a progress bar on a
// terminal and a line every 10% otherwise (nothing with --output json).
// It returns the finished operation, or an error when it failed. Ctrl-C
// stops following; the operation goes on in the daemon.
func follow(c *cli.Context, cl *adminapi.Client, op *adminapi.Operation) (*adminapi.Operation, error) {
	w := c.App.Writer
	quiet := c.String("output") == "json"
	tty := !quiet && isTerminal(w)
	lastPct := -10 // prints the first line
	lastLine := time.Time{}
	draw := func(op *adminapi.Operation) {
		switch {
		case quiet:
		case tty:
			if op.Progress.Total <= 0 {
				fmt.Fprintf(w, "\r%s: starting\x1b[K", op.Kind)
				return
			}
			fmt.Fprintf(w, "\r%s %s\x1b[K", op.Kind, progressBar(op.Progress, 30))
		case op.Progress.Total <= 0:
			// Nothing to say before the daemon knows the total.
		default:
			pct := percent(op.Progress)
			if pct/10 != lastPct/10 || time.Since(lastLine) > 30*time.Second {
				fmt.Fprintf(w, "%s: %s\n", op.Kind, progressText(op.Progress))
				lastPct, lastLine = pct, time.Now()
			}
		}
	}
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for op.State == adminapi.OpRunning {
		draw(op)
		select {
		case <-c.Context.Done():
			if tty {
				fmt.Fprintln(w)
			}
			return nil, fmt.Errorf("stopped following %s (operation %s); it goes on in the daemon: see `stave pool status`", op.Kind, op.ID)
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
		next, err := cl.Operation(ctx, op.ID)
		cancel()
		if err != nil {
			if tty {
				fmt.Fprintln(w)
			}
			return nil, err
		}
		op = next
	}
	if op.State == adminapi.OpDone {
		draw(op)
	}
	if tty {
		fmt.Fprintln(w)
	}
	if op.State == adminapi.OpFailed {
		return nil, fmt.Errorf("%s failed: %s", op.Kind, op.Error)
	}
	return op, nil
}

// percent returns done/total in whole percent, 0 when total is unknown.
func percent(p adminapi.Progress) int {
	if p.Total <= 0 {
		return 0
	}
	d := min(max(p.Done, 0), p.Total)
	return int(d * 100 / p.Total)
}

// progressText renders "53% 1.2 GiB/2.3 GiB".
func progressText(p adminapi.Progress) string {
	s := fmt.Sprintf("%d%% %s/%s", percent(p), formatSize(p.Done), formatSize(p.Total))
	if p.Repaired > 0 {
		s += fmt.Sprintf(", %d repaired", p.Repaired)
	}
	if p.Unreadable > 0 {
		s += fmt.Sprintf(", %d UNREADABLE", p.Unreadable)
	}
	return s
}

// progressBar renders "[=====>    ] 53% 1.2 GiB/2.3 GiB" with a bar of
// width cells.
func progressBar(p adminapi.Progress, width int) string {
	pct := percent(p)
	fill := pct * width / 100
	var b strings.Builder
	b.WriteByte('[')
	for i := range width {
		switch {
		case i < fill:
			b.WriteByte('=')
		case i == fill && pct < 100:
			b.WriteByte('>')
		default:
			b.WriteByte(' ')
		}
	}
	b.WriteString("] ")
	b.WriteString(progressText(p))
	return b.String()
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func poolRecover(c *cli.Context) error {
	if c.NArg() > 0 {
		return errArgs(c, "no arguments (the data directory is --data-dir DIR)")
	}
	dir := c.String("data-dir")
	if dir == "" {
		return errors.New("--data-dir is empty")
	}
	meta := filepath.Join(dir, poolMetaDir)
	if _, err := os.Stat(meta); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s has no pool (no %s): give the daemon's --data-dir", dir, meta)
		}
		return err
	}
	unlock, err := lockDataDir(dir)
	if err != nil {
		return fmt.Errorf("pool recover runs with the daemon stopped: %w", err)
	}
	defer unlock()
	log, err := newLogger(c.App.ErrWriter, "info", "text")
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "rebuilding the index of the pool in %s from its devices...\n", meta)
	start := time.Now()
	if err := recoverPool(c.Context, meta, log); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "rebuilt the index in %s: start `stave serve --data-dir %s` again\n",
		time.Since(start).Round(time.Millisecond), dir)
	return nil
}

// snapshotArgs reads "VOL NAME" or "VOL@NAME".
func snapshotArgs(c *cli.Context) (vol, snap string, err error) {
	switch c.NArg() {
	case 1:
		vol, snap, err = volume.ParseSnapshotRef(c.Args().First())
	case 2:
		vol, snap = c.Args().Get(0), c.Args().Get(1)
		if err = volume.ValidateName(vol); err == nil {
			err = volume.ValidateSnapshotName(snap)
		}
	default:
		return "", "", errArgs(c, "VOLUME NAME or VOLUME@NAME")
	}
	if err != nil {
		return "", "", errors.New(strings.TrimPrefix(err.Error(), volume.ErrInvalid.Error()+": "))
	}
	return vol, snap, nil
}

func snapshotCreate(c *cli.Context) error {
	vol, snap, err := snapshotArgs(c)
	if err != nil {
		return err
	}
	return withAPI(c, func(ctx context.Context, cl *adminapi.Client, o string) error {
		s, err := cl.CreateSnapshot(ctx, vol, snap)
		if err != nil {
			return err
		}
		if o == "json" {
			return writeJSON(c.App.Writer, s)
		}
		fmt.Fprintf(c.App.Writer, "created snapshot %s@%s\n", vol, snap)
		return nil
	})
}

func snapshotList(c *cli.Context) error {
	vol := ""
	switch c.NArg() {
	case 0:
	case 1:
		vol = c.Args().First()
	default:
		return errArgs(c, "at most one VOLUME")
	}
	return withAPI(c, func(ctx context.Context, cl *adminapi.Client, o string) error {
		ss, err := cl.Snapshots(ctx, vol)
		if err != nil {
			return err
		}
		if o == "json" {
			return writeJSON(c.App.Writer, ss)
		}
		tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VOLUME\tSNAPSHOT\tCREATED\tVERSION")
		for _, s := range ss {
			created := "-"
			if !s.Created.IsZero() {
				created = s.Created.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Volume, s.Name, created, strconv.FormatUint(s.Version, 10))
		}
		return tw.Flush()
	})
}

func snapshotDelete(c *cli.Context) error {
	vol, snap, err := snapshotArgs(c)
	if err != nil {
		return err
	}
	return withAPI(c, func(ctx context.Context, cl *adminapi.Client, o string) error {
		if err := cl.DeleteSnapshot(ctx, vol, snap); err != nil {
			return err
		}
		if o == "json" {
			return writeJSON(c.App.Writer, map[string]string{"deleted": vol + "@" + snap})
		}
		fmt.Fprintf(c.App.Writer, "deleted snapshot %s@%s\n", vol, snap)
		return nil
	})
}

// volumeClone serves `volume clone VOL SNAPSHOT NEWVOL` and
// `volume clone VOL@SNAPSHOT NEWVOL`.
func volumeClone(c *cli.Context) error {
	var vol, snap, nv string
	var err error
	switch c.NArg() {
	case 2:
		vol, snap, err = volume.ParseSnapshotRef(c.Args().Get(0))
		nv = c.Args().Get(1)
	case 3:
		vol, snap, nv = c.Args().Get(0), c.Args().Get(1), c.Args().Get(2)
		if err = volume.ValidateName(vol); err == nil {
			err = volume.ValidateSnapshotName(snap)
		}
	default:
		return errArgs(c, "VOLUME SNAPSHOT NEWVOLUME or VOLUME@SNAPSHOT NEWVOLUME")
	}
	if err == nil {
		err = volume.ValidateName(nv)
	}
	if err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), volume.ErrInvalid.Error()+": "))
	}
	return withAPI(c, func(ctx context.Context, cl *adminapi.Client, o string) error {
		v, err := cl.Clone(ctx, vol, snap, nv)
		if err != nil {
			return err
		}
		if o == "json" {
			return writeJSON(c.App.Writer, v)
		}
		fmt.Fprintf(c.App.Writer, "created volume %s (%s) from %s@%s, target %s LUN %d\n", v.Name, formatSize(v.Size), vol, snap, v.Target, v.LUN)
		return nil
	})
}

// volumeRevert serves `volume revert VOL SNAPSHOT` and `volume revert VOL@SNAPSHOT`.
func volumeRevert(c *cli.Context) error {
	vol, snap, err := snapshotArgs(c)
	if err != nil {
		return err
	}
	return withAPI(c, func(ctx context.Context, cl *adminapi.Client, o string) error {
		v, err := cl.Revert(ctx, vol, snap)
		if err != nil {
			return err
		}
		if o == "json" {
			return writeJSON(c.App.Writer, v)
		}
		fmt.Fprintf(c.App.Writer, "reverted volume %s to snapshot %s\n", vol, snap)
		return nil
	})
}
