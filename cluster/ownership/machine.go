package ownership

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// NodeID names a node of the cluster.
type NodeID string

// Epoch is an ownership epoch: it grows by one with every change of owner.
// Block versions carry it in their top 24 bits (epoch<<40 | counter).
type Epoch uint64

// LeaseID is an etcd lease ID.
type LeaseID int64

// Record is a volume's ownership record as etcd holds it (see the package
// doc). The zero Record has no owner, epoch 0 and an empty ISR.
type Record struct {
	Epoch Epoch
	// Owner is "" when no owner holds the volume (its lease lapsed).
	Owner NodeID
	// Lease is the owner's lease.
	Lease LeaseID
	// ISR is the in-sync replica set, owner included.
	ISR []NodeID
	// Rev is the etcd revision of the record: a record with a lower
	// revision than one already seen is stale and ignored.
	Rev int64
}

// InISR reports whether n is a member of the ISR.
func (r Record) InISR(n NodeID) bool { return slices.Contains(r.ISR, n) }

// Clone returns a deep copy of r.
func (r Record) Clone() Record {
	r.ISR = slices.Clone(r.ISR)
	return r
}

// State is the role of the node for the volume.
type State uint8

// States.
const (
	// Follower is a node that does not own the volume.
	Follower State = iota
	// Claiming is a follower whose claim transaction is outstanding.
	Claiming
	// Reconciling is an owner that won its epoch and is bringing the
	// ISR to its own content; it serves no I/O yet.
	Reconciling
	// Serving is an owner that may acknowledge I/O (see MayAck).
	Serving
	// Fenced is an owner that stopped serving because its lease may
	// have lapsed; a successful keepalive before the true expiry lets it
	// serve again.
	Fenced
)

// String returns the state's name.
func (s State) String() string {
	switch s {
	case Follower:
		return "follower"
	case Claiming:
		return "claiming"
	case Reconciling:
		return "reconciling"
	case Serving:
		return "serving"
	case Fenced:
		return "fenced"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Config configures a Machine. All durations are on the node's monotonic
// clock.
type Config struct {
	// Self is this node.
	Self NodeID
	// TTL is the lease TTL to request.
	TTL time.Duration
	// Margin is how long before the certain lease expiry the owner stops
	// acknowledging I/O (see the package doc).
	Margin time.Duration
	// MaxDrift bounds the rate difference between this node's clock and
	// etcd's, as a fraction (0.01 = 1%).
	MaxDrift float64
	// KeepaliveInterval is the keepalive period; zero means TTL/4.
	KeepaliveInterval time.Duration
	// RequestTimeout is how long a lease grant or keepalive may stay
	// unanswered before it is sent again; zero means TTL/2.
	RequestTimeout time.Duration
}

// Errors returned by Step.
var (
	// ErrUnknownEvent reports an event type the machine does not know.
	ErrUnknownEvent = errors.New("ownership: unknown event")
	// ErrTimeBackwards reports a Tick earlier than the previous one.
	ErrTimeBackwards = errors.New("ownership: time went backwards")
)

// Machine is the ownership state machine of one volume on one node. It is
// not safe for concurrent use: one driver goroutine owns it.
type Machine struct {
	cfg Config
	now time.Duration
	// state and the epoch this node owns (valid in Reconciling, Serving, Fenced).
	state    State
	ownEpoch Epoch
	// persisted is the highest epoch this node knows to be durable.
	persisted Epoch
	rec       Record
	// lease: zero ID when none.
	lease    LeaseID
	reqSeq   uint64
	grantReq uint64 // outstanding grant request (0: none)
	grantAt  time.Duration
	kaReq    uint64 // outstanding keepalive request (0: none)
	kaAt     time.Duration
	nextKA   time.Duration
	// sureUntil is the local time until which the lease is certainly
	// alive in etcd; fenceAt = sureUntil - Margin.
	sureUntil time.Duration
	claimReq  uint64
	// pending ISR changes by node (true: add).
	changing map[NodeID]bool
	// failedAdding: nodes that failed while their add was outstanding.
	failedAdding map[NodeID]bool
	actions      []Action
}

// New returns a follower machine. persisted is the highest epoch this node
// has made durable (0 for a new node).
func New(cfg Config, persisted Epoch) *Machine {
	if cfg.KeepaliveInterval <= 0 {
		cfg.KeepaliveInterval = cfg.TTL / 4
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = cfg.TTL / 2
	}
	return &Machine{cfg: cfg, persisted: persisted, changing: map[NodeID]bool{}, failedAdding: map[NodeID]bool{}}
}

// State returns the node's role.
func (m *Machine) State() State { return m.state }

// Epoch returns the epoch this node owns, or 0 when it is a follower.
func (m *Machine) Epoch() Epoch {
	if m.state == Follower || m.state == Claiming {
		return 0
	}
	return m.ownEpoch
}

// Record returns the latest ownership record the machine knows.
func (m *Machine) Record() Record { return m.rec.Clone() }

// Persisted returns the highest epoch the machine asked to persist.
func (m *Machine) Persisted() Epoch { return m.persisted }

// FenceAt returns the local time at which the owner stops acknowledging,
// and false when the node holds no lease.
func (m *Machine) FenceAt() (time.Duration, bool) {
	if m.lease == 0 {
		return 0, false
	}
	return m.fenceAt(), true
}

func (m *Machine) fenceAt() time.Duration { return m.sureUntil - m.cfg.Margin }

// MayAck reports whether the node may acknowledge I/O at local time now:
// it is Serving and now is before the fence deadline. Drivers call it at
// the moment of every acknowledgement.
func (m *Machine) MayAck(now time.Duration) bool {
	return m.state == Serving && m.lease != 0 && now < m.fenceAt()
}

// Required returns the nodes other than this one that must have a write
// durable before it is acknowledged: the ISR plus nodes being added, minus
// nothing that is being removed (a removal counts only once committed).
// It is empty unless the node owns the volume.
func (m *Machine) Required() []NodeID {
	if !m.owning() {
		return nil
	}
	var out []NodeID
	for _, n := range m.rec.ISR {
		if n != m.cfg.Self {
			out = append(out, n)
		}
	}
	for n, add := range m.changing {
		if add && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// Ready returns the actions produced since the last call, in the order the
// driver must execute them, and forgets them.
func (m *Machine) Ready() []Action {
	a := m.actions
	m.actions = nil
	return a
}

func (m *Machine) emit(a Action) { m.actions = append(m.actions, a) }

func (m *Machine) nextReq() uint64 {
	m.reqSeq++
	return m.reqSeq
}

// Step feeds one event to the machine. It returns ErrUnknownEvent for an
// event it does not know and ErrTimeBackwards for a Tick in the past.
func (m *Machine) Step(ev Event) error {
	switch e := ev.(type) {
	case Tick:
		if e.Now < m.now {
			return fmt.Errorf("%w: %v after %v", ErrTimeBackwards, e.Now, m.now)
		}
		m.now = e.Now
	case LeaseGranted:
		if e.Req != m.grantReq || m.grantReq == 0 {
			return nil // an answer to a request given up on
		}
		m.grantReq = 0
		m.lease = e.Lease
		m.sureUntil = m.grantAt + certain(e.TTL, m.cfg.MaxDrift)
		m.nextKA = m.now + m.cfg.KeepaliveInterval
	case KeepaliveResult:
		if e.Req != m.kaReq || m.kaReq == 0 || e.Lease != m.lease {
			return nil
		}
		m.kaReq = 0
		switch {
		case e.Expired:
			m.loseLease("lease expired")
		case e.Err != nil:
			// Transient: try again soon; the fence deadline still holds.
			m.nextKA = m.now + m.cfg.KeepaliveInterval/4
		default:
			m.sureUntil = max(m.sureUntil, m.kaAt+certain(e.TTL, m.cfg.MaxDrift))
			m.nextKA = m.now + m.cfg.KeepaliveInterval
			if m.state == Fenced && m.rec.Owner == m.cfg.Self && m.rec.Epoch == m.ownEpoch && m.now < m.fenceAt() {
				m.state = Serving
				m.emit(StartServing{Epoch: m.ownEpoch, Until: m.fenceAt()})
			} else if m.state == Serving {
				m.emit(ServeUntil{Epoch: m.ownEpoch, Until: m.fenceAt()})
			}
		}
	case Observed:
		m.observe(e.Record)
	case ClaimResult:
		if e.Req != m.claimReq || m.claimReq == 0 {
			return nil
		}
		m.claimReq = 0
		if m.state == Claiming {
			m.state = Follower
		}
		if e.OK {
			m.observe(e.Record)
		} else if e.Record.Epoch >= m.rec.Epoch && e.Err == nil {
			m.observe(e.Record)
		}
	case ReplicaFailed:
		if !m.owning() || e.Node == m.cfg.Self {
			return nil
		}
		if add, ok := m.changing[e.Node]; ok {
			if add {
				// The add may still commit: the node stays required
				// until the result, then it is removed again.
				m.failedAdding[e.Node] = true
			}
			return nil
		}
		if !m.rec.InISR(e.Node) {
			return nil
		}
		m.changing[e.Node] = false
		m.emit(ProposeISRChange{Epoch: m.ownEpoch, Node: e.Node, Add: false})
	case ResyncDone:
		if !m.owning() || m.rec.InISR(e.Node) || e.Node == m.cfg.Self {
			return nil
		}
		if _, ok := m.changing[e.Node]; ok {
			return nil
		}
		m.changing[e.Node] = true
		m.emit(ProposeISRChange{Epoch: m.ownEpoch, Node: e.Node, Add: true})
	case ISRResult:
		add, ok := m.changing[e.Node]
		if !ok || add != e.Add || e.Epoch != m.ownEpoch || !m.owning() {
			return nil
		}
		delete(m.changing, e.Node)
		failed := m.failedAdding[e.Node]
		delete(m.failedAdding, e.Node)
		if !e.OK {
			// The epoch changed, ownership was lost or the outcome is
			// unknown: writes waiting on this change cannot be
			// acknowledged safely. Step down.
			m.stepDown(fmt.Sprintf("ISR change of %s failed", e.Node))
			return nil
		}
		m.observe(e.Record)
		if !m.owning() {
			return nil
		}
		// INVARIANT: the committed record reflects the change.
		if m.rec.InISR(e.Node) != e.Add {
			m.stepDown(fmt.Sprintf("ISR change of %s not in the committed record", e.Node))
			return nil
		}
		if e.Add && failed {
			m.changing[e.Node] = false
			m.emit(ProposeISRChange{Epoch: m.ownEpoch, Node: e.Node, Add: false})
		}
	case ReconcileDone:
		if m.state != Reconciling || e.Epoch != m.ownEpoch {
			return nil
		}
		if m.lease != 0 && m.now < m.fenceAt() {
			m.state = Serving
			m.emit(StartServing{Epoch: m.ownEpoch, Until: m.fenceAt()})
		} else {
			m.state = Fenced
		}
	default:
		return fmt.Errorf("%w: %T", ErrUnknownEvent, ev)
	}
	m.advance()
	return nil
}

// certain is the part of a TTL that has certainly not elapsed in etcd
// when ttl has elapsed on a clock whose rate is off by at most drift.
func certain(ttl time.Duration, drift float64) time.Duration {
	return time.Duration(float64(ttl) * (1 - drift))
}

// owning reports whether the node won an epoch that it has not lost.
func (m *Machine) owning() bool {
	return m.state == Reconciling || m.state == Serving || m.state == Fenced
}

// observe takes in a record read from etcd (watch or txn response).
func (m *Machine) observe(r Record) {
	if r.Epoch < m.rec.Epoch || r.Rev < m.rec.Rev {
		return // older than what we know
	}
	m.rec = r.Clone()
	if r.Epoch > m.persisted {
		m.persisted = r.Epoch
		m.emit(PersistEpoch{Epoch: r.Epoch})
	}
	mine := r.Owner == m.cfg.Self && m.lease != 0 && r.Lease == m.lease
	switch {
	case m.owning() && (r.Epoch != m.ownEpoch || !mine):
		m.stepDown("ownership moved")
	case !m.owning() && mine:
		// Our claim committed (possibly with an unknown outcome).
		m.ownEpoch = r.Epoch
		m.state = Reconciling
		clear(m.changing)
		clear(m.failedAdding)
		var members []NodeID
		for _, n := range r.ISR {
			if n != m.cfg.Self {
				members = append(members, n)
			}
		}
		m.emit(Reconcile{Epoch: r.Epoch, Members: members})
	}
}

// loseLease forgets the lease; an owner steps down.
func (m *Machine) loseLease(reason string) {
	m.lease = 0
	m.kaReq = 0
	if m.owning() {
		m.stepDown(reason)
	}
}

// stepDown makes an owner a follower and revokes its lease so that another
// ISR member can claim at once (if the revoke is lost, the lease lapses).
func (m *Machine) stepDown(reason string) {
	if m.state == Serving {
		m.emit(StopServing{Epoch: m.ownEpoch, Reason: reason})
	}
	m.state = Follower
	clear(m.changing)
	clear(m.failedAdding)
	if m.lease != 0 {
		m.emit(RevokeLease{Lease: m.lease})
		m.lease = 0
		m.kaReq = 0
	}
}

// advance applies the time-driven rules after every event.
func (m *Machine) advance() {
	// Lease bookkeeping.
	if m.lease != 0 && m.now >= m.sureUntil {
		m.loseLease("lease may have lapsed")
	}
	if m.lease == 0 && m.grantReq != 0 && m.now-m.grantAt >= m.cfg.RequestTimeout {
		m.grantReq = 0
	}
	if m.lease == 0 && m.grantReq == 0 {
		m.grantReq = m.nextReq()
		m.grantAt = m.now
		m.emit(GrantLease{Req: m.grantReq, TTL: m.cfg.TTL})
	}
	if m.lease != 0 && m.kaReq != 0 && m.now-m.kaAt >= m.cfg.RequestTimeout {
		m.kaReq = 0
	}
	if m.lease != 0 && m.kaReq == 0 && m.now >= m.nextKA {
		m.kaReq = m.nextReq()
		m.kaAt = m.now
		m.emit(Keepalive{Req: m.kaReq, Lease: m.lease})
	}
	// Self-fencing.
	if m.state == Serving && m.now >= m.fenceAt() {
		m.state = Fenced
		m.emit(StopServing{Epoch: m.ownEpoch, Reason: "lease fence deadline"})
	}
	// Claim a lapsed volume when in the ISR and the lease has time left.
	if m.state == Follower && m.claimReq == 0 && m.lease != 0 && m.now < m.fenceAt() &&
		m.rec.Owner == "" && m.rec.InISR(m.cfg.Self) {
		m.claimReq = m.nextReq()
		m.state = Claiming
		m.emit(ProposeClaim{Req: m.claimReq, Expect: m.rec.Epoch, Epoch: m.rec.Epoch + 1, Lease: m.lease})
	}
}
