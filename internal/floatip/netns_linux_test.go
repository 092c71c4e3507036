package floatip

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// These tests build their own network namespaces, named
// stave-fip-<pid>-<role>, and delete them (and every link in them) in
// t.Cleanup. They never touch the root namespace or anyone else's.
//
//	ns host: br0 10.99.0.1/24 fd00:99::1/64, ports va and vb
//	ns a:    eth0 10.99.0.2/24 fd00:99::2/64 (peer of va)
//	ns b:    eth0 10.99.0.3/24 fd00:99::3/64 (peer of vb)

// testTimeout bounds each namespace test.
const testTimeout = 25 * time.Second

// testNS is one network namespace of a test.
type testNS struct {
	name string
	ns   netns.NsHandle
	h    *netlink.Handle // netlink in ns, usable from any goroutine
}

// skipUnlessRoot skips t when it cannot create network namespaces.
func skipUnlessRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		t.Skipf("no network namespaces: %v", err)
	}
}

// inNS runs fn on a new OS thread that entered ns and returns its error.
// The goroutine exits without UnlockOSThread, so the runtime ends the
// thread rather than reuse it in the wrong namespace.
func inNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if ns.IsOpen() {
			if err := netns.Set(ns); err != nil {
				errc <- fmt.Errorf("entering netns: %w", err)
				return
			}
		}
		errc <- fn()
	}()
	return <-errc
}

// newNS creates the namespace stave-fip-<pid>-role, deleted in t.Cleanup.
// It skips t if namespaces cannot be created at all.
func newNS(t *testing.T, role string) *testNS {
	t.Helper()
	name := fmt.Sprintf("stave-fip-%d-%s", os.Getpid(), role)
	_ = netns.DeleteNamed(name) // a leftover of this very name only
	var ns netns.NsHandle
	err := inNS(netns.None(), func() (err error) {
		ns, err = netns.NewNamed(name)
		return err
	})
	if err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) {
			t.Skipf("cannot create network namespace %s: %v", name, err)
		}
		t.Fatalf("creating network namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("deleting network namespace %s: %v", name, err)
		}
	})
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", name, err)
	}
	t.Cleanup(h.Close)
	n := &testNS{name: name, ns: ns, h: h}
	n.up(t, "lo")
	return n
}

// link returns the link called name in n.
func (n *testNS) link(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := n.h.LinkByName(name)
	if err != nil {
		t.Fatalf("%s: link %s: %v", n.name, name, err)
	}
	return l
}

// up sets the link called name up.
func (n *testNS) up(t *testing.T, name string) {
	t.Helper()
	if err := n.h.LinkSetUp(n.link(t, name)); err != nil {
		t.Fatalf("%s: %s up: %v", n.name, name, err)
	}
}

// addAddr adds p to the link called name, without IPv6 DAD.
func (n *testNS) addAddr(t *testing.T, name, p string) {
	t.Helper()
	a, err := netlink.ParseAddr(p)
	if err != nil {
		t.Fatal(err)
	}
	a.Flags = unix.IFA_F_NODAD
	if err := n.h.AddrAdd(n.link(t, name), a); err != nil {
		t.Fatalf("%s: adding %s to %s: %v", n.name, p, name, err)
	}
}

// hasAddr reports whether a is on the link called name.
func (n *testNS) hasAddr(t *testing.T, name string, a netip.Addr) bool {
	t.Helper()
	addrs, err := n.h.AddrList(n.link(t, name), netlink.FAMILY_ALL)
	if err != nil {
		t.Fatalf("%s: listing addresses: %v", n.name, err)
	}
	for _, x := range addrs {
		if x.IP.Equal(net.IP(a.AsSlice())) {
			return true
		}
	}
	return false
}

// neighMAC returns the link-layer address of a in the neighbour table of
// the link called name, or "" if there is no entry.
func (n *testNS) neighMAC(t *testing.T, name string, a netip.Addr) string {
	t.Helper()
	family := netlink.FAMILY_V4
	if a.Is6() {
		family = netlink.FAMILY_V6
	}
	ns, err := n.h.NeighList(n.link(t, name).Attrs().Index, family)
	if err != nil {
		t.Fatalf("%s: listing neighbours: %v", n.name, err)
	}
	for _, x := range ns {
		if x.IP.Equal(net.IP(a.AsSlice())) {
			return x.HardwareAddr.String()
		}
	}
	return ""
}

// testNet is the host and two nodes on one bridge.
type testNet struct {
	host, a, b *testNS
	macA, macB string // MACs of eth0 in a and b
}

// newTestNet builds the topology drawn at the top of this file.
func newTestNet(t *testing.T) *testNet {
	host := newNS(t, "host")
	off := false
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}, MulticastSnooping: &off}
	if err := host.h.LinkAdd(br); err != nil {
		t.Skipf("cannot create a bridge: %v", err)
	}
	host.up(t, "br0")
	tn := &testNet{host: host}
	for i, role := range []string{"a", "b"} {
		node := newNS(t, role)
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: "v" + role, MasterIndex: host.link(t, "br0").Attrs().Index},
			PeerName:      "eth0",
			PeerNamespace: netlink.NsFd(node.ns),
		}
		if err := host.h.LinkAdd(veth); err != nil {
			t.Fatalf("creating veth pair for %s: %v", role, err)
		}
		host.up(t, "v"+role)
		node.up(t, "eth0")
		node.addAddr(t, "eth0", fmt.Sprintf("10.99.0.%d/24", i+2))
		node.addAddr(t, "eth0", fmt.Sprintf("fd00:99::%d/64", i+2))
		mac := node.link(t, "eth0").Attrs().HardwareAddr.String()
		if role == "a" {
			tn.a, tn.macA = node, mac
		} else {
			tn.b, tn.macB = node, mac
		}
	}
	host.addAddr(t, "br0", "10.99.0.1/24")
	host.addAddr(t, "br0", "fd00:99::1/64")
	return tn
}

// serve listens on addr in n and answers every connection with reply and
// a newline, until the returned stop (also run by t.Cleanup).
func serve(t *testing.T, n *testNS, addr netip.AddrPort, reply string) (stop func()) {
	t.Helper()
	var ln net.Listener
	if err := inNS(n.ns, func() (err error) {
		ln, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		t.Fatalf("%s: listen on %s: %v", n.name, addr, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = c.Write([]byte(reply + "\n"))
			_ = c.Close()
		}
	})
	stop = sync.OnceFunc(func() {
		_ = ln.Close()
		wg.Wait()
	})
	t.Cleanup(stop)
	return stop
}

// ask connects from n to addr and returns the line the server sent.
// Each attempt is bounded; it tries again until ctx ends.
func ask(ctx context.Context, n *testNS, addr netip.AddrPort) (string, error) {
	var last error
	for ctx.Err() == nil {
		var c net.Conn
		err := inNS(n.ns, func() (err error) {
			actx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			var d net.Dialer
			c, err = d.DialContext(actx, "tcp", addr.String())
			return err
		})
		if err != nil {
			last = err
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		_ = c.Close()
		if err == nil {
			return strings.TrimSpace(line), nil
		}
		last = err
	}
	return "", fmt.Errorf("%w (last attempt: %v)", ctx.Err(), last)
}

// waitNeigh waits until the host's neighbour entry for a on br0 has mac
// and returns the last MAC seen.
func waitNeigh(ctx context.Context, t *testing.T, host *testNS, a netip.Addr, mac string) string {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		got := host.neighMAC(t, "br0", a)
		if got == mac {
			return got
		}
		select {
		case <-ctx.Done():
			return got
		case <-tick.C:
		}
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// TestMoveBetweenNamespaces claims a floating address in node a, checks
// that the host reaches a server there, releases it, claims it in node b,
// and checks that the host's neighbour entry points at b at once, and
// reaches b's server, without the host flushing its neighbour cache.
func TestMoveBetweenNamespaces(t *testing.T) {
	skipUnlessRoot(t)
	tn := newTestNet(t)
	for _, tc := range []struct{ name, prefix string }{
		{"ipv4", "10.99.0.100/24"},
		{"ipv6", "fd00:99::100/64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "ipv6" {
				if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
					t.Skip("IPv6 is disabled in this kernel")
				}
			}
			ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
			defer cancel()
			p := netip.MustParsePrefix(tc.prefix)
			addr := netip.AddrPortFrom(p.Addr(), 3260)
			cfg := Config{Link: "eth0", Prefix: p, Logger: testLogger(t), Interval: 20 * time.Millisecond}
			release := func(n *testNS) {
				if err := inNS(n.ns, func() error { return Release(cfg) }); err != nil {
					t.Errorf("%s: Release: %v", n.name, err)
				}
			}
			t.Cleanup(func() { release(tn.a); release(tn.b) })

			// 1. Node a owns the volume.
			if err := inNS(tn.a.ns, func() error { return Claim(ctx, cfg) }); err != nil {
				t.Fatalf("a: Claim: %v", err)
			}
			if !tn.a.hasAddr(t, "eth0", p.Addr()) {
				t.Fatalf("a: %s not on eth0 after Claim", p)
			}
			stopA := serve(t, tn.a, addr, "a")
			if got, err := ask(ctx, tn.host, addr); err != nil || got != "a" {
				t.Fatalf("host → %s: got %q, %v; want a", addr, got, err)
			}
			if got := tn.host.neighMAC(t, "br0", p.Addr()); got != tn.macA {
				t.Fatalf("host neighbour entry for %s = %q, want a's %s", p.Addr(), got, tn.macA)
			}

			// 2. a stops serving.
			stopA()
			release(tn.a)
			if tn.a.hasAddr(t, "eth0", p.Addr()) {
				t.Fatalf("a: %s still on eth0 after Release", p)
			}
			release(tn.a) // absent: not an error

			// 3. Control: the address appears in b without an
			// announcement; the host keeps a's MAC (so what follows is
			// the announcement's doing, not the kernel's).
			nl, err := netlink.ParseAddr(tc.prefix)
			if err != nil {
				t.Fatal(err)
			}
			nl.Flags = unix.IFA_F_NODAD
			if err := tn.b.h.AddrAdd(tn.b.link(t, "eth0"), nl); err != nil {
				t.Fatalf("b: adding %s: %v", p, err)
			}
			time.Sleep(200 * time.Millisecond) // NB: a negative check; no event to wait for
			if got := tn.host.neighMAC(t, "br0", p.Addr()); got != tn.macA {
				t.Fatalf("host neighbour entry for %s = %q without any announcement; want a's %s still", p.Addr(), got, tn.macA)
			}

			// 4. b claims (the address is already there: idempotent) and
			// announces; the host's entry moves to b's MAC.
			if err := inNS(tn.b.ns, func() error { return Claim(ctx, cfg) }); err != nil {
				t.Fatalf("b: Claim: %v", err)
			}
			wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
			got := waitNeigh(wctx, t, tn.host, p.Addr(), tn.macB)
			wcancel()
			if got != tn.macB {
				t.Fatalf("host neighbour entry for %s = %q after b's Claim, want b's %s (a's is %s)", p.Addr(), got, tn.macB, tn.macA)
			}
			serve(t, tn.b, addr, "b")
			if got, err := ask(ctx, tn.host, addr); err != nil || got != "b" {
				t.Fatalf("host → %s after the move: got %q, %v; want b", addr, got, err)
			}
		})
	}
}

// dropCaps removes caps from the calling thread's effective set. Call it
// only on a thread that inNS throws away.
func dropCaps(caps ...int) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return err
	}
	for _, c := range caps {
		data[c/32].Effective &^= 1 << (c % 32)
	}
	return unix.Capset(&hdr, &data[0])
}

// TestErrors checks the errors of Claim and Release for a missing link,
// a link that is down, an address on another link and missing
// capabilities, and that Lifetime lets the kernel remove the address.
func TestErrors(t *testing.T) {
	skipUnlessRoot(t)
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	n := newNS(t, "err")
	if err := n.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "x0"}, PeerName: "x1"}); err != nil {
		t.Fatalf("creating veth pair: %v", err)
	}
	p := netip.MustParsePrefix("10.98.0.100/24")
	cfg := Config{Link: "x0", Prefix: p, Logger: testLogger(t), Announcements: 1}
	in := func(fn func() error) error { return inNS(n.ns, fn) }

	check := func(what string, err, want error, msg string) {
		t.Helper()
		if !errors.Is(err, want) || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: got %v, want %v containing %q", what, err, want, msg)
		}
	}

	check("Claim on a down link", in(func() error { return Claim(ctx, cfg) }), ErrLinkDown, "ip link set x0 up")
	n.up(t, "x0")
	n.up(t, "x1")

	nosuch := cfg
	nosuch.Link = "nosuch0"
	check("Claim on a missing link", in(func() error { return Claim(ctx, nosuch) }), ErrNoLink, `"nosuch0"`)
	if err := in(func() error { return Release(nosuch) }); err != nil {
		t.Errorf("Release on a missing link: %v", err)
	}

	check("Claim without CAP_NET_ADMIN", in(func() error {
		if err := dropCaps(unix.CAP_NET_ADMIN); err != nil {
			return err
		}
		return Claim(ctx, cfg)
	}), ErrPermission, "needs CAP_NET_ADMIN")
	if n.hasAddr(t, "x0", p.Addr()) {
		t.Errorf("%s on x0 after a Claim without CAP_NET_ADMIN", p)
	}
	check("Release without CAP_NET_ADMIN", in(func() error {
		if err := dropCaps(unix.CAP_NET_ADMIN); err != nil {
			return err
		}
		return Release(cfg)
	}), os.ErrPermission, "needs CAP_NET_ADMIN")

	check("Claim without CAP_NET_RAW", in(func() error {
		if err := dropCaps(unix.CAP_NET_RAW); err != nil {
			return err
		}
		return Claim(ctx, cfg)
	}), ErrPermission, "needs CAP_NET_RAW")
	if !n.hasAddr(t, "x0", p.Addr()) {
		t.Errorf("%s not on x0 after a Claim that failed announcing", p)
	}

	onX1 := cfg
	onX1.Link = "x1"
	check("Claim of an address on another link", in(func() error { return Claim(ctx, onX1) }), ErrInUse, "is on x0")

	if err := in(func() error { return Release(cfg) }); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if n.hasAddr(t, "x0", p.Addr()) {
		t.Fatalf("%s on x0 after Release", p)
	}

	// Lifetime: the kernel removes the address unless renewed.
	short := cfg
	short.Lifetime = time.Second
	if err := in(func() error { return Claim(ctx, short) }); err != nil {
		t.Fatalf("Claim with a lifetime: %v", err)
	}
	if err := in(func() error { return Renew(short) }); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if !n.hasAddr(t, "x0", p.Addr()) {
		t.Fatalf("%s not on x0 after Claim and Renew", p)
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	for n.hasAddr(t, "x0", p.Addr()) {
		select {
		case <-wctx.Done():
			t.Fatalf("%s still on x0 10 s after its 1 s lifetime", p)
		case <-tick.C:
		}
	}

	// A cancelled context stops Claim before it changes anything.
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	check("Claim with a cancelled context", in(func() error { return Claim(cctx, cfg) }), context.Canceled, "claiming")
	if n.hasAddr(t, "x0", p.Addr()) {
		t.Errorf("%s on x0 after a cancelled Claim", p)
	}
}
