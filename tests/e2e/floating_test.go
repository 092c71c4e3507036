package e2e

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"stave.dev/stave/internal/initiator"
)

// The floating portal address test (issue 6): a host without multipath
// logs in to one address, the volume's floating IP, and whichever node
// owns the volume answers on it. kill -9 the owner: the address moves to
// the new owner, the host's single session re-dials the same address and
// resumes, no acknowledged write is lost.
//
// The network is the partition test's (partition_test.go: each daemon in
// a namespace of its own, routed through a hub namespace on 10.213.i.0/24,
// which carries etcd, replication and the nodes' own portals) plus one
// shared L2 segment for the floating address:
//
//	   hub:    br0 10.214.0.254/24, bridge of ports b1..b3
//	   node i: eth1 10.214.0.i/24 (veth peer of bi), --floating-interface eth1
//	   daemon: --portal 0.0.0.0:3260 --advertise 10.213.i.1:3260, so the
//	           portal answers on the floating address once it is added
//	   volume: --floating-ip 10.214.0.100/24
//
// The client is the test's plain single-session initiator, dialling
// 10.214.0.100:3260 from the hub (through br0); an AF_PACKET socket on br0
// records the gratuitous ARPs for the address. The checks:
//
//  1. The owner, and only the owner, holds the address on eth1, with a
//     lifetime of at most the owner lease TTL, and announced it.
//  2. After kill -9 of the owner the writer resumes through the same
//     address (the time from the kill to its first acknowledged write is
//     logged, not asserted); the new owner holds the address and announced
//     it, the third node neither; the killed node's namespace, whose
//     daemon cannot release it, loses it when its lifetime lapses (TTL +
//     the kernel's 1 s check granularity); the hub's neighbour entry for
//     it is the new owner's eth1 MAC.
//  3. The killed node, restarted, rejoins as a replica and does not hold
//     the address.
//  4. Every acknowledged write reads back through the floating address.
//  5. A graceful stop of the owner removes the address at once (released,
//     not lapsed), and the next owner claims and announces it.

const (
	floatNet    = "10.214.0"
	floatIP     = floatNet + ".100"
	floatPrefix = floatIP + "/24"
	floatLink   = "eth1" // node side of the segment
	floatBridge = "br0"  // hub side
	floatTTL    = 2 * time.Second
	// floatLapse bounds how long the killed node keeps the address after
	// the kill: its last renewal was at most one keepalive before it, the
	// lifetime is the TTL, the kernel checks lifetimes at least every
	// second (devinet.c check_lifetime), plus 1 s for a loaded host.
	floatLapse  = floatTTL + 2*time.Second
	floatResume = 30 * time.Second // the writer acknowledges again after the kill
	floatBudget = 90 * time.Second // the whole test
	floatVol    = "floating"
)

// requireNetns skips t when it cannot create network namespaces (not
// root, or no netns support); any later failure of the lab is an error.
func requireNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		t.Skipf("no network namespaces: %v", err)
	}
	ipBin := requireTool(t, "ip")
	probe := fmt.Sprintf("stave-e2e-%d-probe", os.Getpid())
	if out, err := exec.Command(ipBin, "netns", "add", probe).CombinedOutput(); err != nil {
		t.Skipf("cannot create a network namespace: %v %s", err, out)
	}
	if out, err := exec.Command(ipBin, "netns", "del", probe).CombinedOutput(); err != nil {
		t.Fatalf("deleting probe namespace %s: %v\n%s", probe, err, out)
	}
}

// ipOut runs ip(8) with args and returns its output, failing t on error.
func (l *netLab) ipOut(args ...string) string {
	l.t.Helper()
	out, err := exec.Command(requireTool(l.t, "ip"), args...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// addSegment adds the shared L2 segment of the file comment: a bridge in
// the hub and one port per node. The namespaces' deletion removes it.
func (l *netLab) addSegment() {
	l.t.Helper()
	l.ip("-n", l.hub, "link", "add", floatBridge, "type", "bridge")
	l.ip("-n", l.hub, "addr", "add", floatNet+".254/24", "dev", floatBridge)
	l.ip("-n", l.hub, "link", "set", floatBridge, "up")
	for i, ns := range l.nodes {
		port := fmt.Sprintf("b%d", i+1)
		l.ip("link", "add", port, "netns", l.hub, "type", "veth", "peer", "name", floatLink, "netns", ns)
		l.ip("-n", l.hub, "link", "set", port, "master", floatBridge)
		l.ip("-n", l.hub, "link", "set", port, "up")
		l.ip("-n", ns, "addr", "add", fmt.Sprintf("%s.%d/24", floatNet, i+1), "dev", floatLink)
		l.ip("-n", ns, "link", "set", floatLink, "up")
	}
}

// ipAddrInfo is one address of `ip -j addr show`.
type ipAddrInfo struct {
	Local string `json:"local"`
	Valid uint64 `json:"valid_life_time"`
}

// floatHeld reports whether node i (1-based) holds the floating address,
// and on which interface and with which remaining lifetime (seconds).
func (l *netLab) floatHeld(i int) (held bool, link string, valid uint64) {
	l.t.Helper()
	var links []struct {
		Name  string       `json:"ifname"`
		Addrs []ipAddrInfo `json:"addr_info"`
	}
	out := l.ipOut("-n", l.nodes[i-1], "-j", "-4", "addr", "show")
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		l.t.Fatalf("ip -j addr show in %s: %v\n%s", l.nodes[i-1], err, out)
	}
	for _, k := range links {
		for _, a := range k.Addrs {
			if a.Local == floatIP {
				return true, k.Name, a.Valid
			}
		}
	}
	return false, "", 0
}

// floatHolders returns the nodes (1-based) that hold the floating address,
// with a description of each ("n2 on eth1, 2 s left").
func (l *netLab) floatHolders() ([]int, string) {
	l.t.Helper()
	var idx []int
	var desc []string
	for i := 1; i <= len(l.nodes); i++ {
		if held, link, valid := l.floatHeld(i); held {
			idx = append(idx, i)
			desc = append(desc, fmt.Sprintf("n%d on %s, valid_lft %d s", i, link, valid))
		}
	}
	if len(desc) == 0 {
		return nil, "no node"
	}
	return idx, strings.Join(desc, "; ")
}

// linkMAC returns the MAC address of the floating link of node i.
func (l *netLab) linkMAC(i int) string {
	l.t.Helper()
	var links []struct {
		Address string `json:"address"`
	}
	out := l.ipOut("-n", l.nodes[i-1], "-j", "link", "show", floatLink)
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		l.t.Fatalf("ip -j link show %s in %s: %v\n%s", floatLink, l.nodes[i-1], err, out)
	}
	return links[0].Address
}

// hubNeighbour returns the hub's neighbour entry for the floating
// address: its MAC and state ("" if none).
func (l *netLab) hubNeighbour() (mac, state string) {
	l.t.Helper()
	var ns []struct {
		LLAddr string   `json:"lladdr"`
		State  []string `json:"state"`
	}
	out := l.ipOut("-n", l.hub, "-j", "neigh", "show", floatIP, "dev", floatBridge)
	if err := json.Unmarshal([]byte(out), &ns); err != nil {
		l.t.Fatalf("ip -j neigh show %s in the hub: %v\n%s", floatIP, err, out)
	}
	if len(ns) == 0 {
		return "", ""
	}
	return ns[0].LLAddr, strings.Join(ns[0].State, ",")
}

// garp is one gratuitous ARP for the floating address seen on the bridge.
type garp struct {
	at  time.Time
	mac string // sender hardware address
}

// arpWatch records the gratuitous ARPs for the floating address (sender
// and target protocol address both floatIP) that cross the hub's bridge,
// from an AF_PACKET socket on it. Its goroutine ends at stop.
type arpWatch struct {
	fd   int
	done chan struct{}
	mu   struct {
		sync.Mutex
		seen []garp
		err  error // the read error that ended the watch, if any
	}
	stopped atomic.Bool
}

// Offsets in an Ethernet frame carrying an ARP packet for IPv4 (RFC 826).
const (
	arpFrameLen = 14 + 28
	arpSHA      = 14 + 8
	arpSPA      = 14 + 14
	arpTPA      = 14 + 24
)

// watchARP opens the socket in the hub and starts reading; t.Cleanup
// stops it.
func (l *netLab) watchARP(t *testing.T) *arpWatch {
	t.Helper()
	w := &arpWatch{fd: -1, done: make(chan struct{})}
	var err error
	if herr := l.inHub(func() {
		var ifi *net.Interface
		if ifi, err = net.InterfaceByName(floatBridge); err != nil {
			return
		}
		proto := htons(unix.ETH_P_ARP)
		if w.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto)); err != nil {
			return
		}
		err = unix.Bind(w.fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index})
	}); herr != nil {
		err = herr
	}
	if err == nil {
		// A timeout lets the reader see stop.
		err = unix.SetsockoptTimeval(w.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 200_000})
	}
	if err != nil {
		if w.fd >= 0 {
			unix.Close(w.fd)
		}
		t.Fatalf("watching ARP on the hub's %s: %v", floatBridge, err)
	}
	go w.run()
	t.Cleanup(w.stop)
	return w
}

func (w *arpWatch) run() {
	defer close(w.done)
	want := netip.MustParseAddr(floatIP).As4()
	b := make([]byte, 1500)
	for !w.stopped.Load() {
		n, _, err := unix.Recvfrom(w.fd, b, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			w.mu.Lock()
			w.mu.err = err
			w.mu.Unlock()
			return
		}
		if n < arpFrameLen || binary.BigEndian.Uint16(b[12:]) != unix.ETH_P_ARP ||
			[4]byte(b[arpSPA:arpSPA+4]) != want || [4]byte(b[arpTPA:arpTPA+4]) != want {
			continue
		}
		g := garp{at: time.Now(), mac: net.HardwareAddr(b[arpSHA : arpSHA+6]).String()}
		w.mu.Lock()
		w.mu.seen = append(w.mu.seen, g)
		w.mu.Unlock()
	}
}

// stop ends the reader and closes the socket.
func (w *arpWatch) stop() {
	if w.stopped.Swap(true) {
		return
	}
	<-w.done
	unix.Close(w.fd)
}

// since returns the gratuitous ARPs seen after t0, and the error that
// ended the watch, if any.
func (w *arpWatch) since(t0 time.Time) ([]garp, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []garp
	for _, g := range w.mu.seen {
		if g.at.After(t0) {
			out = append(out, g)
		}
	}
	return out, w.mu.err
}

// htons converts v to network byte order, as AF_PACKET wants.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

func TestClusterFloatingIP(t *testing.T) {
	requireE2E(t)
	requireNetns(t)
	testStart := time.Now()
	deadline := testStart.Add(floatBudget)
	// within caps a wait at what is left of the test's budget.
	within := func(d time.Duration) time.Duration { return max(0, min(d, time.Until(deadline))) }
	lab := newNetLab(t, 3)
	lab.addSegment()
	arps := lab.watchARP(t)
	staveBinary(t)
	ns := make([]*clusterNode, 3)
	var initial []string
	for i := range ns {
		n := newClusterNode(t, fmt.Sprintf("n%d", i+1), lab.addr(i+1))
		n.port = 3260
		n.portal = net.JoinHostPort(n.ip, "3260") // the node's own address; the listener is a wildcard
		n.client = net.JoinHostPort(n.ip, "2379")
		n.peer = "http://" + net.JoinHostPort(n.ip, "2380")
		ns[i] = n
		initial = append(initial, n.name+"="+n.peer)
	}
	for _, n := range ns {
		n.setArgs("--initial-cluster", strings.Join(initial, ","),
			"--replication-listen", net.JoinHostPort(n.ip, "7450"),
			"--advertise", n.portal,
			"--floating-interface", floatLink,
			"--owner-lease-ttl", floatTTL.String())
		// The portal listens on every address, the floating one included.
		i := slices.Index(n.args, "--portal")
		n.args[i+1] = "0.0.0.0:3260"
	}
	startTogether(t, ns, func(i int, n *clusterNode) error { return startInNetns(lab, n, lab.nodes[i]) })
	ns[0].waitStates(t, map[string]string{"n1": "up", "n2": "up", "n3": "up"})
	ns[0].MustCLI("volume", "create", floatVol, "--size", "64MiB", "--replicas", "3", "--floating-ip", floatPrefix)
	v, err := volumeJSON(ns[0].daemon, floatVol)
	if err != nil {
		t.Fatal(err)
	}
	target, _ := v["target"].(string)
	if r, _ := v["replication"].(map[string]any); r == nil || r["floating_ip"] != floatPrefix {
		t.Errorf("volume show does not report floating_ip %s: %v", floatPrefix, v["replication"])
	}
	if _, err := waitInSync(ns[0], floatVol, 3, within(clusterWaitTimeout)); err != nil {
		t.Fatal(err)
	}
	old := ownerNode(t, ns, floatVol, nil, within(clusterWaitTimeout))
	oldIdx := slices.Index(ns, old) + 1
	ms := func(d time.Duration) string { return d.Round(time.Millisecond).String() }

	// 1. The owner holds the address (claimed in the background when it
	// started serving), nobody else does.
	claimDeadline := time.Now().Add(within(clusterWaitTimeout))
	for {
		holders, desc := lab.floatHolders()
		if slices.Equal(holders, []int{oldIdx}) {
			t.Logf("owner %s holds the floating address: %s", old.name, desc)
			if _, link, valid := lab.floatHeld(oldIdx); link != floatLink || valid > uint64(floatTTL/time.Second) {
				t.Errorf("owner %s holds %s on %s with valid_lft %d s; want it on %s with a lifetime of at most the lease TTL (%v)",
					old.name, floatIP, link, valid, floatLink, floatTTL)
			}
			break
		}
		if time.Now().After(claimDeadline) {
			t.Fatalf("floating address %s held by %s, want owner %s only (its log:\n%s)", floatIP, desc, old.name, grepLines(old.Log(), "floating"))
		}
		time.Sleep(100 * time.Millisecond)
	}

	if err := waitGARP(arps, testStart, lab.linkMAC(oldIdx), within(2*time.Second)); err != nil {
		t.Errorf("owner %s: %v", old.name, err)
	}

	// The writer: one plain session to the floating address, dialled
	// again whenever it breaks (partitionWriter's loop).
	floating := net.JoinHostPort(floatIP, "3260")
	path := func(isid byte) *scsiPath {
		p := &scsiPath{dial: lab.dial, cfg: initiator.Config{Addr: floating, Target: target, InitiatorName: failoverInitiator,
			ISID: [6]byte{0x80, 0x00, 0x53, 0x74, 0x70, isid}}}
		t.Cleanup(p.close)
		return p
	}
	w := startPartitionWriter("floating", []*scsiPath{path(1)}, 0, 0)
	stopped := false
	stopWriter := func() {
		if !stopped {
			w.stop()
			stopped = true
		}
	}
	defer stopWriter()
	if err := w.waitAcks(100, within(clusterWaitTimeout)); err != nil {
		t.Fatal(err)
	}
	if mac, state := lab.hubNeighbour(); mac != lab.linkMAC(oldIdx) {
		t.Errorf("before the kill the hub's neighbour entry for %s is %q (%s), want owner %s's %s MAC %s", floatIP, mac, state, old.name, floatLink, lab.linkMAC(oldIdx))
	}

	// 2. kill -9 the owner; the writer re-dials the same address.
	before := len(w.acks())
	killAt := time.Now()
	old.Kill()
	// A write issued before the daemon was gone may still have been
	// acknowledged by it: the first write of the new owner is the first
	// acknowledged one issued after.
	dead := time.Now()
	t.Logf("killed owner %s (kill -9 and exit took %s)", old.name, ms(dead.Sub(killAt)))
	// Until the writer resumes and the killed node's namespace loses the
	// address (its daemon cannot release it; the lifetime does), poll both.
	var first ack
	heldAtKill, _, _ := lab.floatHeld(oldIdx)
	var lapsed time.Duration // kill to the address gone from the killed node; 0: not yet
	lapseChecked := !heldAtKill
	for first.seq == 0 || !lapseChecked {
		since := time.Since(killAt)
		if first.seq == 0 {
			for _, a := range w.acks()[before:] {
				if a.issued.After(dead) {
					first = a
					break
				}
			}
			if first.seq == 0 && since > within(floatResume) {
				_, errs := w.failures()
				t.Fatalf("no write acknowledged through %s within %v of killing owner %s; holders: %s; first errors: %s",
					floating, floatResume, old.name, holdersDesc(lab), strings.Join(errs, "; "))
			}
		}
		if !lapseChecked {
			held, _, valid := lab.floatHeld(oldIdx)
			switch {
			case !held:
				lapsed, lapseChecked = since, true
			case since > floatLapse:
				t.Errorf("the killed node %s still holds %s %s after the kill (valid_lft %d s), want it gone within the lease TTL %v plus the kernel's lifetime check",
					old.name, floatIP, ms(since), valid, floatTTL)
				lapseChecked = true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	switch {
	case heldAtKill && lapsed > 0:
		t.Logf("the killed node %s's namespace kept the address until its lifetime lapsed, %s after the kill (lease TTL %v)", old.name, ms(lapsed), floatTTL)
	case !heldAtKill:
		t.Logf("the killed node %s's namespace no longer held the address right after the kill", old.name)
	}
	resumed := first.acked.Sub(killAt)
	t.Logf("kill -9 of %s to the first write acknowledged through %s: %s (write %d, issued %s after the kill)",
		old.name, floating, ms(resumed), first.seq, ms(first.issued.Sub(killAt)))
	saveLog(t, "floating-resume.txt", fmt.Sprintf("kill -9 to first acknowledged write through the floating address: %d ms\n", resumed.Milliseconds()))
	var others []*clusterNode
	for _, n := range ns {
		if n != old {
			others = append(others, n)
		}
	}
	newOwner := ownerNode(t, others, floatVol, nil, within(clusterWaitTimeout))
	newIdx := slices.Index(ns, newOwner) + 1
	thirdIdx := 6 - oldIdx - newIdx
	if held, link, _ := lab.floatHeld(newIdx); !held || link != floatLink {
		t.Errorf("new owner %s does not hold %s on %s after serving a write through it: %s", newOwner.name, floatIP, floatLink, holdersDesc(lab))
	}
	if held, _, _ := lab.floatHeld(thirdIdx); held {
		t.Errorf("n%d, not the owner, holds %s: %s", thirdIdx, floatIP, holdersDesc(lab))
	}
	if err := waitGARP(arps, dead, lab.linkMAC(newIdx), within(2*time.Second)); err != nil {
		t.Errorf("new owner %s: %v", newOwner.name, err)
	}
	if gs, _ := arps.since(dead); len(gs) > 0 {
		t.Logf("gratuitous ARPs for %s after the kill: %d, the first %s after it from %s", floatIP, len(gs), ms(gs[0].at.Sub(dead)), gs[0].mac)
		for _, g := range gs {
			if g.mac != lab.linkMAC(newIdx) {
				t.Errorf("gratuitous ARP for %s from %s at %s, not from the new owner %s (%s)", floatIP, g.mac, g.at.Format("15:04:05.000"), newOwner.name, lab.linkMAC(newIdx))
				break
			}
		}
	}
	if mac, state := lab.hubNeighbour(); mac != lab.linkMAC(newIdx) {
		t.Errorf("after the move the hub's neighbour entry for %s is %q (%s), want new owner %s's %s MAC %s (old owner's: %s)",
			floatIP, mac, state, newOwner.name, floatLink, lab.linkMAC(newIdx), lab.linkMAC(oldIdx))
	}
	if err := w.waitAcks(len(w.acks())+100, within(clusterWaitTimeout)); err != nil {
		t.Fatalf("after the move: %v", err)
	}

	// 3. Restart the killed node: it rejoins as a replica and does not
	// hold the address.
	if err := startInNetns(lab, old, lab.nodes[oldIdx-1]); err != nil {
		t.Fatal(err)
	}
	if _, err := waitInSync(newOwner, floatVol, 3, within(clusterWaitTimeout)); err != nil {
		t.Fatal(err)
	}
	if err := w.waitAcks(len(w.acks())+50, within(clusterWaitTimeout)); err != nil {
		t.Errorf("after the restart of %s: %v", old.name, err)
	}
	if o := ownerNode(t, ns, floatVol, nil, within(clusterWaitTimeout)); o != newOwner {
		t.Errorf("after the restart of %s the owner is %s, want %s still", old.name, o.name, newOwner.name)
	}
	if holders, desc := lab.floatHolders(); !slices.Equal(holders, []int{newIdx}) {
		t.Errorf("after the restart of %s the floating address is held by %s, want owner %s only", old.name, desc, newOwner.name)
	} else {
		t.Logf("after the restart of %s: %s", old.name, desc)
	}
	stopWriter()

	// 4. Every acknowledged write is there, read through the floating
	// address (blocks past the writer's must be zero).
	rp := path(2)
	ctx, cancel := context.WithTimeout(context.Background(), within(time.Minute))
	defer cancel()
	const chunk = 64
	buf := make([]byte, chunk*failoverBlock)
	var bad []string
	nbad := 0
	for lba := uint64(0); lba < 2*partitionBlocks; lba += chunk {
		if err := rp.eventually(ctx, func(ctx context.Context, s *initiator.Session) error { return readBlocks(ctx, s, lba, buf) }); err != nil {
			t.Fatalf("reading blocks %d+%d through %s: %v", lba, chunk, floating, err)
		}
		for i := range uint64(chunk) {
			l := lba + i
			var h blockHistory
			if l < partitionBlocks {
				h = w.hist[l]
			}
			if msg := checkBlock(l, buf[i*failoverBlock:(i+1)*failoverBlock], h); msg != "" {
				nbad++
				if len(bad) < 20 {
					bad = append(bad, msg)
				}
			}
		}
	}
	nf, errs1 := w.failures()
	for _, e := range errs1 {
		t.Logf("unacknowledged: %s", e)
	}
	t.Logf("writes through %s: %d acknowledged, %d failed; %d blocks verified, %d bad",
		floating, len(w.acks()), nf, 2*partitionBlocks, nbad)
	if nbad > 0 {
		t.Errorf("%d blocks do not hold their last acknowledged write (or a later unacknowledged one):\n%s", nbad, strings.Join(bad, "\n"))
	}

	// 5. A graceful stop releases the address at once (a daemon that did
	// not would leave it for its lifetime), and the next owner claims it.
	stopAt := time.Now()
	newOwner.Stop()
	t.Logf("graceful stop of owner %s took %s", newOwner.name, ms(time.Since(stopAt)))
	if held, _, valid := lab.floatHeld(newIdx); held {
		t.Errorf("owner %s stopped gracefully but its namespace still holds %s (valid_lft %d s): not released", newOwner.name, floatIP, valid)
	}
	var rest []*clusterNode
	for _, n := range ns {
		if n != newOwner {
			rest = append(rest, n)
		}
	}
	next := ownerNode(t, rest, floatVol, nil, within(clusterWaitTimeout))
	nextIdx := slices.Index(ns, next) + 1
	for end := time.Now().Add(within(5 * time.Second)); ; {
		holders, desc := lab.floatHolders()
		if slices.Equal(holders, []int{nextIdx}) {
			t.Logf("after the graceful stop of %s, %s owns the volume and holds the address %s later: %s", newOwner.name, next.name, ms(time.Since(stopAt)), desc)
			break
		}
		if time.Now().After(end) {
			t.Errorf("after the graceful stop of %s the floating address is held by %s, want the next owner %s only", newOwner.name, desc, next.name)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := waitGARP(arps, stopAt, lab.linkMAC(nextIdx), within(2*time.Second)); err != nil {
		t.Errorf("next owner %s: %v", next.name, err)
	} else if gs, _ := arps.since(stopAt); len(gs) > 0 {
		t.Logf("next owner %s announced the address %s after the stop began", next.name, ms(gs[0].at.Sub(stopAt)))
	}
	if err := rp.eventually(ctx, func(ctx context.Context, s *initiator.Session) error { return readBlocks(ctx, s, 0, buf) }); err != nil {
		t.Errorf("reading through %s after the graceful stop of %s: %v", floating, newOwner.name, err)
	} else {
		for i := range uint64(chunk) {
			if msg := checkBlock(i, buf[i*failoverBlock:(i+1)*failoverBlock], w.hist[i]); msg != "" {
				t.Errorf("through %s on %s: %s", floating, next.name, msg)
			}
		}
	}
	t.Logf("whole test %v", time.Since(testStart).Round(time.Millisecond))
}

// waitGARP waits until w has seen a gratuitous ARP for the floating
// address from mac after t0.
func waitGARP(w *arpWatch, t0 time.Time, mac string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		gs, err := w.since(t0)
		for _, g := range gs {
			if g.mac == mac {
				return nil
			}
		}
		if err != nil {
			return fmt.Errorf("watching ARP on the hub's %s: %w", floatBridge, err)
		}
		if time.Now().After(deadline) {
			var from []string
			for _, g := range gs {
				from = append(from, g.mac)
			}
			return fmt.Errorf("no gratuitous ARP for %s from its %s MAC %s seen on the hub's %s within %v (seen from: %v)", floatIP, floatLink, mac, floatBridge, timeout, from)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// holdersDesc describes which nodes hold the floating address.
func holdersDesc(l *netLab) string {
	_, desc := l.floatHolders()
	return desc
}
