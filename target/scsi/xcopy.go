package scsi

// Third-party copy: EXTENDED COPY (LID1), RECEIVE COPY RESULTS and the
// Third-party Copy VPD page (SPC-4 §6.4, §6.27 (SPC-3 §6.18), §7.8.17).
//
// The copy manager is the LU itself. It copies block ranges within the LU:
// every CSCD descriptor must be an identification descriptor (E4h) naming
// this LU by its NAA designator (VPD page 0x83), or a segment may use CSCD
// ID FFFFh ("the copy manager's own LU"). Anything else is COPY TARGET
// DEVICE NOT REACHABLE, and the initiator falls back to READ/WRITE.
//
// EXTENDED COPY (LID1) parameter list (SPC-4 Table 112):
//
//	byte 0      LIST IDENTIFIER
//	byte 1      reserved | STR (bit 5) | LIST ID USAGE (bits 4-3) | PRIORITY (2-0)
//	bytes 2-3   CSCD DESCRIPTOR LIST LENGTH
//	bytes 4-7   reserved
//	bytes 8-11  SEGMENT DESCRIPTOR LIST LENGTH
//	bytes 12-15 INLINE DATA LENGTH
//	16...       CSCD descriptors, segment descriptors, inline data
//
// Processing order:
//  1. The whole parameter list is checked (lengths, limits, descriptor type
//     codes, descriptor fields) before any data moves; failures are ILLEGAL
//     REQUEST and no copy status is held.
//  2. The list identifier is registered for the I_T nexus (OPERATION IN
//     PROGRESS if one with the same identifier is still running).
//  3. Segments run in order. Each is copied in chunks; every chunk holds the
//     range lock on its source and destination ranges, so a copy never
//     interleaves with COMPARE AND WRITE, ORWRITE or another write of the
//     same blocks. A failure is COPY ABORTED and is held for FAILED
//     SEGMENT DETAILS.

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"weak"

	"stave.dev/stave/target/scsi/sense"
)

// Service actions of the third-party copy commands, and the VPD page.
const (
	saExtendedCopyLID1     = 0x00
	saCopyStatus           = 0x00
	saOperatingParameters  = 0x03
	saFailedSegmentDetails = 0x04

	vpdThirdPartyCopy = 0x8f
)

// Copy manager limits, reported by RECEIVE COPY RESULTS (OPERATING
// PARAMETERS) and the Third-party Copy VPD page and enforced by the parser.
const (
	xcMaxCSCD        = 8
	xcMaxSegments    = 64
	xcMaxDescListLen = xcMaxCSCD*xcCSCDLen + xcMaxSegments*xcB2BLen
	xcMaxSegmentLen  = 32 << 20 // bytes per segment descriptor
	xcMaxInlineLen   = 0
	xcMaxConcurrent  = 64  // EXTENDED COPY commands in progress per LU
	xcMaxHeld        = 256 // held copy results per LU
	xcChunk          = 1 << 20

	xcHeaderLen = 16
	xcCSCDLen   = 32
	xcB2BLen    = 28
	xcLocalLU   = 0xffff // CSCD ID: the LU that holds the copy manager
)

// Descriptor type codes (SPC-4 Table 114, Table 118).
const (
	segBlockToBlock = 0x02
	cscdIdent       = 0xe4
)

// Additional sense codes of the copy manager (SPC-4 Annex F).
const (
	ascOperationInProgress              sense.ASC = 0x0016
	ascUnreachableCopyTarget            sense.ASC = 0x0804
	ascThirdPartyDeviceFailure          sense.ASC = 0x0d01
	ascCopyTargetDeviceNotReachable     sense.ASC = 0x0d02
	ascTooManyTargetDescriptors         sense.ASC = 0x2606
	ascUnsupportedTargetDescriptorType  sense.ASC = 0x2607
	ascTooManySegmentDescriptors        sense.ASC = 0x2608
	ascUnsupportedSegmentDescriptorType sense.ASC = 0x2609
	ascInlineDataLengthExceeded         sense.ASC = 0x260b
	ascInsufficientResourcesCopy        sense.ASC = 0x5503
)

// Field values of the parameter list and of RECEIVE COPY RESULTS data.
const (
	copyListIDUsageHold     = 0 // hold results for RECEIVE COPY RESULTS
	copyListIDUsageReserved = 1
	copyListIDUsageNone     = 3 // no list identifier (SNLID=1)

	copyStatusInProgress          = 0x00 // COPY MANAGER STATUS
	copyStatusCompleted           = 0x01
	copyStatusCompletedWithErrors = 0x02
	copyTransferUnitsBytes        = 0x00 // TRANSFER COUNT UNITS
	copyTransferUnitsMiB          = 0x02

	copySNLID                  = 0x01
	copyStatusLen              = 12
	copyFailedDetailsHeaderLen = 60
	copyOperatingParamsLen     = 44
	copyTPCDescriptorAlign     = 4
)

// copyParams is a parsed EXTENDED COPY (LID1) parameter list.
type copyParams struct {
	listID uint8
	usage  uint8 // LIST ID USAGE
	str    bool
	prio   uint8
	cscds  []cscdDesc
	segs   []segDesc
	inline uint32
}

// cscdDesc is an identification descriptor CSCD descriptor (E4h).
type cscdDesc struct {
	off      int // offset in the parameter list
	luIDType uint8
	pdt      uint8
	relPort  uint16
	codeSet  uint8
	assoc    uint8
	desType  uint8
	des      []byte // aliases the parameter list
	pad      bool
	blockLen uint32
}

// segDesc is a block device to block device segment descriptor (02h).
type segDesc struct {
	off      int
	dc, cat  bool
	src, dst uint16
	blocks   uint16
	srcLBA   uint64
	dstLBA   uint64
}

// cscdLen returns the length of a CSCD descriptor with type code t
// (SPC-4 §6.4.5.1: 32 bytes, 64 for the IPv6 and IP copy service ones).
func cscdLen(t byte) int {
	if t == 0xea || t == 0xeb {
		return 64
	}
	return xcCSCDLen
}

// parseCopyParams checks and decodes an EXTENDED COPY (LID1) parameter list
// of at least 16 bytes (the caller handles length zero and shorter lists).
// bs is the logical block size, for MAXIMUM SEGMENT LENGTH. Errors are
// *sense.Error with a field pointer into p. Descriptors alias p.
func parseCopyParams(p []byte, bs uint32) (*copyParams, error) {
	if len(p) < xcHeaderLen {
		return nil, errParamListLength()
	}
	cp := &copyParams{
		listID: p[0],
		str:    p[1]&0x20 != 0,
		usage:  (p[1] >> 3) & 0x03,
		prio:   p[1] & 0x07,
		inline: binary.BigEndian.Uint32(p[12:]),
	}
	if p[1]&0xc0 != 0 {
		return nil, sense.InvalidParamField(1, 7)
	}
	switch cp.usage {
	case copyListIDUsageReserved:
		return nil, sense.InvalidParamField(1, 4)
	case copyListIDUsageNone:
		if cp.listID != 0 { // SNLID=1, but the LIST IDENTIFIER must be zero
			return nil, sense.InvalidParamField(0, -1)
		}
	}
	tdll := uint64(binary.BigEndian.Uint16(p[2:]))
	sdll := uint64(binary.BigEndian.Uint32(p[8:]))
	if tdll+sdll > xcMaxDescListLen {
		return nil, errParamListLength()
	}
	if cp.inline > xcMaxInlineLen {
		return nil, &sense.Error{Status: sense.StatusCheckCondition, Key: sense.KeyIllegalRequest,
			ASC: ascInlineDataLengthExceeded, Field: &sense.FieldPointer{Byte: 12, Bit: -1}}
	}
	if xcHeaderLen+tdll+sdll+uint64(cp.inline) > uint64(len(p)) {
		return nil, errParamListLength()
	}
	tEnd := xcHeaderLen + int(tdll)
	sEnd := tEnd + int(sdll)

	// CSCD descriptors: count first, then types and contents.
	n := 0
	for off := xcHeaderLen; off < tEnd; off += cscdLen(p[off]) {
		if off+cscdLen(p[off]) > tEnd {
			return nil, sense.InvalidParamField(2, -1)
		}
		n++
	}
	if n > xcMaxCSCD {
		return nil, sense.New(sense.KeyIllegalRequest, ascTooManyTargetDescriptors)
	}
	cp.cscds = make([]cscdDesc, 0, n)
	for off := xcHeaderLen; off < tEnd; off += cscdLen(p[off]) {
		d := p[off : off+cscdLen(p[off])]
		if d[0] != cscdIdent {
			return nil, &sense.Error{Status: sense.StatusCheckCondition, Key: sense.KeyIllegalRequest,
				ASC: ascUnsupportedTargetDescriptorType, Field: &sense.FieldPointer{Byte: uint16(off), Bit: -1}}
		}
		c := cscdDesc{
			off:      off,
			luIDType: d[1] >> 6, // SPC-4: ignored for E4h
			pdt:      d[1] & 0x1f,
			relPort:  binary.BigEndian.Uint16(d[2:]),
			codeSet:  d[4] & 0x0f,
			assoc:    (d[5] >> 4) & 0x03,
			desType:  d[5] & 0x0f,
			pad:      d[28]&0x04 != 0,
			blockLen: uint32(d[29])<<16 | uint32(d[30])<<8 | uint32(d[31]),
		}
		dl := int(d[7])
		if dl > 20 { // the designation descriptor fills bytes 4-27
			return nil, sense.InvalidParamField(off+7, -1)
		}
		c.des = d[8 : 8+dl]
		if c.pdt != 0 { // only direct-access block devices
			return nil, sense.InvalidParamField(off+1, 4)
		}
		cp.cscds = append(cp.cscds, c)
	}

	// Segment descriptors: count first, then types and contents.
	n = 0
	for off := tEnd; off < sEnd; {
		if off+4 > sEnd {
			return nil, sense.InvalidParamField(8, -1)
		}
		l := 4 + int(binary.BigEndian.Uint16(p[off+2:]))
		if off+l > sEnd {
			return nil, sense.InvalidParamField(8, -1)
		}
		off += l
		n++
	}
	if n > xcMaxSegments {
		return nil, sense.New(sense.KeyIllegalRequest, ascTooManySegmentDescriptors)
	}
	cp.segs = make([]segDesc, 0, n)
	for off := tEnd; off < sEnd; {
		l := 4 + int(binary.BigEndian.Uint16(p[off+2:]))
		d := p[off : off+l]
		if d[0] != segBlockToBlock {
			return nil, &sense.Error{Status: sense.StatusCheckCondition, Key: sense.KeyIllegalRequest,
				ASC: ascUnsupportedSegmentDescriptorType, Field: &sense.FieldPointer{Byte: uint16(off), Bit: -1}}
		}
		if l != xcB2BLen {
			return nil, sense.InvalidParamField(off+2, -1)
		}
		s := segDesc{
			off:    off,
			dc:     d[1]&0x02 != 0,
			cat:    d[1]&0x01 != 0,
			src:    binary.BigEndian.Uint16(d[4:]),
			dst:    binary.BigEndian.Uint16(d[6:]),
			blocks: binary.BigEndian.Uint16(d[10:]),
			srcLBA: binary.BigEndian.Uint64(d[12:]),
			dstLBA: binary.BigEndian.Uint64(d[20:]),
		}
		if uint64(s.blocks)*uint64(bs) > xcMaxSegmentLen {
			return nil, sense.InvalidParamField(off+10, -1)
		}
		cp.segs = append(cp.segs, s)
		off += l
	}
	return cp, nil
}

// copyRecord is the state of one EXTENDED COPY held for RECEIVE COPY
// RESULTS, keyed by I_T nexus and list identifier.
type copyRecord struct {
	ns     weak.Pointer[nexusState] // the nexus state dies with the nexus
	listID uint8
	hold   bool // LIST ID USAGE 00b: keep the results after completion
	// The fields below are guarded by copyManager.mu.
	done       bool
	failed     bool
	segments   uint16
	bytes      uint64
	sense      []byte // sense data of a failed copy
	statusHeld bool   // COPY STATUS data not yet discarded
	failHeld   bool   // FAILED SEGMENT DETAILS not yet discarded
}

// copyManager holds copy results of one LU. It is safe for concurrent use.
type copyManager struct {
	mu struct {
		sync.Mutex
		recs   []*copyRecord // oldest first
		active int
	}
}

// findLocked returns the index of the record of (ns, id), or -1.
// REQUIRES: m.mu held.
func (m *copyManager) findLocked(ns weak.Pointer[nexusState], id uint8) int {
	for i, r := range m.mu.recs {
		if r.ns == ns && r.listID == id {
			return i
		}
	}
	return -1
}

// removeLocked drops record i. REQUIRES: m.mu held.
func (m *copyManager) removeLocked(i int) {
	m.mu.recs = append(m.mu.recs[:i], m.mu.recs[i+1:]...)
}

// begin registers a copy of list identifier id for nexus ns.
func (m *copyManager) begin(ns *nexusState, p *copyParams) (*copyRecord, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.active >= xcMaxConcurrent {
		return nil, sense.New(sense.KeyIllegalRequest, ascInsufficientResourcesCopy)
	}
	wp := weak.Make(ns)
	r := &copyRecord{ns: wp, listID: p.listID, hold: p.usage == copyListIDUsageHold, statusHeld: true}
	if p.usage != copyListIDUsageNone {
		if i := m.findLocked(wp, p.listID); i >= 0 {
			if !m.mu.recs[i].done {
				return nil, sense.New(sense.KeyIllegalRequest, ascOperationInProgress)
			}
			m.removeLocked(i) // a new copy with the same identifier discards the old results
		}
		// Forget records of nexuses that are gone, then the oldest
		// completed ones beyond the limit.
		recs := m.mu.recs[:0]
		for _, x := range m.mu.recs {
			if x.ns.Value() != nil {
				recs = append(recs, x)
			}
		}
		clear(m.mu.recs[len(recs):])
		m.mu.recs = recs
		for i := 0; len(m.mu.recs) >= xcMaxHeld && i < len(m.mu.recs); {
			if m.mu.recs[i].done {
				m.removeLocked(i)
				continue
			}
			i++
		}
		m.mu.recs = append(m.mu.recs, r)
	}
	m.mu.active++
	return r, nil
}

// progress records one completed segment.
func (m *copyManager) progress(r *copyRecord, bytes uint64) {
	m.mu.Lock()
	r.segments++
	r.bytes += bytes
	m.mu.Unlock()
}

// finish completes r; senseData is the sense of a failed copy, or nil.
func (m *copyManager) finish(r *copyRecord, senseData []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mu.active--
	r.done = true
	r.failed = senseData != nil
	r.sense = senseData
	r.failHeld = r.failed
	if !r.hold {
		if i := m.findLocked(r.ns, r.listID); i >= 0 && m.mu.recs[i] == r {
			m.removeLocked(i)
		}
	}
}

// lookup returns a snapshot of the record of (ns, id).
func (m *copyManager) lookup(ns *nexusState, id uint8) (copyRecord, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	i := m.findLocked(weak.Make(ns), id)
	if i < 0 {
		return copyRecord{}, false
	}
	return *m.mu.recs[i], true
}

// discard drops the COPY STATUS (status) or FAILED SEGMENT DETAILS data of
// a completed copy after it was returned; the record goes when both are gone.
func (m *copyManager) discard(ns *nexusState, id uint8, status bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	i := m.findLocked(weak.Make(ns), id)
	if i < 0 || !m.mu.recs[i].done {
		return
	}
	r := m.mu.recs[i]
	if status {
		r.statusHeld = false
	} else {
		r.failHeld = false
		r.sense = nil
	}
	if !r.statusHeld && !r.failHeld {
		m.removeLocked(i)
	}
}

// thirdPartyCopyCommands registers EXTENDED COPY (LID1) and RECEIVE COPY
// RESULTS in t. The copy manager state lives in the closures, so it is per
// LU like the table.
func thirdPartyCopyCommands(t *commandTable) {
	m := new(copyManager)
	const std, long = 30, 300
	xc := u16(OpExtendedCopy, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0)
	xc[1] = saExtendedCopyLID1
	t.add(&command{op: OpExtendedCopy, sa: saExtendedCopyLID1, hasSA: true, usage: xc,
		fn: func(c *cmd) error { return c.extendedCopy(m) }, timeout: long})
	for _, sa := range []uint8{saCopyStatus, saOperatingParameters, saFailedSegmentDetails} {
		u := u16(OpReceiveCopyResults, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0)
		u[1] = sa
		t.add(&command{op: OpReceiveCopyResults, sa: sa, hasSA: true, usage: u,
			fn: func(c *cmd) error { return c.receiveCopyResults(m) }, timeout: std})
	}
}

// copyAborted is a COPY ABORTED error (SPC-4 §6.4.3.5).
func copyAborted(asc sense.ASC, cause error) *sense.Error {
	return &sense.Error{Status: sense.StatusCheckCondition, Key: sense.KeyCopyAborted, ASC: asc, Cause: cause}
}

// EXTENDED COPY (LID1) (SPC-4 §6.4).
func (c *cmd) extendedCopy(m *copyManager) error {
	l := c.lu
	plen := binary.BigEndian.Uint32(c.cdb[10:])
	if plen == 0 { // SPC-4 §6.4.1: not an error, nothing happens
		return nil
	}
	if plen < xcHeaderLen || uint64(len(c.t.DataOut)) < uint64(plen) {
		return errParamListLength()
	}
	p, err := parseCopyParams(c.t.DataOut[:plen], l.bs)
	if err != nil {
		return err
	}
	// Which CSCD descriptors name this LU; a wrong DISK BLOCK LENGTH for
	// this LU is an invalid field, checked before any data moves.
	local := make([]bool, len(p.cscds))
	for i, d := range p.cscds {
		local[i] = d.codeSet == 1 && d.assoc == 0 && d.desType == 3 && string(d.des) == string(l.naa[:])
		if local[i] && d.blockLen != l.bs {
			return sense.InvalidParamField(d.off+29, -1)
		}
	}
	if len(p.segs) > 0 && l.writeProtected() {
		return errWriteProtected()
	}
	r, err := m.begin(c.ns, p)
	if err != nil {
		return err
	}
	err = c.runSegments(m, r, p, local)
	var fail []byte
	if err != nil {
		var se *sense.Error
		if !errors.As(err, &se) {
			// Cancellation (task aborted) stays as is; device errors
			// become THIRD PARTY DEVICE FAILURE.
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errAborted) {
				m.finish(r, encodeSense(nil, copyAborted(ascThirdPartyDeviceFailure, nil), l.dsense()))
				return err
			}
			err = copyAborted(ascThirdPartyDeviceFailure, err)
			errors.As(err, &se)
		}
		fail = encodeSense(nil, se, l.dsense())
	}
	m.finish(r, fail)
	return err
}

// runSegments processes the segment descriptors in order.
func (c *cmd) runSegments(m *copyManager, r *copyRecord, p *copyParams, local []bool) error {
	l := c.lu
	resolve := func(id uint16) error {
		switch {
		case id == xcLocalLU:
			return nil
		case int(id) >= len(p.cscds):
			return copyAborted(ascUnreachableCopyTarget, nil)
		case !local[id]:
			return copyAborted(ascCopyTargetDeviceNotReachable, nil)
		}
		return nil
	}
	for _, s := range p.segs {
		if err := resolve(s.src); err != nil {
			return err
		}
		if err := resolve(s.dst); err != nil {
			return err
		}
		n := uint64(s.blocks)
		if l.checkRange(s.srcLBA, n) != nil || l.checkRange(s.dstLBA, n) != nil {
			// The copy target refuses the range; like LIO, report it as
			// not reachable so that the initiator falls back.
			return copyAborted(ascCopyTargetDeviceNotReachable, errLBAOutOfRange())
		}
		if err := l.copyBlocks(c.ctx, s.srcLBA, s.dstLBA, n); err != nil {
			return err
		}
		m.progress(r, n<<l.bsShift)
	}
	return nil
}

// copyBlocks copies n blocks from src to dst through the device, in chunks
// that hold the range lock on both ranges. Overlapping ranges are copied
// as by memmove.
func (l *LU) copyBlocks(ctx context.Context, src, dst, n uint64) error {
	if n == 0 || src == dst {
		return nil
	}
	step := uint64(xcChunk) >> l.bsShift
	buf, release := l.bufs.get(int(min(n, step) << l.bsShift))
	if release != nil {
		defer release()
	}
	backward := dst > src && dst < src+n
	for done := uint64(0); done < n; {
		k := min(n-done, step)
		off := done
		if backward {
			off = n - done - k
		}
		if err := l.copyChunk(ctx, buf[:k<<l.bsShift], src+off, dst+off, k); err != nil {
			return err
		}
		done += k
	}
	return nil
}

// copyChunk copies k blocks from src to dst under the range locks.
func (l *LU) copyChunk(ctx context.Context, buf []byte, src, dst, k uint64) error {
	unlock, err := l.lockTwo(ctx, src, src+k, dst, dst+k)
	if err != nil {
		return err
	}
	defer unlock()
	if err := l.dev.ReadAt(ctx, buf, int64(src<<l.bsShift)); err != nil {
		return devErr(ioRead, src, err)
	}
	return devErr(ioWrite, dst, l.dev.WriteAt(ctx, buf, int64(dst<<l.bsShift), l.durable(false)))
}

// lockTwo takes the range lock on [a0,a1) and [b0,b1): one lock on the
// hull when they overlap, else both in ascending order, so that two
// copies cannot deadlock.
func (l *LU) lockTwo(ctx context.Context, a0, a1, b0, b1 uint64) (func(), error) {
	if a0 < b1 && b0 < a1 {
		id, err := l.locks.lock(ctx, min(a0, b0), max(a1, b1))
		if err != nil {
			return nil, err
		}
		return func() { l.locks.unlock(id) }, nil
	}
	if b0 < a0 {
		a0, a1, b0, b1 = b0, b1, a0, a1
	}
	id1, err := l.locks.lock(ctx, a0, a1)
	if err != nil {
		return nil, err
	}
	id2, err := l.locks.lock(ctx, b0, b1)
	if err != nil {
		l.locks.unlock(id1)
		return nil, err
	}
	return func() { l.locks.unlock(id2); l.locks.unlock(id1) }, nil
}

// RECEIVE COPY RESULTS (SPC-4 §6.27; SPC-3 §6.18).
func (c *cmd) receiveCopyResults(m *copyManager) error {
	cdb := c.cdb
	sa := cdb[1] & 0x1f
	id := cdb[2]
	alloc := binary.BigEndian.Uint32(cdb[10:])
	var out []byte
	switch sa {
	case saOperatingParameters:
		out = c.lu.copyOperatingParameters()
	case saCopyStatus:
		r, ok := m.lookup(c.ns, id)
		if !ok || !r.statusHeld {
			return sense.InvalidCDBField(2, -1)
		}
		out = make([]byte, copyStatusLen)
		binary.BigEndian.PutUint32(out, copyStatusLen-4)
		switch {
		case !r.done:
			out[4] = copyStatusInProgress
		case r.failed:
			out[4] = copyStatusCompletedWithErrors
		default:
			out[4] = copyStatusCompleted
		}
		binary.BigEndian.PutUint16(out[5:], r.segments)
		if r.bytes <= 0xffffffff {
			out[7] = copyTransferUnitsBytes
			binary.BigEndian.PutUint32(out[8:], uint32(r.bytes))
		} else {
			out[7] = copyTransferUnitsMiB
			binary.BigEndian.PutUint32(out[8:], uint32(min(r.bytes>>20, 0xffffffff)))
		}
		if r.done && (alloc == 0 || alloc >= copyStatusLen) {
			m.discard(c.ns, id, true)
		}
	case saFailedSegmentDetails:
		r, ok := m.lookup(c.ns, id)
		if !ok {
			return sense.InvalidCDBField(2, -1)
		}
		if !r.done || !r.failHeld {
			out = make([]byte, 4) // AVAILABLE DATA 0: no details
			break
		}
		out = make([]byte, copyFailedDetailsHeaderLen, copyFailedDetailsHeaderLen+len(r.sense))
		binary.BigEndian.PutUint32(out, uint32(copyFailedDetailsHeaderLen-4+len(r.sense)))
		out[56] = byte(sense.StatusCheckCondition) // COPY COMMAND STATUS
		binary.BigEndian.PutUint16(out[58:], uint16(len(r.sense)))
		out = append(out, r.sense...)
		if alloc == 0 || uint64(alloc) >= uint64(len(out)) {
			m.discard(c.ns, id, false)
		}
	default:
		return sense.InvalidCDBField(1, 4)
	}
	c.res.Data = truncate(out, alloc)
	return nil
}

// implementedCopyDescriptors returns the descriptor type codes the copy
// manager implements.
func implementedCopyDescriptors() []byte { return []byte{segBlockToBlock, cscdIdent} }

// copyOperatingParameters is the OPERATING PARAMETERS data (SPC-3 §6.18.4).
func (l *LU) copyOperatingParameters() []byte {
	codes := implementedCopyDescriptors()
	b := make([]byte, copyOperatingParamsLen, copyOperatingParamsLen+len(codes))
	b[4] = copySNLID
	binary.BigEndian.PutUint16(b[8:], xcMaxCSCD)
	binary.BigEndian.PutUint16(b[10:], xcMaxSegments)
	binary.BigEndian.PutUint32(b[12:], xcMaxDescListLen)
	binary.BigEndian.PutUint32(b[16:], xcMaxSegmentLen)
	binary.BigEndian.PutUint32(b[20:], xcMaxInlineLen)
	binary.BigEndian.PutUint32(b[24:], 0) // HELD DATA LIMIT
	binary.BigEndian.PutUint32(b[28:], 0) // MAXIMUM STREAM DEVICE TRANSFER SIZE
	binary.BigEndian.PutUint16(b[34:], xcMaxConcurrent)
	b[36] = xcMaxConcurrent
	b[37] = byte(l.bsShift) // DATA SEGMENT GRANULARITY (log2): whole blocks
	b[38] = 0               // INLINE DATA GRANULARITY
	b[39] = 0               // HELD DATA GRANULARITY
	b[43] = byte(len(codes))
	b = append(b, codes...)
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return b
}

// thirdPartyCopyVPD is the body of the Third-party Copy VPD page
// (SPC-4 §7.8.17) with the descriptors an EXTENDED COPY (LID1) copy
// manager must report: Supported Commands, Parameter Data, Supported
// Descriptors, Supported CSCD Descriptor IDs and General Copy Operations.
func (l *LU) thirdPartyCopyVPD() []byte {
	var b []byte
	desc := func(typ uint16, body []byte) {
		for len(body)%copyTPCDescriptorAlign != 0 {
			body = append(body, 0)
		}
		var h [4]byte
		binary.BigEndian.PutUint16(h[0:], typ)
		binary.BigEndian.PutUint16(h[2:], uint16(len(body)))
		b = append(b, h[:]...)
		b = append(b, body...)
	}
	// Supported Commands (0001h): opcode, SA list length, SAs.
	cmds := []byte{byte(OpExtendedCopy), 1, saExtendedCopyLID1,
		byte(OpReceiveCopyResults), 3, saCopyStatus, saOperatingParameters, saFailedSegmentDetails}
	desc(0x0001, append([]byte{byte(len(cmds))}, cmds...))
	// Parameter Data (0004h).
	pd := make([]byte, 28)
	binary.BigEndian.PutUint16(pd[4:], xcMaxCSCD)
	binary.BigEndian.PutUint16(pd[6:], xcMaxSegments)
	binary.BigEndian.PutUint32(pd[8:], xcMaxDescListLen)
	binary.BigEndian.PutUint32(pd[12:], xcMaxInlineLen)
	desc(0x0004, pd)
	// Supported Descriptors (0008h).
	codes := implementedCopyDescriptors()
	desc(0x0008, append([]byte{byte(len(codes))}, codes...))
	// Supported CSCD Descriptor IDs (000Ch): FFFFh, this LU.
	desc(0x000c, []byte{0, 2, 0xff, 0xff})
	// General Copy Operations (8001h).
	gco := make([]byte, 32)
	binary.BigEndian.PutUint32(gco[0:], xcMaxConcurrent) // TOTAL CONCURRENT COPIES
	binary.BigEndian.PutUint32(gco[4:], xcMaxConcurrent) // MAXIMUM IDENTIFIED CONCURRENT COPIES
	binary.BigEndian.PutUint32(gco[8:], xcMaxSegmentLen) // MAXIMUM SEGMENT LENGTH
	gco[12] = byte(l.bsShift)                            // DATA SEGMENT GRANULARITY
	gco[13] = 0                                          // INLINE DATA GRANULARITY
	desc(0x8001, gco)
	return b
}
