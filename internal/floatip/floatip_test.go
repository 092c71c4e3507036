package floatip

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	good := func(p string) Config { return Config{Link: "eth1", Prefix: netip.MustParsePrefix(p)} }
	for _, tc := range []struct {
		name string
		c    Config
		err  error  // nil: valid
		msg  string // substring of the error
	}{
		{"ipv4", good("10.99.0.100/24"), nil, ""},
		{"ipv4 host route", good("10.99.0.100/32"), nil, ""},
		{"ipv4 /31 low", good("10.99.0.0/31"), nil, ""},
		{"ipv6", good("fd00:99::100/64"), nil, ""},
		{"ipv6 /128", good("2001:db8::1/128"), nil, ""},
		{"unset", Config{Link: "eth1"}, ErrBadAddress, "unset"},
		{"network", good("10.99.0.0/24"), ErrBadAddress, "network address"},
		{"broadcast", good("10.99.0.255/24"), ErrBadAddress, "broadcast address"},
		{"broadcast /30", good("10.99.0.3/30"), ErrBadAddress, "broadcast address"},
		{"ipv6 subnet-router", good("fd00:99::/64"), ErrBadAddress, "subnet-router anycast"},
		{"zero bits", good("10.99.0.100/0"), ErrBadAddress, "prefix length 0"},
		{"unspecified", good("0.0.0.0/8"), ErrBadAddress, "unspecified"},
		{"loopback", good("127.0.0.5/8"), ErrBadAddress, "loopback"},
		{"multicast", good("239.1.2.3/8"), ErrBadAddress, "multicast"},
		{"link-local", good("169.254.1.2/16"), ErrBadAddress, "link-local"},
		{"ipv6 link-local", good("fe80::5/64"), ErrBadAddress, "link-local"},
		{"mapped", good("::ffff:10.99.0.100/120"), ErrBadAddress, "IPv4 form"},
		{"no link", Config{Prefix: netip.MustParsePrefix("10.99.0.100/24")}, ErrBadConfig, "no link"},
		{"long link", Config{Link: "abcdefghijklmnop", Prefix: netip.MustParsePrefix("10.99.0.100/24")}, ErrBadConfig, "longer than 15"},
		{"negative announcements", Config{Link: "eth1", Prefix: netip.MustParsePrefix("10.99.0.100/24"), Announcements: -1}, ErrBadConfig, "announcements"},
		{"negative interval", Config{Link: "eth1", Prefix: netip.MustParsePrefix("10.99.0.100/24"), Interval: -1}, ErrBadConfig, "interval"},
		{"short lifetime", Config{Link: "eth1", Prefix: netip.MustParsePrefix("10.99.0.100/24"), Lifetime: time.Millisecond}, ErrBadConfig, "1 s resolution"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.validate()
			if tc.err == nil {
				if err != nil {
					t.Fatalf("validate: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("validate = %v, want %v containing %q", err, tc.err, tc.msg)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	var c Config
	if c.announcements() != DefaultAnnouncements || c.interval() != DefaultInterval {
		t.Errorf("defaults = %d, %v", c.announcements(), c.interval())
	}
	c = Config{Announcements: 1, Interval: time.Second}
	if c.announcements() != 1 || c.interval() != time.Second {
		t.Errorf("explicit = %d, %v", c.announcements(), c.interval())
	}
}
