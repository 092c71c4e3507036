package owner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"stave.dev/stave/cluster"
	"stave.dev/stave/replication"
)

// entry is one Handler call, in the order of a log shared by every node.
type entry struct {
	node, kind string // kind: reconcile, serve, stop
	epoch      uint64
	at, until  time.Time
	reason     string
}

type eventLog struct {
	mu      sync.Mutex
	entries []entry
}

func (l *eventLog) add(e entry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e.at = time.Now()
	l.entries = append(l.entries, e)
}

func (l *eventLog) snapshot() []entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.entries)
}

// first returns the index of the first entry matching, or -1.
func (l *eventLog) first(match func(entry) bool) (int, entry) {
	for i, e := range l.snapshot() {
		if match(e) {
			return i, e
		}
	}
	return -1, entry{}
}

// recorder is the test's Handler: it records every call.
type recorder struct {
	node string
	log  *eventLog
	// reconcile, when set, runs inside Reconcile.
	reconcile func(ctx context.Context, epoch uint64, members []string) error
	// calls counts concurrent calls, to check they never overlap.
	mu   sync.Mutex
	busy bool
	t    *testing.T
}

func (r *recorder) enter() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.busy {
		r.t.Errorf("%s: Handler called concurrently with itself", r.node)
	}
	r.busy = true
}

func (r *recorder) exit() {
	r.mu.Lock()
	r.busy = false
	r.mu.Unlock()
}

func (r *recorder) Reconcile(ctx context.Context, epoch uint64, members []string) error {
	r.enter()
	defer r.exit()
	r.log.add(entry{node: r.node, kind: "reconcile", epoch: epoch, reason: fmt.Sprint(members)})
	if r.reconcile != nil {
		return r.reconcile(ctx, epoch, members)
	}
	return nil
}

func (r *recorder) Serve(epoch uint64, until time.Time) {
	r.enter()
	defer r.exit()
	r.log.add(entry{node: r.node, kind: "serve", epoch: epoch, until: until})
}

func (r *recorder) Stop(epoch uint64, reason string) {
	r.enter()
	defer r.exit()
	r.log.add(entry{node: r.node, kind: "stop", epoch: epoch, reason: reason})
}

// proxy is a TCP proxy in front of etcd that the test can cut: Cut
// closes every connection and refuses new ones until Heal.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	cut    bool
	wg     sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		cut := p.cut
		p.mu.Unlock()
		if cut {
			_ = c.Close()
			continue
		}
		b, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, b)
		p.mu.Unlock()
		for _, pair := range [][2]net.Conn{{c, b}, {b, c}} {
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				_, _ = io.Copy(pair[0], pair[1])
				_ = pair[0].Close()
				_ = pair[1].Close()
			}()
		}
	}
}

func (p *proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func (p *proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}

func (p *proxy) URL() string { return "http://" + p.ln.Addr().String() }

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// harness is one embedded etcd and the nodes driving one volume.
type harness struct {
	t      *testing.T
	c      *cluster.Cluster
	volume string
	log    *eventLog
	logger *slog.Logger
}

func newHarness(t *testing.T, volume string, isr []string) *harness {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	c, err := cluster.Open(context.Background(), cluster.Config{DataDir: t.TempDir(), NodeID: "0123456789abcdef", Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	resp, err := c.Client().Txn(context.Background()).If(InitCmp(volume)).Then(InitOps(volume, isr)...).Commit()
	if err != nil || !resp.Succeeded {
		t.Fatalf("init record: %v %v", resp, err)
	}
	// The drivers log everything into a buffer shown when the test fails.
	buf := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("driver logs:\n%s", buf.String())
		}
	})
	dl := slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return &harness{t: t, c: c, volume: volume, log: &eventLog{}, logger: dl}
}

func (h *harness) read() plainRecord {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rec, err := Read(ctx, h.c.Client(), h.volume)
	if err != nil {
		h.t.Fatal(err)
	}
	return plainRecord{Epoch: uint64(rec.Epoch), Owner: string(rec.Owner), Lease: int64(rec.Lease), ISR: nodes(rec.ISR)}
}

// plainRecord is the test's view of ownership.Record.
type plainRecord struct {
	Epoch uint64
	Owner string
	Lease int64
	ISR   []string
}

func nodes[T ~string](in []T) []string {
	out := []string{}
	for _, n := range in {
		out = append(out, string(n))
	}
	return out
}

// node is one running driver.
type node struct {
	name   string
	d      *Driver
	rec    *recorder
	proxy  *proxy
	epochs *replication.EpochStore
	cancel context.CancelFunc
	done   chan error
}

// start runs a driver for name, whose claims wait rank×100 ms, with its
// epochs in dir (a new one when empty).
func (h *harness) start(name string, rank int, dir string, reconcile func(*node) func(context.Context, uint64, []string) error) *node {
	t := h.t
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	epochs, err := replication.OpenEpochStore(filepath.Join(dir, "epochs"))
	if err != nil {
		t.Fatal(err)
	}
	p := newProxy(t, h.c.ClientURLs()[0][len("http://"):])
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{p.URL()}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	n := &node{name: name, proxy: p, epochs: epochs, done: make(chan error, 1)}
	n.rec = &recorder{node: name, log: h.log, t: t}
	if reconcile != nil {
		n.rec.reconcile = reconcile(n)
	}
	n.d, err = New(Config{Logger: h.logger.With("test_node", name), Client: cli, Volume: h.volume, Self: name,
		Epochs: epochs, Handler: n.rec, ClaimDelay: time.Duration(rank) * 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go func() { n.done <- n.d.Run(ctx) }()
	t.Cleanup(func() {
		n.stop(t)
		_ = cli.Close()
	})
	return n
}

// stop cancels the driver and waits for Run (bounded).
func (n *node) stop(t *testing.T) {
	t.Helper()
	n.cancel()
	select {
	case err, ok := <-n.done:
		if ok && err != nil {
			t.Errorf("%s: Run = %v", n.name, err)
		}
		if ok {
			close(n.done)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: Run did not return 10s after its context ended", n.name)
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// serving waits until some node serves an epoch above after and returns
// its log index and entry.
func (h *harness) serving(after uint64, timeout time.Duration) (int, entry) {
	h.t.Helper()
	var i int
	var e entry
	waitFor(h.t, timeout, fmt.Sprintf("a node serving an epoch above %d", after), func() bool {
		i, e = h.log.first(func(e entry) bool { return e.kind == "serve" && e.epoch > after })
		return i >= 0
	})
	return i, e
}

// checkOneServer checks that no two nodes ever served the same epoch and
// that every Serve's until was in the future and followed its Reconcile.
func (h *harness) checkOneServer() {
	h.t.Helper()
	server := map[uint64]string{}
	reconciled := map[string]bool{}
	for _, e := range h.log.snapshot() {
		key := fmt.Sprint(e.node, e.epoch)
		switch e.kind {
		case "reconcile":
			reconciled[key] = true
		case "serve":
			if s, ok := server[e.epoch]; ok && s != e.node {
				h.t.Errorf("epoch %d served by %s and %s", e.epoch, s, e.node)
			}
			server[e.epoch] = e.node
			if !reconciled[key] {
				h.t.Errorf("%s served epoch %d without reconciling", e.node, e.epoch)
			}
			if !e.until.After(e.at) {
				h.t.Errorf("%s served epoch %d until %v, already past at %v", e.node, e.epoch, e.until, e.at)
			}
		}
	}
}

func byName(ns []*node, name string) *node {
	for _, n := range ns {
		if n.name == name {
			return n
		}
	}
	return nil
}

func drain(c <-chan struct{}) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
}

func TestCleanStopFailover(t *testing.T) {
	h := newHarness(t, "v1", []string{"a", "b", "c"})
	ns := []*node{h.start("a", 0, "", nil), h.start("b", 1, "", nil), h.start("c", 2, "", nil)}
	_, first := h.serving(0, 10*time.Second)
	for _, n := range ns {
		waitFor(t, 5*time.Second, n.name+" sees the owner", func() bool {
			s := n.d.Status()
			return s.Owner == first.node && s.Epoch == first.epoch
		})
	}
	rec := h.read()
	if rec.Owner != first.node || rec.Epoch != first.epoch || rec.Lease == 0 || !slices.Equal(rec.ISR, []string{"a", "b", "c"}) {
		t.Fatalf("record %+v, want owner %s epoch %d with a lease", rec, first.node, first.epoch)
	}
	owner := byName(ns, first.node)
	if s := owner.d.Status(); s.State != "serving" || s.OwnEpoch != first.epoch || !s.Serving || s.LeaseDeadline.IsZero() ||
		!slices.Equal(s.Required, slices.DeleteFunc([]string{"a", "b", "c"}, func(n string) bool { return n == first.node })) {
		t.Fatalf("owner status %+v", s)
	}
	var other *node
	for _, n := range ns {
		if n != owner {
			other = n
			break
		}
	}
	drain(other.d.Changed())

	stopAt := time.Now()
	owner.stop(t)
	if s := owner.d.Status(); s.State != "stopped" || s.Serving || s.OwnEpoch != 0 {
		t.Fatalf("stopped driver's status %+v", s)
	}
	i, next := h.serving(first.epoch, 10*time.Second)
	t.Logf("clean stop of %s → %s serves epoch %d after %v", owner.name, next.node, next.epoch, next.at.Sub(stopAt))
	if next.node == owner.name {
		t.Fatalf("after the clean stop %s serves epoch %d", next.node, next.epoch)
	}
	j, _ := h.log.first(func(e entry) bool { return e.node == owner.name && e.kind == "stop" && e.epoch == first.epoch })
	if j < 0 || j > i {
		t.Fatalf("old owner's Stop at log index %d, new Serve at %d: %+v", j, i, h.log.snapshot())
	}
	select {
	case <-other.d.Changed():
	case <-time.After(5 * time.Second):
		t.Fatal("no Changed notification on a non-owner after the owner changed")
	}
	waitFor(t, 5*time.Second, other.name+" sees the new owner", func() bool {
		s := other.d.Status()
		return s.Owner == next.node && s.Epoch >= next.epoch
	})
	h.checkOneServer()
}

func TestCutOwnerFailover(t *testing.T) {
	h := newHarness(t, "v1", []string{"a", "b", "c"})
	ns := []*node{h.start("a", 0, "", nil), h.start("b", 1, "", nil), h.start("c", 2, "", nil)}
	_, first := h.serving(0, 10*time.Second)
	owner := byName(ns, first.node)
	// Let a few keepalives pass.
	time.Sleep(700 * time.Millisecond)

	cutAt := time.Now()
	owner.proxy.Cut()
	i, next := h.serving(first.epoch, 15*time.Second)
	t.Logf("failover: owner %s cut → %s serves epoch %d after %v (TTL %v)", owner.name, next.node, next.epoch, next.at.Sub(cutAt), DefaultTTL)
	if next.node == owner.name || next.epoch <= first.epoch {
		t.Fatalf("after the cut %s serves epoch %d (old owner %s epoch %d)", next.node, next.epoch, owner.name, first.epoch)
	}
	j, stop := h.log.first(func(e entry) bool { return e.node == owner.name && e.kind == "stop" && e.epoch == first.epoch })
	if j < 0 || j > i {
		t.Fatalf("cut owner's Stop at log index %d, new owner's Serve at %d: %+v", j, i, h.log.snapshot())
	}
	var lastUntil time.Time
	for _, e := range h.log.snapshot() {
		if e.node == owner.name && e.kind == "serve" && e.epoch == first.epoch && e.until.After(lastUntil) {
			lastUntil = e.until
		}
	}
	if !lastUntil.Before(next.at) || !stop.at.Before(next.at) {
		t.Fatalf("old owner served until %v and stopped at %v, new owner serves from %v", lastUntil, stop.at, next.at)
	}
	t.Logf("old owner's last deadline %v after the cut, Stop %v after, new Serve %v after",
		lastUntil.Sub(cutAt), stop.at.Sub(cutAt), next.at.Sub(cutAt))

	// Back online, the old owner follows the new epoch and refuses ISR
	// changes of its old one.
	owner.proxy.Heal()
	waitFor(t, 10*time.Second, "the old owner to see the new epoch", func() bool {
		s := owner.d.Status()
		return s.Epoch == next.epoch && s.Owner == next.node && s.State == "follower"
	})
	waitFor(t, 5*time.Second, "the old owner to persist the new epoch", func() bool {
		e, err := owner.epochs.Get(h.volume)
		return err == nil && e == next.epoch
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := owner.d.ISR().Remove(ctx, first.epoch, next.node); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("old owner's Remove in its old epoch = %v, want ErrNotOwner", err)
	}
	h.checkOneServer()
}

func TestISRBridge(t *testing.T) {
	h := newHarness(t, "v1", []string{"a", "b", "dead"})
	var removed []error
	var mu sync.Mutex
	reconcile := func(n *node) func(context.Context, uint64, []string) error {
		return func(ctx context.Context, epoch uint64, members []string) error {
			// "dead" never answers: remove it, as replication.OpenVolume
			// does, while the driver keeps running.
			if slices.Contains(members, "dead") {
				err := n.d.ISR().Remove(ctx, epoch, "dead")
				mu.Lock()
				removed = append(removed, err)
				mu.Unlock()
				return err
			}
			return nil
		}
	}
	ns := []*node{h.start("a", 0, "", reconcile), h.start("b", 1, "", reconcile)}
	_, first := h.serving(0, 10*time.Second)
	mu.Lock()
	if len(removed) != 1 || removed[0] != nil {
		t.Fatalf("removals during reconcile: %v", removed)
	}
	mu.Unlock()
	rec := h.read()
	if slices.Contains(rec.ISR, "dead") || rec.Epoch != first.epoch {
		t.Fatalf("record after reconcile %+v: want epoch %d without dead", rec, first.epoch)
	}
	owner := byName(ns, first.node)
	other := ns[0]
	if other == owner {
		other = ns[1]
	}
	e := first.epoch
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	isr := owner.d.ISR()
	if err := isr.Remove(ctx, e+1, other.name); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("Remove in a wrong epoch = %v, want ErrNotOwner", err)
	}
	if err := other.d.ISR().Remove(ctx, e, other.name); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("Remove on a follower = %v, want ErrNotOwner", err)
	}
	if err := isr.Add(ctx, e, "dead"); err != nil {
		t.Fatalf("Add: %v", err)
	}
	if rec := h.read(); !slices.Equal(rec.ISR, []string{"a", "b", "dead"}) || rec.Owner != owner.name {
		t.Fatalf("record after Add %+v", rec)
	}
	if err := isr.Add(ctx, e, "dead"); err != nil {
		t.Fatalf("second Add: %v", err)
	}
	if err := isr.Remove(ctx, e, other.name); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	want := slices.DeleteFunc([]string{"a", "b", "dead"}, func(n string) bool { return n == other.name })
	if rec := h.read(); !slices.Equal(rec.ISR, want) {
		t.Fatalf("record after Remove %+v, want ISR %v", rec, want)
	}
	waitFor(t, 5*time.Second, "the follower to see the ISR change", func() bool {
		return !slices.Contains(other.d.Status().ISR, other.name)
	})
	if err := isr.Remove(ctx, e, other.name); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	if err := isr.Remove(ctx, e, owner.name); !errors.Is(err, ErrNotCommitted) {
		t.Fatalf("Remove of the owner itself = %v, want ErrNotCommitted", err)
	}
	if err := isr.Add(ctx, e, other.name); err != nil {
		t.Fatalf("Add back: %v", err)
	}

	// The epoch moves on: the new owner refuses the old epoch; the
	// stopped driver refuses everything.
	owner.stop(t)
	_, next := h.serving(e, 10*time.Second)
	if next.node != other.name || next.epoch != e+1 {
		t.Fatalf("after the stop %s serves epoch %d", next.node, next.epoch)
	}
	if err := other.d.ISR().Remove(ctx, e, "dead"); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("Remove in the old epoch on the new owner = %v, want ErrNotOwner", err)
	}
	if err := isr.Remove(ctx, e, "dead"); !errors.Is(err, ErrStopped) {
		t.Fatalf("Remove on a stopped driver = %v, want ErrStopped", err)
	}
	if err := other.d.ISR().Remove(ctx, e+1, "dead"); err != nil {
		t.Fatalf("Remove in the new epoch: %v", err)
	}
	if rec := h.read(); rec.Epoch != e+1 || slices.Contains(rec.ISR, "dead") {
		t.Fatalf("record after the new owner's Remove %+v", rec)
	}
	h.checkOneServer()
}

func TestNotInISRNeverClaims(t *testing.T) {
	h := newHarness(t, "v1", []string{"a", "b"})
	// c would win every race if it were allowed to claim.
	c := h.start("c", 0, "", nil)
	a := h.start("a", 1, "", nil)
	b := h.start("b", 2, "", nil)
	_, first := h.serving(0, 10*time.Second)
	if first.node == "c" {
		t.Fatal("c, not in the ISR, serves")
	}
	owner, other := a, b
	if first.node == "b" {
		owner, other = b, a
	}
	owner.stop(t)
	_, next := h.serving(first.epoch, 10*time.Second)
	if next.node != other.name {
		t.Fatalf("after %s stopped, %s serves", owner.name, next.node)
	}
	other.stop(t)
	waitFor(t, 5*time.Second, "the owner key to go", func() bool { return h.read().Owner == "" })
	// Two TTLs with nobody in the ISR alive: c must not claim.
	time.Sleep(2 * DefaultTTL)
	if rec := h.read(); rec.Owner != "" || rec.Epoch != next.epoch {
		t.Fatalf("record %+v: want no owner in epoch %d", rec, next.epoch)
	}
	if i, e := h.log.first(func(e entry) bool { return e.node == "c" }); i >= 0 {
		t.Fatalf("c, not in the ISR, was given the volume: %+v", e)
	}
	if s := c.d.Status(); s.State != "follower" || s.Epoch != next.epoch || s.Owner != "" {
		t.Fatalf("c status %+v", s)
	}
	h.checkOneServer()
}

func TestRestartPersistedEpoch(t *testing.T) {
	h := newHarness(t, "v1", []string{"a", "b"})
	dirA := t.TempDir()
	a := h.start("a", 0, dirA, nil)
	_, first := h.serving(0, 10*time.Second)
	if first.node != "a" {
		t.Fatalf("%s serves epoch %d; a runs alone", first.node, first.epoch)
	}
	// NB: on a loaded machine a may lose its first epoch(s) before serving
	// (slow etcd, lapsed lease); only the order of epochs matters here.
	b := h.start("b", 1, "", nil)
	waitFor(t, 5*time.Second, "b to follow", func() bool { return b.d.Status().Owner == "a" })
	a.stop(t)
	if e, err := a.epochs.Get(h.volume); err != nil || e < first.epoch {
		t.Fatalf("a's persisted epoch = %d, %v; want %d", e, err, first.epoch)
	}
	_, second := h.serving(first.epoch, 10*time.Second)
	if second.node != "b" {
		t.Fatalf("after a stopped, %s serves", second.node)
	}

	a2 := h.start("a", 0, dirA, nil)
	waitFor(t, 5*time.Second, "restarted a to see b's epoch", func() bool {
		s := a2.d.Status()
		return s.Epoch == second.epoch && s.Owner == "b"
	})
	waitFor(t, 5*time.Second, "restarted a to persist the epoch", func() bool {
		e, err := a2.epochs.Get(h.volume)
		return err == nil && e == second.epoch
	})
	b.stop(t)
	_, third := h.serving(second.epoch, 10*time.Second)
	if third.node != "a" || third.epoch <= second.epoch {
		t.Fatalf("after b stopped, %s serves epoch %d", third.node, third.epoch)
	}
	if e, err := a2.epochs.Get(h.volume); err != nil || e != third.epoch {
		t.Fatalf("a's persisted epoch = %d, %v; want %d", e, err, third.epoch)
	}
	h.checkOneServer()
}

func TestReconcileFailureGivesUp(t *testing.T) {
	h := newHarness(t, "v1", []string{"a", "b"})
	fail := func(*node) func(context.Context, uint64, []string) error {
		return func(context.Context, uint64, []string) error { return errors.New("replica store broken") }
	}
	h.start("a", 0, "", fail)
	h.start("b", 1, "", nil)
	_, served := h.serving(0, 15*time.Second)
	if served.node != "b" {
		t.Fatalf("%s serves; a always fails to reconcile", served.node)
	}
	// If a won an epoch first, it stopped it without serving.
	for _, e := range h.log.snapshot() {
		if e.node == "a" && e.kind == "reconcile" {
			if i, _ := h.log.first(func(s entry) bool { return s.node == "a" && s.kind == "stop" && s.epoch == e.epoch }); i < 0 {
				t.Fatalf("a's failed epoch %d was never stopped: %+v", e.epoch, h.log.snapshot())
			}
		}
	}
	h.checkOneServer()
}
