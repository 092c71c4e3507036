package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"stave.dev/stave/internal/adminapi"
)

// TestHealthAgainstDaemon runs `stave health` and `stave health --ready`
// against an in-process daemon, then the probe commands of the
// DaemonSet (packaging/kubernetes/daemonset.yaml) with its socket.
func TestHealthAgainstDaemon(t *testing.T) {
	d := newDaemon(t)
	d.mustCLI("volume", "create", "hv", "--size", "1MiB")

	if out := d.mustCLI("health"); !strings.HasPrefix(out, "ok (version ") {
		t.Errorf("health: %q", out)
	}
	var h adminapi.Health
	if out := d.mustCLI("health", "-o", "json"); json.Unmarshal([]byte(out), &h) != nil || h.Status != "ok" || h.Version == "" {
		t.Errorf("health -o json: %q", out)
	}

	out := d.mustCLI("health", "--ready")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := []string{"CHECK", "etcd", "pool", "portals", "volumes", "ready"}
	if len(lines) != len(want) {
		t.Fatalf("health --ready: %d lines, want %d:\n%s", len(lines), len(want), out)
	}
	for i, l := range lines {
		f := strings.Fields(l)
		switch {
		case f[0] != want[i]:
			t.Errorf("health --ready line %d %q, want it to start with %q", i, l, want[i])
		case i > 0 && i < len(lines)-1 && (len(f) != 2 || f[1] != "ok"):
			t.Errorf("health --ready: check %q not ok", l)
		}
	}
	var rd adminapi.Readiness
	if out := d.mustCLI("health", "--ready", "-o", "json"); json.Unmarshal([]byte(out), &rd) != nil || rd.Status != "ready" ||
		len(rd.Checks) != 4 || rd.Checks["volumes"] != "ok" {
		t.Errorf("health --ready -o json: %q", out)
	}

	d.wantFail("health takes no arguments", "health", "extra")
	d.wantFail("--timeout -1s: give a positive duration", "health", "--timeout", "-1s")

	// The DaemonSet's probes, with the test daemon's socket for the
	// node's, all succeed against a ready daemon.
	probes := daemonSetProbes(t)
	for _, kind := range []string{"startupProbe", "readinessProbe", "livenessProbe"} {
		cmd := probes[kind]
		if len(cmd) < 2 || cmd[0] != "/usr/bin/stave" {
			t.Errorf("%s runs %q, want /usr/bin/stave ...", kind, cmd)
			continue
		}
		args := slices.Clone(cmd)
		args[0] = "stave"
		i := slices.Index(args, "--api")
		if i < 0 || i+1 >= len(args) {
			t.Errorf("%s %q does not give --api", kind, cmd)
			continue
		}
		args[i+1] = "unix:" + d.sock
		var stdout, stderr bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		code := run(ctx, args, &stdout, &stderr)
		cancel()
		if code != 0 {
			t.Errorf("%s %q: exit %d: %s%s", kind, cmd, code, stdout.String(), stderr.String())
		}
	}
	if !slices.Contains(probes["readinessProbe"], "--ready") || !slices.Contains(probes["startupProbe"], "--ready") ||
		slices.Contains(probes["livenessProbe"], "--ready") {
		t.Errorf("probes %q: readiness and startup must ask /readyz (health --ready), liveness /healthz (health)", probes)
	}

	// A stopped daemon: no answer is a failure that says where it looked.
	d.stop()
	d.wantFail("cannot reach the daemon", "health", "--ready")
	d.wantFail("cannot reach the daemon", "health")
}

// daemonSetProbes returns the exec command of each probe of the stave
// container in packaging/kubernetes/daemonset.yaml.
func daemonSetProbes(t *testing.T) map[string][]string {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "packaging", "kubernetes", "daemonset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type probe struct {
		Exec struct {
			Command []string `yaml:"command"`
		} `yaml:"exec"`
	}
	type container struct {
		Name           string `yaml:"name"`
		StartupProbe   *probe `yaml:"startupProbe"`
		ReadinessProbe *probe `yaml:"readinessProbe"`
		LivenessProbe  *probe `yaml:"livenessProbe"`
	}
	dec := yaml.NewDecoder(f)
	for {
		var doc struct {
			Kind string `yaml:"kind"`
			Spec struct {
				Template struct {
					Spec struct {
						Containers []container `yaml:"containers"`
					} `yaml:"spec"`
				} `yaml:"template"`
			} `yaml:"spec"`
		}
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			t.Fatal("daemonset.yaml has no DaemonSet")
		}
		if err != nil {
			t.Fatal(err)
		}
		if doc.Kind != "DaemonSet" {
			continue
		}
		for _, c := range doc.Spec.Template.Spec.Containers {
			if c.Name != "stave" {
				continue
			}
			out := map[string][]string{}
			for kind, p := range map[string]*probe{"startupProbe": c.StartupProbe, "readinessProbe": c.ReadinessProbe,
				"livenessProbe": c.LivenessProbe} {
				if p != nil {
					out[kind] = p.Exec.Command
				}
			}
			return out
		}
		t.Fatal("the DaemonSet has no container named stave")
	}
}

// TestHealthNotReady runs `stave health --ready` against a stand-in API
// whose /readyz answers 503 as a daemon that is not ready does: the
// failing checks are printed and the exit status is 1.
func TestHealthNotReady(t *testing.T) {
	dir, err := os.MkdirTemp("", "stv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	notReady := adminapi.Readiness{Status: "not ready",
		Error: "not ready: etcd: no etcd leader; portals: 1 of 2 iSCSI portals are listening: see the daemon log",
		Checks: map[string]string{"etcd": "no etcd leader", "pool": "ok",
			"portals": "1 of 2 iSCSI portals are listening: see the daemon log", "volumes": "ok"}}
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(notReady)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = io.WriteString(w, `{"error":"stand-in failure"}`)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		<-served
	})

	cli := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		code := run(ctx, append([]string{"stave", "--api", "unix:" + sock}, args...), &out, &errb)
		return code, out.String(), errb.String()
	}
	code, out, errs := cli("health", "--ready")
	if code != 1 || errs != "stave: "+notReady.Error+"\n" {
		t.Errorf("health --ready: exit %d, stderr %q; want 1 and %q", code, errs, "stave: "+notReady.Error)
	}
	for _, l := range []string{"etcd     no etcd leader", "pool     ok", "portals  1 of 2 iSCSI portals", "not ready"} {
		if !strings.Contains(out, l) {
			t.Errorf("health --ready output lacks %q:\n%s", l, out)
		}
	}
	code, out, _ = cli("health", "--ready", "-o", "json")
	var rd adminapi.Readiness
	if code != 1 || json.Unmarshal([]byte(out), &rd) != nil || rd.Status != "not ready" || len(rd.Checks) != 4 {
		t.Errorf("health --ready -o json: exit %d, stdout %q", code, out)
	}
	if code, _, errs := cli("health"); code != 1 || !strings.Contains(errs, "stand-in failure") {
		t.Errorf("health against a failing /healthz: exit %d, stderr %q", code, errs)
	}
}
