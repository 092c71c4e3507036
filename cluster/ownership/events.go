package ownership

import "time"

// Event is an input to Machine.Step. The concrete types are the ones in
// this file.
type Event interface{ isEvent() }

// Tick advances the machine's clock to Now, a reading of the node's
// monotonic clock. Drivers tick at least every KeepaliveInterval/4.
type Tick struct{ Now time.Duration }

// LeaseGranted answers GrantLease request Req: etcd granted Lease with TTL.
type LeaseGranted struct {
	Req   uint64
	Lease LeaseID
	TTL   time.Duration
}

// KeepaliveResult answers Keepalive request Req. Expired means etcd no
// longer knows the lease; Err is a transient failure (no answer).
type KeepaliveResult struct {
	Req     uint64
	Lease   LeaseID
	TTL     time.Duration
	Expired bool
	Err     error
}

// Observed carries the volume's record as read from etcd (watch or get).
type Observed struct{ Record Record }

// ClaimResult answers ProposeClaim request Req. OK means the transaction
// committed; Record is the record after it (also when it did not commit).
// Err means the outcome is unknown (timeout); a later Observed tells.
type ClaimResult struct {
	Req    uint64
	OK     bool
	Record Record
	Err    error
}

// ISRResult answers ProposeISRChange for Node in Epoch. OK means the
// transaction committed and Record is the record after it. !OK means it
// did not commit or its outcome is unknown.
type ISRResult struct {
	Epoch  Epoch
	Node   NodeID
	Add    bool
	OK     bool
	Record Record
}

// ReplicaFailed reports that the data path gave up on Node (an ack timed
// out, the connection broke, or it refused a write).
type ReplicaFailed struct{ Node NodeID }

// ResyncDone reports that Node, not in the ISR, has caught up with the
// owner and receives every new write.
type ResyncDone struct{ Node NodeID }

// ReconcileDone reports that every Reconcile member of Epoch either holds
// the owner's content or has been removed from the ISR.
type ReconcileDone struct{ Epoch Epoch }

func (Tick) isEvent()            {}
func (LeaseGranted) isEvent()    {}
func (KeepaliveResult) isEvent() {}
func (Observed) isEvent()        {}
func (ClaimResult) isEvent()     {}
func (ISRResult) isEvent()       {}
func (ReplicaFailed) isEvent()   {}
func (ResyncDone) isEvent()      {}
func (ReconcileDone) isEvent()   {}

// Action is an output of Machine.Ready. The concrete types are the ones in
// this file.
type Action interface{ isAction() }

// GrantLease asks etcd for a lease of TTL; answer with LeaseGranted.
type GrantLease struct {
	Req uint64
	TTL time.Duration
}

// Keepalive renews Lease; answer with KeepaliveResult.
type Keepalive struct {
	Req   uint64
	Lease LeaseID
}

// RevokeLease revokes Lease (best effort; no answer).
type RevokeLease struct{ Lease LeaseID }

// ProposeClaim runs the claim transaction (see the package doc): if the
// epoch is Expect, there is no owner and this node is in the ISR, become
// owner with Epoch attached to Lease. Answer with ClaimResult.
type ProposeClaim struct {
	Req           uint64
	Expect, Epoch Epoch
	Lease         LeaseID
}

// ProposeISRChange runs the ISR transaction guarded by Epoch and
// ownership: add or remove Node. Answer with ISRResult.
type ProposeISRChange struct {
	Epoch Epoch
	Node  NodeID
	Add   bool
}

// PersistEpoch makes Epoch durable as the highest epoch seen, before any
// later action runs.
type PersistEpoch struct{ Epoch Epoch }

// Reconcile brings Members (the ISR without this node) to this node's
// content for Epoch; answer with ReplicaFailed for members that fail and
// ReconcileDone when finished.
type Reconcile struct {
	Epoch   Epoch
	Members []NodeID
}

// StartServing starts serving I/O in Epoch until local time Until
// (ALUA active/optimized).
type StartServing struct {
	Epoch Epoch
	Until time.Duration
}

// ServeUntil moves the fence deadline of a serving owner to Until.
type ServeUntil struct {
	Epoch Epoch
	Until time.Duration
}

// StopServing stops acknowledging I/O at once (fence; ALUA standby).
type StopServing struct {
	Epoch  Epoch
	Reason string
}

func (GrantLease) isAction()       {}
func (Keepalive) isAction()        {}
func (RevokeLease) isAction()      {}
func (ProposeClaim) isAction()     {}
func (ProposeISRChange) isAction() {}
func (PersistEpoch) isAction()     {}
func (Reconcile) isAction()        {}
func (StartServing) isAction()     {}
func (ServeUntil) isAction()       {}
func (StopServing) isAction()      {}
