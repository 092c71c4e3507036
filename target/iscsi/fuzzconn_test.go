package iscsi

import (
	"io"
	"runtime"
	"testing"
	"time"

	"stave.dev/stave/target/iscsi/login"
)

// seedPDUs returns one well-formed PDU of each initiator opcode (and some
// that are not), concatenated, as a full-feature-phase byte stream.
func seedPDUs() [][]byte {
	mk := func(op Opcode, imm bool, flags uint8, data []byte, edit func(BHS)) []byte {
		h := make(BHS, BHSLen)
		h.SetOpcode(op, imm)
		h[offFlags] = flags
		h.put32(offITT, 0x10)
		h.put32(offField20, reservedTag)
		if edit != nil {
			edit(h)
		}
		return AppendPDU(nil, h, nil, data, false, false)
	}
	write := mk(OpSCSICommand, false, 0x21, make([]byte, 512), func(h BHS) {
		h.put32(offField20, 2048)
		copy(h[offField32:], cdb10(0x2a, 0, 4))
	})
	dataOut := mk(OpSCSIDataOut, false, 0x80, make([]byte, 1536), func(h BHS) { h.put32(offField40, 512) })
	read := mk(OpSCSICommand, false, 0xc1, nil, func(h BHS) {
		h.put32(offField20, 4096)
		h.put32(offITT, 0x11)
		copy(h[offField32:], cdb10(0x28, 0, 8))
	})
	return [][]byte{
		append(write, dataOut...),
		read,
		mk(OpNOPOut, true, 0x80, []byte("ping"), nil),
		mk(OpTaskMgmtReq, true, 0x81, nil, func(h BHS) { h.put32(offField20, 0x11) }),
		mk(OpTaskMgmtReq, true, 0x85, nil, nil),
		mk(OpTextReq, true, 0x80, login.AppendText(nil, login.KeyValue{Key: "SendTargets", Value: "All"}), nil),
		mk(OpLogoutReq, true, 0x80, nil, nil),
		mk(OpSNACKReq, false, 0x80, nil, nil),
		mk(0x1c, false, 0x80, nil, nil),
		mk(OpSCSICommand, true, 0x81, nil, func(h BHS) {
			h[offAHSLen] = 2
			copy(h[offField32:], cdb10(0x28, 0, 1))
		}),
	}
}

// FuzzConnection feeds arbitrary full-feature-phase bytes to a logged-in
// connection: the server must neither panic nor keep the session, its
// tasks or its goroutines once the connection is gone.
func FuzzConnection(f *testing.F) {
	for _, s := range seedPDUs() {
		f.Add(s)
	}
	srv, dial := pipeServer(f, Config{})
	f.Cleanup(srv.baseCancel)
	f.Fuzz(func(t *testing.T, in []byte) {
		start := time.Now()
		watchdog := time.AfterFunc(20*time.Second, func() {
			buf := make([]byte, 1<<22)
			panic("hung:\n" + string(buf[:runtime.Stack(buf, true)]))
		})
		defer watchdog.Stop()
		defer func() {
			if d := time.Since(start); d > 8*time.Second {
				t.Errorf("slow input (%v): %x", d, in)
			}
		}()
		nc := dial()
		ti := newInitiator(t, nc, 1)
		ti.login(testTarget)
		drained := make(chan struct{})
		go func() { io.Copy(io.Discard, nc); close(drained) }()
		nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
		nc.Write(in)
		nc.Close()
		<-drained
		deadline := time.Now().Add(10 * time.Second)
		for len(srv.Sessions()) != 0 || srv.pools.live.Load() != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("session or tasks left after input %x", in)
			}
			time.Sleep(time.Millisecond)
		}
	})
}
