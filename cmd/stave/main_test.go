package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"stave.dev/stave/internal/adminapi"
)

func TestParseSize(t *testing.T) {
	cases := []struct {
		in   string
		want int64
		err  string
	}{
		{"4096", 4096, ""},
		{"512B", 512, ""},
		{"1KiB", 1 << 10, ""},
		{"1k", 1 << 10, ""},
		{"64MiB", 64 << 20, ""},
		{"10M", 10 << 20, ""},
		{"1GiB", 1 << 30, ""},
		{"2G", 2 << 30, ""},
		{"1TiB", 1 << 40, ""},
		{"3T", 3 << 40, ""},
		{"1gib", 1 << 30, ""},
		{"1GB", 0, `unknown unit "GB": use B, KiB`},
		{"512MB", 0, `MB is ambiguous (powers of 1000 or 1024?): write 512MiB`},
		{"2Gi", 2 << 30, ""},
		{"1XB", 0, `unknown unit "XB": use B, KiB`},
		{"1 GiB", 1 << 30, ""},
		{"1.5G", 0, "whole number with a unit, e.g. 1536MiB"},
		{"G", 0, "whole number"},
		{"", 0, "whole number"},
		{"-1G", 0, "whole number"},
		{"99999999999T", 0, "too large"},
	}
	for _, c := range cases {
		got, err := parseSize(c.in)
		if c.err == "" {
			if err != nil || got != c.want {
				t.Errorf("parseSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("parseSize(%q) = %d, %v; want error containing %q", c.in, got, err, c.err)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{512: "512 B", 1 << 30: "1 GiB", 3 << 19: "1.5 MiB", 0: "0 B"} {
		if got := formatSize(n); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestReorderArgs(t *testing.T) {
	app := newApp(&bytes.Buffer{}, &bytes.Buffer{})
	cases := []struct{ in, want string }{
		{"stave volume create db --size 1GiB", "stave volume create --size 1GiB db"},
		{"stave volume create db --size=1GiB --allow a --allow b", "stave volume create --size=1GiB --allow a --allow b db"},
		{"stave --api unix:/x volume show db --output json", "stave --api unix:/x --output json volume show db"},
		{"stave volume list -o json", "stave -o json volume list"},
		{"stave volume create --size 1G db", "stave volume create --size 1G db"},
		{"stave serve --data-dir d --portal 127.0.0.1:1 --api unix:/s", "stave serve --data-dir d --portal 127.0.0.1:1 --api unix:/s"},
		{"stave volume delete db -- --size", "stave volume delete db -- --size"},
		{"stave volume create db --help", "stave volume create --help db"},
		{"stave nosuch a --b", "stave nosuch a --b"},
		{"stave pool create --device a --segment-size 4MiB --device b", "stave pool create --device a --segment-size 4MiB --device b"},
		{"stave snapshot create db s1 -o json", "stave -o json snapshot create db s1"},
		{"stave volume create db --size 1G --policy 2+1", "stave volume create --size 1G --policy 2+1 db"},
		{"stave pool replace-device /a /b --output json", "stave --output json pool replace-device /a /b"},
		{"stave", "stave"},
	}
	for _, c := range cases {
		got := strings.Join(reorderArgs(app, strings.Fields(c.in)), " ")
		if got != c.want {
			t.Errorf("reorderArgs(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// portalRE finds the bound portal in serve's "stave serving" log line.
var portalRE = regexp.MustCompile(`msg="stave serving" portal=(\S+)`)

// daemon is an in-process `stave serve`.
type daemon struct {
	t      *testing.T
	dir    string
	sock   string
	portal string
	log    *syncBuffer
	cancel context.CancelFunc
	done   chan int
}

func newDaemon(t *testing.T) *daemon {
	t.Helper()
	// Unix socket paths are limited to 108 bytes; t.TempDir can be longer.
	dir, err := os.MkdirTemp("", "stv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	d := &daemon{t: t, dir: dir, sock: filepath.Join(dir, "api.sock"),
		log: &syncBuffer{}}
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.log)
		}
	})
	d.start()
	return d
}

func (d *daemon) start() {
	d.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	d.done = make(chan int, 1)
	args := []string{"stave", "serve", "--config", "/dev/null", "--data-dir", filepath.Join(d.dir, "data"), "--portal", "127.0.0.1:0",
		"--advertise", "10.0.2.2:3260", "--api", "unix:" + d.sock, "--log-level", "debug"}
	// NB: urfave/cli v2 mutates package globals (HelpFlag) while parsing,
	// so the serve goroutine's parse must happen before the test's client
	// calls: the ready callback gives the race detector that edge.
	ready := make(chan struct{})
	app := newApp(d.log, d.log)
	app.Metadata = map[string]any{readyKey: func() { close(ready) }}
	go func() { d.done <- runApp(ctx, app, args) }()
	select {
	case code := <-d.done:
		d.t.Fatalf("serve exited with %d during start-up:\n%s", code, d.log)
	case <-ready:
	case <-time.After(20 * time.Second):
		d.t.Fatalf("serve not ready after 20s:\n%s", d.log)
	}
	// The kernel chose the port: read it from the last start-up log line.
	m := portalRE.FindAllStringSubmatch(d.log.String(), -1)
	if len(m) == 0 {
		d.t.Fatalf("no portal in the start-up log:\n%s", d.log)
	}
	d.portal = m[len(m)-1][1]
	for _, a := range [][2]string{{"unix", d.sock}, {"tcp", d.portal}} {
		c, err := net.DialTimeout(a[0], a[1], time.Second)
		if err != nil {
			d.t.Fatalf("serve ready but %s %s does not accept: %v", a[0], a[1], err)
		}
		c.Close()
	}
}

func (d *daemon) stop() {
	if d.cancel == nil {
		return
	}
	d.cancel()
	d.cancel = nil
	select {
	case code := <-d.done:
		if code != 0 {
			d.t.Errorf("serve exited with %d", code)
		}
	case <-time.After(20 * time.Second):
		d.t.Fatal("serve did not stop within 20s of cancel")
	}
}

// cli runs a client command against d and returns exit code, stdout, stderr.
func (d *daemon) cli(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append([]string{"stave", "--api", "unix:" + d.sock}, args...)
	code := run(ctx, full, &out, &errb)
	return code, out.String(), errb.String()
}

func (d *daemon) mustCLI(args ...string) string {
	d.t.Helper()
	code, out, errs := d.cli(args...)
	if code != 0 {
		d.t.Fatalf("stave %s: exit %d: %s%s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

func (d *daemon) wantFail(substr string, args ...string) {
	d.t.Helper()
	code, out, errs := d.cli(args...)
	if code != 1 || !strings.HasPrefix(errs, "stave: ") || !strings.Contains(errs, substr) {
		d.t.Errorf("stave %s: exit %d, stdout %q, stderr %q; want exit 1 and stderr \"stave: ...%s...\"",
			strings.Join(args, " "), code, out, errs, substr)
	}
}

func (d *daemon) volumes() []adminapi.Volume {
	d.t.Helper()
	var vs []adminapi.Volume
	if err := json.Unmarshal([]byte(d.mustCLI("volume", "list", "--output", "json")), &vs); err != nil {
		d.t.Fatal(err)
	}
	return vs
}

func names(vs []adminapi.Volume) []string {
	var n []string
	for _, v := range vs {
		n = append(n, v.Name)
	}
	return n
}

func TestCLIAgainstDaemon(t *testing.T) {
	d := newDaemon(t)
	if st, err := os.Stat(d.sock); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("socket %v %v, want mode 0600", st, err)
	}
	if vs := d.volumes(); len(vs) != 0 {
		t.Fatalf("fresh daemon has volumes %v", names(vs))
	}

	out := d.mustCLI("volume", "create", "db", "--size", "64MiB", "--allow", "iqn.1993-08.org.debian:01:abc",
		"--chap", "alice:0123456789abcdef", "--mutual-chap", "tgt:fedcba9876543210")
	if !strings.Contains(out, "iqn.2026-11.dev.stave:db") {
		t.Errorf("create printed %q", out)
	}
	d.mustCLI("volume", "create", "--size", "1M", "--block-size", "4096", "logs")

	// Mistakes: clear errors, exit 1, no change.
	d.wantFail(`volume "db" already exists`, "volume", "create", "db", "--size", "1GiB")
	d.wantFail(`unknown unit "GB"`, "volume", "create", "x", "--size", "1GB")
	d.wantFail("iqn.YYYY-MM", "volume", "create", "x", "--size", "1G", "--allow", "host1")
	d.wantFail("12 to 255", "volume", "create", "x", "--size", "1G", "--chap", "u:short")
	d.wantFail("USER:SECRET", "volume", "create", "x", "--size", "1G", "--chap", "nosecret")
	d.wantFail("a-z", "volume", "create", "Bad_Name", "--size", "1G")
	d.wantFail("multiple of the 4096-byte block size", "volume", "create", "x", "--size", "6KiB", "--block-size", "4096")
	d.wantFail(`no volume named "nope"`, "volume", "show", "nope")
	d.wantFail(`no volume named "nope"`, "volume", "delete", "nope")
	d.wantFail("missing volume NAME", "volume", "show")
	d.wantFail("use table or json", "volume", "list", "--output", "yaml")
	if got := names(d.volumes()); !slices.Equal(got, []string{"db", "logs"}) {
		t.Fatalf("volumes after mistakes = %v, want [db logs]", got)
	}

	// Table and JSON output.
	tbl := d.mustCLI("volume", "list")
	if !strings.Contains(tbl, "NAME") || !strings.Contains(tbl, "64 MiB") || !strings.Contains(tbl, "iqn.2026-11.dev.stave:logs") {
		t.Errorf("volume list table:\n%s", tbl)
	}
	show := d.mustCLI("volume", "show", "db")
	for _, want := range []string{"iqn.2026-11.dev.stave:db", "iqn.1993-08.org.debian:01:abc", "user alice", "mutual (target user tgt)"} {
		if !strings.Contains(show, want) {
			t.Errorf("volume show lacks %q:\n%s", want, show)
		}
	}
	if strings.Contains(show, "0123456789abcdef") {
		t.Error("volume show prints the CHAP secret")
	}
	var v adminapi.Volume
	if err := json.Unmarshal([]byte(d.mustCLI("volume", "show", "db", "-o", "json")), &v); err != nil {
		t.Fatal(err)
	}
	if v.Size != 64<<20 || v.BlockSize != 512 || len(v.NAA) != 32 || v.NAA[0] != '6' {
		t.Errorf("volume show json = %+v", v)
	}
	if out := d.mustCLI("session", "list"); !strings.Contains(out, "INITIATOR") {
		t.Errorf("session list:\n%s", out)
	}
	var ss []adminapi.Session
	if err := json.Unmarshal([]byte(d.mustCLI("session", "list", "--output", "json")), &ss); err != nil || len(ss) != 0 {
		t.Errorf("session list json: %v %v", ss, err)
	}
	if out := d.mustCLI("version"); !strings.Contains(out, "stave ") || !strings.Contains(out, "daemon ") {
		t.Errorf("version:\n%s", out)
	}

	// Volumes survive a restart with the same identity.
	d.stop()
	if _, err := os.Stat(d.sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind after stop: %v", err)
	}
	d.wantFail("is 'stave serve' running", "volume", "list")
	d.start()
	var v2 adminapi.Volume
	if err := json.Unmarshal([]byte(d.mustCLI("volume", "show", "db", "--output", "json")), &v2); err != nil {
		t.Fatal(err)
	}
	if v2.NAA != v.NAA || v2.Serial != v.Serial || v2.CHAPUser != "alice" || !slices.Equal(v2.ACL, v.ACL) || !v2.Exported {
		t.Errorf("after restart %+v, before %+v", v2, v)
	}

	// A volume whose backing file went missing is listed but not exported.
	d.stop()
	if err := os.Remove(filepath.Join(d.dir, "data", "volumes", "logs", "data")); err != nil {
		t.Fatal(err)
	}
	d.start()
	if out := d.mustCLI("volume", "show", "logs"); !strings.Contains(out, "NO: the daemon could not open") {
		t.Errorf("volume show of a broken volume:\n%s", out)
	}
	if !strings.Contains(d.log.String(), "volume not exported") {
		t.Error("no log line for the volume that failed to open")
	}

	d.mustCLI("volume", "delete", "logs")
	d.mustCLI("volume", "delete", "db")
	if got := names(d.volumes()); len(got) != 0 {
		t.Errorf("after delete: %v", got)
	}
	if _, err := os.Stat(filepath.Join(d.dir, "data", "volumes", "db")); !os.IsNotExist(err) {
		t.Errorf("volume dir still there: %v", err)
	}
	// Live export: a volume created now is served without a restart.
	d.mustCLI("volume", "create", "fresh", "--size", "1MiB")
	if got := names(d.volumes()); !slices.Equal(got, []string{"fresh"}) {
		t.Errorf("after create: %v", got)
	}
}

func TestServeFlagErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--portal", "127.0.0.1:0", "--advertise", "a:1", "--advertise", "b:2"}, "at most one --advertise per --portal"},
		{[]string{"--portal", "nohost"}, "HOST:PORT"},
		{[]string{"--api", "tcp:1.2.3.4:5"}, "unix:PATH"},
		{[]string{"--log-level", "loud"}, "debug, info, warn or error"},
		{[]string{"--log-format", "xml"}, "text or json"},
		{[]string{"--discovery-chap", "u:short"}, "12 to 255"},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		args := append([]string{"stave", "serve", "--config", "/dev/null", "--data-dir", dir}, c.args...)
		code := run(context.Background(), args, &out, &errb)
		if code != 1 || !strings.Contains(errb.String(), c.want) {
			t.Errorf("%v: exit %d, stderr %q; want 1 and %q", c.args, code, errb.String(), c.want)
		}
	}
}

func TestDataDirLocked(t *testing.T) {
	d := newDaemon(t)
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"stave", "serve", "--config", "/dev/null", "--data-dir", filepath.Join(d.dir, "data"),
		"--portal", "127.0.0.1:0", "--api", "unix:" + filepath.Join(d.dir, "other.sock")}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "in use by another 'stave serve'") {
		t.Errorf("second serve on one data dir: exit %d, stderr %q", code, errb.String())
	}
	code = run(context.Background(), []string{"stave", "serve", "--config", "/dev/null", "--data-dir", filepath.Join(d.dir, "data2"),
		"--portal", "127.0.0.1:0", "--api", "unix:" + d.sock}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "socket in use") {
		t.Errorf("second serve on one socket: exit %d, stderr %q", code, errb.String())
	}
	// The first daemon still works.
	d.mustCLI("volume", "list")
}

func TestPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dir, err := os.MkdirTemp("", "stv")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code := run(ctx, []string{"stave", "serve", "--config", "/dev/null", "--data-dir", dir, "--portal", l.Addr().String(),
		"--api", "unix:" + filepath.Join(dir, "s.sock")}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "address already in use") {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
}
