package pr

import (
	"fmt"
	"strings"

	"stave.dev/stave/target/scsi/sense"
)

// opcode is a SCSI operation code as this package classifies it.
type opcode uint8

// Operation codes the reservation rules tell apart (SPC-4 Annex D,
// SBC-3 §5).
const (
	opTestUnitReady        opcode = 0x00
	opRequestSense         opcode = 0x03
	opFormatUnit           opcode = 0x04
	opRead6                opcode = 0x08
	opWrite6               opcode = 0x0a
	opInquiry              opcode = 0x12
	opModeSelect6          opcode = 0x15
	opReserve6             opcode = 0x16
	opRelease6             opcode = 0x17
	opModeSense6           opcode = 0x1a
	opStartStopUnit        opcode = 0x1b
	opReceiveDiagnostic    opcode = 0x1c
	opSendDiagnostic       opcode = 0x1d
	opPreventAllow         opcode = 0x1e
	opReadCapacity10       opcode = 0x25
	opRead10               opcode = 0x28
	opWrite10              opcode = 0x2a
	opWriteAndVerify10     opcode = 0x2e
	opVerify10             opcode = 0x2f
	opPreFetch10           opcode = 0x34
	opSynchronizeCache10   opcode = 0x35
	opReadDefectData10     opcode = 0x37
	opWriteBuffer          opcode = 0x3b
	opReadBuffer           opcode = 0x3c
	opWriteLong10          opcode = 0x3f
	opWriteSame10          opcode = 0x41
	opUnmap                opcode = 0x42
	opSanitize             opcode = 0x48
	opLogSelect            opcode = 0x4c
	opLogSense             opcode = 0x4d
	opXDWriteRead10        opcode = 0x53
	opModeSelect10         opcode = 0x55
	opReserve10            opcode = 0x56
	opRelease10            opcode = 0x57
	opModeSense10          opcode = 0x5a
	opPersistentReserveIn  opcode = 0x5e
	opPersistentReserveOut opcode = 0x5f
	opVariableLength       opcode = 0x7f
	opExtendedCopy         opcode = 0x83
	opReceiveCopyResults   opcode = 0x84
	opRead16               opcode = 0x88
	opCompareAndWrite      opcode = 0x89
	opWrite16              opcode = 0x8a
	opORWrite              opcode = 0x8b
	opReadAttribute        opcode = 0x8c
	opWriteAttribute       opcode = 0x8d
	opWriteAndVerify16     opcode = 0x8e
	opVerify16             opcode = 0x8f
	opPreFetch16           opcode = 0x90
	opSynchronizeCache16   opcode = 0x91
	opWriteSame16          opcode = 0x93
	opWriteAtomic16        opcode = 0x9c
	opServiceActionIn16    opcode = 0x9e
	opReportLUNs           opcode = 0xa0
	opSecurityProtocolIn   opcode = 0xa2
	opMaintenanceIn        opcode = 0xa3
	opMaintenanceOut       opcode = 0xa4
	opRead12               opcode = 0xa8
	opWrite12              opcode = 0xaa
	opServiceActionIn12    opcode = 0xab
	opWriteAndVerify12     opcode = 0xae
	opVerify12             opcode = 0xaf
	opSecurityProtocolOut  opcode = 0xb5
	opReadDefectData12     opcode = 0xb7
)

// String returns the operation code in hex, as SPC-4 Annex D lists it.
func (o opcode) String() string { return fmt.Sprintf("opcode 0x%02x", uint8(o)) }

// Service actions of SERVICE ACTION IN(16) and VARIABLE LENGTH CDBs that
// the rules tell apart.
const (
	saReadCapacity16 = 0x10
	saGetLBAStatus   = 0x12
	saRead32         = 0x0009
	saVerify32       = 0x000a
)

// access is how a command is treated in the presence of a persistent
// reservation held by another I_T nexus (the columns of SPC-4 Table 56
// "SPC commands that are allowed in the presence of various reservations"
// and SBC-3 Table 13).
type access uint8

const (
	// accessConflict: conflicts with every reservation type
	// (RESERVATION CONFLICT unless the nexus is a holder, or registered
	// under a registrants-only or all-registrants type).
	accessConflict access = iota
	// accessRead: allowed under write-exclusive types, conflicts under
	// exclusive-access types.
	accessRead
	// accessAllowed: allowed in the presence of any reservation.
	accessAllowed
	// accessReserveRelease: RESERVE/RELEASE(6/10), decided by the SPC-2
	// interaction rules (see Manager.Reserve).
	accessReserveRelease
)

// String returns the rule's name.
func (a access) String() string {
	switch a {
	case accessConflict:
		return "conflict"
	case accessRead:
		return "read"
	case accessAllowed:
		return "allowed"
	case accessReserveRelease:
		return "reserve-release"
	}
	return "access(?)"
}

// classify returns the access rule of cdb. Commands not listed conflict.
func classify(cdb []byte) access {
	if len(cdb) == 0 {
		return accessConflict
	}
	switch opcode(cdb[0]) {
	case opTestUnitReady, opRequestSense, opInquiry, opReportLUNs, opLogSense,
		opReadCapacity10, opPersistentReserveIn, opPersistentReserveOut,
		opMaintenanceIn, opServiceActionIn12, opSecurityProtocolIn:
		return accessAllowed
	case opRead6, opRead10, opRead12, opRead16,
		opVerify10, opVerify12, opVerify16,
		opPreFetch10, opPreFetch16,
		opModeSense6, opModeSense10,
		opReadDefectData10, opReadDefectData12,
		opReadBuffer, opReceiveDiagnostic, opReadAttribute, opReceiveCopyResults:
		return accessRead
	case opReserve6, opReserve10, opRelease6, opRelease10:
		return accessReserveRelease
	case opServiceActionIn16:
		if len(cdb) > 1 {
			switch cdb[1] & 0x1f {
			case saReadCapacity16:
				return accessAllowed
			case saGetLBAStatus:
				return accessRead
			}
		}
		return accessRead
	case opStartStopUnit:
		// SBC-3 Table 13: allowed with START=1 and POWER CONDITION=0.
		if len(cdb) > 4 && cdb[4]&0x01 != 0 && cdb[4]&0xf0 == 0 {
			return accessAllowed
		}
		return accessConflict
	case opPreventAllow:
		// SPC-4 Table 56: allowed with PREVENT=0.
		if len(cdb) > 4 && cdb[4]&0x03 == 0 {
			return accessAllowed
		}
		return accessConflict
	case opVariableLength:
		if len(cdb) > 9 {
			switch uint16(cdb[8])<<8 | uint16(cdb[9]) {
			case saRead32, saVerify32:
				return accessRead
			}
		}
		return accessConflict
	}
	return accessConflict
}

// spc2Allowed reports whether cdb may be processed from an I_T nexus other
// than the holder of an SPC-2 reservation (SPC-2 §5.5.1: INQUIRY, LOG
// SENSE, REPORT LUNS, REQUEST SENSE, RELEASE (as a no-op) and PREVENT
// ALLOW MEDIUM REMOVAL with PREVENT=0 proceed; everything else, TEST UNIT
// READY and PERSISTENT RESERVE IN/OUT included, conflicts).
func spc2Allowed(cdb []byte) bool {
	if len(cdb) == 0 {
		return false
	}
	switch opcode(cdb[0]) {
	case opInquiry, opLogSense, opReportLUNs, opRequestSense, opRelease6, opRelease10:
		return true
	case opPreventAllow:
		return len(cdb) > 4 && cdb[4]&0x03 == 0
	}
	return false
}

// samePort reports whether a and b are the same I_T nexus.
func samePort(a, b Port) bool {
	return strings.EqualFold(a.InitiatorPort, b.InitiatorPort) && a.TargetPort == b.TargetPort &&
		a.RelativeTargetPort == b.RelativeTargetPort
}

// CheckAccess decides whether the command in cdb, arriving on I_T nexus
// p, may proceed in the presence of the logical unit's reservations. It
// returns nil, or a *sense.Error with Status RESERVATION CONFLICT:
//
//  1. An SPC-2 reservation held by another nexus lets only INQUIRY, LOG
//     SENSE, REPORT LUNS, REQUEST SENSE, RELEASE and PREVENT ALLOW
//     (PREVENT=0) through; PERSISTENT RESERVE IN/OUT conflict from every nexus while
//     an SPC-2 reservation exists (SPC-4 §5.13.3 and SPC-2 §5.5.1).
//  2. RESERVE/RELEASE in the presence of registrations follow the
//     compatible reservation handling rules (see Reserve).
//  3. Otherwise SPC-4 Table 56 and SBC-3 Table 13 apply: holders (every
//     registrant for all-registrants types) and, for registrants-only and
//     all-registrants types, every registered nexus may do anything;
//     others may issue the allowed commands, and read-type commands under
//     write-exclusive types.
//
// PERSISTENT RESERVE OUT service actions have their own conflicts, which
// Out reports. CheckAccess is safe for concurrent use, does no I/O, does
// not allocate unless it reports a conflict, takes no lock while the LU has
// no registration and no reservation, and never panics whatever cdb holds.
func (m *Manager) CheckAccess(p Port, cdb []byte) error {
	if m.idle.Load() {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.checkAccessLocked(p, cdb)
}

// checkAccessLocked implements CheckAccess.
// REQUIRES: m.mu held.
func (m *Manager) checkAccessLocked(p Port, cdb []byte) error {
	a := classify(cdb)
	if h := m.mu.spc2; h != nil {
		if len(cdb) > 0 && (opcode(cdb[0]) == opPersistentReserveIn || opcode(cdb[0]) == opPersistentReserveOut) {
			return sense.ReservationConflict()
		}
		if !samePort(*h, p) && !spc2Allowed(cdb) {
			return sense.ReservationConflict()
		}
	}
	st := &m.mu.st
	if a == accessReserveRelease {
		return crhCheck(st, p)
	}
	rv := st.Reservation
	if rv == nil || a == accessAllowed {
		return nil
	}
	i := st.find(p)
	if i >= 0 && (rv.Type.registrantsOnly() || st.isHolder(i)) {
		return nil
	}
	if a == accessRead && !rv.Type.exclusiveAccess() {
		return nil
	}
	return sense.ReservationConflict()
}

// crhCheck applies the compatible reservation handling rules to an SPC-2
// RESERVE or RELEASE from p (SPC-4 §5.13.3, CRH=1). With no registration
// it returns nil (SPC-2 rules apply); with registrations it returns nil
// when p is a reservation holder, or registered under a registrants-only
// or all-registrants type (the command then completes with GOOD status
// and no effect), and RESERVATION CONFLICT otherwise.
func crhCheck(st *State, p Port) error {
	if len(st.Registrations) == 0 {
		return nil
	}
	i := st.find(p)
	if i >= 0 && st.Reservation != nil && (st.isHolder(i) || st.Reservation.Type.registrantsOnly()) {
		return nil
	}
	return sense.ReservationConflict()
}
