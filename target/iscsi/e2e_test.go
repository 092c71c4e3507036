package iscsi

import (
	"bytes"
	"context"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"stave.dev/stave/target/iscsi/login"
)

const testTarget = "iqn.2026-11.dev.stave:vol0"

type testServer struct {
	srv  *Server
	addr string
	dev  *fakeDev
	stop func()
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("ISCSI_TEST_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func startServer(t testing.TB, mods ...func(*Config)) *testServer {
	t.Helper()
	dev := newFakeDev(4096)
	cfg := Config{
		Logger:  testLogger(t),
		Portals: []Portal{{Listen: "127.0.0.1:0"}},
		Targets: staticTargets{
			{Name: testTarget, Device: dev},
			{Name: "iqn.2026-11.dev.stave:private", ACL: []string{"iqn.other"}, Device: dev},
		},
	}
	for _, m := range mods {
		m(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	ts := &testServer{srv: srv, addr: srv.Addrs()[0].String(), dev: dev}
	var stop func()
	var once sync.Once
	ts.stop = func() { once.Do(stop) }
	stop = func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("Serve did not return")
		}
	}
	t.Cleanup(ts.stop)
	return ts
}

// waitFor polls cond for up to 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestEndToEnd(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.Limits.MaxRecvDataSegmentLength = 8192
		c.Limits.MaxBurstLength = 65536
		c.Limits.FirstBurstLength = 16384
		c.Limits.MaxOutstandingR2T = 3
	})
	ti := newInitiator(t, dialTCP(t, ts.addr), 1)
	ti.login(testTarget, login.KeyValue{Key: "MaxRecvDataSegmentLength", Value: "4096"})
	if ti.maxSend != 8192 {
		t.Fatalf("target MaxRecvDataSegmentLength %d", ti.maxSend)
	}

	// INQUIRY with an allocation length larger than the data: underflow.
	res := ti.do([]byte{0x12, 0, 0, 0, 96, 0}, 96, nil, true)
	if res.status != 0 || len(res.data) != 36 || !strings.Contains(string(res.data), "STAVE") {
		t.Fatalf("INQUIRY: status %d data %q", res.status, res.data)
	}
	if res.flags&dataInFlagUnderflow == 0 || res.residual != 60 {
		t.Fatalf("INQUIRY residual: flags %#x residual %d", res.flags, res.residual)
	}

	// Write 200 KiB: immediate data + unsolicited Data-Out + R2Ts.
	const blocks = 400
	out := make([]byte, blocks*fakeBS)
	for i := range out {
		out[i] = byte(rand.Uint32())
	}
	res = ti.do(cdb10(0x2a, 10, blocks), uint32(len(out)), out, false)
	if res.status != 0 {
		t.Fatalf("WRITE(10): status %d sense %x", res.status, res.sense)
	}
	// 200 KiB - 16 KiB unsolicited = 184 KiB in 64 KiB bursts = 3 R2Ts.
	if res.r2ts != 3 || res.expDataSN != 3 {
		t.Fatalf("WRITE(10): %d R2Ts, ExpDataSN %d, want 3", res.r2ts, res.expDataSN)
	}
	ts.dev.mu.Lock()
	same := bytes.Equal(ts.dev.data[10*fakeBS:(10+blocks)*fakeBS], out)
	ts.dev.mu.Unlock()
	if !same {
		t.Fatal("device data differs from written data")
	}

	// Read it back: Data-In split by the initiator's 4096-byte segments,
	// status collapsed into the last Data-In.
	res = ti.do(cdb16(0x88, 10, blocks), uint32(len(out)), nil, true)
	if res.status != 0 || !bytes.Equal(res.data, out) {
		t.Fatalf("READ(16): status %d, %d bytes, equal=%v", res.status, len(res.data), bytes.Equal(res.data, out))
	}
	if res.dataIns != len(out)/4096 {
		t.Fatalf("READ(16): %d Data-In PDUs, want %d", res.dataIns, len(out)/4096)
	}
	// Data-In sequences end (F bit) at every MaxBurstLength (64 KiB).
	if want := (len(out) + 65535) / 65536; res.finals != want {
		t.Fatalf("READ(16): %d Data-In sequences, want %d", res.finals, want)
	}

	// Read with a short EDTL: overflow.
	res = ti.do(cdb10(0x28, 10, 2), 512, nil, true)
	if res.flags&dataInFlagOverflow == 0 || res.residual != 512 || len(res.data) != 512 {
		t.Fatalf("short READ: flags %#x residual %d len %d", res.flags, res.residual, len(res.data))
	}

	// Write with EDTL larger than the CDB: underflow reported on the response.
	res = ti.do(cdb10(0x2a, 10, 1), 1024, make([]byte, 1024), false)
	if res.flags&respFlagUnderflow == 0 || res.residual != 512 {
		t.Fatalf("long WRITE: flags %#x residual %d", res.flags, res.residual)
	}

	// Error: sense data in the SCSI Response.
	res = ti.do([]byte{0xff, 0, 0, 0, 0, 0}, 0, nil, false)
	if res.status != 2 || len(res.sense) < 14 || res.sense[2] != 5 || res.sense[12] != 0x20 {
		t.Fatalf("bad opcode: status %d sense %x", res.status, res.sense)
	}

	// NOP-Out ping is echoed.
	h := make(BHS, BHSLen)
	h.SetOpcode(OpNOPOut, true)
	h[offFlags] = flagFinal
	h.put32(offITT, ti.nextITT())
	h.put32(offField20, reservedTag)
	h.put32(offField24, ti.cmdSN)
	ti.send(h, nil, []byte("ping!"))
	rh, data := ti.recv()
	if rh.Opcode() != OpNOPIn || rh.ITT() != h.ITT() || string(data) != "ping!" {
		t.Fatalf("NOP-In: %s itt %#x data %q", rh.Opcode(), rh.ITT(), data)
	}

	if got := ts.srv.Sessions(); len(got) != 1 || got[0].TargetName != testTarget || got[0].TSIH != ti.tsih {
		t.Fatalf("Sessions() = %+v", got)
	}
	ti.logout()
	waitFor(t, "session removal", func() bool { return len(ts.srv.Sessions()) == 0 })
	if ts.dev.lost.Load() != 1 {
		t.Fatalf("NexusLost called %d times", ts.dev.lost.Load())
	}
}

func TestTaskManagementAbort(t *testing.T) {
	ts := startServer(t)
	ts.dev.started = make(chan uint64, 4)
	ti := newInitiator(t, dialTCP(t, ts.addr), 2)
	ti.login(testTarget)

	// A read that blocks in the device until aborted.
	h := ti.scsiHeader(cdb10(0x28, blockLBA, 1), true, false, 512, true)
	blocked := h.ITT()
	blockedSN := h.CmdSN()
	ti.send(h, nil, nil)
	select {
	case <-ts.dev.started:
	case <-time.After(10 * time.Second):
		t.Fatal("blocked task never started")
	}
	tmf := func(fn uint8, rtt, refCmdSN uint32) uint8 {
		h := make(BHS, BHSLen)
		h.SetOpcode(OpTaskMgmtReq, true)
		h[offFlags] = flagFinal | fn
		h.put32(offITT, ti.nextITT())
		h.put32(offField20, rtt)
		h.put32(offField24, ti.cmdSN)
		h.put32(offField28, ti.expStatSN)
		h.put32(offField32, refCmdSN)
		ti.send(h, nil, nil)
		for {
			rh, _ := ti.recv()
			if rh.Opcode() == OpTaskMgmtResp {
				if rh.ITT() != h.ITT() {
					t.Fatalf("TMF response ITT %#x", rh.ITT())
				}
				return rh[offByte2]
			}
			if rh.Opcode() == OpSCSIResponse || rh.Opcode() == OpSCSIDataIn {
				t.Fatalf("aborted task got a response (%s)", rh.Opcode())
			}
		}
	}
	if r := tmf(1, blocked, blockedSN); r != 0 {
		t.Fatalf("ABORT TASK: response %d", r)
	}
	// Finished/unknown task, RefCmdSN already used: task does not exist.
	if r := tmf(1, 0xdead, blockedSN); r != 1 {
		t.Fatalf("ABORT TASK unknown: response %d, want 1", r)
	}
	// A write waiting for Data-Out is aborted by the transport.
	ti.initialR2T, ti.immediate = true, false
	wh := ti.scsiHeader(cdb10(0x2a, 0, 8), false, true, 4096, true)
	ti.send(wh, nil, nil)
	rh, _ := ti.recv()
	if rh.Opcode() != OpR2T {
		t.Fatalf("expected R2T, got %s", rh.Opcode())
	}
	if r := tmf(1, wh.ITT(), wh.CmdSN()); r != 0 {
		t.Fatalf("ABORT TASK of write waiting for data: response %d", r)
	}
	// Late Data-Out for the aborted task is ignored; the session goes on.
	ti.send(ti.dataOutPDU(wh.ITT(), rh.TTT(), 0, 0, true), nil, make([]byte, 4096))
	res := ti.do([]byte{0, 0, 0, 0, 0, 0}, 0, nil, false)
	if res.status != 0 {
		t.Fatalf("TUR after abort: %d", res.status)
	}
	// RFC 7143 §11.5.1: a task never received, inside the window and
	// before the TMF's CmdSN, counts as received: function complete, and
	// ExpCmdSN moves past it.
	lost := ti.cmdSN
	ti.cmdSN++
	if r := tmf(1, 0xbeef, lost); r != 0 {
		t.Fatalf("ABORT TASK of a lost command: response %d, want 0", r)
	}
	if res := ti.do([]byte{0, 0, 0, 0, 0, 0}, 0, nil, false); res.status != 0 {
		t.Fatalf("command after the lost one: %d", res.status)
	}
	// LUN RESET.
	if r := tmf(5, 0, 0); r != 0 {
		t.Fatalf("LUN RESET: %d", r)
	}
	ti.logout()
	waitFor(t, "session removal", func() bool { return len(ts.srv.Sessions()) == 0 })
}

func TestSendTargets(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.Portals = append(c.Portals, Portal{Listen: "127.0.0.1:0", Advertise: "192.0.2.1:3260", TPGT: 2})
	})
	ti := newInitiator(t, dialTCP(t, ts.addr), 3)
	ti.login("")
	h := make(BHS, BHSLen)
	h.SetOpcode(OpTextReq, true)
	h[offFlags] = flagFinal
	h.put32(offITT, ti.nextITT())
	h.put32(offField20, reservedTag)
	h.put32(offField24, ti.cmdSN)
	ti.send(h, nil, login.AppendText(nil, login.KeyValue{Key: "SendTargets", Value: "All"}))
	rh, data := ti.recv()
	if rh.Opcode() != OpTextResp || !rh.Final() {
		t.Fatalf("got %s final=%v", rh.Opcode(), rh.Final())
	}
	got := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
	want := []string{"TargetName=" + testTarget, "TargetAddress=" + ts.addr + ",1", "TargetAddress=192.0.2.1:3260,2"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("SendTargets=All:\n got %q\nwant %q", got, want)
	}
	// SCSI commands are refused in a discovery session.
	sh := ti.scsiHeader([]byte{0, 0, 0, 0, 0, 0}, false, false, 0, true)
	ti.send(sh, nil, nil)
	if rh, _ := ti.recv(); rh.Opcode() != OpReject {
		t.Fatalf("SCSI command in discovery session: %s", rh.Opcode())
	}
	ti.logout()
}

func TestSessionReinstatement(t *testing.T) {
	ts := startServer(t)
	a := newInitiator(t, dialTCP(t, ts.addr), 4)
	a.login(testTarget)
	b := newInitiator(t, dialTCP(t, ts.addr), 4)
	b.login(testTarget)
	if a.tsih == b.tsih {
		t.Fatalf("reinstated session reused TSIH %d", a.tsih)
	}
	// The old connection is closed by the target.
	a.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := a.r.ReadPDU(); err == nil {
		t.Fatal("old session's connection still open")
	}
	s := ts.srv.Sessions()
	if len(s) != 1 || s[0].TSIH != b.tsih {
		t.Fatalf("sessions after reinstatement: %+v", s)
	}
	b.logout()
}
