package iscsi

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// BHSLen is the length of the Basic Header Segment (RFC 7143 §11.2.1).
const BHSLen = 48

// Opcode is a PDU opcode (RFC 7143 §11.2.1.2).
type Opcode uint8

// Initiator opcodes.
const (
	OpNOPOut       Opcode = 0x00
	OpSCSICommand  Opcode = 0x01
	OpTaskMgmtReq  Opcode = 0x02
	OpLoginReq     Opcode = 0x03
	OpTextReq      Opcode = 0x04
	OpSCSIDataOut  Opcode = 0x05
	OpLogoutReq    Opcode = 0x06
	OpSNACKReq     Opcode = 0x10
	OpNOPIn        Opcode = 0x20
	OpSCSIResponse Opcode = 0x21
	OpTaskMgmtResp Opcode = 0x22
	OpLoginResp    Opcode = 0x23
	OpTextResp     Opcode = 0x24
	OpSCSIDataIn   Opcode = 0x25
	OpLogoutResp   Opcode = 0x26
	OpR2T          Opcode = 0x31
	OpAsyncMessage Opcode = 0x32
	OpReject       Opcode = 0x3f
)

var opcodeNames = map[Opcode]string{
	OpNOPOut: "NOP-Out", OpSCSICommand: "SCSI Command", OpTaskMgmtReq: "Task Management Request",
	OpLoginReq: "Login Request", OpTextReq: "Text Request", OpSCSIDataOut: "SCSI Data-Out",
	OpLogoutReq: "Logout Request", OpSNACKReq: "SNACK Request", OpNOPIn: "NOP-In",
	OpSCSIResponse: "SCSI Response", OpTaskMgmtResp: "Task Management Response",
	OpLoginResp: "Login Response", OpTextResp: "Text Response", OpSCSIDataIn: "SCSI Data-In",
	OpLogoutResp: "Logout Response", OpR2T: "R2T", OpAsyncMessage: "Async Message", OpReject: "Reject",
}

// String returns the RFC name of the opcode.
func (o Opcode) String() string {
	if s, ok := opcodeNames[o]; ok {
		return s
	}
	return fmt.Sprintf("Opcode(0x%02x)", uint8(o))
}

// RejectReason is the Reason field of a Reject PDU (RFC 7143 §11.17.1).
type RejectReason uint8

// Reject reasons.
const (
	RejectDataDigestError     RejectReason = 0x02
	RejectSNACKReject         RejectReason = 0x03
	RejectProtocolError       RejectReason = 0x04
	RejectCommandNotSupported RejectReason = 0x05
	RejectImmediateCmdReject  RejectReason = 0x06
	RejectTaskInProgress      RejectReason = 0x07
	RejectInvalidDataAck      RejectReason = 0x08
	RejectInvalidPDUField     RejectReason = 0x09
	RejectLongOpReject        RejectReason = 0x0a
	RejectWaitingForLogout    RejectReason = 0x0c
)

// String returns the RFC name of the reason.
func (r RejectReason) String() string {
	switch r {
	case RejectDataDigestError:
		return "Data (payload) digest error"
	case RejectSNACKReject:
		return "SNACK Reject"
	case RejectProtocolError:
		return "Protocol Error"
	case RejectCommandNotSupported:
		return "Command not supported"
	case RejectImmediateCmdReject:
		return "Immediate command reject - too many immediate commands"
	case RejectTaskInProgress:
		return "Task in progress"
	case RejectInvalidDataAck:
		return "Invalid data ack"
	case RejectInvalidPDUField:
		return "Invalid PDU field"
	case RejectLongOpReject:
		return "Long op reject"
	case RejectWaitingForLogout:
		return "Waiting for Logout"
	}
	return fmt.Sprintf("RejectReason(0x%02x)", uint8(r))
}

// AHSType is the type of an Additional Header Segment (RFC 7143 §11.2.2.2).
type AHSType uint8

// AHS types.
const (
	AHSExtendedCDB     AHSType = 1
	AHSBidiReadDataLen AHSType = 2
)

// String returns the RFC name of the AHS type.
func (t AHSType) String() string {
	switch t {
	case AHSExtendedCDB:
		return "Extended-CDB"
	case AHSBidiReadDataLen:
		return "Bidirectional Read Data Length"
	}
	return fmt.Sprintf("AHSType(%d)", uint8(t))
}

// Byte offsets inside the BHS (RFC 7143 §11).
const (
	offOpcode     = 0
	offFlags      = 1
	offByte2      = 2
	offByte3      = 3
	offAHSLen     = 4
	offDSL        = 5
	offLUN        = 8
	offITT        = 16
	offField20    = 20 // TTT, EDTL, RefTaskTag, SNACK tag, CID
	offField24    = 24 // CmdSN or StatSN
	offField28    = 28 // ExpStatSN or ExpCmdSN
	offField32    = 32 // MaxCmdSN, RefCmdSN, CDB
	offField36    = 36 // DataSN, R2TSN, ExpDataSN, AsyncEvent, status class
	offField40    = 40 // BufferOffset, bidi residual, Time2Wait
	offField44    = 44 // residual count, desired data transfer length
	flagFinal     = 0x80
	flagImmediate = 0x40
)

// BHS is a view of a 48-byte Basic Header Segment. Accessors read and write
// the fields in place; a BHS never allocates. Field names follow RFC 7143;
// an accessor is meaningful only for the opcodes whose layout has the field.
type BHS []byte

// Opcode returns the opcode (low 6 bits of byte 0).
func (h BHS) Opcode() Opcode { return Opcode(h[offOpcode] & 0x3f) }

// Immediate reports the I bit (immediate delivery).
func (h BHS) Immediate() bool { return h[offOpcode]&flagImmediate != 0 }

// SetOpcode sets the opcode and the I bit.
func (h BHS) SetOpcode(o Opcode, immediate bool) {
	h[offOpcode] = uint8(o) & 0x3f
	if immediate {
		h[offOpcode] |= flagImmediate
	}
}

// Flags returns byte 1 (F bit and opcode-specific flags).
func (h BHS) Flags() uint8 { return h[offFlags] }

// Final reports the F bit.
func (h BHS) Final() bool { return h[offFlags]&flagFinal != 0 }

// TotalAHSLength returns the AHS length in bytes (the field counts 4-byte words).
func (h BHS) TotalAHSLength() int { return int(h[offAHSLen]) * 4 }

// DataSegmentLength returns the data segment length in bytes, without padding.
func (h BHS) DataSegmentLength() int {
	return int(h[offDSL])<<16 | int(h[offDSL+1])<<8 | int(h[offDSL+2])
}

// SetDataSegmentLength sets the 24-bit DataSegmentLength field.
func (h BHS) SetDataSegmentLength(n int) {
	h[offDSL], h[offDSL+1], h[offDSL+2] = byte(n>>16), byte(n>>8), byte(n)
}

// LUN returns the raw 8-byte LUN field.
func (h BHS) LUN() uint64 { return binary.BigEndian.Uint64(h[offLUN:]) }

// ITT returns the Initiator Task Tag.
func (h BHS) ITT() uint32 { return binary.BigEndian.Uint32(h[offITT:]) }

// TTT returns the Target Transfer Tag (bytes 20-23 of NOP, Data, Text, R2T).
func (h BHS) TTT() uint32 { return binary.BigEndian.Uint32(h[offField20:]) }

// ExpectedDataTransferLength returns bytes 20-23 of a SCSI Command.
func (h BHS) ExpectedDataTransferLength() uint32 { return binary.BigEndian.Uint32(h[offField20:]) }

// ReferencedTaskTag returns bytes 20-23 of a Task Management Request.
func (h BHS) ReferencedTaskTag() uint32 { return binary.BigEndian.Uint32(h[offField20:]) }

// CID returns bytes 20-21 of a Login or Logout Request.
func (h BHS) CID() uint16 { return binary.BigEndian.Uint16(h[offField20:]) }

// CmdSN returns bytes 24-27 of an initiator PDU.
func (h BHS) CmdSN() uint32 { return binary.BigEndian.Uint32(h[offField24:]) }

// StatSN returns bytes 24-27 of a target PDU.
func (h BHS) StatSN() uint32 { return binary.BigEndian.Uint32(h[offField24:]) }

// ExpStatSN returns bytes 28-31 of an initiator PDU.
func (h BHS) ExpStatSN() uint32 { return binary.BigEndian.Uint32(h[offField28:]) }

// ExpCmdSN returns bytes 28-31 of a target PDU.
func (h BHS) ExpCmdSN() uint32 { return binary.BigEndian.Uint32(h[offField28:]) }

// MaxCmdSN returns bytes 32-35 of a target PDU.
func (h BHS) MaxCmdSN() uint32 { return binary.BigEndian.Uint32(h[offField32:]) }

// RefCmdSN returns bytes 32-35 of a Task Management Request.
func (h BHS) RefCmdSN() uint32 { return binary.BigEndian.Uint32(h[offField32:]) }

// CDB returns the 16 CDB bytes of a SCSI Command (aliases h).
func (h BHS) CDB() []byte { return h[offField32:BHSLen] }

// DataSN returns bytes 36-39 (DataSN, R2TSN or ExpDataSN).
func (h BHS) DataSN() uint32 { return binary.BigEndian.Uint32(h[offField36:]) }

// BufferOffset returns bytes 40-43 of a Data PDU or R2T.
func (h BHS) BufferOffset() uint32 { return binary.BigEndian.Uint32(h[offField40:]) }

// Field44 returns bytes 44-47 (residual count or desired data transfer length).
func (h BHS) Field44() uint32 { return binary.BigEndian.Uint32(h[offField44:]) }

// SCSI Command flags (RFC 7143 §11.3.1).
const (
	cmdFlagRead  = 0x40
	cmdFlagWrite = 0x20
	cmdAttrMask  = 0x07
)

// Read reports the R bit of a SCSI Command.
func (h BHS) Read() bool { return h[offFlags]&cmdFlagRead != 0 }

// Write reports the W bit of a SCSI Command.
func (h BHS) Write() bool { return h[offFlags]&cmdFlagWrite != 0 }

// Attr returns the ATTR field of a SCSI Command.
func (h BHS) Attr() uint8 { return h[offFlags] & cmdAttrMask }

// Continue reports the C bit of Login and Text PDUs.
func (h BHS) Continue() bool { return h[offFlags]&0x40 != 0 }

// TMFFunction returns the Function field of a Task Management Request.
func (h BHS) TMFFunction() uint8 { return h[offFlags] & 0x7f }

// LogoutReason returns the reason code of a Logout Request.
func (h BHS) LogoutReason() uint8 { return h[offFlags] & 0x7f }

// put32 stores v big-endian at off.
func (h BHS) put32(off int, v uint32) { binary.BigEndian.PutUint32(h[off:], v) }

// PDU is one decoded PDU. BHS, AHS and Data alias the reader's buffers and
// are valid until the next ReadPDU on the same Reader.
type PDU struct {
	BHS  BHS
	AHS  []byte // TotalAHSLength bytes
	Data []byte // DataSegmentLength bytes, padding stripped
}

// ExtendedCDB returns the CDB bytes beyond 16 carried in an Extended-CDB AHS,
// or nil. It returns an error if the AHS is malformed.
func (p *PDU) ExtendedCDB() ([]byte, error) {
	ext, _, err := parseAHS(p.AHS)
	return ext, err
}

// BidiReadLength returns the Expected Bidirectional Read Data Length AHS value.
func (p *PDU) BidiReadLength() (uint32, bool, error) {
	_, bidi, err := parseAHS(p.AHS)
	if err != nil || bidi < 0 {
		return 0, false, err
	}
	return uint32(bidi), true, nil
}

// parseAHS walks the AHS list (RFC 7143 §11.2.2). bidi is -1 when absent.
func parseAHS(b []byte) (ext []byte, bidi int64, err error) {
	bidi = -1
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, -1, ErrBadAHS
		}
		n := int(binary.BigEndian.Uint16(b))
		typ := AHSType(b[2])
		total := (3 + n + 3) &^ 3
		if n == 0 || total > len(b) {
			return nil, -1, ErrBadAHS
		}
		body := b[3 : 3+n] // includes the reserved byte
		switch typ {
		case AHSExtendedCDB:
			ext = body[1:]
		case AHSBidiReadDataLen:
			if n != 5 {
				return nil, -1, ErrBadAHS
			}
			bidi = int64(binary.BigEndian.Uint32(body[1:]))
		default:
			return nil, -1, ErrBadAHS
		}
		b = b[total:]
	}
	return ext, bidi, nil
}

// AppendExtendedCDBAHS appends an Extended-CDB AHS carrying cdb[16:].
func AppendExtendedCDBAHS(b []byte, rest []byte) []byte {
	n := len(rest) + 1
	b = append(b, byte(n>>8), byte(n), byte(AHSExtendedCDB), 0)
	b = append(b, rest...)
	return appendPad(b, 3+n)
}

// AppendBidiAHS appends an Expected Bidirectional Read Data Length AHS.
func AppendBidiAHS(b []byte, length uint32) []byte {
	b = append(b, 0, 5, byte(AHSBidiReadDataLen), 0)
	return binary.BigEndian.AppendUint32(b, length)
}

// padLen returns the padding needed after n bytes.
func padLen(n int) int { return (4 - n&3) & 3 }

func appendPad(b []byte, n int) []byte {
	for range padLen(n) {
		b = append(b, 0)
	}
	return b
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c returns the CRC32C of the concatenation of parts.
func crc32c(parts ...[]byte) uint32 {
	var c uint32
	for _, p := range parts {
		c = crc32.Update(c, castagnoli, p)
	}
	return c
}

var zeroPad [4]byte

// dataDigest returns the CRC32C over data and its padding.
func dataDigest(data []byte) uint32 {
	c := crc32.Update(0, castagnoli, data)
	return crc32.Update(c, castagnoli, zeroPad[:padLen(len(data))])
}

// appendDigest appends a CRC32C least significant byte first.
func appendDigest(b []byte, c uint32) []byte { return binary.LittleEndian.AppendUint32(b, c) }

// Errors returned by the codec.
var (
	// ErrBadAHS means the AHS list is malformed.
	ErrBadAHS = errors.New("iscsi: malformed additional header segment")
	// ErrDataTooLong means DataSegmentLength exceeds MaxRecvDataSegmentLength.
	ErrDataTooLong = errors.New("iscsi: data segment longer than MaxRecvDataSegmentLength")
	// ErrHeaderDigest means the header digest did not match; the connection must close.
	ErrHeaderDigest = errors.New("iscsi: header digest error")
	// ErrDataDigest means the data digest did not match; the PDU must be rejected.
	ErrDataDigest = errors.New("iscsi: data digest error")
)

// Reader reads PDUs from a connection into buffers it owns. It is not safe
// for concurrent use: one reader goroutine per connection.
type Reader struct {
	r *bufio.Reader
	// HeaderDigest and DataDigest enable CRC32C checking; set them after
	// login when negotiated.
	HeaderDigest, DataDigest bool
	// MaxDataSegmentLength bounds DataSegmentLength; longer PDUs fail with
	// ErrDataTooLong before any data is read.
	MaxDataSegmentLength int

	hdr  [BHSLen + 255*4 + 4]byte
	data []byte
	pdu  PDU
}

// NewReader returns a Reader over r with a default MaxDataSegmentLength of
// 8192 (RFC 7143 §13.12 default, used during login).
func NewReader(r io.Reader) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, 64<<10), MaxDataSegmentLength: 8192}
}

// ReadPDU reads one PDU. The returned PDU aliases the Reader's buffers and
// is valid until the next ReadPDU. Errors: io errors from the connection,
// ErrHeaderDigest or ErrBadAHS (close the connection), ErrDataTooLong
// (protocol error: reject and close), and ErrDataDigest, which returns the
// PDU too (with Data set) so the caller can send a Reject and carry on.
func (r *Reader) ReadPDU() (*PDU, error) {
	h := r.hdr[:BHSLen]
	if _, err := io.ReadFull(r.r, h); err != nil {
		return nil, err
	}
	bhs := BHS(h)
	ahsLen := bhs.TotalAHSLength()
	hlen := BHSLen + ahsLen
	if ahsLen > 0 {
		if _, err := io.ReadFull(r.r, r.hdr[BHSLen:hlen]); err != nil {
			return nil, unexpectedEOF(err)
		}
	}
	if r.HeaderDigest {
		d := r.hdr[hlen : hlen+4]
		if _, err := io.ReadFull(r.r, d); err != nil {
			return nil, unexpectedEOF(err)
		}
		if binary.LittleEndian.Uint32(d) != crc32c(r.hdr[:hlen]) {
			return nil, ErrHeaderDigest
		}
	}
	p := &r.pdu
	p.BHS = bhs
	p.AHS = r.hdr[BHSLen:hlen]
	p.Data = nil
	if ahsLen > 0 {
		if _, _, err := parseAHS(p.AHS); err != nil {
			return p, err
		}
	}
	dsl := bhs.DataSegmentLength()
	if dsl > r.MaxDataSegmentLength {
		return p, ErrDataTooLong
	}
	if dsl == 0 {
		return p, nil
	}
	n := dsl + padLen(dsl)
	if r.DataDigest {
		n += 4
	}
	if cap(r.data) < n {
		r.data = make([]byte, n, max(n, r.MaxDataSegmentLength+8))
	}
	buf := r.data[:n]
	if _, err := io.ReadFull(r.r, buf); err != nil {
		return nil, unexpectedEOF(err)
	}
	p.Data = buf[:dsl]
	if r.DataDigest {
		want := binary.LittleEndian.Uint32(buf[n-4:])
		if want != crc32c(buf[:n-4]) {
			return p, ErrDataDigest
		}
	}
	return p, nil
}

// Buffered returns how many bytes the Reader has read from the
// connection beyond the last PDU returned: non-zero means the next PDU
// (or part of it) has already arrived.
func (r *Reader) Buffered() int { return r.r.Buffered() }

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// AppendPDU appends a complete PDU (header, AHS, optional header digest,
// data, padding, optional data digest) to b. bhs must be 48 bytes; its
// TotalAHSLength and DataSegmentLength fields are set from ahs and data.
func AppendPDU(b []byte, bhs BHS, ahs, data []byte, headerDigest, dataDigestOn bool) []byte {
	start := len(b)
	b = append(b, bhs...)
	h := BHS(b[start : start+BHSLen])
	h[offAHSLen] = byte(len(ahs) / 4)
	h.SetDataSegmentLength(len(data))
	b = append(b, ahs...)
	if headerDigest {
		b = appendDigest(b, crc32c(b[start:]))
	}
	if len(data) > 0 {
		b = append(b, data...)
		b = appendPad(b, len(data))
		if dataDigestOn {
			b = appendDigest(b, dataDigest(data))
		}
	}
	return b
}
