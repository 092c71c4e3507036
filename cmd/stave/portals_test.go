package main

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"

	"stave.dev/stave/cluster"
	"stave.dev/stave/internal/volume"
)

// fakePortalCluster is a portalCluster with fixed answers.
type fakePortalCluster struct {
	nodes     []cluster.NodeStatus
	nodesErr  error
	status    map[string]cluster.VolumeStatus
	statusErr error
	nodeReads int
}

func (f *fakePortalCluster) Nodes(context.Context) ([]cluster.NodeStatus, error) {
	f.nodeReads++
	return f.nodes, f.nodesErr
}

func (f *fakePortalCluster) VolumeStatus(_ context.Context, name string) (cluster.VolumeStatus, bool, error) {
	st, ok := f.status[name]
	return st, ok, f.statusErr
}

func testNode(id string, portals ...string) cluster.NodeStatus {
	return cluster.NodeStatus{NodeInfo: cluster.NodeInfo{ID: id, Name: "name-" + id, Portals: portals}, State: cluster.NodeUp}
}

func TestVolumePortals(t *testing.T) {
	const self = "aa"
	own := []string{"192.0.2.1:3260", "192.0.2.1:3261"} // this node's live, advertised list
	records := []cluster.NodeStatus{
		// This node's record holds its bound wildcard address: the live list wins.
		testNode("aa", "[::]:3260"),
		testNode("bb", "192.0.2.2:3260"),
		testNode("cc", "192.0.2.3:3260", "0.0.0.0:3260", "[2001:db8::3]:3260"),
		testNode("dd", "192.0.2.2:3260"), // a duplicate of bb's portal (misconfiguration)
	}
	cases := []struct {
		name   string
		spec   volume.Spec
		nodes  []cluster.NodeStatus
		nErr   error
		status map[string]cluster.VolumeStatus
		sErr   error
		want   []string
		reads  int // Nodes calls
	}{
		{name: "no node: this node, etcd not read", spec: volume.Spec{Name: "v"}, nodes: records, want: own},
		{name: "on this node", spec: volume.Spec{Name: "v", Node: "aa"}, nodes: records, want: own},
		{name: "on another node", spec: volume.Spec{Name: "v", Node: "bb"}, nodes: records,
			want: []string{"192.0.2.2:3260"}, reads: 1},
		{name: "wildcards dropped", spec: volume.Spec{Name: "v", Node: "cc"}, nodes: records,
			want: []string{"192.0.2.3:3260", "[2001:db8::3]:3260"}, reads: 1},
		{name: "replicated, no status: first replica first", spec: volume.Spec{Name: "v", Node: "bb", Replicas: []string{"bb", "aa", "cc"}},
			nodes: records, want: []string{"192.0.2.2:3260", "192.0.2.1:3260", "192.0.2.1:3261", "192.0.2.3:3260", "[2001:db8::3]:3260"}, reads: 1},
		{name: "replicated, status names the serving node", spec: volume.Spec{Name: "v", Node: "bb", Replicas: []string{"bb", "aa", "cc"}},
			nodes: records, status: map[string]cluster.VolumeStatus{"v": {Node: "cc"}},
			want: []string{"192.0.2.3:3260", "[2001:db8::3]:3260", "192.0.2.2:3260", "192.0.2.1:3260", "192.0.2.1:3261"}, reads: 1},
		{name: "replicated with a floating address: it comes first", spec: volume.Spec{Name: "v", Node: "bb", Replicas: []string{"bb", "cc"},
			FloatingIP: "192.0.2.100/24"}, nodes: records,
			want: []string{"192.0.2.100:3260", "192.0.2.2:3260", "192.0.2.3:3260", "[2001:db8::3]:3260"}, reads: 1},
		{name: "replicated, status of a node without a copy ignored", spec: volume.Spec{Name: "v", Node: "bb", Replicas: []string{"bb", "cc"}},
			nodes: records, status: map[string]cluster.VolumeStatus{"v": {Node: "dd"}},
			want: []string{"192.0.2.2:3260", "192.0.2.3:3260", "[2001:db8::3]:3260"}, reads: 1},
		{name: "replicated, status unreadable", spec: volume.Spec{Name: "v", Node: "cc", Replicas: []string{"cc", "bb"}},
			nodes: records, sErr: errors.New("etcd down"),
			want: []string{"192.0.2.3:3260", "[2001:db8::3]:3260", "192.0.2.2:3260"}, reads: 1},
		{name: "duplicates once", spec: volume.Spec{Name: "v", Node: "bb", Replicas: []string{"bb", "dd"}}, nodes: records,
			want: []string{"192.0.2.2:3260"}, reads: 1},
		{name: "replica without a record skipped", spec: volume.Spec{Name: "v", Node: "ee", Replicas: []string{"ee", "bb"}},
			nodes: records, want: []string{"192.0.2.2:3260"}, reads: 1},
		{name: "etcd unreachable: own", spec: volume.Spec{Name: "v", Node: "bb"}, nErr: errors.New("etcd down"),
			want: own, reads: 1},
		{name: "no record: own", spec: volume.Spec{Name: "v", Node: "bb"}, want: own, reads: 1},
		{name: "only wildcards in etcd: own", spec: volume.Spec{Name: "v", Node: "zz"},
			nodes: []cluster.NodeStatus{testNode("zz", "[::]:3260", "bad")}, want: own, reads: 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := &fakePortalCluster{nodes: c.nodes, nodesErr: c.nErr, status: c.status, statusErr: c.sErr}
			sp := c.spec
			got := volumePortals(context.Background(), slog.New(slog.DiscardHandler), f, &sp, self, own)
			if !slices.Equal(got, c.want) {
				t.Errorf("volumePortals = %q, want %q", got, c.want)
			}
			if f.nodeReads != c.reads {
				t.Errorf("%d reads of the node records, want %d", f.nodeReads, c.reads)
			}
			if len(got) > 0 && len(own) > 0 && &got[0] == &own[0] {
				t.Error("the result aliases own: callers may keep it")
			}
		})
	}
}

func TestTellable(t *testing.T) {
	for p, want := range map[string]bool{
		"192.0.2.1:3260": true, "[2001:db8::1]:3260": true, "host.example:3260": true,
		"0.0.0.0:3260": false, "[::]:3260": false, ":3260": false, "192.0.2.1": false, "": false,
	} {
		if got := tellable(p); got != want {
			t.Errorf("tellable(%q) = %v, want %v", p, got, want)
		}
	}
}
