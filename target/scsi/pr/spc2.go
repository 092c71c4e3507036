package pr

import (
	"stave.dev/stave/target/scsi/sense"
)

// checkSPC2CDB checks the fields of RESERVE(6/10) and RELEASE(6/10) that
// Stave does not support: third-party reservations and LONGID in the
// 10-byte forms (SPC-2 §7.21, §7.17). The 6-byte forms' obsolete bits
// are ignored.
func checkSPC2CDB(cdb []byte) error {
	if len(cdb) < 6 {
		return sense.InvalidCDBField(0, -1)
	}
	switch opcode(cdb[0]) {
	case opReserve10, opRelease10:
		if len(cdb) < 10 {
			return sense.InvalidCDBField(0, -1)
		}
		if cdb[1]&0x10 != 0 {
			return sense.InvalidCDBField(1, 4) // 3RDPTY
		}
		if cdb[1]&0x02 != 0 {
			return sense.InvalidCDBField(1, 1) // LONGID
		}
	case opReserve6, opRelease6:
	default:
		return sense.New(sense.KeyIllegalRequest, sense.ASCInvalidCommandOperationCode)
	}
	return nil
}

// Reserve executes RESERVE(6) or RESERVE(10) (SPC-2 §7.21) from I_T
// nexus p:
//
//  1. With persistent reservation registrations present (SPC-4 §5.13.3,
//     compatible reservation handling): GOOD without effect when p is a
//     persistent reservation holder or is registered under a
//     registrants-only or all-registrants type; otherwise RESERVATION
//     CONFLICT.
//  2. Otherwise an SPC-2 reservation held by another nexus conflicts; one
//     held by p is kept (GOOD); with none, p becomes the holder.
//
// It is safe for concurrent use and never panics whatever cdb holds; it
// waits for a PERSISTENT RESERVE OUT in progress.
func (m *Manager) Reserve(p Port, cdb []byte) error {
	if err := checkSPC2CDB(cdb); err != nil {
		return err
	}
	// The out lock keeps a PERSISTENT RESERVE OUT that is saving its
	// first registration from racing with a new SPC-2 reservation.
	m.out.Lock()
	defer m.out.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	st := &m.mu.st
	if len(st.Registrations) > 0 {
		return crhCheck(st, p)
	}
	if h := m.mu.spc2; h != nil {
		if samePort(*h, p) {
			return nil
		}
		return sense.ReservationConflict()
	}
	hp := p
	m.mu.spc2 = &hp
	m.updateIdleLocked()
	return nil
}

// Release executes RELEASE(6) or RELEASE(10) (SPC-2 §7.17) from I_T nexus
// p. With registrations present the compatible reservation handling rules
// of Reserve apply (GOOD without effect, or RESERVATION CONFLICT).
// Otherwise the SPC-2 reservation is released when p holds it; from any
// other nexus RELEASE completes with GOOD and no effect. It is safe for
// concurrent use and never panics whatever cdb holds.
func (m *Manager) Release(p Port, cdb []byte) error {
	if err := checkSPC2CDB(cdb); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st := &m.mu.st
	if len(st.Registrations) > 0 {
		return crhCheck(st, p)
	}
	if h := m.mu.spc2; h != nil && samePort(*h, p) {
		m.mu.spc2 = nil
		m.updateIdleLocked()
	}
	return nil
}

// NexusLost releases the SPC-2 reservation held by I_T nexus p, if any
// (SPC-2 §5.5.1: I_T nexus loss). Persistent reservations are unaffected.
// It is safe for concurrent use.
func (m *Manager) NexusLost(p Port) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if h := m.mu.spc2; h != nil && samePort(*h, p) {
		m.mu.spc2 = nil
		m.updateIdleLocked()
	}
}

// Reset models a logical unit reset (or target reset): the SPC-2
// reservation is released; persistent reservations are unaffected
// (SPC-4 §5.13.1). It is safe for concurrent use.
func (m *Manager) Reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mu.spc2 = nil
	m.updateIdleLocked()
}

// SPC2Holder returns the I_T nexus holding the SPC-2 reservation, if any.
func (m *Manager) SPC2Holder() (Port, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if h := m.mu.spc2; h != nil {
		return *h, true
	}
	return Port{}, false
}
