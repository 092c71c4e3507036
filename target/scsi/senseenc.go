package scsi

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/target/scsi/sense"
)

// errAborted marks a task that task management aborted.
var errAborted = errors.New("scsi: task aborted")

// ioOp says which kind of device access failed, for the error mapping.
type ioOp uint8

const (
	ioRead ioOp = iota
	ioWrite
	ioFlush
	ioUnmap
)

// String names the access.
func (o ioOp) String() string {
	switch o {
	case ioRead:
		return "read"
	case ioWrite:
		return "write"
	case ioFlush:
		return "flush"
	case ioUnmap:
		return "unmap"
	}
	return "io"
}

// ioError is a BlockDevice error annotated with the failed access and the
// first LBA concerned.
type ioError struct {
	op  ioOp
	lba uint64
	err error
}

func (e *ioError) Error() string { return "scsi: device " + e.op.String() + ": " + e.err.Error() }
func (e *ioError) Unwrap() error { return e.err }

// devErr wraps a BlockDevice error; nil stays nil.
func devErr(op ioOp, lba uint64, err error) error {
	if err == nil {
		return nil
	}
	return &ioError{op: op, lba: lba, err: err}
}

// senseResult is the one place where errors become SCSI status and sense
// (STYLE §15). A *sense.Error anywhere in the chain gives its status, key,
// ASC, field pointer and information; cancellation and errAborted give an
// aborted task; a device error gives MEDIUM ERROR; anything else gives
// HARDWARE ERROR / INTERNAL TARGET FAILURE and an Error log line.
func senseResult(ctx context.Context, log *slog.Logger, err error, desc bool) Result {
	var se *sense.Error
	if errors.As(err, &se) {
		st := se.Status
		if st == sense.StatusGood {
			st = sense.StatusCheckCondition
		}
		if st != sense.StatusCheckCondition {
			return Result{Status: st}
		}
		return Result{Status: st, Sense: encodeSense(nil, se, desc)}
	}
	if errors.Is(err, errAborted) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return Result{Aborted: true}
	}
	var ie *ioError
	e := &sense.Error{Status: sense.StatusCheckCondition, Key: sense.KeyHardwareError, ASC: sense.ASCInternalTargetFailure}
	if errors.As(err, &ie) {
		switch ie.op {
		case ioRead:
			e = &sense.Error{Status: sense.StatusCheckCondition, Key: sense.KeyMediumError, ASC: sense.ASCUnrecoveredReadError, Information: ie.lba, HasInfo: true}
		case ioWrite, ioUnmap:
			e = &sense.Error{Status: sense.StatusCheckCondition, Key: sense.KeyMediumError, ASC: sense.ASCWriteError, Information: ie.lba, HasInfo: true}
		}
	}
	if log != nil {
		log.LogAttrs(ctx, slog.LevelError, "scsi: command failed", slog.String(logkey.Err, err.Error()),
			slog.String(logkey.Status, e.Key.String()+", "+e.ASC.String()))
	}
	return Result{Status: sense.StatusCheckCondition, Sense: encodeSense(nil, e, desc)}
}

// Sense data lengths.
const (
	fixedSenseLen = 18
	descHeaderLen = 8
)

// encodeSense appends e as fixed (0x70) or descriptor (0x72) sense data
// (SPC-4 §4.5.2, §4.5.3) to b.
func encodeSense(b []byte, e *sense.Error, desc bool) []byte {
	var sks [3]byte
	hasSKS := false
	if e.Field != nil {
		hasSKS = true
		sks[0] = 0x80 // SKSV
		if e.Field.CDB {
			sks[0] |= 0x40 // C/D
		}
		if e.Field.Bit >= 0 && e.Field.Bit <= 7 {
			sks[0] |= 0x08 | byte(e.Field.Bit) // BPV, BIT POINTER
		}
		binary.BigEndian.PutUint16(sks[1:], e.Field.Byte)
	}
	if !desc {
		s := make([]byte, fixedSenseLen)
		s[0] = 0x70
		s[2] = byte(e.Key) & 0x0f
		if e.HasInfo {
			if e.Information <= 0xffffffff {
				s[0] |= 0x80 // VALID
				binary.BigEndian.PutUint32(s[3:], uint32(e.Information))
			}
		}
		s[7] = fixedSenseLen - 8
		s[12] = e.ASC.Code()
		s[13] = e.ASC.Qualifier()
		if hasSKS {
			copy(s[15:], sks[:])
		}
		return append(b, s...)
	}
	n := descHeaderLen
	if e.HasInfo {
		n += 12
	}
	if hasSKS {
		n += 8
	}
	s := make([]byte, n)
	s[0] = 0x72
	s[1] = byte(e.Key) & 0x0f
	s[2] = e.ASC.Code()
	s[3] = e.ASC.Qualifier()
	s[7] = byte(n - descHeaderLen)
	p := descHeaderLen
	if e.HasInfo {
		s[p] = 0x00   // information descriptor
		s[p+1] = 0x0a // additional length
		s[p+2] = 0x80 // VALID
		binary.BigEndian.PutUint64(s[p+4:], e.Information)
		p += 12
	}
	if hasSKS {
		s[p] = 0x02 // sense key specific descriptor
		s[p+1] = 0x06
		copy(s[p+4:], sks[:])
	}
	return append(b, s...)
}

// Shorthands for the errors handlers return most.

func errLBAOutOfRange() error {
	return sense.New(sense.KeyIllegalRequest, sense.ASCLBAOutOfRange)
}

func errInvalidOpcode() error {
	return sense.New(sense.KeyIllegalRequest, sense.ASCInvalidCommandOperationCode)
}

func errParamListLength() error {
	return sense.New(sense.KeyIllegalRequest, sense.ASCParameterListLengthError)
}

func errWriteProtected() error {
	return sense.New(sense.KeyDataProtect, sense.ASCWriteProtected)
}

func errDataOutLength() error {
	return sense.New(sense.KeyIllegalRequest, sense.ASCInvalidFieldInCommandInformationUnit)
}

func errMiscompare(offset uint64) error {
	return &sense.Error{Status: sense.StatusCheckCondition, Key: sense.KeyMiscompare,
		ASC: sense.ASCMiscompareDuringVerify, Information: offset, HasInfo: true}
}
