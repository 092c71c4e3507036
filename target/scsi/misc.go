package scsi

import (
	"encoding/binary"
	"errors"

	"stave.dev/stave/target/scsi/sense"
)

// TEST UNIT READY (SPC-4 §6.47). Unit attentions, ALUA state and
// reservations are checked before any handler runs; a device whose size
// changed reports CAPACITY DATA HAS CHANGED here at once.
func (c *cmd) testUnitReady() error {
	if c.lu.resize() {
		c.lu.clearUA(c.ns, sense.ASCCapacityDataHasChanged)
		return sense.New(sense.KeyUnitAttention, sense.ASCCapacityDataHasChanged)
	}
	return nil
}

// checkCapacity notices a changed device size for READ CAPACITY: the
// other nexuses get the unit attention, this one gets the new data.
func (c *cmd) checkCapacity() {
	if c.lu.resize() {
		c.lu.clearUA(c.ns, sense.ASCCapacityDataHasChanged)
	}
}

// REQUEST SENSE (SPC-4 §6.39): returns, and clears, the oldest pending
// unit attention, else NO SENSE. DESC selects descriptor format.
func (c *cmd) requestSense() error {
	desc := c.cdb[1]&0x01 != 0
	alloc := uint32(c.cdb[4])
	e := &sense.Error{Key: sense.KeyNoSense, ASC: sense.ASCNoAdditionalSense}
	if asc, ok := c.lu.takeUA(c.ns); ok {
		e = &sense.Error{Key: sense.KeyUnitAttention, ASC: asc}
	} else if err := aluaCheck(c.lu.accessState(c.t.Nexus), 0); err != nil {
		// SPC-4 §6.39: report why media access would fail on this port.
		var se *sense.Error
		if errors.As(err, &se) {
			e = se
		}
	}
	c.res.Data = truncate(encodeSense(nil, e, desc), alloc)
	return nil
}

// READ CAPACITY(10) (SBC-3 §5.15).
func (c *cmd) readCapacity10() error {
	lba := binary.BigEndian.Uint32(c.cdb[2:])
	pmi := c.cdb[8]&0x01 != 0
	if !pmi && lba != 0 {
		return sense.InvalidCDBField(2, -1)
	}
	c.checkCapacity()
	var last uint64
	if nb := c.lu.numBlocks.Load(); nb > 0 {
		last = nb - 1
	}
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b, uint32(min(last, 0xffffffff)))
	binary.BigEndian.PutUint32(b[4:], c.lu.bs)
	c.res.Data = b
	return nil
}

// READ CAPACITY(16) (SBC-3 §5.16).
func (c *cmd) readCapacity16() error {
	alloc := binary.BigEndian.Uint32(c.cdb[10:])
	c.checkCapacity()
	nb := c.lu.numBlocks.Load()
	b := make([]byte, 32)
	if nb > 0 {
		binary.BigEndian.PutUint64(b, nb-1)
	}
	binary.BigEndian.PutUint32(b[8:], c.lu.bs)
	b[13] = c.lu.lbppbe & 0x0f
	b[14] = 0x80 | 0x40 // LBPME, LBPRZ
	c.res.Data = truncate(b, alloc)
	return nil
}

// START STOP UNIT (SBC-3 §5.25). The medium is not removable and always
// spinning; every valid request succeeds.
func (c *cmd) startStopUnit() error {
	if pc := c.cdb[4] >> 4; pc != 0 && pc != 1 && pc != 2 && pc != 3 && pc != 7 && pc != 0xa && pc != 0xb {
		return sense.InvalidCDBField(4, 7)
	}
	return nil
}

// PREVENT ALLOW MEDIUM REMOVAL (SBC-3 §5.14); the medium is not removable.
func (c *cmd) preventAllow() error { return nil }

// READ DEFECT DATA(10/12) (SBC-3 §5.17-5.18): an empty list in the
// requested format.
func (c *cmd) readDefectData() error {
	if len(c.cdb) == 10 {
		alloc := uint32(binary.BigEndian.Uint16(c.cdb[7:]))
		b := make([]byte, 4)
		b[1] = c.cdb[2] & 0x1f
		c.res.Data = truncate(b, alloc)
		return nil
	}
	alloc := binary.BigEndian.Uint32(c.cdb[6:])
	b := make([]byte, 8)
	b[1] = c.cdb[1] & 0x1f
	c.res.Data = truncate(b, alloc)
	return nil
}

// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 §6.40).
func (c *cmd) reportSupportedTMFs() error {
	repd := c.cdb[2]&0x80 != 0
	alloc := binary.BigEndian.Uint32(c.cdb[6:])
	if alloc < 4 {
		return sense.InvalidCDBField(6, -1)
	}
	n := 4
	if repd {
		n = 16
	}
	b := make([]byte, n)
	b[0] = 0x80 | 0x40 | 0x20 | 0x10 | 0x08 | 0x02 // ATS ATSS CACAS CTSS LURS TRS
	if repd {
		b[3] = 0x0c
	}
	c.res.Data = truncate(b, alloc)
	return nil
}

// REPORT LUNS (SPC-4 §6.33).
func (c *cmd) reportLUNs() error {
	var luns []uint64
	if c.tgt != nil {
		luns = c.tgt.lunList()
	} else {
		luns = []uint64{c.t.LUN}
	}
	data, err := reportLUNsData(c.cdb, luns)
	if err != nil {
		return err
	}
	c.lu.clearUA(c.ns, sense.ASCReportedLUNsDataHasChanged)
	c.res.Data = data
	return nil
}

// reportLUNsData validates a REPORT LUNS CDB and encodes the LUN list.
func reportLUNsData(cdb []byte, luns []uint64) ([]byte, error) {
	sel := cdb[2]
	alloc := binary.BigEndian.Uint32(cdb[6:])
	if alloc < 16 {
		return nil, sense.InvalidCDBField(6, -1)
	}
	switch sel {
	case 0x00, 0x02:
	case 0x01:
		luns = nil // no well-known logical units
	default:
		return nil, sense.InvalidCDBField(2, -1)
	}
	b := make([]byte, 8, 8+8*len(luns))
	for _, lun := range luns {
		var e [8]byte
		if lun < 256 {
			e[1] = byte(lun) // peripheral device addressing
		} else {
			binary.BigEndian.PutUint16(e[:], 0x4000|uint16(lun&0x3fff)) // flat space
		}
		b = append(b, e[:]...)
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-8))
	return truncate(b, alloc), nil
}

// RESERVE(6/10) (SPC-2 §7.21).
func (c *cmd) reserve() error { return c.lu.res.Reserve(port(c.t.Nexus), c.cdb) }

// RELEASE(6/10) (SPC-2 §7.19).
func (c *cmd) release() error { return c.lu.res.Release(port(c.t.Nexus), c.cdb) }

// PERSISTENT RESERVE IN (SPC-4 §6.13).
func (c *cmd) persistentReserveIn() error {
	data, err := c.lu.res.In(c.ctx, port(c.t.Nexus), c.cdb)
	if err != nil {
		return err
	}
	c.res.Data = truncate(data, uint32(binary.BigEndian.Uint16(c.cdb[7:])))
	return nil
}

// PERSISTENT RESERVE OUT (SPC-4 §6.14).
func (c *cmd) persistentReserveOut() error {
	plen := binary.BigEndian.Uint32(c.cdb[5:])
	p := c.t.DataOut
	if uint64(len(p)) > uint64(plen) {
		p = p[:plen]
	}
	if uint64(len(p)) < uint64(plen) {
		return errParamListLength()
	}
	eff, err := c.lu.res.Out(c.ctx, port(c.t.Nexus), c.cdb, p)
	if err != nil {
		return err
	}
	c.lu.applyEffects(c.ctx, c.t.Nexus, eff)
	return nil
}
