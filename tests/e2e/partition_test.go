package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"stave.dev/stave/internal/initiator"
)

// The partition test (issue 6): the owner of a 3-replica volume is cut
// from etcd and from the other replicas, but not from the client. The old
// owner must stop acknowledging before the new owner starts, no
// acknowledged write may be lost, and once the partition heals the old
// owner rejoins as a replica, resynced region by region (only what
// changed).
//
// The network: each daemon runs in a network namespace of its own,
// joined to a hub namespace by a veth pair and routed there:
//
//	   node i: netns <lab>-n<i>, eth0 10.213.i.1/24, default via 10.213.i.254
//	   hub:    netns <lab>-hub, h<i> 10.213.i.254/24, ip_forward=1
//	   client: the test's initiator sockets, created inside the hub
//
// All of a node's traffic (iSCSI portal, etcd client and peer, replication)
// uses 10.213.i.1, so the hub forwards node-to-node traffic and delivers
// client traffic locally. The cut is four policy-routing rules in the hub,
// "from the owner's subnet to another node's subnet: blackhole" and back,
// which drop forwarded packets silently (as a real partition does) while
// the client's own packets, which are not forwarded, still pass. Only
// iproute2 is needed (no iptables/nft, which this host lacks); nothing is
// created outside the namespaces, and t.Cleanup deletes them.

const (
	partitionNet      = "10.213"
	partitionBlocks   = 256 // blocks per writer: writer 1 owns 0-255, writer 2 256-511 (1 MiB each, one resync region)
	partitionAttempt  = 3 * time.Second
	partitionServe    = 30 * time.Second // the new owner acknowledges within this after the cut
	partitionRejoin   = 60 * time.Second // ISR whole again after the heal
	partitionVolBytes = 64 << 20
)

// netLab is the namespaces of the partition test.
type netLab struct {
	t      *testing.T
	prefix string
	hub    string
	nodes  []string // node namespaces
	hubFD  int      // open /run/netns/<hub>, for dialling from the hub
	rules  [][]string
}

// ip runs ip(8) with args and fails t on error.
func (l *netLab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command(requireTool(l.t, "ip"), args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newNetLab creates the hub and n node namespaces (see the file comment)
// and deletes them at cleanup.
func newNetLab(t *testing.T, n int) *netLab {
	t.Helper()
	requireTool(t, "ip")
	l := &netLab{t: t, prefix: fmt.Sprintf("stave-e2e-%d", os.Getpid()), hubFD: -1}
	l.hub = l.prefix + "-hub"
	removeStaleNetns(t)
	t.Cleanup(func() {
		if l.hubFD >= 0 {
			unix.Close(l.hubFD)
		}
		for _, ns := range append([]string{l.hub}, l.nodes...) {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("deleting network namespace %s: %v\n%s", ns, err, out)
			}
		}
	})
	l.ip("netns", "add", l.hub)
	l.ip("-n", l.hub, "link", "set", "lo", "up")
	if out, err := exec.Command("ip", "netns", "exec", l.hub, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("enabling forwarding in %s: %v\n%s", l.hub, err, out)
	}
	for i := 1; i <= n; i++ {
		ns := fmt.Sprintf("%s-n%d", l.prefix, i)
		l.ip("netns", "add", ns)
		l.nodes = append(l.nodes, ns)
		h := fmt.Sprintf("h%d", i)
		l.ip("link", "add", h, "netns", l.hub, "type", "veth", "peer", "name", "eth0", "netns", ns)
		l.ip("-n", l.hub, "addr", "add", l.gateway(i)+"/24", "dev", h)
		l.ip("-n", l.hub, "link", "set", h, "up")
		l.ip("-n", ns, "addr", "add", l.addr(i)+"/24", "dev", "eth0")
		l.ip("-n", ns, "link", "set", "eth0", "up")
		l.ip("-n", ns, "link", "set", "lo", "up")
		l.ip("-n", ns, "route", "add", "default", "via", l.gateway(i))
	}
	fd, err := unix.Open("/run/netns/"+l.hub, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("opening the hub namespace: %v", err)
	}
	l.hubFD = fd
	return l
}

// removeStaleNetns deletes the namespaces of earlier runs whose test
// process is gone (killed before its cleanup ran).
func removeStaleNetns(t *testing.T) {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "stave-e2e-")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); errors.Is(err, os.ErrNotExist) {
			if out, err := exec.Command("ip", "netns", "del", e.Name()).CombinedOutput(); err != nil {
				t.Logf("removing stale namespace %s: %v %s", e.Name(), err, out)
			}
		}
	}
}

// addr is node i's address (1-based); gateway the hub's on its link.
func (l *netLab) addr(i int) string    { return fmt.Sprintf("%s.%d.1", partitionNet, i) }
func (l *netLab) gateway(i int) string { return fmt.Sprintf("%s.%d.254", partitionNet, i) }
func (l *netLab) subnet(i int) string  { return fmt.Sprintf("%s.%d.0/24", partitionNet, i) }

// inHub runs fn on a thread that has joined the hub namespace: sockets
// it creates live there. The thread returns to its own namespace before
// it is unlocked. NB: it must not die instead (a locked goroutine that
// exits takes its thread along): the daemons are started with Pdeathsig,
// which fires when the thread that forked them exits, and that may be
// this one.
func (l *netLab) inHub(fn func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("opening this thread's network namespace: %w", err)
			return
		}
		defer unix.Close(self)
		if err := unix.Setns(l.hubFD, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("joining the hub namespace: %w", err)
			return
		}
		fn()
		if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
			// Stay locked: the thread dies with this goroutine rather
			// than run others in the hub.
			errc <- fmt.Errorf("leaving the hub namespace: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	return <-errc
}

// dial is initiator.Dial from the hub.
func (l *netLab) dial(ctx context.Context, cfg initiator.Config) (*initiator.Session, error) {
	var s *initiator.Session
	var err error
	if herr := l.inHub(func() { s, err = initiator.Dial(ctx, cfg) }); herr != nil {
		return nil, herr
	}
	return s, err
}

// reachable reports whether addr accepts a TCP connection from the hub.
func (l *netLab) reachable(addr string) bool {
	ok := false
	_ = l.inHub(func() { ok = dialOK("tcp", addr) })
	return ok
}

// cut isolates node i from every other node (not from the hub).
func (l *netLab) cut(i int) {
	l.t.Helper()
	for j := 1; j <= len(l.nodes); j++ {
		if j == i {
			continue
		}
		for _, r := range [][]string{{"from", l.subnet(i), "to", l.subnet(j)}, {"from", l.subnet(j), "to", l.subnet(i)}} {
			l.ip(append([]string{"-n", l.hub, "rule", "add"}, append(r, "blackhole")...)...)
			l.rules = append(l.rules, r)
		}
	}
}

// heal removes the rules of cut.
func (l *netLab) heal() {
	l.t.Helper()
	for _, r := range l.rules {
		l.ip(append([]string{"-n", l.hub, "rule", "del"}, append(r, "blackhole")...)...)
	}
	l.rules = nil
}

// startInNetns starts n's daemon inside namespace ns (ip netns exec
// execs stave in place, so n.Kill and n.Stop signal stave itself) and
// waits until its API socket and, from the hub, its portal answer.
func startInNetns(l *netLab, n *clusterNode, ns string) error {
	d := n.daemon
	if err := os.MkdirAll(d.dataDir, 0o700); err != nil {
		return err
	}
	os.Remove(d.sock)
	fmt.Fprintf(logWriter{d}, "=== %s start in %s: stave %s\n", time.Now().Format(time.RFC3339Nano), ns, strings.Join(d.args, " "))
	cmd := exec.Command(requireTool(l.t, "ip"), append([]string{"netns", "exec", ns, d.bin}, d.args...)...)
	cmd.Stdout, cmd.Stderr = logWriter{d}, logWriter{d}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: starting stave serve in %s: %v", n.name, ns, err)
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
		if dialOK("unix", d.sock) && l.reachable(n.portal) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not serving after %v (portal %s)", n.name, clusterFormTimeout, n.portal)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ack is one acknowledged write.
type ack struct {
	seq           uint64
	portal        string
	issued, acked time.Time
}

// partitionWriter writes its blocks in turn, one at a time, through the
// first of its paths that takes the write, and records every
// acknowledgement. Its fields are owned by its goroutine until stop
// returns.
type partitionWriter struct {
	name  string
	paths []*scsiPath
	first uint64 // first block
	hist  []blockHistory
	seq   uint64
	mu    struct {
		sync.Mutex
		acks  []ack
		errs  []string // first 10 failed writes
		nerrs int
	}
	cancel context.CancelFunc
	done   chan struct{}
}

// startPartitionWriter starts a writer of blocks [first, first+partitionBlocks)
// over paths. Sequence numbers start at base so that the two writers'
// are distinct.
func startPartitionWriter(name string, paths []*scsiPath, first, base uint64) *partitionWriter {
	ctx, cancel := context.WithCancel(context.Background())
	w := &partitionWriter{name: name, paths: paths, first: first, hist: make([]blockHistory, partitionBlocks), seq: base, cancel: cancel, done: make(chan struct{})}
	go w.run(ctx)
	return w
}

func (w *partitionWriter) run(ctx context.Context) {
	defer close(w.done)
	cur := 0
	for ctx.Err() == nil {
		w.seq++
		i := w.seq % partitionBlocks
		lba := w.first + i
		p := w.paths[cur]
		issued := time.Now()
		s, err := p.session(ctx)
		if err == nil {
			cctx, cancel := context.WithTimeout(ctx, partitionAttempt)
			err = writeBlock(cctx, s, lba, w.seq)
			cancel()
		}
		h := &w.hist[i]
		if err == nil {
			h.acked, h.pending = w.seq, h.pending[:0]
			a := ack{seq: w.seq, portal: p.cfg.Addr, issued: issued, acked: time.Now()}
			w.mu.Lock()
			w.mu.acks = append(w.mu.acks, a)
			w.mu.Unlock()
			continue
		}
		// Unacknowledged: it may or may not have been written.
		h.pending = append(h.pending, w.seq)
		w.mu.Lock()
		w.mu.nerrs++
		if len(w.mu.errs) < 10 && ctx.Err() == nil {
			w.mu.errs = append(w.mu.errs, fmt.Sprintf("%s seq %d lba %d via %s: %v", time.Now().Format("15:04:05.000"), w.seq, lba, p.cfg.Addr, err))
		}
		w.mu.Unlock()
		cur = (cur + 1) % len(w.paths)
		pause := 20 * time.Millisecond
		if errors.Is(err, initiator.ErrBroken) || s == nil {
			pause = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
		case <-time.After(pause):
		}
	}
}

// stop ends the writer and waits for it.
func (w *partitionWriter) stop() {
	w.cancel()
	<-w.done
}

// acks returns a copy of the acknowledgements so far.
func (w *partitionWriter) acks() []ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.mu.acks)
}

// failures returns the number of failed writes and the first ones.
func (w *partitionWriter) failures() (int, []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.mu.nerrs, slices.Clone(w.mu.errs)
}

// waitAcks waits until the writer has n acknowledgements in all.
func (w *partitionWriter) waitAcks(n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for len(w.acks()) < n {
		if time.Now().After(deadline) {
			_, errs := w.failures()
			return fmt.Errorf("writer %q: %d of %d writes acknowledged after %v; first errors: %s", w.name, len(w.acks()), n, timeout, strings.Join(errs, "; "))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// resyncLine matches the owner's log line of a finished resync.
var resyncLine = regexp.MustCompile(`replica back in sync.*BytesSent:(\d+)`)

func TestClusterPartition(t *testing.T) {
	requireE2E(t)
	testStart := time.Now()
	lab := newNetLab(t, 3)
	staveBinary(t)
	ns := make([]*clusterNode, 3)
	var initial []string
	for i := range ns {
		n := newClusterNode(t, fmt.Sprintf("n%d", i+1), lab.addr(i+1))
		// Each namespace has its own ports: fixed ones.
		n.port = 3260
		n.portal = net.JoinHostPort(n.ip, "3260")
		n.client = net.JoinHostPort(n.ip, "2379")
		n.peer = "http://" + net.JoinHostPort(n.ip, "2380")
		ns[i] = n
		initial = append(initial, n.name+"="+n.peer)
	}
	for _, n := range ns {
		n.setArgs("--initial-cluster", strings.Join(initial, ","),
			"--replication-listen", net.JoinHostPort(n.ip, "7450"))
	}
	startTogether(t, ns, func(i int, n *clusterNode) error { return startInNetns(lab, n, lab.nodes[i]) })
	ns[0].waitStates(t, map[string]string{"n1": "up", "n2": "up", "n3": "up"})
	const vol = "partition"
	ns[0].MustCLI("volume", "create", vol, "--size", strconv.Itoa(partitionVolBytes>>20)+"MiB", "--replicas", "3")
	v, err := volumeJSON(ns[0].daemon, vol)
	if err != nil {
		t.Fatal(err)
	}
	target, _ := v["target"].(string)
	if _, err := waitInSync(ns[0], vol, 3, clusterWaitTimeout); err != nil {
		t.Fatal(err)
	}
	old := ownerNode(t, ns, vol, nil, clusterWaitTimeout)
	oldIdx := slices.Index(ns, old)
	var others []*clusterNode
	for _, n := range ns {
		if n != old {
			others = append(others, n)
		}
	}
	ids := map[string]string{} // node ID -> name
	nl, err := others[0].nodes()
	if err != nil {
		t.Fatal(err)
	}
	for _, nd := range nl {
		ids[nd.ID] = nd.Name
	}
	path := func(n *clusterNode, isid byte) *scsiPath {
		p := &scsiPath{dial: lab.dial, cfg: initiator.Config{Addr: n.portal, Target: target, InitiatorName: failoverInitiator,
			ISID: [6]byte{0x80, 0x00, 0x53, 0x74, 0x60, isid}}}
		t.Cleanup(p.close)
		return p
	}
	t.Logf("owner %s (%s); cutting it from %s and %s", old.name, old.portal, others[0].name, others[1].name)

	// Writer 1 talks to the old owner's portal only; writer 2 to the
	// other two nodes (standby until one of them owns the volume).
	w1 := startPartitionWriter("old owner", []*scsiPath{path(old, 1)}, 0, 0)
	w2 := startPartitionWriter("other nodes", []*scsiPath{path(others[0], 2), path(others[1], 3)}, partitionBlocks, 1<<40)
	stopped := false
	stopAll := func() {
		if !stopped {
			w1.stop()
			w2.stop()
			stopped = true
		}
	}
	defer stopAll()
	if err := w1.waitAcks(200, clusterWaitTimeout); err != nil {
		t.Fatal(err)
	}

	// The cut. Writer 2's first acknowledgement marks the new owner's
	// start; writer 1 goes on trying the old owner for 3 s more.
	cutAt := time.Now()
	lab.cut(oldIdx + 1)
	t.Cleanup(func() {
		if lab.rules != nil {
			lab.heal()
		}
	})
	if err := w2.waitAcks(1, partitionServe); err != nil {
		t.Fatalf("after cutting %s: %v", old.name, err)
	}
	newOwner := ownerNode(t, others, vol, nil, clusterWaitTimeout)
	if err := w2.waitAcks(100, partitionServe); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	w1.stop()
	a1, a2 := w1.acks(), w2.acks()
	var lastOld, firstNew ack
	afterCut := 0
	for _, a := range a1 {
		if a.acked.After(lastOld.acked) {
			lastOld = a
		}
		if a.acked.After(cutAt) {
			afterCut++
		}
	}
	firstNew = a2[0]
	for _, a := range a2 {
		if a.acked.Before(firstNew.acked) {
			firstNew = a
		}
	}
	ms := func(d time.Duration) string { return d.Round(100 * time.Microsecond).String() }
	n1, errs1 := w1.failures()
	t.Logf("old owner %s: %d writes acknowledged (%d after the cut), last %s after the cut; %d failed",
		old.name, len(a1), afterCut, ms(lastOld.acked.Sub(cutAt)), n1)
	t.Logf("new owner %s: first write acknowledged %s after the cut (issued %s after it) through %s",
		newOwner.name, ms(firstNew.acked.Sub(cutAt)), ms(firstNew.issued.Sub(cutAt)), firstNew.portal)
	t.Logf("old owner's last acknowledgement precedes the new owner's first by %s", ms(firstNew.acked.Sub(lastOld.acked)))
	for _, e := range errs1 {
		t.Logf("old owner, unacknowledged: %s", e)
	}
	if !lastOld.acked.Before(firstNew.acked) {
		t.Errorf("the old owner %s acknowledged write %d at %s, after the new owner's first acknowledgement (write %d at %s): both acknowledged",
			old.name, lastOld.seq, lastOld.acked.Format("15:04:05.000000"), firstNew.seq, firstNew.acked.Format("15:04:05.000000"))
	}
	if firstNew.portal != newOwner.portal {
		t.Errorf("writer 2's first acknowledgement came through %s, not the new owner %s (%s)", firstNew.portal, newOwner.name, newOwner.portal)
	}

	// The heal: the old owner rejoins as a replica and is resynced while
	// writer 2 goes on.
	logFrom := len(newOwner.Log())
	healAt := time.Now()
	lab.heal()
	newOwner.waitStates(t, map[string]string{old.name: "up"})
	var bytesSent int64 = -1
	deadline := time.Now().Add(partitionRejoin)
	for bytesSent < 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no \"replica back in sync\" line for %s in %s's log within %v of the heal", old.name, newOwner.name, partitionRejoin)
		}
		time.Sleep(200 * time.Millisecond)
		for _, line := range strings.Split(newOwner.Log()[logFrom:], "\n") {
			m := resyncLine.FindStringSubmatch(line)
			if m == nil || !lineNamesNode(line, old.name, ids) {
				continue
			}
			bytesSent, _ = strconv.ParseInt(m[1], 10, 64)
			t.Logf("resync %s after the heal: %s", ms(time.Since(healAt)), strings.TrimSpace(line))
		}
	}
	if _, err := waitInSync(newOwner, vol, 3, partitionRejoin); err != nil {
		t.Fatal(err)
	}
	// The old owner's own view of the record catches up once its etcd
	// member and its ownership watch are back.
	for end := time.Now().Add(partitionRejoin); ; {
		v, err = volumeJSON(old.daemon, vol)
		if err != nil {
			t.Fatal(err)
		}
		o := volumeOwner(v)
		isr, _ := volumeISR(v)
		if nodeMatches(newOwner, o, ids) && len(isr) == 3 {
			t.Logf("the old owner %s sees owner %s and ISR %v %s after the heal", old.name, newOwner.name, isr, ms(time.Since(healAt)))
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the old owner %s still reports owner %q and ISR %v %v after the heal, want %s and all three",
				old.name, o, isr, partitionRejoin, newOwner.name)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("resync of %s sent %d bytes (%.1f%% of the %d MiB volume)", old.name, bytesSent, 100*float64(bytesSent)/partitionVolBytes, partitionVolBytes>>20)
	if bytesSent <= 0 || bytesSent > partitionVolBytes/8 {
		t.Errorf("resync of %s sent %d bytes; want some, and far less than the %d-byte volume (only the regions written during the partition)", old.name, bytesSent, partitionVolBytes)
	}
	if err := w2.waitAcks(len(w2.acks())+50, clusterWaitTimeout); err != nil {
		t.Errorf("after the heal: %v", err)
	}
	stopAll()

	// Every acknowledged write is there, read through the owner.
	rp := path(newOwner, 9)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const chunk = 64
	buf := make([]byte, chunk*failoverBlock)
	var bad []string
	nbad := 0
	for lba := uint64(0); lba < partitionVolBytes/failoverBlock; lba += chunk {
		if err := rp.eventually(ctx, func(ctx context.Context, s *initiator.Session) error { return readBlocks(ctx, s, lba, buf) }); err != nil {
			t.Fatalf("reading blocks %d+%d through %s: %v", lba, chunk, newOwner.name, err)
		}
		for i := range uint64(chunk) {
			l := lba + i
			var h blockHistory
			switch {
			case l < partitionBlocks:
				h = w1.hist[l]
			case l < 2*partitionBlocks:
				h = w2.hist[l-partitionBlocks]
			}
			if msg := checkBlock(l, buf[i*failoverBlock:(i+1)*failoverBlock], h); msg != "" {
				nbad++
				if len(bad) < 20 {
					bad = append(bad, msg)
				}
			}
		}
	}
	n2, _ := w2.failures()
	t.Logf("writes: old owner %d acknowledged, %d failed; other nodes %d acknowledged, %d failed; %d blocks verified, %d bad",
		len(a1), n1, len(w2.acks()), n2, partitionVolBytes/failoverBlock, nbad)
	if nbad > 0 {
		t.Errorf("%d blocks do not hold their last acknowledged write (or a later unacknowledged one):\n%s", nbad, strings.Join(bad, "\n"))
	}
	t.Logf("whole test %v", time.Since(testStart).Round(time.Millisecond))
}

// lineNamesNode reports whether a log line names node name, by name or
// by one of its IDs.
func lineNamesNode(line, name string, ids map[string]string) bool {
	if strings.Contains(line, "node="+name+" ") || strings.Contains(line, "Node:"+name+" ") {
		return true
	}
	for id, n := range ids {
		if n == name && (strings.Contains(line, "node="+id) || strings.Contains(line, "Node:"+id+" ")) {
			return true
		}
	}
	return false
}
