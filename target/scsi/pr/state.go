package pr

import (
	"errors"
	"fmt"
	"strings"
)

// Type is a persistent reservation TYPE (SPC-4 §6.13.3.4, Table 169).
type Type uint8

// Persistent reservation types.
const (
	TypeWriteExclusive                 Type = 0x1
	TypeExclusiveAccess                Type = 0x3
	TypeWriteExclusiveRegistrantsOnly  Type = 0x5
	TypeExclusiveAccessRegistrantsOnly Type = 0x6
	TypeWriteExclusiveAllRegistrants   Type = 0x7
	TypeExclusiveAccessAllRegistrants  Type = 0x8
)

// String returns the SPC-4 name of the type.
func (t Type) String() string {
	switch t {
	case TypeWriteExclusive:
		return "WRITE EXCLUSIVE"
	case TypeExclusiveAccess:
		return "EXCLUSIVE ACCESS"
	case TypeWriteExclusiveRegistrantsOnly:
		return "WRITE EXCLUSIVE - REGISTRANTS ONLY"
	case TypeExclusiveAccessRegistrantsOnly:
		return "EXCLUSIVE ACCESS - REGISTRANTS ONLY"
	case TypeWriteExclusiveAllRegistrants:
		return "WRITE EXCLUSIVE - ALL REGISTRANTS"
	case TypeExclusiveAccessAllRegistrants:
		return "EXCLUSIVE ACCESS - ALL REGISTRANTS"
	}
	return fmt.Sprintf("Type(0x%x)", uint8(t))
}

// valid reports whether t is one of the six defined types.
func (t Type) valid() bool {
	switch t {
	case TypeWriteExclusive, TypeExclusiveAccess,
		TypeWriteExclusiveRegistrantsOnly, TypeExclusiveAccessRegistrantsOnly,
		TypeWriteExclusiveAllRegistrants, TypeExclusiveAccessAllRegistrants:
		return true
	}
	return false
}

// allRegistrants reports whether every registrant is a holder.
func (t Type) allRegistrants() bool {
	return t == TypeWriteExclusiveAllRegistrants || t == TypeExclusiveAccessAllRegistrants
}

// registrantsOnly reports whether the type is a registrants-only or
// all-registrants type (registered nexuses get holder-like access, and
// releasing it sends RESERVATIONS RELEASED).
func (t Type) registrantsOnly() bool {
	return t == TypeWriteExclusiveRegistrantsOnly || t == TypeExclusiveAccessRegistrantsOnly || t.allRegistrants()
}

// exclusiveAccess reports whether reads are restricted too.
func (t Type) exclusiveAccess() bool {
	return t == TypeExclusiveAccess || t == TypeExclusiveAccessRegistrantsOnly || t == TypeExclusiveAccessAllRegistrants
}

// Registration is one registered I_T nexus (or, with AllTgPt, one
// initiator port registered through every target port).
type Registration struct {
	// Key is the reservation key (never zero).
	Key uint64 `json:"key"`
	// InitiatorName is the iSCSI name of the initiator device.
	InitiatorName string `json:"initiator_name"`
	// InitiatorPort is the SCSI initiator port name. Empty when the
	// registration was made through a format-00 iSCSI TransportID, which
	// names the initiator device: it then covers every port of it.
	InitiatorPort string `json:"initiator_port,omitempty"`
	// TargetPort is the SCSI target port name; ignored when AllTgPt.
	TargetPort string `json:"target_port,omitempty"`
	// RelativeTargetPort is the relative target port identifier.
	RelativeTargetPort uint16 `json:"relative_target_port,omitempty"`
	// AllTgPt means the registration holds through every target port.
	AllTgPt bool `json:"all_tg_pt,omitempty"`
}

// matches reports whether the registration covers the I_T nexus p.
func (r *Registration) matches(p Port) bool {
	if r.InitiatorPort != "" {
		if !strings.EqualFold(r.InitiatorPort, p.InitiatorPort) {
			return false
		}
	} else if !strings.EqualFold(r.InitiatorName, p.InitiatorName) {
		return false
	}
	return r.AllTgPt || r.sameTargetPort(p)
}

// sameTargetPort reports whether the registration's target port is the
// one p arrived on. A registration made by REGISTER AND MOVE to another
// target port knows only its relative target port identifier.
func (r *Registration) sameTargetPort(p Port) bool {
	if r.TargetPort == "" {
		return r.RelativeTargetPort != 0 && r.RelativeTargetPort == p.RelativeTargetPort
	}
	return r.TargetPort == p.TargetPort
}

// sameNexus reports whether a and b name the same registered nexus.
func (r *Registration) sameNexus(o *Registration) bool {
	return strings.EqualFold(r.InitiatorName, o.InitiatorName) &&
		strings.EqualFold(r.InitiatorPort, o.InitiatorPort) && r.AllTgPt == o.AllTgPt &&
		(r.AllTgPt || r.TargetPort == o.TargetPort && r.RelativeTargetPort == o.RelativeTargetPort)
}

// port returns a Port naming the registration's nexus, for unit
// attentions and aborts. For wildcard registrations the fields are as
// registered (empty InitiatorPort or TargetPort); callers match with
// Covers.
func (r *Registration) port() Port {
	p := Port{InitiatorName: r.InitiatorName, InitiatorPort: r.InitiatorPort}
	if !r.AllTgPt {
		p.TargetPort, p.RelativeTargetPort = r.TargetPort, r.RelativeTargetPort
	}
	return p
}

// Covers reports whether p, a Port returned in Effects, includes the
// concrete I_T nexus n. Ports in Effects name registrations, which may
// cover several nexuses: an empty InitiatorPort means every initiator port
// of InitiatorName (registered through a format-00 TransportID); an empty
// TargetPort with RelativeTargetPort 0 means every target port
// (ALL_TG_PT); an empty TargetPort with a non-zero RelativeTargetPort
// means the target port with that identifier.
func (p Port) Covers(n Port) bool {
	if p.InitiatorPort != "" {
		if !strings.EqualFold(p.InitiatorPort, n.InitiatorPort) {
			return false
		}
	} else if !strings.EqualFold(p.InitiatorName, n.InitiatorName) {
		return false
	}
	switch {
	case p.TargetPort != "":
		return p.TargetPort == n.TargetPort
	case p.RelativeTargetPort != 0:
		return p.RelativeTargetPort == n.RelativeTargetPort
	}
	return true
}

// Reservation is the persistent reservation of the logical unit
// (LU_SCOPE only).
type Reservation struct {
	// Type is the reservation type.
	Type Type `json:"type"`
	// Holder identifies the registration that holds the reservation; it
	// is ignored for all-registrants types, where every registrant holds.
	Holder Registration `json:"holder"`
}

// State is the persistent-reservation state of one logical unit, as saved
// by a Store. It is JSON-serialisable.
//
// INVARIANT: keys are non-zero; no two registrations name the same nexus;
// when Reservation is set and not of an all-registrants type, its holder
// is registered; when of an all-registrants type, at least one
// registration exists.
type State struct {
	// Generation is the PRgeneration (SPC-4 §6.13.2); it wraps at 2^32.
	Generation uint32 `json:"generation"`
	// Registrations in registration order.
	Registrations []Registration `json:"registrations,omitempty"`
	// Reservation is the persistent reservation, nil when none.
	Reservation *Reservation `json:"reservation,omitempty"`
	// APTPL is Activate Persist Through Power Loss: when false, a restart
	// drops registrations and the reservation.
	APTPL bool `json:"aptpl,omitempty"`
}

// ErrCorruptState is returned (wrapped) when a loaded State breaks its
// invariants.
var ErrCorruptState = errors.New("pr: corrupt reservation state")

// clone returns a deep copy.
func (s State) clone() State {
	c := s
	c.Registrations = append([]Registration(nil), s.Registrations...)
	if s.Reservation != nil {
		r := *s.Reservation
		c.Reservation = &r
	}
	return c
}

// validate checks the State invariants.
func (s *State) validate() error {
	for i := range s.Registrations {
		r := &s.Registrations[i]
		if r.Key == 0 {
			return fmt.Errorf("%w: registration %d has key 0", ErrCorruptState, i)
		}
		for j := range i {
			if s.Registrations[j].sameNexus(r) {
				return fmt.Errorf("%w: registrations %d and %d name one nexus", ErrCorruptState, j, i)
			}
		}
	}
	if rv := s.Reservation; rv != nil {
		if !rv.Type.valid() {
			return fmt.Errorf("%w: reservation type %d", ErrCorruptState, rv.Type)
		}
		if len(s.Registrations) == 0 {
			return fmt.Errorf("%w: reservation without registrations", ErrCorruptState)
		}
		if !rv.Type.allRegistrants() && s.holderIndex() < 0 {
			return fmt.Errorf("%w: reservation holder not registered", ErrCorruptState)
		}
	}
	return nil
}

// find returns the index of the registration covering p, or -1.
// Exact nexus registrations win over wildcard ones.
func (s *State) find(p Port) int {
	best := -1
	for i := range s.Registrations {
		r := &s.Registrations[i]
		if !r.matches(p) {
			continue
		}
		if r.InitiatorPort != "" && !r.AllTgPt {
			return i
		}
		if best < 0 {
			best = i
		}
	}
	return best
}

// holderIndex returns the index of the holder registration for a
// non-all-registrants reservation, or -1.
func (s *State) holderIndex() int {
	if s.Reservation == nil {
		return -1
	}
	for i := range s.Registrations {
		if s.Registrations[i].sameNexus(&s.Reservation.Holder) {
			return i
		}
	}
	return -1
}

// isHolder reports whether registration i is a reservation holder.
func (s *State) isHolder(i int) bool {
	if s.Reservation == nil || i < 0 {
		return false
	}
	if s.Reservation.Type.allRegistrants() {
		return true
	}
	return s.Registrations[i].sameNexus(&s.Reservation.Holder)
}

// remove deletes registration i; if it held a (non-all-registrants)
// reservation, or was the last registrant of an all-registrants one, the
// reservation goes too. It reports whether the reservation was released.
func (s *State) remove(i int) bool {
	holder := s.isHolder(i)
	s.Registrations = append(s.Registrations[:i], s.Registrations[i+1:]...)
	if holder && (!s.Reservation.Type.allRegistrants() || len(s.Registrations) == 0) {
		s.Reservation = nil
		return true
	}
	return false
}
