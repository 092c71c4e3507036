package iscsi

import (
	"encoding/binary"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"stave.dev/stave/target/iscsi/login"
	"stave.dev/stave/target/scsi"
)

// sendTargetsAll runs SendTargets=All on a logged-in session.
func (ti *testInitiator) sendTargetsAll() []string { return ti.sendTargets("All") }

// sendTargets runs SendTargets=val on a logged-in session.
func (ti *testInitiator) sendTargets(val string) []string {
	h := make(BHS, BHSLen)
	h.SetOpcode(OpTextReq, true)
	h[offFlags] = flagFinal
	h.put32(offITT, ti.nextITT())
	h.put32(offField20, reservedTag)
	h.put32(offField24, ti.cmdSN)
	ti.send(h, nil, login.AppendText(nil, login.KeyValue{Key: "SendTargets", Value: val}))
	rh, data := ti.recv()
	if rh.Opcode() != OpTextResp {
		ti.t.Fatalf("got %s", rh.Opcode())
	}
	if len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(data), "\x00"), "\x00")
}

func TestWildcardPortalAdvertisesLocalAddress(t *testing.T) {
	for _, tc := range []struct{ listen, dial string }{
		{"0.0.0.0:0", "127.0.0.1"},
		{"[::]:0", "::1"},
	} {
		t.Run(tc.listen, func(t *testing.T) {
			if strings.Contains(tc.dial, ":") {
				ln, err := net.Listen("tcp", "[::1]:0")
				if err != nil {
					t.Skip("no IPv6 loopback")
				}
				ln.Close()
			}
			ts := startServer(t, func(c *Config) { c.Portals = []Portal{{Listen: tc.listen, TPGT: 7}} })
			_, port, _ := net.SplitHostPort(ts.addr)
			addr := net.JoinHostPort(tc.dial, port)
			ti := newInitiator(t, dialTCP(t, addr), 1)
			ti.login("")
			got := ti.sendTargetsAll()
			want := "TargetAddress=" + addr + ",7"
			if len(got) != 2 || got[1] != want {
				t.Fatalf("SendTargets: %q, want %q", got, want)
			}
			ti.logout()
		})
	}
}

func TestLoginTextContinuation(t *testing.T) {
	ts := startServer(t)
	ti := newInitiator(t, dialTCP(t, ts.addr), 5)
	text := login.AppendText(nil,
		login.KeyValue{Key: "InitiatorName", Value: testInitiatorName},
		login.KeyValue{Key: "TargetName", Value: testTarget},
		login.KeyValue{Key: "SessionType", Value: "Normal"},
		login.KeyValue{Key: "AuthMethod", Value: "None"})
	// First half with C=1: the target answers with an empty response.
	ti.send(ti.loginPDU(false, 0, 0, true), nil, text[:10])
	rh, data := ti.recv()
	if rh.Opcode() != OpLoginResp || len(data) != 0 || rh[36] != 0 || rh.Final() {
		t.Fatalf("continuation ack: %s len %d status %d", rh.Opcode(), len(data), rh[36])
	}
	ti.send(ti.loginPDU(true, 0, 1, false), nil, text[10:])
	rh, data = ti.recv()
	if rh[36] != 0 || !rh.Final() {
		t.Fatalf("login status %d/%d", rh[36], rh[37])
	}
	ti.keys = map[string]string{}
	ti.parseKeys(data)
	ti.send(ti.loginPDU(true, 1, 3, false), nil, login.AppendText(nil, login.KeyValue{Key: "HeaderDigest", Value: "None"}))
	rh, _ = ti.recv()
	if rh[36] != 0 || !rh.Final() || rh.Flags()&3 != 3 || binary.BigEndian.Uint16(rh[14:]) == 0 {
		t.Fatalf("final login response: % x", []byte(rh[:16]))
	}
	ti.cmdSN = rh.ExpCmdSN()
	ti.logout()
}

func TestLoginFailures(t *testing.T) {
	ts := startServer(t)
	// Not allowed by the ACL.
	ti := newInitiator(t, dialTCP(t, ts.addr), 6)
	if err := ti.tryLogin("iqn.2026-11.dev.stave:private"); err == nil {
		t.Fatal("login to ACL-protected target succeeded")
	}
	// Unknown target.
	ti = newInitiator(t, dialTCP(t, ts.addr), 6)
	if err := ti.tryLogin("iqn.2026-11.dev.stave:nope"); err == nil {
		t.Fatal("login to unknown target succeeded")
	}
	// Joining a session that does not exist.
	ti = newInitiator(t, dialTCP(t, ts.addr), 6)
	ti.tsih = 999
	if err := ti.tryLogin(testTarget); err == nil || !strings.Contains(err.Error(), "0x020a") {
		t.Fatalf("join of missing session: %v", err)
	}
	// A second connection to a MaxConnections=1 session is refused.
	first := newInitiator(t, dialTCP(t, ts.addr), 7)
	first.login(testTarget)
	ti = newInitiator(t, dialTCP(t, ts.addr), 7)
	ti.tsih, ti.cid = first.tsih, 1
	if err := ti.tryLogin(testTarget); err == nil || !strings.Contains(err.Error(), "0x0206") {
		t.Fatalf("second connection: %v", err)
	}
	first.logout()
	// A first PDU that is not a login closes the connection.
	nc := dialTCP(t, ts.addr)
	h := make(BHS, BHSLen)
	h.SetOpcode(OpNOPOut, true)
	nc.Write(h)
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := nc.Read(make([]byte, 64)); err == nil {
		t.Fatalf("read %d bytes after a non-login first PDU", n)
	}
	waitFor(t, "no sessions", func() bool { return len(ts.srv.Sessions()) == 0 })
	waitFor(t, "no tasks", func() bool { return ts.srv.pools.live.Load() == 0 })
}

func TestColdResetDropsConnections(t *testing.T) {
	ts := startServer(t)
	a := newInitiator(t, dialTCP(t, ts.addr), 7)
	a.login(testTarget)
	b := newInitiator(t, dialTCP(t, ts.addr), 8)
	b.login(testTarget)
	h := make(BHS, BHSLen)
	h.SetOpcode(OpTaskMgmtReq, true)
	h[offFlags] = flagFinal | 7
	h.put32(offITT, a.nextITT())
	h.put32(offField20, reservedTag)
	h.put32(offField24, a.cmdSN)
	a.send(h, nil, nil)
	rh, _ := a.recv()
	if rh.Opcode() != OpTaskMgmtResp || rh[offByte2] != 0 {
		t.Fatalf("cold reset: %s %d", rh.Opcode(), rh[offByte2])
	}
	for _, ti := range []*testInitiator{a, b} {
		ti.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := ti.r.ReadPDU(); err == nil {
			t.Fatal("connection survived TARGET COLD RESET")
		}
	}
	waitFor(t, "no sessions", func() bool { return len(ts.srv.Sessions()) == 0 })
}

func TestCloseTarget(t *testing.T) {
	ts := startServer(t)
	ti := newInitiator(t, dialTCP(t, ts.addr), 9)
	ti.login(testTarget)
	d := newInitiator(t, dialTCP(t, ts.addr), 10)
	d.login("")
	ts.srv.CloseTarget(testTarget)
	s := ts.srv.Sessions()
	if len(s) != 1 || s[0].Type != "Discovery" {
		t.Fatalf("sessions after CloseTarget: %+v", s)
	}
	ti.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := ti.r.ReadPDU(); err == nil {
		t.Fatal("connection survived CloseTarget")
	}
	d.logout()
}

func TestMultipleConnections(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Limits.MaxConnections = 2 })
	a := newInitiator(t, dialTCP(t, ts.addr), 11)
	a.login(testTarget, login.KeyValue{Key: "MaxConnections", Value: "2"})
	if a.keys["MaxConnections"] != "2" {
		t.Skipf("MaxConnections negotiated to %q", a.keys["MaxConnections"])
	}
	join := func(cid uint16) *testInitiator {
		b := newInitiator(t, dialTCP(t, ts.addr), 11)
		b.tsih = a.tsih
		b.cid = cid
		b.login(testTarget, login.KeyValue{Key: "MaxConnections", Value: "2"})
		return b
	}
	b := join(1)
	if s := ts.srv.Sessions(); len(s) != 1 || s[0].Connections != 2 {
		t.Fatalf("sessions: %+v", s)
	}
	// The CmdSN window is shared by the session's connections.
	b.cmdSN = a.cmdSN
	if res := b.do([]byte{0, 0, 0, 0, 0, 0}, 0, nil, false); res.status != 0 {
		t.Fatalf("TUR on second connection: %d", res.status)
	}
	a.cmdSN = b.cmdSN
	// Connection reinstatement: a new connection with CID 1 replaces b.
	c := join(1)
	b.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := b.r.ReadPDU(); err == nil {
		t.Fatal("reinstated connection still open")
	}
	if s := ts.srv.Sessions(); len(s) != 1 || s[0].Connections != 2 {
		t.Fatalf("sessions after reinstatement: %+v", s)
	}
	c.cmdSN = a.cmdSN
	c.logout()
	waitFor(t, "no sessions", func() bool { return len(ts.srv.Sessions()) == 0 })
}

func TestTaskAttr(t *testing.T) {
	for in, want := range map[uint8]scsi.TaskAttr{0: scsi.TaskSimple, 1: scsi.TaskSimple, 2: scsi.TaskOrdered,
		3: scsi.TaskHeadOfQueue, 4: scsi.TaskACA, 7: scsi.TaskSimple} {
		if got := taskAttr(in); got != want {
			t.Errorf("taskAttr(%d) = %d, want %d", in, got, want)
		}
	}
	for raw, want := range map[uint64]uint64{0: 0, 5 << 48: 5, 0x4105 << 48: 0x105, 1<<48 | 1: 1<<48 | 1} {
		if got := decodeLUN(raw); got != want {
			t.Errorf("decodeLUN(%#x) = %#x, want %#x", raw, got, want)
		}
	}
}

func TestSendTargetsValues(t *testing.T) {
	ts := startServer(t)
	ti := newInitiator(t, dialTCP(t, ts.addr), 14)
	ti.login(testTarget)
	addr := "TargetAddress=" + ts.addr + ",1"
	for _, tc := range []struct {
		val  string
		want []string
	}{
		{"", []string{"TargetName=" + testTarget, addr}},
		{"All", []string{"TargetName=" + testTarget, addr}},
		{testTarget, []string{"TargetName=" + testTarget, addr}},
		{"iqn.2026-11.dev.stave:private", nil}, // hidden by its ACL
		{"iqn.2026-11.dev.stave:nope", nil},
	} {
		if got := ti.sendTargets(tc.val); strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("SendTargets=%s: %q, want %q", tc.val, got, tc.want)
		}
	}
	ti.logout()
}

func TestWriteTimeoutDropsStuckInitiator(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.WriteTimeout = 200 * time.Millisecond })
	ti := newInitiator(t, dialTCP(t, ts.addr), 15)
	ti.login(testTarget)
	if tc, ok := ti.nc.(*net.TCPConn); ok {
		tc.SetReadBuffer(4096)
	}
	// 64 reads of 1 MiB that the initiator never reads.
	for range 64 {
		ti.send(ti.scsiHeader(cdb10(0x28, 0, 2048), true, false, 1<<20, true), nil, nil)
	}
	start := time.Now()
	waitFor(t, "stuck session to be dropped", func() bool { return len(ts.srv.Sessions()) == 0 })
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("session dropped after %v, before the write timeout", d)
	}
	waitFor(t, "tasks released", func() bool { return ts.srv.pools.live.Load() == 0 })
	runtime.KeepAlive(ti.nc) // the socket must stay open (unread) until here
}

func TestBidirectionalRefused(t *testing.T) {
	ts := startServer(t)
	ti := newInitiator(t, dialTCP(t, ts.addr), 18)
	ti.login(testTarget)
	h := ti.scsiHeader(cdb10(0x2a, 0, 1), true, true, 512, true)
	ti.send(h, AppendBidiAHS(nil, 512), make([]byte, 512))
	rh, data := ti.recv()
	if rh.Opcode() != OpSCSIResponse || rh[offByte3] != 2 || len(data) < 16 || data[2+2]&0xf != 5 || data[2+12] != 0x24 {
		t.Fatalf("bidi: %s status %d sense %x", rh.Opcode(), rh[offByte3], data)
	}
	// The session goes on.
	if res := ti.do([]byte{0, 0, 0, 0, 0, 0}, 0, nil, false); res.status != 0 {
		t.Fatalf("TUR: %d", res.status)
	}
	ti.logout()
}
