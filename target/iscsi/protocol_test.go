package iscsi

import (
	"bytes"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"stave.dev/stave/target/iscsi/login"
)

func TestLeakAbruptDisconnect(t *testing.T) {
	ts := startServer(t)
	// Baseline after one clean session, so lazily started goroutines count.
	warm := newInitiator(t, dialTCP(t, ts.addr), 200)
	warm.login(testTarget)
	warm.logout()
	waitFor(t, "warm-up session to close", func() bool { return len(ts.srv.Sessions()) == 0 })
	base := runtime.NumGoroutine()
	for i := range 40 {
		ti := newInitiator(t, dialTCP(t, ts.addr), byte(i))
		ti.login(testTarget)
		switch i % 4 {
		case 0: // half-sent unsolicited Data-Out
			h := ti.scsiHeader(cdb10(0x2a, 0, 128), false, true, 65536, false)
			ti.send(h, nil, make([]byte, 4096))
			d := ti.dataOutPDU(h.ITT(), reservedTag, 0, 4096, false)
			b := AppendPDU(nil, d, nil, make([]byte, 8192), false, false)
			ti.nc.Write(b[:len(b)/2])
		case 1: // waiting for R2T data
			h := ti.scsiHeader(cdb10(0x2a, 0, 1024), false, true, 1024*512, true)
			ti.send(h, nil, nil)
			if rh, _ := ti.recv(); rh.Opcode() != OpR2T {
				t.Fatalf("want R2T, got %s", rh.Opcode())
			}
		case 2: // a read blocked in the device
			ti.send(ti.scsiHeader(cdb10(0x28, blockLBA, 1), true, false, 512, true), nil, nil)
		case 3: // half a header
			h := ti.scsiHeader(cdb10(0x28, 0, 1), true, false, 512, true)
			ti.nc.Write(h[:20])
		}
		ti.nc.Close()
	}
	waitFor(t, "sessions to close", func() bool { return len(ts.srv.Sessions()) == 0 })
	waitFor(t, "tasks to be released", func() bool { return ts.srv.pools.live.Load() == 0 })
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d, baseline %d\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCmdSNWindow(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.QueueDepth = 8 })
	ti := newInitiator(t, dialTCP(t, ts.addr), 9)
	ti.login(testTarget)
	// The window is QueueDepth wide.
	res := ti.do([]byte{0, 0, 0, 0, 0, 0}, 0, nil, false)
	if res.status != 0 || ti.maxCmdSN != ti.cmdSN+7 {
		t.Fatalf("MaxCmdSN %d, CmdSN %d", ti.maxCmdSN, ti.cmdSN)
	}
	// Send CmdSN+1 first (held), then CmdSN: both answered, in order of delivery.
	first := ti.scsiHeader([]byte{0, 0, 0, 0, 0, 0}, false, false, 0, true)
	second := ti.scsiHeader([]byte{0, 0, 0, 0, 0, 0}, false, false, 0, true)
	ti.send(second, nil, nil)
	// A command beyond MaxCmdSN is silently dropped.
	tooHigh := ti.scsiHeader([]byte{0, 0, 0, 0, 0, 0}, false, false, 0, true)
	tooHigh.put32(offField24, ti.maxCmdSN+5)
	ti.send(tooHigh, nil, nil)
	// A duplicate of an old CmdSN is dropped too.
	old := ti.scsiHeader([]byte{0, 0, 0, 0, 0, 0}, false, false, 0, true)
	old.put32(offField24, first.CmdSN()-3)
	ti.send(old, nil, nil)
	ti.cmdSN -= 2
	ti.send(first, nil, nil)
	seen := map[uint32]bool{}
	for range 2 {
		rh, _ := ti.recv()
		if rh.Opcode() != OpSCSIResponse {
			t.Fatalf("got %s", rh.Opcode())
		}
		seen[rh.ITT()] = true
	}
	if !seen[first.ITT()] || !seen[second.ITT()] {
		t.Fatalf("responses for %v", seen)
	}
	// Nothing else arrives: a NOP ping round trip proves the dropped
	// commands got no response.
	h := make(BHS, BHSLen)
	h.SetOpcode(OpNOPOut, true)
	h[offFlags] = flagFinal
	h.put32(offITT, ti.nextITT())
	h.put32(offField20, reservedTag)
	h.put32(offField24, ti.cmdSN)
	ti.send(h, nil, nil)
	if rh, _ := ti.recv(); rh.Opcode() != OpNOPIn || rh.ITT() != h.ITT() {
		t.Fatalf("got %s ITT %#x after dropped commands", rh.Opcode(), rh.ITT())
	}
	if exp := ti.expCmdSN(); exp != ti.cmdSN {
		t.Fatalf("ExpCmdSN %d, want %d", exp, ti.cmdSN)
	}
	ti.logout()
}

func (ti *testInitiator) expCmdSN() uint32 {
	h := make(BHS, BHSLen)
	h.SetOpcode(OpNOPOut, true)
	h[offFlags] = flagFinal
	h.put32(offITT, ti.nextITT())
	h.put32(offField20, reservedTag)
	h.put32(offField24, ti.cmdSN)
	ti.send(h, nil, nil)
	rh, _ := ti.recv()
	return rh.ExpCmdSN()
}

func TestDigests(t *testing.T) {
	ts := startServer(t)
	ti := newInitiator(t, dialTCP(t, ts.addr), 10)
	ti.login(testTarget, login.KeyValue{Key: "HeaderDigest", Value: "CRC32C,None"},
		login.KeyValue{Key: "DataDigest", Value: "CRC32C,None"})
	if !ti.headerDigest || !ti.dataDigest {
		t.Fatalf("digests not negotiated: %v", ti.keys)
	}
	out := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	if res := ti.do(cdb10(0x2a, 100, 128), uint32(len(out)), out, false); res.status != 0 {
		t.Fatalf("write: %d", res.status)
	}
	if res := ti.do(cdb10(0x28, 100, 128), uint32(len(out)), nil, true); res.status != 0 || !bytes.Equal(res.data, out) {
		t.Fatalf("read: %d", res.status)
	}
	// A NOP-Out with a corrupt data digest is rejected; the connection stays.
	h := make(BHS, BHSLen)
	h.SetOpcode(OpNOPOut, true)
	h[offFlags] = flagFinal
	h.put32(offITT, ti.nextITT())
	h.put32(offField20, reservedTag)
	h.put32(offField24, ti.cmdSN)
	b := AppendPDU(nil, h, nil, []byte("abcd"), true, true)
	b[len(b)-1] ^= 0xff
	ti.nc.Write(b)
	rh, data := ti.recv()
	if rh.Opcode() != OpReject || RejectReason(rh[offByte2]) != RejectDataDigestError || !bytes.Equal(data[:BHSLen], b[:BHSLen]) {
		t.Fatalf("got %s reason %d", rh.Opcode(), rh[offByte2])
	}
	if res := ti.do([]byte{0, 0, 0, 0, 0, 0}, 0, nil, false); res.status != 0 {
		t.Fatalf("TUR after digest error: %d", res.status)
	}
	// A corrupt header digest closes the connection.
	b = AppendPDU(nil, h, nil, nil, true, true)
	b[BHSLen] ^= 0xff
	ti.nc.Write(b)
	ti.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := ti.r.ReadPDU(); err == nil {
		t.Fatal("connection survived a header digest error")
	}
	waitFor(t, "session removal", func() bool { return len(ts.srv.Sessions()) == 0 })
}

func TestRejects(t *testing.T) {
	ts := startServer(t)
	ti := newInitiator(t, dialTCP(t, ts.addr), 11)
	ti.login(testTarget)
	// Unknown opcode: Reject "command not supported", session goes on.
	h := make(BHS, BHSLen)
	h[0] = 0x1d
	h.put32(offITT, ti.nextITT())
	ti.send(h, nil, nil)
	rh, data := ti.recv()
	if rh.Opcode() != OpReject || RejectReason(rh[offByte2]) != RejectCommandNotSupported || len(data) != BHSLen {
		t.Fatalf("unknown opcode: %s reason %d", rh.Opcode(), rh[offByte2])
	}
	// SNACK at ERL 0: rejected.
	h[0] = byte(OpSNACKReq)
	ti.send(h, nil, nil)
	if rh, _ := ti.recv(); rh.Opcode() != OpReject {
		t.Fatalf("SNACK: %s", rh.Opcode())
	}
	// Logout "remove connection for recovery": not supported at ERL 0.
	lh := make(BHS, BHSLen)
	lh.SetOpcode(OpLogoutReq, true)
	lh[offFlags] = flagFinal | uint8(LogoutRemoveForRecover)
	lh.put32(offITT, ti.nextITT())
	lh.put32(offField24, ti.cmdSN)
	ti.send(lh, nil, nil)
	if rh, _ := ti.recv(); rh.Opcode() != OpLogoutResp || LogoutResponseCode(rh[offByte2]) != LogoutRecoveryUnsupported {
		t.Fatalf("logout for recovery: %s %d", rh.Opcode(), rh[offByte2])
	}
	// Data segment above MaxRecvDataSegmentLength: protocol error, close.
	big := ti.scsiHeader(cdb10(0x2a, 0, 1024), false, true, 1<<20, true)
	ti.send(big, nil, make([]byte, ti.maxSend+512))
	rh, _ = ti.recv()
	if rh.Opcode() != OpReject || RejectReason(rh[offByte2]) != RejectProtocolError {
		t.Fatalf("oversized data: %s reason %d", rh.Opcode(), rh[offByte2])
	}
	ti.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := ti.r.ReadPDU(); err == nil {
		t.Fatal("connection survived a protocol error")
	}
	waitFor(t, "session removal", func() bool { return len(ts.srv.Sessions()) == 0 })
}

func TestTextContinuation(t *testing.T) {
	var targets staticTargets
	dev := newFakeDev(8)
	for i := range 40 {
		targets = append(targets, &Target{Name: fmt.Sprintf("iqn.2026-11.dev.stave:volume-with-a-long-name-%03d", i), Device: dev})
	}
	ts := startServer(t, func(c *Config) { c.Targets = targets })
	ti := newInitiator(t, dialTCP(t, ts.addr), 12)
	ti.login("", login.KeyValue{Key: "MaxRecvDataSegmentLength", Value: "512"})
	h := make(BHS, BHSLen)
	h.SetOpcode(OpTextReq, true)
	h[offFlags] = flagFinal
	itt := ti.nextITT()
	h.put32(offITT, itt)
	h.put32(offField20, reservedTag)
	ti.send(h, nil, login.AppendText(nil, login.KeyValue{Key: "SendTargets", Value: "All"}))
	var all []byte
	parts := 0
	for {
		rh, data := ti.recv()
		if rh.Opcode() != OpTextResp || rh.ITT() != itt || len(data) > 512 {
			t.Fatalf("got %s itt %#x len %d", rh.Opcode(), rh.ITT(), len(data))
		}
		all = append(all, data...)
		parts++
		if rh.Final() {
			if rh.Continue() || rh.TTT() != reservedTag {
				t.Fatal("final text response with C bit or TTT")
			}
			break
		}
		if !rh.Continue() || rh.TTT() == reservedTag {
			t.Fatal("partial text response without C bit and TTT")
		}
		h := make(BHS, BHSLen)
		h.SetOpcode(OpTextReq, true)
		h[offFlags] = flagFinal
		h.put32(offITT, itt)
		h.put32(offField20, rh.TTT())
		ti.send(h, nil, nil)
	}
	kvs := strings.Split(strings.TrimSuffix(string(all), "\x00"), "\x00")
	if parts < 2 || len(kvs) != 80 || !strings.HasPrefix(kvs[78], "TargetName=iqn.2026-11.dev.stave:volume-with-a-long-name-039") ||
		!strings.HasSuffix(kvs[79], ",1") {
		t.Fatalf("%d parts, %d keys: %q", parts, len(kvs), kvs)
	}
	ti.logout()
}

func TestShutdownAsyncLogout(t *testing.T) {
	ts := startServer(t)
	ti := newInitiator(t, dialTCP(t, ts.addr), 13)
	ti.login(testTarget)
	done := make(chan struct{})
	go func() { ts.stop(); close(done) }()
	rh, _ := ti.recv()
	if rh.Opcode() != OpAsyncMessage || AsyncEvent(rh[offField36]) != AsyncLogoutRequest {
		t.Fatalf("got %s event %d", rh.Opcode(), rh[offField36])
	}
	ti.logout()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after logout")
	}
	if _, err := net.DialTimeout("tcp", ts.addr, time.Second); err == nil {
		t.Fatal("portal still listening")
	}
}

// pipeServer runs a Server on net.Pipe connections (for synctest).
func pipeServer(t testing.TB, cfg Config) (*Server, func() net.Conn) {
	dev := newFakeDev(64)
	cfg.Logger = testLogger(t)
	cfg.Portals = []Portal{{Listen: "127.0.0.1:3260"}}
	cfg.Targets = staticTargets{{Name: testTarget, Device: dev}}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return srv, func() net.Conn {
		cli, se := net.Pipe()
		srv.serveConn(se, srv.portals[0])
		return cli
	}
}

func TestNOPInPing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, dial := pipeServer(t, Config{NOPInterval: 5 * time.Second, NOPTimeout: 2 * time.Second})
		ti := newInitiator(t, dial(), 1)
		ti.login(testTarget)
		start := time.Now()
		rh, _ := ti.recv()
		if rh.Opcode() != OpNOPIn || rh.ITT() != reservedTag || rh.TTT() == reservedTag {
			t.Fatalf("got %s itt %#x ttt %#x", rh.Opcode(), rh.ITT(), rh.TTT())
		}
		if d := time.Since(start); d < 5*time.Second || d > 10*time.Second {
			t.Fatalf("ping after %v", d)
		}
		ti.nopReply(rh)
		// Answered: the next ping comes, and the connection stays up.
		rh, _ = ti.recv()
		if rh.Opcode() != OpNOPIn {
			t.Fatalf("got %s", rh.Opcode())
		}
		// Not answered: the target drops the connection after NOPTimeout.
		start = time.Now()
		ti.nc.SetReadDeadline(time.Now().Add(time.Minute))
		if _, err := ti.r.ReadPDU(); err == nil {
			t.Fatal("connection survived an unanswered ping")
		}
		if d := time.Since(start); d < 2*time.Second || d > 3*time.Second {
			t.Fatalf("dropped after %v", d)
		}
		synctest.Wait()
		if n := len(srv.Sessions()); n != 0 {
			t.Fatalf("%d sessions left", n)
		}
		srv.baseCancel()
	})
}

func TestLoginTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, dial := pipeServer(t, Config{LoginTimeout: 3 * time.Second})
		nc := dial()
		start := time.Now()
		nc.SetReadDeadline(time.Now().Add(time.Minute))
		if _, err := nc.Read(make([]byte, 1)); err == nil {
			t.Fatal("read succeeded")
		}
		if d := time.Since(start); d != 3*time.Second {
			t.Fatalf("closed after %v", d)
		}
		synctest.Wait()
		srv.baseCancel()
	})
}

func TestCmdSNWindowClosed(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.QueueDepth = 2 })
	ts.dev.started = make(chan uint64, 4)
	ti := newInitiator(t, dialTCP(t, ts.addr), 16)
	ti.login(testTarget)
	// Two blocked commands fill the window: MaxCmdSN = ExpCmdSN - 1.
	for range 2 {
		ti.send(ti.scsiHeader(cdb10(0x28, blockLBA, 1), true, false, 512, true), nil, nil)
		<-ts.dev.started
	}
	exp := ti.expCmdSN()
	if ti.maxCmdSN != exp-1 {
		t.Fatalf("ExpCmdSN %d MaxCmdSN %d, want a closed window", exp, ti.maxCmdSN)
	}
	// A command sent anyway is dropped (no response, not executed).
	ti.send(ti.scsiHeader([]byte{0, 0, 0, 0, 0, 0}, false, false, 0, true), nil, nil)
	if got := ti.expCmdSN(); got != exp {
		t.Fatalf("ExpCmdSN moved to %d on a closed window", got)
	}
	ti.nc.Close()
	waitFor(t, "session end", func() bool { return len(ts.srv.Sessions()) == 0 })
}

func TestHeldNonSCSICommands(t *testing.T) {
	ts := startServer(t)
	ti := newInitiator(t, dialTCP(t, ts.addr), 17)
	ti.login(testTarget)
	tur := ti.scsiHeader([]byte{0, 0, 0, 0, 0, 0}, false, false, 0, true)
	// A non-immediate NOP-Out and then a Logout, both ahead of the TUR.
	nop := make(BHS, BHSLen)
	nop.SetOpcode(OpNOPOut, false)
	nop[offFlags] = flagFinal
	nop.put32(offITT, ti.nextITT())
	nop.put32(offField20, reservedTag)
	nop.put32(offField24, ti.cmdSN)
	lo := make(BHS, BHSLen)
	lo.SetOpcode(OpLogoutReq, false)
	lo[offFlags] = flagFinal
	lo.put32(offITT, ti.nextITT())
	lo.put32(offField24, ti.cmdSN+1)
	ti.send(lo, nil, nil)
	ti.send(nop, nil, []byte("held"))
	ti.send(tur, nil, nil)
	// Responses may come in any order, but the Logout Response comes after
	// the status of every command before it.
	var got []Opcode
	for range 3 {
		rh, _ := ti.recv()
		got = append(got, rh.Opcode())
	}
	if got[2] != OpLogoutResp || !(got[0] == OpSCSIResponse && got[1] == OpNOPIn || got[0] == OpNOPIn && got[1] == OpSCSIResponse) {
		t.Fatalf("got %v", got)
	}
	ti.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := ti.r.ReadPDU(); err == nil {
		t.Fatal("connection open after logout")
	}
	waitFor(t, "session end", func() bool { return len(ts.srv.Sessions()) == 0 })
}
