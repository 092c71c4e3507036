package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"path/filepath"
	"testing"
	"time"

	"stave.dev/stave/internal/testcert"
	"stave.dev/stave/replication"
)

// writeCert writes a certificate for 127.0.0.1 signed by parent (self-
// signed CA when parent is nil) and its key; it returns the cert and key.
func writeCert(t *testing.T, dir, name string, ca bool, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IsCA:        ca, BasicConstraintsValid: true}
	return testcert.Issue(t, filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"), tmpl, parent, parentKey)
}

// noISR refuses ISR changes: the test's replica must stay in sync.
type noISR struct{}

func (noISR) Remove(context.Context, uint64, string) error {
	return errors.New("no ISR changes in this test")
}
func (noISR) Add(context.Context, uint64, string) error {
	return errors.New("no ISR changes in this test")
}

// TestReplicationTLS runs an owner and a replica over mutual TLS built by
// replicationTLS: writes reach the replica; a client whose certificate
// another CA signed is refused.
func TestReplicationTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := writeCert(t, dir, "ca", true, nil, nil)
	writeCert(t, dir, "n1", false, ca, caKey)
	writeCert(t, dir, "n2", false, ca, caKey)
	other, otherKey := writeCert(t, dir, "other-ca", true, nil, nil)
	writeCert(t, dir, "rogue", false, other, otherKey)
	p := func(n string) string { return filepath.Join(dir, n) }

	srvTLS, _, err := replicationTLS(p("n2.crt"), p("n2.key"), p("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	_, cliTLS, err := replicationTLS(p("n1.crt"), p("n1.key"), p("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	_, rogueTLS, err := replicationTLS(p("rogue.crt"), p("rogue.key"), p("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := replicationTLS(p("n1.crt"), p("n1.key"), p("n1.key")); err == nil {
		t.Fatal("a CA file without a certificate was accepted")
	}

	const size = 1 << 20
	replica := replication.NewMemStore(size)
	epochs, err := replication.OpenEpochStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv := replication.NewServer(replication.ServerConfig{Node: "n2", Epochs: epochs, TLS: srvTLS,
		Lookup: func(v string) (replication.Store, bool) { return replica, v == "v" }})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()

	open := func(c *tls.Config) (*replication.Volume, error) {
		return replication.OpenVolume(ctx, replication.VolumeConfig{Name: "v", Node: "n1", Epoch: 1,
			Local: replication.NewMemStore(size), Replicas: []replication.Peer{{Node: "n2", Addr: ln.Addr().String()}},
			ISR: noISR{}, TLS: c, DialTimeout: 5 * time.Second})
	}
	if _, err := open(rogueTLS); err == nil {
		t.Fatal("a replica accepted a client certificate from another CA")
	}
	v, err := open(cliTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	data := bytes.Repeat([]byte{0x5a}, 4096)
	if err := v.WriteAt(ctx, data, 8192, false); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if err := replica.ReadAt(ctx, got, 8192); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("replica after a write over TLS: %v, equal %v", err, bytes.Equal(got, data))
	}
}
