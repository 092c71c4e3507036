package scsi

import (
	"context"

	"stave.dev/stave/target/scsi/sense"
)

// BlockDevice is the storage behind one logical unit. Offsets and lengths
// are in bytes and always multiples of the LU's logical block size.
//
// Implementations must be safe for concurrent use. A nil error from WriteAt
// with fua=true, or from Flush, means the data is on stable storage.
// Errors that wrap *sense.Error are reported with that sense; any other
// error becomes MEDIUM ERROR / HARDWARE ERROR as mapped in this package.
type BlockDevice interface {
	// Size is the device capacity in bytes.
	Size() int64
	// ReadAt fills p from offset off. Unmapped ranges read as zeros.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes p at off; with fua the write is durable on return.
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	// Flush makes every completed write durable.
	Flush(ctx context.Context) error
	// Unmap deallocates [off, off+length); the range then reads as zeros.
	Unmap(ctx context.Context, off, length int64) error
}

// ProvisioningStatus is an optional BlockDevice extension used by GET LBA
// STATUS: it reports whether the extent starting at off is mapped and how
// long (in bytes) the run of the same state is, up to limit bytes.
type ProvisioningStatus interface {
	MapStatus(ctx context.Context, off, limit int64) (mapped bool, length int64, err error)
}

// TaskAttr is the SAM-5 task attribute of a command.
type TaskAttr uint8

// Task attributes (SAM-5 §8.6; values as in the iSCSI ATTR field).
const (
	TaskSimple      TaskAttr = 0
	TaskOrdered     TaskAttr = 1
	TaskHeadOfQueue TaskAttr = 2
	TaskACA         TaskAttr = 3
)

// Nexus identifies an I_T nexus: one initiator port talking to one target
// port. It is comparable and used as a map key for unit attentions and
// reservations.
type Nexus struct {
	// InitiatorName is the iSCSI initiator name (IQN/EUI/NAA).
	InitiatorName string
	// InitiatorPort is the SCSI initiator port name, for iSCSI
	// "<initiator name>,i,0x<ISID in 12 hex digits>" (RFC 7143 §4.2.7.1).
	InitiatorPort string
	// TargetPort is the SCSI target port name, for iSCSI
	// "<target name>,t,0x<TPGT in 4 hex digits>".
	TargetPort string
	// RelativeTargetPort is the relative target port identifier (1-based).
	RelativeTargetPort uint16
	// TargetPortGroup is the ALUA target port group of the target port.
	TargetPortGroup uint16
}

// Task is one SCSI command as the transport delivers it.
//
// Buffers: CDB and DataOut are owned by the transport and valid until
// Execute returns. The LU must not retain them.
type Task struct {
	Nexus Nexus
	// LUN is the logical unit number decoded from the 8-byte LUN field
	// (SAM-5 §4.7; single-level peripheral or flat addressing).
	LUN uint64
	// Tag is the task tag (iSCSI Initiator Task Tag), unique per nexus
	// among outstanding tasks.
	Tag  uint64
	Attr TaskAttr
	// CDB is the command descriptor block (6 to 16 bytes, or longer with
	// additional CDB AHS).
	CDB []byte
	// DataOut holds all Data-Out bytes the initiator sent (may be shorter
	// or longer than the CDB implies; the LU decides what that means).
	DataOut []byte
	// ExpectedDataIn is the initiator's Expected Data Transfer Length for
	// the read direction, a hint for sizing Data-In; the transport trims
	// Data-In to it and reports residuals.
	ExpectedDataIn int
}

// Result is the outcome of one task.
type Result struct {
	Status sense.Status
	// Sense is the sense data (fixed or descriptor format) when Status is
	// CHECK CONDITION. Valid until the next Execute on the same Task buffers.
	Sense []byte
	// Data is the Data-In payload (possibly longer than ExpectedDataIn; the
	// transport truncates and reports overflow). When Release is non-nil,
	// Data aliases a pooled buffer that stays valid until Release is called.
	Data []byte
	// Release, when non-nil, returns Data's buffer to the LU's pool. The
	// transport calls it exactly once, after the last byte of Data has been
	// sent (or when it drops the response); Data must not be used after.
	// Forgetting to call it is safe (the buffer is garbage collected).
	Release func()
	// Aborted means a task management function aborted the task and, per
	// SAM-5, no status is to be returned for it (the transport sends no
	// response). When TAS applies, Aborted is false and Status is TASK ABORTED.
	Aborted bool
}

// TMF is a task management function (SAM-5 §7).
type TMF uint8

// Task management functions, valued as the iSCSI Function field (RFC 7143 §11.5.1).
const (
	TMFAbortTask        TMF = 1
	TMFAbortTaskSet     TMF = 2
	TMFClearACA         TMF = 3
	TMFClearTaskSet     TMF = 4
	TMFLogicalUnitReset TMF = 5
	TMFTargetWarmReset  TMF = 6
	TMFTargetColdReset  TMF = 7
	TMFTaskReassign     TMF = 8
	TMFQueryTask        TMF = 9 // not in iSCSI; reserved for other transports
)

// TMFResponse is the outcome of a task management function, valued as the
// iSCSI Response field (RFC 7143 §11.6.1).
type TMFResponse uint8

// Task management responses.
const (
	TMFComplete            TMFResponse = 0
	TMFTaskDoesNotExist    TMFResponse = 1
	TMFLUNDoesNotExist     TMFResponse = 2
	TMFTaskStillAllegiant  TMFResponse = 3
	TMFReassignUnsupported TMFResponse = 4
	TMFNotSupported        TMFResponse = 5
	TMFAuthFailed          TMFResponse = 6
	TMFRejected            TMFResponse = 255
)

// Device is what a transport (iSCSI, later NVMe/TCP) drives: the SCSI
// target device with its logical units. Implemented by *Target.
//
// Execute is called concurrently, one call per task, and blocks until the
// task is complete or aborted. TaskManagement blocks until every task it
// aborts has finished (so the transport may then send the TMF response).
// NexusLost is called when an I_T nexus ends (session closed or
// reinstated) so that its unit attentions and SPC-2 reservations go away
// while persistent reservations stay.
type Device interface {
	Execute(ctx context.Context, t *Task) Result
	TaskManagement(ctx context.Context, n Nexus, fn TMF, lun uint64, tag uint64) TMFResponse
	NexusLost(n Nexus)
}
