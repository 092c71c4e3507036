package packaging_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"stave.dev/stave/internal/config"
)

const (
	unitPath   = "systemd/stave.service"
	configFile = "/etc/stave/stave.yaml"
	binary     = "/usr/bin/stave"
)

// unit parses a systemd unit into section → key → values (in order).
func unit(t *testing.T) map[string]map[string][]string {
	t.Helper()
	f, err := os.Open(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := map[string]map[string][]string{}
	sec := ""
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			sec = strings.Trim(line, "[]")
			u[sec] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || sec == "" {
				t.Fatalf("%s: bad line %q", unitPath, line)
			}
			u[sec][k] = append(u[sec][k], v)
		}
	}
	return u
}

// TestSystemdVerify runs `systemd-analyze verify` on the unit, with
// ExecStart pointing at a stand-in binary (verify checks that it exists).
func TestSystemdVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (apt-get install systemd)")
	}
	dir := t.TempDir()
	stub := filepath.Join(dir, "stave")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "stave.service")
	if err := os.WriteFile(p, bytes.ReplaceAll(b, []byte(binary+" "), []byte(stub+" ")), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", p).CombinedOutput()
	// verify exits 0 after warnings such as "Unknown key": any output fails.
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unitPath, err, out)
	}
}

// TestUnitMatchesPackage checks the unit's paths against the package and
// the default configuration.
func TestUnitMatchesPackage(t *testing.T) {
	u := unit(t)
	svc := u["Service"]
	if got := svc["ExecStart"]; len(got) != 1 || got[0] != binary+" serve --config "+configFile {
		t.Errorf("ExecStart %q", got)
	}
	for k, want := range map[string]string{"Type": "notify", "Restart": "on-failure", "NoNewPrivileges": "yes",
		"ProtectSystem": "strict", "StateDirectory": "stave", "RuntimeDirectory": "stave"} {
		if got := svc[k]; len(got) != 1 || got[0] != want {
			t.Errorf("%s=%q, want %q", k, got, want)
		}
	}
	if svc["PrivateDevices"] != nil && svc["PrivateDevices"][0] != "no" {
		t.Error("PrivateDevices hides the pool's raw block devices")
	}
	if !slices.Contains(svc["DeviceAllow"], "block-* rw") {
		t.Errorf("DeviceAllow %q: the pool needs block devices read-write", svc["DeviceAllow"])
	}
	if len(svc["LimitNOFILE"]) != 1 {
		t.Error("no LimitNOFILE")
	}
	rw := strings.Fields(strings.Join(svc["ReadWritePaths"], " "))

	c, err := config.LoadFile("stave.yaml", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Finish(); err != nil {
		t.Fatal(err)
	}
	for what, p := range map[string]string{"data_dir": c.DataDir, "api socket": c.SocketPath()} {
		if !slices.ContainsFunc(rw, func(d string) bool { return p == d || strings.HasPrefix(p, d+"/") }) {
			t.Errorf("stave.yaml %s %s is not under ReadWritePaths %q", what, p, rw)
		}
	}

	// The package installs what the unit runs and reads.
	n := nfpm(t)
	dsts := map[string]nfpmContent{}
	for _, ct := range n.Contents {
		dsts[ct.Dst] = ct
		if ct.Src != "" {
			if _, err := os.Stat(filepath.Join("..", ct.Src)); err != nil {
				if ct.Src == "${STAVE_BIN}" {
					continue // built by `make package`, which sets $STAVE_BIN
				}
				t.Errorf("nfpm.yaml src %s: %v", ct.Src, err)
			}
		}
	}
	for dst, src := range map[string]string{binary: "${STAVE_BIN}", configFile: "packaging/stave.yaml",
		"/usr/lib/systemd/system/stave.service": "packaging/" + unitPath} {
		if dsts[dst].Src != src {
			t.Errorf("nfpm.yaml installs %q as %s, want %s", dsts[dst].Src, dst, src)
		}
	}
	if dsts[configFile].Type != "config|noreplace" {
		t.Errorf("%s is type %q: make it a conffile (config|noreplace)", configFile, dsts[configFile].Type)
	}
	for _, s := range []string{n.Scripts.PostInstall, n.Scripts.PreRemove, n.Scripts.PostRemove} {
		if s == "" {
			t.Error("nfpm.yaml lacks a maintainer script")
			continue
		}
		fi, err := os.Stat(filepath.Join("..", s))
		if err != nil {
			t.Error(err)
			continue
		}
		if fi.Mode()&0o111 == 0 {
			t.Errorf("%s is not executable", s)
		}
		if out, err := exec.Command("sh", "-n", filepath.Join("..", s)).CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v\n%s", s, err, out)
		}
	}
	b, err := os.ReadFile("scripts/postinst")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), c.DataDir) {
		t.Errorf("postinst does not create %s", c.DataDir)
	}
}

type nfpmContent struct {
	Src, Dst, Type string
}

type nfpmConfig struct {
	Name     string
	Contents []nfpmContent
	Scripts  struct {
		PostInstall string `yaml:"postinstall"`
		PreRemove   string `yaml:"preremove"`
		PostRemove  string `yaml:"postremove"`
	}
}

func nfpm(t *testing.T) nfpmConfig {
	t.Helper()
	b, err := os.ReadFile("nfpm.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var n nfpmConfig
	if err := yaml.Unmarshal(b, &n); err != nil {
		t.Fatalf("nfpm.yaml: %v", err)
	}
	if n.Name != "stave" {
		t.Errorf("nfpm.yaml name %q", n.Name)
	}
	return n
}

// docs decodes every YAML document of a file.
func docs(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	dec := yaml.NewDecoder(f)
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, d)
	}
}

// get walks a decoded YAML tree: keys for maps, ints for lists.
func get(t *testing.T, v any, path ...any) any {
	t.Helper()
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("at %q: not a mapping: %v", k, v)
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				t.Fatalf("at [%d]: not a list that long: %v", k, v)
			}
			v = l[k]
		}
	}
	return v
}

func TestKubernetesManifests(t *testing.T) {
	byKind := map[string]map[string]any{}
	for _, d := range docs(t, "kubernetes/daemonset.yaml") {
		if d["apiVersion"] == nil || d["kind"] == nil || get(t, d, "metadata", "name") == nil {
			t.Errorf("object without apiVersion, kind or name: %v", d)
			continue
		}
		byKind[d["kind"].(string)] = d
	}
	cm, ds := byKind["ConfigMap"], byKind["DaemonSet"]
	if cm == nil || ds == nil {
		t.Fatalf("want a ConfigMap and a DaemonSet, got %v", byKind)
	}
	text, _ := get(t, cm, "data", "stave.yaml").(string)
	c, err := config.Load("ConfigMap stave.yaml", strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Finish(); err != nil {
		t.Fatal(err)
	}
	pod := get(t, ds, "spec", "template", "spec")
	if get(t, pod, "hostNetwork") != true {
		t.Error("DaemonSet pods need hostNetwork: initiators connect to the node's address")
	}
	ctr := get(t, pod, "containers", 0)
	if get(t, ctr, "securityContext", "privileged") != true {
		t.Error("the container must be privileged to open the node's block devices")
	}
	args, _ := get(t, ctr, "args").([]any)
	if !slices.Equal(args, []any{"serve", "--config", configFile}) {
		t.Errorf("args %v", args)
	}
	// Startup and readiness follow the daemon's /readyz (`stave health
	// --ready`), liveness its /healthz (`stave health`), through the
	// configured API socket. cmd/stave's TestHealthAgainstDaemon runs
	// these commands against a daemon.
	for kind, ready := range map[string]bool{"startupProbe": true, "readinessProbe": true, "livenessProbe": false} {
		if get(t, ctr, kind) == nil {
			t.Errorf("no %s", kind)
			continue
		}
		probe, _ := get(t, ctr, kind, "exec", "command").([]any)
		var args []string
		for _, a := range probe {
			s, _ := a.(string)
			args = append(args, s)
		}
		i := slices.Index(args, "--api")
		if len(args) < 2 || args[0] != binary || i < 0 || i+1 >= len(args) || args[i+1] != c.API {
			t.Errorf("%s %q: want %s --api %s health ...", kind, args, binary, c.API)
		}
		if !slices.Contains(args, "health") || slices.Contains(args, "--ready") != ready {
			t.Errorf("%s %q: want `stave health` with --ready %v (/readyz for startup and readiness, /healthz for liveness)",
				kind, args, ready)
		}
	}
	mounts := map[string]string{} // mountPath → volume
	for _, m := range get(t, ctr, "volumeMounts").([]any) {
		mounts[get(t, m, "mountPath").(string)] = get(t, m, "name").(string)
	}
	hostPaths, configMaps := map[string]string{}, map[string]string{}
	for _, v := range get(t, pod, "volumes").([]any) {
		name := get(t, v, "name").(string)
		if hp, ok := v.(map[string]any)["hostPath"]; ok {
			hostPaths[name] = get(t, hp, "path").(string)
		}
		if cmv, ok := v.(map[string]any)["configMap"]; ok {
			configMaps[name] = get(t, cmv, "name").(string)
		}
	}
	for mount, host := range map[string]string{c.DataDir: "/var/lib/stave", "/dev": "/dev"} {
		if hostPaths[mounts[mount]] != host {
			t.Errorf("%s is not the node's %s (mounts %v, hostPaths %v)", mount, host, mounts, hostPaths)
		}
	}
	if configMaps[mounts[filepath.Dir(configFile)]] != get(t, cm, "metadata", "name") {
		t.Errorf("%s is not the ConfigMap", filepath.Dir(configFile))
	}
	if mounts[filepath.Dir(c.SocketPath())] == "" {
		t.Errorf("the API socket's directory %s is not a volume", filepath.Dir(c.SocketPath()))
	}
}

// TestContainerfile checks what can be checked without a container
// engine: every COPY source from the build context exists, and the image
// runs the same command as the unit.
func TestContainerfile(t *testing.T) {
	b, err := os.ReadFile("Containerfile")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	copyRe := regexp.MustCompile(`(?m)^COPY\s+(.*)$`)
	for _, m := range copyRe.FindAllStringSubmatch(text, -1) {
		f := strings.Fields(m[1])
		if strings.HasPrefix(f[0], "--from=") {
			continue
		}
		for _, src := range f[:len(f)-1] {
			if _, err := os.Stat(filepath.Join("..", src)); err != nil {
				t.Errorf("COPY %s: %v", src, err)
			}
		}
	}
	for _, want := range []string{
		"FROM docker.io/library/debian:bookworm-slim",
		"CGO_ENABLED=0",
		"./cmd/stave",
		`ENTRYPOINT ["/usr/bin/stave"]`,
		`CMD ["serve", "--config", "/etc/stave/stave.yaml"]`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("Containerfile lacks %q", want)
		}
	}
	if _, err := os.Stat("../cmd/stave"); err != nil {
		t.Error(err)
	}
}
