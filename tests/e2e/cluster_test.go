package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"stave.dev/stave/cluster"
	"stave.dev/stave/internal/adminapi"
)

// The cluster test: three daemons on 127.0.0.2, .3 and .4, each with an
// embedded etcd member, form one cluster from a static initial cluster;
// a fourth on 127.0.0.5 joins it with --join. Node membership, the shared
// catalogue, quorum after a kill -9, down detection within the node
// lease, and rejoin after a restart are checked through the CLI.

const (
	clusterFormTimeout = 40 * time.Second // all members ready
	clusterWaitTimeout = 25 * time.Second // one state change seen through the API
)

// clusterNode is one daemon of the cluster test. It reuses daemon's
// Stop, Kill, CLI and Log; only start-up differs (the portal is on the
// node's own loopback address, not 127.0.0.1).
type clusterNode struct {
	*daemon
	name   string
	ip     string
	portal string
	client string // etcd client HOST:PORT
	peer   string // etcd peer URL
}

// newClusterNode prepares (does not start) node name on ip.
func newClusterNode(t *testing.T, name, ip string) *clusterNode {
	t.Helper()
	dir, err := os.MkdirTemp("", "stave-cl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &daemon{t: t, bin: staveBinary(t), dir: dir, dataDir: filepath.Join(dir, "data"), sock: filepath.Join(dir, "api.sock")}
	n := &clusterNode{daemon: d, name: name, ip: ip}
	n.port = freePort(t)
	n.portal = net.JoinHostPort(ip, strconv.Itoa(n.port))
	n.client = net.JoinHostPort(ip, strconv.Itoa(freePort(t)))
	n.peer = "http://" + net.JoinHostPort(ip, strconv.Itoa(freePort(t)))
	t.Cleanup(func() {
		n.Stop()
		for _, bad := range daemonLogAlarms {
			if strings.Contains(n.Log(), bad) {
				t.Errorf("%s: stave serve log holds %q", name, bad)
			}
		}
		if t.Failed() {
			t.Logf("%s log (%s):\n%s", name, strings.Join(n.args, " "), n.Log())
		}
		saveLog(t, name+".log", n.Log())
	})
	return n
}

// setArgs sets the serve arguments: etcd is either the static initial
// cluster or --join.
func (n *clusterNode) setArgs(etcd ...string) {
	n.args = append([]string{"serve", "--config", "/dev/null", "--data-dir", n.dataDir, "--portal", n.portal,
		"--api", "unix:" + n.sock, "--node-name", n.name, "--label", "zone=z-" + n.name, "--label", "rack=r1",
		"--etcd-listen-client-urls", "http://" + n.client, "--etcd-listen-peer-urls", n.peer}, etcd...)
}

// startErr runs the daemon and waits until its API socket and portal
// accept connections.
func (n *clusterNode) startErr() error {
	d := n.daemon
	if err := os.MkdirAll(d.dataDir, 0o700); err != nil {
		return err
	}
	os.Remove(d.sock)
	fmt.Fprintf(logWriter{d}, "=== %s start: stave %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(d.args, " "))
	cmd := exec.Command(d.bin, d.args...)
	cmd.Stdout, cmd.Stderr = logWriter{d}, logWriter{d}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: starting stave serve: %v", n.name, err)
	}
	done := make(chan struct{})
	d.cmd, d.done = cmd, done
	go func() {
		d.err = cmd.Wait()
		close(done)
	}()
	deadline := time.Now().Add(clusterFormTimeout)
	for {
		select {
		case <-done:
			d.cmd = nil
			return fmt.Errorf("%s: stave serve exited during start-up: %v", n.name, d.err)
		default:
		}
		if dialOK("unix", d.sock) && dialOK("tcp", n.portal) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not serving after %v (portal %s)", n.name, clusterFormTimeout, n.portal)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// nodes returns `stave node list -o json` as seen by n.
func (n *clusterNode) nodes() ([]adminapi.Node, error) {
	out, err := n.CLI("node", "list", "-o", "json")
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	var ns []adminapi.Node
	if err := json.Unmarshal([]byte(out), &ns); err != nil {
		return nil, fmt.Errorf("node list output: %v\n%s", err, out)
	}
	return ns, nil
}

// waitStates polls n's node list until every named node has the wanted
// state, and returns how long that took.
func (n *clusterNode) waitStates(t *testing.T, want map[string]string) ([]adminapi.Node, time.Duration) {
	t.Helper()
	start := time.Now()
	var last string
	for time.Since(start) < clusterWaitTimeout {
		ns, err := n.nodes()
		if err == nil {
			ok := true
			got := map[string]string{}
			for _, nd := range ns {
				got[nd.Name] = nd.State
			}
			for name, st := range want {
				ok = ok && got[name] == st
			}
			if ok {
				return ns, time.Since(start)
			}
			last = fmt.Sprint(got)
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s: node states %v not reached within %v; last seen: %s", n.name, want, clusterWaitTimeout, last)
	return nil, 0
}

// startTogether starts every node of ns at once with start (an embedded
// etcd member becomes ready only once a majority runs) and fails t when
// one of them does not come up.
func startTogether(t *testing.T, ns []*clusterNode, start func(i int, n *clusterNode) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(ns))
	for i, n := range ns {
		wg.Go(func() { errs[i] = start(i, n) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// requireLoopbackAlias fails t unless ip can be bound (Linux routes all
// of 127.0.0.0/8 to lo).
func requireLoopbackAlias(t *testing.T, ip string) {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("cannot bind %s (loopback 127.0.0.0/8 must accept it; on Linux it does): %v", ip, err)
	}
	l.Close()
}

func TestClusterMembership(t *testing.T) {
	requireE2E(t)
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"}
	for _, ip := range ips {
		requireLoopbackAlias(t, ip)
	}
	staveBinary(t) // build before timing anything
	testStart := time.Now()
	ns := make([]*clusterNode, 3)
	var initial []string
	for i := range ns {
		ns[i] = newClusterNode(t, fmt.Sprintf("n%d", i+1), ips[i])
		initial = append(initial, ns[i].name+"="+ns[i].peer)
	}
	for _, n := range ns {
		n.setArgs("--initial-cluster", strings.Join(initial, ","))
	}
	a, b, c := ns[0], ns[1], ns[2]

	// 1. Formation: the members wait for each other, so start them together.
	start := time.Now()
	startTogether(t, ns, func(_ int, n *clusterNode) error { return n.startErr() })
	nodes, _ := c.waitStates(t, map[string]string{"n1": "up", "n2": "up", "n3": "up"})
	t.Logf("cluster of 3 formed and registered in %v", time.Since(start).Round(time.Millisecond))
	if len(nodes) != 3 {
		t.Errorf("node list has %d nodes, want 3: %+v", len(nodes), nodes)
	}
	for _, nd := range nodes {
		if nd.Labels["zone"] != "z-"+nd.Name || nd.Labels["rack"] != "r1" {
			t.Errorf("node %s labels %v, want zone=z-%s rack=r1", nd.Name, nd.Labels, nd.Name)
		}
		if !nd.EtcdMember || nd.EtcdMemberID == "" {
			t.Errorf("node %s: etcd member %q listed %v, want a listed member", nd.Name, nd.EtcdMemberID, nd.EtcdMember)
		}
		if len(nd.Portals) != 1 || nd.Capacity == nil || nd.Self != (nd.Name == "n3") {
			t.Errorf("node %s: portals %v capacity %v self %v", nd.Name, nd.Portals, nd.Capacity, nd.Self)
		}
	}
	if out := c.MustCLI("node", "list"); !strings.Contains(out, "rack=r1,zone=z-n1") || !strings.Contains(out, "n3 *") {
		t.Errorf("node list table:\n%s", out)
	}
	if out := b.MustCLI("node", "show"); !strings.Contains(out, "Name:") || !strings.Contains(out, "n2") ||
		!strings.Contains(out, b.portal) {
		t.Errorf("node show on n2:\n%s", out)
	}

	// 2. The catalogue is shared: a volume created through n1 is listed on n3.
	a.MustCLI("volume", "create", "shared", "--size", "1MiB")
	deadline := time.Now().Add(clusterWaitTimeout)
	for !strings.Contains(c.MustCLI("volume", "list"), "shared") {
		if time.Now().After(deadline) {
			t.Fatalf("volume created on n1 not listed on n3 within %v", clusterWaitTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Only its node (n1) exports it; n3 says so and stays ready.
	if out := c.MustCLI("volume", "list"); !strings.Contains(out, "served by node") || strings.Contains(out, "not exported") {
		t.Errorf("volume list on n3:\n%s", out)
	}
	if out := c.MustCLI("volume", "list", "--output", "json"); !strings.Contains(out, `"remote": true`) {
		t.Errorf("volume list --output json on n3 does not mark the volume remote:\n%s", out)
	}

	// 3. kill -9 n2: n1 and n3 keep quorum and answer; n2 goes down
	// within the node lease.
	b.Kill()
	killed := time.Now()
	// Reads answer at once, during the election too (n2 may have led).
	for _, n := range []*clusterNode{a, c} {
		s := time.Now()
		if out := n.MustCLI("volume", "list"); !strings.Contains(out, "shared") {
			t.Errorf("%s: volume list right after the kill:\n%s", n.name, out)
		}
		if _, err := n.nodes(); err != nil {
			t.Errorf("%s: node list right after the kill: %v", n.name, err)
		}
		t.Logf("%s answered volume list and node list %v after the kill", n.name, time.Since(s).Round(time.Millisecond))
	}
	c.waitStates(t, map[string]string{"n1": "up", "n2": "down", "n3": "up"})
	down := time.Since(killed)
	t.Logf("n2 listed down %v after kill -9 (node lease %v)", down.Round(time.Millisecond), cluster.NodeTTL)
	// The lease lapses NodeTTL after the last keep-alive; if n2 led etcd,
	// the new leader renews every lease once (election + TTL + 1 s).
	if max := cluster.NodeTTL + 5*time.Second; down > max {
		t.Errorf("n2 listed down after %v, want at most %v", down, max)
	}
	// Writes need the quorum of n1 and n3 (a write in flight while the
	// leader died may time out after 7 s: etcd drops proposals forwarded
	// to a dead leader; the error says so).
	if out := c.MustCLI("volume", "create", "after-kill", "--size", "1MiB"); !strings.Contains(out, "after-kill") {
		t.Errorf("create after the kill: %s", out)
	}
	deadline = time.Now().Add(clusterWaitTimeout)
	for !strings.Contains(a.MustCLI("volume", "list"), "after-kill") {
		if time.Now().After(deadline) {
			t.Fatalf("volume created on n3 not listed on n1 within %v", clusterWaitTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// 4. Restart n2 from its data: it rejoins and is up again.
	start = time.Now()
	if err := b.startErr(); err != nil {
		t.Fatal(err)
	}
	a.waitStates(t, map[string]string{"n1": "up", "n2": "up", "n3": "up"})
	t.Logf("n2 restarted and up again in %v", time.Since(start).Round(time.Millisecond))
	if out := b.MustCLI("volume", "list"); !strings.Contains(out, "after-kill") {
		t.Errorf("volume list on restarted n2:\n%s", out)
	}

	// 5. A fourth node joins through n1's etcd client address; restarting
	// it restarts its member (no second MemberAdd).
	d := newClusterNode(t, "n4", ips[3])
	d.setArgs("--join", a.client)
	start = time.Now()
	if err := d.startErr(); err != nil {
		t.Fatal(err)
	}
	nodes, _ = d.waitStates(t, map[string]string{"n1": "up", "n2": "up", "n3": "up", "n4": "up"})
	t.Logf("n4 joined and registered in %v", time.Since(start).Round(time.Millisecond))
	for _, nd := range nodes {
		if nd.Name == "n4" && (!nd.EtcdMember || !nd.Self) {
			t.Errorf("n4 as seen by itself: %+v", nd)
		}
	}
	d.Stop()
	if err := d.startErr(); err != nil {
		t.Fatal(err)
	}
	c.waitStates(t, map[string]string{"n4": "up"})
	if strings.Count(d.Log(), "etcd member added") != 1 {
		t.Errorf("n4 was added %d times, want once", strings.Count(d.Log(), "etcd member added"))
	}
	for _, n := range append(ns, d) {
		n.Stop()
	}
	t.Logf("whole test %v", time.Since(testStart).Round(time.Millisecond))
}
