package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// This file is a minimal iSCSI initiator (RFC 7143) for the QD1 latency
// runs: neither iscsi-perf nor qemu-img bench reports percentiles, and
// Debian's fio has no libiscsi engine. It is written from the RFC, not
// from Stave's codec, so that it measures Stave and tgt alike: one
// connection, no digests, no AHS, one command at a time, login straight
// through security (AuthMethod=None) and operational negotiation.
//
// Basic Header Segment, 48 bytes (RFC 7143 §11.2.1):
//
//	 0      I(0x40) | opcode        1  flags (F = 0x80)   2-3 opcode-specific
//	 4      TotalAHSLength          5-7 DataSegmentLength
//	 8-15   LUN or opcode-specific  16-19 Initiator Task Tag
//	 20-47  opcode-specific (CmdSN 24, ExpStatSN 28, CDB 32 in a SCSI Command;
//	        StatSN 24, ExpCmdSN 28, MaxCmdSN 32 in responses)
//
// The data segment follows, padded to a multiple of 4 bytes.

// iSCSI opcodes (RFC 7143 §11.2.1.2).
const (
	opNOPOut       = 0x00
	opSCSICommand  = 0x01
	opLoginReq     = 0x03
	opSCSIDataOut  = 0x05
	opLogoutReq    = 0x06
	opNOPIn        = 0x20
	opSCSIResponse = 0x21
	opLoginResp    = 0x23
	opSCSIDataIn   = 0x25
	opLogoutResp   = 0x26
	opR2T          = 0x31
	opAsyncMessage = 0x32
	opReject       = 0x3f
)

const (
	bhsLen      = 48
	flagFinal   = 0x80
	immediate   = 0x40
	reservedTag = 0xffffffff
	// maxRecvDSL is the MaxRecvDataSegmentLength this initiator declares.
	maxRecvDSL = 262144
)

// iscsiURL is the part of a libiscsi URL the initiator needs.
type iscsiURL struct {
	Addr   string // host:port
	Target string // IQN
	LUN    uint64
}

// parseISCSIURL parses iscsi://host[:port]/iqn/lun (libiscsi's form,
// without credentials).
func parseISCSIURL(s string) (iscsiURL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return iscsiURL{}, err
	}
	if u.Scheme != "iscsi" || u.Host == "" || u.User != nil {
		return iscsiURL{}, fmt.Errorf("bench: %q is not iscsi://host[:port]/target/lun", s)
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(parts) != 2 || parts[0] == "" {
		return iscsiURL{}, fmt.Errorf("bench: %q is not iscsi://host[:port]/target/lun", s)
	}
	lun, err := strconv.ParseUint(parts[1], 10, 8)
	if err != nil {
		return iscsiURL{}, fmt.Errorf("bench: bad LUN in %q (0 to 255)", s)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "3260")
	}
	return iscsiURL{Addr: addr, Target: parts[0], LUN: lun}, nil
}

// pdu is one received PDU: the header and the data segment (without
// padding). Data aliases the session's read buffer and is valid until the
// next recv.
type pdu struct {
	h    [bhsLen]byte
	data []byte
}

func (p *pdu) opcode() uint8    { return p.h[0] & 0x3f }
func (p *pdu) flags() uint8     { return p.h[1] }
func (p *pdu) u32(o int) uint32 { return binary.BigEndian.Uint32(p.h[o:]) }

// session is one logged-in iSCSI session with one connection. It is not
// safe for concurrent use.
type session struct {
	nc        net.Conn
	r         *bufio.Reader
	buf       []byte // receive buffer for data segments
	out       []byte // send buffer
	isid      [6]byte
	lun       [8]byte
	itt       uint32
	cmdSN     uint32
	expStatSN uint32
	// Negotiated (RFC 7143 §13).
	maxSend    int // the target's MaxRecvDataSegmentLength
	firstBurst int
	immData    bool
	initialR2T bool
	blockSize  int
	blocks     uint64
}

// errCheckCondition marks a command that ended in CHECK CONDITION.
var errCheckCondition = errors.New("bench: CHECK CONDITION")

// dialSession connects to u, logs in as initiator and asks the LU's
// capacity (retrying past the unit attention of a new nexus).
func dialSession(ctx context.Context, u iscsiURL, initiator string) (*session, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", u.Addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	s := &session{nc: nc, r: bufio.NewReaderSize(nc, 64<<10), isid: [6]byte{0x80, 0x00, 0x53, 0x74, 0x61, 0x01},
		itt: 1, cmdSN: 1, maxSend: 8192, firstBurst: 65536}
	// Peripheral device addressing, SAM-5 §4.7.4 (LUN < 256).
	s.lun[1] = byte(u.LUN)
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	} else {
		_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	}
	if err := s.login(u.Target, initiator); err != nil {
		nc.Close()
		return nil, err
	}
	for i := 0; ; i++ {
		err = s.readCapacity()
		if err == nil {
			break
		}
		if !errors.Is(err, errCheckCondition) || i == 4 {
			nc.Close()
			return nil, fmt.Errorf("READ CAPACITY: %w", err)
		}
	}
	_ = nc.SetDeadline(time.Time{})
	return s, nil
}

// header returns a zeroed BHS with opcode op in the send buffer.
func (s *session) header(op uint8, imm bool) []byte {
	s.out = append(s.out[:0], make([]byte, bhsLen)...)
	h := s.out[:bhsLen]
	h[0] = op
	if imm {
		h[0] |= immediate
	}
	return h
}

// send sends the header in s.out with data (padded).
func (s *session) send(data []byte) error {
	h := s.out[:bhsLen]
	n := len(data)
	h[5], h[6], h[7] = byte(n>>16), byte(n>>8), byte(n)
	s.out = append(s.out, data...)
	for len(s.out)%4 != 0 {
		s.out = append(s.out, 0)
	}
	_, err := s.nc.Write(s.out)
	return err
}

// recv reads the next PDU into p.
func (s *session) recv(p *pdu) error {
	if _, err := io.ReadFull(s.r, p.h[:]); err != nil {
		return err
	}
	ahs := int(p.h[4]) * 4
	n := int(p.h[5])<<16 | int(p.h[6])<<8 | int(p.h[7])
	if n > 1<<24 {
		return fmt.Errorf("bench: data segment of %d bytes", n)
	}
	total := ahs + (n+3)&^3
	if cap(s.buf) < total {
		s.buf = make([]byte, total)
	}
	b := s.buf[:total]
	if _, err := io.ReadFull(s.r, b); err != nil {
		return err
	}
	p.data = b[ahs : ahs+n]
	return nil
}

func put32(h []byte, o int, v uint32) { binary.BigEndian.PutUint32(h[o:], v) }

// loginHeader builds a Login Request (RFC 7143 §11.12) in s.out.
func (s *session) loginHeader(csg, nsg uint8) {
	h := s.header(opLoginReq, true)
	h[1] = flagFinal | csg<<2 | nsg // T bit (same position as F)
	copy(h[8:14], s.isid[:])
	put32(h, 16, s.itt)
	put32(h, 24, s.cmdSN)
	put32(h, 28, s.expStatSN)
}

// appendKeys encodes key=value pairs as login text (RFC 7143 §6.1).
func appendKeys(b []byte, kv ...string) []byte {
	for i := 0; i+1 < len(kv); i += 2 {
		b = append(b, kv[i]...)
		b = append(b, '=')
		b = append(b, kv[i+1]...)
		b = append(b, 0)
	}
	return b
}

// parseKeys decodes login text into m.
func parseKeys(data []byte, m map[string]string) {
	for f := range strings.SplitSeq(string(data), "\x00") {
		if k, v, ok := strings.Cut(f, "="); ok {
			m[k] = v
		}
	}
}

// login runs the security stage (AuthMethod=None) and the operational
// stage up to the full feature phase.
func (s *session) login(target, initiator string) error {
	keys := map[string]string{}
	stage := func(csg, nsg uint8, text []byte) error {
		var p pdu
		for {
			s.loginHeader(csg, nsg)
			if err := s.send(text); err != nil {
				return err
			}
			if err := s.recv(&p); err != nil {
				return fmt.Errorf("login: %w", err)
			}
			if p.opcode() != opLoginResp {
				return fmt.Errorf("login: got opcode %#x", p.opcode())
			}
			if cls, det := p.h[36], p.h[37]; cls != 0 || det != 0 {
				return fmt.Errorf("login rejected: status class %d detail %d", cls, det)
			}
			parseKeys(p.data, keys)
			s.expStatSN = p.u32(24) + 1
			s.cmdSN = p.u32(28)
			if p.flags()&0x80 != 0 && p.flags()&3 == nsg {
				return nil
			}
			text = nil // the target wants another round: send an empty request
		}
	}
	if err := stage(0, 1, appendKeys(nil, "InitiatorName", initiator, "TargetName", target,
		"SessionType", "Normal", "AuthMethod", "None")); err != nil {
		return err
	}
	if keys["AuthMethod"] != "" && keys["AuthMethod"] != "None" {
		return fmt.Errorf("login: target wants AuthMethod=%s", keys["AuthMethod"])
	}
	if err := stage(1, 3, appendKeys(nil, "HeaderDigest", "None", "DataDigest", "None",
		"MaxRecvDataSegmentLength", strconv.Itoa(maxRecvDSL), "InitialR2T", "No", "ImmediateData", "Yes",
		"MaxBurstLength", "262144", "FirstBurstLength", "65536", "MaxOutstandingR2T", "1",
		"MaxConnections", "1", "DefaultTime2Wait", "0", "DefaultTime2Retain", "0",
		"DataPDUInOrder", "Yes", "DataSequenceInOrder", "Yes", "ErrorRecoveryLevel", "0")); err != nil {
		return err
	}
	if v, err := strconv.Atoi(keys["MaxRecvDataSegmentLength"]); err == nil && v > 0 {
		s.maxSend = v
	}
	if v, err := strconv.Atoi(keys["FirstBurstLength"]); err == nil && v > 0 {
		s.firstBurst = v
	}
	s.immData = keys["ImmediateData"] != "No"
	s.initialR2T = keys["InitialR2T"] == "Yes"
	if keys["HeaderDigest"] == "CRC32C" || keys["DataDigest"] == "CRC32C" {
		return errors.New("login: target insists on digests")
	}
	return nil
}

// command runs one SCSI command (RFC 7143 §11.3) to completion: out is the
// data of a write, in the buffer of a read.
func (s *session) command(cdb []byte, out, in []byte) error {
	s.itt++
	itt := s.itt
	h := s.header(opSCSICommand, false)
	edtl := len(in)
	write := out != nil
	if write {
		edtl = len(out)
	}
	var imm []byte
	unsol := 0
	if write {
		if s.immData {
			imm = out[:min(len(out), s.firstBurst, s.maxSend)]
		}
		if !s.initialR2T {
			unsol = min(len(out), s.firstBurst)
		}
	}
	final := !write || s.initialR2T || len(imm) >= unsol
	h[1] = 0x01 // SIMPLE
	if final {
		h[1] |= flagFinal
	}
	if write {
		h[1] |= 0x20
	} else if in != nil {
		h[1] |= 0x40
	}
	copy(h[8:16], s.lun[:])
	put32(h, 16, itt)
	put32(h, 20, uint32(edtl))
	put32(h, 24, s.cmdSN)
	s.cmdSN++
	put32(h, 28, s.expStatSN)
	copy(h[32:48], cdb)
	if err := s.send(imm); err != nil {
		return err
	}
	if !final {
		var sn uint32
		for off := len(imm); off < unsol; sn++ {
			n := min(unsol-off, s.maxSend)
			if err := s.dataOut(itt, reservedTag, sn, off, off+n == unsol, out[off:off+n]); err != nil {
				return err
			}
			off += n
		}
	}
	var p pdu
	for {
		if err := s.recv(&p); err != nil {
			return err
		}
		switch p.opcode() {
		case opSCSIDataIn:
			off := int(p.u32(40))
			if p.u32(16) != itt || off+len(p.data) > len(in) {
				return fmt.Errorf("bench: Data-In for ITT %#x at %d+%d, want ITT %#x, %d bytes", p.u32(16), off, len(p.data), itt, len(in))
			}
			copy(in[off:], p.data)
			if p.flags()&0x01 != 0 { // S: status follows in this PDU
				s.expStatSN = p.u32(24) + 1
				return scsiStatus(p.h[3], nil)
			}
		case opSCSIResponse:
			s.expStatSN = p.u32(24) + 1
			if p.h[2] != 0 {
				return fmt.Errorf("bench: SCSI response code %#x", p.h[2])
			}
			return scsiStatus(p.h[3], p.data)
		case opR2T:
			off, n := int(p.u32(40)), int(p.u32(44))
			if off+n > len(out) {
				return fmt.Errorf("bench: R2T for %d+%d of a %d-byte write", off, n, len(out))
			}
			var sn uint32
			for end := off + n; off < end; sn++ {
				k := min(end-off, s.maxSend)
				if err := s.dataOut(itt, p.u32(20), sn, off, off+k == end, out[off:off+k]); err != nil {
					return err
				}
				off += k
			}
		case opNOPIn:
			if err := s.nopIn(&p); err != nil {
				return err
			}
		case opAsyncMessage:
			// Ignored: a logout request from the target ends the run
			// through the connection closing.
		case opReject:
			return fmt.Errorf("bench: target sent Reject, reason %#x", p.h[2])
		default:
			return fmt.Errorf("bench: unexpected opcode %#x", p.opcode())
		}
	}
}

// dataOut sends one Data-Out PDU (RFC 7143 §11.7).
func (s *session) dataOut(itt, ttt, dataSN uint32, off int, final bool, data []byte) error {
	h := s.header(opSCSIDataOut, false)
	if final {
		h[1] = flagFinal
	}
	copy(h[8:16], s.lun[:])
	put32(h, 16, itt)
	put32(h, 20, ttt)
	put32(h, 28, s.expStatSN)
	put32(h, 36, dataSN)
	put32(h, 40, uint32(off))
	return s.send(data)
}

// nopIn answers a NOP-In that asks for a reply (RFC 7143 §11.19).
func (s *session) nopIn(p *pdu) error {
	ttt := p.u32(20)
	if ttt == reservedTag {
		return nil
	}
	h := s.header(opNOPOut, true)
	h[1] = flagFinal
	copy(h[8:16], p.h[8:16])
	put32(h, 16, reservedTag)
	put32(h, 20, ttt)
	put32(h, 24, s.cmdSN)
	put32(h, 28, s.expStatSN)
	return s.send(nil)
}

// scsiStatus turns a SCSI status byte (and sense data) into an error.
func scsiStatus(status byte, data []byte) error {
	switch status {
	case 0x00:
		return nil
	case 0x02:
		if len(data) >= 2+14 {
			sense := data[2:]
			return fmt.Errorf("%w: sense key %#x ASC/ASCQ %#02x/%#02x", errCheckCondition, sense[2]&0x0f, sense[12], sense[13])
		}
		return errCheckCondition
	}
	return fmt.Errorf("bench: SCSI status %#x", status)
}

// readCapacity asks READ CAPACITY (16) (SBC-3 §5.16).
func (s *session) readCapacity() error {
	cdb := make([]byte, 16)
	cdb[0], cdb[1] = 0x9e, 0x10
	binary.BigEndian.PutUint32(cdb[10:], 32)
	buf := make([]byte, 32)
	if err := s.command(cdb, nil, buf); err != nil {
		return err
	}
	s.blocks = binary.BigEndian.Uint64(buf[0:]) + 1
	s.blockSize = int(binary.BigEndian.Uint32(buf[8:]))
	if s.blockSize <= 0 || s.blockSize > 1<<20 {
		return fmt.Errorf("bench: block size %d", s.blockSize)
	}
	return nil
}

// rw reads into or writes from b at byte offset off with READ (16) or
// WRITE (16) (SBC-3 §5.12, §5.41); off and len(b) are multiples of the
// block size.
func (s *session) rw(write bool, b []byte, off int64) error {
	cdb := make([]byte, 16)
	cdb[0] = 0x88
	if write {
		cdb[0] = 0x8a
	}
	binary.BigEndian.PutUint64(cdb[2:], uint64(off)/uint64(s.blockSize))
	binary.BigEndian.PutUint32(cdb[10:], uint32(len(b)/s.blockSize))
	if write {
		return s.command(cdb, b, nil)
	}
	return s.command(cdb, nil, b)
}

// close logs out (RFC 7143 §11.14) and closes the connection.
func (s *session) close() error {
	defer s.nc.Close()
	_ = s.nc.SetDeadline(time.Now().Add(5 * time.Second))
	s.itt++
	h := s.header(opLogoutReq, true)
	h[1] = flagFinal // reason 0: close the session
	put32(h, 16, s.itt)
	put32(h, 24, s.cmdSN)
	put32(h, 28, s.expStatSN)
	if err := s.send(nil); err != nil {
		return err
	}
	var p pdu
	for {
		if err := s.recv(&p); err != nil {
			return err
		}
		if p.opcode() == opLogoutResp {
			return nil
		}
	}
}
