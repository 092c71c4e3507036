package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"stave.dev/stave/internal/adminapi"
)

// loginNormal opens a connection to portal and logs in to target as
// initiator with a one-PDU Login Request that goes straight from the
// operational stage to full feature phase (RFC 7143 §11.12; no CHAP). It
// returns the connection in full feature phase.
func loginNormal(t *testing.T, portal, initiator, target string) net.Conn {
	t.Helper()
	c, rsp := loginRaw(t, portal, initiator, target)
	if rsp[36] != 0 || rsp[37] != 0 {
		t.Fatalf("login refused: status class %d detail %d", rsp[36], rsp[37])
	}
	if rsp[1]&0x80 == 0 || rsp[1]&3 != 3 {
		t.Fatalf("login did not reach full feature phase: flags 0x%02x", rsp[1])
	}
	_ = c.SetDeadline(time.Time{})
	return c
}

// loginRaw sends the Login Request of loginNormal and returns the connection
// and the Login Response.
func loginRaw(t *testing.T, portal, initiator, target string) (net.Conn, []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", portal, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	data := []byte("InitiatorName=" + initiator + "\x00SessionType=Normal\x00TargetName=" + target +
		"\x00HeaderDigest=None\x00DataDigest=None\x00")
	bhs := make([]byte, 48)
	bhs[0] = 0x40 | 0x03     // immediate, Login Request
	bhs[1] = 0x80 | 1<<2 | 3 // T, CSG=operational, NSG=full feature
	bhs[5] = byte(len(data) >> 16)
	bhs[6] = byte(len(data) >> 8)
	bhs[7] = byte(len(data))
	copy(bhs[8:14], []byte{0x80, 0x12, 0x34, 0x56, 0x00, 0x01}) // ISID: random format
	binary.BigEndian.PutUint32(bhs[16:], 1)                     // ITT
	binary.BigEndian.PutUint32(bhs[24:], 1)                     // CmdSN
	pdu := append(bhs, data...)
	for len(pdu)%4 != 0 {
		pdu = append(pdu, 0)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(pdu); err != nil {
		t.Fatal(err)
	}
	rsp := readPDU(t, c)
	if rsp[0]&0x3f != 0x23 {
		t.Fatalf("login: got opcode 0x%02x, want Login Response", rsp[0]&0x3f)
	}
	return c, rsp
}

// readPDU reads one PDU (no digests) and returns its BHS and data.
func readPDU(t *testing.T, c net.Conn) []byte {
	t.Helper()
	bhs := make([]byte, 48)
	if _, err := io.ReadFull(c, bhs); err != nil {
		t.Fatalf("reading PDU: %v", err)
	}
	n := int(bhs[4])*4 + int(bhs[5])<<16 | int(bhs[6])<<8 | int(bhs[7])
	rest := make([]byte, (n+3)&^3)
	if _, err := io.ReadFull(c, rest); err != nil {
		t.Fatalf("reading PDU data: %v", err)
	}
	return append(bhs, rest...)
}

// TestSessionsAndLiveDelete logs in to a volume's target, sees the session
// through the CLI, deletes the volume and checks that the session is
// dropped; then checks that shutdown asks a logged-in initiator to log out.
func TestSessionsAndLiveDelete(t *testing.T) {
	d := newDaemon(t)
	d.mustCLI("volume", "create", "v1", "--size", "1MiB")
	d.mustCLI("volume", "create", "v2", "--size", "1MiB", "--allow", "iqn.2026-11.dev.test:other")
	const ini = "iqn.2026-11.dev.test:ini"
	c := loginNormal(t, d.portal, ini, "iqn.2026-11.dev.stave:v1")

	var ss []adminapi.Session
	if err := json.Unmarshal([]byte(d.mustCLI("session", "list", "-o", "json")), &ss); err != nil {
		t.Fatal(err)
	}
	if len(ss) != 1 || ss[0].InitiatorName != ini || ss[0].TargetName != "iqn.2026-11.dev.stave:v1" ||
		ss[0].TSIH == 0 || ss[0].Params["HeaderDigest"] != "None" {
		t.Fatalf("sessions = %+v", ss)
	}
	if out := d.mustCLI("session", "list"); !strings.Contains(out, ini) || !strings.Contains(out, "MaxBurstLength=") {
		t.Errorf("session list table:\n%s", out)
	}
	var v adminapi.Volume
	if err := json.Unmarshal([]byte(d.mustCLI("volume", "show", "v1", "-o", "json")), &v); err != nil || v.Sessions != 1 {
		t.Errorf("volume show: sessions %d, %v", v.Sessions, err)
	}

	d.mustCLI("volume", "delete", "v1")
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("session of a deleted volume still open after 10s")
		}
	}
	if err := json.Unmarshal([]byte(d.mustCLI("session", "list", "-o", "json")), &ss); err != nil || len(ss) != 0 {
		t.Errorf("sessions after delete = %+v, %v", ss, err)
	}

	// v2's ACL admits only iqn.2026-11.dev.test:other; a login of ini fails
	// and one of other succeeds.
	if _, rsp := loginRaw(t, d.portal, ini, "iqn.2026-11.dev.stave:v2"); rsp[36] != 2 {
		t.Errorf("login outside the ACL: status class %d detail %d, want class 2 (initiator error)", rsp[36], rsp[37])
	}
	if _, rsp := loginRaw(t, d.portal, ini, "iqn.2026-11.dev.stave:v1"); rsp[36] != 2 || rsp[37] != 3 {
		t.Errorf("login to deleted volume: status %d/%d, want 2/3 (not found)", rsp[36], rsp[37])
	}
	c3 := loginNormal(t, d.portal, "iqn.2026-11.dev.test:other", "iqn.2026-11.dev.stave:v2")

	// Shutdown sends an Async Message requesting logout (RFC 7143 §11.9.1).
	stopped := make(chan struct{})
	go func() { d.stop(); close(stopped) }()
	_ = c3.SetReadDeadline(time.Now().Add(10 * time.Second))
	p := readPDU(t, c3)
	if p[0]&0x3f != 0x32 || p[36] != 1 {
		t.Errorf("on shutdown got opcode 0x%02x event %d, want Async Message event 1 (logout request)", p[0]&0x3f, p[36])
	}
	c3.Close()
	select {
	case <-stopped:
	case <-time.After(20 * time.Second):
		t.Fatal("daemon did not stop")
	}
}
