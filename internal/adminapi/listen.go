package adminapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// listener is an extra (TCP) listener of the API, with the checks its
// callers must pass.
type listener struct {
	ln   net.Listener
	auth *Auth
}

// ListenTCP binds the API's TCP listener at addr (HOST:PORT), speaking TLS
// when tlsCfg is non-nil (ServerTLSConfig). Hand the listener to
// AddListener.
func ListenTCP(addr string, tlsCfg *tls.Config) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("adminapi: http.listen %s: %w: choose a free address or stop what uses it", addr, err)
	}
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	}
	return ln, nil
}

// AddListener makes Serve also serve the API on ln (a TCP listener from
// ListenTCP), every request checked by auth, which must not be nil. Call
// it before Serve; Serve closes ln.
func (s *Server) AddListener(ln net.Listener, auth *Auth) error {
	if auth == nil {
		return fmt.Errorf("%w: a TCP listener needs authentication", ErrAuthConfig)
	}
	s.extraMu.Lock()
	defer s.extraMu.Unlock()
	s.extra = append(s.extra, listener{ln: ln, auth: auth})
	return nil
}

// listeners returns the extra listeners added so far.
func (s *Server) listeners() []listener {
	s.extraMu.Lock()
	defer s.extraMu.Unlock()
	return append([]listener(nil), s.extra...)
}

// ClientOptions are the credentials a Client presents to a TCP listener
// of the API. The unix socket needs none.
type ClientOptions struct {
	// TokenFile holds the bearer token (the daemon's http.token_file, or
	// a copy of it).
	TokenFile string
	// Cert and Key are the client's PEM certificate and key for mutual
	// TLS; CA is a PEM file of the CAs that sign the daemon's
	// certificate (empty: the system's roots).
	Cert, Key, CA string
}

// ParseAddress splits an API address into a network ("unix" or "tcp"),
// the socket path or host:port, and whether it speaks TLS. Accepted:
// "unix:PATH", "unix:///PATH", a bare PATH (absolute, or starting with
// "."), "http://HOST:PORT" and "https://HOST:PORT". Errors wrap
// ErrBadAddress.
func ParseAddress(addr string) (network, address string, tlsOn bool, err error) {
	bad := func(why string) (string, string, bool, error) {
		return "", "", false, fmt.Errorf("%w (or unix:///PATH, a socket path, http://HOST:PORT or https://HOST:PORT): got %q: %s",
			ErrBadAddress, addr, why)
	}
	switch {
	case strings.HasPrefix(addr, "unix://"):
		p := strings.TrimPrefix(addr, "unix://")
		if !strings.HasPrefix(p, "/") {
			return bad("unix:// needs an absolute path, e.g. unix:///run/stave/stave.sock")
		}
		return "unix", p, false, nil
	case strings.HasPrefix(addr, "unix:"):
		p := strings.TrimPrefix(addr, "unix:")
		if p == "" {
			return bad("the socket path is empty")
		}
		return "unix", p, false, nil
	case strings.HasPrefix(addr, "http://"), strings.HasPrefix(addr, "https://"):
		u, err := url.Parse(addr)
		if err != nil {
			return bad(err.Error())
		}
		host, port, err := net.SplitHostPort(u.Host)
		if n, perr := strconv.Atoi(port); err != nil || host == "" || strings.ContainsAny(host, "[]") || perr != nil || n < 1 || n > 65535 {
			return bad("give HOST:PORT, e.g. https://10.0.0.5:8443 or https://[2001:db8::5]:8443")
		}
		if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return bad("give only the scheme, host and port")
		}
		return "tcp", u.Host, u.Scheme == "https", nil
	case strings.HasPrefix(addr, "/"), strings.HasPrefix(addr, "."):
		return "unix", addr, false, nil
	}
	return bad("unknown form")
}

// SocketPath returns the path of a unix-socket API address (see
// ParseAddress); a TCP address is an error wrapping ErrBadAddress.
func SocketPath(addr string) (string, error) {
	network, p, _, err := ParseAddress(addr)
	if err != nil {
		return "", err
	}
	if network != "unix" {
		return "", fmt.Errorf("%w: %q is a TCP address, not a unix socket", ErrBadAddress, addr)
	}
	return p, nil
}

// NewClient returns a client for the API at addr (see ParseAddress), with
// no credentials: enough for the unix socket.
func NewClient(addr string) (*Client, error) {
	return NewClientWith(addr, ClientOptions{})
}

// NewClientWith returns a client for the API at addr (see ParseAddress)
// presenting o's credentials. It reads the token and certificate files
// now and fails, saying which, when one is unusable; credentials given
// for a unix socket are ignored.
func NewClientWith(addr string, o ClientOptions) (*Client, error) {
	network, a, tlsOn, err := ParseAddress(addr)
	if err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{DisableCompression: true, TLSHandshakeTimeout: 10 * time.Second}
	c := &Client{hc: &http.Client{Transport: tr}, path: addr, base: "http://stave"}
	if network == "unix" {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", a)
		}
		return c, nil
	}
	tr.DialContext = d.DialContext
	c.base = "http://" + a
	if o.TokenFile != "" {
		if c.token, err = ReadTokenFile(o.TokenFile, false); err != nil {
			return nil, fmt.Errorf("--api-token-file: %w", err)
		}
	}
	if (o.Cert == "") != (o.Key == "") {
		return nil, errors.New("--api-cert and --api-key go together: give both for mutual TLS")
	}
	if !tlsOn {
		if o.Cert != "" || o.CA != "" {
			return nil, fmt.Errorf("--api-cert and --api-ca need TLS: use https://%s", a)
		}
		return c, nil
	}
	c.base = "https://" + a
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CA != "" {
		pool, err := loadCAs(o.CA)
		if err != nil {
			return nil, fmt.Errorf("--api-ca: %w", err)
		}
		tc.RootCAs = pool
	}
	if o.Cert != "" {
		cert, err := tls.LoadX509KeyPair(o.Cert, o.Key)
		if err != nil {
			return nil, fmt.Errorf("--api-cert/--api-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	tr.TLSClientConfig = tc
	return c, nil
}

// tlsHint says what to do about a TLS error of a client, or "".
func tlsHint(err error) string {
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	switch {
	case errors.As(err, &ua):
		return ": the daemon's certificate is not signed by a CA this client trusts: give --api-ca FILE"
	case errors.As(err, &hn):
		return ": the daemon's certificate does not name this host: connect by a name or address it lists"
	case strings.Contains(err.Error(), "certificate required"), strings.Contains(err.Error(), "bad certificate"):
		return ": the daemon refused this client's certificate: give --api-cert and --api-key signed by its http.client_ca"
	}
	return ""
}
