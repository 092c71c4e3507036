package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Time limits of the helpers. Each bounds one step so that a hung daemon
// fails the test instead of hanging it.
const (
	buildTimeout   = 5 * time.Minute
	startTimeout   = 30 * time.Second
	stopTimeout    = 15 * time.Second
	cliTimeout     = 60 * time.Second
	guestHostAlias = "10.0.2.2" // the host's loopback as seen from a QEMU user-network guest
)

// build holds the stave binary built once for this test binary; TestMain
// removes it. NB: a package variable because the build is shared by all
// tests of the binary.
var build struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

// TestMain removes the binary built by staveBinary once all tests ran.
func TestMain(m *testing.M) {
	code := m.Run()
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

// requireE2E skips t unless STAVE_E2E=1. With STAVE_E2E=1 every missing
// prerequisite is a failure (see requireTool).
func requireE2E(t *testing.T) {
	t.Helper()
	if os.Getenv("STAVE_E2E") != "1" {
		t.Skip("end-to-end test: set STAVE_E2E=1 to run")
	}
}

// requireTool fails t (STAVE_E2E is set, so missing prerequisites are
// errors) unless name is on $PATH or in /usr/sbin or /sbin. It returns the
// full path.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p
		}
	}
	t.Fatalf("prerequisite %q not found (run `make deps`)", name)
	return ""
}

// repoRoot returns the directory holding the module's go.mod.
func repoRoot() (string, error) {
	out, err := exec.Command(goTool(), "env", "GOMOD").Output()
	if err == nil {
		if gomod := strings.TrimSpace(string(out)); gomod != "" && gomod != os.DevNull {
			return filepath.Dir(gomod), nil
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("e2e: go.mod not found above the working directory")
		}
		dir = parent
	}
}

// goTool returns the go command to build with.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// staveBinary builds ./cmd/stave once per test binary and returns its path;
// with STAVE_E2E_RACE=1 it builds with the race detector.
func staveBinary(t *testing.T) string {
	t.Helper()
	build.once.Do(func() {
		root, err := repoRoot()
		if err != nil {
			build.err = err
			return
		}
		build.dir, err = os.MkdirTemp("", "stave-e2e-bin-")
		if err != nil {
			build.err = err
			return
		}
		build.bin = filepath.Join(build.dir, "stave")
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		args := []string{"build", "-o", build.bin}
		if os.Getenv("STAVE_E2E_RACE") == "1" {
			args = append(args, "-race")
		}
		cmd := exec.CommandContext(ctx, goTool(), append(args, "./cmd/stave")...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build ./cmd/stave: %v\n%s", err, out)
		}
	})
	if build.err != nil {
		t.Fatalf("building stave: %v", build.err)
	}
	return build.bin
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// daemon is one `stave serve` process started by startDaemon. Its methods
// are not safe for concurrent use except CLI, Portal, Port, DataDir and Log.
type daemon struct {
	t       *testing.T
	bin     string
	dir     string // scratch directory: data dir, socket, log
	dataDir string
	sock    string
	port    int
	args    []string // full serve argument list, reused by Restart

	logMu sync.Mutex
	log   bytes.Buffer // output of every run, in order

	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	err  error         // exit status of cmd, valid once done is closed
}

// startDaemon builds stave (once per test binary) and starts
//
//	stave serve --data-dir D --portal 127.0.0.1:P --advertise 10.0.2.2:P --api unix:D/api.sock
//
// plus extraArgs, on a free port P. An --advertise in extraArgs replaces the
// default one, unless extraArgs also adds portals: stave pairs the n-th
// --advertise with the n-th --portal, so each extra --portal needs its own
// --advertise after it. It waits until the API socket and the portal accept
// connections, and stops the daemon at t.Cleanup, printing its log if t
// failed.
func startDaemon(t *testing.T, extraArgs ...string) *daemon {
	t.Helper()
	bin := staveBinary(t)
	dir := t.TempDir()
	// Unix socket paths are limited to 108 bytes; t.TempDir can be long.
	if len(dir) > 80 {
		short, err := os.MkdirTemp("", "stave-e2e-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(short) })
		dir = short
	}
	d := &daemon{
		t:       t,
		bin:     bin,
		dir:     dir,
		dataDir: filepath.Join(dir, "data"),
		sock:    filepath.Join(dir, "api.sock"),
	}
	setPort := func(port int) {
		d.port = port
		d.args = []string{"serve",
			"--config", "/dev/null", // not the host's /etc/stave/stave.yaml
			"--data-dir", d.dataDir,
			"--portal", d.Portal(),
			"--api", "unix:" + d.sock,
		}
		if !hasFlag(extraArgs, "--advertise") || hasFlag(extraArgs, "--portal") {
			d.args = append(d.args, "--advertise", net.JoinHostPort(guestHostAlias, strconv.Itoa(d.port)))
		}
		d.args = append(d.args, extraArgs...)
	}
	setPort(freePort(t))
	t.Cleanup(func() {
		d.Stop()
		for _, bad := range daemonLogAlarms {
			if strings.Contains(d.Log(), bad) {
				t.Errorf("stave serve log holds %q", bad)
			}
		}
		if t.Failed() {
			t.Logf("stave serve log (%s):\n%s", strings.Join(d.args, " "), d.Log())
		}
		saveLog(t, fmt.Sprintf("stave-%d.log", d.port), d.Log())
	})
	// freePort races with other processes; retry on a new port if ours was taken.
	for attempt := 1; ; attempt++ {
		err := d.startErr()
		if err == nil {
			return d
		}
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("port %d taken, retrying on another", d.port)
		setPort(freePort(t))
	}
}

// saveLog writes a log to $STAVE_E2E_LOGDIR/<test>-<name>, if that is set,
// so CI can keep it as an artifact.
func saveLog(t *testing.T, name, content string) {
	dir := os.Getenv("STAVE_E2E_LOGDIR")
	if dir == "" {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("saving %s: %v", name, err)
		return
	}
	base := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()) + "-" + name
	if err := os.WriteFile(filepath.Join(dir, base), []byte(content), 0o644); err != nil {
		t.Logf("saving %s: %v", name, err)
	}
}

// daemonLogAlarms are strings that must never appear in a daemon's log:
// Go runtime crashes and race reports (STAVE_E2E_RACE=1 builds with -race).
var daemonLogAlarms = []string{"panic:", "fatal error:", "WARNING: DATA RACE"}

// hasFlag reports whether args holds --name or --name=value.
func hasFlag(args []string, name string) bool {
	for _, a := range args {
		if a == name || strings.HasPrefix(a, name+"=") {
			return true
		}
	}
	return false
}

// logWriter appends to the daemon's log under logMu.
type logWriter struct{ d *daemon }

func (w logWriter) Write(p []byte) (int, error) {
	w.d.logMu.Lock()
	defer w.d.logMu.Unlock()
	return w.d.log.Write(p)
}

// start runs the daemon and waits until it serves; it fails the test if
// the daemon does not come up.
func (d *daemon) start() {
	d.t.Helper()
	if err := d.startErr(); err != nil {
		d.t.Fatal(err)
	}
}

// startErr runs the daemon and waits until it serves. Unlike start it may
// be called from any goroutine.
func (d *daemon) startErr() error {
	if err := os.MkdirAll(d.dataDir, 0o755); err != nil {
		return err
	}
	os.Remove(d.sock)
	fmt.Fprintf(logWriter{d}, "=== %s start: stave %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(d.args, " "))
	cmd := exec.Command(d.bin, d.args...)
	cmd.Stdout = logWriter{d}
	cmd.Stderr = logWriter{d}
	// Die with the test binary, whatever happens to it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting stave serve: %v", err)
	}
	d.cmd = cmd
	d.done = make(chan struct{})
	go func(done chan struct{}) {
		d.err = cmd.Wait()
		close(done)
	}(d.done)

	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-d.done:
			d.cmd = nil
			return fmt.Errorf("stave serve exited during start-up: %v\n%s", d.err, d.Log())
		default:
		}
		if dialOK("unix", d.sock) && dialOK("tcp", d.Portal()) {
			return nil
		}
		if time.Now().After(deadline) {
			d.Stop()
			return fmt.Errorf("stave serve not ready after %v (api %s, portal %s)\n%s", startTimeout, d.sock, d.Portal(), d.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dialOK reports whether a connection to addr succeeds.
func dialOK(network, addr string) bool {
	c, err := net.DialTimeout(network, addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// CLI runs `stave --api unix:SOCK args...` and returns its combined output.
// The error is non-nil when the command fails or times out.
func (d *daemon) CLI(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	full := append([]string{"--api", "unix:" + d.sock}, args...)
	out, err := exec.CommandContext(ctx, d.bin, full...).CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("stave %s: timed out after %v", strings.Join(args, " "), cliTimeout)
	} else if err != nil {
		err = fmt.Errorf("stave %s: %w", strings.Join(args, " "), err)
	}
	return string(out), err
}

// MustCLI is CLI that fails the test on error.
func (d *daemon) MustCLI(args ...string) string {
	d.t.Helper()
	out, err := d.CLI(args...)
	if err != nil {
		d.t.Fatalf("%v\n%s", err, out)
	}
	return out
}

// Portal returns the listening address, 127.0.0.1:port.
func (d *daemon) Portal() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(d.port)) }

// Port returns the portal's TCP port.
func (d *daemon) Port() int { return d.port }

// DataDir returns the daemon's --data-dir.
func (d *daemon) DataDir() string { return d.dataDir }

// Socket returns the path of the admin API's unix socket.
func (d *daemon) Socket() string { return d.sock }

// Log returns everything the daemon wrote to stdout and stderr so far,
// across restarts.
func (d *daemon) Log() string {
	d.logMu.Lock()
	defer d.logMu.Unlock()
	return d.log.String()
}

// Stop sends SIGTERM and waits for the daemon to exit, then SIGKILL after
// stopTimeout (logged: a daemon that does not stop on SIGTERM is a bug).
// Stopping a stopped daemon does nothing.
func (d *daemon) Stop() {
	if d.cmd == nil {
		return
	}
	cmd, done := d.cmd, d.done
	d.cmd = nil
	select {
	case <-done:
	default:
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(stopTimeout):
			d.t.Logf("stave serve did not exit %v after SIGTERM; killing it", stopTimeout)
			cmd.Process.Kill()
			<-done
		}
	}
	fmt.Fprintf(logWriter{d}, "=== %s exit: %v\n", time.Now().Format(time.RFC3339Nano), d.err)
}

// Kill ends the daemon with SIGKILL, as a crash would, and waits for it.
// Killing a stopped daemon does nothing.
func (d *daemon) Kill() {
	if d.cmd == nil {
		return
	}
	cmd, done := d.cmd, d.done
	d.cmd = nil
	cmd.Process.Kill()
	<-done
	fmt.Fprintf(logWriter{d}, "=== %s killed: %v\n", time.Now().Format(time.RFC3339Nano), d.err)
}

// CrashRestartErr kills the daemon with SIGKILL and starts it again with
// the same arguments, returning an error if it does not come back. It may
// be called from any goroutine.
func (d *daemon) CrashRestartErr() error {
	d.Kill()
	return d.startErr()
}

// Restart stops the daemon and starts it again with the same arguments,
// data directory and port. It fails the test if the daemon does not come
// back; call it from the test goroutine.
func (d *daemon) Restart() {
	d.t.Helper()
	if err := d.RestartErr(); err != nil {
		d.t.Fatal(err)
	}
}

// RestartErr is Restart for other goroutines: it returns the error instead
// of failing the test.
func (d *daemon) RestartErr() error {
	d.Stop()
	return d.startErr()
}

// TestDaemonHelper checks startDaemon itself: the daemon serves, a volume
// created through the CLI gets its backing file, and it survives Restart.
func TestDaemonHelper(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t)
	d.MustCLI("volume", "create", "helper", "--size", "1MiB")
	st, err := os.Stat(filepath.Join(d.DataDir(), "volumes", "helper", "data"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 1<<20 {
		t.Errorf("data file size %d, want %d", st.Size(), 1<<20)
	}
	d.Restart()
	if out := d.MustCLI("volume", "list"); !strings.Contains(out, "helper") {
		t.Errorf("volume list after restart:\n%s", out)
	}
	if _, err := d.CLI("volume", "create", "bad name!", "--size", "1MiB"); err == nil {
		t.Errorf("creating a volume with an invalid name succeeded")
	}
}
