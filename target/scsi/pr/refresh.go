package pr

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"

	"stave.dev/stave/target/scsi/sense"
)

// ErrConflict is wrapped by the error of a Store's Save that lost a race:
// the saved state changed since the Store's last Load or Save (another
// node's Manager wrote it). Out then reloads and decides again.
var ErrConflict = errors.New("pr: reservation state changed by another writer")

// SharedStore is a Store that the Managers of several nodes use at once,
// each through its own SharedStore value, such as the cluster's etcd
// store: one logical unit exported through the target ports of every node
// has one reservation state (SPC-4 §5.13.1). Its Save is a
// compare-and-swap on the state last loaded or saved through it and fails
// with ErrConflict when another writer got there first.
//
// A Manager over a SharedStore that reports Shared reloads the state
// before PERSISTENT RESERVE IN (see In). Whoever runs the Manager must
// call Refresh when the saved state changes (a watch), so that
// CheckAccess, which never waits for the Store, enforces changes made
// through other nodes.
type SharedStore interface {
	Store
	// Shared reports whether other writers may change the saved state.
	Shared() bool
}

// maxPending bounds the unit attentions a Manager keeps for the next
// Refresh or Out; beyond it new ones are dropped.
const maxPending = 4 * MaxRegistrations

// Refresh reloads the state from the Store as it is, without the power-on
// semantics of NewManager, for a Manager whose Store other nodes write
// too: call it whenever the saved state changes, and before a node starts
// serving as the logical unit's new owner. The SPC-2 reservation, which
// is local to this Manager, is kept. With a nil Store, Refresh does
// nothing.
//
// The returned Effects carry the unit attentions that SPC-4 §5.13.11
// requires for the change, computed from the difference between the
// state before and after (and those found by earlier reloads in In or a
// failed Out, which could not hand them out); the caller establishes them
// for the nexuses it knows, as for Out. The difference tells what
// changed, not which command changed it, so:
//
//  1. A registration that went away gets REGISTRATIONS PREEMPTED
//     (PREEMPT, PREEMPT AND ABORT), or RESERVATIONS PREEMPTED when no
//     registration is left (CLEAR).
//  2. A registrants-only or all-registrants reservation that went away
//     (RELEASE, or its holder unregistered) gets RESERVATIONS RELEASED to
//     the remaining registrants other than the holder.
//  3. A reservation whose type changed (PREEMPT with another type) gets
//     RESERVATIONS RELEASED to the remaining registrants other than the
//     new holder.
//  4. Registrations added, keys changed, RESERVE, REGISTER AND MOVE and
//     APTPL changes raise nothing, as through Out.
//
// Limits, documented rather than done: the nexus that issued a command
// through another node is unknown here, so an ALL_TG_PT (or format-00)
// registration that its own initiator removed through another node gets
// REGISTRATIONS PREEMPTED on this node's nexuses; a registration made
// through a target port of another node covers none of this node's
// nexuses, so for it nothing is spurious. Several changes between two
// refreshes are seen as one (a RELEASE then a RESERVE of another type
// looks like a PREEMPT). PREEMPT AND ABORT through another node does not
// abort the preempted nexuses' tasks here; they have passed CheckAccess
// already and complete, and later commands conflict once Refresh ran.
//
// On error (Store.Load fails, or the loaded state breaks its invariants:
// ErrCorruptState) the state is unchanged. Refresh is safe for
// concurrent use; it blocks in Store.Load with ctx and waits for a
// PERSISTENT RESERVE OUT in progress, never for CheckAccess.
func (m *Manager) Refresh(ctx context.Context) (Effects, error) {
	if m.store == nil {
		return Effects{}, nil
	}
	m.out.Lock()
	defer m.out.Unlock()
	if _, err := m.reload(ctx); err != nil {
		return Effects{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return Effects{UnitAttentions: m.takePendingLocked()}, nil
}

// reload loads the state from the Store and makes it current, queueing
// the unit attentions of the change (see Refresh) in m.mu.pending. It
// reports whether the state differs from the one it replaced. On error
// the state is unchanged.
// REQUIRES: m.out held, m.mu not held, m.store non-nil.
func (m *Manager) reload(ctx context.Context) (bool, error) {
	st, err := m.store.Load(ctx)
	if err != nil {
		return false, fmt.Errorf("pr: load: %w", err)
	}
	if err := st.validate(); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if reflect.DeepEqual(m.mu.st, st) {
		return false, nil
	}
	m.addPendingLocked(changeUnitAttentions(&m.mu.st, &st))
	m.mu.st = st
	m.updateIdleLocked()
	return true, nil
}

// addPendingLocked queues unit attentions, skipping duplicates.
// REQUIRES: m.mu held.
func (m *Manager) addPendingLocked(uas []UnitAttention) {
	for _, u := range uas {
		if len(m.mu.pending) >= maxPending {
			return
		}
		if !slices.Contains(m.mu.pending, u) {
			m.mu.pending = append(m.mu.pending, u)
		}
	}
}

// takePendingLocked returns the queued unit attentions and forgets them.
// REQUIRES: m.mu held.
func (m *Manager) takePendingLocked() []UnitAttention {
	p := m.mu.pending
	m.mu.pending = nil
	return p
}

// indexOfNexus returns the index of the registration naming the same
// nexus as r, or -1.
func (s *State) indexOfNexus(r *Registration) int {
	for i := range s.Registrations {
		if s.Registrations[i].sameNexus(r) {
			return i
		}
	}
	return -1
}

// changeUnitAttentions returns the unit attentions for the change from
// old to cur made through another Manager (rules in Refresh).
func changeUnitAttentions(old, cur *State) []UnitAttention {
	var uas []UnitAttention
	lost := sense.ASCRegistrationsPreempted
	if len(cur.Registrations) == 0 {
		lost = sense.ASCReservationsPreempted
	}
	for i := range old.Registrations {
		r := &old.Registrations[i]
		if cur.indexOfNexus(r) < 0 {
			uas = append(uas, UnitAttention{Port: r.port(), ASC: lost})
		}
	}
	ro, rn := old.Reservation, cur.Reservation
	var except *Registration // the registrant that needs no RESERVATIONS RELEASED
	switch {
	case ro != nil && rn == nil && ro.Type.registrantsOnly():
		if !ro.Type.allRegistrants() {
			except = &ro.Holder
		}
	case ro != nil && rn != nil && ro.Type != rn.Type:
		except = &rn.Holder
	default:
		return uas
	}
	for i := range cur.Registrations {
		r := &cur.Registrations[i]
		if except == nil || !r.sameNexus(except) {
			uas = append(uas, UnitAttention{Port: r.port(), ASC: sense.ASCReservationsReleased})
		}
	}
	return uas
}
