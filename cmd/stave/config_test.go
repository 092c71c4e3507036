package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// configDir returns a short temporary directory (unix socket paths are
// limited to 108 bytes) holding stave.yaml with the given text.
func configDir(t *testing.T, yaml string) (dir, file string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "stv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	file = filepath.Join(dir, "stave.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, file
}

// serveUntilReady runs `stave serve` with args in-process until it is
// ready, and returns its log and a stop function that cancels it and
// returns its exit status.
func serveUntilReady(t *testing.T, args ...string) (log *syncBuffer, stop func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log = &syncBuffer{}
	ready := make(chan struct{})
	done := make(chan int, 1)
	app := newApp(log, log)
	app.Metadata = map[string]any{readyKey: func() { close(ready) }}
	go func() { done <- runApp(ctx, app, append([]string{"stave", "serve"}, args...)) }()
	stop = func() int {
		cancel()
		select {
		case code := <-done:
			return code
		case <-time.After(20 * time.Second):
			t.Fatal("serve did not stop within 20s of cancel")
			return -1
		}
	}
	select {
	case code := <-done:
		cancel()
		t.Fatalf("serve exited with %d during start-up:\n%s", code, log)
	case <-ready:
	case <-time.After(20 * time.Second):
		stop()
		t.Fatalf("serve not ready after 20s:\n%s", log)
	}
	return log, stop
}

func TestServeConfigFile(t *testing.T) {
	dir, file := configDir(t, "")
	data := filepath.Join(dir, "filedata")
	sock := filepath.Join(dir, "api.sock")
	if err := os.WriteFile(file, []byte("data_dir: "+data+"\n"+
		"portals:\n  - listen: 127.0.0.1:0\n"+
		"api: unix:"+sock+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	log, stop := serveUntilReady(t, "--config", file)
	m := portalRE.FindStringSubmatch(log.String())
	if m == nil || !strings.HasPrefix(m[1], "127.0.0.1:") {
		t.Errorf("serve not listening on the file's portal 127.0.0.1:0:\n%s", log)
	}
	if _, err := os.Stat(filepath.Join(data, "lock")); err != nil {
		t.Errorf("the file's data_dir is not used: %v", err)
	}
	if c, err := net.Dial("unix", sock); err != nil {
		t.Errorf("the file's api socket: %v", err)
	} else {
		c.Close()
	}
	if code := stop(); code != 0 {
		t.Errorf("serve exited with %d:\n%s", code, log)
	}
}

func TestServeFlagOverridesFile(t *testing.T) {
	dir, file := configDir(t, "")
	sock := filepath.Join(dir, "api.sock")
	if err := os.WriteFile(file, []byte("data_dir: "+filepath.Join(dir, "filedata")+"\n"+
		"portals:\n  - listen: 127.0.0.1:0\n"+
		"api: unix:"+sock+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	flagData := filepath.Join(dir, "flagdata")
	_, stop := serveUntilReady(t, "--config", file, "--data-dir", flagData)
	defer stop()
	if _, err := os.Stat(filepath.Join(flagData, "lock")); err != nil {
		t.Errorf("--data-dir does not override the file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "filedata")); !os.IsNotExist(err) {
		t.Errorf("the file's data_dir is used despite --data-dir: %v", err)
	}
}

func TestServePrintConfig(t *testing.T) {
	_, file := configDir(t, "data_dir: /srv/stave\n"+
		"portals:\n  - listen: 192.0.2.1:3260\n"+
		"discovery_chap:\n  user: disc\n  secret: verysecret123\n"+
		"iscsi:\n  queue_depth: 64\n")
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"stave", "serve", "--config", file, "--print-config",
		"--queue-depth", "32", "--log-format", "json"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	got := out.String()
	for _, want := range []string{
		"data_dir: /srv/stave\n",
		"listen: 192.0.2.1:3260\n",
		"api: unix:/srv/stave/stave.sock\n", // derived from data_dir
		"queue_depth: 32\n",                 // flag over file
		"format: json\n",                    // flag over default
		"secret: <redacted>\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("--print-config output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "verysecret123") {
		t.Errorf("--print-config shows the CHAP secret:\n%s", got)
	}
}

func TestServeConfigErrors(t *testing.T) {
	dir, file := configDir(t, "data_dir: /tmp/x\nportls: []\n")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown key", []string{"--config", file}, file + `:2: unknown key "portls"`},
		{"missing explicit file", []string{"--config", filepath.Join(dir, "nope.yaml")}, "no such file"},
		{"http listener", []string{"--config", "/dev/null", "--data-dir", dir,
			"--http-listen", "127.0.0.1:0", "--http-token-file", filepath.Join(dir, "no-token")}, "token file: stat"},
		{"http listener without auth", []string{"--config", "/dev/null", "--data-dir", dir,
			"--http-listen", "127.0.0.1:0"}, "http.token_file: is empty while http.listen is set"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(context.Background(), append([]string{"stave", "serve"}, c.args...), &out, &errb)
			if code != 1 || !strings.Contains(errb.String(), c.want) {
				t.Errorf("exit %d, stderr %q; want 1 and %q", code, errb.String(), c.want)
			}
		})
	}
}

// TestServeNotify checks the sd_notify(3) protocol: READY=1 once serving,
// STOPPING=1 on shutdown, to the datagram socket in $NOTIFY_SOCKET.
func TestServeNotify(t *testing.T) {
	dir, _ := configDir(t, "")
	ns := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: ns, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", ns)
	_, stop := serveUntilReady(t, "--config", "/dev/null", "--data-dir", filepath.Join(dir, "data"),
		"--portal", "127.0.0.1:0", "--api", "unix:"+filepath.Join(dir, "api.sock"))
	read := func() string {
		t.Helper()
		buf := make([]byte, 4096)
		_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}
	msg := read()
	lines := strings.Split(msg, "\n")
	if lines[0] != "READY=1" || len(lines) != 2 || !strings.HasPrefix(lines[1], "STATUS=serving on 127.0.0.1:") {
		t.Errorf("ready notification %q; want READY=1 and STATUS=serving on 127.0.0.1:PORT", msg)
	}
	if code := stop(); code != 0 {
		t.Errorf("serve exited with %d", code)
	}
	if msg := read(); !strings.HasPrefix(msg, "STOPPING=1") {
		t.Errorf("stop notification %q; want STOPPING=1", msg)
	}
}
