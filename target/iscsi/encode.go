package iscsi

import (
	"encoding/binary"

	"stave.dev/stave/target/scsi/sense"
)

// Target PDU builders. Each AppendTo appends exactly the 48-byte BHS with
// DataSegmentLength set from DataLen; the data segment, padding and digests
// are framed by AppendPDU or the connection writer. Builders have no side
// effects: the connection writer fills StatSN, ExpCmdSN and MaxCmdSN.

// reservedTag is the all-ones task tag (RFC 7143 §11.2.1.8).
const reservedTag = 0xffffffff

func appendHeader(b []byte, op Opcode, flags uint8) (out []byte, h BHS) {
	start := len(b)
	b = append(b, make([]byte, BHSLen)...)
	h = BHS(b[start : start+BHSLen])
	h[offOpcode] = uint8(op)
	h[offFlags] = flags
	return b, h
}

func (h BHS) putSNs(statSN, expCmdSN, maxCmdSN uint32) {
	h.put32(offField24, statSN)
	h.put32(offField28, expCmdSN)
	h.put32(offField32, maxCmdSN)
}

// SCSI Response flags (RFC 7143 §11.4.1).
const (
	respFlagBidiOverflow  = 0x10
	respFlagBidiUnderflow = 0x08
	respFlagOverflow      = 0x04
	respFlagUnderflow     = 0x02
)

// SCSIResponse is a SCSI Response PDU (RFC 7143 §11.4). The data segment
// is SenseLength (2 bytes) followed by the sense data; see AppendSenseData.
type SCSIResponse struct {
	BidiOverflow, BidiUnderflow bool
	Overflow, Underflow         bool
	Response                    uint8 // 0x00 command completed at target
	Status                      sense.Status
	ITT                         uint32
	SNACKTag                    uint32
	StatSN, ExpCmdSN, MaxCmdSN  uint32
	ExpDataSN                   uint32
	BidiResidualCount           uint32
	ResidualCount               uint32
	DataLen                     int
}

// AppendTo appends the BHS.
func (p *SCSIResponse) AppendTo(b []byte) []byte {
	f := uint8(flagFinal)
	if p.BidiOverflow {
		f |= respFlagBidiOverflow
	}
	if p.BidiUnderflow {
		f |= respFlagBidiUnderflow
	}
	if p.Overflow {
		f |= respFlagOverflow
	}
	if p.Underflow {
		f |= respFlagUnderflow
	}
	b, h := appendHeader(b, OpSCSIResponse, f)
	h[offByte2] = p.Response
	h[offByte3] = uint8(p.Status)
	h.SetDataSegmentLength(p.DataLen)
	h.put32(offITT, p.ITT)
	h.put32(offField20, p.SNACKTag)
	h.putSNs(p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	h.put32(offField36, p.ExpDataSN)
	h.put32(offField40, p.BidiResidualCount)
	h.put32(offField44, p.ResidualCount)
	return b
}

// AppendSenseData appends the SCSI Response data segment for sense bytes:
// a 2-byte SenseLength and the sense (RFC 7143 §11.4.7.2).
func AppendSenseData(b []byte, senseBytes []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(senseBytes)))
	return append(b, senseBytes...)
}

// Data-In flags (RFC 7143 §11.7.1).
const (
	dataInFlagAck       = 0x40
	dataInFlagOverflow  = 0x04
	dataInFlagUnderflow = 0x02
	dataInFlagStatus    = 0x01
)

// DataIn is a SCSI Data-In PDU (RFC 7143 §11.7). With HasStatus the PDU
// also carries the command's status (phase collapse) and must be Final.
type DataIn struct {
	Final, Ack, HasStatus      bool
	Overflow, Underflow        bool
	Status                     sense.Status
	LUN                        uint64
	ITT, TTT                   uint32
	StatSN, ExpCmdSN, MaxCmdSN uint32
	DataSN                     uint32
	BufferOffset               uint32
	ResidualCount              uint32
	DataLen                    int
}

// AppendTo appends the BHS.
func (p *DataIn) AppendTo(b []byte) []byte {
	var f uint8
	if p.Final {
		f |= flagFinal
	}
	if p.Ack {
		f |= dataInFlagAck
	}
	if p.HasStatus {
		f |= dataInFlagStatus
		if p.Overflow {
			f |= dataInFlagOverflow
		}
		if p.Underflow {
			f |= dataInFlagUnderflow
		}
	}
	b, h := appendHeader(b, OpSCSIDataIn, f)
	if p.HasStatus {
		h[offByte3] = uint8(p.Status)
	}
	h.SetDataSegmentLength(p.DataLen)
	binary.BigEndian.PutUint64(h[offLUN:], p.LUN)
	h.put32(offITT, p.ITT)
	h.put32(offField20, p.TTT)
	h.putSNs(p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	h.put32(offField36, p.DataSN)
	h.put32(offField40, p.BufferOffset)
	h.put32(offField44, p.ResidualCount)
	return b
}

// R2T is a Ready To Transfer PDU (RFC 7143 §11.8).
type R2T struct {
	LUN                        uint64
	ITT, TTT                   uint32
	StatSN, ExpCmdSN, MaxCmdSN uint32
	R2TSN                      uint32
	BufferOffset               uint32
	DesiredDataTransferLength  uint32
}

// AppendTo appends the BHS.
func (p *R2T) AppendTo(b []byte) []byte {
	b, h := appendHeader(b, OpR2T, flagFinal)
	binary.BigEndian.PutUint64(h[offLUN:], p.LUN)
	h.put32(offITT, p.ITT)
	h.put32(offField20, p.TTT)
	h.putSNs(p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	h.put32(offField36, p.R2TSN)
	h.put32(offField40, p.BufferOffset)
	h.put32(offField44, p.DesiredDataTransferLength)
	return b
}

// LoginResponse is a Login Response PDU (RFC 7143 §11.13).
type LoginResponse struct {
	Transit, Continue          bool
	CSG, NSG                   uint8
	VersionMax, VersionActive  uint8
	ISID                       [6]byte
	TSIH                       uint16
	ITT                        uint32
	StatSN, ExpCmdSN, MaxCmdSN uint32
	StatusClass, StatusDetail  uint8
	DataLen                    int
}

// AppendTo appends the BHS.
func (p *LoginResponse) AppendTo(b []byte) []byte {
	f := (p.CSG&3)<<2 | p.NSG&3
	if p.Transit {
		f |= 0x80
	}
	if p.Continue {
		f |= 0x40
	}
	b, h := appendHeader(b, OpLoginResp, f)
	h[offByte2] = p.VersionMax
	h[offByte3] = p.VersionActive
	h.SetDataSegmentLength(p.DataLen)
	copy(h[offLUN:], p.ISID[:])
	binary.BigEndian.PutUint16(h[offLUN+6:], p.TSIH)
	h.put32(offITT, p.ITT)
	h.putSNs(p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	h[offField36] = p.StatusClass
	h[offField36+1] = p.StatusDetail
	return b
}

// TextResponse is a Text Response PDU (RFC 7143 §11.11).
type TextResponse struct {
	Final, Continue            bool
	LUN                        uint64
	ITT, TTT                   uint32
	StatSN, ExpCmdSN, MaxCmdSN uint32
	DataLen                    int
}

// AppendTo appends the BHS.
func (p *TextResponse) AppendTo(b []byte) []byte {
	var f uint8
	if p.Final {
		f |= flagFinal
	}
	if p.Continue {
		f |= 0x40
	}
	b, h := appendHeader(b, OpTextResp, f)
	h.SetDataSegmentLength(p.DataLen)
	binary.BigEndian.PutUint64(h[offLUN:], p.LUN)
	h.put32(offITT, p.ITT)
	h.put32(offField20, p.TTT)
	h.putSNs(p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	return b
}

// LogoutResponseCode is the Response field of a Logout Response (RFC 7143 §11.15.1).
type LogoutResponseCode uint8

// Logout responses.
const (
	LogoutSuccess             LogoutResponseCode = 0
	LogoutCIDNotFound         LogoutResponseCode = 1
	LogoutRecoveryUnsupported LogoutResponseCode = 2
	LogoutCleanupFailed       LogoutResponseCode = 3
)

// String returns the RFC description.
func (c LogoutResponseCode) String() string {
	switch c {
	case LogoutSuccess:
		return "connection or session closed successfully"
	case LogoutCIDNotFound:
		return "CID not found"
	case LogoutRecoveryUnsupported:
		return "connection recovery is not supported"
	case LogoutCleanupFailed:
		return "cleanup failed for various reasons"
	}
	return "LogoutResponseCode(" + itoa(int(c)) + ")"
}

// LogoutReason is the reason code of a Logout Request (RFC 7143 §11.14.1).
type LogoutReason uint8

// Logout reasons.
const (
	LogoutCloseSession     LogoutReason = 0
	LogoutCloseConnection  LogoutReason = 1
	LogoutRemoveForRecover LogoutReason = 2
)

// String returns the RFC description.
func (r LogoutReason) String() string {
	switch r {
	case LogoutCloseSession:
		return "close the session"
	case LogoutCloseConnection:
		return "close the connection"
	case LogoutRemoveForRecover:
		return "remove the connection for recovery"
	}
	return "LogoutReason(" + itoa(int(r)) + ")"
}

// LogoutResponse is a Logout Response PDU (RFC 7143 §11.15).
type LogoutResponse struct {
	Response                   LogoutResponseCode
	ITT                        uint32
	StatSN, ExpCmdSN, MaxCmdSN uint32
	Time2Wait, Time2Retain     uint16
}

// AppendTo appends the BHS.
func (p *LogoutResponse) AppendTo(b []byte) []byte {
	b, h := appendHeader(b, OpLogoutResp, flagFinal)
	h[offByte2] = uint8(p.Response)
	h.put32(offITT, p.ITT)
	h.putSNs(p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	binary.BigEndian.PutUint16(h[offField40:], p.Time2Wait)
	binary.BigEndian.PutUint16(h[offField40+2:], p.Time2Retain)
	return b
}

// TaskMgmtResponse is a Task Management Function Response PDU (RFC 7143 §11.6).
type TaskMgmtResponse struct {
	Response                   uint8 // scsi.TMFResponse value
	ITT                        uint32
	StatSN, ExpCmdSN, MaxCmdSN uint32
}

// AppendTo appends the BHS.
func (p *TaskMgmtResponse) AppendTo(b []byte) []byte {
	b, h := appendHeader(b, OpTaskMgmtResp, flagFinal)
	h[offByte2] = p.Response
	h.put32(offITT, p.ITT)
	h.putSNs(p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	return b
}

// NOPIn is a NOP-In PDU (RFC 7143 §11.19). A reply to a NOP-Out echoes
// its ITT with TTT 0xffffffff; a target ping has ITT 0xffffffff and a TTT.
type NOPIn struct {
	LUN                        uint64
	ITT, TTT                   uint32
	StatSN, ExpCmdSN, MaxCmdSN uint32
	DataLen                    int
}

// AppendTo appends the BHS.
func (p *NOPIn) AppendTo(b []byte) []byte {
	b, h := appendHeader(b, OpNOPIn, flagFinal)
	h.SetDataSegmentLength(p.DataLen)
	binary.BigEndian.PutUint64(h[offLUN:], p.LUN)
	h.put32(offITT, p.ITT)
	h.put32(offField20, p.TTT)
	h.putSNs(p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	return b
}

// AsyncEvent is the AsyncEvent field of an Async Message (RFC 7143 §11.9.1).
type AsyncEvent uint8

// Async events.
const (
	AsyncSCSIEvent      AsyncEvent = 0
	AsyncLogoutRequest  AsyncEvent = 1
	AsyncDropConnection AsyncEvent = 2
	AsyncDropAllConns   AsyncEvent = 3
	AsyncRenegotiate    AsyncEvent = 4
	AsyncVendorSpecific AsyncEvent = 255
)

// String returns the RFC description.
func (e AsyncEvent) String() string {
	switch e {
	case AsyncSCSIEvent:
		return "SCSI async event"
	case AsyncLogoutRequest:
		return "logout requested"
	case AsyncDropConnection:
		return "connection will be dropped"
	case AsyncDropAllConns:
		return "all connections will be dropped"
	case AsyncRenegotiate:
		return "parameter negotiation requested"
	case AsyncVendorSpecific:
		return "vendor specific"
	}
	return "AsyncEvent(" + itoa(int(e)) + ")"
}

// AsyncMessage is an Asynchronous Message PDU (RFC 7143 §11.9).
type AsyncMessage struct {
	LUN                        uint64
	StatSN, ExpCmdSN, MaxCmdSN uint32
	Event                      AsyncEvent
	VCode                      uint8
	Parameter1, Parameter2     uint16
	Parameter3                 uint16
	DataLen                    int
}

// AppendTo appends the BHS.
func (p *AsyncMessage) AppendTo(b []byte) []byte {
	b, h := appendHeader(b, OpAsyncMessage, flagFinal)
	h.SetDataSegmentLength(p.DataLen)
	binary.BigEndian.PutUint64(h[offLUN:], p.LUN)
	h.put32(offITT, reservedTag)
	h.putSNs(p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	h[offField36] = uint8(p.Event)
	h[offField36+1] = p.VCode
	binary.BigEndian.PutUint16(h[38:], p.Parameter1)
	binary.BigEndian.PutUint16(h[40:], p.Parameter2)
	binary.BigEndian.PutUint16(h[42:], p.Parameter3)
	return b
}

// Reject is a Reject PDU (RFC 7143 §11.17). Its data segment is the
// complete header (BHS and AHS) of the rejected PDU.
type Reject struct {
	Reason                     RejectReason
	StatSN, ExpCmdSN, MaxCmdSN uint32
	DataSN                     uint32 // DataSN/R2TSN, for SNACK rejects
	DataLen                    int
}

// AppendTo appends the BHS.
func (p *Reject) AppendTo(b []byte) []byte {
	b, h := appendHeader(b, OpReject, flagFinal)
	h[offByte2] = uint8(p.Reason)
	h.SetDataSegmentLength(p.DataLen)
	h.put32(offITT, reservedTag)
	h.putSNs(p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	h.put32(offField36, p.DataSN)
	return b
}

func itoa(n int) string {
	var buf [20]byte
	i := len(buf)
	neg := n < 0
	if neg {
		n = -n
	}
	for {
		i--
		buf[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	if neg {
		i--
		buf[i] = '-'
	}
	return string(buf[i:])
}
