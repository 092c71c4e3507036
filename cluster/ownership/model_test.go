package ownership

// A randomized model of one volume on N nodes: drifting clocks, an etcd
// (linearizable record with leases and guarded transactions), FIFO links
// with random delays (TCP: no loss without a partition), partitions (from etcd only, from peers
// only, or both) and crashes. The nodes run the real Machine; the model
// plays the driver (lease requests, transactions, the write path with
// replica acks and timeouts, reconcile and resync) and a checker watches
// every acknowledgement.
//
// Invariants (checked as the simulation runs):
//
//	I1 all acks of an epoch come from one node, the one etcd made owner of it
//	I2 acks, in true time, carry non-decreasing epochs: an old owner has
//	   stopped acknowledging before a new owner's first ack leaves
//	I3 at a write's ack, every member of etcd's ISR has it durable
//	I4 a new owner holds every acknowledged write when it starts serving,
//	   and a read returns at least the newest write acknowledged before it
//	I5 epochs strictly increase (etcd), a node's persisted epoch never
//	   decreases (crashes included), and an owner acks only in an epoch it
//	   has persisted
//	I6 a replica never applies a write from an epoch lower than the
//	   highest it has persisted

import (
	"container/heap"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	flagSchedules = flag.Int("ownership.schedules", 0, "number of model schedules (0: default for the mode)")
	flagSeed      = flag.Uint64("ownership.seed", 0, "run only this model seed, with a trace on failure")
	flagFrom      = flag.Uint64("ownership.from", 1, "first seed of TestModel's schedules")
	flagTrace     = flag.Bool("ownership.trace", false, "print the trace of the -ownership.seed schedule")
)

// variant selects a deliberately broken driver or configuration.
type variant uint8

const (
	correct variant = iota
	// noMargin: the fence deadline ignores clock drift and has no margin.
	noMargin
	// ackBeforeRemoval: a write whose replica failed is acked as soon
	// as the removal is proposed, not when it committed.
	ackBeforeRemoval
	// acceptStale: replicas apply writes from lower epochs.
	acceptStale
)

func (v variant) String() string {
	return [...]string{"correct", "noMargin", "ackBeforeRemoval", "acceptStale"}[v]
}

const (
	keys           = 4
	tickLocal      = 10 * time.Millisecond
	replicaTimeout = 100 * time.Millisecond
	reqTimeout     = 400 * time.Millisecond
	resyncEvery    = 500 * time.Millisecond
	etcdIdx        = -1
	counterBits    = 40
	maxInFlight    = 16
)

type params struct {
	nodes     int
	ttl       time.Duration
	margin    time.Duration
	maxDrift  float64 // configured
	drift     float64 // actual bound
	horizon   time.Duration
	clientGap time.Duration // mean gap between client ops per node
	maxAckLag time.Duration // ack leaves the node up to this long after the check
	faultGap  time.Duration // mean gap between faults
}

func defaultParams(r *rand.Rand) params {
	return params{
		nodes:     3 + r.IntN(3),
		ttl:       time.Second,
		margin:    50 * time.Millisecond,
		maxDrift:  0.02,
		drift:     0.02,
		horizon:   6 * time.Second,
		clientGap: 4 * time.Millisecond,
		maxAckLag: 2 * time.Millisecond,
		faultGap:  time.Duration(300+r.IntN(1200)) * time.Millisecond,
	}
}

// --- event queue ---

type item struct {
	at  time.Duration
	seq uint64
	fn  func()
}

type queue []item

func (q queue) Len() int { return len(q) }
func (q queue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q queue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *queue) Push(x any)   { *q = append(*q, x.(item)) }
func (q *queue) Pop() any {
	old := *q
	it := old[len(old)-1]
	*q = old[:len(old)-1]
	return it
}

// --- simulation ---

type sim struct {
	p       params
	v       variant
	r       *rand.Rand
	now     time.Duration
	q       queue
	seq     uint64
	etcd    etcdModel
	nodes   []*node
	chk     checker
	lastDel map[[2]int]time.Duration
	err     error
	trace   []string
	tracing bool
	stats   stats
}

type stats struct {
	claims, writeAcks, readAcks, crashes, partitions int
}

func (s *sim) at(d time.Duration, fn func()) {
	s.seq++
	heap.Push(&s.q, item{at: s.now + d, seq: s.seq, fn: fn})
}

func (s *sim) logf(format string, args ...any) {
	if !s.tracing {
		return
	}
	s.trace = append(s.trace, fmt.Sprintf("%10v ", s.now)+fmt.Sprintf(format, args...))
}

func (s *sim) failf(format string, args ...any) {
	if s.err == nil {
		s.err = fmt.Errorf("t=%v: %s", s.now, fmt.Sprintf(format, args...))
		s.logf("VIOLATION %v", s.err)
	}
}

func (s *sim) cut(from, to int) bool {
	side := func(i, other int) bool {
		if i == etcdIdx {
			return false
		}
		n := s.nodes[i]
		if !n.up {
			return true
		}
		if other == etcdIdx {
			return n.cutEtcd
		}
		return n.cutPeers
	}
	return side(from, to) || side(to, from)
}

// send delivers fn from one endpoint to another after a random delay, in
// FIFO order per link, unless a partition, a crash or a loss drops it.
func (s *sim) send(from, to int, fn func()) {
	if s.cut(from, to) {
		return
	}
	d := time.Duration(100+s.r.IntN(2900)) * time.Microsecond
	if s.r.IntN(20) == 0 {
		d = time.Duration(5+s.r.IntN(100)) * time.Millisecond
	}
	k := [2]int{from, to}
	at := max(s.now+d, s.lastDel[k])
	s.lastDel[k] = at
	s.at(at-s.now, func() {
		if !s.cut(from, to) {
			fn()
		}
	})
}

func run(seed uint64, v variant, tracing bool) *sim {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	s := &sim{p: defaultParams(r), v: v, r: r, lastDel: map[[2]int]time.Duration{}, tracing: tracing}
	s.chk = checker{s: s, ackOwner: map[Epoch]NodeID{}, acked: map[int]uint64{}}
	var isr []NodeID
	for i := range s.p.nodes {
		n := &node{s: s, idx: i, id: NodeID(fmt.Sprintf("n%d", i)), store: map[int]uint64{},
			off:  time.Duration(r.IntN(1000)) * time.Second,
			rate: 1 + (2*r.Float64()-1)*s.p.drift}
		s.nodes = append(s.nodes, n)
		isr = append(isr, n.id)
	}
	s.etcd = etcdModel{s: s, leases: map[LeaseID]*elease{}, rec: Record{ISR: isr, Rev: 1}, owners: map[Epoch]NodeID{}}
	for _, n := range s.nodes {
		n.start()
		s.scheduleClient(n)
	}
	s.scheduleFault()
	s.at(250*time.Millisecond, s.etcd.resend)
	for s.q.Len() > 0 && s.err == nil {
		it := heap.Pop(&s.q).(item)
		if it.at > s.p.horizon {
			break
		}
		s.now = it.at
		it.fn()
	}
	return s
}

func (s *sim) exp(mean time.Duration) time.Duration {
	return time.Duration(s.r.ExpFloat64()*float64(mean)) + time.Microsecond
}

func (s *sim) scheduleClient(n *node) {
	s.at(s.exp(s.p.clientGap), func() {
		n.clientOp()
		s.scheduleClient(n)
	})
}

func (s *sim) scheduleFault() {
	s.at(s.exp(s.p.faultGap), func() {
		n := s.nodes[s.r.IntN(len(s.nodes))]
		if o := s.etcd.rec.Owner; o != "" && s.r.IntN(2) == 0 {
			n = s.node(o) // half the faults hit the owner
		}
		dur := time.Duration(100+s.r.IntN(2500)) * time.Millisecond
		switch k := s.r.IntN(4); {
		case k == 0 && n.up:
			s.stats.crashes++
			n.crash()
			s.at(dur, n.start)
		case k > 0 && n.up && !n.cutEtcd && !n.cutPeers:
			s.stats.partitions++
			n.cutEtcd = k != 2
			n.cutPeers = k != 1
			s.logf("%s partitioned etcd=%v peers=%v for %v", n.id, n.cutEtcd, n.cutPeers, dur)
			s.at(dur, func() { n.cutEtcd, n.cutPeers = false, false; s.logf("%s healed", n.id) })
		}
		s.scheduleFault()
	})
}

// adversary cuts a serving owner from etcd right after a keepalive
// answer now and then: the worst moment for its fence deadline, as the
// lease in etcd is then as young as the owner knows it to be.
func (s *sim) adversary(n *node, ev Event) {
	if ka, ok := ev.(KeepaliveResult); !ok || ka.Expired || !n.up || n.m.State() != Serving || n.cutEtcd || s.r.IntN(30) != 0 {
		return
	}
	s.stats.partitions++
	n.cutEtcd = true
	s.logf("%s cut from etcd after a keepalive", n.id)
	s.at(time.Duration(500+s.r.IntN(2000))*time.Millisecond, func() { n.cutEtcd = false; s.logf("%s healed", n.id) })
}

// --- etcd ---

type elease struct {
	node   int
	expiry time.Duration
}

type etcdModel struct {
	s      *sim
	leases map[LeaseID]*elease
	next   LeaseID
	rec    Record
	owners map[Epoch]NodeID
}

func (e *etcdModel) expire() {
	for id, l := range e.leases {
		if l.expiry <= e.s.now {
			delete(e.leases, id)
			e.detach(id)
		}
	}
}

func (e *etcdModel) detach(id LeaseID) {
	if e.rec.Lease == id && e.rec.Owner != "" {
		e.s.logf("etcd: owner %s lease %d gone", e.rec.Owner, id)
		e.rec.Owner, e.rec.Lease = "", 0
		e.changed()
	}
}

func (e *etcdModel) changed() {
	e.rec.Rev++
	e.broadcast()
}

func (e *etcdModel) broadcast() {
	for _, n := range e.s.nodes {
		rec := e.rec.Clone()
		inc := n.inc
		e.s.send(etcdIdx, n.idx, func() { n.deliver(inc, Observed{Record: rec}) })
	}
}

func (e *etcdModel) resend() {
	e.expire()
	e.broadcast()
	e.s.at(250*time.Millisecond, e.resend)
}

func (e *etcdModel) alive(id LeaseID) bool {
	l, ok := e.leases[id]
	return ok && l.expiry > e.s.now
}

func (e *etcdModel) grant(node int, ttl time.Duration) LeaseID {
	e.expire()
	e.next++
	e.leases[e.next] = &elease{node: node, expiry: e.s.now + ttl}
	e.s.at(ttl, e.expire)
	return e.next
}

func (e *etcdModel) keepalive(id LeaseID, ttl time.Duration) bool {
	e.expire()
	if !e.alive(id) {
		return false
	}
	e.leases[id].expiry = e.s.now + ttl
	e.s.at(ttl, e.expire)
	return true
}

func (e *etcdModel) revoke(id LeaseID) {
	e.expire()
	delete(e.leases, id)
	e.detach(id)
}

func (e *etcdModel) claim(n NodeID, c ProposeClaim) (bool, Record) {
	e.expire()
	if e.rec.Epoch != c.Expect || e.rec.Owner != "" || !e.rec.InISR(n) || !e.alive(c.Lease) {
		return false, e.rec.Clone()
	}
	if c.Epoch != e.rec.Epoch+1 {
		e.s.failf("I5: claim of epoch %d after %d", c.Epoch, e.rec.Epoch)
	}
	e.rec.Epoch, e.rec.Owner, e.rec.Lease = c.Epoch, n, c.Lease
	e.owners[c.Epoch] = n
	e.s.stats.claims++
	e.s.logf("etcd: %s owns epoch %d isr=%v", n, c.Epoch, e.rec.ISR)
	e.changed()
	return true, e.rec.Clone()
}

func (e *etcdModel) changeISR(n NodeID, c ProposeISRChange) (bool, Record) {
	e.expire()
	if e.rec.Epoch != c.Epoch || e.rec.Owner != n {
		return false, e.rec.Clone()
	}
	if c.Add {
		if !e.rec.InISR(c.Node) {
			e.rec.ISR = append(e.rec.ISR, c.Node)
		}
	} else {
		e.rec.ISR = slices.DeleteFunc(e.rec.ISR, func(x NodeID) bool { return x == c.Node })
	}
	e.s.logf("etcd: isr %v (add=%v %s)", e.rec.ISR, c.Add, c.Node)
	e.changed()
	return true, e.rec.Clone()
}

// --- nodes ---

type pending struct {
	key     int
	version uint64
	sentAt  time.Duration // local
	acks    map[NodeID]bool
	// catchups: the resync sessions of catching-up nodes this write was
	// forwarded to; it waits for them while they stay catching up.
	catchups map[NodeID]uint64
}

// catchup is a resync of a node outside the ISR: a snapshot, then every
// new write.
type catchup struct {
	session uint64 // owner version at the snapshot
	at      time.Duration
	acked   bool
}

type node struct {
	s   *sim
	idx int
	id  NodeID
	up  bool
	inc int
	// clock: local = off + rate·true
	off      time.Duration
	rate     float64
	cutEtcd  bool
	cutPeers bool
	// durable
	persisted Epoch
	store     map[int]uint64
	// volatile, reset by crash
	m        *Machine
	counter  uint64
	writes   map[uint64]*pending
	failed   map[NodeID]bool // reported with ReplicaFailed (this epoch)
	recon    map[NodeID]bool // reconcile member -> acked
	reconAt  time.Duration
	catching map[NodeID]*catchup
	snapAck  map[NodeID]uint64
	nextSync time.Duration
}

func (n *node) local() time.Duration {
	return n.off + time.Duration(float64(n.s.now)*n.rate)
}

func (n *node) start() {
	s := n.s
	n.up = true
	n.inc++
	cfg := Config{Self: n.id, TTL: s.p.ttl, Margin: s.p.margin, MaxDrift: s.p.maxDrift}
	if s.v == noMargin {
		cfg.Margin, cfg.MaxDrift = 0, 0
	}
	n.m = New(cfg, n.persisted)
	n.counter = 0
	n.writes = map[uint64]*pending{}
	n.failed = map[NodeID]bool{}
	n.recon = nil
	n.catching = map[NodeID]*catchup{}
	n.snapAck = map[NodeID]uint64{}
	s.logf("%s up (persisted epoch %d)", n.id, n.persisted)
	n.tick(n.inc)
}

func (n *node) crash() {
	n.s.logf("%s crashed", n.id)
	n.up = false
	n.m = nil
}

func (n *node) tick(inc int) {
	if !n.up || n.inc != inc {
		return
	}
	n.step(Tick{Now: n.local()})
	n.timeouts()
	n.s.at(time.Duration(float64(tickLocal)/n.rate), func() { n.tick(inc) })
}

// deliver steps an event that arrived for incarnation inc.
func (n *node) deliver(inc int, ev Event) {
	if !n.up || n.inc != inc {
		return
	}
	n.step(Tick{Now: n.local()})
	n.step(ev)
}

func (n *node) step(ev Event) {
	if err := n.m.Step(ev); err != nil {
		n.s.failf("%s: step %T: %v", n.id, ev, err)
		return
	}
	for _, a := range n.m.Ready() {
		n.do(a)
	}
	n.progress()
}

func (n *node) setPersisted(e Epoch) {
	if e < n.persisted {
		n.s.failf("I5: %s persisted epoch would go from %d to %d", n.id, n.persisted, e)
		return
	}
	n.persisted = e
}

// request sends a request to etcd and steps its answer, or timeout()
// after reqTimeout, whichever comes first.
func (n *node) request(do func() Event, timeout Event) {
	s, inc := n.s, n.inc
	done := false
	s.send(n.idx, etcdIdx, func() {
		ev := do()
		if ev == nil {
			return
		}
		s.send(etcdIdx, n.idx, func() {
			if !done {
				done = true
				n.deliver(inc, ev)
				s.adversary(n, ev)
			}
		})
	})
	if timeout != nil {
		s.at(reqTimeout, func() {
			if !done {
				done = true
				n.deliver(inc, timeout)
			}
		})
	}
}

func (n *node) do(a Action) {
	s := n.s
	switch a := a.(type) {
	case GrantLease:
		n.request(func() Event {
			return LeaseGranted{Req: a.Req, Lease: s.etcd.grant(n.idx, a.TTL), TTL: a.TTL}
		}, nil)
	case Keepalive:
		n.request(func() Event {
			ok := s.etcd.keepalive(a.Lease, s.p.ttl)
			return KeepaliveResult{Req: a.Req, Lease: a.Lease, TTL: s.p.ttl, Expired: !ok}
		}, KeepaliveResult{Req: a.Req, Lease: a.Lease, Err: errors.New("timeout")})
	case RevokeLease:
		n.request(func() Event { s.etcd.revoke(a.Lease); return nil }, nil)
	case ProposeClaim:
		n.request(func() Event {
			ok, rec := s.etcd.claim(n.id, a)
			return ClaimResult{Req: a.Req, OK: ok, Record: rec}
		}, ClaimResult{Req: a.Req, Err: errors.New("timeout")})
	case ProposeISRChange:
		n.request(func() Event {
			ok, rec := s.etcd.changeISR(n.id, a)
			return ISRResult{Epoch: a.Epoch, Node: a.Node, Add: a.Add, OK: ok, Record: rec}
		}, ISRResult{Epoch: a.Epoch, Node: a.Node, Add: a.Add})
	case PersistEpoch:
		n.setPersisted(max(n.persisted, a.Epoch))
	case Reconcile:
		s.logf("%s reconciling epoch %d members %v", n.id, a.Epoch, a.Members)
		n.failed = map[NodeID]bool{}
		n.counter = 0
		n.recon = map[NodeID]bool{}
		n.reconAt = n.local()
		for _, m := range a.Members {
			n.recon[m] = false
			n.sendSnapshot(m, a.Epoch)
		}
	case StartServing:
		s.logf("%s serving epoch %d until %v (local now %v)", n.id, a.Epoch, a.Until, n.local())
		s.chk.serving(n, a.Epoch)
		n.nextSync = n.local()
	case ServeUntil:
	case StopServing:
		s.logf("%s stops serving epoch %d: %s", n.id, a.Epoch, a.Reason)
		clear(n.writes)
		clear(n.catching)
	default:
		s.failf("unknown action %T", a)
	}
}

func (n *node) version() uint64 { return uint64(n.m.Epoch())<<counterBits | n.counter }

// sendSnapshot sends this node's whole store to peer m (reconcile or
// resync): the peer replaces its content with it.
func (n *node) sendSnapshot(m NodeID, e Epoch) {
	snap := maps.Clone(n.store)
	v := n.version()
	peer := n.s.node(m)
	inc := n.inc
	n.s.send(n.idx, peer.idx, func() {
		if !peer.up || !peer.accept(e) {
			return
		}
		peer.store = snap
		n.s.logf("%s applies snapshot %x from %s: %v", peer.id, v, n.id, snap)
		n.s.send(peer.idx, n.idx, func() {
			if n.up && n.inc == inc && n.m.Epoch() == e {
				n.snapAck[m] = max(n.snapAck[m], v)
				if n.recon != nil {
					if _, ok := n.recon[m]; ok {
						n.recon[m] = true
					}
				}
				if c := n.catching[m]; c != nil && c.session == v && !c.acked && n.m.State() == Serving {
					c.acked = true
					n.step(ResyncDone{Node: m})
				}
				n.progress()
			}
		})
	})
}

func (s *sim) node(id NodeID) *node {
	for _, n := range s.nodes {
		if n.id == id {
			return n
		}
	}
	panic("no node " + id)
}

// accept is the replica's epoch rule (replication.Server): reject lower
// epochs, persist a higher one before applying.
func (n *node) accept(e Epoch) bool {
	if e < n.persisted {
		if n.s.v != acceptStale {
			return false
		}
		n.s.failf("I6: %s applies a write of epoch %d after persisting %d", n.id, e, n.persisted)
		return true
	}
	n.setPersisted(e)
	return true
}

func (n *node) clientOp() {
	if !n.up {
		return
	}
	s := n.s
	if !n.m.MayAck(n.local()) {
		return
	}
	key := s.r.IntN(keys)
	e := n.m.Epoch()
	if s.r.IntN(2) == 0 {
		s.chk.read(n, e, key, n.store[key])
		return
	}
	if len(n.writes) >= maxInFlight {
		return // the bounded queue is full: the initiator sees BUSY
	}
	n.counter++
	v := n.version()
	n.store[key] = v
	w := &pending{key: key, version: v, sentAt: n.local(), acks: map[NodeID]bool{}, catchups: map[NodeID]uint64{}}
	n.writes[v] = w
	targets := n.m.Required()
	for m, c := range n.catching {
		w.catchups[m] = c.session
		if !slices.Contains(targets, m) {
			targets = append(targets, m)
		}
	}
	inc := n.inc
	for _, m := range targets {
		peer := s.node(m)
		s.send(n.idx, peer.idx, func() {
			if !peer.up {
				return
			}
			if !peer.accept(e) {
				return // a nack: the owner times out the replica
			}
			peer.store[key] = v
			s.logf("%s applies %x key %d", peer.id, v, key)
			s.send(peer.idx, n.idx, func() {
				if n.up && n.inc == inc {
					if w := n.writes[v]; w != nil {
						w.acks[m] = true
						n.progress()
					}
				}
			})
		})
	}
	n.progress()
}

// progress acks the writes that may be acked and finishes a reconcile.
func (n *node) progress() {
	if !n.up || n.m == nil || (len(n.writes) == 0 && n.recon == nil) {
		return
	}
	if n.m.State() == Reconciling && n.recon != nil {
		done := true
		rec := n.m.Record()
		for m, ok := range n.recon {
			if !ok && rec.InISR(m) {
				done = false
			}
		}
		if done {
			n.recon = nil
			n.step(ReconcileDone{Epoch: n.m.Epoch()})
			return
		}
	}
	if len(n.writes) == 0 {
		return
	}
	if n.m.State() != Serving {
		clear(n.writes)
		return
	}
	req := n.m.Required()
	for v, w := range n.writes {
		ready := true
		for _, m := range req {
			if !w.acks[m] && w.version > n.snapAck[m] && !(n.s.v == ackBeforeRemoval && n.failed[m]) {
				ready = false
			}
		}
		for m, sess := range w.catchups {
			if c := n.catching[m]; c != nil && c.session == sess && !w.acks[m] {
				ready = false
			}
		}
		if !ready {
			continue
		}
		delete(n.writes, v)
		if n.m.MayAck(n.local()) {
			n.s.chk.writeAck(n, n.m.Epoch(), w)
		}
	}
}

// timeouts reports replicas that did not answer in time and starts resyncs.
func (n *node) timeouts() {
	st := n.m.State()
	if st != Serving && st != Reconciling {
		return
	}
	now := n.local()
	report := func(m NodeID) {
		if !n.failed[m] {
			n.failed[m] = true
			n.s.logf("%s: replica %s failed", n.id, m)
		}
		delete(n.catching, m)
		n.step(ReplicaFailed{Node: m})
	}
	if n.recon != nil && now-n.reconAt > replicaTimeout {
		for m, ok := range n.recon {
			if !ok {
				report(m)
			}
		}
	}
	req := n.m.Required()
	for _, w := range n.writes {
		if now-w.sentAt > replicaTimeout {
			for _, m := range req {
				if !w.acks[m] && w.version > n.snapAck[m] {
					report(m)
				}
			}
			for m, sess := range w.catchups {
				if c := n.catching[m]; c != nil && c.session == sess && !w.acks[m] {
					n.s.logf("%s: catching-up %s missed %x", n.id, m, w.version)
					delete(n.catching, m)
				}
			}
		}
	}
	for m, c := range n.catching {
		if now-c.at > replicaTimeout && !c.acked {
			delete(n.catching, m)
		}
	}
	if st == Serving && now >= n.nextSync {
		n.nextSync = now + resyncEvery
		rec := n.m.Record()
		for _, p := range n.s.nodes {
			if p.id != n.id && !rec.InISR(p.id) && !slices.Contains(req, p.id) {
				if _, ok := n.catching[p.id]; !ok {
					n.catching[p.id] = &catchup{session: n.version(), at: now}
					delete(n.snapAck, p.id)
					delete(n.failed, p.id)
					n.sendSnapshot(p.id, n.m.Epoch())
				}
			}
		}
	}
	n.progress()
}

// --- checker ---

type checker struct {
	s        *sim
	ackOwner map[Epoch]NodeID
	lastAck  Epoch
	acked    map[int]uint64 // newest acknowledged version per key
}

// leave records that an ack of epoch e by n leaves the node lag later.
func (c *checker) leave(n *node, e Epoch) {
	c.s.at(time.Duration(c.s.r.Int64N(int64(c.s.p.maxAckLag)+1)), func() {
		if o, ok := c.ackOwner[e]; ok && o != n.id {
			c.s.failf("I1: %s and %s both acknowledged in epoch %d", o, n.id, e)
		}
		c.ackOwner[e] = n.id
		if c.s.etcd.owners[e] != n.id {
			c.s.failf("I1: %s acknowledged in epoch %d owned by %q", n.id, e, c.s.etcd.owners[e])
		}
		if e < c.lastAck {
			c.s.failf("I2: %s acknowledged in epoch %d after an ack in epoch %d", n.id, e, c.lastAck)
		}
		c.lastAck = max(c.lastAck, e)
	})
	if n.persisted < e {
		c.s.failf("I5: %s acknowledges in epoch %d, persisted %d", n.id, e, n.persisted)
	}
}

func (c *checker) writeAck(n *node, e Epoch, w *pending) {
	c.s.stats.writeAcks++
	for _, m := range c.s.etcd.rec.ISR {
		if got := c.s.node(m).store[w.key]; got < w.version {
			c.s.failf("I3: %s acks write %x of key %d; ISR member %s has %x (isr %v)", n.id, w.version, w.key, m, got, c.s.etcd.rec.ISR)
		}
	}
	c.s.logf("%s acks write %x key %d", n.id, w.version, w.key)
	c.acked[w.key] = max(c.acked[w.key], w.version)
	c.leave(n, e)
}

func (c *checker) read(n *node, e Epoch, key int, got uint64) {
	c.s.stats.readAcks++
	if got < c.acked[key] {
		c.s.failf("I4: %s (epoch %d) reads key %d at %x, acknowledged %x", n.id, e, key, got, c.acked[key])
	}
	c.leave(n, e)
}

func (c *checker) serving(n *node, e Epoch) {
	for k, v := range c.acked {
		if n.store[k] < v {
			c.s.failf("I4: new owner %s (epoch %d) lacks acknowledged write %x of key %d (has %x)", n.id, e, v, k, n.store[k])
		}
	}
}

// --- tests ---

func schedules(t *testing.T) int {
	if *flagSchedules > 0 {
		return *flagSchedules
	}
	switch {
	case raceEnabled:
		return 40 // the model is one goroutine; -race only slows it
	case testing.Short():
		return 60
	}
	return 200
}

func report(t *testing.T, seed uint64, v variant) {
	t.Helper()
	s := run(seed, v, true)
	if *flagTrace || s.err != nil {
		t.Logf("trace of seed %d:\n%s", seed, strings.Join(s.trace, "\n"))
	}
	if s.err != nil {
		t.Fatalf("seed %d (%v): %v", seed, v, s.err)
	}
}

func TestModel(t *testing.T) {
	if *flagSeed != 0 {
		report(t, *flagSeed, correct)
		return
	}
	n := schedules(t)
	start := time.Now()
	var tot stats
	for seed := *flagFrom; seed < *flagFrom+uint64(n); seed++ {
		s := run(seed, correct, false)
		if s.err != nil {
			t.Fatalf("seed %d: %v\nreplay with: go test ./cluster/ownership -run 'TestModel$' -ownership.seed=%d", seed, s.err, seed)
		}
		tot.claims += s.stats.claims
		tot.writeAcks += s.stats.writeAcks
		tot.readAcks += s.stats.readAcks
		tot.crashes += s.stats.crashes
		tot.partitions += s.stats.partitions
	}
	t.Logf("%d schedules in %v: %d claims (epochs), %d write acks, %d read acks, %d crashes, %d partitions",
		n, time.Since(start).Round(time.Millisecond), tot.claims, tot.writeAcks, tot.readAcks, tot.crashes, tot.partitions)
	if tot.claims < 2*n || tot.writeAcks < 100*n {
		t.Errorf("model too quiet: %d claims, %d write acks over %d schedules", tot.claims, tot.writeAcks, n)
	}
}

// TestModelCatchesBrokenVariants checks that the checker can fail: each
// deliberately broken variant must violate an invariant within a bounded
// number of schedules.
func TestModelCatchesBrokenVariants(t *testing.T) {
	for _, tc := range []struct {
		v    variant
		want string // invariant expected to fail
	}{
		{noMargin, "I2"},
		{ackBeforeRemoval, "I3"},
		{acceptStale, "I6"},
	} {
		t.Run(tc.v.String(), func(t *testing.T) {
			if raceEnabled && tc.v == noMargin {
				t.Skip("needs a few hundred schedules; run without -race")
			}
			for seed := uint64(1); seed <= 2000; seed++ {
				s := run(seed, tc.v, false)
				if s.err == nil {
					continue
				}
				if !strings.Contains(s.err.Error(), tc.want+":") {
					t.Logf("seed %d: caught by another invariant: %v", seed, s.err)
				} else {
					t.Logf("seed %d: caught: %v", seed, s.err)
				}
				return
			}
			t.Fatalf("variant %v not caught in 2000 schedules", tc.v)
		})
	}
}
