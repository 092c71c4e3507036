package floatip

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"stave.dev/stave/internal/logkey"
)

// Claim adds c.Prefix to the interface c.Link (or refreshes it if it is
// there already) and then announces it c.Announcements times,
// c.Interval apart. It returns after the last announcement, or with
// ctx's error if ctx ends first; the address is on the interface before
// the first announcement. It acts on the calling thread's network
// namespace and may be called from any goroutine.
//
// Errors wrap ErrBadAddress or ErrBadConfig (nothing done), ErrNoLink,
// ErrLinkDown, ErrInUse (nothing done), ErrPermission or an errno. After
// an error the address may be on the interface: call Release.
func Claim(ctx context.Context, c Config) error {
	if err := c.validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("floatip: claiming %s on %s: %w", c.Prefix, c.Link, err)
	}
	log := c.logger()
	link, err := lookupLink(&c)
	if err != nil {
		return err
	}
	attrs := link.Attrs()
	if attrs.Flags&net.FlagUp == 0 {
		return fmt.Errorf("%w: %s, needed for floating address %s; bring it up (ip link set %s up)", ErrLinkDown, c.Link, c.Prefix, c.Link)
	}
	if err := checkNotElsewhere(&c, attrs.Index); err != nil {
		return err
	}
	if err := netlink.AddrReplace(link, nlAddr(&c, true)); err != nil {
		return opError("adding", &c, "CAP_NET_ADMIN", err)
	}
	n, err := announce(ctx, &c, attrs, log)
	if err != nil {
		return err
	}
	log.Info("floatip: floating address claimed", logkey.Count, n)
	return nil
}

// Renew adds c.Prefix to c.Link again, without announcing it, which
// restarts its lifetime (Config.Lifetime). The owner calls it on every
// lease keepalive. It is cheap: one netlink request. Errors are those of
// Claim.
func Renew(c Config) error {
	if err := c.validate(); err != nil {
		return err
	}
	link, err := lookupLink(&c)
	if err != nil {
		return err
	}
	if err := netlink.AddrReplace(link, nlAddr(&c, true)); err != nil {
		return opError("renewing", &c, "CAP_NET_ADMIN", err)
	}
	return nil
}

// Release removes c.Prefix from c.Link. An address or link that is not
// there is not an error. It acts on the calling thread's network
// namespace. Errors wrap ErrBadAddress, ErrBadConfig, ErrPermission or an
// errno.
func Release(c Config) error {
	if err := c.validate(); err != nil {
		return err
	}
	log := c.logger()
	link, err := lookupLink(&c)
	if errors.Is(err, ErrNoLink) {
		log.Debug("floatip: link is gone, and the address with it")
		return nil
	}
	if err != nil {
		return err
	}
	err = netlink.AddrDel(link, nlAddr(&c, false))
	switch {
	case err == nil:
		log.Info("floatip: floating address released")
		return nil
	case errors.Is(err, unix.EADDRNOTAVAIL), errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENODEV):
		log.Debug("floatip: floating address was not on the link")
		return nil
	}
	return opError("removing", &c, "CAP_NET_ADMIN", err)
}

// lookupLink returns the interface c.Link, or an error wrapping ErrNoLink.
func lookupLink(c *Config) (netlink.Link, error) {
	link, err := netlink.LinkByName(c.Link)
	if link != nil && (err == nil || errors.Is(err, netlink.ErrDumpInterrupted)) {
		return link, nil
	}
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
		return nil, fmt.Errorf("%w: %q, configured for floating address %s; list this node's interfaces with `ip link`", ErrNoLink, c.Link, c.Prefix)
	}
	return nil, fmt.Errorf("floatip: looking up link %q: %w", c.Link, err)
}

// checkNotElsewhere returns an error wrapping ErrInUse if the address is
// on an interface other than index.
func checkNotElsewhere(c *Config, index int) error {
	family := netlink.FAMILY_V4
	if c.Prefix.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(nil, family)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("floatip: listing addresses: %w", err)
	}
	ip := net.IP(c.Prefix.Addr().AsSlice())
	for _, a := range addrs {
		if a.LinkIndex != index && a.IP.Equal(ip) {
			other := fmt.Sprintf("index %d", a.LinkIndex)
			if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
				other = l.Attrs().Name
			}
			return fmt.Errorf("%w: %s is on %s, not on %s; remove it there (ip addr del %s dev %s)", ErrInUse, c.Prefix.Addr(), other, c.Link, a.IPNet, other)
		}
	}
	return nil
}

// nlAddr returns the netlink form of c.Prefix; withLifetime adds the
// flags and lifetimes that Claim and Renew set.
func nlAddr(c *Config, withLifetime bool) *netlink.Addr {
	a := c.Prefix.Addr()
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   net.IP(a.AsSlice()),
		Mask: net.CIDRMask(c.Prefix.Bits(), a.BitLen()),
	}}
	if !withLifetime {
		return addr
	}
	if a.Is6() {
		addr.Flags = unix.IFA_F_NODAD
	}
	if c.Lifetime > 0 {
		secs := int((c.Lifetime + time.Second - 1) / time.Second)
		addr.ValidLft, addr.PreferedLft = secs, secs
	}
	return addr
}

// announce sends the announcement rounds for c on the interface attrs and
// returns how many rounds it sent.
func announce(ctx context.Context, c *Config, attrs *netlink.LinkAttrs, log *slog.Logger) (int, error) {
	if len(attrs.HardwareAddr) != 6 || attrs.RawFlags&unix.IFF_NOARP != 0 {
		log.Info("floatip: link has no Ethernet address or does not use ARP/ND; the address is not announced")
		return 0, nil
	}
	var mac [6]byte
	copy(mac[:], attrs.HardwareAddr)
	a := c.Prefix.Addr()
	var (
		frames [][]byte
		proto  uint16
		dst    [6]byte
	)
	if a.Is4() {
		frames = [][]byte{
			appendGratuitousARP(nil, mac, a, arpRequest),
			appendGratuitousARP(nil, mac, a, arpReply),
		}
		proto, dst = etherTypeARP, broadcastMAC()
	} else {
		frames = [][]byte{appendUnsolicitedNA(nil, mac, a)}
		proto, dst = etherTypeIPv6, allNodesMAC()
	}

	// Protocol 0: the socket only sends and receives nothing.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, opError("announcing", c, "CAP_NET_RAW", err)
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: attrs.Index, Halen: 6}
	copy(sa.Addr[:], dst[:])

	var t *time.Timer
	n := c.announcements()
	for i := range n {
		if i > 0 {
			if t == nil {
				t = time.NewTimer(c.interval())
				defer t.Stop()
			} else {
				t.Reset(c.interval())
			}
			select {
			case <-ctx.Done():
				return i, fmt.Errorf("floatip: announcing %s on %s: %w", c.Prefix, c.Link, ctx.Err())
			case <-t.C:
			}
		}
		for _, f := range frames {
			if err := unix.Sendto(fd, f, 0, sa); err != nil {
				return i, opError("announcing", c, "CAP_NET_RAW", err)
			}
		}
	}
	return n, nil
}

// opError wraps err from op on c's address, as ErrPermission naming the
// capability if err is a permission error.
func opError(op string, c *Config, capability string, err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%w: %s %s on %s needs %s: %w", ErrPermission, op, c.Prefix, c.Link, capability, err)
	}
	return fmt.Errorf("floatip: %s %s on %s: %w", op, c.Prefix, c.Link, err)
}

// htons converts v to network byte order, as struct sockaddr_ll wants.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
