package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"stave.dev/stave/internal/testcert"
)

// writePEM writes a certificate (signed by parent, or self-signed) and
// its key as PEM files and returns the certificate and key.
func writePEM(t *testing.T, dir, name string, tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	return testcert.Issue(t, filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem"), tmpl, parent, parentKey)
}

// TestExternalTLS connects to an external etcd that requires client
// certificates (mutual TLS), as --etcd-endpoints with --etcd-ca,
// --etcd-cert and --etcd-key do, and checks that a client without a
// certificate is refused.
func TestExternalTLS(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	ca, caKey := writePEM(t, dir, "ca", &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, nil, nil)
	writePEM(t, dir, "server", &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "etcd"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, ca, caKey)
	writePEM(t, dir, "client", &x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "stave"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, ca, caKey)

	clientURLs, err := urlsOrFree(nil, "client")
	if err != nil {
		t.Fatal(err)
	}
	peerURLs, err := urlsOrFree(nil, "peer")
	if err != nil {
		t.Fatal(err)
	}
	clientURLs[0].Scheme = "https"
	ec := embed.NewConfig()
	ec.Dir = filepath.Join(dir, "etcd")
	ec.Name = "tls"
	ec.TickMs, ec.ElectionMs = embeddedTickMs, embeddedElectionMs
	ec.LogLevel = "error"
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{clientURLs[0]}, []url.URL{clientURLs[0]}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = peerURLs, peerURLs
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.ClientTLSInfo.CertFile = filepath.Join(dir, "server.pem")
	ec.ClientTLSInfo.KeyFile = filepath.Join(dir, "server-key.pem")
	ec.ClientTLSInfo.TrustedCAFile = filepath.Join(dir, "ca.pem")
	ec.ClientTLSInfo.ClientCertAuth = true
	e, err := embed.StartEtcd(ec)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("etcd not ready")
	}
	ep := clientURLs[0].String()
	ctx := context.Background()
	c, err := Open(ctx, Config{Endpoints: []string{ep}, CAFile: filepath.Join(dir, "ca.pem"),
		CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client-key.pem")})
	if err != nil {
		t.Fatal(err)
	}
	if c.Embedded() {
		t.Error("external cluster reports embedded")
	}
	if err := c.Healthy(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()

	// Without a client certificate the server refuses the handshake.
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := Open(sctx, Config{Endpoints: []string{ep}, CAFile: filepath.Join(dir, "ca.pem")}); !errors.Is(err, ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Open without a client certificate = %v, want ErrUnavailable", err)
	}
	if _, err := Open(ctx, Config{Endpoints: []string{ep}, CertFile: filepath.Join(dir, "client.pem")}); err == nil {
		t.Fatal("Open with a certificate but no key succeeded")
	}
}
