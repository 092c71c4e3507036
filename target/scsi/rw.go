package scsi

import (
	"bytes"
	"encoding/binary"

	"stave.dev/stave/target/scsi/sense"
)

// rwArgs are the decoded fields shared by the READ/WRITE/VERIFY family.
type rwArgs struct {
	lba    uint64
	n      uint64 // transfer length in logical blocks
	lenOff int    // CDB byte of the TRANSFER LENGTH field, for field pointers
	prot   byte   // RDPROTECT/WRPROTECT/VRPROTECT/ORPROTECT
	dpo    bool
	fua    bool
}

// decodeRW reads LBA and TRANSFER LENGTH by CDB size (SBC-3 §5).
func decodeRW(cdb []byte) rwArgs {
	var a rwArgs
	switch len(cdb) {
	case 6:
		a.lba = uint64(cdb[1]&0x1f)<<16 | uint64(binary.BigEndian.Uint16(cdb[2:]))
		a.n = uint64(cdb[4])
		a.lenOff = 4
		return a
	case 10:
		a.lba = uint64(binary.BigEndian.Uint32(cdb[2:]))
		a.n = uint64(binary.BigEndian.Uint16(cdb[7:]))
		a.lenOff = 7
	case 12:
		a.lba = uint64(binary.BigEndian.Uint32(cdb[2:]))
		a.n = uint64(binary.BigEndian.Uint32(cdb[6:]))
		a.lenOff = 6
	case 16:
		a.lba = binary.BigEndian.Uint64(cdb[2:])
		a.n = uint64(binary.BigEndian.Uint32(cdb[10:]))
		a.lenOff = 10
	}
	a.prot = cdb[1] >> 5
	a.dpo = cdb[1]&0x10 != 0
	a.fua = cdb[1]&0x08 != 0
	return a
}

// checkRange fails with LBA OUT OF RANGE unless [lba, lba+n) lies within
// the LU (SBC-3 §4.5). It never overflows.
func (l *LU) checkRange(lba, n uint64) error {
	nb := l.numBlocks.Load()
	if lba > nb || n > nb-lba {
		return errLBAOutOfRange()
	}
	return nil
}

// checkTransfer enforces MAXIMUM TRANSFER LENGTH (SBC-3 §6.5.3).
func (l *LU) checkTransfer(a rwArgs) error {
	if a.n > uint64(maxTransferBytes>>l.bsShift) {
		return sense.InvalidCDBField(a.lenOff, -1)
	}
	return nil
}

// READ(6/10/12/16) (SBC-3 §5.8-5.11).
func (c *cmd) read() error {
	l := c.lu
	a := decodeRW(c.cdb)
	if len(c.cdb) == 6 && a.n == 0 {
		a.n = 256 // SBC-3 §5.8: zero means 256 blocks
	}
	if a.prot != 0 {
		return sense.InvalidCDBField(1, 7)
	}
	if err := l.checkRange(a.lba, a.n); err != nil {
		return err
	}
	if err := l.checkTransfer(a); err != nil {
		return err
	}
	if a.n == 0 {
		return nil
	}
	size := int(a.n << l.bsShift)
	buf, release := l.bufs.get(size)
	if err := l.dev.ReadAt(c.ctx, buf, int64(a.lba<<l.bsShift)); err != nil {
		if release != nil {
			release()
		}
		return devErr(ioRead, a.lba, err)
	}
	c.res.Data, c.res.Release = buf, release
	return nil
}

// dataOut returns the first n bytes of Data-Out, or INVALID FIELD IN
// COMMAND INFORMATION UNIT when the initiator sent fewer.
func (c *cmd) dataOut(n uint64) ([]byte, error) {
	if uint64(len(c.t.DataOut)) < n {
		return nil, errDataOutLength()
	}
	return c.t.DataOut[:n], nil
}

// writeData returns the Data-Out for a write of n blocks and how many
// blocks it touches. When the initiator's Expected Data Transfer Length
// is shorter than the CDB asks (FCP-4 §9.4.2, SAM-5 §5.4.3; libiscsi's
// residual tests expect this) only the bytes that arrived are written and
// the rest of the range is left alone: partial reports that the last
// touched block is incomplete and must be merged with its old contents.
// The transport reports the residual.
func (c *cmd) writeData(n uint64) (data []byte, blocks uint64, partial bool) {
	l := c.lu
	want := n << l.bsShift
	have := uint64(len(c.t.DataOut))
	if have >= want {
		return c.t.DataOut[:want], n, false
	}
	blocks = (have + uint64(l.bs) - 1) >> l.bsShift
	return c.t.DataOut, blocks, have&(uint64(l.bs)-1) != 0
}

// writeMerged writes data, which ends inside the last of n blocks at lba,
// over the old contents of that block, atomically under the range lock.
func (l *LU) writeMerged(c *cmd, lba, n uint64, data []byte, fua bool) error {
	id, err := l.locks.lock(c.ctx, lba, lba+n)
	if err != nil {
		return err
	}
	defer l.locks.unlock(id)
	size := int(n << l.bsShift)
	buf, release := l.bufs.get(size)
	if release != nil {
		defer release()
	}
	last := lba + n - 1
	tail := buf[size-int(l.bs):]
	if err := l.dev.ReadAt(c.ctx, tail, int64(last<<l.bsShift)); err != nil {
		return devErr(ioRead, last, err)
	}
	copy(buf, data)
	return devErr(ioWrite, lba, l.dev.WriteAt(c.ctx, buf, int64(lba<<l.bsShift), fua))
}

// writeBlocks writes what writeData returned.
func (l *LU) writeBlocks(c *cmd, lba, n uint64, data []byte, partial, fua bool) error {
	if n == 0 {
		return nil
	}
	if partial {
		return l.writeMerged(c, lba, n, data, fua)
	}
	return l.writeRange(c, lba, n, data, fua)
}

// durable reports whether a write must reach stable storage before it
// completes: FUA, or the write cache disabled (WCE=0).
func (l *LU) durable(fua bool) bool { return fua || l.flags.Load()&modeWCE == 0 }

// WRITE(6/10/12/16) (SBC-3 §5.32-5.35).
func (c *cmd) write() error {
	l := c.lu
	a := decodeRW(c.cdb)
	if len(c.cdb) == 6 && a.n == 0 {
		a.n = 256
	}
	if a.prot != 0 {
		return sense.InvalidCDBField(1, 7)
	}
	if l.writeProtected() {
		return errWriteProtected()
	}
	if err := l.checkRange(a.lba, a.n); err != nil {
		return err
	}
	if err := l.checkTransfer(a); err != nil {
		return err
	}
	data, n, partial := c.writeData(a.n)
	return l.writeBlocks(c, a.lba, n, data, partial, l.durable(a.fua))
}

// writeRange writes data at lba, taking the range lock.
func (l *LU) writeRange(c *cmd, lba, n uint64, data []byte, fua bool) error {
	id, err := l.locks.lock(c.ctx, lba, lba+n)
	if err != nil {
		return err
	}
	defer l.locks.unlock(id)
	return devErr(ioWrite, lba, l.dev.WriteAt(c.ctx, data, int64(lba<<l.bsShift), fua))
}

// WRITE AND VERIFY(10/12/16) (SBC-3 §5.36-5.38). The write is made
// durable, which is the verification a virtual medium can offer.
func (c *cmd) writeAndVerify() error {
	l := c.lu
	a := decodeRW(c.cdb)
	if a.prot != 0 {
		return sense.InvalidCDBField(1, 7)
	}
	if c.cdb[1]&0x04 != 0 { // BYTCHK bit 2 is reserved in SBC-3
		return sense.InvalidCDBField(1, 2)
	}
	if l.writeProtected() {
		return errWriteProtected()
	}
	if err := l.checkRange(a.lba, a.n); err != nil {
		return err
	}
	if err := l.checkTransfer(a); err != nil {
		return err
	}
	data, n, partial := c.writeData(a.n)
	return l.writeBlocks(c, a.lba, n, data, partial, true)
}

// VERIFY(10/12/16) (SBC-3 §5.29-5.31). BYTCHK 00b checks the range only,
// 01b compares n blocks of Data-Out, 11b compares one block of Data-Out
// against each block.
func (c *cmd) verify() error {
	l := c.lu
	a := decodeRW(c.cdb)
	if a.prot != 0 {
		return sense.InvalidCDBField(1, 7)
	}
	bytchk := (c.cdb[1] >> 1) & 0x03
	if bytchk == 2 {
		return sense.InvalidCDBField(1, 2)
	}
	if err := l.checkRange(a.lba, a.n); err != nil {
		return err
	}
	if err := l.checkTransfer(a); err != nil {
		return err
	}
	if a.n == 0 || bytchk == 0 {
		return nil
	}
	want := a.n << l.bsShift
	if bytchk == 3 {
		want = uint64(l.bs)
	}
	data, err := c.dataOut(want)
	if err != nil {
		return err
	}
	size := int(a.n << l.bsShift)
	buf, release := l.bufs.get(size)
	if release != nil {
		defer release()
	}
	if err := l.dev.ReadAt(c.ctx, buf, int64(a.lba<<l.bsShift)); err != nil {
		return devErr(ioRead, a.lba, err)
	}
	if bytchk == 1 {
		if off, ok := firstDiff(buf, data); !ok {
			return errMiscompare(off)
		}
		return nil
	}
	for i := 0; i < size; i += int(l.bs) {
		if off, ok := firstDiff(buf[i:i+int(l.bs)], data); !ok {
			return errMiscompare(uint64(i) + off)
		}
	}
	return nil
}

// firstDiff returns the offset of the first byte where a and b differ,
// and ok=true when they are equal.
func firstDiff(a, b []byte) (uint64, bool) {
	if bytes.Equal(a, b) {
		return 0, true
	}
	for i := range a {
		if i >= len(b) || a[i] != b[i] {
			return uint64(i), false
		}
	}
	return uint64(len(a)), false
}

// ORWRITE(16) (SBC-3 §5.13): the new block contents are old OR data.
func (c *cmd) orWrite() error {
	l := c.lu
	a := decodeRW(c.cdb)
	if a.prot != 0 {
		return sense.InvalidCDBField(1, 7)
	}
	if l.writeProtected() {
		return errWriteProtected()
	}
	if err := l.checkRange(a.lba, a.n); err != nil {
		return err
	}
	if err := l.checkTransfer(a); err != nil {
		return err
	}
	data, n, _ := c.writeData(a.n) // a partial block ORs with nothing
	if n == 0 {
		return nil
	}
	a.n = n
	id, err := l.locks.lock(c.ctx, a.lba, a.lba+a.n)
	if err != nil {
		return err
	}
	defer l.locks.unlock(id)
	buf, release := l.bufs.get(int(a.n << l.bsShift))
	if release != nil {
		defer release()
	}
	off := int64(a.lba << l.bsShift)
	if err := l.dev.ReadAt(c.ctx, buf, off); err != nil {
		return devErr(ioRead, a.lba, err)
	}
	for i := range data {
		buf[i] |= data[i]
	}
	return devErr(ioWrite, a.lba, l.dev.WriteAt(c.ctx, buf, off, l.durable(a.fua)))
}

// COMPARE AND WRITE (SBC-3 §5.2): atomic against every other write
// through the range lock. A miscompare reports the offset of the first
// differing byte in INFORMATION.
func (c *cmd) compareAndWrite() error {
	l := c.lu
	cdb := c.cdb
	if cdb[1]>>5 != 0 {
		return sense.InvalidCDBField(1, 7)
	}
	lba := binary.BigEndian.Uint64(cdb[2:])
	n := uint64(cdb[13])
	fua := cdb[1]&0x08 != 0
	if n > maxCompareAndWrite || n<<l.bsShift > maxTransferBytes {
		return sense.InvalidCDBField(13, -1)
	}
	if l.writeProtected() {
		return errWriteProtected()
	}
	if err := l.checkRange(lba, n); err != nil {
		return err
	}
	size := n << l.bsShift
	if uint64(len(c.t.DataOut)) != 2*size {
		// The NUMBER OF LOGICAL BLOCKS disagrees with what was sent (also
		// a count of 256 wrapped to 0 by the initiator).
		return sense.InvalidCDBField(13, -1)
	}
	if n == 0 {
		return nil
	}
	verify, data := c.t.DataOut[:size], c.t.DataOut[size:2*size]
	id, err := l.locks.lock(c.ctx, lba, lba+n)
	if err != nil {
		return err
	}
	defer l.locks.unlock(id)
	buf, release := l.bufs.get(int(size))
	if release != nil {
		defer release()
	}
	off := int64(lba << l.bsShift)
	if err := l.dev.ReadAt(c.ctx, buf, off); err != nil {
		return devErr(ioRead, lba, err)
	}
	if d, ok := firstDiff(buf, verify); !ok {
		return errMiscompare(d)
	}
	return devErr(ioWrite, lba, l.dev.WriteAt(c.ctx, data, off, l.durable(fua)))
}

// PRE-FETCH(10/16) (SBC-3 §5.6-5.7). The device has no cache to fill;
// CONDITION MET says the blocks "fit".
func (c *cmd) preFetch() error {
	l := c.lu
	var lba, n uint64
	if len(c.cdb) == 10 {
		lba = uint64(binary.BigEndian.Uint32(c.cdb[2:]))
		n = uint64(binary.BigEndian.Uint16(c.cdb[7:]))
	} else {
		lba = binary.BigEndian.Uint64(c.cdb[2:])
		n = uint64(binary.BigEndian.Uint32(c.cdb[10:]))
	}
	if err := l.checkRange(lba, n); err != nil {
		return err
	}
	if n > 0 && n<<l.bsShift <= prefetchConditionMet {
		c.res.Status = sense.StatusConditionMet
	}
	return nil
}

// SYNCHRONIZE CACHE(10/16) (SBC-3 §5.22-5.23).
func (c *cmd) synchronizeCache() error {
	l := c.lu
	var lba, n uint64
	if len(c.cdb) == 10 {
		lba = uint64(binary.BigEndian.Uint32(c.cdb[2:]))
		n = uint64(binary.BigEndian.Uint16(c.cdb[7:]))
	} else {
		lba = binary.BigEndian.Uint64(c.cdb[2:])
		n = uint64(binary.BigEndian.Uint32(c.cdb[10:]))
	}
	if err := l.checkRange(lba, n); err != nil {
		return err
	}
	return devErr(ioFlush, lba, l.dev.Flush(c.ctx))
}

// WRITE SAME(10/16) (SBC-3 §5.42-5.43).
func (c *cmd) writeSame() error {
	l := c.lu
	cdb := c.cdb
	if cdb[1]>>5 != 0 {
		return sense.InvalidCDBField(1, 7)
	}
	anchor := cdb[1]&0x10 != 0
	unmap := cdb[1]&0x08 != 0
	ndob := len(cdb) == 16 && cdb[1]&0x01 != 0
	var lba, n uint64
	lenOff := 7
	if len(cdb) == 10 {
		lba = uint64(binary.BigEndian.Uint32(cdb[2:]))
		n = uint64(binary.BigEndian.Uint16(cdb[7:]))
	} else {
		lba = binary.BigEndian.Uint64(cdb[2:])
		n = uint64(binary.BigEndian.Uint32(cdb[10:]))
		lenOff = 10
	}
	if anchor { // ANC_SUP=0
		return sense.InvalidCDBField(1, 4)
	}
	if l.writeProtected() {
		return errWriteProtected()
	}
	nb := l.numBlocks.Load()
	if lba > nb {
		return errLBAOutOfRange()
	}
	if n == 0 { // WSNZ=0: to the end of the medium
		n = nb - lba
	}
	if n > maxWriteSameBlocks {
		return sense.InvalidCDBField(lenOff, -1)
	}
	if err := l.checkRange(lba, n); err != nil {
		return err
	}
	var pattern []byte
	if !ndob {
		if uint64(len(c.t.DataOut)) != uint64(l.bs) {
			return errDataOutLength()
		}
		pattern = c.t.DataOut
	}
	if n == 0 {
		return nil
	}
	zero := pattern == nil || isZero(pattern)
	id, err := l.locks.lock(c.ctx, lba, lba+n)
	if err != nil {
		return err
	}
	defer l.locks.unlock(id)
	if unmap {
		// Like LIO and tgt, UNMAP=1 deallocates whatever the Data-Out
		// holds (SBC-3 §5.42: the data is only for a device server that
		// cannot unmap); libiscsi expects zeros back (LBPRZ=1).
		return devErr(ioUnmap, lba, l.dev.Unmap(c.ctx, int64(lba<<l.bsShift), int64(n<<l.bsShift)))
	}
	chunk := n << l.bsShift
	if chunk > optTransferBytes*4 {
		chunk = optTransferBytes * 4
	}
	buf, release := l.bufs.get(int(chunk))
	if release != nil {
		defer release()
	}
	if zero {
		clear(buf)
	} else {
		for i := 0; i < len(buf); i += int(l.bs) {
			copy(buf[i:], pattern)
		}
	}
	fua := l.durable(false)
	for done := uint64(0); done < n; {
		k := min(n-done, chunk>>l.bsShift)
		at := lba + done
		if err := l.dev.WriteAt(c.ctx, buf[:k<<l.bsShift], int64(at<<l.bsShift), fua); err != nil {
			return devErr(ioWrite, at, err)
		}
		done += k
	}
	return nil
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// UNMAP (SBC-3 §5.28). Every descriptor is checked before any is
// applied.
func (c *cmd) unmap() error {
	l := c.lu
	cdb := c.cdb
	if cdb[1]&0x01 != 0 { // ANCHOR; ANC_SUP=0
		return sense.InvalidCDBField(1, 0)
	}
	plen := int(binary.BigEndian.Uint16(cdb[7:]))
	if l.writeProtected() {
		return errWriteProtected()
	}
	if plen == 0 {
		return nil
	}
	if plen < 8 {
		return errParamListLength()
	}
	p := c.t.DataOut
	if len(p) < plen {
		return errParamListLength()
	}
	p = p[:plen]
	// Like LIO, a BLOCK DESCRIPTOR DATA LENGTH beyond the parameter list
	// is cut to what was sent.
	bdLen := min(int(binary.BigEndian.Uint16(p[2:])), plen-8)
	nd := bdLen / 16
	if nd > maxUnmapDescriptors {
		return sense.InvalidParamField(2, -1)
	}
	var total uint64
	for i := 0; i < nd; i++ {
		d := p[8+16*i:]
		lba := binary.BigEndian.Uint64(d)
		n := uint64(binary.BigEndian.Uint32(d[8:]))
		if err := l.checkRange(lba, n); err != nil {
			return err
		}
		total += n
		if total > maxUnmapBlocks {
			return sense.InvalidParamField(8+16*i+8, -1)
		}
	}
	for i := 0; i < nd; i++ {
		d := p[8+16*i:]
		lba := binary.BigEndian.Uint64(d)
		n := uint64(binary.BigEndian.Uint32(d[8:]))
		if n == 0 {
			continue
		}
		if err := l.unmapRange(c, lba, n); err != nil {
			return err
		}
	}
	return nil
}

// unmapRange deallocates n blocks at lba, taking the range lock.
func (l *LU) unmapRange(c *cmd, lba, n uint64) error {
	id, err := l.locks.lock(c.ctx, lba, lba+n)
	if err != nil {
		return err
	}
	defer l.locks.unlock(id)
	return devErr(ioUnmap, lba, l.dev.Unmap(c.ctx, int64(lba<<l.bsShift), int64(n<<l.bsShift)))
}

// GET LBA STATUS (SBC-3 §5.4).
func (c *cmd) getLBAStatus() error {
	l := c.lu
	lba := binary.BigEndian.Uint64(c.cdb[2:])
	alloc := binary.BigEndian.Uint32(c.cdb[10:])
	nb := l.numBlocks.Load()
	if lba >= nb {
		return errLBAOutOfRange()
	}
	maxDesc := 1
	if alloc > 24 {
		maxDesc = min(int((alloc-8)/16), 64)
	}
	out := make([]byte, 8, 8+16*maxDesc)
	for i := 0; i < maxDesc && lba < nb; i++ {
		left := nb - lba
		if left > 0xffffffff {
			left = 0xffffffff
		}
		mapped, run := true, left
		if l.prov != nil {
			m, length, err := l.prov.MapStatus(c.ctx, int64(lba<<l.bsShift), int64(left<<l.bsShift))
			if err != nil {
				return devErr(ioRead, lba, err)
			}
			mapped = m
			run = uint64(length) >> l.bsShift
			if run == 0 || run > left {
				run = min(max(run, 1), left)
			}
		}
		var d [16]byte
		binary.BigEndian.PutUint64(d[0:], lba)
		binary.BigEndian.PutUint32(d[8:], uint32(run))
		if !mapped {
			d[12] = 0x01 // deallocated
		}
		out = append(out, d[:]...)
		lba += run
	}
	binary.BigEndian.PutUint32(out, uint32(len(out)-4))
	c.res.Data = truncate(out, alloc)
	return nil
}
