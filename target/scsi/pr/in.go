package pr

import (
	"context"
	"encoding/binary"
	"fmt"

	"stave.dev/stave/target/scsi/sense"
)

// InServiceAction is a PERSISTENT RESERVE IN service action (SPC-4
// §6.13.1, Table 164).
type InServiceAction uint8

// PERSISTENT RESERVE IN service actions.
const (
	InReadKeys           InServiceAction = 0x00
	InReadReservation    InServiceAction = 0x01
	InReportCapabilities InServiceAction = 0x02
	InReadFullStatus     InServiceAction = 0x03
)

// String returns the SPC-4 name of the service action.
func (a InServiceAction) String() string {
	switch a {
	case InReadKeys:
		return "READ KEYS"
	case InReadReservation:
		return "READ RESERVATION"
	case InReportCapabilities:
		return "REPORT CAPABILITIES"
	case InReadFullStatus:
		return "READ FULL STATUS"
	}
	return fmt.Sprintf("InServiceAction(0x%02x)", uint8(a))
}

// REPORT CAPABILITIES bits (SPC-4 §6.13.4, Table 171).
const (
	capCRH        = 0x10                             // byte 2: compatible reservation handling
	capSIPC       = 0x08                             // byte 2: SPEC_I_PT capable
	capATPC       = 0x04                             // byte 2: ALL_TG_PT capable
	capPTPLC      = 0x01                             // byte 2: persist through power loss capable
	capTMV        = 0x80                             // byte 3: type mask valid
	capAllowCmds1 = 0x10                             // byte 3: ALLOW COMMANDS 001b
	capPTPLA      = 0x01                             // byte 3: persist through power loss activated
	capTypeMaskHi = 0x80 | 0x40 | 0x20 | 0x08 | 0x02 // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
	capTypeMaskLo = 0x01                             // EX_AC_AR
	prinCDBLen    = 10
)

// In executes PERSISTENT RESERVE IN (SPC-4 §6.13) from I_T nexus p and
// returns the whole parameter data; the caller truncates it to the
// ALLOCATION LENGTH (bytes 7-8). Errors are *sense.Error: INVALID FIELD IN
// CDB for an unknown service action, RESERVATION CONFLICT while an SPC-2
// reservation exists.
//
// Over a SharedStore, In first reloads the state from the Store (as
// Refresh does, keeping the unit attentions found for the next Refresh or
// Out), so that PERSISTENT RESERVE IN through any node reports every
// change acknowledged through the others; it then blocks in Store.Load
// with ctx, and a failed load ends with HARDWARE ERROR / INTERNAL TARGET
// FAILURE. Otherwise In does not block. It is safe for concurrent use.
func (m *Manager) In(ctx context.Context, p Port, cdb []byte) ([]byte, error) {
	if len(cdb) < prinCDBLen {
		return nil, sense.InvalidCDBField(0, -1)
	}
	if m.shared {
		m.out.Lock()
		_, err := m.reload(ctx)
		m.out.Unlock()
		if err != nil {
			return nil, errInternal(err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.spc2 != nil {
		return nil, sense.ReservationConflict()
	}
	st := &m.mu.st
	b := binary.BigEndian.AppendUint32(nil, st.Generation)
	switch InServiceAction(cdb[1] & 0x1f) {
	case InReadKeys:
		// SPC-4 §6.13.2.
		b = binary.BigEndian.AppendUint32(b, uint32(8*len(st.Registrations)))
		for i := range st.Registrations {
			b = binary.BigEndian.AppendUint64(b, st.Registrations[i].Key)
		}
	case InReadReservation:
		// SPC-4 §6.13.3.
		rv := st.Reservation
		if rv == nil {
			return binary.BigEndian.AppendUint32(b, 0), nil
		}
		var key uint64
		if !rv.Type.allRegistrants() {
			if i := st.holderIndex(); i >= 0 {
				key = st.Registrations[i].Key
			}
		}
		b = binary.BigEndian.AppendUint32(b, 16)
		b = binary.BigEndian.AppendUint64(b, key)
		b = append(b, 0, 0, 0, 0, 0, byte(rv.Type), 0, 0) // obsolete, reserved, SCOPE|TYPE, obsolete
	case InReportCapabilities:
		// SPC-4 §6.13.4: replaces the generation with LENGTH (8).
		b = b[:0]
		b3 := byte(capTMV | capAllowCmds1)
		if st.APTPL {
			b3 |= capPTPLA
		}
		b = append(b, 0, 8, capCRH|capSIPC|capATPC|capPTPLC, b3, capTypeMaskHi, capTypeMaskLo, 0, 0)
	case InReadFullStatus:
		// SPC-4 §6.13.5.
		b = append(b, 0, 0, 0, 0) // ADDITIONAL LENGTH, set below
		for i := range st.Registrations {
			r := &st.Registrations[i]
			b = binary.BigEndian.AppendUint64(b, r.Key)
			b = append(b, 0, 0, 0, 0)
			var flags, scopeType byte
			if r.AllTgPt {
				flags |= 0x02
			}
			if st.isHolder(i) {
				flags |= 0x01
				scopeType = byte(st.Reservation.Type)
			}
			b = append(b, flags, scopeType, 0, 0, 0, 0)
			var rtp uint16
			if !r.AllTgPt {
				rtp = r.RelativeTargetPort
			}
			b = binary.BigEndian.AppendUint16(b, rtp)
			at := len(b)
			b = append(b, 0, 0, 0, 0)
			b = appendTransportID(b, r)
			binary.BigEndian.PutUint32(b[at:], uint32(len(b)-at-4))
		}
		binary.BigEndian.PutUint32(b[4:], uint32(len(b)-8))
	default:
		return nil, sense.InvalidCDBField(1, 4)
	}
	return b, nil
}
