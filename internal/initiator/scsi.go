package initiator

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"stave.dev/stave/target/scsi/sense"
)

// SCSIError is a command that completed with a status other than GOOD.
// The session stays usable.
type SCSIError struct {
	Status sense.Status
	// Key and ASC are decoded from fixed (0x70/0x71) or descriptor
	// (0x72/0x73) sense data; zero without sense data.
	Key sense.Key
	ASC sense.ASC
	// Sense is a copy of the sense data; nil when the target sent none.
	Sense []byte
}

// Error describes the status and sense.
func (e *SCSIError) Error() string {
	if e.Sense == nil {
		return fmt.Sprintf("initiator: %v", e.Status)
	}
	return fmt.Sprintf("initiator: %v, %v, %v", e.Status, e.Key, e.ASC)
}

// SenseOf returns err's sense key and ASC/ASCQ when err is (or wraps) a
// *SCSIError with CHECK CONDITION.
func SenseOf(err error) (sense.Key, sense.ASC, bool) {
	var se *SCSIError
	if errors.As(err, &se) && se.Status == sense.StatusCheckCondition {
		return se.Key, se.ASC, true
	}
	return 0, 0, false
}

// StatusOf returns err's SCSI status when err is (or wraps) a *SCSIError.
func StatusOf(err error) (sense.Status, bool) {
	var se *SCSIError
	if errors.As(err, &se) {
		return se.Status, true
	}
	return 0, false
}

// statusError turns a SCSI status byte and the data segment of a SCSI
// Response (SenseLength, then sense data; RFC 7143 §11.4.7) into an error.
func statusError(status byte, data []byte) error {
	if status == byte(sense.StatusGood) {
		return nil
	}
	e := &SCSIError{Status: sense.Status(status)}
	if len(data) >= 2 {
		n := int(binary.BigEndian.Uint16(data))
		if n > 0 && 2+n <= len(data) {
			e.Sense = append([]byte(nil), data[2:2+n]...)
			e.Key, e.ASC = parseSense(e.Sense)
		}
	}
	return e
}

// parseSense decodes the sense key and ASC/ASCQ of fixed or descriptor
// format sense data (SPC-4 §4.5.2, §4.5.3).
func parseSense(b []byte) (sense.Key, sense.ASC) {
	if len(b) < 1 {
		return 0, 0
	}
	switch b[0] & 0x7f {
	case 0x70, 0x71:
		if len(b) >= 14 {
			return sense.Key(b[2] & 0x0f), sense.ASC(uint16(b[12])<<8 | uint16(b[13]))
		}
		if len(b) >= 3 {
			return sense.Key(b[2] & 0x0f), 0
		}
	case 0x72, 0x73:
		if len(b) >= 4 {
			return sense.Key(b[1] & 0x0f), sense.ASC(uint16(b[2])<<8 | uint16(b[3]))
		}
	}
	return 0, 0
}

// TestUnitReady sends TEST UNIT READY (SPC-4 §6.47).
func (s *Session) TestUnitReady(ctx context.Context) error {
	return s.Command(ctx, make([]byte, 6), nil, nil)
}

// Capacity is what READ CAPACITY (16) reports.
type Capacity struct {
	// Blocks is the number of logical blocks (RETURNED LOGICAL BLOCK
	// ADDRESS + 1).
	Blocks uint64
	// BlockSize is the logical block length in bytes.
	BlockSize int
}

// Bytes returns the capacity in bytes.
func (c Capacity) Bytes() int64 { return int64(c.Blocks) * int64(c.BlockSize) }

// ReadCapacity sends READ CAPACITY (16) (SBC-3 §5.16) and remembers the
// block size for Read and Write.
func (s *Session) ReadCapacity(ctx context.Context) (Capacity, error) {
	c, err := readCapacity(ctx, s.Command)
	if err == nil {
		s.blocks, s.blockSize = c.Blocks, c.BlockSize
	}
	return c, err
}

// Capacity returns what the last successful ReadCapacity reported (zero
// before).
func (s *Session) Capacity() Capacity { return Capacity{Blocks: s.blocks, BlockSize: s.blockSize} }

// commandFunc runs one command (Session.Command, Multipath.Command).
type commandFunc func(ctx context.Context, cdb []byte, out, in []byte) error

func readCapacity(ctx context.Context, run commandFunc) (Capacity, error) {
	cdb := make([]byte, 16)
	cdb[0], cdb[1] = 0x9e, 0x10 // SERVICE ACTION IN (16), READ CAPACITY (16)
	binary.BigEndian.PutUint32(cdb[10:], 32)
	buf := make([]byte, 32)
	if err := run(ctx, cdb, nil, buf); err != nil {
		return Capacity{}, err
	}
	c := Capacity{Blocks: binary.BigEndian.Uint64(buf[0:]) + 1, BlockSize: int(binary.BigEndian.Uint32(buf[8:]))}
	if c.BlockSize < 512 || c.BlockSize > 1<<20 || c.BlockSize&(c.BlockSize-1) != 0 {
		return Capacity{}, fmt.Errorf("initiator: READ CAPACITY reports a block size of %d bytes", c.BlockSize)
	}
	return c, nil
}

// rwCDB fills cdb with READ (16) or WRITE (16) (SBC-3 §5.12, §5.41).
func rwCDB(cdb *[16]byte, write bool, lba uint64, blocks int) {
	*cdb = [16]byte{}
	cdb[0] = 0x88
	if write {
		cdb[0] = 0x8a
	}
	binary.BigEndian.PutUint64(cdb[2:], lba)
	binary.BigEndian.PutUint32(cdb[10:], uint32(blocks))
}

// Read reads len(b) bytes at logical block lba with READ (16); len(b) is
// a multiple of the block size ReadCapacity reported.
func (s *Session) Read(ctx context.Context, lba uint64, b []byte) error {
	return s.rw(ctx, false, lba, b)
}

// Write writes b at logical block lba with WRITE (16); len(b) is a
// multiple of the block size ReadCapacity reported.
func (s *Session) Write(ctx context.Context, lba uint64, b []byte) error {
	return s.rw(ctx, true, lba, b)
}

func (s *Session) rw(ctx context.Context, write bool, lba uint64, b []byte) error {
	if s.blockSize == 0 {
		return ErrNoCapacity
	}
	if len(b)%s.blockSize != 0 || len(b) == 0 {
		return fmt.Errorf("initiator: %d-byte transfer is not a multiple of the %d-byte block", len(b), s.blockSize)
	}
	rwCDB(&s.cdb, write, lba, len(b)/s.blockSize)
	if write {
		return s.Command(ctx, s.cdb[:], b, nil)
	}
	return s.Command(ctx, s.cdb[:], nil, b)
}

// InquiryData is the part of standard INQUIRY data (SPC-4 §6.6.2) a test
// looks at.
type InquiryData struct {
	// PeripheralQualifier and DeviceType are byte 0 (0/0: a connected
	// direct-access block device).
	PeripheralQualifier, DeviceType uint8
	// TPGS is the target port group support field: 1 implicit ALUA, 2
	// explicit, 3 both.
	TPGS                      uint8
	Vendor, Product, Revision string
}

// Inquiry sends a standard INQUIRY.
func (s *Session) Inquiry(ctx context.Context) (InquiryData, error) {
	return inquiry(ctx, s.Command)
}

func inquiry(ctx context.Context, run commandFunc) (InquiryData, error) {
	b := make([]byte, 96)
	if err := run(ctx, []byte{0x12, 0, 0, 0, byte(len(b)), 0}, nil, b); err != nil {
		return InquiryData{}, err
	}
	trim := func(v []byte) string {
		for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == 0) {
			v = v[:len(v)-1]
		}
		return string(v)
	}
	return InquiryData{PeripheralQualifier: b[0] >> 5, DeviceType: b[0] & 0x1f, TPGS: b[5] >> 4 & 3,
		Vendor: trim(b[8:16]), Product: trim(b[16:32]), Revision: trim(b[32:36])}, nil
}

// InquiryVPD returns vital product data page (SPC-4 §7.8), at most alloc
// bytes of it including the 4-byte header.
func (s *Session) InquiryVPD(ctx context.Context, page uint8, alloc int) ([]byte, error) {
	return inquiryVPD(ctx, s.Command, page, alloc)
}

func inquiryVPD(ctx context.Context, run commandFunc, page uint8, alloc int) ([]byte, error) {
	alloc = min(max(alloc, 4), 0xffff)
	b := make([]byte, alloc)
	cdb := []byte{0x12, 0x01, page, byte(alloc >> 8), byte(alloc), 0}
	if err := run(ctx, cdb, nil, b); err != nil {
		return nil, err
	}
	if b[1] != page {
		return nil, fmt.Errorf("initiator: asked VPD page %#02x, got %#02x", page, b[1])
	}
	n := min(4+int(binary.BigEndian.Uint16(b[2:])), len(b))
	return b[:n], nil
}

// DeviceID is what a multipath layer reads from the Device Identification
// VPD page (0x83, SPC-4 §7.8.6).
type DeviceID struct {
	// NAA is the logical unit's NAA designator (empty when none): equal
	// on every path to the same logical unit.
	NAA []byte
	// RelativePort and PortGroup identify the target port the path goes
	// through; HasPortGroup is false when the page has no target port
	// group designator (no ALUA).
	RelativePort, PortGroup uint16
	HasPortGroup            bool
}

// DeviceID reads VPD page 0x83.
func (s *Session) DeviceID(ctx context.Context) (DeviceID, error) {
	return deviceID(ctx, s.Command)
}

func deviceID(ctx context.Context, run commandFunc) (DeviceID, error) {
	b, err := inquiryVPD(ctx, run, 0x83, 1024)
	if err != nil {
		return DeviceID{}, err
	}
	return parseDeviceID(b[4:]), nil
}

// parseDeviceID decodes designation descriptors (SPC-4 §7.8.6.1): byte 0
// protocol identifier and code set, byte 1 PIV, association and designator
// type, byte 3 length, then the designator.
func parseDeviceID(b []byte) DeviceID {
	var id DeviceID
	for len(b) >= 4 {
		n := int(b[3])
		if 4+n > len(b) {
			break
		}
		v := b[4 : 4+n]
		assoc, typ := b[1]>>4&3, b[1]&0x0f
		switch {
		case assoc == 0 && typ == 3: // NAA, logical unit
			id.NAA = append([]byte(nil), v...)
		case assoc == 1 && typ == 4 && n >= 4: // relative target port
			id.RelativePort = binary.BigEndian.Uint16(v[2:])
		case assoc == 1 && typ == 5 && n >= 4: // target port group
			id.PortGroup = binary.BigEndian.Uint16(v[2:])
			id.HasPortGroup = true
		}
		b = b[4+n:]
	}
	return id
}

// AccessState is an ALUA asymmetric access state (SPC-4 §5.11.2.4).
type AccessState uint8

// Asymmetric access states.
const (
	ActiveOptimized    AccessState = 0x0
	ActiveNonOptimized AccessState = 0x1
	Standby            AccessState = 0x2
	Unavailable        AccessState = 0x3
	Offline            AccessState = 0xe
	Transitioning      AccessState = 0xf
)

// String returns the SPC-4 name of the state.
func (a AccessState) String() string {
	switch a {
	case ActiveOptimized:
		return "active/optimized"
	case ActiveNonOptimized:
		return "active/non-optimized"
	case Standby:
		return "standby"
	case Unavailable:
		return "unavailable"
	case Offline:
		return "offline"
	case Transitioning:
		return "transitioning"
	}
	return fmt.Sprintf("AccessState(%#x)", uint8(a))
}

// Active reports whether commands may be sent to a port in state a.
func (a AccessState) Active() bool { return a == ActiveOptimized || a == ActiveNonOptimized }

// PortGroup is one target port group descriptor of REPORT TARGET PORT
// GROUPS.
type PortGroup struct {
	ID        uint16
	State     AccessState
	Preferred bool
	// Ports are the relative target port identifiers of the group.
	Ports []uint16
}

// ReportTargetPortGroups sends REPORT TARGET PORT GROUPS (SPC-4 §6.36,
// length-only format).
func (s *Session) ReportTargetPortGroups(ctx context.Context) ([]PortGroup, error) {
	return reportTargetPortGroups(ctx, s.Command)
}

func reportTargetPortGroups(ctx context.Context, run commandFunc) ([]PortGroup, error) {
	b := make([]byte, 4096)
	cdb := make([]byte, 12)
	cdb[0], cdb[1] = 0xa3, 0x0a // MAINTENANCE IN, REPORT TARGET PORT GROUPS
	binary.BigEndian.PutUint32(cdb[6:], uint32(len(b)))
	if err := run(ctx, cdb, nil, b); err != nil {
		return nil, err
	}
	return parseTargetPortGroups(b)
}

// parseTargetPortGroups decodes RTPG parameter data: a 4-byte length, then
// 8-byte descriptors (byte 0 PREF and state, 2-3 group ID, 7 port count)
// each followed by 4-byte relative port entries.
func parseTargetPortGroups(b []byte) ([]PortGroup, error) {
	if len(b) < 4 {
		return nil, errors.New("initiator: REPORT TARGET PORT GROUPS data shorter than its header")
	}
	n := min(4+int(binary.BigEndian.Uint32(b)), len(b))
	b = b[4:n]
	var out []PortGroup
	for len(b) >= 8 {
		g := PortGroup{ID: binary.BigEndian.Uint16(b[2:]), State: AccessState(b[0] & 0x0f), Preferred: b[0]&0x80 != 0}
		cnt := int(b[7])
		if 8+4*cnt > len(b) {
			return nil, fmt.Errorf("initiator: port group %d lists %d ports past the end of the data", g.ID, cnt)
		}
		for i := range cnt {
			g.Ports = append(g.Ports, binary.BigEndian.Uint16(b[8+4*i+2:]))
		}
		out = append(out, g)
		b = b[8+4*cnt:]
	}
	return out, nil
}

// PRAction is a PERSISTENT RESERVE OUT service action (SPC-4 §6.16.2).
type PRAction uint8

// Service actions.
const (
	PRRegister          PRAction = 0
	PRReserve           PRAction = 1
	PRRelease           PRAction = 2
	PRClear             PRAction = 3
	PRPreempt           PRAction = 4
	PRPreemptAndAbort   PRAction = 5
	PRRegisterAndIgnore PRAction = 6
)

// PRType is a persistent reservation type (SPC-4 §6.15.3.4).
type PRType uint8

// Reservation types.
const (
	PRWriteExclusive                 PRType = 1
	PRExclusiveAccess                PRType = 3
	PRWriteExclusiveRegistrantsOnly  PRType = 5
	PRExclusiveAccessRegistrantsOnly PRType = 6
	PRWriteExclusiveAllRegistrants   PRType = 7
	PRExclusiveAccessAllRegistrants  PRType = 8
)

// PersistentReserveOut sends PERSISTENT RESERVE OUT with the basic 24-byte
// parameter list (SPC-4 §6.16.3): reservation key key, service action
// reservation key saKey, no flags. typ matters for RESERVE, RELEASE and
// the preempts.
func (s *Session) PersistentReserveOut(ctx context.Context, action PRAction, typ PRType, key, saKey uint64) error {
	return persistentReserveOut(ctx, s.Command, action, typ, key, saKey)
}

func persistentReserveOut(ctx context.Context, run commandFunc, action PRAction, typ PRType, key, saKey uint64) error {
	if action > PRRegisterAndIgnore {
		return fmt.Errorf("initiator: PERSISTENT RESERVE OUT service action %d is not supported", action)
	}
	cdb := make([]byte, 10)
	cdb[0], cdb[1], cdb[2] = 0x5f, byte(action), byte(typ)&0x0f // scope 0: LU
	binary.BigEndian.PutUint32(cdb[5:], 24)
	p := make([]byte, 24)
	binary.BigEndian.PutUint64(p[0:], key)
	binary.BigEndian.PutUint64(p[8:], saKey)
	return run(ctx, cdb, p, nil)
}

// Reservation is READ RESERVATION data; Holder is false when no
// reservation exists.
type Reservation struct {
	Generation uint32
	Holder     bool
	Key        uint64
	Type       PRType
}

// ReadKeys sends PERSISTENT RESERVE IN, READ KEYS (SPC-4 §6.15.2).
func (s *Session) ReadKeys(ctx context.Context) (generation uint32, keys []uint64, err error) {
	return readKeys(ctx, s.Command)
}

func readKeys(ctx context.Context, run commandFunc) (uint32, []uint64, error) {
	b, err := persistentReserveIn(ctx, run, 0)
	if err != nil {
		return 0, nil, err
	}
	n := min(8+int(binary.BigEndian.Uint32(b[4:])), len(b))
	var keys []uint64
	for o := 8; o+8 <= n; o += 8 {
		keys = append(keys, binary.BigEndian.Uint64(b[o:]))
	}
	return binary.BigEndian.Uint32(b), keys, nil
}

// ReadReservation sends PERSISTENT RESERVE IN, READ RESERVATION (SPC-4
// §6.15.3).
func (s *Session) ReadReservation(ctx context.Context) (Reservation, error) {
	return readReservation(ctx, s.Command)
}

func readReservation(ctx context.Context, run commandFunc) (Reservation, error) {
	b, err := persistentReserveIn(ctx, run, 1)
	if err != nil {
		return Reservation{}, err
	}
	r := Reservation{Generation: binary.BigEndian.Uint32(b)}
	if binary.BigEndian.Uint32(b[4:]) >= 16 {
		r.Holder = true
		r.Key = binary.BigEndian.Uint64(b[8:])
		r.Type = PRType(b[21] & 0x0f)
	}
	return r, nil
}

func persistentReserveIn(ctx context.Context, run commandFunc, action uint8) ([]byte, error) {
	b := make([]byte, 1024)
	cdb := make([]byte, 10)
	cdb[0], cdb[1] = 0x5e, action
	binary.BigEndian.PutUint16(cdb[7:], uint16(len(b)))
	if err := run(ctx, cdb, nil, b); err != nil {
		return nil, err
	}
	return b, nil
}
