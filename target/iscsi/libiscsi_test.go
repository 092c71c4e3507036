package iscsi

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"stave.dev/stave/target/iscsi/login"
)

// libiscsiURL returns the iscsi:// URL of the test target on ts.
func libiscsiURL(ts *testServer) string {
	return "iscsi://" + ts.addr + "/" + testTarget + "/0"
}

func runTool(t *testing.T, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	return string(out), err
}

func TestLibiscsiInqAndLs(t *testing.T) {
	ts := startServer(t)
	out, err := runTool(t, 30*time.Second, "iscsi-inq", libiscsiURL(ts))
	if err != nil || !strings.Contains(out, "STAVE") {
		t.Fatalf("iscsi-inq: %v\n%s", err, out)
	}
	out, err = runTool(t, 30*time.Second, "iscsi-ls", "-s", "iscsi://"+ts.addr)
	if err != nil || !strings.Contains(out, testTarget) || strings.Contains(out, "private") {
		t.Fatalf("iscsi-ls: %v\n%s", err, out)
	}
	waitFor(t, "sessions to end", func() bool { return len(ts.srv.Sessions()) == 0 })
}

func TestLibiscsiTestCU(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	ts := startServer(t)
	out, err := runTool(t, 3*time.Minute, "iscsi-test-cu", "--test=iSCSI", "--dataloss",
		"-i", "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test", libiscsiURL(ts))
	t.Logf("iscsi-test-cu:\n%s", out)
	if err != nil {
		t.Fatalf("iscsi-test-cu: %v", err)
	}
}

func TestLibiscsiCHAP(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		dev := newFakeDev(64)
		c.Targets = staticTargets{{Name: testTarget, Device: dev,
			Auth: &login.Auth{User: "alice", Secret: "secret-of-alice1"}}}
	})
	url := "iscsi://alice%secret-of-alice1@" + ts.addr + "/" + testTarget + "/0"
	if out, err := runTool(t, 30*time.Second, "iscsi-inq", url); err != nil || !strings.Contains(out, "STAVE") {
		t.Fatalf("iscsi-inq with CHAP: %v\n%s", err, out)
	}
	bad := "iscsi://alice%wrong-password1@" + ts.addr + "/" + testTarget + "/0"
	if out, err := runTool(t, 30*time.Second, "iscsi-inq", bad); err == nil {
		t.Fatalf("iscsi-inq with a wrong CHAP secret succeeded:\n%s", out)
	}
	if out, err := runTool(t, 30*time.Second, "iscsi-inq", libiscsiURL(ts)); err == nil {
		t.Fatalf("iscsi-inq without CHAP succeeded:\n%s", out)
	}
	waitFor(t, "sessions to end", func() bool { return len(ts.srv.Sessions()) == 0 })
}
