package cluster

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestNodeRecordsUpDown(t *testing.T) {
	c := openTest(t, t.TempDir())
	defer c.Close()
	if c.MemberID() == 0 {
		t.Fatal("embedded member has no ID")
	}
	var free atomic.Int64
	free.Store(100)
	info := func() NodeInfo {
		return NodeInfo{ID: "00000000000000aa", Name: "n1", Host: "h", Portals: []string{"127.0.0.2:3260"},
			Labels: map[string]string{"zone": "a"}, EtcdMemberID: FormatMemberID(c.MemberID()),
			Capacity: &Capacity{Source: "data_dir", Size: 1000, Free: free.Load()}}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.RunNode(ctx, info, 20*time.Millisecond) }()
	ns := waitNodes(t, c, func(ns []NodeStatus) bool { return len(ns) == 1 && ns[0].State == NodeUp })
	if n := ns[0]; n.Name != "n1" || !n.EtcdMember || n.Labels["zone"] != "a" || n.Capacity.Free != 100 {
		t.Errorf("node %+v", n)
	}
	free.Store(50) // the refresh rewrites the record
	waitNodes(t, c, func(ns []NodeStatus) bool { return len(ns) == 1 && ns[0].Capacity != nil && ns[0].Capacity.Free == 50 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("RunNode = %v, want nil after cancel", err)
	}
	// A stopped node revokes its lease: down at once, still listed.
	ns, err := c.Nodes(context.Background())
	if err != nil || len(ns) != 1 || ns[0].State != NodeDown || ns[0].Name != "n1" {
		t.Fatalf("after stop: %+v, %v; want n1 down", ns, err)
	}
}

// waitNodes polls Nodes until ok or 10 s.
func waitNodes(t *testing.T, c *Cluster, ok func([]NodeStatus) bool) []NodeStatus {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ns, err := c.Nodes(context.Background())
		if err == nil && ok(ns) {
			return ns
		}
		if time.Now().After(deadline) {
			t.Fatalf("nodes %+v, %v: condition not met in 10s", ns, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSameRecord(t *testing.T) {
	a := NodeInfo{ID: "x", Capacity: &Capacity{Free: 1}, Updated: time.Unix(1, 0)}
	b := a
	b.Updated = time.Unix(2, 0)
	b.Capacity = &Capacity{Free: 1}
	if !sameRecord(a, b) {
		t.Error("records differing only in Updated are not the same")
	}
	b.Capacity = &Capacity{Free: 2}
	if sameRecord(a, b) {
		t.Error("records with different capacity are the same")
	}
}

func TestJoinURL(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.2:2379":        "http://127.0.0.2:2379",
		"http://10.0.0.1:2379":  "http://10.0.0.1:2379",
		"https://etcd.lan:2379": "https://etcd.lan:2379",
	} {
		if got, err := JoinURL(in); err != nil || got != want {
			t.Errorf("JoinURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "10.0.0.1", "ftp://x:1"} {
		if _, err := JoinURL(in); err == nil || !strings.Contains(err.Error(), "--join") {
			t.Errorf("JoinURL(%q) = %v, want an error naming --join", in, err)
		}
	}
}

func TestMultiMemberNeedsPeerURLs(t *testing.T) {
	_, err := Open(context.Background(), Config{DataDir: t.TempDir(), NodeID: "0123456789abcdef", Name: "n1",
		InitialCluster: []string{"n1=http://127.0.0.1:1"}})
	if err == nil || !strings.Contains(err.Error(), "listen_peer_urls") {
		t.Fatalf("Open = %v, want an error asking for etcd.listen_peer_urls", err)
	}
}
