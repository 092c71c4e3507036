package pr

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"stave.dev/stave/target/scsi/sense"
)

// OutServiceAction is a PERSISTENT RESERVE OUT service action (SPC-4
// §6.14.2, Table 173).
type OutServiceAction uint8

// PERSISTENT RESERVE OUT service actions.
const (
	OutRegister               OutServiceAction = 0x00
	OutReserve                OutServiceAction = 0x01
	OutRelease                OutServiceAction = 0x02
	OutClear                  OutServiceAction = 0x03
	OutPreempt                OutServiceAction = 0x04
	OutPreemptAndAbort        OutServiceAction = 0x05
	OutRegisterAndIgnore      OutServiceAction = 0x06
	OutRegisterAndMove        OutServiceAction = 0x07
	OutReplaceLostReservation OutServiceAction = 0x08
)

// String returns the SPC-4 name of the service action.
func (a OutServiceAction) String() string {
	switch a {
	case OutRegister:
		return "REGISTER"
	case OutReserve:
		return "RESERVE"
	case OutRelease:
		return "RELEASE"
	case OutClear:
		return "CLEAR"
	case OutPreempt:
		return "PREEMPT"
	case OutPreemptAndAbort:
		return "PREEMPT AND ABORT"
	case OutRegisterAndIgnore:
		return "REGISTER AND IGNORE EXISTING KEY"
	case OutRegisterAndMove:
		return "REGISTER AND MOVE"
	case OutReplaceLostReservation:
		return "REPLACE LOST RESERVATION"
	}
	return fmt.Sprintf("OutServiceAction(0x%02x)", uint8(a))
}

// Layout constants of the PERSISTENT RESERVE OUT CDB and parameter list
// (SPC-4 §6.14.1, §6.14.3, §6.14.4).
const (
	proutCDBLen      = 10
	basicParamLen    = 24 // basic parameter list without TransportIDs
	specIPTHeaderLen = 28 // basic list + TRANSPORTID PARAMETER DATA LENGTH
	moveHeaderLen    = 24 // REGISTER AND MOVE list before the TransportID

	flagSpecIPT = 0x08 // byte 20
	flagAllTgPt = 0x04 // byte 20
	flagAPTPL   = 0x01 // byte 20 (byte 17 for REGISTER AND MOVE)
	flagUnreg   = 0x02 // byte 17 of the REGISTER AND MOVE list

	scopeLU = 0x0

	// MaxRegistrations bounds the registrations of one logical unit;
	// more yield INSUFFICIENT REGISTRATION RESOURCES.
	MaxRegistrations = 1024
)

// outCmd is a decoded PERSISTENT RESERVE OUT command.
type outCmd struct {
	sa      OutServiceAction
	scope   uint8
	typ     Type
	key     uint64
	sakey   uint64
	specIPT bool
	allTgPt bool
	aptpl   bool
	// tids are the TransportIDs (SPEC_I_PT, or the one of REGISTER AND MOVE).
	tids []transportID
	// unreg and rtp are REGISTER AND MOVE's UNREG and RELATIVE TARGET
	// PORT IDENTIFIER.
	unreg bool
	rtp   uint16
}

// decodeOut checks and decodes the CDB and parameter list.
func decodeOut(cdb, param []byte) (outCmd, error) {
	var c outCmd
	if len(cdb) < proutCDBLen {
		return c, sense.InvalidCDBField(0, -1)
	}
	c.sa = OutServiceAction(cdb[1] & 0x1f)
	if c.sa > OutRegisterAndMove {
		return c, sense.InvalidCDBField(1, 4)
	}
	c.scope, c.typ = cdb[2]>>4, Type(cdb[2]&0x0f)
	plen := binary.BigEndian.Uint32(cdb[5:9])
	if uint64(len(param)) < uint64(plen) {
		return c, sense.New(sense.KeyIllegalRequest, sense.ASCParameterListLengthError)
	}
	param = param[:plen]
	if len(param) < basicParamLen {
		return c, sense.New(sense.KeyIllegalRequest, sense.ASCParameterListLengthError)
	}
	c.key = binary.BigEndian.Uint64(param[0:8])
	c.sakey = binary.BigEndian.Uint64(param[8:16])
	if c.sa == OutRegisterAndMove {
		c.unreg = param[17]&flagUnreg != 0
		c.aptpl = param[17]&flagAPTPL != 0
		c.rtp = binary.BigEndian.Uint16(param[18:20])
		n := binary.BigEndian.Uint32(param[20:24])
		if uint64(moveHeaderLen)+uint64(n) != uint64(len(param)) {
			return c, sense.New(sense.KeyIllegalRequest, sense.ASCParameterListLengthError)
		}
		t, tl, err := parseTransportID(param[moveHeaderLen:], moveHeaderLen)
		if err != nil {
			return c, err
		}
		if tl != int(n) {
			return c, sense.InvalidParamField(20, -1)
		}
		c.tids = []transportID{t}
		return c, nil
	}
	c.specIPT = param[20]&flagSpecIPT != 0
	c.allTgPt = param[20]&flagAllTgPt != 0
	c.aptpl = param[20]&flagAPTPL != 0
	if !c.specIPT {
		if len(param) != basicParamLen {
			return c, sense.New(sense.KeyIllegalRequest, sense.ASCParameterListLengthError)
		}
		return c, nil
	}
	// SPC-4 §6.14.3: SPEC_I_PT is valid only for REGISTER.
	if c.sa != OutRegister {
		return c, sense.InvalidParamField(20, 3)
	}
	if len(param) < specIPTHeaderLen {
		return c, sense.New(sense.KeyIllegalRequest, sense.ASCParameterListLengthError)
	}
	n := binary.BigEndian.Uint32(param[24:28])
	if uint64(specIPTHeaderLen)+uint64(n) != uint64(len(param)) {
		return c, sense.New(sense.KeyIllegalRequest, sense.ASCParameterListLengthError)
	}
	for off := specIPTHeaderLen; off < len(param); {
		t, tl, err := parseTransportID(param[off:], off)
		if err != nil {
			return c, err
		}
		c.tids = append(c.tids, t)
		off += tl
	}
	return c, nil
}

// errSaveFailed builds the error reported when the state cannot be persisted.
func errSaveFailed(err error) error {
	return errInternal(fmt.Errorf("pr: save: %w", err))
}

// errInternal builds a HARDWARE ERROR / INTERNAL TARGET FAILURE with cause.
func errInternal(cause error) error {
	return &sense.Error{Status: sense.StatusCheckCondition, Key: sense.KeyHardwareError,
		ASC: sense.ASCInternalTargetFailure, Cause: cause}
}

// maxOutAttempts bounds how many times Out decides a command: a Save that
// loses a race with another writer (ErrConflict) reloads the state and
// decides again on it. Each lost race means another writer's change went
// in; a node that saves PERSISTENT RESERVE OUTs back to back can make
// another lose several in a row (it needs no reload between its own), so
// the bound leaves room for the commands queued on a few nodes.
const maxOutAttempts = 32

// Out executes PERSISTENT RESERVE OUT (SPC-4 §6.14) from I_T nexus p with
// parameter list param (the Data-Out bytes; at least PARAMETER LIST
// LENGTH of them).
//
// Steps, in order ("persist, then ack"):
//
//  1. The CDB and parameter list are checked; errors are ILLEGAL REQUEST
//     (INVALID FIELD IN CDB, INVALID FIELD IN PARAMETER LIST with field
//     pointers, PARAMETER LIST LENGTH ERROR).
//  2. The service action is applied to a copy of the state; rule
//     violations end with RESERVATION CONFLICT or INVALID RELEASE OF
//     PERSISTENT RESERVATION and change nothing.
//  3. When the state changed it is saved through the Store (under the
//     Manager's out lock, not the lock CheckAccess takes).
//  4. When Save fails with ErrConflict (another node changed the shared
//     state), the state is reloaded from the Store as Refresh does and
//     the command is decided again from step 2 on the fresh state, at
//     most maxOutAttempts times in all; so concurrent commands through
//     several nodes serialise, PRgeneration included. Over a
//     SharedStore, a decision of step 2 that saves nothing (a conflict,
//     or a command without effect) is confirmed the same way: the state
//     is reloaded once and, if it changed, the command decided again.
//     Any other failure of Save or of a reload, or running out of
//     attempts, leaves the state as last loaded and ends with HARDWARE
//     ERROR / INTERNAL TARGET FAILURE.
//  5. The new state takes effect and the Effects are returned; the caller
//     establishes the unit attentions and aborts the tasks of
//     AbortInitiatorPorts (with COMMANDS CLEARED BY ANOTHER INITIATOR
//     unit attentions when TAS=0) before completing the command. The
//     unit attentions include those that reloads found (see Refresh).
//
// While an SPC-2 reservation exists every PERSISTENT RESERVE OUT
// conflicts. Out is safe for concurrent use and never panics whatever the
// bytes; it blocks only in Store calls, which get ctx.
func (m *Manager) Out(ctx context.Context, p Port, cdb, param []byte) (Effects, error) {
	c, err := decodeOut(cdb, param)
	if err != nil {
		return Effects{}, err
	}
	m.out.Lock()
	defer m.out.Unlock()
	// fresh is whether the state was loaded during this command: over a
	// SharedStore, a decision that saves nothing (a conflict, a no-op) is
	// confirmed on a fresh state, since no compare-and-swap checks it.
	fresh := !m.shared
	for attempt := 1; ; attempt++ {
		m.mu.Lock()
		if m.mu.spc2 != nil {
			m.mu.Unlock()
			return Effects{}, sense.ReservationConflict()
		}
		st := m.mu.st.clone()
		m.mu.Unlock()
		var eff Effects
		changed, err := apply(&st, p, &c, &eff)
		if (err != nil || !changed) && !fresh {
			fresh = true
			reloaded, rerr := m.reload(ctx)
			if rerr != nil {
				return Effects{}, errInternal(fmt.Errorf("pr: reload to confirm %s: %w", c.sa, rerr))
			}
			if reloaded {
				continue
			}
		}
		if err != nil {
			return Effects{}, err
		}
		if changed {
			if err := st.validate(); err != nil {
				return Effects{}, errSaveFailed(err)
			}
			if m.store != nil {
				err := m.store.Save(ctx, st.clone())
				if errors.Is(err, ErrConflict) && attempt < maxOutAttempts {
					if _, err := m.reload(ctx); err != nil {
						return Effects{}, errInternal(fmt.Errorf("pr: reload after a conflicting save: %w", err))
					}
					fresh = true
					continue
				}
				if err != nil {
					if attempt > 1 {
						err = fmt.Errorf("%w (attempt %d of %d)", err, attempt, maxOutAttempts)
					}
					return Effects{}, errSaveFailed(err)
				}
			}
		}
		m.mu.Lock()
		if changed {
			m.mu.st = st
			m.updateIdleLocked()
		}
		if len(m.mu.pending) > 0 {
			eff.UnitAttentions = append(m.takePendingLocked(), eff.UnitAttentions...)
		}
		m.mu.Unlock()
		return eff, nil
	}
}

// apply runs service action c from p on st, appending side effects to
// eff. It reports whether st changed.
func apply(st *State, p Port, c *outCmd, eff *Effects) (bool, error) {
	i := st.find(p)
	switch c.sa {
	case OutRegister, OutRegisterAndIgnore:
		return register(st, p, i, c, eff)
	case OutRegisterAndMove:
		return registerAndMove(st, p, i, c)
	}
	// RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT AND ABORT: the nexus must
	// be registered with the given key (SPC-4 §5.13.1).
	if i < 0 || st.Registrations[i].Key != c.key {
		return false, sense.ReservationConflict()
	}
	switch c.sa {
	case OutReserve:
		return reserve(st, i, c)
	case OutRelease:
		return release(st, i, c, eff)
	case OutClear:
		for j := range st.Registrations {
			if j != i {
				eff.UnitAttentions = append(eff.UnitAttentions,
					UnitAttention{Port: st.Registrations[j].port(), ASC: sense.ASCReservationsPreempted})
			}
		}
		st.Registrations, st.Reservation = nil, nil
		st.Generation++
		return true, nil
	case OutPreempt, OutPreemptAndAbort:
		return preempt(st, i, c, eff)
	}
	return false, sense.InvalidCDBField(1, 4)
}

// register implements REGISTER and REGISTER AND IGNORE EXISTING KEY
// (SPC-4 §5.13.7, Tables 51 and 52).
func register(st *State, p Port, i int, c *outCmd, eff *Effects) (bool, error) {
	ignore := c.sa == OutRegisterAndIgnore
	if i >= 0 {
		r := &st.Registrations[i]
		if c.specIPT {
			return false, sense.New(sense.KeyIllegalRequest, sense.ASCInvalidFieldInCDB)
		}
		if !ignore && c.key != r.Key {
			return false, sense.ReservationConflict()
		}
		if c.sakey == 0 {
			unregister(st, i, eff)
		} else {
			r.Key = c.sakey
			st.APTPL = c.aptpl
		}
		st.Generation++
		return true, nil
	}
	if !ignore && c.key != 0 {
		return false, sense.ReservationConflict()
	}
	if c.sakey == 0 {
		return false, nil
	}
	regs := []Registration{{Key: c.sakey, InitiatorName: p.InitiatorName, InitiatorPort: p.InitiatorPort,
		TargetPort: p.TargetPort, RelativeTargetPort: p.RelativeTargetPort, AllTgPt: c.allTgPt}}
	for _, t := range c.tids {
		r := Registration{Key: c.sakey, InitiatorName: t.name, InitiatorPort: t.port,
			TargetPort: p.TargetPort, RelativeTargetPort: p.RelativeTargetPort, AllTgPt: c.allTgPt}
		dup := false
		for k := range regs {
			dup = dup || regs[k].sameNexus(&r)
		}
		for k := range st.Registrations {
			dup = dup || st.Registrations[k].sameNexus(&r)
		}
		// A TransportID naming a nexus that is already registered (or
		// named twice) is skipped, as LIO does; the others register.
		if dup {
			continue
		}
		regs = append(regs, r)
	}
	if len(st.Registrations)+len(regs) > MaxRegistrations {
		return false, sense.New(sense.KeyIllegalRequest, sense.ASCInsufficientRegistrationResources)
	}
	st.Registrations = append(st.Registrations, regs...)
	st.APTPL = c.aptpl
	st.Generation++
	return true, nil
}

// unregister removes registration i, releasing the reservation it held
// (SPC-4 §5.13.11.2.2): releasing a registrants-only reservation this way
// sends RESERVATIONS RELEASED to the remaining registrants.
func unregister(st *State, i int, eff *Effects) {
	var typ Type
	if st.Reservation != nil {
		typ = st.Reservation.Type
	}
	if st.remove(i) && typ.registrantsOnly() {
		for j := range st.Registrations {
			eff.UnitAttentions = append(eff.UnitAttentions,
				UnitAttention{Port: st.Registrations[j].port(), ASC: sense.ASCReservationsReleased})
		}
	}
}

// holderOf returns the holder identity of registration r.
func holderOf(r Registration) Registration {
	r.Key = 0
	return r
}

// reserve implements RESERVE (SPC-4 §5.13.9) for registration i.
func reserve(st *State, i int, c *outCmd) (bool, error) {
	if c.scope != scopeLU {
		return false, sense.InvalidCDBField(2, 7)
	}
	if !c.typ.valid() {
		return false, sense.InvalidCDBField(2, 3)
	}
	if rv := st.Reservation; rv != nil {
		if st.isHolder(i) && rv.Type == c.typ {
			return false, nil
		}
		return false, sense.ReservationConflict()
	}
	st.Reservation = &Reservation{Type: c.typ, Holder: holderOf(st.Registrations[i])}
	return true, nil
}

// release implements RELEASE (SPC-4 §5.13.11.2.2) for registration i.
func release(st *State, i int, c *outCmd, eff *Effects) (bool, error) {
	rv := st.Reservation
	if rv == nil || !st.isHolder(i) {
		return false, nil
	}
	if c.scope != scopeLU || c.typ != rv.Type {
		return false, sense.New(sense.KeyIllegalRequest, sense.ASCInvalidReleaseOfPersistentReservation)
	}
	st.Reservation = nil
	if rv.Type.registrantsOnly() {
		for j := range st.Registrations {
			if j != i {
				eff.UnitAttentions = append(eff.UnitAttentions,
					UnitAttention{Port: st.Registrations[j].port(), ASC: sense.ASCReservationsReleased})
			}
		}
	}
	return true, nil
}

// preempt implements PREEMPT and PREEMPT AND ABORT (SPC-4 §5.13.11.2.4,
// §5.13.11.2.5) from registration i.
func preempt(st *State, i int, c *outCmd, eff *Effects) (bool, error) {
	rv := st.Reservation
	preemptRes := false
	if rv != nil {
		if rv.Type.allRegistrants() {
			preemptRes = c.sakey == 0
		} else if h := st.holderIndex(); h >= 0 {
			preemptRes = st.Registrations[h].Key == c.sakey
		}
	}
	if !preemptRes && c.sakey == 0 {
		return false, sense.InvalidParamField(8, -1)
	}
	if preemptRes {
		if c.scope != scopeLU {
			return false, sense.InvalidCDBField(2, 7)
		}
		if !c.typ.valid() {
			return false, sense.InvalidCDBField(2, 3)
		}
	}
	self := st.Registrations[i]
	var kept []Registration
	var removed []Port
	for j, r := range st.Registrations {
		// With an all-registrants reservation and key 0, every other
		// registration goes; otherwise those holding the key.
		if j != i && (r.Key == c.sakey || preemptRes && rv.Type.allRegistrants()) {
			removed = append(removed, r.port())
			continue
		}
		kept = append(kept, r)
	}
	if !preemptRes && len(removed) == 0 {
		return false, sense.ReservationConflict()
	}
	st.Registrations = kept
	for _, rp := range removed {
		eff.UnitAttentions = append(eff.UnitAttentions,
			UnitAttention{Port: rp, ASC: sense.ASCRegistrationsPreempted})
	}
	if preemptRes {
		st.Reservation = &Reservation{Type: c.typ, Holder: holderOf(self)}
		if c.typ != rv.Type {
			for _, r := range st.Registrations {
				if !r.sameNexus(&self) {
					eff.UnitAttentions = append(eff.UnitAttentions,
						UnitAttention{Port: r.port(), ASC: sense.ASCReservationsReleased})
				}
			}
		}
	}
	if c.sa == OutPreemptAndAbort {
		eff.AbortInitiatorPorts = append(eff.AbortInitiatorPorts, removed...)
	}
	st.Generation++
	return true, nil
}

// registerAndMove implements REGISTER AND MOVE (SPC-4 §5.13.8) from
// registration i.
func registerAndMove(st *State, p Port, i int, c *outCmd) (bool, error) {
	if i < 0 || st.Registrations[i].Key != c.key {
		return false, sense.ReservationConflict()
	}
	if c.sakey == 0 {
		return false, sense.InvalidParamField(8, -1)
	}
	rv := st.Reservation
	if rv == nil || !st.isHolder(i) || rv.Type.allRegistrants() {
		return false, sense.ReservationConflict()
	}
	if c.rtp == 0 {
		return false, sense.InvalidParamField(18, -1)
	}
	t := c.tids[0]
	dest := Registration{Key: c.sakey, InitiatorName: t.name, InitiatorPort: t.port, RelativeTargetPort: c.rtp}
	if c.rtp == p.RelativeTargetPort {
		dest.TargetPort = p.TargetPort
	}
	// The destination must not be (or include) the nexus the command came on.
	if dest.matches(p) {
		return false, sense.InvalidParamField(moveHeaderLen, -1)
	}
	d := -1
	for k := range st.Registrations {
		if st.Registrations[k].sameNexus(&dest) {
			d = k
		}
	}
	if d < 0 {
		if len(st.Registrations) >= MaxRegistrations {
			return false, sense.New(sense.KeyIllegalRequest, sense.ASCInsufficientRegistrationResources)
		}
		st.Registrations = append(st.Registrations, dest)
		d = len(st.Registrations) - 1
	}
	st.Reservation = &Reservation{Type: rv.Type, Holder: holderOf(st.Registrations[d])}
	if c.unreg {
		st.Registrations = append(st.Registrations[:i], st.Registrations[i+1:]...)
	}
	st.APTPL = c.aptpl
	st.Generation++
	return true, nil
}
