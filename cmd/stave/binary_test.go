package main

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBinaryExitStatus builds the binary and checks main's contract: an
// error prints "stave: <message>" on stderr and exits with status 1, and
// success exits 0.
func TestBinaryExitStatus(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "stave")
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go not on PATH")
	}
	if out, err := exec.CommandContext(ctx, gobin, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	sock := "unix:" + filepath.Join(t.TempDir(), "none.sock")
	cmd := exec.CommandContext(ctx, bin, "--api", sock, "volume", "list")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("volume list without a daemon: %v, want exit status 1", err)
	}
	if s := stderr.String(); !strings.HasPrefix(s, "stave: cannot reach the daemon") || strings.Count(s, "\n") != 1 {
		t.Errorf("stderr = %q, want one line \"stave: cannot reach the daemon ...\"", s)
	}
	cmd = exec.CommandContext(ctx, bin, "volume", "create", "x", "--size", "1XB")
	stderr.Reset()
	cmd.Stderr = &stderr
	if err := cmd.Run(); !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(stderr.String(), "unknown unit") {
		t.Errorf("bad unit: %v, stderr %q", err, stderr.String())
	}
	out, err := exec.CommandContext(ctx, bin, "--api", sock, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "stave ") {
		t.Errorf("version: %v, %q", err, out)
	}
}
