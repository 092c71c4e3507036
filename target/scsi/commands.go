package scsi

import (
	"encoding/binary"

	"stave.dev/stave/target/scsi/sense"
)

// cmdFlags mark how the generic checks treat a command.
type cmdFlags uint8

const (
	// fNoUA: a pending unit attention does not end the command (SAM-5 §5.14).
	fNoUA cmdFlags = 1 << iota
	// fStandby: allowed in the ALUA standby state (SPC-4 §5.11.2.4.4),
	// plus READ CAPACITY (10) and (16), which the command set may add
	// there. NB: Linux sd reads a path's capacity only when it scans it;
	// a standby path that answered NOT READY stays at 0 blocks, and once
	// it turns active/optimized every I/O through it fails "beyond end of
	// device" (LIO allows READ CAPACITY in standby for the same reason).
	fStandby
	// fUnavailable: allowed in the unavailable and transitioning states.
	fUnavailable
	// fNoConflict: never refused for reservations (INQUIRY, REPORT LUNS,
	// REQUEST SENSE are allowed under every reservation, SPC-4 §5.13.1);
	// every other command, RESERVE/RELEASE and PERSISTENT RESERVE IN/OUT
	// included, goes through pr.Manager.CheckAccess first.
	fNoConflict
)

// command is one row of the dispatch table.
type command struct {
	op    Opcode
	sa    uint8
	hasSA bool
	// usage is the CDB USAGE DATA of REPORT SUPPORTED OPERATION CODES
	// (SPC-4 §6.35.3): byte 0 the opcode, then a mask of the bits the
	// device server looks at. Its length is the CDB length.
	usage []byte
	fn    func(*cmd) error
	flags cmdFlags
	// timeout is the nominal command timeout in seconds (RCTD).
	timeout uint32
}

// commandTable dispatches by opcode, then service action.
type commandTable struct {
	byOp [256]*command
	bySA [256][]*command
	all  []*command
}

func (t *commandTable) add(c *command) {
	if c.hasSA {
		t.bySA[c.op] = append(t.bySA[c.op], c)
	} else {
		t.byOp[c.op] = c
	}
	t.all = append(t.all, c)
}

// lookup finds the command for cdb and returns it with the CDB cut to the
// opcode group's length.
func (t *commandTable) lookup(cdb []byte) (*command, []byte, error) {
	if len(cdb) == 0 {
		return nil, nil, errInvalidOpcode()
	}
	op := Opcode(cdb[0])
	n := op.cdbLength()
	c := t.byOp[op]
	list := t.bySA[op]
	if c == nil && list == nil || n == 0 {
		return nil, nil, errInvalidOpcode()
	}
	if len(cdb) < n {
		return nil, nil, sense.InvalidCDBField(0, -1)
	}
	cdb = cdb[:n]
	if c != nil {
		return c, cdb, nil
	}
	sa := cdb[1] & 0x1f
	for _, c := range list {
		if c.sa == sa {
			return c, cdb, nil
		}
	}
	return nil, nil, sense.InvalidCDBField(1, 4)
}

// find returns the command for an opcode and service action.
func (t *commandTable) find(op uint8, sa uint16, withSA bool) (c *command, opHasSA bool) {
	if c := t.byOp[op]; c != nil {
		return c, false
	}
	list := t.bySA[op]
	if list == nil {
		return nil, false
	}
	if !withSA {
		return nil, true
	}
	for _, c := range list {
		if uint16(c.sa) == sa {
			return c, true
		}
	}
	return nil, true
}

// usage builders.
func u6(op Opcode, b ...byte) []byte  { return fill(6, op, b) }
func u10(op Opcode, b ...byte) []byte { return fill(10, op, b) }
func u12(op Opcode, b ...byte) []byte { return fill(12, op, b) }
func u16(op Opcode, b ...byte) []byte { return fill(16, op, b) }

func fill(n int, op Opcode, b []byte) []byte {
	u := make([]byte, n)
	u[0] = byte(op)
	copy(u[1:], b)
	u[n-1] = 0x07 // CONTROL: NACA and the link/flag bits are examined
	return u
}

// newCommandTable builds the dispatch table. It is built per LU, so that
// there is no package-level mutable state.
func newCommandTable() *commandTable {
	t := new(commandTable)
	const (
		std   = 30  // seconds, nominal timeout for simple commands
		media = 60  // reads and writes
		long  = 300 // WRITE SAME, UNMAP, SYNCHRONIZE CACHE
	)
	add := func(op Opcode, usage []byte, fn func(*cmd) error, flags cmdFlags, timeout uint32) {
		t.add(&command{op: op, usage: usage, fn: fn, flags: flags, timeout: timeout})
	}
	addSA := func(op Opcode, sa uint8, usage []byte, fn func(*cmd) error, flags cmdFlags, timeout uint32) {
		usage[1] = sa
		t.add(&command{op: op, sa: sa, hasSA: true, usage: usage, fn: fn, flags: flags, timeout: timeout})
	}
	rw10 := []byte{0xfa, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff}
	rw12 := []byte{0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f}
	rw16 := []byte{0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f}

	add(OpTestUnitReady, u6(OpTestUnitReady), (*cmd).testUnitReady, 0, std)
	add(OpRequestSense, u6(OpRequestSense, 0x01, 0, 0, 0xff), (*cmd).requestSense, fNoUA|fStandby|fUnavailable|fNoConflict, std)
	add(OpRead6, u6(OpRead6, 0x1f, 0xff, 0xff, 0xff), (*cmd).read, 0, media)
	add(OpWrite6, u6(OpWrite6, 0x1f, 0xff, 0xff, 0xff), (*cmd).write, 0, media)
	add(OpInquiry, u6(OpInquiry, 0x01, 0xff, 0xff, 0xff), (*cmd).inquiry, fNoUA|fStandby|fUnavailable|fNoConflict, std)
	add(OpModeSelect6, u6(OpModeSelect6, 0x11, 0, 0, 0xff), (*cmd).modeSelect, fStandby, std)
	add(OpReserve6, u6(OpReserve6), (*cmd).reserve, 0, std)
	add(OpRelease6, u6(OpRelease6), (*cmd).release, 0, std)
	add(OpModeSense6, u6(OpModeSense6, 0x08, 0xff, 0xff, 0xff), (*cmd).modeSense, fStandby, std)
	add(OpStartStopUnit, u6(OpStartStopUnit, 0x01, 0, 0x0f, 0xf7), (*cmd).startStopUnit, 0, std)
	add(OpPreventAllowMediumRemoval, u6(OpPreventAllowMediumRemoval, 0, 0, 0, 0x03), (*cmd).preventAllow, 0, std)
	add(OpReadCapacity10, u10(OpReadCapacity10, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01), (*cmd).readCapacity10, fStandby, std)
	add(OpRead10, u10(OpRead10, rw10...), (*cmd).read, 0, media)
	add(OpWrite10, u10(OpWrite10, rw10...), (*cmd).write, 0, media)
	add(OpWriteAndVerify10, u10(OpWriteAndVerify10, 0xf2, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff), (*cmd).writeAndVerify, 0, media)
	add(OpVerify10, u10(OpVerify10, 0xf6, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff), (*cmd).verify, 0, media)
	add(OpPreFetch10, u10(OpPreFetch10, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff), (*cmd).preFetch, 0, media)
	add(OpSynchronizeCache10, u10(OpSynchronizeCache10, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff), (*cmd).synchronizeCache, 0, long)
	add(OpReadDefectData10, u10(OpReadDefectData10, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff), (*cmd).readDefectData, 0, std)
	add(OpWriteSame10, u10(OpWriteSame10, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff), (*cmd).writeSame, 0, long)
	add(OpUnmap, u10(OpUnmap, 0x01, 0, 0, 0, 0, 0x1f, 0xff, 0xff), (*cmd).unmap, 0, long)
	add(OpModeSelect10, u10(OpModeSelect10, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff), (*cmd).modeSelect, fStandby, std)
	add(OpReserve10, u10(OpReserve10), (*cmd).reserve, 0, std)
	add(OpRelease10, u10(OpRelease10), (*cmd).release, 0, std)
	add(OpModeSense10, u10(OpModeSense10, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff), (*cmd).modeSense, fStandby, std)
	for sa := uint8(0); sa <= 3; sa++ {
		addSA(OpPersistentReserveIn, sa, u10(OpPersistentReserveIn, 0, 0, 0, 0, 0, 0, 0xff, 0xff),
			(*cmd).persistentReserveIn, fStandby, std)
	}
	for sa := uint8(0); sa <= 7; sa++ {
		addSA(OpPersistentReserveOut, sa, u10(OpPersistentReserveOut, 0, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff),
			(*cmd).persistentReserveOut, fStandby, std)
	}
	add(OpRead16, u16(OpRead16, rw16...), (*cmd).read, 0, media)
	add(OpCompareAndWrite, u16(OpCompareAndWrite, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x1f), (*cmd).compareAndWrite, 0, media)
	add(OpWrite16, u16(OpWrite16, rw16...), (*cmd).write, 0, media)
	add(OpOrWrite16, u16(OpOrWrite16, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f), (*cmd).orWrite, 0, media)
	add(OpWriteAndVerify16, u16(OpWriteAndVerify16, 0xf2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f), (*cmd).writeAndVerify, 0, media)
	add(OpVerify16, u16(OpVerify16, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f), (*cmd).verify, 0, media)
	add(OpPreFetch16, u16(OpPreFetch16, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f), (*cmd).preFetch, 0, media)
	add(OpSynchronizeCache16, u16(OpSynchronizeCache16, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f), (*cmd).synchronizeCache, 0, long)
	add(OpWriteSame16, u16(OpWriteSame16, 0xf9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f), (*cmd).writeSame, 0, long)
	addSA(OpServiceActionIn16, saReadCapacity16, u16(OpServiceActionIn16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0),
		(*cmd).readCapacity16, fStandby, std)
	addSA(OpServiceActionIn16, saGetLBAStatus, u16(OpServiceActionIn16, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0),
		(*cmd).getLBAStatus, 0, std)
	add(OpReportLUNs, u12(OpReportLUNs, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0), (*cmd).reportLUNs, fNoUA|fStandby|fUnavailable|fNoConflict, std)
	addSA(OpMaintenanceIn, saReportTPG, u12(OpMaintenanceIn, 0xe0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0),
		(*cmd).reportTargetPortGroups, fStandby|fUnavailable, std)
	addSA(OpMaintenanceIn, saReportOpcodes, u12(OpMaintenanceIn, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0),
		(*cmd).reportSupportedOpcodes, fStandby|fUnavailable, std)
	addSA(OpMaintenanceIn, saReportTMF, u12(OpMaintenanceIn, 0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0),
		(*cmd).reportSupportedTMFs, fStandby|fUnavailable, std)
	add(OpRead12, u12(OpRead12, rw12...), (*cmd).read, 0, media)
	add(OpWrite12, u12(OpWrite12, rw12...), (*cmd).write, 0, media)
	add(OpWriteAndVerify12, u12(OpWriteAndVerify12, 0xf2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f), (*cmd).writeAndVerify, 0, media)
	add(OpVerify12, u12(OpVerify12, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f), (*cmd).verify, 0, media)
	add(OpReadDefectData12, u12(OpReadDefectData12, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0), (*cmd).readDefectData, 0, std)
	thirdPartyCopyCommands(t) // xcopy.go
	atomicCommands(t)         // atomic.go
	return t
}

// REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35).
func (c *cmd) reportSupportedOpcodes() error {
	cdb := c.cdb
	rctd := cdb[2]&0x80 != 0
	opt := cdb[2] & 0x07
	reqOp := cdb[3]
	reqSA := binary.BigEndian.Uint16(cdb[4:])
	alloc := binary.BigEndian.Uint32(cdb[6:])
	t := c.lu.cmds
	var out []byte
	switch opt {
	case 0:
		per := 8
		if rctd {
			per += 12
		}
		out = make([]byte, 4, 4+per*len(t.all))
		for _, e := range t.all {
			var d [20]byte
			d[0] = byte(e.op)
			if e.hasSA {
				binary.BigEndian.PutUint16(d[2:], uint16(e.sa))
				d[5] |= 0x01 // SERVACTV
			}
			binary.BigEndian.PutUint16(d[6:], uint16(len(e.usage)))
			n := 8
			if rctd {
				d[5] |= 0x02 // CTDP
				putTimeouts(d[8:], e.timeout)
				n = 20
			}
			out = append(out, d[:n]...)
		}
		binary.BigEndian.PutUint32(out, uint32(len(out)-4))
	case 1, 2, 3:
		e, hasSA := t.find(reqOp, reqSA, opt != 1)
		switch {
		case opt == 1 && hasSA:
			return sense.InvalidCDBField(2, 2)
		case opt == 2 && !hasSA:
			return sense.InvalidCDBField(2, 2)
		case opt == 3 && !hasSA && reqSA != 0:
			e = nil
		}
		if opt == 3 && !hasSA && reqSA == 0 {
			e, _ = t.find(reqOp, 0, false)
		}
		out = make([]byte, 4, 4+16+12)
		if e == nil {
			out[1] = 0x01 // SUPPORT: not supported
		} else {
			out[1] = 0x03 // SUPPORT: supported as in the standard
			binary.BigEndian.PutUint16(out[2:], uint16(len(e.usage)))
			out = append(out, e.usage...)
			if rctd {
				out[1] |= 0x80 // CTDP
				var to [12]byte
				putTimeouts(to[:], e.timeout)
				out = append(out, to[:]...)
			}
		}
	default:
		return sense.InvalidCDBField(2, 2)
	}
	c.res.Data = truncate(out, alloc)
	return nil
}

// putTimeouts writes a command timeouts descriptor (SPC-4 §6.35.4).
func putTimeouts(b []byte, nominal uint32) {
	binary.BigEndian.PutUint16(b, 0x0a)
	binary.BigEndian.PutUint32(b[4:], nominal)
	binary.BigEndian.PutUint32(b[8:], nominal*2)
}

// truncate cuts b to the allocation length.
func truncate(b []byte, alloc uint32) []byte {
	if uint64(len(b)) > uint64(alloc) {
		return b[:alloc]
	}
	return b
}
