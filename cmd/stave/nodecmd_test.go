package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"stave.dev/stave/internal/adminapi"
)

func TestNodeCLI(t *testing.T) {
	d := newDaemon(t)
	var ns []adminapi.Node
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := json.Unmarshal([]byte(d.mustCLI("node", "list", "-o", "json")), &ns); err != nil {
			t.Fatal(err)
		}
		if len(ns) == 1 && ns[0].State == "up" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node list after 10s: %+v, want this node up", ns)
		}
		time.Sleep(20 * time.Millisecond)
	}
	host, _ := os.Hostname()
	n := ns[0]
	if !n.Self || n.Name != host || n.EtcdMemberID == "" || !n.EtcdMember || n.Capacity == nil ||
		n.Capacity.Source != "data_dir" || n.Capacity.Free <= 0 || !strings.HasPrefix(n.Admin, "unix:") ||
		len(n.Portals) != 1 || n.Version == "" || n.Started.IsZero() {
		t.Errorf("node %+v", n)
	}
	out := d.mustCLI("node", "list")
	if !strings.Contains(out, "NAME") || !strings.Contains(out, n.ID) || !strings.Contains(out, "up") {
		t.Errorf("node list:\n%s", out)
	}
	for _, args := range [][]string{{"node", "show"}, {"node", "show", n.ID}, {"node", "show", "self"}} {
		out := d.mustCLI(args...)
		if !strings.Contains(out, "State:") || !strings.Contains(out, "up") || !strings.Contains(out, "member "+n.EtcdMemberID) &&
			!strings.Contains(out, n.EtcdMemberID) {
			t.Errorf("%v:\n%s", args, out)
		}
	}
	d.wantFail("no such node", "node", "show", "nope")
	d.wantFail("at most one", "node", "show", "a", "b")
}

func TestNodeTable(t *testing.T) {
	var b bytes.Buffer
	err := writeNodeTable(&b, []adminapi.Node{
		{ID: "01", Name: "n1", State: "up", Self: true, Portals: []string{"127.0.0.2:3260"},
			Labels: map[string]string{"zone": "a", "rack": "r1"}, EtcdMemberID: "ab", EtcdMember: true,
			Capacity: &adminapi.NodeCapacity{Source: "pool", Size: 2 << 30, Free: 1 << 30}, Version: "v1.0 abc go1.26"},
		{ID: "02", Name: "n2", State: "down"},
	})
	if err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"n1 *", "rack=r1,zone=a", "1 GiB free of 2 GiB (pool)", "member ab", "v1.0", "down", "external"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	var d bytes.Buffer
	if err := writeNodeDetail(&d, &adminapi.Node{ID: "02", Name: "n2", State: "down", EtcdMemberID: "cd"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(d.String(), "down (stopped, dead") || !strings.Contains(d.String(), "not in etcd's member list") {
		t.Errorf("detail:\n%s", d.String())
	}
}
