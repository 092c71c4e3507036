package replication

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/target/scsi/sense"
)

// Sentinel errors.
var (
	// ErrStaleEpoch reports a request from an epoch lower than one the
	// replica has seen: the sender is no longer the owner.
	ErrStaleEpoch = errors.New("replication: stale epoch")
	// ErrFenced reports I/O on a volume that stopped serving (lease
	// deadline passed, ISR change failed, newer epoch seen, closed).
	ErrFenced = errors.New("replication: volume fenced")
	// ErrReplicaFailed reports a replica that did not answer, broke its
	// connection or refused a request.
	ErrReplicaFailed = errors.New("replication: replica failed")
	// ErrClosed reports use of a closed volume.
	ErrClosed = errors.New("replication: volume closed")
)

// Peer is a replica node and its replication address.
type Peer struct {
	Node string
	Addr string
}

// ISR changes the in-sync replica set in etcd. Both calls are transactions
// guarded by the epoch (and ownership): they fail when the volume's epoch
// is no longer epoch. A nil error means the change is committed.
type ISR interface {
	Remove(ctx context.Context, epoch uint64, node string) error
	Add(ctx context.Context, epoch uint64, node string) error
}

// VolumeConfig configures an owner-side Volume.
type VolumeConfig struct {
	// Logger receives log lines; nil discards them.
	Logger *slog.Logger
	// Name is the volume name; Node is this (the owner's) node.
	Name, Node string
	// Epoch is the epoch this node owns the volume in. At most one Volume
	// may be opened per volume and epoch: versions restart at counter 1.
	Epoch uint64
	// Local is the owner's store.
	Local Store
	// Replicas are the ISR members other than this node.
	Replicas []Peer
	// ISR changes the ISR in etcd. Required.
	ISR ISR
	// TLS, when set, is the client configuration for replica links.
	TLS *tls.Config
	// Dial opens a connection; nil uses a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// DialTimeout bounds connecting and the Hello; zero means 5s.
	DialTimeout time.Duration
	// AckTimeout is how long a replica may leave a request unanswered
	// before it counts as failed; zero means 2s.
	AckTimeout time.Duration
	// ISRTimeout bounds one ISR transaction; zero means 5s.
	ISRTimeout time.Duration
	// GrowTimeout is how long Grow waits for a replica's store to reach
	// the new size before it removes the replica from the ISR; zero
	// means 30s.
	GrowTimeout time.Duration
	// QueueDepth bounds queued and in-flight requests per replica; zero
	// means 64.
	QueueDepth int
	// RegionSize is the resync unit, a multiple of BlockSize; zero means
	// DefaultRegionSize.
	RegionSize int64
	// OnFence, when set, is called once when the volume fences, with the
	// reason. It must not block.
	OnFence func(error)
}

// Volume is the owner's side of a replicated volume: the BlockDevice the
// target serves in one epoch. Writes go to the local store and every ISR
// replica in parallel and are acknowledged when all have them durable (see
// the package doc for the ordering rules). A new epoch needs a new Volume.
// Safe for concurrent use.
type Volume struct {
	cfg VolumeConfig
	log *slog.Logger
	// size is the addressable size; it only grows (Grow).
	size     atomic.Int64
	locks    blockLocks
	deadline atomic.Pointer[time.Time]
	fenced   atomic.Bool
	done     chan struct{}
	fence1   sync.Once
	fenceErr error // set before done is closed
	// ctx lives until Close; it bounds ISR transactions.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // link goroutines
	// growMu serializes Grow with the parts of Resync that attach a
	// replica (dial) and make it an ISR member, so that Grow sees every
	// link that will receive writes beyond the old size.
	growMu sync.Mutex
	mu     struct {
		sync.Mutex
		counter uint64
		links   []*link // ISR members and catching-up replicas
	}
}

// OpenVolume connects to every replica and reconciles it with the local
// store (the owner's content is truth: regions whose digests differ are
// overwritten), then returns the volume ready to serve. A replica that
// cannot be reached or reconciled is removed from the ISR first. It
// returns an error wrapping ErrStaleEpoch when a replica has seen a higher
// epoch, and the ISR error when a removal fails.
func OpenVolume(ctx context.Context, cfg VolumeConfig) (*Volume, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Dial == nil {
		d := &net.Dialer{}
		cfg.Dial = d.DialContext
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = 2 * time.Second
	}
	if cfg.ISRTimeout <= 0 {
		cfg.ISRTimeout = 5 * time.Second
	}
	if cfg.GrowTimeout <= 0 {
		cfg.GrowTimeout = 30 * time.Second
	}
	if cfg.QueueDepth <= 0 {
		cfg.QueueDepth = 64
	}
	if cfg.RegionSize <= 0 {
		cfg.RegionSize = DefaultRegionSize
	}
	if cfg.RegionSize%BlockSize != 0 || cfg.RegionSize > 4<<20 {
		return nil, fmt.Errorf("replication: region size %d is not a multiple of %d up to 4 MiB", cfg.RegionSize, BlockSize)
	}
	if cfg.Local == nil || cfg.ISR == nil {
		return nil, errors.New("replication: VolumeConfig needs Local and ISR")
	}
	v := &Volume{cfg: cfg, done: make(chan struct{}),
		log: cfg.Logger.With(logkey.Volume, cfg.Name, logkey.Epoch, cfg.Epoch)}
	v.size.Store(cfg.Local.Size())
	v.ctx, v.cancel = context.WithCancel(context.Background())
	for _, p := range cfg.Replicas {
		l, err := v.dial(ctx, p)
		if errors.Is(err, ErrStaleEpoch) {
			v.Close()
			return nil, err
		}
		if err != nil {
			v.log.Error("replica unreachable at open", logkey.Node, p.Node, logkey.Err, err)
			if err := v.removeFromISR(ctx, p.Node); err != nil {
				v.Close()
				return nil, err
			}
			continue
		}
		l.isr.Store(true)
		v.mu.links = append(v.mu.links, l)
	}
	for _, l := range v.links() {
		if _, err := v.syncLink(ctx, l, nil); err != nil {
			v.log.Error("reconcile failed", logkey.Node, l.peer.Node, logkey.Err, err)
			if err := v.dropLink(l, err); err != nil {
				v.Close()
				return nil, err
			}
		}
	}
	v.log.Info("volume serving", logkey.Replicas, len(v.links()))
	return v, nil
}

// Size implements scsi.BlockDevice. It changes only through Grow.
func (v *Volume) Size() int64 { return v.size.Load() }

// Epoch returns the epoch the volume serves in.
func (v *Volume) Epoch() uint64 { return v.cfg.Epoch }

// Done is closed when the volume fences (or closes).
func (v *Volume) Done() <-chan struct{} { return v.done }

// Err returns why the volume fenced, or nil while it serves.
func (v *Volume) Err() error {
	select {
	case <-v.done:
		return v.fenceErr
	default:
		return nil
	}
}

// Members returns the nodes of the replicas that currently count as ISR
// members, sorted.
func (v *Volume) Members() []string {
	var out []string
	for _, l := range v.links() {
		if l.isr.Load() {
			out = append(out, l.peer.Node)
		}
	}
	slices.Sort(out)
	return out
}

// SetLeaseDeadline sets the instant (from the ownership machine's fence
// deadline) from which the volume stops acknowledging: an acknowledgement
// is given only before it, and I/O after it fails with ErrFenced until the
// deadline is moved (the volume is not fenced for good). The zero time
// removes the deadline.
func (v *Volume) SetLeaseDeadline(t time.Time) {
	if t.IsZero() {
		v.deadline.Store(nil)
		return
	}
	v.deadline.Store(&t)
}

// Fence stops the volume at once: every later or in-flight I/O fails with
// an error wrapping ErrFenced. The first reason wins.
func (v *Volume) Fence(reason error) {
	v.fence1.Do(func() {
		v.fenceErr = reason
		v.fenced.Store(true)
		close(v.done)
		if !errors.Is(reason, ErrClosed) {
			v.log.Error("volume fenced", logkey.Err, reason)
		}
		for _, l := range v.links() {
			l.fail(fmt.Errorf("%w: %v", ErrFenced, reason))
		}
		if v.cfg.OnFence != nil {
			v.cfg.OnFence(reason)
		}
	})
}

// Close fences the volume, closes every link and waits for their
// goroutines.
func (v *Volume) Close() error {
	v.Fence(ErrClosed)
	v.cancel()
	for _, l := range v.links() {
		l.fail(ErrClosed)
	}
	v.wg.Wait()
	return nil
}

func (v *Volume) links() []*link {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.mu.links)
}

func (v *Volume) unlink(l *link) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.mu.links = slices.DeleteFunc(v.mu.links, func(x *link) bool { return x == l })
}

// fencedError is what I/O on a fenced volume returns: NOT READY / LOGICAL
// UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE, so that multipath
// retries on another path (the new owner's).
func fencedError(cause error) error {
	e := sense.New(sense.KeyNotReady, sense.ASCLogicalUnitNotAccessibleStandby)
	e.Cause = fmt.Errorf("%w: %w", ErrFenced, cause)
	return e
}

// errLeaseDeadline is the cause reported while the lease deadline has
// passed.
var errLeaseDeadline = errors.New("replication: lease deadline passed")

// usable fails fast on a fenced volume or after the lease deadline. The
// deadline does not fence for good: a later SetLeaseDeadline (a keepalive
// that extended the lease in time) lets the volume serve again.
func (v *Volume) usable() error {
	if v.fenced.Load() {
		return fencedError(v.fenceErr)
	}
	if d := v.deadline.Load(); d != nil && !time.Now().Before(*d) {
		return fencedError(errLeaseDeadline)
	}
	return nil
}

// ackable is the last check before an acknowledgement.
func (v *Volume) ackable() error { return v.usable() }

func (v *Volume) check(off, n int64) error {
	if size := v.size.Load(); off < 0 || n < 0 || off%SectorSize != 0 || n%SectorSize != 0 || off+n > size {
		e := sense.New(sense.KeyIllegalRequest, sense.ASCLBAOutOfRange)
		e.Cause = fmt.Errorf("replication: range %d+%d outside or unaligned in a %d-byte volume", off, n, size)
		return e
	}
	return nil
}

// next assigns the next version and returns it with the links to send to.
// It fences the volume when the epoch's 40-bit counter is exhausted (the
// owner must move to a new epoch long before; see the architecture doc).
// REQUIRES: the written blocks locked.
func (v *Volume) next() (uint64, []*link, error) {
	v.mu.Lock()
	if v.mu.counter >= 1<<counterBits-1 {
		v.mu.Unlock()
		err := errors.New("replication: version counter of the epoch exhausted")
		v.Fence(err)
		return 0, nil, fencedError(err)
	}
	v.mu.counter++
	defer v.mu.Unlock()
	return VersionOf(v.cfg.Epoch, v.mu.counter), slices.Clone(v.mu.links), nil
}

// ReadAt implements scsi.BlockDevice: it reads the local store.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := v.usable(); err != nil {
		return err
	}
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	if err := v.cfg.Local.ReadAt(ctx, p, off); err != nil {
		return err
	}
	return v.ackable()
}

// WriteAt implements scsi.BlockDevice. It returns when the local store and
// every ISR replica have the write durable (fua changes nothing), or with
// an error; a write that fails may still be on some of them.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := v.usable(); err != nil {
		return err
	}
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	if len(p) == 0 {
		return v.ackable()
	}
	b0, b1 := off/BlockSize, (off+int64(len(p))+BlockSize-1)/BlockSize
	unlock := v.locks.lock(b0, b1)
	ver, links, err := v.next()
	if err != nil {
		unlock()
		return err
	}
	results := make([]<-chan result, 0, len(links))
	var lerr error
	if off%BlockSize == 0 && len(p)%BlockSize == 0 {
		for _, l := range links {
			results = append(results, l.send(Write{Version: ver, LBA: uint64(off / SectorSize), Data: p}))
		}
		lerr = v.cfg.Local.WriteAt(ctx, p, off, ver)
	} else {
		// Replicas get whole blocks, so that a block's version
		// determines its content.
		lerr = v.cfg.Local.WriteAt(ctx, p, off, ver)
		var full []byte
		if lerr == nil {
			full = make([]byte, (b1-b0)*BlockSize)
			lerr = v.cfg.Local.ReadAt(ctx, full, b0*BlockSize)
		}
		if lerr == nil {
			for _, l := range links {
				results = append(results, l.send(Write{Version: ver, LBA: uint64(b0 * BlockSize / SectorSize), Data: full}))
			}
		}
	}
	unlock()
	if err := v.wait(links, results); err != nil {
		return err
	}
	if lerr != nil {
		return fmt.Errorf("replication: local write: %w", lerr)
	}
	return v.ackable()
}

// Unmap implements scsi.BlockDevice. Whole blocks are unmapped on every
// replica; partial blocks at the edges are sent as whole-block writes.
func (v *Volume) Unmap(ctx context.Context, off, length int64) error {
	if err := v.usable(); err != nil {
		return err
	}
	if err := v.check(off, length); err != nil {
		return err
	}
	if length == 0 {
		return v.ackable()
	}
	end := off + length
	b0, b1 := off/BlockSize, (end+BlockSize-1)/BlockSize
	unlock := v.locks.lock(b0, b1)
	ver, links, err := v.next()
	if err != nil {
		unlock()
		return err
	}
	var results []<-chan result
	lerr := v.cfg.Local.Unmap(ctx, off, length, ver)
	if lerr == nil {
		fb, lb := (off+BlockSize-1)/BlockSize, end/BlockSize // whole blocks [fb, lb)
		var partial []int64
		if fb > lb {
			partial = append(partial, b0)
		} else {
			if off < fb*BlockSize {
				partial = append(partial, b0)
			}
			if end > lb*BlockSize {
				partial = append(partial, lb)
			}
		}
		for _, b := range partial {
			blk := make([]byte, BlockSize)
			if lerr = v.cfg.Local.ReadAt(ctx, blk, b*BlockSize); lerr != nil {
				break
			}
			for _, l := range links {
				results = append(results, l.send(Write{Version: ver, LBA: uint64(b * BlockSize / SectorSize), Data: blk}))
			}
		}
		if lerr == nil && fb < lb {
			for _, l := range links {
				results = append(results, l.send(Unmap{Version: ver, LBA: uint64(fb * BlockSize / SectorSize), Sectors: uint64((lb - fb) * BlockSize / SectorSize)}))
			}
		}
	}
	unlock()
	if err := v.wait(repeat(links, len(results)), results); err != nil {
		return err
	}
	if lerr != nil {
		return fmt.Errorf("replication: local unmap: %w", lerr)
	}
	return v.ackable()
}

// repeat returns links repeated to cover n results sent round-robin.
func repeat(links []*link, n int) []*link {
	if len(links) == 0 {
		return nil
	}
	out := make([]*link, n)
	for i := range out {
		out[i] = links[i%len(links)]
	}
	return out
}

// Flush implements scsi.BlockDevice: local Flush and a Flush on every
// replica.
func (v *Volume) Flush(ctx context.Context) error {
	if err := v.usable(); err != nil {
		return err
	}
	links := v.links()
	results := make([]<-chan result, 0, len(links))
	for _, l := range links {
		results = append(results, l.send(Flush{Epoch: v.cfg.Epoch}))
	}
	lerr := v.cfg.Local.Flush(ctx)
	if err := v.wait(links, results); err != nil {
		return err
	}
	if lerr != nil {
		return fmt.Errorf("replication: local flush: %w", lerr)
	}
	return v.ackable()
}

// wait collects the results of one request on links (results[i] from
// links[i]) and deals with failed links: an ISR member is removed from the
// ISR before wait returns nil; a catching-up replica is dropped. It
// ignores ctx: the link watchdog bounds the wait.
func (v *Volume) wait(links []*link, results []<-chan result) error {
	var first error
	for i, ch := range results {
		res := <-ch
		if res.err == nil {
			continue
		}
		if err := v.dropLink(links[i], res.err); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// dropLink handles a failed link. A replica that had seen a newer epoch
// proves that this node is no longer the owner: fence. An ISR member is
// removed from the ISR (once; concurrent callers wait for the outcome); if
// that fails, the volume fences. A catching-up replica is just dropped.
func (v *Volume) dropLink(l *link, cause error) error {
	l.fail(cause)
	if errors.Is(cause, ErrFenced) || errors.Is(cause, ErrClosed) {
		return fencedError(cause)
	}
	if errors.Is(cause, ErrStaleEpoch) {
		v.Fence(cause)
		return fencedError(cause)
	}
	if !l.isr.Load() {
		v.unlink(l)
		return nil
	}
	l.removeOnce.Do(func() {
		v.log.Warn("replica failed; removing it from the ISR", logkey.Node, l.peer.Node, logkey.Err, cause)
		l.removeErr = v.removeFromISR(v.ctx, l.peer.Node)
		if l.removeErr == nil {
			v.unlink(l)
		}
	})
	if l.removeErr != nil {
		return fencedError(l.removeErr)
	}
	return nil
}

// removeFromISR runs the ISR removal; a failure fences the volume.
func (v *Volume) removeFromISR(ctx context.Context, node string) error {
	ctx, cancel := context.WithTimeout(ctx, v.cfg.ISRTimeout)
	defer cancel()
	if err := v.cfg.ISR.Remove(ctx, v.cfg.Epoch, node); err != nil {
		err = fmt.Errorf("replication: remove %s from the ISR: %w", node, err)
		v.Fence(err)
		return err
	}
	v.log.Info("replica removed from the ISR", logkey.Node, node)
	return nil
}

// Grow makes the volume size bytes, a multiple of BlockSize not smaller
// than its size, once every ISR member can hold them. Concurrent I/O goes
// on throughout:
//
//  1. The local store must hold size bytes already (the caller grows it
//     first).
//  2. Each ISR member is probed with a Hello announcing size bytes, which
//     its Server accepts only once its store holds that much (the
//     member's node grows its copy when it sees the new size). A member
//     that does not within GrowTimeout, or whose link fails meanwhile, is
//     removed from the ISR through the normal failure path (dropLink),
//     to be resynced later. A replica still catching up (Resync) is
//     dropped: its resync covers only the old size, so it starts again.
//  3. The size changes: I/O may address the new blocks, and writes there
//     reach every remaining member over its existing link (a replica
//     applies writes anywhere in its store; only its digests are bound
//     to the size of the link's Hello).
//
// Grow returns an error wrapping ErrFenced when the volume fenced (an ISR
// removal failed, a replica had seen a newer epoch), ctx's error when ctx
// ends first (the size is then unchanged and no replica is dropped), and
// an error for a size that is smaller or unaligned. Grows are serialized;
// safe for concurrent use.
func (v *Volume) Grow(ctx context.Context, size int64) error {
	v.growMu.Lock()
	defer v.growMu.Unlock()
	if v.fenced.Load() {
		return fencedError(v.fenceErr)
	}
	cur := v.size.Load()
	switch {
	case size == cur:
		return nil
	case size < cur || size%BlockSize != 0:
		return fmt.Errorf("replication: volume %s cannot go from %d to %d bytes: volumes only grow, by multiples of %d",
			v.cfg.Name, cur, size, BlockSize)
	case v.cfg.Local.Size() < size:
		return fmt.Errorf("replication: volume %s cannot grow to %d bytes: the local store holds %d; grow it first",
			v.cfg.Name, size, v.cfg.Local.Size())
	}
	links := v.links()
	errs := make([]error, len(links))
	var wg sync.WaitGroup
	for i, l := range links {
		if !l.isr.Load() { // stable: Resync sets it under growMu
			errs[i] = fmt.Errorf("%w: %s was catching up while the volume grew to %d bytes; its resync starts again",
				ErrReplicaFailed, l.peer.Node, size)
			continue
		}
		wg.Go(func() { errs[i] = v.awaitGrown(ctx, l, size) })
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("replication: growing volume %s to %d bytes: %w", v.cfg.Name, size, err)
	}
	for i, l := range links {
		if errs[i] == nil {
			continue
		}
		if err := v.dropLink(l, errs[i]); err != nil {
			return err
		}
	}
	v.size.Store(size)
	v.log.Info("volume grown", logkey.Size, size, "old_size", cur, logkey.Replicas, len(v.Members()))
	return nil
}

// awaitGrown probes l's replica until its store holds size bytes, its
// link fails, GrowTimeout passes or ctx ends, and returns why it stopped
// (nil: the replica holds size bytes; stores never shrink).
func (v *Volume) awaitGrown(ctx context.Context, l *link, size int64) error {
	deadline := time.Now().Add(v.cfg.GrowTimeout)
	wait := 20 * time.Millisecond
	for {
		err := v.probe(ctx, l.peer, size)
		if err == nil || IsStale(err) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("%w: %s did not grow its copy to %d bytes within %v: %v",
				ErrReplicaFailed, l.peer.Node, size, v.cfg.GrowTimeout, err)
		}
		v.log.Debug("replica not grown yet", logkey.Node, l.peer.Node, logkey.Err, err)
		t := time.NewTimer(min(wait, left))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-l.failed:
			t.Stop()
			return l.err()
		case <-t.C:
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}
