package adminapi

import (
	"errors"
	"net"
	"strings"
	"testing"
)

// FuzzParseAddress checks that ParseAddress never panics, that its errors
// wrap ErrBadAddress, that a unix address names a non-empty path which
// "unix:"+path gives back (except paths starting "//", which read as
// unix://), and that a TCP address is a HOST:PORT.
func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{"unix:/run/stave.sock", "unix:///x", "/x.sock", "./s", "http://127.0.0.1:1", "https://[::1]:8443/",
		"https://h", "tcp:1", "", "unix:", "http://u:p@h:1", "http://h:1?x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		network, addr, _, err := ParseAddress(s)
		if err != nil {
			if !errors.Is(err, ErrBadAddress) {
				t.Fatalf("ParseAddress(%q): %v does not wrap ErrBadAddress", s, err)
			}
			return
		}
		switch network {
		case "unix":
			if addr == "" {
				t.Fatalf("ParseAddress(%q): empty socket path", s)
			}
			if strings.HasPrefix(addr, "//") {
				return
			}
			n2, a2, _, err := ParseAddress("unix:" + addr)
			if err != nil || n2 != "unix" || a2 != addr {
				t.Fatalf("unix:%s gives %q %q %v, want the path back", addr, n2, a2, err)
			}
		case "tcp":
			if _, _, err := net.SplitHostPort(addr); err != nil {
				t.Fatalf("ParseAddress(%q) = tcp %q: %v", s, addr, err)
			}
		default:
			t.Fatalf("ParseAddress(%q): network %q", s, network)
		}
	})
}
