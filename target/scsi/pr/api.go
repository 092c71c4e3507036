package pr

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"

	"stave.dev/stave/target/scsi/sense"
)

// Port identifies the I_T nexus a command arrives on.
type Port struct {
	// InitiatorName is the iSCSI initiator name (the initiator device).
	InitiatorName string
	// InitiatorPort is the SCSI initiator port name,
	// "<initiator name>,i,0x<ISID>" for iSCSI.
	InitiatorPort string
	// TargetPort is the SCSI target port name, "<target name>,t,0x<TPGT>".
	TargetPort string
	// RelativeTargetPort is the relative target port identifier (1-based).
	RelativeTargetPort uint16
}

// Store persists the persistent-reservation State of one logical unit
// (the design's ReservationStore). Implementations must be safe for the
// Manager's use, which serialises its calls.
type Store interface {
	// Load returns the saved state; a store that has never been saved
	// returns the zero State and a nil error.
	Load(ctx context.Context) (State, error)
	// Save replaces the saved state; a nil error means it is durable. A
	// store that other writers share fails with an error wrapping
	// ErrConflict when the saved state changed since this Store's last
	// Load or Save; the Manager then reloads and decides again.
	Save(ctx context.Context, s State) error
}

// UnitAttention is a unit attention condition the caller must establish
// for one I_T nexus.
type UnitAttention struct {
	// Port is the I_T nexus that receives the unit attention.
	Port Port
	// ASC is the additional sense code, e.g. sense.ASCReservationsPreempted.
	ASC sense.ASC
}

// Effects are what a PERSISTENT RESERVE OUT command asks the caller to do
// once it has succeeded.
type Effects struct {
	// UnitAttentions to establish (SPC-4 §5.13.11).
	UnitAttentions []UnitAttention
	// AbortInitiatorPorts are the nexuses whose tasks PREEMPT AND ABORT
	// aborts (SPC-4 §5.13.11.2.3), as if by ABORT TASK SET, with the
	// unit attention COMMANDS CLEARED BY ANOTHER INITIATOR when TAS=0.
	AbortInitiatorPorts []Port
}

// Manager holds the reservation state of one logical unit.
//
// It is safe for concurrent use. Two mutexes order it: out serialises the
// Store calls and every change of the persistent-reservation state (Out,
// Refresh, the reload before In on a SharedStore) and the taking of an
// SPC-2 reservation (Reserve), so that commands are decided on the state
// last loaded or saved and persisted in order; mu guards the state itself
// and is never held across Store I/O, so CheckAccess (and In on an
// unshared store) never waits for the Store. Lock order: out, then mu.
//
// INVARIANT: the current state is the one the Store last loaded or saved
// (the Store's compare-and-swap base, for a SharedStore).
type Manager struct {
	store  Store
	shared bool // store is a SharedStore that reports Shared

	// idle is true when there is no registration, no persistent
	// reservation and no SPC-2 reservation, so that CheckAccess can allow
	// every command without taking the lock. Written under mu.
	idle atomic.Bool

	// out: see the type comment. Held across Store calls.
	out sync.Mutex

	mu struct {
		sync.Mutex
		st   State
		spc2 *Port // SPC-2 reservation holder, nil when none
		// pending are unit attentions found by a reload whose caller
		// could not hand them out (In, a failed Out); the next Refresh or
		// successful Out returns them. Deduplicated and bounded by
		// maxPending.
		pending []UnitAttention
	}
}

// NewManager returns a Manager whose state is loaded from s. A nil s keeps
// the state in memory only. Loading models a power on: PRgeneration
// restarts at zero and, unless the saved state has APTPL set,
// registrations and the reservation are dropped (SPC-4 §5.13.4); a
// changed state is saved back before NewManager returns. Errors from the
// Store are wrapped; a state that breaks its invariants yields
// ErrCorruptState.
func NewManager(ctx context.Context, s Store) (*Manager, error) {
	m := newManager(s)
	if s == nil {
		return m, nil
	}
	st, err := s.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("pr: load: %w", err)
	}
	if err := st.validate(); err != nil {
		return nil, err
	}
	// SPC-4 §6.13.2: a power on sets PRgeneration to zero; §5.13.4:
	// without APTPL, registrations and the reservation are lost.
	fresh := State{APTPL: st.APTPL}
	if st.APTPL {
		fresh.Registrations, fresh.Reservation = st.Registrations, st.Reservation
	}
	if !reflect.DeepEqual(fresh, st) {
		if err := s.Save(ctx, fresh); err != nil {
			return nil, fmt.Errorf("pr: save: %w", err)
		}
	}
	m.mu.st = fresh
	m.updateIdleLocked()
	return m, nil
}

// newManager returns a Manager over s with the empty state.
func newManager(s Store) *Manager {
	m := &Manager{store: s}
	if ss, ok := s.(SharedStore); ok {
		m.shared = ss.Shared()
	}
	m.idle.Store(true)
	return m
}

// updateIdleLocked recomputes m.idle after a state change.
// REQUIRES: m.mu held.
func (m *Manager) updateIdleLocked() {
	m.idle.Store(len(m.mu.st.Registrations) == 0 && m.mu.st.Reservation == nil && m.mu.spc2 == nil)
}

// Resume returns a Manager that continues with the state saved in s as it
// is, without the power-on semantics of NewManager: for a logical unit
// that moves to another node (failover), or that a node exports while
// other nodes of a cluster serve it already, where registrations made
// without APTPL and PRgeneration must survive. s must not be nil.
func Resume(ctx context.Context, s Store) (*Manager, error) {
	if s == nil {
		return nil, errNilStore
	}
	st, err := s.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("pr: load: %w", err)
	}
	if err := st.validate(); err != nil {
		return nil, err
	}
	m := newManager(s)
	m.mu.st = st
	m.updateIdleLocked()
	return m, nil
}

// errNilStore is returned by Resume without a Store.
var errNilStore = errors.New("pr: Resume needs a Store to resume from (got nil)")

// State returns a copy of the current persistent-reservation state.
func (m *Manager) State() State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mu.st.clone()
}
