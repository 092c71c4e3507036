package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"stave.dev/stave/internal/initiator"
	"stave.dev/stave/target/scsi/sense"
)

// Persistent reservations across failover (issue 6): one reservation
// state in etcd for a replicated volume, applied through every holder's
// target ports, kept when the owner dies and when it comes back.
//
// TestClusterReservationFailover runs three daemons on 127.0.0.2-4 with a
// 3-replica volume and two initiators of its own (plain sessions, one per
// node's portal, like the paths mpathpersist drives):
//
//  1. A registers its key through every node's port (the owner's first)
//     and reserves WRITE EXCLUSIVE – REGISTRANTS ONLY through the owner;
//     READ KEYS and READ RESERVATION answer the same through every port.
//  2. A writes through the owner; B, unregistered, gets RESERVATION
//     CONFLICT on WRITE and may still READ.
//  3. kill -9 the owner: once another holder serves, READ RESERVATION
//     there shows A's key and type, A's writes succeed, B still conflicts.
//  4. The killed node is restarted: its port reports the same state.
//  5. B registers and PREEMPTs A through a standby node; through the
//     owner, B holds the reservation and A conflicts.

const (
	prInitiatorA = "iqn.2026-11.dev.stave:e2e-pr-a"
	prInitiatorB = "iqn.2026-11.dev.stave:e2e-pr-b"
	prKeyA       = 0xa0a0a0a0a0a0a0a0
	prKeyB       = 0xb0b0b0b0b0b0b0b0
	prCmdTimeout = 5 * time.Second  // one SCSI command on one session
	prServeWait  = 30 * time.Second // a new owner serves after a kill
)

// scsiPath is one initiator session to one portal that is dialled again
// when it breaks (a killed or restarted node). It is not safe for
// concurrent use.
type scsiPath struct {
	cfg initiator.Config
	// dial replaces initiator.Dial (e.g. to dial inside a network
	// namespace); nil uses initiator.Dial.
	dial func(context.Context, initiator.Config) (*initiator.Session, error)
	s    *initiator.Session
}

// session returns the logged-in session, dialling it first if needed.
func (p *scsiPath) session(ctx context.Context) (*initiator.Session, error) {
	if p.s != nil && p.s.Err() == nil {
		return p.s, nil
	}
	p.drop()
	dial := p.dial
	if dial == nil {
		dial = initiator.Dial
	}
	ctx, cancel := context.WithTimeout(ctx, prCmdTimeout)
	defer cancel()
	s, err := dial(ctx, p.cfg)
	if err != nil {
		return nil, err
	}
	p.s = s
	return s, nil
}

// drop forgets the session, closing its connection without a logout.
func (p *scsiPath) drop() {
	if p.s != nil {
		p.s.Abort()
		p.s = nil
	}
}

// close logs out (a live session) or closes (a broken one).
func (p *scsiPath) close() {
	if p.s != nil {
		p.s.Close()
		p.s = nil
	}
}

// isUnitAttention reports whether err is CHECK CONDITION, UNIT ATTENTION:
// the command did not run and may be sent again.
func isUnitAttention(err error) bool {
	k, _, ok := initiator.SenseOf(err)
	return ok && k == sense.KeyUnitAttention
}

// isNotReady reports whether err is CHECK CONDITION, NOT READY (standby,
// transitioning, becoming ready).
func isNotReady(err error) bool {
	k, _, ok := initiator.SenseOf(err)
	return ok && k == sense.KeyNotReady
}

// isConflict reports whether err is RESERVATION CONFLICT.
func isConflict(err error) bool {
	st, ok := initiator.StatusOf(err)
	return ok && st == sense.StatusReservationConflict
}

// do runs fn on the path's session, each try bounded by prCmdTimeout. It
// sends the command again after a unit attention (the command did not
// run; at most 16 in a row) and after a broken session or a failed
// dial, dialling again, until ctx ends. Any other outcome is returned.
func (p *scsiPath) do(ctx context.Context, fn func(context.Context, *initiator.Session) error) error {
	uas := 0
	for {
		s, err := p.session(ctx)
		if err == nil {
			cctx, cancel := context.WithTimeout(ctx, prCmdTimeout)
			err = fn(cctx, s)
			cancel()
			switch {
			case err == nil:
				return nil
			case isUnitAttention(err) && uas < 16:
				uas++
				continue
			case !errors.Is(err, initiator.ErrBroken):
				return err
			}
		}
		// Broken or not dialled: try again after a pause.
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w (context: %v)", p.cfg.Addr, err, ctx.Err())
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// eventually is do that also retries NOT READY (the port is standby or
// transitioning: no owner serves yet) every 50 ms until ctx ends.
func (p *scsiPath) eventually(ctx context.Context, fn func(context.Context, *initiator.Session) error) error {
	for {
		err := p.do(ctx, fn)
		if err == nil || !isNotReady(err) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// writeBlock writes one failoverPattern block (lba, seq) through s,
// reading the capacity first if this session has not yet.
func writeBlock(ctx context.Context, s *initiator.Session, lba, seq uint64) error {
	if s.Capacity().BlockSize == 0 {
		if _, err := s.ReadCapacity(ctx); err != nil {
			return err
		}
	}
	b := make([]byte, failoverBlock)
	failoverPattern(b, lba, seq)
	return s.Write(ctx, lba*uint64(failoverBlock/s.Capacity().BlockSize), b)
}

// readBlocks reads len(b)/failoverBlock blocks at lba through s.
func readBlocks(ctx context.Context, s *initiator.Session, lba uint64, b []byte) error {
	if s.Capacity().BlockSize == 0 {
		if _, err := s.ReadCapacity(ctx); err != nil {
			return err
		}
	}
	return s.Read(ctx, lba*uint64(failoverBlock/s.Capacity().BlockSize), b)
}

// prView is what PERSISTENT RESERVE IN reports through one port.
type prView struct {
	Generation uint32
	Keys       []uint64
	Res        initiator.Reservation
}

func (v prView) String() string {
	var ks []string
	for _, k := range v.Keys {
		ks = append(ks, fmt.Sprintf("%#x", k))
	}
	r := "none"
	if v.Res.Holder {
		r = fmt.Sprintf("key %#x type %d gen %d", v.Res.Key, v.Res.Type, v.Res.Generation)
	}
	return fmt.Sprintf("gen %d keys [%s] reservation %s", v.Generation, strings.Join(ks, " "), r)
}

// readPR reads the keys and the reservation through p, waiting while
// the port is transitioning (PERSISTENT RESERVE IN is refused then, SPC-4
// §5.11.2.4.5: a restarted node until it has read the ownership record).
func readPR(ctx context.Context, p *scsiPath) (prView, error) {
	var v prView
	ctx, cancel := context.WithTimeout(ctx, prServeWait)
	defer cancel()
	err := p.eventually(ctx, func(ctx context.Context, s *initiator.Session) error {
		g, keys, err := s.ReadKeys(ctx)
		if err != nil {
			return err
		}
		r, err := s.ReadReservation(ctx)
		if err != nil {
			return err
		}
		v = prView{Generation: g, Keys: keys, Res: r}
		return nil
	})
	return v, err
}

// prInitiator is one initiator with a session to every node's portal.
type prInitiator struct {
	name  string
	paths map[*clusterNode]*scsiPath
}

// newPRInitiator prepares (does not dial) one path per node; path i uses
// ISID ...0x50+i so that the nexuses are distinct per port.
func newPRInitiator(t *testing.T, name, target string, nodes []*clusterNode) *prInitiator {
	in := &prInitiator{name: name, paths: map[*clusterNode]*scsiPath{}}
	for i, n := range nodes {
		in.paths[n] = &scsiPath{cfg: initiator.Config{Addr: n.portal, Target: target, InitiatorName: name,
			ISID: [6]byte{0x80, 0x00, 0x53, 0x74, 0x50, byte(i + 1)}}}
	}
	t.Cleanup(func() {
		for _, p := range in.paths {
			p.close()
		}
	})
	return in
}

// startReplicatedCluster starts three daemons on ips with embedded etcd
// and replication, waits until all are up, creates a 3-replica 64 MiB
// volume vol, waits until its ISR holds all three and returns the nodes
// and the volume's target name.
func startReplicatedCluster(t *testing.T, ips []string, vol string) ([]*clusterNode, string) {
	t.Helper()
	return startReplicatedClusterPools(t, ips, vol, 0)
}

// startReplicatedClusterPools is startReplicatedCluster where the first
// withPool nodes get a pool (three sparse 1 GiB files, default segments)
// before the volume is
// created, so that their copies of it live in their pools; the others keep
// theirs in a file.
func startReplicatedClusterPools(t *testing.T, ips []string, vol string, withPool int) ([]*clusterNode, string) {
	t.Helper()
	for _, ip := range ips {
		requireLoopbackAlias(t, ip)
	}
	staveBinary(t)
	ns := make([]*clusterNode, len(ips))
	var initial []string
	for i := range ns {
		ns[i] = newClusterNode(t, fmt.Sprintf("n%d", i+1), ips[i])
		initial = append(initial, ns[i].name+"="+ns[i].peer)
	}
	for i, n := range ns {
		n.setArgs("--initial-cluster", strings.Join(initial, ","),
			"--replication-listen", net.JoinHostPort(ips[i], strconv.Itoa(freePort(t))))
	}
	startTogether(t, ns, func(_ int, n *clusterNode) error { return n.startErr() })
	ns[0].waitStates(t, map[string]string{"n1": "up", "n2": "up", "n3": "up"})
	for _, n := range ns[:withPool] {
		n.MustCLI(append([]string{"pool", "create"}, deviceFlags(sparseFiles(t, t.TempDir(), 3, 1<<30))...)...)
	}
	ns[0].MustCLI("volume", "create", vol, "--size", "64MiB", "--replicas", "3")
	v, err := volumeJSON(ns[0].daemon, vol)
	if err != nil {
		t.Fatal(err)
	}
	target, _ := v["target"].(string)
	if target == "" {
		t.Fatalf("volume show has no target: %v", v)
	}
	if _, err := waitInSync(ns[0], vol, 3, clusterWaitTimeout); err != nil {
		t.Fatal(err)
	}
	// Where each copy lives: a node with a pool has no file copy. The ISR
	// of a new volume names every holder at once, so a holder may still be
	// opening its copy: wait for it.
	for i, n := range ns {
		inPool := i < withPool
		deadline := time.Now().Add(clusterWaitTimeout)
		for {
			_, err := os.Stat(filepath.Join(n.DataDir(), "volumes", vol, "replica"))
			hasFile := err == nil
			created := strings.Contains(n.Log(), "replica copy created in the pool")
			if inPool && hasFile {
				t.Fatalf("%s: its copy should be in its pool, but it has a file copy", n.name)
			}
			if !inPool && created {
				t.Fatalf("%s: it has no pool, but logged a copy created in one", n.name)
			}
			if hasFile != inPool && created == inPool {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no copy within %v (in the pool %v; file copy %v: %v)", n.name, clusterWaitTimeout, inPool, hasFile, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return ns, target
}

// ownerNode returns the running node that `volume show` (asked of any
// running node) names as vol's owner, other than not (nil for any).
func ownerNode(t *testing.T, nodes []*clusterNode, vol string, not *clusterNode, timeout time.Duration) *clusterNode {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := "no running node answered"
	for time.Now().Before(deadline) {
		for _, n := range nodes {
			if n.cmd == nil {
				continue
			}
			ns, err := n.nodes()
			if err != nil {
				last = err.Error()
				continue
			}
			ids := map[string]string{}
			for _, nd := range ns {
				ids[nd.ID] = nd.Name
			}
			v, err := volumeJSON(n.daemon, vol)
			if err != nil {
				last = err.Error()
				continue
			}
			o := volumeOwner(v)
			for _, c := range nodes {
				if c != not && c.cmd != nil && nodeMatches(c, o, ids) {
					return c
				}
			}
			last = fmt.Sprintf("%s reports owner %q", n.name, o)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no owner of %s (other than %v) within %v: %s", vol, not, timeout, last)
	return nil
}

// checkPRSame reads the PR state through each node's path of in and
// fails t unless every port reports want.
func checkPRSame(t *testing.T, ctx context.Context, step string, in *prInitiator, nodes []*clusterNode, want prView) {
	t.Helper()
	for _, n := range nodes {
		got, err := readPR(ctx, in.paths[n])
		if err != nil {
			t.Fatalf("%s: PERSISTENT RESERVE IN through %s (%s): %v", step, n.name, n.portal, err)
		}
		if got.String() != want.String() {
			t.Errorf("%s: through %s (%s): %v, want %v", step, n.name, n.portal, got, want)
		}
	}
}

func TestClusterReservationFailover(t *testing.T) {
	requireE2E(t)
	testStart := time.Now()
	const vol = "prfail"
	ns, target := startReplicatedCluster(t, []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}, vol)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := newPRInitiator(t, prInitiatorA, target, ns)
	b := newPRInitiator(t, prInitiatorB, target, ns)
	owner := ownerNode(t, ns, vol, nil, clusterWaitTimeout)
	var standby []*clusterNode
	for _, n := range ns {
		if n != owner {
			standby = append(standby, n)
		}
	}
	t.Logf("owner %s (%s); standby %s, %s", owner.name, owner.portal, standby[0].name, standby[1].name)

	// 1. A registers through the owner, then through the standby ports
	// (PERSISTENT RESERVE OUT is allowed in standby, SPC-4 §5.11.2.4.4),
	// and reserves through the owner.
	prOut := func(in *prInitiator, n *clusterNode, action initiator.PRAction, typ initiator.PRType, key, saKey uint64) {
		t.Helper()
		err := in.paths[n].eventually(ctx, func(ctx context.Context, s *initiator.Session) error {
			return s.PersistentReserveOut(ctx, action, typ, key, saKey)
		})
		if err != nil {
			t.Fatalf("%s: PERSISTENT RESERVE OUT %d (type %d key %#x sa key %#x) through %s: %v", in.name, action, typ, key, saKey, n.name, err)
		}
	}
	for _, n := range append([]*clusterNode{owner}, standby...) {
		prOut(a, n, initiator.PRRegister, 0, 0, prKeyA)
	}
	const typ = initiator.PRWriteExclusiveRegistrantsOnly
	prOut(a, owner, initiator.PRReserve, typ, prKeyA, 0)
	want, err := readPR(ctx, a.paths[owner])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(want.Keys, []uint64{prKeyA, prKeyA, prKeyA}) || !want.Res.Holder || want.Res.Key != prKeyA || want.Res.Type != typ {
		t.Fatalf("after REGISTER ×3 and RESERVE: %v, want A's key three times and its reservation of type %d", want, typ)
	}
	checkPRSame(t, ctx, "registered and reserved", a, ns, want)
	checkPRSame(t, ctx, "registered and reserved (B)", b, ns, want)

	// 2. A writes; B (unregistered) conflicts on WRITE, reads.
	seq := uint64(0)
	write := func(in *prInitiator, n *clusterNode) error {
		seq++
		ctx, cancel := context.WithTimeout(ctx, prServeWait)
		defer cancel()
		return in.paths[n].eventually(ctx, func(ctx context.Context, s *initiator.Session) error {
			return writeBlock(ctx, s, seq%64, seq)
		})
	}
	if err := write(a, owner); err != nil {
		t.Fatalf("A's WRITE through the owner %s: %v", owner.name, err)
	}
	if err := write(b, owner); !isConflict(err) {
		t.Fatalf("B's WRITE through the owner %s: %v, want RESERVATION CONFLICT", owner.name, err)
	}
	buf := make([]byte, failoverBlock)
	if err := b.paths[owner].eventually(ctx, func(ctx context.Context, s *initiator.Session) error {
		return readBlocks(ctx, s, 0, buf)
	}); err != nil {
		t.Errorf("B's READ through the owner (WRITE EXCLUSIVE – REGISTRANTS ONLY allows it): %v", err)
	}

	// 3. kill -9 the owner; the new owner enforces the same reservation.
	killed := time.Now()
	owner.Kill()
	a.paths[owner].drop()
	b.paths[owner].drop()
	newOwner := ownerNode(t, ns, vol, owner, prServeWait)
	if err := write(a, newOwner); err != nil {
		t.Fatalf("A's WRITE through the new owner %s after killing %s: %v", newOwner.name, owner.name, err)
	}
	t.Logf("killed %s; %s owns the volume; A's first write through it acknowledged %v after the kill",
		owner.name, newOwner.name, time.Since(killed).Round(time.Millisecond))
	got, err := readPR(ctx, a.paths[newOwner])
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != want.String() {
		t.Errorf("after failover, through the new owner %s: %v, want %v", newOwner.name, got, want)
	}
	if err := write(a, newOwner); err != nil {
		t.Errorf("A's WRITE through the new owner %s: %v", newOwner.name, err)
	}
	if err := write(b, newOwner); !isConflict(err) {
		t.Errorf("B's WRITE through the new owner %s: %v, want RESERVATION CONFLICT", newOwner.name, err)
	}
	checkPRSame(t, ctx, "after failover", a, standby, want)

	// 4. The killed node comes back with the same state.
	if err := owner.startErr(); err != nil {
		t.Fatal(err)
	}
	newOwner.waitStates(t, map[string]string{owner.name: "up"})
	checkPRSame(t, ctx, "after the old owner's restart", a, ns, want)
	checkPRSame(t, ctx, "after the old owner's restart (B)", b, ns, want)

	// 5. B registers through every port and preempts A through a standby
	// port (the restarted node); the owner enforces it.
	var other *clusterNode // a standby node now
	for _, n := range ns {
		if n != newOwner {
			other = n
			break
		}
	}
	for _, n := range ns {
		prOut(b, n, initiator.PRRegister, 0, 0, prKeyB)
	}
	prOut(b, other, initiator.PRPreempt, typ, prKeyB, prKeyA)
	preempted := time.Now()
	// SPC-4 §5.13.11.2.3: once PREEMPT has completed, the preempted
	// nexuses' commands conflict, on every port. A writes through the
	// owner at once (unit attentions retried, nothing else) until it
	// conflicts; every write acknowledged meanwhile went through a stale
	// reservation state.
	var accepted int
	var firstErr error
	for time.Since(preempted) < 5*time.Second {
		seq++
		firstErr = a.paths[newOwner].do(ctx, func(ctx context.Context, s *initiator.Session) error {
			return writeBlock(ctx, s, seq%64, seq)
		})
		if firstErr != nil {
			break
		}
		accepted++
	}
	window := time.Since(preempted)
	if !isConflict(firstErr) {
		t.Fatalf("A's WRITE through the owner %s after B preempted it through %s: %v, want RESERVATION CONFLICT", newOwner.name, other.name, firstErr)
	}
	t.Logf("after B's PREEMPT through %s returned, the owner %s acknowledged %d more WRITEs of A; the first conflict came %v after it",
		other.name, newOwner.name, accepted, window.Round(time.Microsecond))
	if accepted > 0 {
		// Known product gap: the owner applies a PERSISTENT RESERVE OUT
		// made through another node only when its etcd watch fires
		// (cluster.WatchReservations -> LU.RefreshReservations), after
		// the PREEMPT has already completed.
		t.Errorf("the owner %s acknowledged %d WRITEs of A (for %v) after B's PREEMPT through %s had completed: "+
			"a reservation change through another node is enforced late", newOwner.name, accepted, window.Round(time.Microsecond), other.name)
	}
	want, err = readPR(ctx, b.paths[other])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(want.Keys, []uint64{prKeyB, prKeyB, prKeyB}) || !want.Res.Holder || want.Res.Key != prKeyB || want.Res.Type != typ {
		t.Fatalf("after B's PREEMPT: %v, want B's key three times and its reservation of type %d", want, typ)
	}
	checkPRSame(t, ctx, "after PREEMPT", b, ns, want)
	checkPRSame(t, ctx, "after PREEMPT (A)", a, ns, want)
	if err := write(a, newOwner); !isConflict(err) {
		t.Errorf("A's WRITE through the owner %s after the PREEMPT: %v, want RESERVATION CONFLICT", newOwner.name, err)
	}
	if err := write(b, newOwner); err != nil {
		t.Errorf("B's WRITE through the owner %s after its PREEMPT: %v", newOwner.name, err)
	}
	t.Logf("whole test %v", time.Since(testStart).Round(time.Millisecond))
}
