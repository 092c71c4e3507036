package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// freeURL returns http://127.0.0.1:PORT on a port free a moment ago.
func freeURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprintf("http://%s", l.Addr())
}

// TestJoinIdempotent: B joins A's single member after someone already
// added B's peer URL (a join that died before starting), so no second
// member is added; B then restarts from its data.
func TestJoinIdempotent(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two etcd members")
	}
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	aClient, aPeer, bClient, bPeer := freeURL(t), freeURL(t), freeURL(t), freeURL(t)
	a, err := Open(ctx, Config{DataDir: t.TempDir(), NodeID: "00000000000000aa", Name: "a",
		InitialCluster: []string{"a=" + aPeer}, ListenClientURLs: []string{aClient}, ListenPeerURLs: []string{aPeer}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	// The interrupted join: B's peer URL added, B never started.
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	if _, err := a.Client().MemberAdd(actx, []string{bPeer}); err != nil {
		t.Fatal(err)
	}
	cancel()
	bDir := t.TempDir()
	bCfg := Config{DataDir: bDir, NodeID: "00000000000000bb", Name: "b", Join: aClient[len("http://"):],
		ListenClientURLs: []string{bClient}, ListenPeerURLs: []string{bPeer}, Logger: log}
	start := time.Now()
	b, err := Open(ctx, bCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("joined in %v", time.Since(start))
	members := func(c *Cluster) []string {
		t.Helper()
		mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		ml, err := c.Client().MemberList(mctx, clientv3.WithSerializable())
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, m := range ml.Members {
			names = append(names, m.Name)
		}
		return names
	}
	if got := members(b); len(got) != 2 {
		t.Fatalf("members after join: %q, want a and b", got)
	}
	// Restart B with the same options: it restarts from its data.
	start = time.Now()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if b, err = Open(ctx, bCfg); err != nil {
		t.Fatal(err)
	}
	t.Logf("restarted in %v", time.Since(start))
	if err := b.Healthy(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := members(b); len(got) != 2 {
		t.Fatalf("members after restart: %q, want a and b", got)
	}
	start = time.Now()
	if err := a.Close(); err != nil {
		t.Error(err)
	}
	if err := b.Close(); err != nil {
		t.Error(err)
	}
	t.Logf("closed in %v", time.Since(start))
}
