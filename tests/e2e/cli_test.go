package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// cliToken is the bearer token of the daemon's TCP API in the CLI test.
const cliToken = "c11c11c11c11c11c11c11c11c11c11c11c11c11c"

// cliResult is one run of the stave binary.
type cliResult struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r cliResult) String() string {
	return fmt.Sprintf("stave %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// runCLI runs the stave binary with args (no --api added) and keeps its
// standard output and error apart.
func runCLI(t *testing.T, bin string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := cliResult{args: args, stdout: out.String(), stderr: errb.String()}
	if ctx.Err() != nil {
		t.Fatalf("stave %s: timed out after %v", strings.Join(args, " "), cliTimeout)
	}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("stave %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// cliEnv drives one daemon through the binary.
type cliEnv struct {
	t   *testing.T
	d   *daemon
	api []string // --api and its credentials
}

// run runs a client verb against the daemon.
func (e *cliEnv) run(args ...string) cliResult {
	e.t.Helper()
	return runCLI(e.t, e.d.bin, append(append([]string{}, e.api...), args...)...)
}

// ok runs a verb that must succeed with an empty stderr and returns stdout.
func (e *cliEnv) ok(args ...string) string {
	e.t.Helper()
	r := e.run(args...)
	if r.code != 0 || r.stderr != "" {
		e.t.Fatalf("want success and no stderr: %v", r)
	}
	return r.stdout
}

// okOrPending is ok for a verb whose feature package pool may not have yet
// (snapshots, clones): then it must fail with the CLI's clear message, and
// okOrPending returns false.
func (e *cliEnv) okOrPending(args ...string) (string, bool) {
	e.t.Helper()
	r := e.run(args...)
	if r.code != 0 && strings.Contains(r.stderr, "not implemented") {
		if r.code != 1 || !strings.HasPrefix(r.stderr, "stave: ") || !strings.Contains(r.stderr, "the pool does not do this yet") {
			e.t.Errorf("pending pool feature without a clear message: %v", r)
		}
		e.t.Logf("pending in package pool: stave %s: %s", strings.Join(args, " "), strings.TrimSpace(r.stderr))
		return "", false
	}
	if r.code != 0 || r.stderr != "" {
		e.t.Fatalf("want success: %v", r)
	}
	return r.stdout, true
}

// json runs a verb with --output json and decodes its output into v.
func (e *cliEnv) json(v any, args ...string) {
	e.t.Helper()
	out := e.ok(append(args, "--output", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		e.t.Fatalf("stave %s --output json: not JSON: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// state is what a refused command must not change: the volumes (name,
// size, block size, backend, ACL, CHAP users), the snapshots and the
// pool's devices. It reads them through the unix socket.
func (e *cliEnv) state() string {
	e.t.Helper()
	if len(e.api) != 2 || e.api[1] != "unix:"+e.d.Socket() {
		return (&cliEnv{t: e.t, d: e.d, api: []string{"--api", "unix:" + e.d.Socket()}}).state()
	}
	var vols []map[string]any
	e.json(&vols, "volume", "list")
	var b strings.Builder
	for _, v := range vols {
		fmt.Fprintf(&b, "volume %v size=%v bs=%v backend=%v policy=%v acl=%v chap=%v/%v\n", v["name"], v["size"], v["block_size"],
			v["backend"], v["policy"], v["acl"], v["chap_user"], v["mutual_chap_user"])
	}
	if r := e.run("snapshot", "list", "-o", "json"); r.code == 0 {
		b.WriteString("snapshots " + strings.Join(strings.Fields(r.stdout), " ") + "\n")
	}
	if r := e.run("pool", "status", "-o", "json"); r.code == 0 {
		var st struct {
			Devices []struct{ Path string } `json:"devices"`
			Volumes int                     `json:"volumes"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
			e.t.Fatalf("pool status -o json: %v", err)
		}
		fmt.Fprintf(&b, "pool %+v\n", st)
	}
	return b.String()
}

// refused runs a verb that must fail cleanly: exit 1, nothing on stdout,
// one line "stave: ..." on stderr that contains want, and no change.
func (e *cliEnv) refused(want string, args ...string) {
	e.t.Helper()
	before := e.state()
	r := e.run(args...)
	if r.code != 1 || r.stdout != "" || !strings.HasPrefix(r.stderr, "stave: ") ||
		strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, want) {
		e.t.Errorf("want exit 1, empty stdout and one stderr line \"stave: ...%s...\": %v", want, r)
	}
	if after := e.state(); after != before {
		e.t.Errorf("stave %s changed the state:\nbefore:\n%s\nafter:\n%s", strings.Join(args, " "), before, after)
	}
}

// contains fails the test unless out holds every one of wants.
func contains(t *testing.T, what, out string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, out)
		}
	}
}

// TestCLIEveryVerb drives every verb of the stave binary against a live
// daemon, in table and JSON output, over the unix socket and the TCP API
// with a token, and checks what each prints; then feeds it mistakes
// (wrong size unit, duplicate name, unknown volume, bad IQN, short CHAP
// secret, …) and checks each gives one clear error line, exit status 1,
// and changes nothing.
func TestCLIEveryVerb(t *testing.T) {
	requireE2E(t)
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte(cliToken), 0o600); err != nil {
		t.Fatal(err)
	}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	d := startDaemon(t, "--discovery-chap", "disc-user:discovery-secret-7", "--http-listen", httpAddr, "--http-token-file", tok)
	e := &cliEnv{t: t, d: d, api: []string{"--api", "unix:" + d.Socket()}}
	portal := fmt.Sprintf("%s:%d", guestHostAlias, d.Port())

	t.Run("version", func(t *testing.T) {
		contains(t, "version", e.ok("version"), "stave ", "daemon ")
		var v map[string]string
		e.json(&v, "version")
		if v["client"] == "" || v["daemon"] == "" {
			t.Errorf("version -o json = %v", v)
		}
	})

	t.Run("help", func(t *testing.T) {
		out := runCLI(t, d.bin, "--help").stdout
		contains(t, "stave --help", out, "serve", "volume", "snapshot", "pool", "session", "k8s", "completion", "version",
			"--api", "--api-token-file", "--api-cert", "--api-key", "--api-ca", "--output")
		out = runCLI(t, d.bin, "volume", "--help").stdout
		contains(t, "stave volume --help", out, "create", "list", "show", "delete", "resize", "clone", "revert")
		out = runCLI(t, d.bin, "serve", "--help").stdout
		contains(t, "stave serve --help", out, "--http-listen", "--http-token-file", "--http-tls-cert", "--http-client-ca")
	})

	t.Run("completion", func(t *testing.T) {
		contains(t, "completion bash", e.ok("completion", "bash"), "complete -o bashdefault -o default -F _stave_complete stave")
		contains(t, "top-level completion", runCLI(t, d.bin, "--generate-bash-completion").stdout, "volume", "pool", "k8s")
		contains(t, "volume completion", runCLI(t, d.bin, "volume", "--generate-bash-completion").stdout, "create", "resize")
		contains(t, "flag completion", runCLI(t, d.bin, "volume", "create", "-", "--generate-bash-completion").stdout, "--size", "--chap")
		e.refused("only bash", "completion", "fish")
	})

	t.Run("volumes", func(t *testing.T) {
		out := e.ok("volume", "create", "a", "--size", "64MiB")
		contains(t, "volume create a", out, "created volume a (64 MiB, in a sparse file), target iqn.2026-11.dev.stave:a LUN 0")
		var b map[string]any
		e.json(&b, "volume", "create", "b", "--size", "32MiB", "--block-size", "4096", "--allow", "iqn.1993-08.org.debian:01:abc",
			"--allow", "eui.0123456789ABCDEF", "--chap", "bee-user:bee-secret-0123", "--mutual-chap", "bee-target:bee-target-4567")
		if b["name"] != "b" || b["size"] != float64(32<<20) || b["block_size"] != float64(4096) || b["chap_user"] != "bee-user" ||
			b["mutual_chap_user"] != "bee-target" || b["target"] != "iqn.2026-11.dev.stave:b" {
			t.Errorf("volume create -o json = %v", b)
		}
		if strings.Contains(fmt.Sprint(b), "bee-secret") {
			t.Errorf("volume create -o json shows the CHAP secret: %v", b)
		}
		contains(t, "volume list", e.ok("volume", "list"), "NAME", "SIZE", "BACKEND", "TARGET", "64 MiB", "32 MiB",
			"iqn.2026-11.dev.stave:a", "iqn.2026-11.dev.stave:b")
		var vs []map[string]any
		e.json(&vs, "volume", "list")
		if len(vs) != 2 || vs[0]["name"] != "a" || vs[1]["name"] != "b" || vs[0]["exported"] != true {
			t.Errorf("volume list -o json = %v", vs)
		}
		show := e.ok("volume", "show", "b")
		contains(t, "volume show b", show, "Target:", "iqn.2026-11.dev.stave:b", "Block size:", "4096",
			"iqn.1993-08.org.debian:01:abc", "user bee-user", "mutual (target user bee-target)", "Exported:", "yes")
		if strings.Contains(show, "bee-secret") {
			t.Error("volume show prints the CHAP secret")
		}
		var one map[string]any
		e.json(&one, "volume", "show", "a")
		if one["name"] != "a" || one["lun"] != float64(0) || len(one["naa"].(string)) != 32 {
			t.Errorf("volume show -o json = %v", one)
		}
		contains(t, "volume resize", e.ok("volume", "resize", "a", "--size", "128MiB"), "resized volume a to 128 MiB")
		e.json(&one, "volume", "resize", "a", "--size", "256MiB")
		if one["size"] != float64(256<<20) {
			t.Errorf("volume resize -o json = %v", one)
		}
		// Flags after the name, and the ls alias.
		contains(t, "volume ls", e.ok("volume", "ls"), "256 MiB")
	})

	t.Run("sessions", func(t *testing.T) {
		contains(t, "session list", e.ok("session", "list"), "INITIATOR", "TARGET", "PORTAL", "PARAMETERS")
		var ss []any
		e.json(&ss, "session", "list")
		if len(ss) != 0 {
			t.Errorf("session list -o json = %v", ss)
		}
	})

	t.Run("k8s", func(t *testing.T) {
		pv := e.ok("k8s", "pv", "b", "--fs", "xfs")
		contains(t, "k8s pv b", pv, "kind: PersistentVolume", "name: stave-b", "storage: 32Mi", "targetPortal: "+portal,
			"iqn: iqn.2026-11.dev.stave:b", "lun: 0", "fsType: xfs", "readOnly: false", "chapAuthDiscovery: true",
			"chapAuthSession: true", "secretRef:", "name: stave-b-chap", "namespace: default")
		var pvj map[string]any
		e.json(&pvj, "k8s", "pv", "a", "--name", "pv-a", "--capacity", "100MiB")
		if pvj["kind"] != "PersistentVolume" || fmt.Sprint(pvj["spec"]) == "" || !strings.Contains(fmt.Sprint(pvj), "storage:100Mi") ||
			!strings.Contains(fmt.Sprint(pvj), "chapAuthDiscovery:true") || strings.Contains(fmt.Sprint(pvj), "chapAuthSession") {
			t.Errorf("k8s pv a -o json = %v", pvj)
		}
		sec := e.ok("k8s", "secret", "b", "--namespace", "apps")
		contains(t, "k8s secret b", sec, "kind: Secret", "type: kubernetes.io/iscsi-chap", "namespace: apps",
			"node.session.auth.username:", "node.session.auth.password:", "node.session.auth.username_in:",
			"node.session.auth.password_in:", "discovery.sendtargets.auth.username:", "discovery.sendtargets.auth.password:")
		var secj struct {
			Data map[string]string `json:"data"`
		}
		e.json(&secj, "k8s", "secret", "a")
		if len(secj.Data) != 2 || secj.Data["discovery.sendtargets.auth.password"] == "" {
			t.Errorf("k8s secret a (discovery CHAP only) = %v", secj.Data)
		}
	})

	t.Run("tcp-api", func(t *testing.T) {
		tcp := &cliEnv{t: t, d: d, api: []string{"--api", "http://" + httpAddr, "--api-token-file", tok}}
		if a, b := tcp.ok("volume", "list", "-o", "json"), e.ok("volume", "list", "-o", "json"); a != b {
			t.Errorf("volume list over TCP differs from the socket's:\n%s\n%s", a, b)
		}
		contains(t, "k8s secret over TCP", tcp.ok("k8s", "secret", "b"), "node.session.auth.password:")
		anon := &cliEnv{t: t, d: d, api: []string{"--api", "http://" + httpAddr}}
		anon.refused("missing bearer token", "volume", "list")
		anon.refused("missing bearer token", "k8s", "secret", "b")
		bad := filepath.Join(dir, "bad-token")
		if err := os.WriteFile(bad, []byte(strings.Repeat("x", 40)), 0o600); err != nil {
			t.Fatal(err)
		}
		wrong := &cliEnv{t: t, d: d, api: []string{"--api", "http://" + httpAddr, "--api-token-file", bad}}
		wrong.refused("wrong bearer token", "volume", "create", "tcpx", "--size", "1MiB")
	})

	devs := sparseFiles(t, dir, 5, 256<<20)
	t.Run("pool", func(t *testing.T) {
		e.refused("no pool yet", "pool", "status")
		out := e.ok("pool", "create", "--device", devs[0], "--device", devs[1], "--device", devs[2], "--segment-size", "4MiB")
		contains(t, "pool create", out, "created pool", "on 3 device(s)")
		contains(t, "pool status", e.ok("pool", "status"), "DEVICE", "STATE", "CHECKSUM ERR", "REPAIRS", devs[2], "Space: logical")
		var st map[string]any
		e.json(&st, "pool", "status")
		if st["state"] != "ok" || len(st["devices"].([]any)) != 3 {
			t.Errorf("pool status -o json = %v", st)
		}
		contains(t, "volume create in the pool", e.ok("volume", "create", "p", "--size", "16MiB"), "in the pool, policy 2+1")
		contains(t, "pool add-device", e.ok("pool", "add-device", devs[3]), "4 device(s)")
		contains(t, "pool scrub", e.ok("pool", "scrub"), "scrub done")
		var op map[string]any
		e.json(&op, "pool", "scrub")
		if op["state"] != "done" {
			t.Errorf("pool scrub -o json = %v", op)
		}
		contains(t, "pool replace-device", e.ok("pool", "replace-device", devs[1], devs[4]), "replaced "+devs[1]+" with "+devs[4])
	})

	t.Run("snapshots", func(t *testing.T) {
		if _, ok := e.okOrPending("snapshot", "create", "p", "s1"); !ok {
			return
		}
		contains(t, "snapshot list", e.ok("snapshot", "list", "p"), "VOLUME", "SNAPSHOT", "s1")
		var ss []map[string]any
		e.json(&ss, "snapshot", "list")
		if len(ss) != 1 || ss[0]["name"] != "s1" {
			t.Errorf("snapshot list -o json = %v", ss)
		}
		e.refused("already", "snapshot", "create", "p@s1")
		if out, ok := e.okOrPending("volume", "clone", "p@s1", "pc"); ok {
			contains(t, "volume clone", out, "created volume pc", "from p@s1")
		}
		if out, ok := e.okOrPending("volume", "revert", "p", "s1"); ok {
			contains(t, "volume revert", out, "reverted volume p to snapshot s1")
		}
		contains(t, "snapshot delete", e.ok("snapshot", "delete", "p", "s1"), "deleted snapshot p@s1")
	})

	t.Run("mistakes", func(t *testing.T) {
		for _, c := range []struct {
			want string
			args []string
		}{
			// Sizes.
			{`unknown unit "GB"`, []string{"volume", "create", "x", "--size", "10GB"}},
			{`write 512MiB`, []string{"volume", "create", "x", "--size", "512MB"}},
			{`unknown unit "XiB"`, []string{"volume", "create", "x", "--size", "10XiB"}},
			{"whole number", []string{"volume", "create", "x", "--size", "1.5G"}},
			{"positive size", []string{"volume", "create", "x", "--size", "0"}},
			{"multiple of the 512-byte block size", []string{"volume", "create", "x", "--size", "1000"}},
			{"512 or 4096", []string{"volume", "create", "x", "--size", "1MiB", "--block-size", "1024"}},
			{`Required flag "size"`, []string{"volume", "create", "x"}},
			// Names.
			{`volume "a" already exists`, []string{"volume", "create", "a", "--size", "1MiB"}},
			{"a-z, 0-9", []string{"volume", "create", "Bad_Name", "--size", "1MiB"}},
			{"a-z, 0-9", []string{"volume", "create", strings.Repeat("n", 64), "--size", "1MiB"}},
			{"missing volume NAME", []string{"volume", "create", "--size", "1MiB"}},
			// Initiator names (RFC 3720 iqn., eui., naa.).
			{"iqn.YYYY-MM", []string{"volume", "create", "x", "--size", "1MiB", "--allow", "host1"}},
			{"iqn.YYYY-MM", []string{"volume", "create", "x", "--size", "1MiB", "--allow", "iqn.2026-13.com.example:x"}},
			{"iqn.YYYY-MM", []string{"volume", "create", "x", "--size", "1MiB", "--allow", "iqn.2026-11.-bad.com"}},
			{"eui.<16 hex digits>", []string{"volume", "create", "x", "--size", "1MiB", "--allow", "eui.12345"}},
			{"naa.<16 or 32 hex digits>", []string{"volume", "create", "x", "--size", "1MiB", "--allow", "naa.0123456789abcdeg"}},
			// CHAP.
			{"CHAP secret is 5 characters", []string{"volume", "create", "x", "--size", "1MiB", "--chap", "u:short"}},
			{"USER:SECRET", []string{"volume", "create", "x", "--size", "1MiB", "--chap", "nosecret"}},
			{"needs --chap too", []string{"volume", "create", "x", "--size", "1MiB", "--mutual-chap", "t:target-secret-12"}},
			{"use a different one", []string{"volume", "create", "x", "--size", "1MiB", "--chap", "u:same-secret-123",
				"--mutual-chap", "t:same-secret-123"}},
			// Pool policy.
			{"the pool has", []string{"volume", "create", "x", "--size", "1MiB", "--policy", "4+2"}},
			{"write DATA+PARITY", []string{"volume", "create", "x", "--size", "1MiB", "--policy", "two"}},
			// Unknown volumes, everywhere.
			{`no volume named "nope"`, []string{"volume", "show", "nope"}},
			{`no volume named "nope"`, []string{"volume", "delete", "nope"}},
			{`no volume named "nope"`, []string{"volume", "resize", "nope", "--size", "1GiB"}},
			{`no volume named "nope"`, []string{"k8s", "pv", "nope"}},
			{`no volume named "nope"`, []string{"k8s", "secret", "nope"}},
			{"nope", []string{"snapshot", "list", "nope"}},
			{"nope", []string{"snapshot", "create", "nope", "s9"}},
			{"nope", []string{"volume", "clone", "nope", "s1", "c9"}},
			// Resize only grows.
			{"shrinking is not supported", []string{"volume", "resize", "a", "--size", "1MiB"}},
			// k8s flags.
			{`--fs "ext4;x"`, []string{"k8s", "pv", "a", "--fs", "ext4;x"}},
			{"more than volume a holds", []string{"k8s", "pv", "a", "--capacity", "1TiB"}},
			{`--namespace "Apps"`, []string{"k8s", "secret", "b", "--namespace", "Apps"}},
			// Pool.
			{"has a pool already", []string{"pool", "create", "--device", devs[0]}},
			{"does not exist", []string{"pool", "add-device", filepath.Join(dir, "absent")}},
			{"not a device of the pool", []string{"pool", "replace-device", filepath.Join(dir, "absent"), devs[1]}},
			// Global flags.
			{"use table or json", []string{"volume", "list", "--output", "yaml"}},
			{"address must be unix:PATH", []string{"--api", "tcp:1.2.3.4", "volume", "list"}},
		} {
			e.refused(c.want, c.args...)
		}
	})

	t.Run("delete", func(t *testing.T) {
		contains(t, "volume delete", e.ok("volume", "delete", "a"), "deleted volume a")
		var del map[string]string
		e.json(&del, "volume", "delete", "b")
		if del["deleted"] != "b" {
			t.Errorf("volume delete -o json = %v", del)
		}
		var vs []map[string]any
		e.json(&vs, "volume", "list")
		var left []string
		for _, v := range vs {
			left = append(left, v["name"].(string))
		}
		sort.Strings(left)
		if strings.Join(left, ",") != "p" && strings.Join(left, ",") != "p,pc" {
			t.Errorf("volumes after delete: %v", left)
		}
	})

	t.Run("pool-recover", func(t *testing.T) {
		data := d.DataDir()
		r := runCLI(t, d.bin, "pool", "recover", "--data-dir", data)
		if r.code != 1 || !strings.Contains(r.stderr, "in use by another 'stave serve'") {
			t.Errorf("pool recover with the daemon running: %v", r)
		}
		d.Stop()
		r = runCLI(t, d.bin, "pool", "recover", "--data-dir", data)
		if r.code != 0 || !strings.Contains(r.stdout, "rebuilt the index") {
			t.Errorf("pool recover: %v", r)
		}
		d.start()
		contains(t, "volume show after recover", e.ok("volume", "show", "p"), "Exported:", "yes")
	})
}
