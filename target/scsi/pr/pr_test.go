package pr

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"stave.dev/stave/target/scsi/sense"
)

// mustOut runs a PERSISTENT RESERVE OUT that must succeed.
func mustOut(t *testing.T, m *Manager, p Port, sa OutServiceAction, typ Type, key, sakey uint64) Effects {
	t.Helper()
	eff, err := m.Out(context.Background(), p, proutCDB(sa, 0, typ, basicParamLen), basicParam(key, sakey, 0))
	if err != nil {
		t.Fatalf("%s from %s: %v", sa, portName(p), err)
	}
	return eff
}

func isConflict(err error) bool {
	var se *sense.Error
	return errors.As(err, &se) && se.Status == sense.StatusReservationConflict
}

// TestAccessMatrix checks every reservation type against a holder, a
// registered non-holder and an unregistered nexus, for a read and a write
// (SPC-4 Table 56, SBC-3 Table 13; libiscsi prout_reserve_access_*).
func TestAccessMatrix(t *testing.T) {
	type rw struct{ read, write bool } // true = allowed
	cases := []struct {
		typ                      Type
		holder, registrant, none rw
	}{
		{TypeWriteExclusive, rw{true, true}, rw{true, false}, rw{true, false}},
		{TypeExclusiveAccess, rw{true, true}, rw{false, false}, rw{false, false}},
		{TypeWriteExclusiveRegistrantsOnly, rw{true, true}, rw{true, true}, rw{true, false}},
		{TypeExclusiveAccessRegistrantsOnly, rw{true, true}, rw{true, true}, rw{false, false}},
		{TypeWriteExclusiveAllRegistrants, rw{true, true}, rw{true, true}, rw{true, false}},
		{TypeExclusiveAccessAllRegistrants, rw{true, true}, rw{true, true}, rw{false, false}},
	}
	reads := []string{"read6", "read10", "read12", "read16", "verify10", "verify16", "prefetch10", "mode-sense6", "mode-sense10", "get-lba-status", "read32"}
	writes := []string{"write6", "write10", "write12", "write16", "writeverify10", "orwrite", "compare-and-write",
		"writesame10", "writesame16", "unmap", "sync-cache10", "sync-cache16", "mode-select6", "mode-select10",
		"log-select", "format-unit", "stop", "prevent"}
	always := []string{"tur", "inquiry", "report-luns", "request-sense", "readcap10", "readcap16", "prin", "prout",
		"rtpg", "report-opcodes", "log-sense", "start", "allow"}
	holder, reg, none := testPort("A"), testPort("B"), testPort("C")
	for _, c := range cases {
		t.Run(c.typ.String(), func(t *testing.T) {
			m, err := NewManager(context.Background(), nil)
			if err != nil {
				t.Fatal(err)
			}
			mustOut(t, m, holder, OutRegister, 0, 0, 1)
			mustOut(t, m, reg, OutRegister, 0, 0, 2)
			mustOut(t, m, holder, OutReserve, c.typ, 1, 0)
			for _, who := range []struct {
				name string
				p    Port
				want rw
			}{{"holder", holder, c.holder}, {"registrant", reg, c.registrant}, {"none", none, c.none}} {
				check := func(ops []string, allowed bool) {
					for _, op := range ops {
						cdb, err := opCDB(op)
						if err != nil {
							t.Fatal(err)
						}
						err = m.CheckAccess(who.p, cdb)
						if allowed && err != nil || !allowed && !isConflict(err) {
							t.Errorf("%s %s: got %v, want allowed=%v", who.name, op, err, allowed)
						}
					}
				}
				check(reads, who.want.read)
				check(writes, who.want.write)
				check(always, true)
			}
		})
	}
}

// TestShortAndGarbage feeds truncated and empty CDBs everywhere.
func TestShortAndGarbage(t *testing.T) {
	ctx := context.Background()
	m, _ := NewManager(ctx, nil)
	p := testPort("A")
	for n := 0; n < 10; n++ {
		cdb := make([]byte, n)
		if n > 0 {
			cdb[0] = byte(opPersistentReserveOut)
		}
		if _, err := m.Out(ctx, p, cdb, nil); err == nil {
			t.Errorf("Out with %d-byte CDB succeeded", n)
		}
		if n > 0 {
			cdb[0] = byte(opPersistentReserveIn)
		}
		if _, err := m.In(ctx, p, cdb); err == nil {
			t.Errorf("In with %d-byte CDB succeeded", n)
		}
		_ = m.CheckAccess(p, cdb)
		if n < 6 {
			if err := m.Reserve(p, cdb); err == nil {
				t.Errorf("Reserve with %d-byte CDB succeeded", n)
			}
		}
	}
}

// TestPersistThenAck checks that the Store holds the new state when Out
// returns, and that a failed Save changes nothing.
func TestPersistThenAck(t *testing.T) {
	ctx := context.Background()
	s := &memStore{}
	m, err := NewManager(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	a := testPort("A")
	mustOut(t, m, a, OutRegister, 0, 0, 7)
	if got := s.st; len(got.Registrations) != 1 || got.Registrations[0].Key != 7 || got.Generation != 1 {
		t.Fatalf("store after REGISTER: %+v", got)
	}
	s.fail = true
	_, err = m.Out(ctx, a, proutCDB(OutReserve, 0, TypeWriteExclusive, 24), basicParam(7, 0, 0))
	var se *sense.Error
	if !errors.As(err, &se) || se.Key != sense.KeyHardwareError || !errors.Is(err, errInjected) {
		t.Fatalf("RESERVE with failing store: %v", err)
	}
	if m.State().Reservation != nil {
		t.Fatal("reservation taken although the save failed")
	}
	if err := m.CheckAccess(testPort("B"), []byte{byte(opWrite10), 0, 0, 0, 0, 0, 0, 0, 1, 0}); err != nil {
		t.Fatalf("write conflicts after failed RESERVE: %v", err)
	}
}

// TestFileStore covers the file store: missing file, round trip, atomic
// replacement, corrupt content, cancelled context.
func TestFileStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	f := FileStore{Path: filepath.Join(dir, "pr.json")}
	st, err := f.Load(ctx)
	if err != nil || len(st.Registrations) != 0 || st.Reservation != nil {
		t.Fatalf("missing file: %+v, %v", st, err)
	}
	want := State{Generation: 9, APTPL: true, Registrations: []Registration{
		{Key: 1, InitiatorName: "iqn.x:a", InitiatorPort: "iqn.x:a,i,0x000000000001", TargetPort: "t,t,0x0001", RelativeTargetPort: 1},
		{Key: 2, InitiatorName: "iqn.x:b", AllTgPt: true},
	}}
	want.Reservation = &Reservation{Type: TypeExclusiveAccess, Holder: holderOf(want.Registrations[0])}
	if err := f.Save(ctx, want); err != nil {
		t.Fatal(err)
	}
	got, err := f.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fmtState(got) != fmtState(want) || got.Registrations[1].AllTgPt != true || got.Reservation.Holder.InitiatorPort != want.Registrations[0].InitiatorPort {
		t.Fatalf("round trip:\n%s\nwant\n%s", fmtState(got), fmtState(want))
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temporary files left behind: %v", ents)
	}
	if err := os.WriteFile(f.Path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Load(ctx); !errors.Is(err, ErrCorruptState) {
		t.Fatalf("corrupt file: %v", err)
	}
	if _, err := NewManager(ctx, f); !errors.Is(err, ErrCorruptState) {
		t.Fatalf("NewManager on corrupt file: %v", err)
	}
	// A state that parses but breaks the invariants.
	bad := `{"generation":1,"aptpl":true,"registrations":[{"key":0,"initiator_name":"x"}]}`
	if err := os.WriteFile(f.Path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewManager(ctx, f); !errors.Is(err, ErrCorruptState) {
		t.Fatalf("NewManager on invalid state: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := f.Save(cctx, want); !errors.Is(err, context.Canceled) {
		t.Fatalf("Save with cancelled context: %v", err)
	}
	if err := (FileStore{Path: filepath.Join(dir, "missing-dir", "pr.json")}).Save(ctx, want); err == nil {
		t.Fatal("Save into a missing directory succeeded")
	}
}

// TestConcurrent hammers one Manager from several goroutines; run with
// -race. Every registration must end up counted once.
func TestConcurrent(t *testing.T) {
	ctx := context.Background()
	m, _ := NewManager(ctx, &memStore{})
	const n = 8
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := testPort(string(rune('A' + i)))
			for k := range 50 {
				key := uint64(i*1000 + k + 1)
				if _, err := m.Out(ctx, p, proutCDB(OutRegisterAndIgnore, 0, 0, 24), basicParam(0, key, 0)); err != nil {
					t.Error(err)
					return
				}
				_ = m.CheckAccess(p, []byte{byte(opWrite10), 0, 0, 0, 0, 0, 0, 0, 1, 0})
				if _, err := m.In(ctx, p, prinCDB(InReadFullStatus, 0xffff)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	st := m.State()
	if len(st.Registrations) != n || st.Generation != n*50 {
		t.Fatalf("after concurrent registrations: %d registrations, generation %d", len(st.Registrations), st.Generation)
	}
	if err := checkInvariants(st); err != nil {
		t.Fatal(err)
	}
}

// TestCovers checks Port.Covers for concrete and wildcard ports.
func TestCovers(t *testing.T) {
	a, a2, a3 := testPort("A"), testPort("A2"), testPort("A@3")
	all := Port{InitiatorName: a.InitiatorName, InitiatorPort: a.InitiatorPort}
	dev := Port{InitiatorName: a.InitiatorName, TargetPort: a.TargetPort, RelativeTargetPort: 1}
	rel := Port{InitiatorName: a.InitiatorName, InitiatorPort: a.InitiatorPort, RelativeTargetPort: 3}
	for _, c := range []struct {
		p, n Port
		want bool
	}{
		{a, a, true}, {a, a2, false}, {a, a3, false},
		{all, a3, true}, {all, a2, false},
		{dev, a2, true}, {dev, a3, false}, {dev, testPort("B"), false},
		{rel, a3, true}, {rel, a, false},
	} {
		if got := c.p.Covers(c.n); got != c.want {
			t.Errorf("%s covers %s: got %v", portName(c.p), portName(c.n), got)
		}
	}
}

// TestStrings checks the String methods of the typed constants.
func TestStrings(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{TypeExclusiveAccessAllRegistrants.String(), "EXCLUSIVE ACCESS - ALL REGISTRANTS"},
		{Type(2).String(), "Type(0x2)"},
		{OutPreemptAndAbort.String(), "PREEMPT AND ABORT"},
		{OutServiceAction(0x1f).String(), "OutServiceAction(0x1f)"},
		{InReadFullStatus.String(), "READ FULL STATUS"},
		{accessRead.String(), "read"},
		{opWrite10.String(), "opcode 0x2a"},
		{InServiceAction(9).String(), "InServiceAction(0x09)"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

// TestResume checks that Resume keeps registrations made without APTPL
// and the PRgeneration, where NewManager (power on) drops them.
func TestResume(t *testing.T) {
	ctx := context.Background()
	f := FileStore{Path: filepath.Join(t.TempDir(), "pr.json")}
	m, err := NewManager(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	a, b := testPort("A"), testPort("B@2")
	mustOut(t, m, a, OutRegister, 0, 0, 1)
	mustOut(t, m, a, OutReserve, TypeExclusiveAccess, 1, 0)
	// Move the reservation to B on target port 2 (a registration known
	// only by its relative target port), then check it survives.
	_, err = m.Out(ctx, a, proutCDB(OutRegisterAndMove, 0, 0, 0), nil)
	if err == nil {
		t.Fatal("REGISTER AND MOVE with an empty parameter list succeeded")
	}
	param := moveParam(1, 2, false, false, 2, tidBytes("B"))
	if _, err := m.Out(ctx, a, proutCDB(OutRegisterAndMove, 0, 0, uint32(len(param))), param); err != nil {
		t.Fatal(err)
	}
	want := fmtState(m.State())
	r, err := Resume(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmtState(r.State()); got != want {
		t.Fatalf("Resume:\n%s\nwant\n%s", got, want)
	}
	if err := r.CheckAccess(b, []byte{byte(opWrite10), 0, 0, 0, 0, 0, 0, 0, 1, 0}); err != nil {
		t.Fatalf("moved holder cannot write after Resume: %v", err)
	}
	if err := r.CheckAccess(a, []byte{byte(opRead10), 0, 0, 0, 0, 0, 0, 0, 1, 0}); !isConflict(err) {
		t.Fatalf("old holder reads under EXCLUSIVE ACCESS after Resume: %v", err)
	}
	n, err := NewManager(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	if st := n.State(); len(st.Registrations) != 0 || st.Reservation != nil || st.Generation != 0 {
		t.Fatalf("NewManager kept non-APTPL state: %s", fmtState(st))
	}
	if _, err := Resume(ctx, nil); err == nil {
		t.Fatal("Resume without a store succeeded")
	}
}

// TestCheckAccessAllocs pins CheckAccess to zero allocations on the I/O
// path, with and without a reservation.
func TestCheckAccessAllocs(t *testing.T) {
	m, _ := NewManager(context.Background(), nil)
	a, b := testPort("A"), testPort("B")
	read := []byte{byte(opRead10), 0, 0, 0, 0, 0, 0, 0, 1, 0}
	if n := testing.AllocsPerRun(100, func() { _ = m.CheckAccess(b, read) }); n != 0 {
		t.Errorf("idle CheckAccess: %v allocs", n)
	}
	mustOut(t, m, a, OutRegister, 0, 0, 1)
	mustOut(t, m, a, OutReserve, TypeWriteExclusive, 1, 0)
	if n := testing.AllocsPerRun(100, func() { _ = m.CheckAccess(b, read) }); n != 0 {
		t.Errorf("CheckAccess under a reservation: %v allocs", n)
	}
}

func BenchmarkCheckAccess(b *testing.B) {
	m, _ := NewManager(context.Background(), nil)
	p := testPort("A")
	write := []byte{byte(opWrite10), 0, 0, 0, 0, 0, 0, 0, 1, 0}
	b.Run("idle", func(b *testing.B) {
		for b.Loop() {
			_ = m.CheckAccess(p, write)
		}
	})
	if _, err := m.Out(context.Background(), p, proutCDB(OutRegister, 0, 0, 24), basicParam(0, 1, 0)); err != nil {
		b.Fatal(err)
	}
	if _, err := m.Out(context.Background(), p, proutCDB(OutReserve, 0, TypeWriteExclusive, 24), basicParam(1, 0, 0)); err != nil {
		b.Fatal(err)
	}
	b.Run("holder", func(b *testing.B) {
		for b.Loop() {
			_ = m.CheckAccess(p, write)
		}
	})
}
