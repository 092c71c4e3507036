package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.yaml.in/yaml/v3"

	"stave.dev/stave/cluster"
	"stave.dev/stave/internal/adminapi"
	"stave.dev/stave/internal/volume"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files of the k8s tests in testdata/k8s")

// golden compares got with testdata/k8s/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", "k8s", name)
	if *updateGolden {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test ./cmd/stave -run K8s -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test ./cmd/stave -run K8s -update rewrites it):\ngot:\n%s\nwant:\n%s", p, got, want)
	}
}

// k8sConn is a volume with mutual CHAP on a node with two portals and
// discovery CHAP.
func k8sConn() *adminapi.Connection {
	return &adminapi.Connection{
		Volume: "db", Target: "iqn.2026-11.dev.stave:db", LUN: 0, Size: 10 << 30, BlockSize: 512,
		Portals: []string{"192.0.2.10:3260", "192.0.2.11:3260"},
		CHAP: &volume.CHAP{User: "k8s-node", Secret: "initiator-secret-1",
			MutualUser: "stave-db", MutualSecret: "target-secret-22"},
		DiscoveryCHAP: &adminapi.DiscoveryCHAP{User: "disc", Secret: "discovery-secret-3"},
	}
}

func render(t *testing.T, o string, v any) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := writeManifest(&b, o, v); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestK8sPVGolden(t *testing.T) {
	defaults := pvOptions{fsType: "ext4", secretNamespace: "default"}
	cases := []struct {
		file string
		conn func(c *adminapi.Connection)
		opts pvOptions
		out  string
	}{
		{"pv-chap.yaml", nil, defaults, "table"},
		{"pv-chap.json", nil, defaults, "json"},
		{"pv-plain.yaml", func(c *adminapi.Connection) {
			c.CHAP, c.DiscoveryCHAP, c.Portals = nil, nil, c.Portals[:1]
		}, pvOptions{name: "pg-data", fsType: "xfs", capacity: 8 << 30, secretNamespace: "default"}, "table"},
		{"pv-session-chap.yaml", func(c *adminapi.Connection) { c.DiscoveryCHAP = nil },
			pvOptions{fsType: "ext4", secretName: "db-chap", secretNamespace: "storage"}, "table"},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			cn := k8sConn()
			if c.conn != nil {
				c.conn(cn)
			}
			pv, err := buildPV(cn, c.opts)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, c.file, render(t, c.out, pv))
		})
	}
}

func TestK8sSecretGolden(t *testing.T) {
	s, err := buildSecret(k8sConn(), "", "default")
	if err != nil {
		t.Fatal(err)
	}
	out := render(t, "table", s)
	golden(t, "secret-mutual-discovery.yaml", out)

	// The data decode to the credentials, under the keys the kubelet reads.
	var back struct {
		Type string            `yaml:"type"`
		Data map[string]string `yaml:"data"`
	}
	if err := yaml.Unmarshal(out, &back); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"node.session.auth.username": "k8s-node", "node.session.auth.password": "initiator-secret-1",
		"node.session.auth.username_in": "stave-db", "node.session.auth.password_in": "target-secret-22",
		"discovery.sendtargets.auth.username": "disc", "discovery.sendtargets.auth.password": "discovery-secret-3",
	}
	if back.Type != "kubernetes.io/iscsi-chap" || len(back.Data) != len(want) {
		t.Errorf("type %q, %d keys; want kubernetes.io/iscsi-chap and %d", back.Type, len(back.Data), len(want))
	}
	for k, v := range want {
		b, err := base64.StdEncoding.DecodeString(back.Data[k])
		if err != nil || string(b) != v {
			t.Errorf("data[%s] = %q (%v), want base64 of %q", k, back.Data[k], err, v)
		}
	}

	one := k8sConn()
	one.CHAP.MutualUser, one.CHAP.MutualSecret, one.DiscoveryCHAP = "", "", nil
	s, err = buildSecret(one, "db-chap", "storage")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "secret-one-way.json", render(t, "json", s))
}

func TestK8sErrors(t *testing.T) {
	ok := pvOptions{fsType: "ext4", secretNamespace: "default"}
	cases := []struct {
		name string
		conn func(c *adminapi.Connection)
		opts pvOptions
		want string
	}{
		{"no portal", func(c *adminapi.Connection) { c.Portals = nil }, ok, "advertises no portal"},
		{"bad pv name", nil, pvOptions{name: "Bad_Name", fsType: "ext4", secretNamespace: "default"}, `--name "Bad_Name" is not a Kubernetes object name`},
		{"bad fs", nil, pvOptions{fsType: "ext4;rm", secretNamespace: "default"}, `--fs "ext4;rm"`},
		{"capacity too big", nil, pvOptions{fsType: "ext4", capacity: 11 << 30, secretNamespace: "default"}, "more than volume db holds (10 GiB)"},
		{"bad namespace", nil, pvOptions{fsType: "ext4", secretNamespace: "Kube.System"}, `--namespace "Kube.System"`},
		{"default name invalid", func(c *adminapi.Connection) { c.Volume = "db-" }, ok, "default PV name"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cn := k8sConn()
			if c.conn != nil {
				c.conn(cn)
			}
			_, err := buildPV(cn, c.opts)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("buildPV: %v, want an error containing %q", err, c.want)
			}
		})
	}
	plain := k8sConn()
	plain.CHAP, plain.DiscoveryCHAP = nil, nil
	if _, err := buildSecret(plain, "", "default"); err == nil || !strings.Contains(err.Error(), "needs no Secret") {
		t.Errorf("buildSecret without CHAP: %v", err)
	}
	if _, err := buildSecret(k8sConn(), "x_y", "default"); err == nil || !strings.Contains(err.Error(), "--name") {
		t.Errorf("buildSecret bad name: %v", err)
	}
}

func TestK8sQuantity(t *testing.T) {
	for n, want := range map[int64]string{1 << 30: "1Gi", 10 << 30: "10Gi", 3 << 19: "1536Ki", 512e6: "500000Ki", 1000: "1000", 1 << 40: "1Ti"} {
		if got := k8sQuantity(n); got != want {
			t.Errorf("k8sQuantity(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestK8sAgainstDaemon runs `stave k8s pv` and `stave k8s secret` against
// an in-process daemon, whose portal advertises 10.0.2.2:3260.
func TestK8sAgainstDaemon(t *testing.T) {
	d := newDaemon(t)
	d.mustCLI("volume", "create", "kv", "--size", "64MiB", "--chap", "node-user:0123456789abcd")
	d.mustCLI("volume", "create", "open", "--size", "1GiB")

	out := d.mustCLI("k8s", "pv", "kv")
	var pv k8sPV
	if err := yaml.Unmarshal([]byte(out), &pv); err != nil {
		t.Fatalf("k8s pv output is not YAML: %v\n%s", err, out)
	}
	src := pv.Spec.ISCSI
	if pv.Kind != "PersistentVolume" || pv.Metadata.Name != "stave-kv" || pv.Spec.Capacity["storage"] != "64Mi" ||
		src.TargetPortal != "10.0.2.2:3260" || len(src.Portals) != 0 || src.IQN != "iqn.2026-11.dev.stave:kv" || src.LUN != 0 ||
		src.FSType != "ext4" || !src.ChapAuthSession || src.ChapAuthDiscovery || src.SecretRef == nil ||
		src.SecretRef.Name != "stave-kv-chap" || src.SecretRef.Namespace != "default" {
		t.Errorf("k8s pv kv:\n%s", out)
	}
	out = d.mustCLI("k8s", "secret", "kv", "--namespace", "apps", "-o", "json")
	var sec k8sSecret
	if err := json.Unmarshal([]byte(out), &sec); err != nil {
		t.Fatalf("k8s secret -o json: %v\n%s", err, out)
	}
	if b, _ := base64.StdEncoding.DecodeString(sec.Data["node.session.auth.password"]); string(b) != "0123456789abcd" ||
		sec.Metadata.Namespace != "apps" || len(sec.Data) != 2 {
		t.Errorf("k8s secret kv:\n%s", out)
	}

	out = d.mustCLI("k8s", "pv", "open", "--fs", "xfs", "--name", "open-pv", "--capacity", "512MiB")
	if !strings.Contains(out, "storage: 512Mi") || strings.Contains(out, "secretRef") || !strings.Contains(out, "fsType: xfs") {
		t.Errorf("k8s pv open:\n%s", out)
	}
	d.wantFail("needs no Secret", "k8s", "secret", "open")
	d.wantFail(`no volume named "nope"`, "k8s", "pv", "nope")
	d.wantFail("missing VOLUME", "k8s", "pv")
	d.wantFail("bad size", "k8s", "pv", "open", "--capacity", "1XB")
}

// TestK8sPortalsFromEtcd checks that `stave k8s pv` lists the portals of
// every node that holds a volume, read from the node records in etcd,
// the serving node's first: a record of another node, "other", and the
// volume's spec are written into the in-process daemon's etcd.
func TestK8sPortalsFromEtcd(t *testing.T) {
	d := newDaemon(t)
	d.mustCLI("volume", "create", "kv", "--size", "1MiB")
	var self adminapi.Node
	if err := json.Unmarshal([]byte(d.mustCLI("node", "show", "-o", "json")), &self); err != nil || len(self.EtcdClientURLs) == 0 {
		t.Fatalf("node show: %+v %v", self, err)
	}
	etcd, err := clientv3.New(clientv3.Config{Endpoints: self.EtcdClientURLs, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	const other, otherPortal = "00000000000000ff", "192.0.2.7:3260"
	rec, err := json.Marshal(cluster.NodeInfo{ID: other, Name: "other", Host: "other",
		Portals: []string{"[::]:3260", otherPortal}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := etcd.Put(ctx, cluster.RegistrationKey(other), string(rec)); err != nil {
		t.Fatal(err)
	}
	// setSpec rewrites kv's spec in etcd with node and replicas.
	setSpec := func(node string, replicas []string) {
		t.Helper()
		resp, err := etcd.Get(ctx, cluster.VolumeSpecKey("kv"))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("reading kv's spec: %v", err)
		}
		var sp volume.Spec
		if err := json.Unmarshal(resp.Kvs[0].Value, &sp); err != nil {
			t.Fatal(err)
		}
		sp.Node, sp.Replicas = node, replicas
		b, err := json.Marshal(&sp)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := etcd.Put(ctx, cluster.VolumeSpecKey("kv"), string(b)); err != nil {
			t.Fatal(err)
		}
	}
	// setStatus writes kv's status naming its serving node.
	setStatus := func(node string) {
		t.Helper()
		b, err := json.Marshal(cluster.VolumeStatus{Node: node, Exported: true, Size: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := etcd.Put(ctx, cluster.VolumeStatusKey("kv"), string(b)); err != nil {
			t.Fatal(err)
		}
	}
	// wantPV polls `stave k8s pv kv` (the daemon's catalogue follows etcd
	// through a watch) until it names these portals.
	wantPV := func(what, target string, portals ...string) {
		t.Helper()
		for {
			var pv k8sPV
			out := d.mustCLI("k8s", "pv", "kv", "-o", "json")
			if err := json.Unmarshal([]byte(out), &pv); err != nil {
				t.Fatal(err)
			}
			src := pv.Spec.ISCSI
			if src.TargetPortal == target && slices.Equal(src.Portals, portals) {
				return
			}
			select {
			case <-ctx.Done():
				t.Fatalf("%s: targetPortal %s portals %q, want %s and %q", what, src.TargetPortal, src.Portals, target, portals)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}

	const own = "10.0.2.2:3260" // the daemon's --advertise
	wantPV("kv on this node", own)
	// On the other node: its portal from its record, the wildcard dropped.
	setSpec(other, nil)
	wantPV("kv on the other node", otherPortal)
	// Held by both, other first in placement order; the status names the
	// serving node, which comes first. The spec keeps the file backend, so
	// this daemon exports kv again and writes a status naming itself: wait
	// for that before writing the other node's status, or the daemon's
	// write may land last.
	setSpec(other, []string{other, self.ID})
	for {
		resp, err := etcd.Get(ctx, cluster.VolumeStatusKey("kv"))
		if err != nil {
			t.Fatal(err)
		}
		var st cluster.VolumeStatus
		if len(resp.Kvs) == 1 && json.Unmarshal(resp.Kvs[0].Value, &st) == nil && st.Node == self.ID && st.Exported {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("this daemon wrote no status for kv: last %+v", st)
		case <-time.After(20 * time.Millisecond):
		}
	}
	wantPV("kv replicated, served by this node", own, otherPortal)
	setStatus(other)
	wantPV("kv replicated, served by the other node", otherPortal, own)
	// No status: the first replica's portals first.
	if _, err := etcd.Delete(ctx, cluster.VolumeStatusKey("kv")); err != nil {
		t.Fatal(err)
	}
	wantPV("kv replicated, no status", otherPortal, own)
}
