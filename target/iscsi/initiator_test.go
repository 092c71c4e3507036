package iscsi

import (
	"encoding/binary"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"stave.dev/stave/target/iscsi/login"
)

// testInitiator is a minimal iSCSI initiator for tests: one connection,
// no digests unless asked, commands one at a time or pipelined by hand.
type testInitiator struct {
	t         testing.TB
	nc        net.Conn
	r         *Reader
	isid      [6]byte
	tsih      uint16
	cid       uint16
	cmdSN     uint32
	expStatSN uint32
	itt       uint32
	maxCmdSN  uint32
	keys      map[string]string // negotiated values from the target
	// negotiated
	maxSend      int    // target's MaxRecvDataSegmentLength
	firstBurst   uint32 // FirstBurstLength
	maxBurst     uint32
	immediate    bool
	initialR2T   bool
	headerDigest bool
	dataDigest   bool
}

const testInitiatorName = "iqn.2026-11.dev.stave:test-initiator"

func dialTCP(t testing.TB, addr string) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	return nc
}

// newInitiator wraps nc; isid byte 5 distinguishes sessions.
func newInitiator(t testing.TB, nc net.Conn, isid byte) *testInitiator {
	ti := &testInitiator{t: t, nc: nc, r: NewReader(nc), isid: [6]byte{0x80, 0, 0, 0x12, 0x34, isid}, itt: 0x100}
	ti.r.MaxDataSegmentLength = 1 << 24
	return ti
}

func (ti *testInitiator) deadline() { ti.nc.SetDeadline(time.Now().Add(10 * time.Second)) }

// send writes one PDU with the initiator's digests.
func (ti *testInitiator) send(h BHS, ahs, data []byte) {
	ti.t.Helper()
	ti.deadline()
	b := AppendPDU(nil, h, ahs, data, ti.headerDigest, ti.dataDigest)
	if _, err := ti.nc.Write(b); err != nil {
		ti.t.Fatalf("write: %v", err)
	}
}

// recv reads one PDU, copying it out of the reader's buffers.
func (ti *testInitiator) recv() (BHS, []byte) {
	ti.t.Helper()
	ti.deadline()
	p, err := ti.r.ReadPDU()
	if err != nil {
		ti.t.Fatalf("read PDU: %v", err)
	}
	h := append(BHS(nil), p.BHS...)
	data := append([]byte(nil), p.Data...)
	switch h.Opcode() {
	case OpSCSIResponse, OpNOPIn, OpTaskMgmtResp, OpTextResp, OpLogoutResp, OpAsyncMessage, OpReject, OpLoginResp:
		if h.Opcode() != OpNOPIn || h.TTT() == reservedTag {
			ti.expStatSN = h.StatSN() + 1
		}
	case OpSCSIDataIn:
		if h.Flags()&dataInFlagStatus != 0 {
			ti.expStatSN = h.StatSN() + 1
		}
	}
	if h.Opcode() != OpLoginResp && h.Opcode() != OpReject || h.MaxCmdSN() != 0 {
		ti.maxCmdSN = h.MaxCmdSN()
	}
	return h, data
}

func (ti *testInitiator) nextITT() uint32 { ti.itt++; return ti.itt }

// loginPDU builds a Login Request header.
func (ti *testInitiator) loginPDU(transit bool, csg, nsg uint8, cont bool) BHS {
	h := make(BHS, BHSLen)
	h.SetOpcode(OpLoginReq, true)
	f := csg<<2 | nsg
	if transit {
		f |= 0x80
	}
	if cont {
		f |= 0x40
	}
	h[offFlags] = f
	copy(h[offLUN:], ti.isid[:])
	binary.BigEndian.PutUint16(h[offLUN+6:], ti.tsih)
	h.put32(offITT, ti.nextITT())
	binary.BigEndian.PutUint16(h[offField20:], ti.cid)
	h.put32(offField24, ti.cmdSN)
	h.put32(offField28, ti.expStatSN)
	return h
}

// login performs a login straight into the operational stage with keys
// appended to the defaults. It fails the test unless the login succeeds.
func (ti *testInitiator) login(target string, extra ...login.KeyValue) {
	ti.t.Helper()
	if err := ti.tryLogin(target, extra...); err != nil {
		ti.t.Fatal(err)
	}
}

func (ti *testInitiator) tryLogin(target string, extra ...login.KeyValue) error {
	kvs := []login.KeyValue{{Key: "InitiatorName", Value: testInitiatorName}}
	if target == "" {
		kvs = append(kvs, login.KeyValue{Key: "SessionType", Value: "Discovery"})
	} else {
		kvs = append(kvs, login.KeyValue{Key: "TargetName", Value: target}, login.KeyValue{Key: "SessionType", Value: "Normal"})
	}
	kvs = append(kvs, login.KeyValue{Key: "AuthMethod", Value: "None"})
	text := login.AppendText(nil, kvs...)
	// Security stage first, transit to operational.
	ti.send(ti.loginPDU(true, 0, 1, false), nil, text)
	h, data := ti.recv()
	if st := uint16(h[36])<<8 | uint16(h[37]); st != 0 {
		return fmt.Errorf("login status 0x%04x", st)
	}
	ti.keys = map[string]string{}
	ti.parseKeys(data)
	op := []login.KeyValue{
		{Key: "HeaderDigest", Value: "None"}, {Key: "DataDigest", Value: "None"},
		{Key: "MaxRecvDataSegmentLength", Value: "262144"},
	}
	if target != "" {
		op = append(op,
			login.KeyValue{Key: "InitialR2T", Value: "No"}, login.KeyValue{Key: "ImmediateData", Value: "Yes"},
			login.KeyValue{Key: "MaxBurstLength", Value: "262144"}, login.KeyValue{Key: "FirstBurstLength", Value: "65536"},
			login.KeyValue{Key: "MaxOutstandingR2T", Value: "4"}, login.KeyValue{Key: "ErrorRecoveryLevel", Value: "0"})
	}
	op = mergeKV(op, extra)
	ti.send(ti.loginPDU(true, 1, 3, false), nil, login.AppendText(nil, op...))
	for {
		h, data = ti.recv()
		if st := uint16(h[36])<<8 | uint16(h[37]); st != 0 {
			return fmt.Errorf("login status 0x%04x", st)
		}
		ti.parseKeys(data)
		if h.Continue() {
			ti.send(ti.loginPDU(false, 1, 0, false), nil, nil)
			continue
		}
		if h.Final() && h.Flags()&3 == 3 {
			break
		}
		// Target wants another round: send an empty request.
		ti.send(ti.loginPDU(true, 1, 3, false), nil, nil)
	}
	ti.tsih = binary.BigEndian.Uint16(h[offLUN+6:])
	ti.cmdSN = h.ExpCmdSN()
	ti.maxSend = ti.num("MaxRecvDataSegmentLength", 8192)
	ti.firstBurst = uint32(ti.num("FirstBurstLength", 65536))
	ti.maxBurst = uint32(ti.num("MaxBurstLength", 262144))
	ti.immediate = ti.keys["ImmediateData"] != "No"
	ti.initialR2T = ti.keys["InitialR2T"] == "Yes"
	ti.headerDigest = ti.keys["HeaderDigest"] == "CRC32C"
	ti.dataDigest = ti.keys["DataDigest"] == "CRC32C"
	ti.r.HeaderDigest, ti.r.DataDigest = ti.headerDigest, ti.dataDigest
	return nil
}

func mergeKV(base, extra []login.KeyValue) []login.KeyValue {
	for _, e := range extra {
		found := false
		for i := range base {
			if base[i].Key == e.Key {
				base[i].Value, found = e.Value, true
			}
		}
		if !found {
			base = append(base, e)
		}
	}
	return base
}

func (ti *testInitiator) parseKeys(data []byte) {
	kvs, err := login.ParseText(data)
	if err != nil {
		ti.t.Fatalf("parse login text %q: %v", data, err)
	}
	for _, kv := range kvs {
		ti.keys[kv.Key] = kv.Value
	}
}

func (ti *testInitiator) num(key string, def int) int {
	if v, ok := ti.keys[key]; ok {
		n, err := strconv.Atoi(v)
		if err == nil {
			return n
		}
	}
	return def
}

// cmdResult is the outcome of a SCSI command.
type cmdResult struct {
	status    uint8
	data      []byte
	sense     []byte
	flags     uint8
	residual  uint32
	r2ts      int
	dataIns   int
	finals    int // Data-In PDUs with the F bit (sequence ends)
	expDataSN uint32
}

// scsiHeader builds a SCSI Command header.
func (ti *testInitiator) scsiHeader(cdb []byte, read, write bool, edtl uint32, final bool) BHS {
	h := make(BHS, BHSLen)
	h.SetOpcode(OpSCSICommand, false)
	f := uint8(0x01) // SIMPLE
	if final {
		f |= flagFinal
	}
	if read {
		f |= cmdFlagRead
	}
	if write {
		f |= cmdFlagWrite
	}
	h[offFlags] = f
	h.put32(offITT, ti.nextITT())
	h.put32(offField20, edtl)
	h.put32(offField24, ti.cmdSN)
	ti.cmdSN++
	h.put32(offField28, ti.expStatSN)
	copy(h[offField32:], cdb)
	return h
}

// dataOutPDU builds a Data-Out header.
func (ti *testInitiator) dataOutPDU(itt, ttt, dataSN, offset uint32, final bool) BHS {
	h := make(BHS, BHSLen)
	h.SetOpcode(OpSCSIDataOut, false)
	if final {
		h[offFlags] = flagFinal
	}
	h.put32(offITT, itt)
	h.put32(offField20, ttt)
	h.put32(offField28, ti.expStatSN)
	h.put32(offField36, dataSN)
	h.put32(offField40, offset)
	return h
}

// do runs one SCSI command to completion: immediate data, the unsolicited
// burst and R2T-solicited Data-Out for writes, Data-In for reads.
func (ti *testInitiator) do(cdb []byte, edtl uint32, out []byte, read bool) cmdResult {
	ti.t.Helper()
	write := out != nil
	var imm []byte
	unsol := uint32(0)
	if write {
		if ti.immediate {
			imm = out[:min(len(out), int(ti.firstBurst), ti.maxSend)]
		}
		if !ti.initialR2T {
			unsol = min(uint32(len(out)), ti.firstBurst)
		}
	}
	final := !write || ti.initialR2T || uint32(len(imm)) >= unsol
	h := ti.scsiHeader(cdb, read, write, edtl, final)
	itt := h.ITT()
	ti.send(h, nil, imm)
	if !final {
		var sn uint32
		for off := uint32(len(imm)); off < unsol; sn++ {
			n := min(unsol-off, uint32(ti.maxSend))
			ti.send(ti.dataOutPDU(itt, reservedTag, sn, off, off+n == unsol), nil, out[off:off+n])
			off += n
		}
	}
	var res cmdResult
	for {
		rh, data := ti.recv()
		switch rh.Opcode() {
		case OpR2T:
			res.r2ts++
			if rh.ITT() != itt {
				ti.t.Fatalf("R2T for ITT %#x, want %#x", rh.ITT(), itt)
			}
			off, n := rh.BufferOffset(), rh.Field44()
			var sn uint32
			for end := off + n; off < end; sn++ {
				k := min(end-off, uint32(ti.maxSend))
				ti.send(ti.dataOutPDU(itt, rh.TTT(), sn, off, off+k == end), nil, out[off:off+k])
				off += k
			}
		case OpSCSIDataIn:
			res.dataIns++
			if got, want := rh.DataSN(), uint32(res.dataIns-1); got != want {
				ti.t.Fatalf("Data-In DataSN %d, want %d", got, want)
			}
			if int(rh.BufferOffset()) != len(res.data) {
				ti.t.Fatalf("Data-In offset %d, want %d", rh.BufferOffset(), len(res.data))
			}
			res.data = append(res.data, data...)
			if rh.Final() {
				res.finals++
			}
			if rh.Flags()&dataInFlagStatus != 0 {
				res.status, res.flags, res.residual = rh[offByte3], rh.Flags(), rh.Field44()
				return res
			}
		case OpSCSIResponse:
			res.status, res.flags, res.residual = rh[offByte3], rh.Flags(), rh.Field44()
			res.expDataSN = rh.DataSN()
			if len(data) >= 2 {
				n := int(binary.BigEndian.Uint16(data))
				res.sense = data[2 : 2+n]
			}
			return res
		case OpNOPIn:
			if rh.TTT() != reservedTag {
				ti.nopReply(rh)
			}
		default:
			ti.t.Fatalf("unexpected %s while waiting for ITT %#x", rh.Opcode(), itt)
		}
	}
}

func (ti *testInitiator) nopReply(in BHS) {
	h := make(BHS, BHSLen)
	h.SetOpcode(OpNOPOut, true)
	h[offFlags] = flagFinal
	h.put32(offITT, reservedTag)
	h.put32(offField20, in.TTT())
	h.put32(offField24, ti.cmdSN)
	h.put32(offField28, ti.expStatSN)
	ti.send(h, nil, nil)
}

// logout closes the session and checks the response.
func (ti *testInitiator) logout() {
	ti.t.Helper()
	h := make(BHS, BHSLen)
	h.SetOpcode(OpLogoutReq, true)
	h[offFlags] = flagFinal | uint8(LogoutCloseSession)
	h.put32(offITT, ti.nextITT())
	h.put32(offField24, ti.cmdSN)
	h.put32(offField28, ti.expStatSN)
	ti.send(h, nil, nil)
	for {
		rh, _ := ti.recv()
		if rh.Opcode() == OpNOPIn || rh.Opcode() == OpAsyncMessage {
			continue
		}
		if rh.Opcode() != OpLogoutResp || rh[offByte2] != 0 {
			ti.t.Fatalf("logout: got %s response %d", rh.Opcode(), rh[offByte2])
		}
		return
	}
}

func cdb10(op byte, lba uint32, blocks uint16) []byte {
	c := make([]byte, 10)
	c[0] = op
	binary.BigEndian.PutUint32(c[2:], lba)
	binary.BigEndian.PutUint16(c[7:], blocks)
	return c
}

func cdb16(op byte, lba uint64, blocks uint32) []byte {
	c := make([]byte, 16)
	c[0] = op
	binary.BigEndian.PutUint64(c[2:], lba)
	binary.BigEndian.PutUint32(c[10:], blocks)
	return c
}
