package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The Linux-initiator test boots one QEMU guest (tools/guest) that runs
// testdata/guest-initiator.sh against a target on the host and reports each
// check as a console marker; see tools/guest/lib.sh for the format.
const (
	guestInitiatorIQN = "iqn.2026-11.dev.stave.test:guest" // set by tools/guest/build.sh
	guestOtherIQN     = "iqn.2026-11.dev.stave.test:other" // the only initiator the denied volume allows
	guestBuildTimeout = 15 * time.Minute
	guestBootTimeout  = 12 * time.Minute
	guestVolumeSize   = 64 << 20
	guestPatternMiB   = 40 // where the 16 MiB O_DIRECT pattern goes on the plain volume
	guestPatternSize  = 16 << 20

	chapUser     = "e2e-initiator"
	chapSecret   = "initiator-secret-0123"
	mutualUser   = "e2e-target"
	mutualSecret = "target-secret-456789"
	discUser     = "e2e-discovery"
	discSecret   = "discovery-secret-42"
)

// guestSteps lists the STAVE-STEP names guest-initiator.sh always prints.
// Every one must be reported ok, once.
var guestSteps = []string{
	"discovery", "discovery-lists-plain", "discovery-lists-chap", "discovery-lists-mutual", "discovery-hides-denied",
	"login-plain", "disk-plain", "size-plain", "sg-inq", "sg-readcap", "sg-vpd-di",
	"pattern-write", "pattern-read", "pattern-cmp",
	"mkfs", "mount", "fs-files", "umount", "fsck", "pattern-after-fs", "logout-plain",
	"login-digest", "digest-negotiated", "io-digest", "logout-digest", "no-session-left",
	"chap-none-refused", "chap-wrong-refused", "login-chap", "io-chap",
	"unmap-supported", "unmap", "unmap-reads-zero",
	"pr-register", "pr-keys", "pr-reserve", "pr-read", "pr-type", "pr-holder-writes", "pr-release",
	"pr-unregister", "pr-no-keys", "logout-chap",
	"mutual-wrong-target-secret", "mutual-wrong-initiator-secret", "login-mutual", "io-mutual", "logout-mutual",
	"denied-node-new", "denied-refused", "no-session-at-end",
}

// guestDiscSteps are the discovery-CHAP steps, run when the target has a
// second portal that requires discovery CHAP.
var guestDiscSteps = []string{
	"disc-chap-none-refused", "disc-chap-wrong-refused", "disc-chap", "disc-chap-lists",
}

// guestMultipathSteps log in to one target through two portals, let
// multipathd build one dm-multipath map of both paths, do I/O through it,
// check a Write Exclusive persistent reservation held through one path
// refuses writes through the other, and keep doing I/O after one path logs
// out.
var guestMultipathSteps = []string{
	"mp-discovery", "mp-lists-both", "mp-login", "mp-sessions", "mp-map", "mp-io",
	"mp-pr-reserve", "mp-pr-conflict", "mp-pr-other-reads", "mp-pr-holder-writes", "mp-pr-clear", "mp-pr-cleared",
	"mp-logout-one", "mp-one-path", "mp-io-one-path", "mp-flush", "mp-logout",
}

// guestRestartSteps stop and restart the target under a logged-in
// session, gracefully (SIGTERM) and by a crash (SIGKILL); the guest asks
// the test through guestControl. Acknowledged O_DIRECT writes must survive
// both, and the session must recover by itself.
var guestRestartSteps = []string{
	"login-restart", "host-sees-session", "restart-write", "restart-daemon", "restart-read", "restart-pattern",
	"restart-session-recovered",
	"crash-write", "crash-daemon", "crash-read", "crash-write-after", "crash-session-recovered",
	"logout-restart",
}

// concat returns the concatenation of lists in a new slice.
func concat(lists ...[]string) []string {
	var all []string
	for _, l := range lists {
		all = append(all, l...)
	}
	return all
}

// guestTarget is the target a guest run talks to, set up on the host.
type guestTarget struct {
	name       string
	vars       map[string]string          // prepended to the guest script
	dataFile   func(volume string) string // host file holding a volume's blocks
	deviations map[string]string          // step → why this target may fail it
	steps      []string                   // expected steps
}

// TestGuestLinuxInitiator drives a target with the Linux kernel initiator
// (open-iscsi in a QEMU guest), all in one boot: SendTargets discovery,
// login, O_DIRECT pattern, ext4 and fsck, CRC32C digests, one-way and
// mutual CHAP with wrong secrets, an ACL that refuses the guest, discovery
// CHAP, dm-multipath over two portals, and daemon restarts (SIGTERM and
// SIGKILL) under a session. It then checks the pattern landed in the
// volume's backing file on the host.
//
// STAVE_E2E_TARGET=tgt runs the same script against Debian's tgtd, to
// tell harness bugs from target bugs.
func TestGuestLinuxInitiator(t *testing.T) {
	requireE2E(t)
	qemu := requireTool(t, "qemu-system-x86_64")
	img := buildGuest(t)

	var tgt guestTarget
	switch mode := os.Getenv("STAVE_E2E_TARGET"); mode {
	case "", "stave":
		tgt = staveGuestTarget(t)
	case "tgt":
		tgt = tgtGuestTarget(t)
	default:
		t.Fatalf("STAVE_E2E_TARGET=%q: want stave or tgt", mode)
	}

	run, elapsed := runGuestScript(t, qemu, img, "guest-initiator.sh", tgt.vars)
	t.Logf("guest run against %s: %v, ready after %.1fs of guest uptime, %d steps reported\n%s",
		tgt.name, elapsed.Round(time.Second), run.readyAt, len(run.steps), guestStepSummary(run, tgt.deviations))

	if !run.ready {
		t.Errorf("guest never reported STAVE-GUEST ready (boot or image problem)")
	}
	if !run.done {
		t.Errorf("guest never reported STAVE-GUEST done (hung or crashed)")
	}
	if run.scriptRC != 0 {
		t.Errorf("guest script exit status %d", run.scriptRC)
	}
	for _, s := range checkGuestSteps(run, tgt.steps, tgt.deviations) {
		t.Errorf("%s", s)
	}

	// The pattern written with O_DIRECT is in the backing file, at its offset.
	want := run.values["pattern-sha256"]
	if want == "" {
		t.Errorf("guest did not report pattern-sha256")
	} else if got, err := fileRangeSHA256(tgt.dataFile("plain"), guestPatternMiB<<20, guestPatternSize); err != nil {
		t.Errorf("reading the plain volume's data file: %v", err)
	} else if got != want {
		t.Errorf("plain volume data file at %d MiB: sha256 %s, guest wrote %s", guestPatternMiB, got, want)
	}

	// The 1 MiB the guest unmapped on the CHAP volume reads as zeros on the host.
	if tgt.deviations["unmap"] == "" {
		zeros := sha256.Sum256(make([]byte, 1<<20))
		if got, err := fileRangeSHA256(tgt.dataFile("chap"), 3<<20, 1<<20); err != nil {
			t.Errorf("reading the chap volume's data file: %v", err)
		} else if got != hex.EncodeToString(zeros[:]) {
			t.Errorf("chap volume data file at 3 MiB is not zero after UNMAP")
		}
	}
}

// checkGuestSteps compares the steps a run reported with the expected
// list and returns one message per problem: a missing, failed, unexpected
// or repeated step. A failing step listed in deviations is only logged by
// the caller's summary, not reported.
func checkGuestSteps(run guestRun, want []string, deviations map[string]string) []string {
	var problems []string
	seen := make(map[string]guestStep)
	for _, s := range run.steps {
		if _, dup := seen[s.name]; dup {
			problems = append(problems, fmt.Sprintf("step %s reported twice", s.name))
		}
		seen[s.name] = s
	}
	expected := make(map[string]bool)
	for _, name := range want {
		expected[name] = true
		s, ok := seen[name]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("step %s: not reported", name))
		case !s.ok && deviations[name] != "":
			// Known deviation of this target; not an error.
		case !s.ok:
			problems = append(problems, fmt.Sprintf("step %s: %s", name, s.line))
		}
	}
	for _, s := range run.steps {
		if !expected[s.name] {
			problems = append(problems, fmt.Sprintf("step %s: not expected (guestSteps out of date?)", s.name))
		}
	}
	return problems
}

// guestStepSummary formats one line per step: status, guest uptime, time
// since the previous step, and a target's excuse for a known deviation.
func guestStepSummary(run guestRun, deviations map[string]string) string {
	var b strings.Builder
	prev := 0.0
	for _, s := range run.steps {
		status := "ok"
		if !s.ok {
			status = "FAIL"
		}
		fmt.Fprintf(&b, "  %-32s %-4s t=%7.2fs +%6.2fs", s.name, status, s.at, s.at-prev)
		if !s.ok && deviations[s.name] != "" {
			fmt.Fprintf(&b, "  (known deviation: %s)", deviations[s.name])
		}
		b.WriteByte('\n')
		if s.at > 0 {
			prev = s.at
		}
	}
	return b.String()
}

// guestStep is one STAVE-STEP line.
type guestStep struct {
	name string
	ok   bool
	line string  // the marker line, for messages
	at   float64 // guest uptime in seconds, 0 if not reported
}

// guestRun is what parseGuestConsole finds in a console log.
type guestRun struct {
	ready, done bool
	readyAt     float64 // guest uptime at STAVE-GUEST ready, 0 if not reported
	scriptRC    int     // -1 until reported
	steps       []guestStep
	values      map[string]string // STAVE-VALUE name value
}

// parseGuestConsole extracts the markers of tools/guest/init and lib.sh
// from a console log. Markers may follow other output on the same line
// (the serial console does not always start a line), so it looks for the
// marker anywhere in a line.
func parseGuestConsole(console string) guestRun {
	run := guestRun{scriptRC: -1, values: make(map[string]string)}
	sc := bufio.NewScanner(strings.NewReader(console))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	inDmesg := false
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if i := strings.Index(line, "STAVE-"); i > 0 {
			line = line[i:]
		}
		switch {
		case line == "STAVE-DMESG begin":
			inDmesg = true
		case line == "STAVE-DMESG end":
			inDmesg = false
		case inDmesg:
		case line == "STAVE-GUEST ready" || strings.HasPrefix(line, "STAVE-GUEST ready "):
			run.ready = true
			if v, ok := strings.CutPrefix(line, "STAVE-GUEST ready t="); ok {
				run.readyAt, _ = strconv.ParseFloat(v, 64)
			}
		case line == "STAVE-GUEST done":
			run.done = true
		case strings.HasPrefix(line, "STAVE-GUEST script rc="):
			if rc, err := strconv.Atoi(strings.TrimPrefix(line, "STAVE-GUEST script rc=")); err == nil {
				run.scriptRC = rc
			}
		case strings.HasPrefix(line, "STAVE-VALUE "):
			name, value, _ := strings.Cut(strings.TrimPrefix(line, "STAVE-VALUE "), " ")
			run.values[name] = value
		case strings.HasPrefix(line, "STAVE-STEP "):
			f := strings.Fields(strings.TrimPrefix(line, "STAVE-STEP "))
			if len(f) < 2 {
				continue
			}
			s := guestStep{name: f[0], ok: f[1] == "ok", line: line}
			for _, kv := range f[2:] {
				if v, ok := strings.CutPrefix(kv, "t="); ok {
					s.at, _ = strconv.ParseFloat(v, 64)
				}
			}
			run.steps = append(run.steps, s)
		}
	}
	return run
}

// fileRangeSHA256 returns the hex SHA-256 of n bytes of path at off.
func fileRangeSHA256(path string, off, n int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	got, err := io.Copy(h, io.NewSectionReader(f, off, n))
	if err != nil {
		return "", err
	}
	if got != n {
		return "", fmt.Errorf("%s: %d bytes at %d, want %d", path, got, off, n)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// guestImage is a kernel and initramfs built by tools/guest/build.sh.
type guestImage struct {
	kernel, initrd, cmdline string
}

// buildGuest runs tools/guest/build.sh (cached; about 45 s when not).
func buildGuest(t *testing.T) guestImage {
	t.Helper()
	for _, tool := range []string{"debootstrap", "cpio", "depmod"} {
		requireTool(t, tool)
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), guestBuildTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(root, "tools", "guest", "build.sh"))
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tools/guest/build.sh: %v\n%s", err, stderr.String())
	}
	dir := strings.TrimSpace(string(out))
	t.Logf("guest image %s (%v)", dir, time.Since(start).Round(time.Second))
	cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil {
		t.Fatal(err)
	}
	return guestImage{
		kernel:  filepath.Join(dir, "vmlinuz"),
		initrd:  filepath.Join(dir, "initrd.gz"),
		cmdline: strings.TrimSpace(string(cmdline)),
	}
}

// bootGuest boots img under QEMU with script handed in through fw_cfg and
// returns the serial console. The guest powers itself off; QEMU is killed
// after guestBootTimeout.
func bootGuest(t *testing.T, qemu string, img guestImage, script []byte) (string, error) {
	t.Helper()
	scriptFile := filepath.Join(t.TempDir(), "script.sh")
	if err := os.WriteFile(scriptFile, script, 0o644); err != nil {
		t.Fatal(err)
	}
	// NB: not KVM by default: a /dev/kvm that opens may still fail (nested
	// virtualisation here aborts QEMU on an MSR write).
	accel := []string{"-accel", "tcg"}
	if os.Getenv("STAVE_E2E_KVM") == "1" {
		accel = []string{"-accel", "kvm"}
	}
	args := append(accel,
		"-cpu", "max", "-smp", "2", "-m", "1024",
		"-nographic", "-no-reboot",
		"-kernel", img.kernel, "-initrd", img.initrd, "-append", img.cmdline,
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile=",
		"-device", "virtio-rng-pci",
		"-fw_cfg", "name=opt/stave/script,file="+scriptFile,
	)
	ctx, cancel := context.WithTimeout(context.Background(), guestBootTimeout)
	defer cancel()
	var console bytes.Buffer
	cmd := exec.CommandContext(ctx, qemu, args...)
	cmd.Stdout = &console
	cmd.Stderr = &console
	cmd.WaitDelay = 10 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // die with the test binary
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("qemu killed after %v", guestBootTimeout)
	} else if err != nil {
		err = fmt.Errorf("qemu: %w", err)
	}
	return console.String(), err
}

// staveGuestTarget starts two stave daemons: one with the volumes of the
// main scenario, one that requires discovery CHAP.
func staveGuestTarget(t *testing.T) guestTarget {
	t.Helper()
	d := startDaemon(t)
	const size = "64MiB" // guestVolumeSize
	d.MustCLI("volume", "create", "plain", "--size", size)
	d.MustCLI("volume", "create", "chap", "--size", size, "--chap", chapUser+":"+chapSecret)
	d.MustCLI("volume", "create", "mutual", "--size", size,
		"--chap", chapUser+":"+chapSecret, "--mutual-chap", mutualUser+":"+mutualSecret)
	d.MustCLI("volume", "create", "denied", "--size", size, "--allow", guestOtherIQN)

	d2 := startDaemon(t, "--discovery-chap", discUser+":"+discSecret)
	d2.MustCLI("volume", "create", "disc", "--size", size)

	// Multipath: one target on two portals of one daemon.
	p2 := freePort(t)
	d3 := startDaemon(t, "--portal", fmt.Sprintf("127.0.0.1:%d", p2), "--advertise", fmt.Sprintf("%s:%d", guestHostAlias, p2))
	d3.MustCLI("volume", "create", "multipath", "--size", size)

	ctl := startGuestControl(t, map[string]func() error{
		"sessions": func() error { return hostSeesSession(d, guestInitiatorIQN, staveIQN("plain")) },
		"restart":  d.RestartErr,
		"crash":    d.CrashRestartErr,
	})

	return guestTarget{
		name: "stave",
		vars: map[string]string{
			"PORTAL":        fmt.Sprintf("%s:%d", guestHostAlias, d.Port()),
			"DISC_PORTAL":   fmt.Sprintf("%s:%d", guestHostAlias, d2.Port()),
			"CTL_PORT":      fmt.Sprint(ctl.Port()),
			"MP_IQN":        staveIQN("multipath"),
			"MP_PORTAL1":    fmt.Sprintf("%s:%d", guestHostAlias, d3.Port()),
			"MP_PORTAL2":    fmt.Sprintf("%s:%d", guestHostAlias, p2),
			"DISC_IQN":      staveIQN("disc"),
			"DISC_USER":     discUser,
			"DISC_SECRET":   discSecret,
			"LUN":           "0",
			"IQN_PLAIN":     staveIQN("plain"),
			"IQN_CHAP":      staveIQN("chap"),
			"IQN_MUTUAL":    staveIQN("mutual"),
			"IQN_DENIED":    staveIQN("denied"),
			"CHAP_USER":     chapUser,
			"CHAP_SECRET":   chapSecret,
			"MUTUAL_USER":   mutualUser,
			"MUTUAL_SECRET": mutualSecret,
			"SIZE":          fmt.Sprint(guestVolumeSize),
			"PATTERN_MIB":   fmt.Sprint(guestPatternMiB),
		},
		dataFile: func(v string) string { return filepath.Join(d.DataDir(), "volumes", v, "data") },
		steps:    concat(guestSteps, guestDiscSteps, guestMultipathSteps, guestRestartSteps),
	}
}

// hostSeesSession checks that `stave session list` shows a session of
// initiator with target.
func hostSeesSession(d *daemon, initiator, target string) error {
	out, err := d.CLI("session", "list")
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, initiator) && strings.Contains(line, target) {
			return nil
		}
	}
	return fmt.Errorf("no session of %s with %s in: %s", initiator, target, out)
}

// staveIQN is the target name stave gives a volume (DESIGN.md).
func staveIQN(volume string) string { return "iqn.2026-11.dev.stave:" + volume }

// runGuestScript boots the guest with testdata/NAME, preceded by one
// shell assignment per var (sorted), and returns the parsed console and
// how long the run took. The console is saved as guest-console.log and
// printed if the test fails; a boot error fails the test.
func runGuestScript(t *testing.T, qemu string, img guestImage, name string, vars map[string]string) (guestRun, time.Duration) {
	t.Helper()
	script, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	run, _, elapsed := runGuestScriptText(t, qemu, img, name, string(script), vars)
	return run, elapsed
}

// runGuestScriptText is runGuestScript for a script held in a string:
// it boots the guest with script, preceded by one shell assignment per
// var (sorted), and returns the parsed console, the console itself and
// how long the run took. The console is saved as guest-console.log and
// printed if the test fails; a boot error fails the test.
func runGuestScriptText(t *testing.T, qemu string, img guestImage, name, script string, vars map[string]string) (guestRun, string, time.Duration) {
	t.Helper()
	var full bytes.Buffer
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		fmt.Fprintf(&full, "%s='%s'\n", k, vars[k])
	}
	full.WriteString(script)
	start := time.Now()
	console, err := bootGuest(t, qemu, img, full.Bytes())
	elapsed := time.Since(start)
	saveLog(t, "guest-console.log", console)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("guest console (%s, %v):\n%s", name, elapsed.Round(time.Second), console)
		}
	})
	if err != nil {
		t.Errorf("guest: %v", err)
	}
	return parseGuestConsole(console), console, elapsed
}
