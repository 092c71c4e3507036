package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Sizes and limits of the pool end-to-end test.
const (
	poolDevSize    = 512 << 20 // each device file
	poolVolSize    = 256 << 20
	poolIOSpan     = 128 << 20 // bytes written and verified
	poolIOChunk    = 8 << 20   // bytes per qemu-io command
	poolIOTimeout  = 3 * time.Minute
	poolPollPeriod = 50 * time.Millisecond
)

// poolStatus is the part of `stave pool status -o json` the test reads.
type poolStatus struct {
	State   string `json:"state"`
	Devices []struct {
		Index          int    `json:"index"`
		Path           string `json:"path"`
		State          string `json:"state"`
		ReadErrors     int64  `json:"read_errors"`
		ChecksumErrors int64  `json:"checksum_errors"`
		Repairs        int64  `json:"repairs"`
	} `json:"devices"`
	Space struct {
		Logical int64 `json:"logical"`
	} `json:"space"`
	Volumes int `json:"volumes"`
}

func (d *daemon) poolStatus(t *testing.T) poolStatus {
	t.Helper()
	var st poolStatus
	out := d.MustCLI("pool", "status", "--output", "json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("pool status: %v\n%s", err, out)
	}
	return st
}

// qemuIOCmds runs one qemu-io process (one libiscsi session) with the
// given -c commands against url and returns its output. qemu-io exits 0
// even when a command fails, so the output is checked for failures.
func qemuIOCmds(ctx context.Context, url string, cmds ...string) (string, error) {
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, url)
	out, err := exec.CommandContext(ctx, "qemu-io", args...).CombinedOutput()
	s := string(out)
	if err != nil {
		return s, fmt.Errorf("qemu-io: %v", err)
	}
	for _, bad := range []string{"error", "failed", "Pattern verification", "Input/output"} {
		if strings.Contains(s, bad) {
			return s, fmt.Errorf("qemu-io reported %q", bad)
		}
	}
	if n := strings.Count(s, "wrote ") + strings.Count(s, "read "); n != len(cmds) {
		return s, fmt.Errorf("qemu-io: %d of %d commands reported success", n, len(cmds))
	}
	return s, nil
}

// spanCmds returns qemu-io commands that write (or read and verify) the
// pattern over [0, poolIOSpan) in poolIOChunk pieces.
func spanCmds(op string, pattern byte) []string {
	var cmds []string
	for off := 0; off < poolIOSpan; off += poolIOChunk {
		cmds = append(cmds, fmt.Sprintf("%s -P 0x%02x %d %d", op, pattern, off, poolIOChunk))
	}
	return cmds
}

// zeroFile overwrites a file with zeros, keeping its size.
func zeroFile(p string) error {
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	zero := make([]byte, 1<<20)
	for off := int64(0); off < st.Size(); off += int64(len(zero)) {
		if _, err := f.WriteAt(zero[:min(int64(len(zero)), st.Size()-off)], off); err != nil {
			return err
		}
	}
	return f.Sync()
}

// deviceFaults are the ways TestPoolDeviceLoss loses a device file.
var deviceFaults = []struct {
	name   string
	inject func(path string) error
}{
	{"truncate", func(p string) error { return os.Truncate(p, 0) }},
	{"zero", zeroFile},
	{"delete", os.Remove},
}

// TestPoolDeviceLoss runs a 2+1 pool on three files under a libiscsi
// client (qemu-io): while the client writes, one device file is
// truncated to nothing, zeroed, or deleted. No error reaches the client
// and every byte reads back. Then `stave pool replace-device` rebuilds
// onto a new file, `stave pool status` shows the repairs, a scrub finds
// nothing lost, and the volume and its data survive a daemon restart.
func TestPoolDeviceLoss(t *testing.T) {
	requireE2E(t)
	requireTool(t, "qemu-io")
	for _, f := range deviceFaults {
		t.Run(f.name, func(t *testing.T) { testPoolDeviceLoss(t, f.inject) })
	}
}

// sparseFiles makes n sparse files of size bytes in dir (dev0.img, …)
// and returns their paths.
func sparseFiles(t *testing.T, dir string, n int, size int64) []string {
	t.Helper()
	paths := make([]string, n)
	for i := range paths {
		paths[i] = filepath.Join(dir, fmt.Sprintf("dev%d.img", i))
		if err := os.WriteFile(paths[i], nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(paths[i], size); err != nil {
			t.Fatal(err)
		}
	}
	return paths
}

// deviceFlags returns a --device flag for each path.
func deviceFlags(paths []string) []string {
	var args []string
	for _, p := range paths {
		args = append(args, "--device", p)
	}
	return args
}

func testPoolDeviceLoss(t *testing.T, inject func(path string) error) {
	d := startDaemon(t)
	devs := sparseFiles(t, t.TempDir(), 4, poolDevSize)
	d.MustCLI("pool", "create", "--device", devs[0], "--device", devs[1], "--device", devs[2], "--segment-size", "4MiB")
	if out := d.MustCLI("volume", "create", "pv", "--size", fmt.Sprint(poolVolSize), "--policy", "2+1"); !strings.Contains(out, "policy 2+1") {
		t.Fatalf("volume create: %s", out)
	}
	url := fmt.Sprintf("iscsi://%s/iqn.2026-11.dev.stave:pv/0", d.Portal())

	// Write while a device disappears.
	ctx, cancel := context.WithTimeout(context.Background(), poolIOTimeout)
	defer cancel()
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := qemuIOCmds(ctx, url, spanCmds("write", 0x5a)...)
		done <- result{out, err}
	}()
	deadline := time.Now().Add(time.Minute)
	for d.poolStatus(t).Space.Logical < poolIOSpan/8 {
		if time.Now().After(deadline) {
			t.Fatal("the writer made no progress within a minute")
		}
		select {
		case r := <-done:
			t.Fatalf("the writer finished before the fault could be injected: %v\n%s", r.err, r.out)
		case <-time.After(poolPollPeriod):
		}
	}
	if err := inject(devs[1]); err != nil {
		t.Fatal(err)
	}
	t.Logf("lost %s during the writes", devs[1])
	r := <-done
	if r.err != nil {
		t.Fatalf("writer saw an error after a device was lost: %v\n%s", r.err, r.out)
	}
	if out, err := qemuIOCmds(ctx, url, spanCmds("read", 0x5a)...); err != nil {
		t.Fatalf("read back after the device loss: %v\n%s", err, out)
	}
	st := d.poolStatus(t)
	t.Logf("after the loss: %+v", st)

	// Rebuild onto a new file.
	out := d.MustCLI("pool", "replace-device", devs[1], devs[3])
	if !strings.Contains(out, "replaced "+devs[1]+" with "+devs[3]) {
		t.Errorf("replace-device printed:\n%s", out)
	}
	st = d.poolStatus(t)
	var repairs int64
	for _, dv := range st.Devices {
		repairs += dv.Repairs
		if dv.Path == devs[1] {
			t.Errorf("replaced device still listed: %+v", st.Devices)
		}
	}
	if st.State != "ok" || len(st.Devices) != 3 || st.Devices[1].Path != devs[3] || st.Devices[1].State != "ok" {
		t.Errorf("pool status after replace: %+v", st)
	}
	if repairs == 0 {
		t.Errorf("pool status shows no repairs after a device loss and a rebuild: %+v", st.Devices)
	}
	table := d.MustCLI("pool", "status")
	t.Logf("stave pool status:\n%s", table)
	if !strings.Contains(table, "REPAIRS") || !strings.Contains(table, devs[3]) {
		t.Errorf("pool status table:\n%s", table)
	}
	if out, err := d.CLI("pool", "scrub"); err != nil || !strings.Contains(out, " 0 unrecoverable") {
		t.Errorf("scrub after the rebuild: %v\n%s", err, out)
	}
	if out, err := qemuIOCmds(ctx, url, spanCmds("read", 0x5a)...); err != nil {
		t.Fatalf("read back after the rebuild: %v\n%s", err, out)
	}

	// The rebuilt pool keeps working without the lost device's old file.
	if err := os.Remove(devs[1]); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	d.Restart()
	if out := d.MustCLI("volume", "show", "pv"); !strings.Contains(out, "pool 2+1") || !strings.Contains(out, "Exported:    yes") {
		t.Errorf("volume after restart:\n%s", out)
	}
	if out, err := qemuIOCmds(ctx, url, spanCmds("read", 0x5a)...); err != nil {
		t.Fatalf("read back after restart: %v\n%s", err, out)
	}
	if out, err := qemuIOCmds(ctx, url, "write -P 0xa5 0 8M", "read -P 0xa5 0 8M"); err != nil {
		t.Fatalf("write after restart: %v\n%s", err, out)
	}
	if st := d.poolStatus(t); st.State != "ok" || st.Volumes != 1 {
		t.Errorf("pool after restart: %+v", st)
	}
}

// TestPoolRestartKeepsVolumes checks that pool volumes, their snapshots
// and data survive a clean restart and a crash (SIGKILL), next to a file
// volume made before the pool.
func TestPoolRestartKeepsVolumes(t *testing.T) {
	requireE2E(t)
	requireTool(t, "qemu-io")
	d := startDaemon(t)
	d.MustCLI("volume", "create", "legacy", "--size", "64MiB")
	d.MustCLI(append([]string{"pool", "create", "--segment-size", "4MiB"}, deviceFlags(sparseFiles(t, t.TempDir(), 3, poolDevSize))...)...)
	d.MustCLI("volume", "create", "pv", "--size", "64MiB")
	ctx, cancel := context.WithTimeout(context.Background(), poolIOTimeout)
	defer cancel()
	url := func(v string) string { return fmt.Sprintf("iscsi://%s/iqn.2026-11.dev.stave:%s/0", d.Portal(), v) }
	for _, v := range []string{"pv", "legacy"} {
		if out, err := qemuIOCmds(ctx, url(v), "write -P 0x3c 0 8M"); err != nil {
			t.Fatalf("%s: %v\n%s", v, err, out)
		}
	}
	d.Restart()
	for _, v := range []string{"pv", "legacy"} {
		if out, err := qemuIOCmds(ctx, url(v), "read -P 0x3c 0 8M"); err != nil {
			t.Fatalf("%s after restart: %v\n%s", v, err, out)
		}
	}
	if out, err := qemuIOCmds(ctx, url("pv"), "write -P 0x4d 1M 1M"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := d.CrashRestartErr(); err != nil {
		t.Fatal(err)
	}
	if out, err := qemuIOCmds(ctx, url("pv"), "read -P 0x3c 0 1M", "read -P 0x4d 1M 1M", "read -P 0x3c 2M 6M"); err != nil {
		t.Fatalf("pv after a crash: %v\n%s", err, out)
	}
	out := d.MustCLI("volume", "list")
	if !strings.Contains(out, "pool 2+1") || !strings.Contains(out, "file") {
		t.Errorf("volume list after restarts:\n%s", out)
	}
}
