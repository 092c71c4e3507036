package owner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"stave.dev/stave/cluster/ownership"
	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/replication"
)

// Defaults of Config.
const (
	// DefaultTTL is the lease TTL: issue 6 wants a failover under 5 s
	// after the owner dies, and the new owner can claim only once etcd
	// expired the old lease.
	DefaultTTL = 2 * time.Second
	// DefaultMaxDrift bounds the rate difference between the node's clock
	// and etcd's.
	DefaultMaxDrift = 0.01
	// maxTick is the longest time between two Ticks.
	maxTick = 50 * time.Millisecond
	// eventQueue bounds the results waiting for the loop; senders block
	// (and select on the context) when it is full.
	eventQueue = 64
	// retryMin and retryMax bound the pause before reading the record
	// again after a failed read or watch.
	retryMin = 50 * time.Millisecond
	retryMax = time.Second
)

// More sentinel errors.
var (
	// ErrNotOwner means an ISR change was asked for an epoch this node
	// does not own (any more).
	ErrNotOwner = errors.New("owner: this node does not own the volume in that epoch")
	// ErrNotCommitted means an ISR change did not commit, or its outcome is
	// unknown; the owner stepped down.
	ErrNotCommitted = errors.New("owner: ISR change not committed")
	// ErrStopped means the driver is not running.
	ErrStopped = errors.New("owner: driver stopped")
)

// Handler is what the driver drives on this node: the data path of the
// volume. The driver calls it from one goroutine at a time, never
// concurrently with itself. Serve and Stop must return promptly (they are
// called from the event loop); Reconcile runs in a goroutine of its own.
type Handler interface {
	// Reconcile opens the data path for epoch, which this node now owns,
	// and brings members (the ISR without this node) to this node's
	// content, removing the members it cannot reach through Driver.ISR().
	// It returns nil when every member is done or removed. It must return
	// soon after ctx is cancelled (the epoch was lost, or the driver
	// stops). An error gives the epoch up: the driver calls Stop and
	// revokes its lease so that another ISR member can claim.
	Reconcile(ctx context.Context, epoch uint64, members []string) error
	// Serve starts acknowledging I/O in epoch (after its Reconcile
	// returned nil), or moves the deadline: acknowledge only while
	// time.Now().Before(until). until carries a monotonic clock reading.
	// Once until has passed the data path stops acknowledging by itself;
	// a later Serve of the same epoch may resume it (a late keepalive).
	Serve(epoch uint64, until time.Time)
	// Stop ends epoch on this node: stop acknowledging at once and close
	// what Reconcile opened. It is called once for every epoch given to
	// Reconcile, after Reconcile returned, and no Serve of that epoch
	// follows.
	Stop(epoch uint64, reason string)
}

// Config configures a Driver.
type Config struct {
	// Logger receives state transitions; nil discards.
	Logger *slog.Logger
	// Client is the etcd client. Required.
	Client *clientv3.Client
	// Volume is the volume's name. Required.
	Volume string
	// Self is this node's ID. Required.
	Self string
	// Epochs persists the highest epoch this node has seen. Required.
	Epochs *replication.EpochStore
	// EpochKey is the volume's key in Epochs; empty means Volume. The
	// daemon adds the volume's UUID, so that a volume created again under
	// a deleted one's name starts from epoch 0 on every node.
	EpochKey string
	// Handler is the data path. Required.
	Handler Handler
	// TTL is the lease TTL, whole seconds; zero means DefaultTTL.
	TTL time.Duration
	// Margin is how long before the lease's certain expiry the owner stops
	// acknowledging; zero means TTL/10.
	Margin time.Duration
	// MaxDrift bounds the clock rate difference with etcd; zero means
	// DefaultMaxDrift.
	MaxDrift float64
	// KeepaliveInterval is the keepalive period; zero means TTL/4.
	KeepaliveInterval time.Duration
	// RequestTimeout bounds a lease grant or keepalive, which the machine
	// then sends again; zero means TTL/2. Transactions get TTL.
	RequestTimeout time.Duration
	// ClaimDelay is how long to wait before running a claim, so that the
	// preferred node (smaller delay) usually wins when all nodes are up.
	ClaimDelay time.Duration
}

// Status is a snapshot of a driver's view of the volume.
type Status struct {
	// State is the machine's state: follower, claiming, reconciling,
	// serving or fenced; "stopped" once Run has returned.
	State string
	// Epoch, Owner and ISR are the record as last seen in etcd; Owner is
	// "" while nobody owns the volume.
	Epoch uint64
	Owner string
	ISR   []string
	// OwnEpoch is the epoch this node owns, 0 if none.
	OwnEpoch uint64
	// Serving reports whether the Handler was told to serve (until
	// LeaseDeadline) and not stopped.
	Serving bool
	// LeaseDeadline is the fence deadline of this node's lease; zero
	// without a lease.
	LeaseDeadline time.Time
	// Required lists the other nodes that must have a write durable
	// before it is acknowledged (ISR plus nodes being added).
	Required []string
}

// Driver runs the ownership machine of one volume on one node against
// etcd (see the package doc). New returns it; Run runs it once. Status,
// Changed and ISR are safe for concurrent use.
type Driver struct {
	cfg     Config
	log     *slog.Logger
	started atomic.Bool
	events  chan any        // results of goroutines, for the loop
	reqs    chan isrRequest // ISR changes from the data path
	changed chan struct{}
	done    chan struct{} // closed when the loop stops taking requests

	mu struct {
		sync.Mutex
		status Status
	}

	// Owned by the loop (Run).
	m        *ownership.Machine
	ctx      context.Context // Run's context, cancelled on return
	wg       sync.WaitGroup  // every goroutine Run started
	start    time.Time
	lease    ownership.LeaseID // the lease the machine holds, as far as known
	grantReq uint64            // the latest GrantLease executed
	revoked  ownership.LeaseID // revoked by the driver itself (reconcile failure)
	// hEpoch is the epoch given to Handler.Reconcile and not yet stopped.
	hEpoch      ownership.Epoch
	reconciling bool // Handler.Reconcile of hEpoch is running
	rcancel     context.CancelFunc
	ending      string               // why hEpoch ends once Reconcile returns
	pending     *ownership.Reconcile // waits for hEpoch to stop
	serving     bool
	inflight    map[ownership.NodeID]int // ISR proposals executing
	waiters     []*isrRequest
	// claimAfter delays claims after this node gave up an epoch.
	claimAfter time.Time
	lastState  ownership.State
	fatal      error
	stopped    bool // Run has returned
	// warnedBehind: the record's epoch below the persisted one was logged.
	warnedBehind bool
}

// reconcileReturned reports Handler.Reconcile's return.
type reconcileReturned struct {
	epoch ownership.Epoch
	err   error
}

// New checks cfg and returns a driver. It reads the persisted epoch.
func New(cfg Config) (*Driver, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("owner: Config.Client is required")
	case cfg.Volume == "":
		return nil, errors.New("owner: Config.Volume is required")
	case cfg.Self == "":
		return nil, errors.New("owner: Config.Self is required")
	case cfg.Epochs == nil:
		return nil, errors.New("owner: Config.Epochs is required")
	case cfg.Handler == nil:
		return nil, errors.New("owner: Config.Handler is required")
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.TTL < time.Second || cfg.TTL%time.Second != 0 {
		return nil, fmt.Errorf("owner: lease TTL %v: etcd leases have whole seconds; use 1s or more", cfg.TTL)
	}
	if cfg.Margin == 0 {
		cfg.Margin = cfg.TTL / 10
	}
	if cfg.MaxDrift == 0 {
		cfg.MaxDrift = DefaultMaxDrift
	}
	if cfg.KeepaliveInterval == 0 {
		cfg.KeepaliveInterval = cfg.TTL / 4
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = cfg.TTL / 2
	}
	if cfg.MaxDrift < 0 || cfg.MaxDrift >= 0.5 || cfg.Margin < 0 ||
		cfg.KeepaliveInterval+cfg.Margin >= time.Duration(float64(cfg.TTL)*(1-cfg.MaxDrift)) {
		return nil, fmt.Errorf("owner: keepalive interval %v plus margin %v must be well under the lease TTL %v (max drift %v)",
			cfg.KeepaliveInterval, cfg.Margin, cfg.TTL, cfg.MaxDrift)
	}
	if cfg.EpochKey == "" {
		cfg.EpochKey = cfg.Volume
	}
	persisted, err := cfg.Epochs.Get(cfg.EpochKey)
	if err != nil {
		return nil, fmt.Errorf("owner: persisted epoch of %s: %w", cfg.Volume, err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Driver{
		cfg:      cfg,
		log:      log.With(logkey.Component, "owner", logkey.Volume, cfg.Volume, logkey.Node, cfg.Self),
		events:   make(chan any, eventQueue),
		reqs:     make(chan isrRequest),
		changed:  make(chan struct{}, 1),
		done:     make(chan struct{}),
		inflight: map[ownership.NodeID]int{},
	}
	d.m = ownership.New(ownership.Config{
		Self:              ownership.NodeID(cfg.Self),
		TTL:               cfg.TTL,
		Margin:            cfg.Margin,
		MaxDrift:          cfg.MaxDrift,
		KeepaliveInterval: cfg.KeepaliveInterval,
		RequestTimeout:    cfg.RequestTimeout,
	}, ownership.Epoch(persisted))
	d.mu.status = Status{State: ownership.Follower.String()}
	return d, nil
}

// Status returns the driver's current view.
func (d *Driver) Status() Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.mu.status
	s.ISR = slices.Clone(s.ISR)
	s.Required = slices.Clone(s.Required)
	return s
}

// Changed returns a channel that receives a value after Status changed.
// Notifications are coalesced: one receive may stand for several changes,
// so read Status after it. It has one consumer.
func (d *Driver) Changed() <-chan struct{} { return d.changed }

// Run runs the driver until ctx is done or persisting an epoch fails. It
// then stops its goroutines, waits for a running Handler.Reconcile,
// calls Handler.Stop for the epoch it owned, revokes its lease (best
// effort) and returns: nil after ctx ended, the persistence error
// otherwise. Run may be called once.
func (d *Driver) Run(ctx context.Context) error {
	if !d.started.CompareAndSwap(false, true) {
		return errors.New("owner: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	d.ctx = ctx
	d.start = time.Now()
	d.log.Info("ownership driver started", logkey.Epoch, d.m.Persisted())

	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.watch(ctx)
	}()

	timer := time.NewTimer(0)
	defer timer.Stop()
	for d.fatal == nil {
		var ev any
		select {
		case <-ctx.Done():
		case <-timer.C:
		case ev = <-d.events:
		case r := <-d.reqs:
			ev = &r
		}
		if ctx.Err() != nil {
			break
		}
		d.step(ownership.Tick{Now: d.now()})
		switch e := ev.(type) {
		case nil:
		case *isrRequest:
			d.handleISR(e)
		case reconcileReturned:
			d.reconcileReturned(e)
		case ownership.Event:
			d.handleEvent(e)
		}
		d.process()
		timer.Reset(d.nextWake())
	}

	// Shut down: no more ISR calls, no more goroutines, then Stop, then
	// revoke.
	close(d.done)
	for _, w := range d.waiters {
		w.reply <- ErrStopped
	}
	d.waiters = nil
	cancel()
	d.wg.Wait()
	reason := "driver stopped"
	if d.fatal != nil {
		reason = d.fatal.Error()
	}
	if d.hEpoch != 0 {
		d.stopHandler(reason)
	}
	if d.lease != 0 {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.RequestTimeout)
		if _, err := d.cfg.Client.Revoke(rctx, clientv3.LeaseID(d.lease)); err != nil {
			d.log.Warn("cannot revoke the lease; it lapses by itself", logkey.Err, err)
		}
		rcancel()
		d.lease = 0
	}
	d.stopped = true
	d.publish()
	d.log.Info("ownership driver stopped", "reason", reason)
	return d.fatal
}

// now is the machine's clock.
func (d *Driver) now() time.Duration { return time.Since(d.start) }

// wall converts a machine time to a time.Time with a monotonic reading.
func (d *Driver) wall(t time.Duration) time.Time { return d.start.Add(t) }

// step feeds ev to the machine; its errors are driver bugs.
func (d *Driver) step(ev ownership.Event) {
	if err := d.m.Step(ev); err != nil {
		d.log.Error("ownership machine refused an event", "event", fmt.Sprintf("%T", ev), logkey.Err, err)
	}
}

// nextWake is when the loop must tick next: within maxTick, and at the
// fence deadline and the lease's certain expiry.
func (d *Driver) nextWake() time.Duration {
	now := d.now()
	wake := maxTick
	if f, ok := d.m.FenceAt(); ok {
		for _, t := range []time.Duration{f, f + d.cfg.Margin} {
			if t > now && t-now < wake {
				wake = t - now
			}
		}
	}
	return wake
}

// handleEvent feeds a result to the machine.
func (d *Driver) handleEvent(ev ownership.Event) {
	switch e := ev.(type) {
	case ownership.LeaseGranted:
		if e.Req != d.grantReq {
			// The machine gave this grant up and asked again: nobody will
			// keep it alive.
			d.revoke(e.Lease)
			return
		}
		d.lease = e.Lease
	case ownership.Observed:
		if p := d.m.Persisted(); e.Record.Epoch < p && len(e.Record.ISR) > 0 && !d.warnedBehind {
			// etcd went back (restored from a backup, or a volume of the
			// same name was deleted and created again): replicas that saw
			// the higher epoch will refuse this node's claims.
			d.warnedBehind = true
			d.log.Warn("etcd's ownership epoch is below the epoch persisted on this node; delete the node's epoch file if the volume was re-created",
				logkey.Epoch, e.Record.Epoch, "persisted", p)
		}
	case ownership.ISRResult:
		if d.inflight[e.Node]--; d.inflight[e.Node] <= 0 {
			delete(d.inflight, e.Node)
		}
		d.step(e)
		for i := 0; i < len(d.waiters); i++ {
			w := d.waiters[i]
			if ownership.NodeID(w.node) != e.Node || w.add != e.Add || ownership.Epoch(w.epoch) != e.Epoch {
				continue
			}
			if e.OK {
				w.reply <- nil
			} else {
				w.reply <- fmt.Errorf("%w: %s of %s in epoch %d", ErrNotCommitted, addRemove(e.Add), e.Node, e.Epoch)
			}
			d.waiters = slices.Delete(d.waiters, i, i+1)
			i--
		}
		return
	}
	d.step(ev)
}

// process executes the machine's actions (see the package doc's ordering
// rules), answers the ISR calls that can be answered, and publishes the
// status.
func (d *Driver) process() {
	for {
		acts := d.m.Ready()
		if len(acts) == 0 {
			break
		}
		// Rule 1: end the Handler's epoch before anything else.
		if d.hEpoch != 0 && d.m.Epoch() != d.hEpoch {
			reason := "ownership lost"
			for _, a := range acts {
				if s, ok := a.(ownership.StopServing); ok && s.Epoch == d.hEpoch {
					reason = s.Reason
					break
				}
			}
			d.failStaleWaiters()
			d.endEpoch(reason)
		}
		for _, a := range acts {
			d.exec(a)
			if d.fatal != nil {
				return
			}
		}
	}
	if d.hEpoch != 0 && d.m.Epoch() != d.hEpoch {
		d.failStaleWaiters()
		d.endEpoch("ownership lost")
	}
	d.resolveWaiters()
	if st := d.m.State(); st != d.lastState {
		rec := d.m.Record()
		d.log.Info("ownership state", "state", st.String(), "from", d.lastState.String(),
			logkey.Epoch, rec.Epoch, logkey.Owner, rec.Owner)
		d.lastState = st
	}
	d.publish()
}

// exec executes one action.
func (d *Driver) exec(a ownership.Action) {
	switch a := a.(type) {
	case ownership.GrantLease:
		d.grantReq = a.Req
		d.goAsync(func(ctx context.Context) any { return d.grant(ctx, a) })
	case ownership.Keepalive:
		d.goAsync(func(ctx context.Context) any { return d.keepalive(ctx, a) })
	case ownership.RevokeLease:
		if a.Lease == d.lease {
			d.lease = 0
		}
		if a.Lease != d.revoked {
			d.revoke(a.Lease)
		}
	case ownership.ProposeClaim:
		delay := d.cfg.ClaimDelay + max(0, time.Until(d.claimAfter))
		d.goAsync(func(ctx context.Context) any { return d.claim(ctx, a, delay) })
	case ownership.ProposeISRChange:
		d.inflight[a.Node]++
		d.goAsync(func(ctx context.Context) any { return d.changeISR(ctx, a) })
	case ownership.PersistEpoch:
		got, err := d.cfg.Epochs.Raise(d.cfg.EpochKey, uint64(a.Epoch))
		if err != nil {
			d.fatal = fmt.Errorf("owner: persisting epoch %d of %s: %w (check the data directory's disk)", a.Epoch, d.cfg.Volume, err)
			d.log.Error("cannot persist the epoch; stopping", logkey.Err, err)
			return
		}
		if got > uint64(a.Epoch) {
			d.log.Warn("persisted epoch is higher than etcd's record", logkey.Epoch, a.Epoch, "persisted", got)
		}
	case ownership.Reconcile:
		if d.hEpoch != 0 {
			d.pending = &a // after the previous epoch's Reconcile returned
			return
		}
		d.startReconcile(a)
	case ownership.StartServing:
		if d.hEpoch == a.Epoch && !d.reconciling {
			if !d.serving {
				d.log.Info("serving", logkey.Epoch, a.Epoch)
			}
			d.serving = true
			d.cfg.Handler.Serve(uint64(a.Epoch), d.wall(a.Until))
		}
	case ownership.ServeUntil:
		if d.hEpoch == a.Epoch && d.serving {
			d.cfg.Handler.Serve(uint64(a.Epoch), d.wall(a.Until))
		}
	case ownership.StopServing:
		if d.hEpoch == a.Epoch && d.m.Epoch() == a.Epoch {
			// Fenced but still the owner: the Handler's deadline has
			// passed; a late keepalive may let it serve again.
			d.log.Warn("fenced: no keepalive answered in time", logkey.Epoch, a.Epoch, "reason", a.Reason)
		}
	}
}

// goAsync runs f in a goroutine owned by Run and feeds its result back.
func (d *Driver) goAsync(f func(ctx context.Context) any) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		ev := f(d.ctx)
		if ev == nil {
			return
		}
		select {
		case d.events <- ev:
		case <-d.ctx.Done():
		}
	}()
}

// startReconcile gives a.Epoch to the Handler.
func (d *Driver) startReconcile(a ownership.Reconcile) {
	d.hEpoch, d.reconciling, d.ending = a.Epoch, true, ""
	members := make([]string, 0, len(a.Members))
	for _, n := range a.Members {
		members = append(members, string(n))
	}
	rctx, cancel := context.WithCancel(d.ctx)
	d.rcancel = cancel
	d.log.Info("won the volume; reconciling", logkey.Epoch, a.Epoch, logkey.Replicas, members)
	h := d.cfg.Handler
	d.goAsync(func(context.Context) any {
		err := h.Reconcile(rctx, uint64(a.Epoch), members)
		return reconcileReturned{epoch: a.Epoch, err: err}
	})
}

// reconcileReturned takes in the end of Handler.Reconcile.
func (d *Driver) reconcileReturned(r reconcileReturned) {
	d.reconciling = false
	d.rcancel()
	switch {
	case d.ending != "" || d.m.Epoch() != r.epoch:
		reason := d.ending
		if reason == "" {
			reason = "ownership lost during reconcile"
		}
		d.stopHandler(reason)
	case r.err != nil:
		d.log.Error("reconcile failed; giving the volume up", logkey.Epoch, r.epoch, logkey.Err, r.err)
		d.stopHandler("reconcile failed: " + r.err.Error())
		// Let another ISR member claim first: revoke the lease (the watch
		// then shows the owner key gone and the machine steps down) and
		// hold this node's next claim back by a TTL.
		d.claimAfter = time.Now().Add(d.cfg.TTL)
		if d.lease != 0 {
			d.revoked = d.lease
			d.revoke(d.lease)
		}
	default:
		d.step(ownership.ReconcileDone{Epoch: r.epoch})
	}
	if d.hEpoch == 0 && d.pending != nil {
		p := *d.pending
		d.pending = nil
		if d.m.Epoch() == p.Epoch && d.m.State() == ownership.Reconciling {
			d.startReconcile(p)
		}
	}
}

// endEpoch ends the Handler's epoch: at once, or when its Reconcile
// returns.
func (d *Driver) endEpoch(reason string) {
	if d.reconciling {
		if d.ending == "" {
			d.ending = reason
			d.rcancel()
		}
		return
	}
	d.stopHandler(reason)
}

// stopHandler calls Handler.Stop for hEpoch.
func (d *Driver) stopHandler(reason string) {
	e := d.hEpoch
	d.hEpoch, d.serving, d.ending = 0, false, ""
	d.log.Info("stopped serving", logkey.Epoch, e, "reason", reason)
	d.cfg.Handler.Stop(uint64(e), reason)
}

// publish updates the status and notifies Changed when it differs.
func (d *Driver) publish() {
	rec := d.m.Record()
	s := Status{
		State:    d.m.State().String(),
		Epoch:    uint64(rec.Epoch),
		Owner:    string(rec.Owner),
		OwnEpoch: uint64(d.m.Epoch()),
		Serving:  d.serving && d.m.State() == ownership.Serving,
	}
	for _, n := range rec.ISR {
		s.ISR = append(s.ISR, string(n))
	}
	for _, n := range d.m.Required() {
		s.Required = append(s.Required, string(n))
	}
	if f, ok := d.m.FenceAt(); ok {
		s.LeaseDeadline = d.wall(f)
	}
	if d.stopped {
		s.State, s.OwnEpoch, s.Required, s.LeaseDeadline = "stopped", 0, nil, time.Time{}
	}
	d.mu.Lock()
	old := d.mu.status
	d.mu.status = s
	d.mu.Unlock()
	if old.State != s.State || old.Epoch != s.Epoch || old.Owner != s.Owner || old.OwnEpoch != s.OwnEpoch ||
		old.Serving != s.Serving || !slices.Equal(old.ISR, s.ISR) || !slices.Equal(old.Required, s.Required) {
		select {
		case d.changed <- struct{}{}:
		default:
		}
	}
}

func addRemove(add bool) string {
	if add {
		return "add"
	}
	return "removal"
}

// grant asks etcd for a lease.
func (d *Driver) grant(ctx context.Context, a ownership.GrantLease) any {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.RequestTimeout)
	defer cancel()
	resp, err := d.cfg.Client.Grant(ctx, int64(a.TTL/time.Second))
	if err != nil {
		if d.ctx.Err() == nil {
			d.log.Debug("lease grant failed", logkey.Err, err)
		}
		return nil // the machine asks again after RequestTimeout
	}
	return ownership.LeaseGranted{Req: a.Req, Lease: ownership.LeaseID(resp.ID), TTL: time.Duration(resp.TTL) * time.Second}
}

// keepalive renews a lease once.
func (d *Driver) keepalive(ctx context.Context, a ownership.Keepalive) any {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.RequestTimeout)
	defer cancel()
	resp, err := d.cfg.Client.KeepAliveOnce(ctx, clientv3.LeaseID(a.Lease))
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return ownership.KeepaliveResult{Req: a.Req, Lease: a.Lease, Expired: true}
	case err != nil:
		d.log.Debug("keepalive failed", logkey.Err, err)
		return ownership.KeepaliveResult{Req: a.Req, Lease: a.Lease, Err: err}
	}
	return ownership.KeepaliveResult{Req: a.Req, Lease: a.Lease, TTL: time.Duration(resp.TTL) * time.Second}
}

// revoke revokes a lease in the background (best effort).
func (d *Driver) revoke(l ownership.LeaseID) {
	d.goAsync(func(ctx context.Context) any {
		ctx, cancel := context.WithTimeout(ctx, d.cfg.RequestTimeout)
		defer cancel()
		if _, err := d.cfg.Client.Revoke(ctx, clientv3.LeaseID(l)); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			d.log.Debug("lease revoke failed; it lapses by itself", logkey.Err, err)
		}
		return nil
	})
}

// claim runs the claim transaction after delay.
func (d *Driver) claim(ctx context.Context, a ownership.ProposeClaim, delay time.Duration) any {
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil
		}
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.TTL)
	defer cancel()
	self := ownership.NodeID(d.cfg.Self)
	rec, revs, err := read(ctx, d.cfg.Client, d.cfg.Volume)
	if err != nil {
		return ownership.ClaimResult{Req: a.Req, Err: err}
	}
	if rec.Epoch != a.Expect || rec.Owner != "" || !rec.InISR(self) {
		return ownership.ClaimResult{Req: a.Req, Record: rec}
	}
	v := d.cfg.Volume
	resp, err := d.cfg.Client.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(OwnershipKey(v)), "=", revs.ownership),
			clientv3.Compare(clientv3.CreateRevision(OwnerKey(v)), "=", 0)).
		Then(clientv3.OpPut(OwnershipKey(v), encodeOwnership(a.Epoch, rec.ISR)),
			clientv3.OpPut(OwnerKey(v), encodeOwner(self, a.Epoch), clientv3.WithLease(clientv3.LeaseID(a.Lease)))).
		Else(clientv3.OpGet(OwnerKey(v), clientv3.WithRange(rangeEnd(v)))).
		Commit()
	if err != nil {
		// Unknown outcome (or the lease is gone: then nothing
		// committed); the watch tells.
		return ownership.ClaimResult{Req: a.Req, Err: err}
	}
	if !resp.Succeeded {
		rec, _, err := decodeRecord(v, resp.Responses[0].GetResponseRange().Kvs, resp.Header.Revision)
		if err != nil {
			return ownership.ClaimResult{Req: a.Req, Err: err}
		}
		return ownership.ClaimResult{Req: a.Req, Record: rec}
	}
	rec.Epoch, rec.Owner, rec.Lease, rec.Rev = a.Epoch, self, a.Lease, resp.Header.Revision
	return ownership.ClaimResult{Req: a.Req, OK: true, Record: rec}
}

// changeISR runs the ISR transaction.
func (d *Driver) changeISR(ctx context.Context, a ownership.ProposeISRChange) any {
	res := ownership.ISRResult{Epoch: a.Epoch, Node: a.Node, Add: a.Add}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.TTL)
	defer cancel()
	self := ownership.NodeID(d.cfg.Self)
	v := d.cfg.Volume
	rec, revs, err := read(ctx, d.cfg.Client, v)
	if err != nil {
		d.log.Warn("ISR change: cannot read the record", logkey.Node, a.Node, logkey.Err, err)
		return res
	}
	if rec.Epoch != a.Epoch || rec.Owner != self {
		return res
	}
	if rec.InISR(a.Node) == a.Add {
		// Already so in the committed record, which this node still owns.
		res.OK, res.Record = true, rec
		return res
	}
	isr := withISR(rec.ISR, a.Node, a.Add)
	resp, err := d.cfg.Client.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(OwnershipKey(v)), "=", revs.ownership),
			clientv3.Compare(clientv3.ModRevision(OwnerKey(v)), "=", revs.owner)).
		Then(clientv3.OpPut(OwnershipKey(v), encodeOwnership(a.Epoch, isr))).
		Commit()
	if err != nil {
		d.log.Warn("ISR change: transaction failed", logkey.Node, a.Node, logkey.Err, err)
		return res
	}
	if !resp.Succeeded {
		return res
	}
	rec.ISR, rec.Rev = isr, resp.Header.Revision
	res.OK, res.Record = true, rec
	d.log.Info("ISR changed", "op", addRemove(a.Add), logkey.Node, a.Node, logkey.Epoch, a.Epoch, "isr", isr)
	return res
}

// watch feeds Observed from the record's keys until ctx ends.
func (d *Driver) watch(ctx context.Context) {
	v := d.cfg.Volume
	pause := retryMin
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, d.cfg.TTL)
		resp, err := d.cfg.Client.Get(rctx, OwnerKey(v), clientv3.WithRange(rangeEnd(v)))
		cancel()
		if err == nil {
			pause = retryMin
			d.observe(ctx, v, resp.Kvs, resp.Header.Revision)
			d.watchFrom(ctx, v, resp.Kvs, resp.Header.Revision)
		} else if ctx.Err() == nil {
			d.log.Debug("cannot read the ownership record", logkey.Err, err)
		}
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		pause = min(2*pause, retryMax)
	}
}

// watchFrom watches the record's keys after revision rev, starting from
// kvs, until the watch fails.
func (d *Driver) watchFrom(ctx context.Context, v string, kvs []*mvccpb.KeyValue, rev int64) {
	cur := map[string]*mvccpb.KeyValue{}
	for _, kv := range kvs {
		cur[string(kv.Key)] = kv
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range d.cfg.Client.Watch(wctx, OwnerKey(v), clientv3.WithRange(rangeEnd(v)), clientv3.WithRev(rev+1)) {
		if err := wr.Err(); err != nil {
			if ctx.Err() == nil {
				d.log.Debug("ownership watch ended; reading again", logkey.Err, err)
			}
			return
		}
		if len(wr.Events) == 0 {
			continue
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				delete(cur, string(ev.Kv.Key))
			} else {
				cur[string(ev.Kv.Key)] = ev.Kv
			}
			rev = ev.Kv.ModRevision
		}
		list := make([]*mvccpb.KeyValue, 0, len(cur))
		for _, kv := range cur {
			list = append(list, kv)
		}
		d.observe(ctx, v, list, rev)
	}
}

// observe feeds the record made of kvs at rev to the loop.
func (d *Driver) observe(ctx context.Context, v string, kvs []*mvccpb.KeyValue, rev int64) {
	rec, _, err := decodeRecord(v, kvs, rev)
	if errors.Is(err, ErrCorruptRecord) {
		d.log.Error("ignoring a malformed ownership record; fix or delete the key", logkey.Err, err)
		return
	}
	// A missing record (ErrNoRecord) is fed as is: no owner, no ISR, so
	// nobody claims and an owner steps down.
	select {
	case d.events <- ownership.Observed{Record: rec}:
	case <-ctx.Done():
	}
}
