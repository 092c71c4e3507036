// Package floatip moves a volume's floating portal IP address to the node
// that owns the volume, for hosts without multipath (DESIGN.md, Cluster):
// the host logs in to one address, and whichever node serves the volume
// answers on it.
//
// Claim adds the address to a network interface of this node over
// rtnetlink (github.com/vishvananda/netlink) and announces it so that the
// hosts on the segment update their neighbour caches at once, without
// waiting for their entries to age out:
//
//   - IPv4: gratuitous ARP requests and replies (SPA == TPA) broadcast
//     from the interface's MAC on an AF_PACKET socket;
//   - IPv6: unsolicited neighbor advertisements with the Override flag to
//     ff02::1. The address is added with IFA_F_NODAD: duplicate address
//     detection would hold a moved address tentative for a second, and
//     fail it outright while the old owner still answers for it.
//
// Release removes the address; Renew refreshes its lifetime. All three are
// idempotent and act on the network namespace of the calling OS thread.
// They need CAP_NET_ADMIN (address changes) and CAP_NET_RAW (announcements),
// which the daemon has as root or through AmbientCapabilities= in its unit.
//
// # Use in the daemon
//
// Configuration, per volume: the floating address as ADDR/BITS (the
// subnet's prefix length, e.g. 10.0.20.100/24 or fd00:20::100/64) and, per
// node, the interface on that subnet that carries it (e.g. bond0.20). A
// node whose interface is not configured does not take part.
//
//  1. At start-up, before it competes for any volume, a node calls Release
//     for every floating address it may hold: a daemon that was killed
//     leaves its addresses on the interface.
//  2. On the first Serve of an epoch (owner.Handler), the owner calls Claim.
//     The address is usable as soon as it is added, before the first
//     announcement; the later ones take (Announcements−1) × Interval
//     (200 ms by default), so an owner that must not wait runs Claim in a
//     goroutine it owns, with a context it cancels on Stop.
//  3. On every later Serve (the lease keepalive) the owner calls Renew, if
//     Lifetime is set.
//  4. On Stop the owner cancels a Claim still running, waits for it, and
//     calls Release. A failed Claim is released the same way: the address
//     may have been added before the error.
//
// Lifetime bounds how long an address outlives the daemon that claimed
// it: the kernel deletes the address by itself Lifetime after the last
// Claim or Renew (valid_lft). Without it, a node whose daemon was killed
// keeps answering ARP for the address until its daemon restarts, and hosts
// that re-resolve may reach it instead of the new owner. Set it at or
// below the ownership lease TTL, so that the address lapses no later than
// the lease does.
//
// The iSCSI portals must listen on a wildcard address (0.0.0.0:3260 or
// [::]:3260), or on the floating address itself after Claim returned and
// until Release; a listener bound to the floating address before it is on
// the interface fails with EADDRNOTAVAIL (unless net.ipv4.ip_nonlocal_bind
// is set). SendTargets should then report the floating address as the
// portal of the volume, so that hosts without multipath log in to it.
//
// Errors: ErrBadAddress and ErrBadConfig for a configuration to fix,
// ErrNoLink for an interface that does not exist, ErrLinkDown, ErrInUse
// for an address already on another interface of this node, and
// ErrPermission (wrapping the errno) for a missing capability. A link whose
// interface has no Ethernet address or has NOARP (tun, WireGuard, dummy)
// gets the address without announcements, and a log line says so.
//
// NB: an IPv4 address in the subnet of an address already on the
// interface becomes a secondary address, which is the normal case for a
// floating address. Deleting a primary address also deletes its
// secondaries unless net.ipv4.conf.LINK.promote_secondaries is 1.
package floatip

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"
)

// Sentinel errors. Errors from Claim, Renew and Release wrap one of them
// and name the address and link.
var (
	// ErrBadAddress is returned for a floating address that is not a host
	// address inside its prefix (unset, network or broadcast address,
	// loopback, multicast, link-local, IPv4-mapped IPv6).
	ErrBadAddress = errors.New("floatip: not a host address in a prefix")
	// ErrBadConfig is returned for an invalid Config other than its address.
	ErrBadConfig = errors.New("floatip: invalid configuration")
	// ErrNoLink is returned when the configured interface does not exist.
	ErrNoLink = errors.New("floatip: no such link")
	// ErrLinkDown is returned by Claim when the interface is down.
	ErrLinkDown = errors.New("floatip: link is down")
	// ErrInUse is returned by Claim when the address is already on another
	// interface of this node.
	ErrInUse = errors.New("floatip: address is on another link")
	// ErrPermission is returned when the process lacks CAP_NET_ADMIN or
	// CAP_NET_RAW; the error also wraps the errno (os.ErrPermission).
	ErrPermission = errors.New("floatip: permission denied")
	// ErrUnsupported is returned on systems other than Linux.
	ErrUnsupported = errors.New("floatip: floating addresses need Linux")
)

// Defaults for Config fields left zero.
const (
	// DefaultAnnouncements is the default number of announcement rounds.
	DefaultAnnouncements = 3
	// DefaultInterval is the default pause between announcement rounds.
	DefaultInterval = 100 * time.Millisecond
)

// maxLinkName is IFNAMSIZ - 1, the longest Linux interface name.
const maxLinkName = 15

// Log attribute keys of this package.
// TODO(lead): move to internal/logkey if other packages log them too.
const (
	keyLink    = "link"
	keyAddress = "address"
)

// Config is one floating address on one interface of this node. The zero
// values of the optional fields select the defaults.
type Config struct {
	// Link is the name of the interface that carries the address on this
	// node, e.g. "eth1" or "bond0.20". Required.
	Link string
	// Prefix is the floating address with the prefix length of its subnet,
	// e.g. 10.0.20.100/24. Required; see ErrBadAddress.
	Prefix netip.Prefix
	// Logger receives an Info line for each claim and release; nil
	// discards.
	Logger *slog.Logger
	// Announcements is the number of announcement rounds Claim sends, the
	// first at once (each round: a gratuitous ARP request and reply, or
	// one unsolicited NA). 0 means DefaultAnnouncements; more than one
	// covers a lost frame.
	Announcements int
	// Interval is the pause between announcement rounds. 0 means
	// DefaultInterval.
	Interval time.Duration
	// Lifetime, if positive, makes the kernel delete the address by itself
	// Lifetime after the last Claim or Renew (rounded up to whole seconds);
	// see the package doc. 0 keeps it until Release.
	Lifetime time.Duration
}

// validate checks c and returns an error wrapping ErrBadAddress or
// ErrBadConfig that says what to fix.
func (c *Config) validate() error {
	if err := checkPrefix(c.Prefix); err != nil {
		return err
	}
	switch {
	case c.Link == "":
		return fmt.Errorf("%w: no link for floating address %s: name the node's interface on its subnet", ErrBadConfig, c.Prefix)
	case len(c.Link) > maxLinkName:
		return fmt.Errorf("%w: link name %q is longer than %d bytes", ErrBadConfig, c.Link, maxLinkName)
	case c.Announcements < 0:
		return fmt.Errorf("%w: announcements %d is negative", ErrBadConfig, c.Announcements)
	case c.Interval < 0:
		return fmt.Errorf("%w: interval %v is negative", ErrBadConfig, c.Interval)
	case c.Lifetime < 0:
		return fmt.Errorf("%w: lifetime %v is negative", ErrBadConfig, c.Lifetime)
	case c.Lifetime > 0 && c.Lifetime < time.Second:
		return fmt.Errorf("%w: lifetime %v is below the kernel's 1 s resolution", ErrBadConfig, c.Lifetime)
	}
	return nil
}

// checkPrefix returns nil if p is a usable floating address: a unicast
// host address inside its prefix.
func checkPrefix(p netip.Prefix) error {
	a := p.Addr()
	bad := func(why string) error {
		return fmt.Errorf("%w: %s %s; give the floating address as ADDR/BITS with the subnet's prefix length, e.g. 10.0.20.100/24", ErrBadAddress, p, why)
	}
	switch {
	case !p.IsValid():
		return fmt.Errorf("%w: floating address is unset or invalid; give it as ADDR/BITS with the subnet's prefix length, e.g. 10.0.20.100/24", ErrBadAddress)
	case a.Is4In6():
		return bad("is IPv4-mapped IPv6: use the IPv4 form")
	case p.Bits() == 0:
		return bad("has prefix length 0")
	case a.IsUnspecified():
		return bad("is the unspecified address")
	case a.IsLoopback():
		return bad("is a loopback address")
	case a.IsMulticast():
		return bad("is a multicast address")
	case a.IsLinkLocalUnicast():
		return bad("is a link-local address")
	}
	hostBits := a.BitLen() - p.Bits()
	if hostBits < 2 {
		return nil // /31, /32, /127, /128: every address is a host
	}
	if a == p.Masked().Addr() {
		if a.Is4() {
			return bad("is the network address of its prefix")
		}
		return bad("is the subnet-router anycast address of its prefix")
	}
	if a.Is4() && a == lastAddr(p) {
		return bad("is the broadcast address of its prefix")
	}
	return nil
}

// lastAddr returns the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// announcements returns the number of announcement rounds.
func (c *Config) announcements() int {
	if c.Announcements == 0 {
		return DefaultAnnouncements
	}
	return c.Announcements
}

// interval returns the pause between announcement rounds.
func (c *Config) interval() time.Duration {
	if c.Interval == 0 {
		return DefaultInterval
	}
	return c.Interval
}

// logger returns the logger scoped to the address and link.
func (c *Config) logger() *slog.Logger {
	l := c.Logger
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return l.With(keyAddress, c.Prefix.String(), keyLink, c.Link)
}
