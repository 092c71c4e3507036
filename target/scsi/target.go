package scsi

import (
	"context"
	"encoding/binary"
	"log/slog"
	"slices"
	"sync"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/target/scsi/sense"
)

// TargetConfig configures a Target.
type TargetConfig struct {
	// Logger receives state transitions and failures; nil discards.
	Logger *slog.Logger
	// LUNs maps logical unit numbers to logical units.
	LUNs map[uint64]*LU
}

// Target is a SCSI target device: a LUN map in front of logical units. It
// implements Device and is safe for concurrent use.
type Target struct {
	log *slog.Logger
	mu  struct {
		sync.RWMutex
		luns map[uint64]*LU
	}
}

var _ Device = (*Target)(nil)

// NewTarget returns a Target serving cfg.LUNs.
func NewTarget(cfg TargetConfig) *Target {
	t := &Target{log: cfg.Logger}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	t.mu.luns = make(map[uint64]*LU, len(cfg.LUNs))
	for n, lu := range cfg.LUNs {
		if lu != nil {
			t.mu.luns[n] = lu
		}
	}
	return t
}

// AddLUN adds (or replaces) a logical unit and establishes REPORTED LUNS
// DATA HAS CHANGED on the other logical units (SPC-4 §6.33).
func (t *Target) AddLUN(n uint64, lu *LU) {
	t.mu.Lock()
	t.mu.luns[n] = lu
	others := t.lusLocked(n)
	t.mu.Unlock()
	for _, o := range others {
		o.raiseUA(nil, sense.ASCReportedLUNsDataHasChanged)
	}
}

// RemoveLUN removes a logical unit and establishes REPORTED LUNS DATA HAS
// CHANGED on the others.
func (t *Target) RemoveLUN(n uint64) {
	t.mu.Lock()
	delete(t.mu.luns, n)
	others := t.lusLocked(n)
	t.mu.Unlock()
	for _, o := range others {
		o.raiseUA(nil, sense.ASCReportedLUNsDataHasChanged)
	}
}

// lusLocked lists the LUs except LUN skip. REQUIRES: t.mu held.
func (t *Target) lusLocked(skip uint64) []*LU {
	var out []*LU
	for n, lu := range t.mu.luns {
		if n != skip {
			out = append(out, lu)
		}
	}
	return out
}

func (t *Target) lu(n uint64) *LU {
	t.mu.RLock()
	lu := t.mu.luns[n]
	t.mu.RUnlock()
	return lu
}

// lunList returns the LUNs in ascending order.
func (t *Target) lunList() []uint64 {
	t.mu.RLock()
	out := make([]uint64, 0, len(t.mu.luns))
	for n := range t.mu.luns {
		out = append(out, n)
	}
	t.mu.RUnlock()
	slices.Sort(out)
	return out
}

// Execute runs one task (see Device). It never panics on malformed CDBs.
func (t *Target) Execute(ctx context.Context, task *Task) Result {
	if lu := t.lu(task.LUN); lu != nil {
		return lu.execute(ctx, t, task)
	}
	return t.noLU(ctx, task)
}

// noLU answers a task addressed to an absent logical unit (SPC-4 §6.6.2,
// SAM-5 §5.10): INQUIRY reports peripheral qualifier 011b, REPORT LUNS
// and REQUEST SENSE work, the rest gets LOGICAL UNIT NOT SUPPORTED.
func (t *Target) noLU(ctx context.Context, task *Task) Result {
	cdb := task.CDB
	if len(cdb) == 0 {
		return senseResult(ctx, t.log, errInvalidOpcode(), false)
	}
	switch Opcode(cdb[0]) {
	case OpInquiry:
		if len(cdb) >= 6 && cdb[1]&0x03 == 0 && cdb[2] == 0 {
			alloc := uint32(cdb[3])<<8 | uint32(cdb[4])
			return Result{Data: truncate(standardInquiryData(3, 0x1f), alloc)}
		}
	case OpReportLUNs:
		if len(cdb) >= 12 {
			data, err := reportLUNsData(cdb[:12], t.lunList())
			if err != nil {
				return senseResult(ctx, t.log, err, false)
			}
			return Result{Data: data}
		}
	case OpRequestSense:
		if len(cdb) >= 6 {
			e := sense.New(sense.KeyIllegalRequest, sense.ASCLogicalUnitNotSupported)
			return Result{Data: truncate(encodeSense(nil, e, cdb[1]&0x01 != 0), uint32(cdb[4]))}
		}
	}
	return senseResult(ctx, t.log, sense.New(sense.KeyIllegalRequest, sense.ASCLogicalUnitNotSupported), false)
}

// TaskManagement performs a task management function (see Device).
// ABORT TASK answers TMFTaskDoesNotExist when no such task is in the task
// set (the transport decides whether it had completed, RFC 7143 §11.5.1).
func (t *Target) TaskManagement(ctx context.Context, n Nexus, fn TMF, lun uint64, tag uint64) TMFResponse {
	switch fn {
	case TMFTargetWarmReset, TMFTargetColdReset:
		t.mu.RLock()
		lus := t.lusLocked(^uint64(0))
		t.mu.RUnlock()
		t.log.Info("scsi: target reset", slog.String(logkey.Op, fn.String()), slog.String(logkey.Initiator, n.InitiatorName))
		resp := TMFComplete
		for _, lu := range lus {
			if r := lu.taskManagement(ctx, n, fn, tag); r != TMFComplete {
				resp = r
			}
		}
		return resp
	}
	lu := t.lu(lun)
	if lu == nil {
		return TMFLUNDoesNotExist
	}
	return lu.taskManagement(ctx, n, fn, tag)
}

// NexusLost forgets an I_T nexus on every logical unit (see Device).
func (t *Target) NexusLost(n Nexus) {
	t.mu.RLock()
	lus := t.lusLocked(^uint64(0))
	t.mu.RUnlock()
	for _, lu := range lus {
		lu.nexusLost(n)
	}
}

// DataOutLength returns how many Data-Out bytes the CDB transfers to
// logical unit lun, so that the transport can report write residuals
// (RFC 7143 §11.4.5) and stop at the right length. ok is false for a CDB
// without Data-Out, an unknown opcode or an absent LUN. It implements
// target/iscsi's optional DataOutLengther and never panics.
func (t *Target) DataOutLength(lun uint64, cdb []byte) (n int, ok bool) {
	lu := t.lu(lun)
	if lu == nil || len(cdb) == 0 {
		return 0, false
	}
	return lu.dataOutLength(cdb)
}

// dataOutLength implements Target.DataOutLength for one LU.
func (l *LU) dataOutLength(cdb []byte) (int, bool) {
	op := Opcode(cdb[0])
	if n := op.cdbLength(); n == 0 || len(cdb) < n {
		return 0, false
	}
	blocks := func(n uint64) (int, bool) {
		if n > uint64(maxTransferBytes>>l.bsShift) {
			return 0, false
		}
		return int(n << l.bsShift), true
	}
	switch op {
	case OpWrite6:
		n := uint64(cdb[4])
		if n == 0 {
			n = 256
		}
		return blocks(n)
	case OpWrite10, OpWrite12, OpWrite16, OpWriteAndVerify10, OpWriteAndVerify12,
		OpWriteAndVerify16, OpOrWrite16:
		return blocks(decodeRW(cdb[:op.cdbLength()]).n)
	case OpVerify10, OpVerify12, OpVerify16:
		switch (cdb[1] >> 1) & 0x03 {
		case 1:
			return blocks(decodeRW(cdb[:op.cdbLength()]).n)
		case 3:
			return int(l.bs), true
		}
		return 0, true
	case OpCompareAndWrite:
		return blocks(2 * uint64(cdb[13]))
	case OpWriteSame10:
		return int(l.bs), true
	case OpWriteSame16:
		if cdb[1]&0x01 != 0 { // NDOB
			return 0, true
		}
		return int(l.bs), true
	case OpUnmap:
		return int(binary.BigEndian.Uint16(cdb[7:])), true
	case OpModeSelect6:
		return int(cdb[4]), true
	case OpModeSelect10:
		return int(binary.BigEndian.Uint16(cdb[7:])), true
	case OpPersistentReserveOut:
		n := binary.BigEndian.Uint32(cdb[5:])
		if n > maxTransferBytes {
			return 0, false
		}
		return int(n), true
	}
	return 0, false
}
