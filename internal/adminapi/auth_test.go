package adminapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"stave.dev/stave/internal/volume"
)

const testToken = "0123456789abcdef0123456789abcdef-token"

// writeFile writes content to dir/name with mode and returns the path.
func writeFile(t *testing.T, dir, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // not subject to the umask
		t.Fatal(err)
	}
	return p
}

// tcpEnv is a Server serving a unix socket and one TCP listener.
type tcpEnv struct {
	srv  *Server
	tg   *fakeTargets
	addr string // host:port of the TCP listener
	sock string
}

// startTCP serves a new Server on a unix socket and on a TCP listener with
// auth ac; it stops at cleanup.
func startTCP(t *testing.T, ac AuthConfig) *tcpEnv {
	t.Helper()
	dir := shortTempDir(t)
	cat, err := volume.Open(volume.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	tg := &fakeTargets{exported: map[string]bool{}}
	s, err := New(Config{Volumes: cat, Targets: tg, Version: "test-1"})
	if err != nil {
		t.Fatal(err)
	}
	auth, err := NewAuth(ac)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := ServerTLSConfig(ac)
	if err != nil {
		t.Fatal(err)
	}
	tln, err := ListenTCP("127.0.0.1:0", tc)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddListener(tln, auth); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "api.sock")
	uln, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, uln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &tcpEnv{srv: s, tg: tg, addr: tln.Addr().String(), sock: sock}
}

// raw does one request and returns status and body.
func raw(t *testing.T, hc *http.Client, method, url string, hdr map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// wantJSONError checks a JSON error body that mentions substr.
func wantJSONError(t *testing.T, what string, code int, body string, wantCode int, substr string) {
	t.Helper()
	var eb errorBody
	if code != wantCode || json.Unmarshal([]byte(body), &eb) != nil || !strings.Contains(eb.Error, substr) {
		t.Errorf("%s: %d %s, want %d with a JSON error containing %q", what, code, body, wantCode, substr)
	}
}

func TestTokenAuth(t *testing.T) {
	dir := shortTempDir(t)
	tok := writeFile(t, dir, "token", testToken+"\n", 0o600)
	e := startTCP(t, AuthConfig{TokenFile: tok})
	hc := &http.Client{Timeout: 10 * time.Second}
	base := "http://" + e.addr

	code, body := raw(t, hc, "GET", base+"/v1/volumes", nil)
	wantJSONError(t, "no token", code, body, http.StatusUnauthorized, "missing bearer token")
	code, body = raw(t, hc, "GET", base+"/v1/volumes", map[string]string{"Authorization": "Bearer wrong-token"})
	wantJSONError(t, "wrong token", code, body, http.StatusUnauthorized, "wrong bearer token")
	code, body = raw(t, hc, "GET", base+"/metrics", map[string]string{"Authorization": "Basic " + testToken})
	wantJSONError(t, "basic auth", code, body, http.StatusUnauthorized, "missing bearer token")
	if code, body := raw(t, hc, "GET", base+"/v1/volumes", map[string]string{"Authorization": "Bearer " + testToken}); code != 200 || strings.TrimSpace(body) != "[]" {
		t.Errorf("right token: %d %s", code, body)
	}
	// Probes answer without a token.
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, body := raw(t, hc, "GET", base+p, nil); code != 200 {
			t.Errorf("GET %s without token: %d %s", p, code, body)
		}
	}
	// The unix socket needs no token.
	ucl, err := NewClient("unix://" + e.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ucl.Close()
	if _, err := ucl.ListVolumes(ctxT(t)); err != nil {
		t.Errorf("unix socket: %v", err)
	}

	// The Client, with and without the token file.
	cl, err := NewClientWith("http://"+e.addr, ClientOptions{TokenFile: tok})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.CreateVolume(ctxT(t), CreateRequest{Name: "tv", Size: 1 << 20}); err != nil {
		t.Fatalf("create over TCP: %v", err)
	}
	anon, err := NewClient("http://" + e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	_, err = anon.ListVolumes(ctxT(t))
	apiErr(t, err, http.StatusUnauthorized, "--api-token-file")
}

func TestTokenFileChecks(t *testing.T) {
	dir := shortTempDir(t)
	cases := []struct {
		name, content string
		mode          os.FileMode
		want          string
	}{
		{"world-readable", testToken, 0o644, "chmod 600"},
		{"world-writable", testToken, 0o602, "chmod 600"},
		{"short", "secret", 0o600, "fewer than 32"},
		{"two words", "0123456789abcdef 0123456789abcdef0", 0o600, "one word"},
	}
	for _, c := range cases {
		p := writeFile(t, dir, c.name, c.content, c.mode)
		_, err := NewAuth(AuthConfig{TokenFile: p})
		if !errors.Is(err, ErrAuthConfig) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: NewAuth = %v, want ErrAuthConfig containing %q", c.name, err, c.want)
		}
	}
	if _, err := NewAuth(AuthConfig{TokenFile: writeFile(t, dir, "group", testToken, 0o640)}); err != nil {
		t.Errorf("group-readable token file: %v", err)
	}
	if _, err := NewAuth(AuthConfig{}); !errors.Is(err, ErrAuthConfig) || !strings.Contains(err.Error(), "needs a bearer token") {
		t.Errorf("no auth: %v", err)
	}
	if _, err := NewAuth(AuthConfig{ClientCA: "/ca.pem"}); err == nil || !strings.Contains(err.Error(), "http.tls_cert") {
		t.Errorf("client CA without TLS: %v", err)
	}
}

// testPKI writes a CA, a server certificate for 127.0.0.1 and a client
// certificate signed by the CA, and a client certificate of another CA.
type testPKI struct {
	ca, serverCert, serverKey, clientCert, clientKey, rogueCert, rogueKey string
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := shortTempDir(t)
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(name, typ string, der []byte) string {
		return writeFile(t, dir, name, string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})), 0o600)
	}
	writeKey := func(name string, k *ecdsa.PrivateKey) string {
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(name, "EC PRIVATE KEY", der)
	}
	serial := int64(1)
	mkCA := func(cn string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		k := newKey()
		serial++
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c, k, der
	}
	mkLeaf := func(ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, server bool) ([]byte, *ecdsa.PrivateKey) {
		k := newKey()
		serial++
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		if server {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, k
	}
	ca, caKey, caDER := mkCA("stave test CA")
	rogue, rogueKey, _ := mkCA("rogue CA")
	var p testPKI
	p.ca = write("ca.pem", "CERTIFICATE", caDER)
	der, k := mkLeaf(ca, caKey, "stave", true)
	p.serverCert, p.serverKey = write("server.pem", "CERTIFICATE", der), writeKey("server.key", k)
	der, k = mkLeaf(ca, caKey, "admin", false)
	p.clientCert, p.clientKey = write("client.pem", "CERTIFICATE", der), writeKey("client.key", k)
	der, k = mkLeaf(rogue, rogueKey, "mallory", false)
	p.rogueCert, p.rogueKey = write("rogue.pem", "CERTIFICATE", der), writeKey("rogue.key", k)
	return p
}

func TestMutualTLS(t *testing.T) {
	p := newTestPKI(t)
	e := startTCP(t, AuthConfig{ClientCA: p.ca, TLSCert: p.serverCert, TLSKey: p.serverKey})
	addr := "https://" + e.addr

	cl, err := NewClientWith(addr, ClientOptions{Cert: p.clientCert, Key: p.clientKey, CA: p.ca})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.CreateVolume(ctxT(t), CreateRequest{Name: "mt", Size: 1 << 20}); err != nil {
		t.Fatalf("client certificate: %v", err)
	}

	// No client certificate: a JSON 401 that says what to give.
	nocert, err := NewClientWith(addr, ClientOptions{CA: p.ca})
	if err != nil {
		t.Fatal(err)
	}
	defer nocert.Close()
	_, err = nocert.ListVolumes(ctxT(t))
	apiErr(t, err, http.StatusUnauthorized, "requires a client certificate")
	// Probes need no certificate.
	if _, err := nocert.Health(ctxT(t)); err != nil {
		t.Errorf("healthz without a client certificate: %v", err)
	}

	// A certificate of another CA is refused: Go's client does not even
	// send it (the server names its CAs), other clients fail the
	// handshake.
	rogue, err := NewClientWith(addr, ClientOptions{Cert: p.rogueCert, Key: p.rogueKey, CA: p.ca})
	if err != nil {
		t.Fatal(err)
	}
	defer rogue.Close()
	_, err = rogue.ListVolumes(ctxT(t))
	var ae *APIError
	if !errors.Is(err, ErrUnreachable) && !(errors.As(err, &ae) && ae.StatusCode == http.StatusUnauthorized) {
		t.Errorf("rogue client certificate: %v, want a refusal", err)
	}

	// Not trusting the server's CA: the error says to give --api-ca.
	untrusting, err := NewClientWith(addr, ClientOptions{Cert: p.clientCert, Key: p.clientKey})
	if err != nil {
		t.Fatal(err)
	}
	defer untrusting.Close()
	if _, err := untrusting.ListVolumes(ctxT(t)); err == nil || !strings.Contains(err.Error(), "--api-ca") {
		t.Errorf("unknown server CA: %v", err)
	}
}

func TestTokenAndMutualTLS(t *testing.T) {
	p := newTestPKI(t)
	tok := writeFile(t, shortTempDir(t), "token", testToken, 0o600)
	e := startTCP(t, AuthConfig{TokenFile: tok, ClientCA: p.ca, TLSCert: p.serverCert, TLSKey: p.serverKey})
	addr := "https://" + e.addr
	certOnly, _ := NewClientWith(addr, ClientOptions{Cert: p.clientCert, Key: p.clientKey, CA: p.ca})
	defer certOnly.Close()
	_, err := certOnly.ListVolumes(ctxT(t))
	apiErr(t, err, http.StatusUnauthorized, "missing bearer token")
	both, _ := NewClientWith(addr, ClientOptions{TokenFile: tok, Cert: p.clientCert, Key: p.clientKey, CA: p.ca})
	defer both.Close()
	if _, err := both.ListVolumes(ctxT(t)); err != nil {
		t.Errorf("token and certificate: %v", err)
	}
}

func TestParseAddress(t *testing.T) {
	cases := []struct {
		in, network, addr string
		tls               bool
		err               string
	}{
		{"unix:/run/stave.sock", "unix", "/run/stave.sock", false, ""},
		{"unix:rel.sock", "unix", "rel.sock", false, ""},
		{"unix:///run/stave.sock", "unix", "/run/stave.sock", false, ""},
		{"/run/stave.sock", "unix", "/run/stave.sock", false, ""},
		{"./stave-data/stave.sock", "unix", "./stave-data/stave.sock", false, ""},
		{"http://127.0.0.1:8080", "tcp", "127.0.0.1:8080", false, ""},
		{"https://[::1]:8443/", "tcp", "[::1]:8443", true, ""},
		{"https://stave.example.com:8443", "tcp", "stave.example.com:8443", true, ""},
		{"unix:", "", "", false, "socket path is empty"},
		{"unix://rel", "", "", false, "absolute path"},
		{"https://host", "", "", false, "HOST:PORT"},
		{"https://host:1/v1", "", "", false, "only the scheme"},
		{"tcp:1.2.3.4", "", "", false, "unknown form"},
		{"stave.sock", "", "", false, "unknown form"},
	}
	for _, c := range cases {
		n, a, tl, err := ParseAddress(c.in)
		if c.err != "" {
			if !errors.Is(err, ErrBadAddress) || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseAddress(%q) = %v, want ErrBadAddress containing %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || n != c.network || a != c.addr || tl != c.tls {
			t.Errorf("ParseAddress(%q) = %q %q %v %v; want %q %q %v", c.in, n, a, tl, err, c.network, c.addr, c.tls)
		}
	}
	if _, err := SocketPath("https://h:1"); !errors.Is(err, ErrBadAddress) {
		t.Errorf("SocketPath(https) = %v", err)
	}
	if _, err := NewClientWith("http://h:1", ClientOptions{Cert: "/c"}); err == nil || !strings.Contains(err.Error(), "--api-key") {
		t.Errorf("cert without key: %v", err)
	}
	if _, err := NewClientWith("http://h:1", ClientOptions{Cert: "/c", Key: "/k"}); err == nil || !strings.Contains(err.Error(), "https://") {
		t.Errorf("cert over plain http: %v", err)
	}
}

func TestReadyz(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	s := e.s
	s.readyTimeout = 200 * time.Millisecond // before any request: no race
	if rd, err := e.cl.Ready(ctx); err != nil || rd.Status != "ready" || rd.Checks["volumes"] != "ok" {
		t.Fatalf("fresh server: %+v %v", rd, err)
	}
	if _, err := e.cl.CreateVolume(ctx, CreateRequest{Name: "r1", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	e.tg.mu.Lock()
	delete(e.tg.exported, "r1")
	e.tg.mu.Unlock()
	_, err := e.cl.Ready(ctx)
	apiErr(t, err, http.StatusServiceUnavailable, "volumes: volumes not exported: r1")

	e.tg.mu.Lock()
	e.tg.exported["r1"] = true
	e.tg.mu.Unlock()
	s.AddReadinessCheck("etcd", func(context.Context) error { return errors.New("no quorum: start 2 of 3 members") })
	s.AddReadinessCheck("slow", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	body := get(t, e, "/readyz", http.StatusServiceUnavailable)
	var rd Readiness
	if err := json.Unmarshal([]byte(body), &rd); err != nil {
		t.Fatal(err)
	}
	if rd.Status != "not ready" || rd.Checks["volumes"] != "ok" || !strings.Contains(rd.Checks["etcd"], "no quorum") ||
		!strings.Contains(rd.Checks["slow"], "no answer within") || !strings.Contains(rd.Error, "etcd: no quorum") {
		t.Errorf("readyz: %s", body)
	}
	// A check added again under its name replaces the old one.
	s.AddReadinessCheck("etcd", func(context.Context) error { return nil })
	s.AddReadinessCheck("slow", func(context.Context) error { return nil })
	if rd, err := e.cl.Ready(ctx); err != nil || len(rd.Checks) != 3 {
		t.Errorf("after fixing: %+v %v", rd, err)
	}
}

func TestConnection(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	s := e.s
	chap := &volume.CHAP{User: "u", Secret: "0123456789abc", MutualUser: "t", MutualSecret: "abcdefghijklm"}
	if _, err := e.cl.CreateVolume(ctx, CreateRequest{Name: "c1", Size: 1 << 20, CHAP: chap}); err != nil {
		t.Fatal(err)
	}
	cn, err := e.cl.Connection(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if cn.Target != "iqn.2026-11.dev.stave:c1" || cn.LUN != 0 || cn.Size != 1<<20 || len(cn.Portals) != 0 ||
		cn.CHAP == nil || *cn.CHAP != *chap || cn.DiscoveryCHAP != nil {
		t.Errorf("before SetNode: %+v", cn)
	}
	s.SetNode(NodeConfig{
		Portals:       func(v string) []string { return []string{"192.0.2.1:3260", fmt.Sprintf("192.0.2.2:%d", len(v))} },
		DiscoveryCHAP: &DiscoveryCHAP{User: "d", Secret: "discovery-secret"},
	})
	cn, err = e.cl.Connection(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cn.Portals, ",") != "192.0.2.1:3260,192.0.2.2:2" || cn.DiscoveryCHAP == nil || cn.DiscoveryCHAP.Secret != "discovery-secret" {
		t.Errorf("after SetNode: %+v", cn)
	}
	_, err = e.cl.Connection(ctx, "absent")
	apiErr(t, err, http.StatusNotFound, `no volume named "absent"`)
	// The volume itself still carries no secret.
	if b := get(t, e, "/v1/volumes/c1", http.StatusOK); strings.Contains(b, chap.Secret) {
		t.Errorf("GET /v1/volumes/c1 shows the secret: %s", b)
	}
}
