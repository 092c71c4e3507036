package initiator

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"stave.dev/stave/target/iscsi"
	"stave.dev/stave/target/scsi"
	"stave.dev/stave/target/scsi/sense"
)

// These tests run the initiator against Stave's own target (target/iscsi
// over a scsi.LU) in process: two servers export one LU on two ports in
// two target port groups, as two cluster nodes would.

const (
	testTarget    = "iqn.2026-11.dev.stave:initiator-test"
	testInitiator = "iqn.2026-11.dev.stave:initiator-test-client"
)

// memDev is an in-memory scsi.BlockDevice.
type memDev struct {
	mu sync.Mutex
	b  []byte
}

func (d *memDev) Size() int64 { return int64(len(d.b)) }

func (d *memDev) ReadAt(_ context.Context, p []byte, off int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(p, d.b[off:])
	return nil
}

func (d *memDev) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.b[off:], p)
	return nil
}

func (d *memDev) Flush(context.Context) error { return nil }

func (d *memDev) Unmap(_ context.Context, off, n int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.b[off : off+n])
	return nil
}

// ports is a settable scsi.PortState: group i+1 has state states[i] and
// relative port 0x100*(i+1)+1.
type ports struct {
	mu     sync.Mutex
	states []scsi.ALUAState
}

func (p *ports) PortGroups() []scsi.PortGroup {
	p.mu.Lock()
	defer p.mu.Unlock()
	var gs []scsi.PortGroup
	for i, s := range p.states {
		gs = append(gs, scsi.PortGroup{ID: uint16(i + 1), State: s, Ports: []uint16{uint16(0x100*(i+1) + 1)}})
	}
	return gs
}

func (p *ports) AccessState(group uint16) scsi.ALUAState {
	p.mu.Lock()
	defer p.mu.Unlock()
	if group == 0 || int(group) > len(p.states) {
		return scsi.ALUAUnavailable
	}
	return p.states[group-1]
}

// set changes the states and raises ASYMMETRIC ACCESS STATE CHANGED.
func (p *ports) set(lu *scsi.LU, states ...scsi.ALUAState) {
	p.mu.Lock()
	p.states = states
	p.mu.Unlock()
	lu.PortStateChanged()
}

type oneTarget struct{ t *iscsi.Target }

func (o oneTarget) Target(name string) (*iscsi.Target, bool) { return o.t, name == o.t.Name }
func (o oneTarget) Targets() []*iscsi.Target                 { return []*iscsi.Target{o.t} }

// node is one in-process target server (a "cluster node").
type node struct {
	addr string
	stop func()
}

// startNode serves dev's target as port group group on addr
// ("127.0.0.1:0" for any port) until stop or the end of the test.
func startNode(t *testing.T, dev scsi.Device, group uint16, addr string) *node {
	t.Helper()
	srv, err := iscsi.NewServer(iscsi.Config{
		Portals: []iscsi.Portal{{Listen: addr}},
		Targets: oneTarget{&iscsi.Target{Name: testTarget, Device: dev, PortGroup: group, RelativePortBase: 0x100 * group}},
		// Short, so that a stopped node's sessions end quickly.
		ShutdownTimeout: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	n := &node{addr: srv.Addrs()[0].String()}
	var once sync.Once
	n.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Serve: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Errorf("Serve did not return")
			}
		})
	}
	t.Cleanup(n.stop)
	return n
}

// newLU returns a 1 MiB LU of 4096-byte blocks over memory, with ALUA
// states from ps.
func newLU(t *testing.T, ps *ports) (*scsi.LU, *scsi.Target) {
	t.Helper()
	cfg := scsi.LUConfig{Device: &memDev{b: make([]byte, 1<<20)}, BlockSize: 4096, Name: "test",
		NAA: [16]byte{0x60, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}}
	if ps != nil {
		cfg.Ports = ps
	}
	lu, err := scsi.NewLU(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return lu, scsi.NewTarget(scsi.TargetConfig{LUNs: map[uint64]*scsi.LU{0: lu}})
}

func dial(t *testing.T, ctx context.Context, addr string, isid byte) *Session {
	t.Helper()
	s, err := Dial(ctx, Config{Addr: addr, Target: testTarget, InitiatorName: testInitiator,
		ISID: [6]byte{0x80, 0, 0, 0, 0, isid}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestSessionStave runs every Session helper against Stave's target.
func TestSessionStave(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ps := &ports{states: []scsi.ALUAState{scsi.ALUAActiveOptimized, scsi.ALUAStandby}}
	lu, tgt := newLU(t, ps)
	a, b := startNode(t, tgt, 1, "127.0.0.1:0"), startNode(t, tgt, 2, "127.0.0.1:0")
	s := dial(t, ctx, a.addr, 1)

	c, err := s.ReadCapacity(ctx)
	if err != nil || c != (Capacity{Blocks: 256, BlockSize: 4096}) || s.Capacity() != c {
		t.Fatalf("ReadCapacity = %+v, %v", c, err)
	}
	inq, err := s.Inquiry(ctx)
	if err != nil || inq.DeviceType != 0 || inq.PeripheralQualifier != 0 || inq.TPGS == 0 || inq.Vendor == "" {
		t.Fatalf("Inquiry = %+v, %v", inq, err)
	}
	id, err := s.DeviceID(ctx)
	if err != nil || !id.HasPortGroup || id.PortGroup != 1 || id.RelativePort != 0x101 || len(id.NAA) != 16 {
		t.Fatalf("DeviceID = %+v, %v", id, err)
	}
	gs, err := s.ReportTargetPortGroups(ctx)
	if err != nil || len(gs) != 2 || gs[0].ID != 1 || gs[0].State != ActiveOptimized || gs[1].State != Standby ||
		len(gs[1].Ports) != 1 || gs[1].Ports[0] != 0x201 {
		t.Fatalf("ReportTargetPortGroups = %+v, %v", gs, err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}

	// Reads and writes larger than FirstBurstLength and a data segment.
	w := make([]byte, 40*4096)
	for i := range w {
		w[i] = byte(i * 7)
	}
	if err := s.Write(ctx, 10, w); err != nil {
		t.Fatal(err)
	}
	r := make([]byte, len(w))
	if err := s.Read(ctx, 10, r); err != nil || !bytes.Equal(r, w) {
		t.Fatalf("read back: %v, equal %v", err, bytes.Equal(r, w))
	}
	// Past the end: ILLEGAL REQUEST, LBA OUT OF RANGE; the session lives on.
	err = s.Read(ctx, 256, r[:4096])
	if k, asc, ok := SenseOf(err); !ok || k != sense.KeyIllegalRequest || asc != sense.ASCLBAOutOfRange || s.Err() != nil {
		t.Fatalf("read past the end: %v", err)
	}

	// The standby port: NOT READY, standby; allowed commands work.
	sb := dial(t, ctx, b.addr, 2)
	if id, err := sb.DeviceID(ctx); err != nil || id.PortGroup != 2 || !bytes.Equal(id.NAA, mustNAA(t, s)) {
		t.Fatalf("standby DeviceID = %+v, %v", id, err)
	}
	err = sb.TestUnitReady(ctx)
	if k, asc, ok := SenseOf(err); !ok || k != sense.KeyNotReady || asc != sense.ASCLogicalUnitNotAccessibleStandby {
		t.Fatalf("TEST UNIT READY on standby: %v", err)
	}

	// Persistent reservations through both ports.
	if err := s.PersistentReserveOut(ctx, PRRegister, 0, 0, 0xaa); err != nil {
		t.Fatalf("register: %v", err)
	}
	if err := sb.PersistentReserveOut(ctx, PRRegister, 0, 0, 0xbb); err != nil {
		t.Fatalf("register through the standby port: %v", err)
	}
	if err := s.PersistentReserveOut(ctx, PRReserve, PRWriteExclusive, 0xaa, 0); err != nil {
		t.Fatalf("reserve: %v", err)
	}
	if _, keys, err := sb.ReadKeys(ctx); err != nil || len(keys) != 2 || keys[0] != 0xaa || keys[1] != 0xbb {
		t.Fatalf("ReadKeys = %x, %v", keys, err)
	}
	if res, err := sb.ReadReservation(ctx); err != nil || !res.Holder || res.Key != 0xaa || res.Type != PRWriteExclusive {
		t.Fatalf("ReadReservation = %+v, %v", res, err)
	}
	ps.set(lu, scsi.ALUAStandby, scsi.ALUAActiveOptimized)
	// The first command through b reports the state change.
	if err := sb.Write(ctx, 0, w[:4096]); !errors.Is(err, ErrNoCapacity) {
		t.Fatalf("write before ReadCapacity: %v, want ErrNoCapacity", err)
	}
	if _, err := sb.ReadCapacity(ctx); !isUA(err) {
		t.Fatalf("first command after the state change: %v, want UNIT ATTENTION", err)
	}
	if _, err := sb.ReadCapacity(ctx); err != nil {
		t.Fatal(err)
	}
	err = sb.Write(ctx, 0, w[:4096])
	if st, ok := StatusOf(err); !ok || st != sense.StatusReservationConflict {
		t.Fatalf("write by a registrant under WRITE EXCLUSIVE: %v, want RESERVATION CONFLICT", err)
	}
	if err := s.PersistentReserveOut(ctx, PRClear, 0, 0xaa, 0); !isUA(err) {
		t.Fatalf("first command through a after the state change: %v, want UNIT ATTENTION", err)
	}
	if err := s.PersistentReserveOut(ctx, PRClear, 0, 0xaa, 0); err != nil {
		t.Fatalf("clear through the standby port: %v", err)
	}
	if _, err := sb.ReadReservation(ctx); !isUA(err) { // RESERVATIONS PREEMPTED
		t.Fatalf("first command of the other registrant after CLEAR: %v, want UNIT ATTENTION", err)
	}
	if res, err := sb.ReadReservation(ctx); err != nil || res.Holder {
		t.Fatalf("ReadReservation after CLEAR = %+v, %v", res, err)
	}

	// A context that ended before the call fails it without breaking the
	// session.
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if err := s.Ping(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Ping with a cancelled context: %v", err)
	}
	if s.Err() != nil || s.Ping(ctx) != nil {
		t.Fatalf("a context cancelled before the call broke the session: %v", s.Err())
	}
}

func mustNAA(t *testing.T, s *Session) []byte {
	t.Helper()
	id, err := s.DeviceID(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return id.NAA
}

// TestSessionBrokenMidCommand checks that a deadline during a command
// breaks the session with ErrBroken and the context's error.
func TestSessionBrokenMidCommand(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		fakeLoginThenSilence(nc)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Dial(ctx, Config{Addr: ln.Addr().String(), Target: testTarget, InitiatorName: testInitiator})
	if err != nil {
		t.Fatal(err)
	}
	short, scancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer scancel()
	err = s.TestUnitReady(short)
	if !errors.Is(err, ErrBroken) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("command with no answer: %v, want ErrBroken and DeadlineExceeded", err)
	}
	if err := s.TestUnitReady(ctx); !errors.Is(err, ErrBroken) {
		t.Fatalf("command on a broken session: %v", err)
	}
	s.Close()
	<-done
}

// fakeLoginThenSilence answers the two login stages and then reads
// without answering until the connection closes.
func fakeLoginThenSilence(nc net.Conn) {
	var p pdu
	s := &Session{nc: nc, r: bufio.NewReader(nc)}
	for range 2 {
		if err := s.recv(&p); err != nil {
			return
		}
		h := s.header(OpLoginResp, false)
		h[1] = p.h[1]
		copy(h[16:20], p.h[16:20])
		if err := s.send(nil); err != nil {
			return
		}
	}
	for s.recv(&p) == nil {
	}
}

// TestMultipathFailover drives a Multipath over two nodes that swap the
// active port group, then loses and regains a node, and checks every
// write landed.
func TestMultipathFailover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ps := &ports{states: []scsi.ALUAState{scsi.ALUAActiveOptimized, scsi.ALUAStandby}}
	lu, tgt := newLU(t, ps)
	a, b := startNode(t, tgt, 1, "127.0.0.1:0"), startNode(t, tgt, 2, "127.0.0.1:0")
	m, err := OpenMultipath(ctx, MultipathConfig{Portals: []string{b.addr, a.addr}, Target: testTarget,
		InitiatorName: testInitiator, IOTimeout: 10 * time.Second, CheckInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.ReadCapacity(ctx); err != nil {
		t.Fatal(err)
	}
	want := map[string]AccessState{a.addr: ActiveOptimized, b.addr: Standby}
	for _, pi := range m.Paths() {
		if !pi.Up || !pi.Known || pi.State != want[pi.Portal] {
			t.Fatalf("paths after open: %+v", m.Paths())
		}
	}
	blk := func(lba uint64, seq int) []byte {
		return bytes.Repeat([]byte(fmt.Sprintf("%07d:%07d\n", lba, seq)), 4096/16)
	}
	seq := 0
	write := func(what string) {
		t.Helper()
		for lba := range uint64(16) {
			seq++
			if err := m.Write(ctx, lba, blk(lba, seq)); err != nil {
				t.Fatalf("%s: write %d: %v (paths %+v)", what, lba, err, m.Paths())
			}
		}
	}
	check := func(what string) {
		t.Helper()
		r := make([]byte, 4096)
		for lba := range uint64(16) {
			if err := m.Read(ctx, lba, r); err != nil {
				t.Fatalf("%s: read %d: %v", what, lba, err)
			}
			if w := blk(lba, seq-15+int(lba)); !bytes.Equal(r, w) {
				t.Fatalf("%s: lba %d holds %q, want %q", what, lba, r[:16], w[:16])
			}
		}
	}
	write("a active")
	if m.LastPath() != a.addr {
		t.Fatalf("writes went to %s, want the active %s", m.LastPath(), a.addr)
	}
	// 1. Ownership moves to b: a answers standby, b becomes active.
	ps.set(lu, scsi.ALUAStandby, scsi.ALUAActiveOptimized)
	write("b active")
	if m.LastPath() != b.addr {
		t.Fatalf("writes went to %s after the switch, want %s", m.LastPath(), b.addr)
	}
	check("b active")
	// 2. A transition: both paths refuse for a while, the writer waits.
	ps.set(lu, scsi.ALUAStandby, scsi.ALUATransitioning)
	timer := time.AfterFunc(300*time.Millisecond, func() { ps.set(lu, scsi.ALUAActiveOptimized, scsi.ALUAStandby) })
	defer timer.Stop()
	write("transition to a")
	if m.LastPath() != a.addr {
		t.Fatalf("writes went to %s after the transition, want %s", m.LastPath(), a.addr)
	}
	// 3. Node a goes away; b takes over; a comes back on its port as a
	// standby and is logged in again by the checker.
	a.stop()
	ps.set(lu, scsi.ALUAStandby, scsi.ALUAActiveOptimized)
	write("a down")
	if m.LastPath() != b.addr {
		t.Fatalf("writes went to %s with a down, want %s", m.LastPath(), b.addr)
	}
	check("a down")
	a2 := startNode(t, tgt, 1, a.addr)
	deadline := time.Now().Add(10 * time.Second)
	for !m.Paths()[1].Up || !m.Paths()[1].Known {
		if time.Now().After(deadline) {
			t.Fatalf("restarted node not logged in again: %+v", m.Paths())
		}
		time.Sleep(20 * time.Millisecond)
	}
	ps.set(lu, scsi.ALUAActiveOptimized, scsi.ALUAStandby)
	write("a back")
	if m.LastPath() != a2.addr {
		t.Fatalf("writes went to %s after a came back, want %s", m.LastPath(), a2.addr)
	}
	check("a back")
	st := m.Stats()
	if st.Failovers < 4 || st.Logins < 3 || st.Retries == 0 {
		t.Errorf("stats %+v: want at least 4 failovers, 3 logins and some retries", st)
	}
	t.Logf("stats %+v", st)

	// 4. No active path: a command gives up after IOTimeout with ErrNoPath.
	ps.set(lu, scsi.ALUAStandby, scsi.ALUAStandby)
	sctx, scancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer scancel()
	err = m.Write(sctx, 0, blk(0, 0))
	if !errors.Is(err, ErrNoPath) {
		t.Fatalf("write with every port standby: %v, want ErrNoPath", err)
	}
	if k, asc, ok := SenseOf(err); !ok || k != sense.KeyNotReady || asc != sense.ASCLogicalUnitNotAccessibleStandby {
		t.Fatalf("ErrNoPath does not carry the last sense: %v", err)
	}
	// 5. Target errors are not retried.
	ps.set(lu, scsi.ALUAActiveOptimized, scsi.ALUAStandby)
	retries := m.Stats().Retries
	err = m.Read(ctx, 1000, make([]byte, 4096))
	if k, _, ok := SenseOf(err); !ok || k != sense.KeyIllegalRequest || errors.Is(err, ErrNoPath) {
		t.Fatalf("read past the end: %v", err)
	}
	if r := m.Stats().Retries - retries; r > 2 { // at most the unit attention of the state change, per path
		t.Errorf("read past the end was retried %d times", r)
	}
}
