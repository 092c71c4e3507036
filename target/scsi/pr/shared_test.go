package pr

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"stave.dev/stave/target/scsi/sense"
)

// reg builds a registration of the nexus a test port name names.
func reg(name string, key uint64) Registration {
	p := testPort(name)
	return Registration{Key: key, InitiatorName: p.InitiatorName, InitiatorPort: p.InitiatorPort,
		TargetPort: p.TargetPort, RelativeTargetPort: p.RelativeTargetPort}
}

// withRes returns s with a reservation of type typ held by registration h.
func withRes(s State, typ Type, h int) State {
	s.Reservation = &Reservation{Type: typ, Holder: holderOf(s.Registrations[h])}
	return s
}

// TestChangeUnitAttentions checks the unit attentions a refresh derives
// from the difference of two states (rules in Manager.Refresh), against
// what the command that made the change establishes through Out.
func TestChangeUnitAttentions(t *testing.T) {
	ab := State{Registrations: []Registration{reg("A", 1), reg("B@2", 2)}}
	abc := State{Registrations: []Registration{reg("A", 1), reg("B@2", 2), reg("C", 3)}}
	allB := reg("B", 2)
	allB.AllTgPt = true
	for _, c := range []struct {
		name     string
		old, cur State
		want     string
	}{
		{"same", ab, ab, ""},
		{"register", State{Registrations: ab.Registrations[:1]}, ab, ""},
		{"key changed", ab, State{Registrations: []Registration{reg("A", 1), reg("B@2", 7)}}, ""},
		{"preempt", ab, State{Registrations: ab.Registrations[:1]}, "ua B@2 ASC 0x2a/0x05"},
		{"preempt all-tg-pt", State{Registrations: []Registration{reg("A", 1), allB}},
			State{Registrations: []Registration{reg("A", 1)}}, "ua B@* ASC 0x2a/0x05"},
		{"clear", abc, State{}, "ua A ASC 0x2a/0x03\nua B@2 ASC 0x2a/0x03\nua C ASC 0x2a/0x03"},
		{"reserve", abc, withRes(abc, TypeWriteExclusiveRegistrantsOnly, 0), ""},
		{"release write exclusive", withRes(abc, TypeWriteExclusive, 0), abc, ""},
		{"release registrants only", withRes(abc, TypeWriteExclusiveRegistrantsOnly, 0), abc,
			"ua B@2 ASC 0x2a/0x04\nua C ASC 0x2a/0x04"},
		{"release all registrants", withRes(ab, TypeExclusiveAccessAllRegistrants, 1), ab,
			"ua A ASC 0x2a/0x04\nua B@2 ASC 0x2a/0x04"},
		{"holder unregisters", withRes(ab, TypeExclusiveAccessRegistrantsOnly, 0),
			State{Registrations: ab.Registrations[1:]}, "ua A ASC 0x2a/0x05\nua B@2 ASC 0x2a/0x04"},
		{"preempt same type", withRes(ab, TypeWriteExclusive, 0),
			withRes(State{Registrations: ab.Registrations[1:]}, TypeWriteExclusive, 0), "ua A ASC 0x2a/0x05"},
		{"preempt other type", withRes(abc, TypeWriteExclusive, 0),
			withRes(State{Registrations: abc.Registrations[1:]}, TypeExclusiveAccess, 1),
			"ua A ASC 0x2a/0x05\nua B@2 ASC 0x2a/0x04"},
		{"move", withRes(ab, TypeExclusiveAccess, 0), withRes(ab, TypeExclusiveAccess, 1), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, s := range []State{c.old, c.cur} {
				if err := s.validate(); err != nil {
					t.Fatalf("bad test state: %v", err)
				}
			}
			got := strings.TrimPrefix(fmtEffects(Effects{UnitAttentions: changeUnitAttentions(&c.old, &c.cur)}), "\n")
			if got != c.want {
				t.Errorf("got\n%s\nwant\n%s", got, c.want)
			}
		})
	}
}

// TestSharedConcurrent runs PERSISTENT RESERVE OUTs, PERSISTENT RESERVE
// INs, refreshes and CheckAccess through two Managers of one shared state
// at once (run with -race): every acknowledged registration lands, the
// generation counts every acknowledged change once, and both Managers end
// with the saved state.
func TestSharedConcurrent(t *testing.T) {
	ctx := context.Background()
	b := &sharedBacking{}
	m1, err := NewManager(ctx, b.handle())
	if err != nil {
		t.Fatal(err)
	}
	m2, err := Resume(ctx, b.handle())
	if err != nil {
		t.Fatal(err)
	}
	const n, iters = 8, 25
	lastKey := make([]uint64, n) // per goroutine, the key last acknowledged
	acked := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, tp := m1, 1
			if i%2 == 1 {
				m, tp = m2, 2
			}
			p := testPort(fmt.Sprintf("%c@%d", 'A'+i, tp))
			for k := range iters {
				key := uint64(i*1000 + k + 1)
				_, err := m.Out(ctx, p, proutCDB(OutRegisterAndIgnore, 0, 0, 24), basicParam(0, key, 0))
				var se *sense.Error
				switch {
				case err == nil:
					lastKey[i], acked[i] = key, acked[i]+1
				case errors.As(err, &se) && se.Key == sense.KeyHardwareError && errors.Is(err, ErrConflict):
					// Out of attempts: nothing changed; an initiator retries.
				default:
					t.Error(err)
					return
				}
				_ = m.CheckAccess(p, []byte{byte(opWrite10), 0, 0, 0, 0, 0, 0, 0, 1, 0})
				if _, err := m.In(ctx, p, prinCDB(InReadKeys, 0xffff)); err != nil {
					t.Error(err)
					return
				}
				if k%5 == 0 {
					if _, err := m.Refresh(ctx); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	total := 0
	for _, a := range acked {
		total += a
	}
	b.mu.Lock()
	saved, conflicts := b.st.clone(), b.conflicts
	b.mu.Unlock()
	t.Logf("%d of %d registrations acknowledged, %d lost races retried", total, n*iters, conflicts)
	if total == 0 {
		t.Fatal("no registration acknowledged")
	}
	if int(saved.Generation) != total {
		t.Errorf("generation %d, want %d (one per acknowledged REGISTER)", saved.Generation, total)
	}
	for i := range n {
		want := 0
		if acked[i] > 0 {
			want = 1
		}
		got, key := 0, uint64(0)
		for _, r := range saved.Registrations {
			if r.Key/1000 == uint64(i) {
				got, key = got+1, r.Key
			}
		}
		if got != want || key != lastKey[i] {
			t.Errorf("goroutine %d: %d registrations with key %#x, want %d with %#x", i, got, key, want, lastKey[i])
		}
	}
	if err := checkInvariants(saved); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*Manager{m1, m2} {
		if _, err := m.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		if got := fmtState(m.State()); got != fmtState(saved) {
			t.Errorf("manager state after refresh:\n%s\nwant\n%s", got, fmtState(saved))
		}
	}
}

// TestRefreshFailures checks that a failed reload changes nothing and
// keeps the unit attentions found so far, and that a refresh to an empty
// state brings back the lock-free CheckAccess.
func TestRefreshFailures(t *testing.T) {
	ctx := context.Background()
	if eff, err := (&Manager{}).Refresh(ctx); err != nil || len(eff.UnitAttentions) != 0 {
		t.Fatalf("Refresh without a store: %+v, %v", eff, err)
	}
	b := &sharedBacking{}
	m1, _ := NewManager(ctx, b.handle())
	m2, _ := Resume(ctx, b.handle())
	a, c := testPort("A"), testPort("C@2")
	mustOut(t, m1, a, OutRegister, 0, 0, 1)
	mustOut(t, m2, c, OutRegister, 0, 0, 3) // conflicts once, reloads
	mustOut(t, m2, c, OutReserve, TypeWriteExclusive, 3, 0)
	if _, err := m1.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	mustOut(t, m1, a, OutPreempt, TypeWriteExclusive, 1, 3)
	before := fmtState(m2.State())

	b.mu.Lock()
	b.failLoad = true
	b.mu.Unlock()
	if _, err := m2.Refresh(ctx); !errors.Is(err, errInjected) {
		t.Fatalf("Refresh with a failing store: %v", err)
	}
	if _, err := m2.In(ctx, c, prinCDB(InReadKeys, 0xffff)); !errors.Is(err, errInjected) {
		t.Fatalf("In with a failing store: %v", err)
	}
	if got := fmtState(m2.State()); got != before {
		t.Fatalf("failed refresh changed the state:\n%s\nwant\n%s", got, before)
	}
	b.mu.Lock()
	b.failLoad = false
	b.mu.Unlock()

	// A PERSISTENT RESERVE OUT that conflicts on the fresh state keeps the
	// unit attention its reload found for the next Refresh.
	if _, err := m2.Out(ctx, c, proutCDB(OutRelease, 0, TypeWriteExclusive, 24), basicParam(4, 0, 0)); !isConflict(err) {
		t.Fatalf("RELEASE with a wrong key: %v", err)
	}
	if m2.CheckAccess(c, []byte{byte(opWrite10), 0, 0, 0, 0, 0, 0, 0, 1, 0}) == nil {
		t.Fatal("preempted C may still write")
	}
	eff, err := m2.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmtEffects(eff); got != "\nua C@2 ASC 0x2a/0x05" {
		t.Fatalf("refresh effects %q", got)
	}
	if eff, _ := m2.Refresh(ctx); len(eff.UnitAttentions) != 0 {
		t.Fatalf("unit attentions handed out twice: %+v", eff)
	}

	// A state that breaks the invariants is refused.
	b.mu.Lock()
	b.st = State{Registrations: []Registration{{Key: 0, InitiatorName: "x"}}}
	b.mu.Unlock()
	if _, err := m2.Refresh(ctx); !errors.Is(err, ErrCorruptState) {
		t.Fatalf("Refresh of a corrupt state: %v", err)
	}

	// Cleared through the other node: the lock-free path comes back.
	b.mu.Lock()
	b.st = State{Generation: 9}
	b.mu.Unlock()
	if _, err := m2.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if !m2.idle.Load() {
		t.Fatal("Manager not idle after refreshing to an empty state")
	}
}

// TestPendingBounded checks that queued unit attentions are deduplicated
// and bounded.
func TestPendingBounded(t *testing.T) {
	m := &Manager{}
	m.mu.Lock()
	defer m.mu.Unlock()
	ua := UnitAttention{Port: testPort("A"), ASC: sense.ASCRegistrationsPreempted}
	m.addPendingLocked([]UnitAttention{ua, ua})
	if len(m.mu.pending) != 1 {
		t.Fatalf("duplicates kept: %d", len(m.mu.pending))
	}
	for i := range maxPending + 10 {
		m.addPendingLocked([]UnitAttention{{Port: Port{InitiatorName: fmt.Sprint(i)}, ASC: ua.ASC}})
	}
	if len(m.mu.pending) != maxPending {
		t.Fatalf("%d pending, want the bound %d", len(m.mu.pending), maxPending)
	}
	if got := m.takePendingLocked(); len(got) != maxPending || len(m.mu.pending) != 0 {
		t.Fatalf("take: %d, left %d", len(got), len(m.mu.pending))
	}
}
