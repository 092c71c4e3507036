// Package replicatest runs replica servers for tests and benchmarks of the
// replication data path: a replication.Server serving one Store as the
// volume "vol" on a loopback port.
package replicatest

import (
	"context"
	"net"
	"sync"
	"testing"

	"stave.dev/stave/replication"
)

// Volume is the volume name Serve's server answers for.
const Volume = "vol"

// Serve starts a replication.Server named node that serves st as Volume on
// 127.0.0.1, with its epochs in epochDir (a fresh temporary directory when
// empty). It returns the replica's Peer and an idempotent stop, which the
// test's cleanup also runs; stop reports an error of Serve through
// tb.Errorf.
func Serve(tb testing.TB, node string, st replication.Store, epochDir string) (replication.Peer, func()) {
	tb.Helper()
	if epochDir == "" {
		epochDir = tb.TempDir()
	}
	ep, err := replication.OpenEpochStore(epochDir)
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := replication.NewServer(replication.ServerConfig{Node: node, Epochs: ep,
		Lookup: func(v string) (replication.Store, bool) { return st, v == Volume }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				tb.Errorf("replica %s: %v", node, err)
			}
		})
	}
	tb.Cleanup(stop)
	return replication.Peer{Node: node, Addr: ln.Addr().String()}, stop
}
