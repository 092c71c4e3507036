package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"stave.dev/stave/internal/adminapi"
	"stave.dev/stave/internal/config"
)

const testAPIToken = "feedfacefeedfacefeedfacefeedface01"

// tcpAPIRE finds the TCP listener's address in serve's log.
var tcpAPIRE = regexp.MustCompile(`msg="admin API listening on TCP[^"]*" api=http://(\S+)`)

// TestServeHTTPListener starts serve with --http-listen and a token file
// and drives the CLI over TCP: with the token, without it, and /readyz.
func TestServeHTTPListener(t *testing.T) {
	dir, _ := configDir(t, "")
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte(testAPIToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	log, stop := serveUntilReady(t, "--config", "/dev/null", "--data-dir", filepath.Join(dir, "data"),
		"--portal", "127.0.0.1:0", "--advertise", "192.0.2.9:3260",
		"--http-listen", "127.0.0.1:0", "--http-token-file", tok)
	defer func() {
		if code := stop(); code != 0 {
			t.Errorf("serve exited with %d:\n%s", code, log)
		}
	}()
	m := tcpAPIRE.FindStringSubmatch(log.String())
	if m == nil {
		t.Fatalf("no TCP listener in the log:\n%s", log)
	}
	if !strings.Contains(log.String(), "plain HTTP") {
		t.Errorf("no warning about plain HTTP in the log:\n%s", log)
	}
	api := "http://" + m[1]
	cli := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		code := run(ctx, append([]string{"stave"}, args...), &out, &errb)
		return code, out.String(), errb.String()
	}
	if code, out, errs := cli("--api", api, "--api-token-file", tok, "volume", "create", "tcpvol", "--size", "1MiB",
		"--chap", "user:0123456789abc"); code != 0 {
		t.Fatalf("create over TCP: %d %s %s", code, out, errs)
	}
	code, out, errs := cli("--api", api, "--api-token-file", tok, "k8s", "secret", "tcpvol", "-o", "json")
	if code != 0 || !strings.Contains(out, "node.session.auth.password") {
		t.Errorf("k8s secret over TCP: %d %s %s", code, out, errs)
	}
	if code, _, errs := cli("--api", api, "volume", "list"); code != 1 || !strings.Contains(errs, "missing bearer token") {
		t.Errorf("no token: exit %d, stderr %q", code, errs)
	}
	cl, err := adminapi.NewClient(api)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	rd, err := cl.Ready(context.Background())
	if err != nil || rd.Status != "ready" || len(rd.Checks) != 4 || rd.Checks["etcd"] != "ok" { // volumes, portals, pool, etcd
		t.Errorf("readyz over TCP without a token: %+v %v", rd, err)
	}
	// The advertised portal reaches the API's connection info.
	code, out, _ = cli("--api", api, "--api-token-file", tok, "k8s", "pv", "tcpvol")
	if code != 0 || !strings.Contains(out, "targetPortal: 192.0.2.9:3260") {
		t.Errorf("k8s pv over TCP: %d\n%s", code, out)
	}
}

func TestServeHTTPListenerRefusals(t *testing.T) {
	dir, _ := configDir(t, "")
	loose := filepath.Join(dir, "loose")
	if err := os.WriteFile(loose, []byte(testAPIToken), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"world-readable token", []string{"--http-listen", "127.0.0.1:0", "--http-token-file", loose}, "chmod 600 " + loose},
		{"no auth", []string{"--http-listen", "127.0.0.1:0"}, "http.token_file: is empty while http.listen is set"},
		{"key without cert", []string{"--http-listen", "127.0.0.1:0", "--http-client-ca", "/ca.pem"}, "http.client_ca: needs TLS"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			args := append([]string{"stave", "serve", "--config", "/dev/null", "--data-dir", filepath.Join(dir, "data"),
				"--portal", "127.0.0.1:0"}, c.args...)
			if code := run(context.Background(), args, &out, &errb); code != 1 || !strings.Contains(errb.String(), c.want) {
				t.Errorf("exit %d, stderr %q; want 1 and %q", code, errb.String(), c.want)
			}
		})
	}
}

func TestAdvertisedPortals(t *testing.T) {
	cfg := config.Default()
	cfg.Portals = []config.Portal{
		{Listen: "127.0.0.1:0", Advertise: "192.0.2.1:3260"},
		{Listen: "[::]:3261"},
		{Listen: "10.0.0.1:3262"},
	}
	bound := []net.Addr{
		&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 40000},
		&net.TCPAddr{IP: net.IPv6unspecified, Port: 3261},
		&net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 3262},
	}
	got, _ := json.Marshal(advertisedPortals(cfg, bound))
	if string(got) != `["192.0.2.1:3260","10.0.0.1:3262"]` {
		t.Errorf("advertisedPortals = %s", got)
	}
}
