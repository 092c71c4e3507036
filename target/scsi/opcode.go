package scsi

import "fmt"

// Opcode is a SCSI operation code (SPC-4 §4.3.4, Annex D).
type Opcode uint8

// Operation codes handled by the LU.
const (
	OpTestUnitReady             Opcode = 0x00
	OpRequestSense              Opcode = 0x03
	OpRead6                     Opcode = 0x08
	OpWrite6                    Opcode = 0x0a
	OpInquiry                   Opcode = 0x12
	OpModeSelect6               Opcode = 0x15
	OpReserve6                  Opcode = 0x16
	OpRelease6                  Opcode = 0x17
	OpModeSense6                Opcode = 0x1a
	OpStartStopUnit             Opcode = 0x1b
	OpPreventAllowMediumRemoval Opcode = 0x1e
	OpReadCapacity10            Opcode = 0x25
	OpRead10                    Opcode = 0x28
	OpWrite10                   Opcode = 0x2a
	OpWriteAndVerify10          Opcode = 0x2e
	OpVerify10                  Opcode = 0x2f
	OpPreFetch10                Opcode = 0x34
	OpSynchronizeCache10        Opcode = 0x35
	OpReadDefectData10          Opcode = 0x37
	OpWriteSame10               Opcode = 0x41
	OpUnmap                     Opcode = 0x42
	OpModeSelect10              Opcode = 0x55
	OpReserve10                 Opcode = 0x56
	OpRelease10                 Opcode = 0x57
	OpModeSense10               Opcode = 0x5a
	OpPersistentReserveIn       Opcode = 0x5e
	OpPersistentReserveOut      Opcode = 0x5f
	OpExtendedCopy              Opcode = 0x83
	OpReceiveCopyResults        Opcode = 0x84
	OpRead16                    Opcode = 0x88
	OpCompareAndWrite           Opcode = 0x89
	OpWrite16                   Opcode = 0x8a
	OpOrWrite16                 Opcode = 0x8b
	OpWriteAndVerify16          Opcode = 0x8e
	OpVerify16                  Opcode = 0x8f
	OpPreFetch16                Opcode = 0x90
	OpSynchronizeCache16        Opcode = 0x91
	OpWriteSame16               Opcode = 0x93
	OpWriteAtomic16             Opcode = 0x9c
	OpServiceActionIn16         Opcode = 0x9e
	OpReportLUNs                Opcode = 0xa0
	OpMaintenanceIn             Opcode = 0xa3
	OpRead12                    Opcode = 0xa8
	OpWrite12                   Opcode = 0xaa
	OpWriteAndVerify12          Opcode = 0xae
	OpVerify12                  Opcode = 0xaf
	OpReadDefectData12          Opcode = 0xb7
)

// String returns the SPC/SBC name of the operation code.
func (o Opcode) String() string {
	switch o {
	case OpTestUnitReady:
		return "TEST UNIT READY"
	case OpRequestSense:
		return "REQUEST SENSE"
	case OpRead6:
		return "READ(6)"
	case OpWrite6:
		return "WRITE(6)"
	case OpInquiry:
		return "INQUIRY"
	case OpModeSelect6:
		return "MODE SELECT(6)"
	case OpReserve6:
		return "RESERVE(6)"
	case OpRelease6:
		return "RELEASE(6)"
	case OpModeSense6:
		return "MODE SENSE(6)"
	case OpStartStopUnit:
		return "START STOP UNIT"
	case OpPreventAllowMediumRemoval:
		return "PREVENT ALLOW MEDIUM REMOVAL"
	case OpReadCapacity10:
		return "READ CAPACITY(10)"
	case OpRead10:
		return "READ(10)"
	case OpWrite10:
		return "WRITE(10)"
	case OpWriteAndVerify10:
		return "WRITE AND VERIFY(10)"
	case OpVerify10:
		return "VERIFY(10)"
	case OpPreFetch10:
		return "PRE-FETCH(10)"
	case OpSynchronizeCache10:
		return "SYNCHRONIZE CACHE(10)"
	case OpReadDefectData10:
		return "READ DEFECT DATA(10)"
	case OpWriteSame10:
		return "WRITE SAME(10)"
	case OpUnmap:
		return "UNMAP"
	case OpModeSelect10:
		return "MODE SELECT(10)"
	case OpReserve10:
		return "RESERVE(10)"
	case OpRelease10:
		return "RELEASE(10)"
	case OpModeSense10:
		return "MODE SENSE(10)"
	case OpPersistentReserveIn:
		return "PERSISTENT RESERVE IN"
	case OpPersistentReserveOut:
		return "PERSISTENT RESERVE OUT"
	case OpRead16:
		return "READ(16)"
	case OpCompareAndWrite:
		return "COMPARE AND WRITE"
	case OpWrite16:
		return "WRITE(16)"
	case OpOrWrite16:
		return "ORWRITE(16)"
	case OpWriteAndVerify16:
		return "WRITE AND VERIFY(16)"
	case OpVerify16:
		return "VERIFY(16)"
	case OpPreFetch16:
		return "PRE-FETCH(16)"
	case OpSynchronizeCache16:
		return "SYNCHRONIZE CACHE(16)"
	case OpWriteSame16:
		return "WRITE SAME(16)"
	case OpServiceActionIn16:
		return "SERVICE ACTION IN(16)"
	case OpReportLUNs:
		return "REPORT LUNS"
	case OpMaintenanceIn:
		return "MAINTENANCE IN"
	case OpRead12:
		return "READ(12)"
	case OpWrite12:
		return "WRITE(12)"
	case OpWriteAndVerify12:
		return "WRITE AND VERIFY(12)"
	case OpVerify12:
		return "VERIFY(12)"
	case OpReadDefectData12:
		return "READ DEFECT DATA(12)"
	case OpExtendedCopy:
		return "EXTENDED COPY"
	case OpReceiveCopyResults:
		return "RECEIVE COPY RESULTS"
	case OpWriteAtomic16:
		return "WRITE ATOMIC(16)"
	}
	return fmt.Sprintf("Opcode(0x%02x)", uint8(o))
}

// cdbLength returns the CDB length of the opcode's group (SPC-4 §4.3.4.1),
// or 0 for variable-length and vendor-specific groups.
func (o Opcode) cdbLength() int {
	switch o >> 5 {
	case 0:
		return 6
	case 1, 2:
		return 10
	case 4:
		return 16
	case 5:
		return 12
	}
	return 0
}

// Service actions of SERVICE ACTION IN(16) and MAINTENANCE IN.
const (
	saReadCapacity16 = 0x10
	saGetLBAStatus   = 0x12
	saReportTPG      = 0x0a
	saReportOpcodes  = 0x0c
	saReportTMF      = 0x0d
)

// ALUAState is an asymmetric access state of a target port group
// (SPC-4 §5.11.2.4, Table 114).
type ALUAState uint8

// Asymmetric access states.
const (
	ALUAActiveOptimized    ALUAState = 0x0
	ALUAActiveNonOptimized ALUAState = 0x1
	ALUAStandby            ALUAState = 0x2
	ALUAUnavailable        ALUAState = 0x3
	ALUAOffline            ALUAState = 0xe
	ALUATransitioning      ALUAState = 0xf
)

// String returns the SPC-4 name of the state.
func (s ALUAState) String() string {
	switch s {
	case ALUAActiveOptimized:
		return "active/optimized"
	case ALUAActiveNonOptimized:
		return "active/non-optimized"
	case ALUAStandby:
		return "standby"
	case ALUAUnavailable:
		return "unavailable"
	case ALUAOffline:
		return "offline"
	case ALUATransitioning:
		return "transitioning"
	}
	return fmt.Sprintf("ALUAState(0x%x)", uint8(s))
}

// PortGroup describes one target port group for REPORT TARGET PORT GROUPS.
type PortGroup struct {
	// ID is the target port group identifier (non-zero).
	ID uint16
	// State is the group's asymmetric access state.
	State ALUAState
	// Preferred sets the PREF bit.
	Preferred bool
	// Ports are the relative target port identifiers in the group.
	Ports []uint16
}

// PortState tells the LU the ALUA state of the target port groups (in a
// cluster, one group per node; the owner is active/optimized, the others
// standby). Implementations must be safe for concurrent use and cheap:
// AccessState is called for every command. When a state changes, the
// owner calls LU.PortStateChanged so that initiators get ASYMMETRIC ACCESS
// STATE CHANGED.
type PortState interface {
	// PortGroups returns every target port group of the LU. The LU does
	// not retain or modify the slice.
	PortGroups() []PortGroup
	// AccessState returns the state of the target port group with the
	// given identifier.
	AccessState(group uint16) ALUAState
}
