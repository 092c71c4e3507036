// Package initiator is a minimal iSCSI initiator (RFC 7143) for tests and
// benchmarks: the QD1 latency runs of tools/bench and the failover
// harness of tests/e2e. It is written from the RFC, not from Stave's
// target codec, so that it measures Stave and other targets (tgt) alike
// and does not share their bugs: one connection per session, no digests,
// no AHS, one command at a time, login straight through the security
// stage (AuthMethod=None) and operational negotiation, ErrorRecoveryLevel 0.
//
// A Session is one logged-in connection (Dial). Multipath drives several
// sessions to the ports of one logical unit and sends each command to the
// path that ALUA reports active, failing over the way dm-multipath with
// the alua prioritizer does (see Multipath).
//
// Basic Header Segment, 48 bytes (RFC 7143 §11.2.1):
//
//	0      I(0x40) | opcode        1  flags (F = 0x80)   2-3 opcode-specific
//	4      TotalAHSLength          5-7 DataSegmentLength
//	8-15   LUN or opcode-specific  16-19 Initiator Task Tag
//	20-47  opcode-specific (CmdSN 24, ExpStatSN 28, CDB 32 in a SCSI Command;
//	       StatSN 24, ExpCmdSN 28, MaxCmdSN 32 in responses)
//
// The data segment follows, padded to a multiple of 4 bytes.
//
// Errors: a command that reached the target and ended with a status other
// than GOOD returns a *SCSIError (the session stays usable). Any other
// failure (connection, protocol, context) breaks the session: that call and
// every later one return an error wrapping ErrBroken, and the caller dials
// again.
package initiator

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Opcode is an iSCSI opcode (RFC 7143 §11.2.1.2).
type Opcode uint8

// iSCSI opcodes used by this initiator.
const (
	OpNOPOut       Opcode = 0x00
	OpSCSICommand  Opcode = 0x01
	OpLoginReq     Opcode = 0x03
	OpSCSIDataOut  Opcode = 0x05
	OpLogoutReq    Opcode = 0x06
	OpNOPIn        Opcode = 0x20
	OpSCSIResponse Opcode = 0x21
	OpLoginResp    Opcode = 0x23
	OpSCSIDataIn   Opcode = 0x25
	OpLogoutResp   Opcode = 0x26
	OpR2T          Opcode = 0x31
	OpAsyncMessage Opcode = 0x32
	OpReject       Opcode = 0x3f
)

// String returns the RFC 7143 name of the opcode.
func (o Opcode) String() string {
	switch o {
	case OpNOPOut:
		return "NOP-Out"
	case OpSCSICommand:
		return "SCSI Command"
	case OpLoginReq:
		return "Login Request"
	case OpSCSIDataOut:
		return "SCSI Data-Out"
	case OpLogoutReq:
		return "Logout Request"
	case OpNOPIn:
		return "NOP-In"
	case OpSCSIResponse:
		return "SCSI Response"
	case OpLoginResp:
		return "Login Response"
	case OpSCSIDataIn:
		return "SCSI Data-In"
	case OpLogoutResp:
		return "Logout Response"
	case OpR2T:
		return "R2T"
	case OpAsyncMessage:
		return "Asynchronous Message"
	case OpReject:
		return "Reject"
	}
	return fmt.Sprintf("Opcode(%#02x)", uint8(o))
}

const (
	bhsLen      = 48
	flagFinal   = 0x80
	immediate   = 0x40
	reservedTag = 0xffffffff
	// maxRecvDSL is the MaxRecvDataSegmentLength this initiator declares.
	maxRecvDSL = 262144
	// maxDataSegment bounds a received data segment before allocating.
	maxDataSegment = 1 << 24
)

// Errors.
var (
	// ErrBroken marks every error of a session whose connection failed or
	// went out of step with the target; dial again.
	ErrBroken = errors.New("initiator: session broken")
	// ErrNoCapacity means Read or Write ran before ReadCapacity told the
	// block size.
	ErrNoCapacity = errors.New("initiator: block size unknown: run ReadCapacity first")
)

// Config says what a Session logs in to.
type Config struct {
	// Addr is the portal, host:port.
	Addr string
	// Target is the target name (IQN).
	Target string
	// LUN is the logical unit number (0 to 255, peripheral addressing).
	LUN uint64
	// InitiatorName is the initiator's iSCSI name (required).
	InitiatorName string
	// ISID is the initiator session ID (RFC 7143 §11.12.5); zero means a
	// fixed random-format ISID. Two sessions of one initiator to one
	// target portal group need distinct ISIDs, or the second reinstates
	// (ends) the first.
	ISID [6]byte
}

// URL is the part of a libiscsi URL the initiator needs.
type URL struct {
	Addr   string // host:port
	Target string // IQN
	LUN    uint64
}

// ParseURL parses iscsi://host[:port]/iqn/lun (libiscsi's form, without
// credentials); the port defaults to 3260.
func ParseURL(s string) (URL, error) {
	bad := fmt.Errorf("initiator: %q is not iscsi://host[:port]/target/lun", s)
	u, err := url.Parse(s)
	if err != nil {
		return URL{}, fmt.Errorf("initiator: %w", err)
	}
	if u.Scheme != "iscsi" || u.Host == "" || u.User != nil {
		return URL{}, bad
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(parts) != 2 || parts[0] == "" {
		return URL{}, bad
	}
	lun, err := strconv.ParseUint(parts[1], 10, 8)
	if err != nil {
		return URL{}, fmt.Errorf("initiator: bad LUN in %q (0 to 255)", s)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "3260")
	}
	return URL{Addr: addr, Target: parts[0], LUN: lun}, nil
}

// pdu is one received PDU: the header and the data segment (without
// padding). data aliases the session's read buffer and is valid until the
// next recv.
type pdu struct {
	h    [bhsLen]byte
	data []byte
}

func (p *pdu) opcode() Opcode   { return Opcode(p.h[0] & 0x3f) }
func (p *pdu) flags() uint8     { return p.h[1] }
func (p *pdu) u32(o int) uint32 { return binary.BigEndian.Uint32(p.h[o:]) }

// Params are the negotiated values the initiator acts on (RFC 7143 §13).
type Params struct {
	// MaxSendDataSegmentLength is the target's MaxRecvDataSegmentLength.
	MaxSendDataSegmentLength int
	FirstBurstLength         int
	ImmediateData            bool
	InitialR2T               bool
	// TPGT is the target portal group tag the target announced.
	TPGT uint16
}

// Session is one logged-in iSCSI session with one connection. It is not
// safe for concurrent use, except Abort.
type Session struct {
	cfg       Config
	nc        net.Conn
	r         *bufio.Reader
	buf       []byte // receive buffer for data segments
	out       []byte // send buffer
	lun       [8]byte
	cdb       [16]byte // READ/WRITE CDB, reused
	itt       uint32
	cmdSN     uint32
	expStatSN uint32
	params    Params
	deadline  bool  // a connection deadline is set
	broken    error // wraps ErrBroken once the session is unusable
	// logoutAsked is set when the target asked for a logout (RFC 7143
	// §11.9.1, AsyncEvent 1) or announced that it drops the connection.
	logoutAsked bool
	blockSize   int
	blocks      uint64
	abortOnce   sync.Once
}

// Dial connects to cfg.Addr and logs in to cfg.Target. ctx bounds the
// connection and the login.
func Dial(ctx context.Context, cfg Config) (*Session, error) {
	if cfg.InitiatorName == "" || cfg.Target == "" || cfg.Addr == "" {
		return nil, errors.New("initiator: Config needs Addr, Target and InitiatorName")
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("initiator: %w", err)
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	s := &Session{cfg: cfg, nc: nc, r: bufio.NewReaderSize(nc, 64<<10), itt: 1, cmdSN: 1,
		params: Params{MaxSendDataSegmentLength: 8192, FirstBurstLength: 65536, ImmediateData: true, InitialR2T: true}}
	if cfg.ISID == ([6]byte{}) {
		s.cfg.ISID = [6]byte{0x80, 0x00, 0x53, 0x74, 0x61, 0x01} // random format (T=10b), "Sta", 1
	}
	// Peripheral device addressing, SAM-5 §4.7.4 (LUN < 256).
	s.lun[1] = byte(cfg.LUN)
	err = s.run(ctx, func() error { return s.login(cfg.Target, cfg.InitiatorName) })
	if err != nil {
		return nil, fmt.Errorf("initiator: login to %s at %s: %w", cfg.Target, cfg.Addr, err)
	}
	return s, nil
}

// Config returns the configuration the session was dialled with.
func (s *Session) Config() Config { return s.cfg }

// Params returns the negotiated parameters.
func (s *Session) Params() Params { return s.params }

// Err returns nil while the session is usable, else the error (wrapping
// ErrBroken) that broke it.
func (s *Session) Err() error { return s.broken }

// LogoutRequested reports whether the target asked this session to log
// out or announced it drops the connection (Asynchronous Message). The
// session still works until the target acts; a multipath user replaces it.
func (s *Session) LogoutRequested() bool { return s.logoutAsked }

// Abort closes the connection at once, without a logout, so that a
// command blocked in another goroutine returns. It is safe for concurrent
// use and idempotent.
func (s *Session) Abort() {
	s.abortOnce.Do(func() { s.nc.Close() })
}

// run runs f, an exchange of PDUs, under ctx: ctx's deadline becomes the
// connection's, and cancelling ctx interrupts f. An error from f that is
// not a *SCSIError breaks the session.
func (s *Session) run(ctx context.Context, f func() error) error {
	if s.broken != nil {
		return s.broken
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = s.nc.SetDeadline(dl)
		s.deadline = true
	} else if s.deadline {
		_ = s.nc.SetDeadline(time.Time{})
		s.deadline = false
	}
	var (
		stop  func() bool
		fired chan struct{}
	)
	if ctx.Done() != nil {
		fired = make(chan struct{})
		stop = context.AfterFunc(ctx, func() {
			_ = s.nc.SetDeadline(time.Unix(1, 0)) // in the past: wakes a blocked read or write
			close(fired)
		})
	}
	err := f()
	cancelled := false
	if stop != nil && !stop() {
		// ctx ended while f ran: the deadline is in the past now.
		<-fired
		_ = s.nc.SetDeadline(time.Time{})
		s.deadline = false
		cancelled = true
	}
	if err == nil || isSCSI(err) {
		return err
	}
	if cancelled || errors.Is(err, os.ErrDeadlineExceeded) {
		cause := ctx.Err()
		if _, ok := ctx.Deadline(); ok && cause == nil {
			// The connection's deadline is the context's: it can fire a
			// moment before the context's own timer.
			cause = context.DeadlineExceeded
		}
		if cause != nil {
			err = fmt.Errorf("%w (%w)", cause, err)
		}
	}
	s.broken = fmt.Errorf("%w: %w", ErrBroken, err)
	s.Abort()
	return s.broken
}

// isSCSI reports whether err is a command's SCSI status (the session
// stays usable).
func isSCSI(err error) bool {
	var se *SCSIError
	return errors.As(err, &se)
}

// header returns a zeroed BHS with opcode op in the send buffer.
func (s *Session) header(op Opcode, imm bool) []byte {
	s.out = append(s.out[:0], make([]byte, bhsLen)...)
	h := s.out[:bhsLen]
	h[0] = byte(op)
	if imm {
		h[0] |= immediate
	}
	return h
}

// send sends the header in s.out with data (padded).
func (s *Session) send(data []byte) error {
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

// recv reads the next PDU into p. It checks the data segment length before
// allocating.
func (s *Session) recv(p *pdu) error {
	if _, err := io.ReadFull(s.r, p.h[:]); err != nil {
		return err
	}
	ahs := int(p.h[4]) * 4
	n := int(p.h[5])<<16 | int(p.h[6])<<8 | int(p.h[7])
	if n > maxDataSegment {
		return fmt.Errorf("initiator: %v with a data segment of %d bytes", p.opcode(), n)
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
func (s *Session) loginHeader(csg, nsg uint8) {
	h := s.header(OpLoginReq, true)
	h[1] = flagFinal | csg<<2 | nsg // T bit (same position as F)
	copy(h[8:14], s.cfg.ISID[:])
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

// LoginError is a Login Response with a non-zero status (RFC 7143
// §11.13.5): class 1 redirects, 2 is an initiator error (wrong target
// name, not authorised), 3 a target error (service unavailable).
type LoginError struct {
	Class, Detail uint8
}

// Error describes the status.
func (e *LoginError) Error() string {
	return fmt.Sprintf("initiator: login rejected: status class %d detail %d", e.Class, e.Detail)
}

// login runs the security stage (AuthMethod=None) and the operational
// stage up to the full feature phase.
func (s *Session) login(target, initiator string) error {
	keys := map[string]string{}
	stage := func(csg, nsg uint8, text []byte) error {
		var p pdu
		for {
			s.loginHeader(csg, nsg)
			if err := s.send(text); err != nil {
				return err
			}
			if err := s.recv(&p); err != nil {
				return err
			}
			if p.opcode() != OpLoginResp {
				return fmt.Errorf("initiator: got %v during login", p.opcode())
			}
			if cls, det := p.h[36], p.h[37]; cls != 0 || det != 0 {
				return &LoginError{Class: cls, Detail: det}
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
		return fmt.Errorf("initiator: target wants AuthMethod=%s", keys["AuthMethod"])
	}
	if err := stage(1, 3, appendKeys(nil, "HeaderDigest", "None", "DataDigest", "None",
		"MaxRecvDataSegmentLength", strconv.Itoa(maxRecvDSL), "InitialR2T", "No", "ImmediateData", "Yes",
		"MaxBurstLength", "262144", "FirstBurstLength", "65536", "MaxOutstandingR2T", "1",
		"MaxConnections", "1", "DefaultTime2Wait", "0", "DefaultTime2Retain", "0",
		"DataPDUInOrder", "Yes", "DataSequenceInOrder", "Yes", "ErrorRecoveryLevel", "0")); err != nil {
		return err
	}
	if v, err := strconv.Atoi(keys["MaxRecvDataSegmentLength"]); err == nil && v > 0 {
		s.params.MaxSendDataSegmentLength = v
	}
	if v, err := strconv.Atoi(keys["FirstBurstLength"]); err == nil && v > 0 {
		s.params.FirstBurstLength = v
	}
	if v, err := strconv.ParseUint(keys["TargetPortalGroupTag"], 10, 16); err == nil {
		s.params.TPGT = uint16(v)
	}
	s.params.ImmediateData = keys["ImmediateData"] != "No"
	s.params.InitialR2T = keys["InitialR2T"] == "Yes"
	if keys["HeaderDigest"] == "CRC32C" || keys["DataDigest"] == "CRC32C" {
		return errors.New("initiator: target insists on digests")
	}
	return nil
}

// Command runs one SCSI command (RFC 7143 §11.3) to completion. out is the
// data of a write (nil for none), in the buffer of a read (nil for none;
// its length is the Expected Data Transfer Length). A status other than
// GOOD returns a *SCSIError; in then holds whatever Data-In arrived. ctx
// bounds the command; when it ends first the session breaks (the command's
// outcome is unknown).
func (s *Session) Command(ctx context.Context, cdb []byte, out, in []byte) error {
	if len(cdb) == 0 || len(cdb) > 16 {
		return fmt.Errorf("initiator: %d-byte CDB (1 to 16 without AHS)", len(cdb))
	}
	if out != nil && in != nil {
		return errors.New("initiator: bidirectional commands are not supported")
	}
	return s.run(ctx, func() error { return s.command(cdb, out, in) })
}

// command is Command without the context.
func (s *Session) command(cdb []byte, out, in []byte) error {
	s.itt++
	if s.itt == reservedTag {
		s.itt = 1
	}
	itt := s.itt
	h := s.header(OpSCSICommand, false)
	edtl := len(in)
	write := out != nil
	if write {
		edtl = len(out)
	}
	var imm []byte
	unsol := 0
	if write {
		if s.params.ImmediateData {
			imm = out[:min(len(out), s.params.FirstBurstLength, s.params.MaxSendDataSegmentLength)]
		}
		if !s.params.InitialR2T {
			unsol = min(len(out), s.params.FirstBurstLength)
		}
	}
	final := !write || s.params.InitialR2T || len(imm) >= unsol
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
			n := min(unsol-off, s.params.MaxSendDataSegmentLength)
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
		case OpSCSIDataIn:
			off := int(p.u32(40))
			if p.u32(16) != itt || off+len(p.data) > len(in) {
				return fmt.Errorf("initiator: Data-In for ITT %#x at %d+%d, want ITT %#x, %d bytes", p.u32(16), off, len(p.data), itt, len(in))
			}
			copy(in[off:], p.data)
			if p.flags()&0x01 != 0 { // S: status follows in this PDU
				s.expStatSN = p.u32(24) + 1
				return statusError(p.h[3], nil)
			}
		case OpSCSIResponse:
			if p.u32(16) != itt {
				return fmt.Errorf("initiator: SCSI Response for ITT %#x, want %#x", p.u32(16), itt)
			}
			s.expStatSN = p.u32(24) + 1
			if p.h[2] != 0 {
				return fmt.Errorf("initiator: SCSI Response code %#x (target failure)", p.h[2])
			}
			return statusError(p.h[3], p.data)
		case OpR2T:
			off, n := int(p.u32(40)), int(p.u32(44))
			if p.u32(16) != itt || off+n > len(out) {
				return fmt.Errorf("initiator: R2T for ITT %#x, %d+%d, of a %d-byte write with ITT %#x", p.u32(16), off, n, len(out), itt)
			}
			var sn uint32
			for end := off + n; off < end; sn++ {
				k := min(end-off, s.params.MaxSendDataSegmentLength)
				if err := s.dataOut(itt, p.u32(20), sn, off, off+k == end, out[off:off+k]); err != nil {
					return err
				}
				off += k
			}
		case OpNOPIn:
			if err := s.nopIn(&p); err != nil {
				return err
			}
		case OpAsyncMessage:
			s.asyncMessage(&p)
		case OpReject:
			return fmt.Errorf("initiator: target sent Reject, reason %#x", p.h[2])
		default:
			return fmt.Errorf("initiator: unexpected %v", p.opcode())
		}
	}
}

// asyncMessage notes an Asynchronous Message (RFC 7143 §11.9). SCSI async
// events (AsyncEvent 0) carry sense data that a later command reports as
// a unit attention anyway, so they are ignored.
func (s *Session) asyncMessage(p *pdu) {
	switch p.h[36] {
	case 1, 2, 3: // logout requested, connection or all connections dropped
		s.logoutAsked = true
	}
}

// dataOut sends one Data-Out PDU (RFC 7143 §11.7).
func (s *Session) dataOut(itt, ttt, dataSN uint32, off int, final bool, data []byte) error {
	h := s.header(OpSCSIDataOut, false)
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
func (s *Session) nopIn(p *pdu) error {
	if p.u32(16) == reservedTag { // unsolicited: StatSN is not advanced
		s.expStatSN = max(s.expStatSN, p.u32(24))
	}
	ttt := p.u32(20)
	if ttt == reservedTag {
		return nil
	}
	h := s.header(OpNOPOut, true)
	h[1] = flagFinal
	copy(h[8:16], p.h[8:16])
	put32(h, 16, reservedTag)
	put32(h, 20, ttt)
	put32(h, 24, s.cmdSN)
	put32(h, 28, s.expStatSN)
	return s.send(nil)
}

// Ping sends a NOP-Out that asks for an answer (RFC 7143 §11.18) and waits
// for the NOP-In, answering the target's own NOP-Ins meanwhile: a path
// checker that proves the connection and the target's session loop work.
func (s *Session) Ping(ctx context.Context) error {
	return s.run(ctx, func() error {
		s.itt++
		if s.itt == reservedTag {
			s.itt = 1
		}
		itt := s.itt
		h := s.header(OpNOPOut, true)
		h[1] = flagFinal
		copy(h[8:16], s.lun[:])
		put32(h, 16, itt)
		put32(h, 20, reservedTag)
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
			switch p.opcode() {
			case OpNOPIn:
				if p.u32(16) == itt {
					s.expStatSN = p.u32(24) + 1
					return nil
				}
				if err := s.nopIn(&p); err != nil {
					return err
				}
			case OpAsyncMessage:
				s.asyncMessage(&p)
			case OpReject:
				return fmt.Errorf("initiator: target sent Reject to a NOP-Out, reason %#x", p.h[2])
			default:
				return fmt.Errorf("initiator: unexpected %v while waiting for a NOP-In", p.opcode())
			}
		}
	})
}

// Close logs out (RFC 7143 §11.14), waiting at most 5 s, and closes the
// connection. A broken session is only closed.
func (s *Session) Close() error {
	defer s.Abort()
	if s.broken != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.run(ctx, func() error {
		s.itt++
		h := s.header(OpLogoutReq, true)
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
			if p.opcode() == OpLogoutResp {
				return nil
			}
		}
	})
}
