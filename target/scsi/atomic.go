package scsi

// WRITE ATOMIC(16) (SBC-4 §5.48) and its Block Limits VPD fields
// (SBC-4 §6.6.4).
//
// CDB:
//
//	byte 0      OPERATION CODE (9Ch)
//	byte 1      WRPROTECT (7-5) | DPO (4) | FUA (3) | reserved
//	bytes 2-9   LOGICAL BLOCK ADDRESS
//	bytes 10-11 ATOMIC BOUNDARY
//	bytes 12-13 TRANSFER LENGTH
//	byte 14     reserved | GROUP NUMBER (5-0)
//	byte 15     CONTROL
//
// Atomicity: the blocks are written with one BlockDevice.WriteAt under the
// range lock, so no other write, COMPARE AND WRITE or EXTENDED COPY of an
// overlapping range interleaves with it, and a refused command writes
// nothing. NB: READ does not take the range lock; a reader sees old or new
// contents only as far as the device's WriteAt/ReadAt are atomic.

import (
	"encoding/binary"

	"stave.dev/stave/target/scsi/sense"
)

// Atomic write limits (Block Limits VPD). No alignment or granularity
// restriction applies (both 0); the ATOMIC BOUNDARY field is not
// supported (MAXIMUM ATOMIC BOUNDARY SIZE 0).
const (
	maxAtomicTransferBytes = 1 << 20 // MAXIMUM ATOMIC TRANSFER LENGTH, in bytes
	atomicAlignment        = 0       // ATOMIC ALIGNMENT, blocks
	atomicGranularity      = 0       // ATOMIC TRANSFER LENGTH GRANULARITY, blocks
)

// atomicCommands registers WRITE ATOMIC(16) in t.
func atomicCommands(t *commandTable) {
	u := u16(OpWriteAtomic16, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f)
	t.add(&command{op: OpWriteAtomic16, usage: u, fn: (*cmd).writeAtomic16, timeout: 60})
}

// maxAtomicBlocks is MAXIMUM ATOMIC TRANSFER LENGTH in logical blocks.
func (l *LU) maxAtomicBlocks() uint32 { return maxAtomicTransferBytes >> l.bsShift }

// putAtomicLimits fills the atomic fields of a Block Limits VPD page body
// (p[0] is page byte 4).
func (l *LU) putAtomicLimits(p []byte) {
	binary.BigEndian.PutUint32(p[40:], l.maxAtomicBlocks()) // MAXIMUM ATOMIC TRANSFER LENGTH
	binary.BigEndian.PutUint32(p[44:], atomicAlignment)     // ATOMIC ALIGNMENT
	binary.BigEndian.PutUint32(p[48:], atomicGranularity)   // ATOMIC TRANSFER LENGTH GRANULARITY
	binary.BigEndian.PutUint32(p[52:], 0)                   // MAXIMUM ATOMIC TRANSFER LENGTH WITH ATOMIC BOUNDARY
	binary.BigEndian.PutUint32(p[56:], 0)                   // MAXIMUM ATOMIC BOUNDARY SIZE
}

// WRITE ATOMIC(16) (SBC-4 §5.48).
func (c *cmd) writeAtomic16() error {
	l := c.lu
	cdb := c.cdb
	if cdb[1]>>5 != 0 { // no protection information
		return sense.InvalidCDBField(1, 7)
	}
	lba := binary.BigEndian.Uint64(cdb[2:])
	boundary := binary.BigEndian.Uint16(cdb[10:])
	n := uint64(binary.BigEndian.Uint16(cdb[12:]))
	fua := cdb[1]&0x08 != 0
	if boundary != 0 { // greater than MAXIMUM ATOMIC BOUNDARY SIZE (0)
		return sense.InvalidCDBField(10, -1)
	}
	if n > uint64(l.maxAtomicBlocks()) {
		return sense.InvalidCDBField(12, -1)
	}
	// NB: ATOMIC ALIGNMENT and ATOMIC TRANSFER LENGTH GRANULARITY are 0,
	// so no misalignment or granularity error can arise.
	if l.writeProtected() {
		return errWriteProtected()
	}
	if err := l.checkRange(lba, n); err != nil {
		return err
	}
	if n == 0 { // SBC-4: not an error, nothing written
		return nil
	}
	// All or nothing: a short Data-Out writes nothing.
	data, err := c.dataOut(n << l.bsShift)
	if err != nil {
		return err
	}
	return l.writeRange(c, lba, n, data, l.durable(fua))
}
