package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tgtControlPort is tgtd's control port (-C) for the guest test, apart
// from the system's default 0 and from other engineers' experiments.
const tgtControlPort = "7"

// tgtGuestTarget starts Debian's tgtd with the volumes of the guest
// scenario (STAVE_E2E_TARGET=tgt). It shows whether a failure is the
// harness's or stave's: tgt passes everything but its known deviations.
func tgtGuestTarget(t *testing.T) guestTarget {
	t.Helper()
	tgtd := requireTool(t, "tgtd")
	tgtadm := requireTool(t, "tgtadm")
	port := freePort(t)
	dir := t.TempDir()

	var log strings.Builder
	cmd := exec.Command(tgtd, "-f", "--iscsi", fmt.Sprintf("portal=127.0.0.1:%d", port), "-C", tgtControlPort)
	cmd.Stdout = &log
	cmd.Stderr = &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("tgtd: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()

	adm := func(args ...string) error {
		out, err := exec.Command(tgtadm, append([]string{"-C", tgtControlPort, "--lld", "iscsi"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("tgtadm %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	volumes := []string{"plain", "chap", "mutual", "denied"}
	t.Cleanup(func() {
		// tgtd ignores SIGTERM while it has targets.
		for i := range volumes {
			adm("--op", "delete", "--mode", "target", "--tid", fmt.Sprint(i+1), "--force")
		}
		adm("--op", "delete", "--mode", "system")
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("tgtd log:\n%s", log.String())
		}
	})
	// Wait for the control socket.
	deadline := time.Now().Add(10 * time.Second)
	for adm("--op", "show", "--mode", "target") != nil {
		if time.Now().After(deadline) {
			t.Fatalf("tgtd not ready: %s", log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	must := func(args ...string) {
		t.Helper()
		if err := adm(args...); err != nil {
			t.Fatal(err)
		}
	}
	for i, v := range volumes {
		tid := fmt.Sprint(i + 1)
		f := filepath.Join(dir, v)
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(f, guestVolumeSize); err != nil {
			t.Fatal(err)
		}
		must("--op", "new", "--mode", "target", "--tid", tid, "-T", staveIQN(v))
		must("--op", "new", "--mode", "logicalunit", "--tid", tid, "--lun", "1", "-b", f)
		if v == "denied" {
			must("--op", "bind", "--mode", "target", "--tid", tid, "-Q", guestOtherIQN)
		} else {
			must("--op", "bind", "--mode", "target", "--tid", tid, "-I", "ALL")
		}
	}
	// tgt offers no digests unless told to.
	must("--op", "update", "--mode", "target", "--tid", "1", "-n", "HeaderDigest", "-v", "CRC32C,None")
	must("--op", "update", "--mode", "target", "--tid", "1", "-n", "DataDigest", "-v", "CRC32C,None")
	must("--op", "new", "--mode", "account", "--user", chapUser, "--password", chapSecret)
	must("--op", "new", "--mode", "account", "--user", mutualUser, "--password", mutualSecret)
	must("--op", "bind", "--mode", "account", "--tid", "2", "--user", chapUser)
	must("--op", "bind", "--mode", "account", "--tid", "3", "--user", chapUser)
	must("--op", "bind", "--mode", "account", "--tid", "3", "--user", mutualUser, "--outgoing")

	const advertises = "tgt advertises its listen address 127.0.0.1, which the guest cannot reach"
	return guestTarget{
		name: "tgt",
		vars: map[string]string{
			"PORTAL":        fmt.Sprintf("%s:%d", guestHostAlias, port),
			"LUN":           "1", // tgt's LUN 0 is its controller
			"NODE_NEW":      "1",
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
		dataFile: func(v string) string { return filepath.Join(dir, v) },
		deviations: map[string]string{
			"discovery-lists-plain":  advertises,
			"discovery-lists-chap":   advertises,
			"discovery-lists-mutual": advertises,
			"denied-refused":         "tgt refuses an initiator-name ACL with a non-auth status (iscsiadm 19)",
			"unmap-supported":        "tgt offers no UNMAP without thin provisioning",
			"unmap":                  "tgt offers no UNMAP without thin provisioning",
			"unmap-reads-zero":       "tgt offers no UNMAP without thin provisioning",
		},
		steps: guestSteps,
	}
}
