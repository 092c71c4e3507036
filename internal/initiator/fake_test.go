package initiator

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"slices"
	"testing"
	"time"
)

func TestParseISCSIURL(t *testing.T) {
	u, err := ParseURL("iscsi://127.0.0.1:3282/iqn.2026-11.dev.stave.bench:tgt/1")
	if err != nil || u != (URL{Addr: "127.0.0.1:3282", Target: "iqn.2026-11.dev.stave.bench:tgt", LUN: 1}) {
		t.Fatalf("ParseURL = %+v, %v", u, err)
	}
	if u, err := ParseURL("iscsi://[::1]/iqn.x:y/0"); err != nil || u.Addr != "[::1]:3260" {
		t.Fatalf("default port: %+v, %v", u, err)
	}
	for _, bad := range []string{"http://h/t/0", "iscsi://h/t", "iscsi://h/t/x", "iscsi://u%25p@h/t/0", "iscsi:///t/0"} {
		if _, err := ParseURL(bad); err == nil {
			t.Errorf("ParseURL(%q) succeeded", bad)
		}
	}
}

// fakeTarget serves one iSCSI connection with just enough of RFC 7143 for
// the latency client: a two-stage login, READ CAPACITY (16), READ (16)
// and WRITE (16) on a 1 MiB LU of 512-byte blocks held in memory, a NOP-In
// before every response (to be answered), and logout. Writes of more than
// the immediate data are solicited with one R2T.
func fakeTarget(t *testing.T, nc net.Conn, immediate bool) {
	defer nc.Close()
	lu := make([]byte, 1<<20)
	var statSN uint32
	hdr := make([]byte, bhsLen)
	readPDU := func() ([]byte, []byte, error) {
		if _, err := io.ReadFull(nc, hdr); err != nil {
			return nil, nil, err
		}
		n := int(hdr[5])<<16 | int(hdr[6])<<8 | int(hdr[7])
		data := make([]byte, (n+3)&^3)
		if _, err := io.ReadFull(nc, data); err != nil {
			return nil, nil, err
		}
		return slices.Clone(hdr), data[:n], nil
	}
	send := func(h, data []byte) {
		h[5], h[6], h[7] = byte(len(data)>>16), byte(len(data)>>8), byte(len(data))
		b := append(slices.Clone(h), data...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		if _, err := nc.Write(b); err != nil {
			t.Errorf("fake target: write: %v", err)
		}
	}
	resp := func(op byte, itt uint32) []byte {
		h := make([]byte, bhsLen)
		h[0], h[1] = op, flagFinal
		binary.BigEndian.PutUint32(h[16:], itt)
		binary.BigEndian.PutUint32(h[24:], statSN)
		statSN++
		return h
	}
	for {
		h, data, err := readPDU()
		if err != nil {
			return
		}
		itt := binary.BigEndian.Uint32(h[16:])
		switch h[0] & 0x3f {
		case byte(OpLoginReq):
			r := resp(byte(OpLoginResp), itt)
			r[1] = h[1] // transit to the stage asked
			keys := "TargetPortalGroupTag=1\x00"
			if h[1]&3 == 3 {
				imm := "Yes"
				if !immediate {
					imm = "No"
				}
				keys = "MaxRecvDataSegmentLength=8192\x00ImmediateData=" + imm + "\x00InitialR2T=Yes\x00FirstBurstLength=65536\x00"
			}
			send(r, []byte(keys))
		case byte(OpNOPOut):
			// The answer to our NOP-In; nothing to do.
		case byte(OpSCSICommand):
			// A NOP-In that asks for an answer first.
			nop := make([]byte, bhsLen)
			nop[0], nop[1] = byte(OpNOPIn), flagFinal
			binary.BigEndian.PutUint32(nop[16:], reservedTag)
			binary.BigEndian.PutUint32(nop[20:], 0x77)
			send(nop, nil)
			cdb := h[32:48]
			switch cdb[0] {
			case 0x9e:
				buf := make([]byte, 32)
				binary.BigEndian.PutUint64(buf, uint64(len(lu)/512-1))
				binary.BigEndian.PutUint32(buf[8:], 512)
				r := resp(byte(OpSCSIDataIn), itt)
				r[1] = flagFinal | 0x01
				send(r, buf)
			case 0x88:
				off := int(binary.BigEndian.Uint64(cdb[2:])) * 512
				n := int(binary.BigEndian.Uint32(cdb[10:])) * 512
				d := make([]byte, bhsLen) // first half without status
				d[0] = byte(OpSCSIDataIn)
				binary.BigEndian.PutUint32(d[16:], itt)
				send(d, lu[off:off+n/2])
				r := resp(byte(OpSCSIDataIn), itt)
				r[1] = flagFinal | 0x01
				binary.BigEndian.PutUint32(r[40:], uint32(n/2))
				send(r, lu[off+n/2:off+n])
			case 0x8a:
				off := int(binary.BigEndian.Uint64(cdb[2:])) * 512
				n := int(binary.BigEndian.Uint32(cdb[10:])) * 512
				got := copy(lu[off:], data)
				if got < n {
					r2t := make([]byte, bhsLen)
					r2t[0], r2t[1] = byte(OpR2T), flagFinal
					binary.BigEndian.PutUint32(r2t[16:], itt)
					binary.BigEndian.PutUint32(r2t[20:], 0x1234)
					binary.BigEndian.PutUint32(r2t[40:], uint32(got))
					binary.BigEndian.PutUint32(r2t[44:], uint32(n-got))
					send(r2t, nil)
					for got < n {
						dh, dd, err := readPDU()
						if err == nil && dh[0]&0x3f == byte(OpNOPOut) {
							continue // the answer to the NOP-In
						}
						if err != nil || dh[0]&0x3f != byte(OpSCSIDataOut) || binary.BigEndian.Uint32(dh[20:]) != 0x1234 {
							t.Errorf("fake target: want Data-Out for TTT 0x1234, got %x (%v)", dh, err)
							return
						}
						o := int(binary.BigEndian.Uint32(dh[40:]))
						copy(lu[off+o:], dd)
						got = o + len(dd)
					}
				}
				send(resp(byte(OpSCSIResponse), itt), nil)
			default:
				r := resp(byte(OpSCSIResponse), itt)
				r[3] = 0x02
				send(r, nil)
			}
		case byte(OpLogoutReq):
			send(resp(byte(OpLogoutResp), itt), nil)
			return
		default:
			t.Errorf("fake target: opcode %#x", h[0]&0x3f)
			return
		}
	}
}

// TestFakeTarget runs the session against fakeTarget, with and without
// immediate data.
func TestFakeTarget(t *testing.T) {
	for _, immediate := range []bool{true, false} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			fakeTarget(t, nc, immediate)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := Dial(ctx, Config{Addr: ln.Addr().String(), Target: "iqn.2026-11.dev.stave:fake", InitiatorName: "iqn.2026-11.dev.stave.bench:test"})
		if err != nil {
			t.Fatalf("immediate=%v: Dial: %v", immediate, err)
		}
		c, err := s.ReadCapacity(ctx)
		if err != nil || c != (Capacity{Blocks: 2048, BlockSize: 512}) {
			t.Fatalf("immediate=%v: ReadCapacity = %+v, %v", immediate, c, err)
		}
		want := Params{MaxSendDataSegmentLength: 8192, FirstBurstLength: 65536, ImmediateData: immediate, InitialR2T: true, TPGT: 1}
		if p := s.Params(); p != want {
			t.Fatalf("immediate=%v: negotiated %+v, want %+v", immediate, p, want)
		}
		w := bytes.Repeat([]byte{0xa5, 0x5a, 1, 2}, 4096) // 16 KiB: more than one Data-Out PDU
		if err := s.Write(ctx, 16, w); err != nil {
			t.Fatalf("immediate=%v: write: %v", immediate, err)
		}
		r := make([]byte, len(w))
		if err := s.Read(ctx, 16, r); err != nil || !bytes.Equal(r, w) {
			t.Fatalf("immediate=%v: read back: %v, equal %v", immediate, err, bytes.Equal(r, w))
		}
		// Any other opcode gets CHECK CONDITION without sense: a
		// *SCSIError, and the session stays usable.
		if err := s.TestUnitReady(ctx); err == nil {
			t.Fatalf("immediate=%v: TEST UNIT READY succeeded on the fake target", immediate)
		} else if st, ok := StatusOf(err); !ok || st != 2 || s.Err() != nil {
			t.Fatalf("immediate=%v: TEST UNIT READY: %v (status %v, %v), session error %v", immediate, err, st, ok, s.Err())
		}
		if err := s.Close(); err != nil {
			t.Fatalf("immediate=%v: logout: %v", immediate, err)
		}
		cancel()
		<-done
		ln.Close()
	}
}
