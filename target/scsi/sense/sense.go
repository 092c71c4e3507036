// Package sense is the shared vocabulary of SCSI status, sense keys and
// additional sense codes (SPC-4 §4.5), and the error type that carries them.
//
// Handlers anywhere under target/scsi return a *sense.Error (or wrap one)
// to end a task with CHECK CONDITION; exactly one function in package scsi
// turns errors into status + sense bytes (fixed or descriptor format).
//
// ASC values are ASC<<8 | ASCQ:
//
//	+--------+--------+
//	|  ASC   |  ASCQ  |   uint16, e.g. 0x2100 LOGICAL BLOCK ADDRESS OUT OF RANGE
//	+--------+--------+
package sense

import "fmt"

// Status is a SCSI status byte (SAM-5 §5.3.1).
type Status uint8

// SCSI status codes.
const (
	StatusGood                Status = 0x00
	StatusCheckCondition      Status = 0x02
	StatusConditionMet        Status = 0x04
	StatusBusy                Status = 0x08
	StatusReservationConflict Status = 0x18
	StatusTaskSetFull         Status = 0x28
	StatusACAActive           Status = 0x30
	StatusTaskAborted         Status = 0x40
)

// String returns the SAM name of the status.
func (s Status) String() string {
	switch s {
	case StatusGood:
		return "GOOD"
	case StatusCheckCondition:
		return "CHECK CONDITION"
	case StatusConditionMet:
		return "CONDITION MET"
	case StatusBusy:
		return "BUSY"
	case StatusReservationConflict:
		return "RESERVATION CONFLICT"
	case StatusTaskSetFull:
		return "TASK SET FULL"
	case StatusACAActive:
		return "ACA ACTIVE"
	case StatusTaskAborted:
		return "TASK ABORTED"
	}
	return fmt.Sprintf("Status(0x%02x)", uint8(s))
}

// Key is a sense key (SPC-4 Table 49).
type Key uint8

// Sense keys.
const (
	KeyNoSense        Key = 0x0
	KeyRecoveredError Key = 0x1
	KeyNotReady       Key = 0x2
	KeyMediumError    Key = 0x3
	KeyHardwareError  Key = 0x4
	KeyIllegalRequest Key = 0x5
	KeyUnitAttention  Key = 0x6
	KeyDataProtect    Key = 0x7
	KeyBlankCheck     Key = 0x8
	KeyVendorSpecific Key = 0x9
	KeyCopyAborted    Key = 0xa
	KeyAbortedCommand Key = 0xb
	KeyVolumeOverflow Key = 0xd
	KeyMiscompare     Key = 0xe
	KeyCompleted      Key = 0xf
)

var keyNames = [...]string{
	"NO SENSE", "RECOVERED ERROR", "NOT READY", "MEDIUM ERROR", "HARDWARE ERROR",
	"ILLEGAL REQUEST", "UNIT ATTENTION", "DATA PROTECT", "BLANK CHECK", "VENDOR SPECIFIC",
	"COPY ABORTED", "ABORTED COMMAND", "RESERVED", "VOLUME OVERFLOW", "MISCOMPARE", "COMPLETED",
}

// String returns the SPC name of the sense key.
func (k Key) String() string {
	if int(k) < len(keyNames) {
		return keyNames[k]
	}
	return fmt.Sprintf("Key(0x%x)", uint8(k))
}

// ASC is an additional sense code and qualifier, ASC<<8 | ASCQ (SPC-4 Table 50).
type ASC uint16

// Additional sense codes used by Stave. Names follow SPC-4 Annex F.
const (
	ASCNoAdditionalSense                      ASC = 0x0000
	ASCLogicalUnitNotReadyManualIntervention  ASC = 0x0403
	ASCLogicalUnitNotAccessibleStandby        ASC = 0x040b
	ASCLogicalUnitNotAccessibleUnavailable    ASC = 0x040c
	ASCLogicalUnitNotAccessibleTransition     ASC = 0x040a
	ASCLogicalUnitCommunicationFailure        ASC = 0x0800
	ASCWriteError                             ASC = 0x0c00
	ASCUnrecoveredReadError                   ASC = 0x1100
	ASCMiscompareDuringVerify                 ASC = 0x1d00
	ASCParameterListLengthError               ASC = 0x1a00
	ASCInvalidCommandOperationCode            ASC = 0x2000
	ASCLBAOutOfRange                          ASC = 0x2100
	ASCInvalidFieldInCDB                      ASC = 0x2400
	ASCLogicalUnitNotSupported                ASC = 0x2500
	ASCInvalidFieldInParameterList            ASC = 0x2600
	ASCInvalidReleaseOfPersistentReservation  ASC = 0x2604
	ASCWriteProtected                         ASC = 0x2700
	ASCSpaceAllocationFailedWriteProtect      ASC = 0x2707
	ASCPowerOnResetOrBusDeviceReset           ASC = 0x2900
	ASCPowerOnOccurred                        ASC = 0x2901
	ASCBusResetOccurred                       ASC = 0x2902
	ASCBusDeviceResetFunctionOccurred         ASC = 0x2903
	ASCITNexusLossOccurred                    ASC = 0x2907
	ASCParametersChanged                      ASC = 0x2a00
	ASCModeParametersChanged                  ASC = 0x2a01
	ASCReservationsPreempted                  ASC = 0x2a03
	ASCReservationsReleased                   ASC = 0x2a04
	ASCRegistrationsPreempted                 ASC = 0x2a05
	ASCAsymmetricAccessStateChanged           ASC = 0x2a06
	ASCCapacityDataHasChanged                 ASC = 0x2a09
	ASCCommandsClearedByAnotherInitiator      ASC = 0x2f00
	ASCCommandsClearedByPowerLossNotification ASC = 0x2f02
	ASCSavingParametersNotSupported           ASC = 0x3900
	ASCMediumNotPresent                       ASC = 0x3a00
	ASCReportedLUNsDataHasChanged             ASC = 0x3f0e
	ASCInternalTargetFailure                  ASC = 0x4400
	ASCInvalidMessageError                    ASC = 0x4900
	ASCOverlappedCommandsAttempted            ASC = 0x4e00
	ASCInsufficientRegistrationResources      ASC = 0x5504
	ASCInsufficientResources                  ASC = 0x5503
	ASCMediumRemovalPrevented                 ASC = 0x5302
	ASCMiscompareDuringVerifyOperation        ASC = 0x1d00
	ASCLogicalUnitNotReadyCauseNotReportable  ASC = 0x0400
	ASCLogicalUnitNotReadyInitCmdRequired     ASC = 0x0402
	ASCInvalidFieldInCommandInformationUnit   ASC = 0x0e03
	ASCDefectListNotFound                     ASC = 0x1c00
	ASCParameterNotSupported                  ASC = 0x2601
	ASCParameterValueInvalid                  ASC = 0x2602
	ASCCommandSequenceError                   ASC = 0x2c00
	ASCCommandsClearedByDeviceServer          ASC = 0x2f01
)

// Code returns the ASC byte.
func (a ASC) Code() uint8 { return uint8(a >> 8) }

// Qualifier returns the ASCQ byte.
func (a ASC) Qualifier() uint8 { return uint8(a) }

// String returns the ASC/ASCQ in hex; names are looked up by callers that need them.
func (a ASC) String() string { return fmt.Sprintf("ASC 0x%02x/0x%02x", a.Code(), a.Qualifier()) }

// FieldPointer is the sense-key-specific field pointer (SPC-4 §4.5.2.4.2)
// that tells which byte (and bit) of the CDB or parameter list was wrong.
type FieldPointer struct {
	// CDB is true when Byte indexes the CDB, false for the parameter list.
	CDB bool
	// Byte is the index of the first byte of the offending field.
	Byte uint16
	// Bit is the bit number of the field's most significant bit, or -1
	// when the whole byte is meant (BPV=0).
	Bit int8
}

// Error ends one task with CHECK CONDITION (or another status) and sense.
// It never ends a connection: protocol errors live in target/iscsi.
type Error struct {
	Status Status // StatusCheckCondition when zero-valued Key is set; see Status().
	Key    Key
	ASC    ASC
	// Field, when non-nil, is reported as the sense-key-specific field pointer.
	Field *FieldPointer
	// Information, when HasInfo, goes in the INFORMATION field (e.g. the
	// offset of the first miscompare, or the LBA of a medium error).
	Information uint64
	HasInfo     bool
	// Cause is an optional underlying error, for logs only.
	Cause error
}

// Error implements error.
func (e *Error) Error() string {
	s := fmt.Sprintf("scsi: %s, %s", e.Key, e.ASC)
	if e.Cause != nil {
		s += ": " + e.Cause.Error()
	}
	return s
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Cause }

// New returns a CHECK CONDITION error with the given key and ASC.
func New(k Key, a ASC) *Error { return &Error{Status: StatusCheckCondition, Key: k, ASC: a} }

// InvalidCDBField is ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at
// byte b, bit bit (-1 for the whole byte).
func InvalidCDBField(b int, bit int) *Error {
	return &Error{Status: StatusCheckCondition, Key: KeyIllegalRequest, ASC: ASCInvalidFieldInCDB,
		Field: &FieldPointer{CDB: true, Byte: uint16(b), Bit: int8(bit)}}
}

// InvalidParamField is ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST
// pointing at byte b, bit bit (-1 for the whole byte) of the parameter list.
func InvalidParamField(b int, bit int) *Error {
	return &Error{Status: StatusCheckCondition, Key: KeyIllegalRequest, ASC: ASCInvalidFieldInParameterList,
		Field: &FieldPointer{CDB: false, Byte: uint16(b), Bit: int8(bit)}}
}

// ReservationConflict returns an error that ends the task with RESERVATION CONFLICT.
func ReservationConflict() *Error { return &Error{Status: StatusReservationConflict} }
