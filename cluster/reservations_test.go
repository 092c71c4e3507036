package cluster

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"stave.dev/stave/target/scsi"
	"stave.dev/stave/target/scsi/pr"
	"stave.dev/stave/target/scsi/sense"
)

// prTestDevice is an in-memory scsi.BlockDevice.
type prTestDevice struct {
	mu sync.Mutex
	b  []byte
}

func (d *prTestDevice) Size() int64 { return int64(len(d.b)) }

func (d *prTestDevice) ReadAt(_ context.Context, p []byte, off int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(p, d.b[off:])
	return nil
}

func (d *prTestDevice) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.b[off:], p)
	return nil
}

func (d *prTestDevice) Flush(context.Context) error { return nil }

func (d *prTestDevice) Unmap(_ context.Context, off, n int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.b[off : off+n])
	return nil
}

// prTestPorts is the ALUA state of a two-node volume: node 1 (target port
// group 1) owns it, node 2 is standby, until a failover swaps them.
type prTestPorts struct {
	mu    sync.Mutex
	owner uint16
}

func (p *prTestPorts) PortGroups() []scsi.PortGroup {
	g := []scsi.PortGroup{{ID: 1, Ports: []uint16{1}}, {ID: 2, Ports: []uint16{2}}}
	for i := range g {
		g[i].State = p.AccessState(g[i].ID)
	}
	return g
}

func (p *prTestPorts) AccessState(group uint16) scsi.ALUAState {
	p.mu.Lock()
	defer p.mu.Unlock()
	if group == p.owner {
		return scsi.ALUAActiveOptimized
	}
	return scsi.ALUAStandby
}

// prTestNode is one node's export of the test volume: its LU over its own
// ReservationStore, behind a Target.
type prTestNode struct {
	lu  *scsi.LU
	tgt *scsi.Target
	tp  uint16 // target port (and group) of the node
}

func newPRTestNode(t *testing.T, c *Cluster, volume string, tp uint16, p *prTestPorts, resume bool) *prTestNode {
	t.Helper()
	lu, err := scsi.NewLU(scsi.LUConfig{Device: &prTestDevice{b: make([]byte, 1<<20)}, Name: volume,
		Reservations: c.Reservations(volume), ResumeReservations: resume, Ports: p})
	if err != nil {
		t.Fatal(err)
	}
	return &prTestNode{lu: lu, tgt: scsi.NewTarget(scsi.TargetConfig{LUNs: map[uint64]*scsi.LU{0: lu}}), tp: tp}
}

// nexus returns the I_T nexus of initiator i (a letter) through node n.
func (n *prTestNode) nexus(volume string, i byte) scsi.Nexus {
	name := "iqn.1994-05.com.example:" + string(i)
	return scsi.Nexus{InitiatorName: name, InitiatorPort: name + ",i,0x23d000000001",
		TargetPort:         fmt.Sprintf("iqn.2026-11.dev.stave:%s,t,0x%04x", volume, n.tp),
		RelativeTargetPort: n.tp, TargetPortGroup: n.tp}
}

var prTestTag struct {
	mu sync.Mutex
	n  uint64
}

// exec runs one command through n's target.
func (n *prTestNode) exec(nx scsi.Nexus, cdb, dataOut []byte) scsi.Result {
	prTestTag.mu.Lock()
	prTestTag.n++
	tg := prTestTag.n
	prTestTag.mu.Unlock()
	r := n.tgt.Execute(context.Background(), &scsi.Task{Nexus: nx, Tag: tg, CDB: cdb, DataOut: dataOut, ExpectedDataIn: 1 << 16})
	if r.Release != nil {
		r.Data = bytes.Clone(r.Data)
		r.Release()
	}
	return r
}

// prOutcome renders a result: "GOOD", "RESERVATION CONFLICT", or the sense
// key and ASC of a CHECK CONDITION.
func prOutcome(r scsi.Result) string {
	switch r.Status {
	case sense.StatusGood:
		return "GOOD"
	case sense.StatusReservationConflict:
		return "RESERVATION CONFLICT"
	case sense.StatusCheckCondition:
		s := r.Sense
		if len(s) >= 14 && s[0]&0x7f >= 0x72 {
			return fmt.Sprintf("%s %s", sense.Key(s[1]&0xf), sense.ASC(uint16(s[2])<<8|uint16(s[3])))
		}
		if len(s) >= 14 {
			return fmt.Sprintf("%s %s", sense.Key(s[2]&0xf), sense.ASC(uint16(s[12])<<8|uint16(s[13])))
		}
	}
	return fmt.Sprintf("status %#x", uint8(r.Status))
}

func prOutCmd(sa pr.OutServiceAction, typ pr.Type, key, sakey uint64) ([]byte, []byte) {
	cdb := []byte{0x5f, byte(sa), byte(typ), 0, 0, 0, 0, 0, 24, 0}
	p := make([]byte, 24)
	binary.BigEndian.PutUint64(p, key)
	binary.BigEndian.PutUint64(p[8:], sakey)
	return cdb, p
}

var (
	prinReadKeysCDB        = []byte{0x5e, 0x00, 0, 0, 0, 0, 0, 0x10, 0, 0}
	prinReadReservationCDB = []byte{0x5e, 0x01, 0, 0, 0, 0, 0, 0x10, 0, 0}
	turCDB                 = []byte{0x00, 0, 0, 0, 0, 0}
	write10CDB             = []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0}
	read10CDB              = []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0}
	prTestBlock            = make([]byte, 512)
)

// mustOutcome checks that a command ends as want.
func mustOutcome(t *testing.T, what string, r scsi.Result, want string) {
	t.Helper()
	if got := prOutcome(r); got != want {
		t.Fatalf("%s: %s, want %s", what, got, want)
	}
}

// TestReservationsAcrossNodes exports one volume through two nodes' LUs,
// each over its own ReservationStore of one embedded etcd, and checks
// that their persistent reservations are one state of the logical unit
// (SPC-4 §5.13.1) through every target port, standby ones included.
func TestReservationsAcrossNodes(t *testing.T) {
	ctx := context.Background()
	c := openTest(t, t.TempDir())
	defer c.Close()
	const vol = "v1"
	alua := &prTestPorts{owner: 1}
	a := newPRTestNode(t, c, vol, 1, alua, false) // the first node powers the LU on
	b := newPRTestNode(t, c, vol, 2, alua, true)  // the second joins it
	i1a, i1b := a.nexus(vol, 'a'), b.nexus(vol, 'a')
	i2b := b.nexus(vol, 'b')
	i3a, i3b := a.nexus(vol, 'c'), b.nexus(vol, 'c')

	// I1 registers through node 1, I2 through node 2 (standby), whose
	// store is stale: its compare-and-swap loses and is retried.
	cdb, p := prOutCmd(pr.OutRegister, 0, 0, 0x1)
	mustOutcome(t, "REGISTER I1 via node 1", a.exec(i1a, cdb, p), "GOOD")
	cdb, p = prOutCmd(pr.OutRegister, 0, 0, 0x2)
	mustOutcome(t, "REGISTER I2 via node 2", b.exec(i2b, cdb, p), "GOOD")
	cdb, p = prOutCmd(pr.OutReserve, pr.TypeWriteExclusiveRegistrantsOnly, 0x2, 0)
	mustOutcome(t, "RESERVE via node 2", b.exec(i2b, cdb, p), "GOOD")
	mustOutcome(t, "WRITE via standby node 2", b.exec(i2b, write10CDB, prTestBlock), "NOT READY ASC 0x04/0x0b")

	// Node 1 (the owner) enforces the reservation made through node 2.
	if err := a.lu.RefreshReservations(ctx); err != nil {
		t.Fatal(err)
	}
	mustOutcome(t, "WRITE by unregistered I3 via node 1", a.exec(i3a, write10CDB, prTestBlock), "RESERVATION CONFLICT")
	mustOutcome(t, "READ by unregistered I3 via node 1", a.exec(i3a, read10CDB, nil), "GOOD")
	mustOutcome(t, "WRITE by registrant I1 via node 1", a.exec(i1a, write10CDB, prTestBlock), "GOOD")

	// PERSISTENT RESERVE IN is the same through both nodes.
	same := func(what string, cdb []byte, want string) {
		t.Helper()
		ra, rb := a.exec(i3a, cdb, nil), b.exec(i3b, cdb, nil)
		mustOutcome(t, what+" via node 1", ra, "GOOD")
		mustOutcome(t, what+" via node 2", rb, "GOOD")
		if !bytes.Equal(ra.Data, rb.Data) {
			t.Fatalf("%s differs:\nnode 1 %x\nnode 2 %x", what, ra.Data, rb.Data)
		}
		if got := fmt.Sprintf("%x", ra.Data); got != want {
			t.Fatalf("%s = %s, want %s", what, got, want)
		}
	}
	same("READ KEYS", prinReadKeysCDB, "00000002"+"00000010"+"0000000000000001"+"0000000000000002")
	same("READ RESERVATION", prinReadReservationCDB, "00000002"+"00000010"+"0000000000000002"+"0000000000050000")

	// I1 preempts I2 through node 1; node 2 learns it by refreshing, and
	// I2's nexus there gets REGISTRATIONS PREEMPTED.
	cdb, p = prOutCmd(pr.OutPreempt, pr.TypeWriteExclusiveRegistrantsOnly, 0x1, 0x2)
	mustOutcome(t, "PREEMPT via node 1", a.exec(i1a, cdb, p), "GOOD")
	if err := b.lu.RefreshReservations(ctx); err != nil {
		t.Fatal(err)
	}
	mustOutcome(t, "TUR by I2 via node 2", b.exec(i2b, turCDB, nil), "UNIT ATTENTION ASC 0x2a/0x05")
	mustOutcome(t, "second TUR by I2 via standby node 2", b.exec(i2b, turCDB, nil), "NOT READY ASC 0x04/0x0b")
	same("READ KEYS after PREEMPT", prinReadKeysCDB, "00000003"+"00000008"+"0000000000000001")
	same("READ RESERVATION after PREEMPT", prinReadReservationCDB, "00000003"+"00000010"+"0000000000000001"+"0000000000050000")

	// I1 registers through node 2's path too, as mpathpersist does. Then
	// fail over: node 1 is gone, node 2 becomes the owner, refreshes, and
	// the reservation holds there.
	cdb, p = prOutCmd(pr.OutRegister, 0, 0, 0x1)
	mustOutcome(t, "REGISTER I1 via node 2", b.exec(i1b, cdb, p), "GOOD")
	alua.mu.Lock()
	alua.owner = 2
	alua.mu.Unlock()
	b.lu.PortStateChanged()
	if err := b.lu.RefreshReservations(ctx); err != nil {
		t.Fatal(err)
	}
	mustOutcome(t, "TUR by I3 via node 2 after failover", b.exec(i3b, turCDB, nil), "UNIT ATTENTION ASC 0x2a/0x06")
	mustOutcome(t, "WRITE by unregistered I3 via new owner", b.exec(i3b, write10CDB, prTestBlock), "RESERVATION CONFLICT")
	mustOutcome(t, "WRITE by preempted I2 via new owner", b.exec(i2b, write10CDB, prTestBlock), "UNIT ATTENTION ASC 0x2a/0x06")
	mustOutcome(t, "WRITE by preempted I2 via new owner", b.exec(i2b, write10CDB, prTestBlock), "RESERVATION CONFLICT")
	mustOutcome(t, "WRITE by registrant I1 via new owner", b.exec(i1b, write10CDB, prTestBlock), "UNIT ATTENTION ASC 0x2a/0x06")
	mustOutcome(t, "WRITE by registrant I1 via new owner", b.exec(i1b, write10CDB, prTestBlock), "GOOD")

	// A third node that exports the volume later resumes the running
	// cluster's registrations (made without APTPL) instead of dropping
	// them, as a power on would.
	n3 := newPRTestNode(t, c, vol, 3, alua, true)
	r := n3.exec(n3.nexus(vol, 'c'), prinReadKeysCDB, nil)
	if mustOutcome(t, "READ KEYS via node 3", r, "GOOD"); fmt.Sprintf("%x", r.Data) != "00000004"+"00000010"+"0000000000000001"+"0000000000000001" {
		t.Fatalf("READ KEYS via node 3 = %x", r.Data)
	}
}

// TestReservationsConcurrentRegister registers sixteen initiators at once,
// half through each of two nodes: every REGISTER lands (no lost update)
// and the generation counts each once. Each node's watch then brings a
// reservation made through the other node to its CheckAccess.
func TestReservationsConcurrentRegister(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := openTest(t, t.TempDir())
	defer c.Close()
	const vol = "v2"
	alua := &prTestPorts{owner: 1}
	nodes := []*prTestNode{newPRTestNode(t, c, vol, 1, alua, false), newPRTestNode(t, c, vol, 2, alua, true)}

	// Watches, one per node, as the daemon runs them.
	refreshed := []chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1)}
	watchErr := make(chan error, len(nodes))
	for i, n := range nodes {
		go func() {
			watchErr <- c.WatchReservations(ctx, vol, func(ctx context.Context) error {
				err := n.lu.RefreshReservations(ctx)
				select {
				case refreshed[i] <- struct{}{}:
				default:
				}
				return err
			})
		}()
	}

	const per = 8
	var wg sync.WaitGroup
	results := make([]string, 2*per)
	for i := range 2 * per {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := nodes[i%2]
			cdb, p := prOutCmd(pr.OutRegister, 0, 0, uint64(0x100+i))
			results[i] = prOutcome(n.exec(n.nexus(vol, byte('a'+i)), cdb, p))
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r != "GOOD" {
			t.Errorf("REGISTER %d via node %d: %s", i, i%2+1, r)
		}
	}
	var want []byte
	for i, n := range nodes {
		r := n.exec(n.nexus(vol, 'z'), prinReadKeysCDB, nil)
		mustOutcome(t, "READ KEYS", r, "GOOD")
		if gen, l := binary.BigEndian.Uint32(r.Data), binary.BigEndian.Uint32(r.Data[4:]); gen != 2*per || l != 8*2*per {
			t.Fatalf("READ KEYS via node %d: generation %d, %d keys; want %d and %d", i+1, gen, l/8, 2*per, 2*per)
		}
		if i == 0 {
			want = r.Data
		} else if !bytes.Equal(r.Data, want) {
			t.Fatalf("READ KEYS differ:\nnode 1 %x\nnode 2 %x", want, r.Data)
		}
	}
	keys := map[uint64]bool{}
	for k := 8; k+8 <= len(want); k += 8 {
		keys[binary.BigEndian.Uint64(want[k:])] = true
	}
	for i := range 2 * per {
		if !keys[uint64(0x100+i)] {
			t.Errorf("key %#x lost", 0x100+i)
		}
	}

	// Initiator b (registered through node 2) reserves EXCLUSIVE ACCESS
	// through node 2; node 1's watch makes its owner refuse initiator z.
	holder := nodes[1]
	cdb, p := prOutCmd(pr.OutReserve, pr.TypeExclusiveAccess, 0x101, 0)
	mustOutcome(t, "RESERVE via node 2", holder.exec(holder.nexus(vol, 'b'), cdb, p), "GOOD")
	owner := nodes[0]
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for prOutcome(owner.exec(owner.nexus(vol, 'z'), read10CDB, nil)) != "RESERVATION CONFLICT" {
		select {
		case <-refreshed[0]:
		case <-deadline.C:
			t.Fatal("node 1 did not learn the reservation made through node 2")
		}
	}
	cancel()
	for range nodes {
		if err := <-watchErr; !errors.Is(err, context.Canceled) {
			t.Fatalf("WatchReservations = %v, want context.Canceled", err)
		}
	}
}
