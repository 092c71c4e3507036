package scsi

import (
	"encoding/binary"
	"sort"

	"stave.dev/stave/target/scsi/sense"
)

// Standard INQUIRY identification (SPC-4 §6.6.2).
const (
	vendorID   = "STAVE"
	productID  = "VOLUME"
	revisionID = "0001"
)

// VPD page codes (SPC-4 §7.8, SBC-3 §6.5).
const (
	vpdSupported       = 0x00
	vpdSerial          = 0x80
	vpdDeviceID        = 0x83
	vpdExtended        = 0x86
	vpdBlockLimits     = 0xb0
	vpdCharacteristics = 0xb1
	vpdProvisioning    = 0xb2
)

// Version descriptors (SPC-4 Table 147).
const (
	versionSAM5  = 0x00a0
	versionISCSI = 0x0960
	versionSPC4  = 0x0460
	versionSBC3  = 0x04c0
)

// INQUIRY (SPC-4 §6.6).
func (c *cmd) inquiry() error {
	cdb := c.cdb
	if cdb[1]&0x02 != 0 { // CMDDT (obsolete)
		return sense.InvalidCDBField(1, 1)
	}
	if cdb[1]&0xfc != 0 {
		return sense.InvalidCDBField(1, 7)
	}
	evpd := cdb[1]&0x01 != 0
	page := cdb[2]
	alloc := uint32(binary.BigEndian.Uint16(cdb[3:]))
	if !evpd {
		if page != 0 {
			return sense.InvalidCDBField(2, 7)
		}
		c.res.Data = truncate(c.lu.standardInquiry(0), alloc)
		return nil
	}
	var b []byte
	switch page {
	case vpdSupported:
		b = vpdHeader(page, []byte{vpdSupported, vpdSerial, vpdDeviceID, vpdExtended, vpdThirdPartyCopy,
			vpdBlockLimits, vpdCharacteristics, vpdProvisioning})
	case vpdSerial:
		b = vpdHeader(page, []byte(c.lu.serial))
	case vpdDeviceID:
		b = vpdHeader(page, c.deviceIdentification())
	case vpdExtended:
		p := make([]byte, 60)
		p[1] = 0x07 // HEADSUP, ORDSUP, SIMPSUP
		p[2] = 0x01 // V_SUP: volatile cache
		b = vpdHeader(page, p)
	case vpdThirdPartyCopy:
		b = vpdHeader(page, c.lu.thirdPartyCopyVPD())
	case vpdBlockLimits:
		b = vpdHeader(page, c.lu.blockLimits())
	case vpdCharacteristics:
		p := make([]byte, 60)
		binary.BigEndian.PutUint16(p[0:], 1) // MEDIUM ROTATION RATE: non-rotating
		b = vpdHeader(page, p)
	case vpdProvisioning:
		p := make([]byte, 4)
		p[1] = 0x80 | 0x40 | 0x20 | 0x04 // LBPU, LBPWS, LBPWS10, LBPRZ
		p[2] = 0x02                      // PROVISIONING TYPE: thin
		b = vpdHeader(page, p)
	default:
		return sense.InvalidCDBField(2, 7)
	}
	c.res.Data = truncate(b, alloc)
	return nil
}

// vpdHeader prefixes a VPD page body with its 4-byte header.
func vpdHeader(page byte, body []byte) []byte {
	b := make([]byte, 4, 4+len(body))
	b[1] = page
	binary.BigEndian.PutUint16(b[2:], uint16(len(body)))
	return append(b, body...)
}

// standardInquiry returns the standard INQUIRY data, 96 bytes. qualifier
// is the peripheral qualifier (0, or 3 for an absent LUN).
func (l *LU) standardInquiry(qualifier byte) []byte {
	b := standardInquiryData(qualifier, 0x00)
	b[5] |= 0x08 // 3PC: EXTENDED COPY (xcopy.go)
	return b
}

func standardInquiryData(qualifier, devType byte) []byte {
	b := make([]byte, 96)
	b[0] = qualifier<<5 | devType
	b[2] = 0x06     // VERSION: SPC-4
	b[3] = 0x10 | 2 // HISUP, RESPONSE DATA FORMAT 2
	b[4] = 96 - 5   // ADDITIONAL LENGTH
	b[5] = 0x10     // TPGS: implicit ALUA
	b[7] = 0x02     // CMDQUE
	pad(b[8:16], vendorID)
	pad(b[16:32], productID)
	pad(b[32:36], revisionID)
	for i, v := range []uint16{versionSAM5, versionISCSI, versionSPC4, versionSBC3} {
		binary.BigEndian.PutUint16(b[58+2*i:], v)
	}
	return b
}

// pad copies s into b, space padded (SPC-4 §4.4.1).
func pad(b []byte, s string) {
	n := copy(b, s)
	for i := n; i < len(b); i++ {
		b[i] = ' '
	}
}

// deviceIdentification builds the designation descriptors of VPD page
// 0x83 (SPC-4 §7.8.6).
func (c *cmd) deviceIdentification() []byte {
	l := c.lu
	var b []byte
	desc := func(proto, codeSet, assoc, typ byte, piv bool, v []byte) {
		h := [4]byte{proto<<4 | codeSet, assoc<<4 | typ, 0, byte(len(v))}
		if piv {
			h[1] |= 0x80
		}
		b = append(b, h[:]...)
		b = append(b, v...)
	}
	const (
		protoISCSI  = 5
		csBinary    = 1
		csASCII     = 2
		csUTF8      = 3
		assocLU     = 0
		assocPort   = 1
		assocDevice = 2
		typeT10     = 1
		typeNAA     = 3
		typeRelPort = 4
		typeTPG     = 5
		typeName    = 8
	)
	desc(0, csBinary, assocLU, typeNAA, false, l.naa[:])
	t10 := make([]byte, 8, 8+len(l.name))
	pad(t10, vendorID)
	t10 = append(t10, l.name...)
	if len(t10) > 255 {
		t10 = t10[:255]
	}
	desc(0, csASCII, assocLU, typeT10, false, t10)
	n := c.t.Nexus
	var rp [4]byte
	binary.BigEndian.PutUint16(rp[2:], n.RelativeTargetPort)
	desc(protoISCSI, csBinary, assocPort, typeRelPort, true, rp[:])
	var tpg [4]byte
	binary.BigEndian.PutUint16(tpg[2:], groupOf(n))
	desc(protoISCSI, csBinary, assocPort, typeTPG, true, tpg[:])
	if name := scsiName(n.TargetPort); name != nil {
		desc(protoISCSI, csUTF8, assocPort, typeName, true, name)
	}
	if i := indexTargetName(n.TargetPort); i > 0 {
		if name := scsiName(n.TargetPort[:i]); name != nil {
			desc(protoISCSI, csUTF8, assocDevice, typeName, true, name)
		}
	}
	return b
}

// scsiName returns s null-terminated and padded to a multiple of four
// bytes (SPC-4 §7.8.6.11), or nil when empty or too long.
func scsiName(s string) []byte {
	if s == "" {
		return nil
	}
	n := (len(s) + 4) &^ 3
	if n > 252 {
		return nil
	}
	b := make([]byte, n)
	copy(b, s)
	return b
}

// indexTargetName returns the length of the target name in an iSCSI
// target port name "<name>,t,0x<TPGT>", or -1.
func indexTargetName(port string) int {
	for i := len(port) - 1; i >= 2; i-- {
		if port[i] == ',' && port[i-1] == 't' && port[i-2] == ',' {
			return i - 2
		}
	}
	return -1
}

// blockLimits is the body of the Block Limits VPD page (SBC-3 §6.5.3).
func (l *LU) blockLimits() []byte {
	p := make([]byte, 60)
	bs := uint32(l.bs)
	p[1] = maxCompareAndWrite                               // MAXIMUM COMPARE AND WRITE LENGTH
	binary.BigEndian.PutUint16(p[2:], uint16(1)<<l.lbppbe)  // OPTIMAL TRANSFER LENGTH GRANULARITY
	binary.BigEndian.PutUint32(p[4:], maxTransferBytes/bs)  // MAXIMUM TRANSFER LENGTH
	binary.BigEndian.PutUint32(p[8:], optTransferBytes/bs)  // OPTIMAL TRANSFER LENGTH
	binary.BigEndian.PutUint32(p[12:], maxTransferBytes/bs) // MAXIMUM PREFETCH LENGTH
	binary.BigEndian.PutUint32(p[16:], maxUnmapBlocks)      // MAXIMUM UNMAP LBA COUNT
	binary.BigEndian.PutUint32(p[20:], maxUnmapDescriptors) // MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT
	binary.BigEndian.PutUint32(p[24:], uint32(1)<<l.lbppbe) // OPTIMAL UNMAP GRANULARITY
	binary.BigEndian.PutUint32(p[28:], 0x80000000)          // UGAVALID, alignment 0
	binary.BigEndian.PutUint64(p[32:], maxWriteSameBlocks)  // MAXIMUM WRITE SAME LENGTH
	l.putAtomicLimits(p)                                    // atomic.go
	return p
}

// reportTargetPortGroups is REPORT TARGET PORT GROUPS (SPC-4 §6.36).
func (c *cmd) reportTargetPortGroups() error {
	cdb := c.cdb
	format := cdb[1] >> 5
	if format > 1 {
		return sense.InvalidCDBField(1, 7)
	}
	alloc := binary.BigEndian.Uint32(cdb[6:])
	if alloc < 4 {
		return sense.InvalidCDBField(6, -1)
	}
	groups := c.lu.portGroups(c.t.Nexus)
	hdr := 4
	if format == 1 {
		hdr = 8
	}
	b := make([]byte, hdr)
	for _, g := range groups {
		d := make([]byte, 8, 8+4*len(g.Ports))
		d[0] = byte(g.State) & 0x0f
		if g.Preferred {
			d[0] |= 0x80
		}
		d[1] = 0x80 | 0x08 | 0x04 | 0x02 | 0x01 // T_SUP, U_SUP, S_SUP, AN_SUP, AO_SUP
		binary.BigEndian.PutUint16(d[2:], g.ID)
		d[7] = byte(len(g.Ports))
		for _, p := range g.Ports {
			var e [4]byte
			binary.BigEndian.PutUint16(e[2:], p)
			d = append(d, e[:]...)
		}
		b = append(b, d...)
	}
	if format == 1 {
		b[4] = 0x10 // FORMAT TYPE 001b
		b[5] = 10   // IMPLICIT TRANSITION TIME, seconds
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	c.res.Data = truncate(b, alloc)
	return nil
}

// portGroups returns the target port groups; without a PortState, one
// active/optimized group 1 with every relative port seen so far.
func (l *LU) portGroups(cur Nexus) []PortGroup {
	if l.ports != nil {
		return l.ports.PortGroups()
	}
	seen := map[uint16]bool{}
	if cur.RelativeTargetPort != 0 {
		seen[cur.RelativeTargetPort] = true
	}
	l.nexuses.Range(func(k, _ any) bool {
		if p := k.(Nexus).RelativeTargetPort; p != 0 {
			seen[p] = true
		}
		return true
	})
	if len(seen) == 0 {
		seen[1] = true
	}
	g := PortGroup{ID: 1, State: ALUAActiveOptimized}
	for p := range seen {
		g.Ports = append(g.Ports, p)
	}
	sort.Slice(g.Ports, func(i, j int) bool { return g.Ports[i] < g.Ports[j] })
	return []PortGroup{g}
}
