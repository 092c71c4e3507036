package filestore

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// TestSyncerGroupCommit holds a round while callers arrive: they must all
// share the next round, and every caller must return only after a round
// that started after its call has finished.
func TestSyncerGroupCommit(t *testing.T) {
	var clock atomic.Int64    // orders calls and round starts
	var lastDone atomic.Int64 // clock value at the start of the last finished round
	entered := make(chan struct{}, 1)
	gate := make(chan struct{})
	var calls atomic.Int64
	s := newSyncer(func() error {
		start := clock.Add(1)
		if calls.Add(1) == 1 {
			entered <- struct{}{}
			<-gate
		}
		lastDone.Store(start)
		return nil
	})
	check := func() {
		t0 := clock.Add(1)
		if err := s.sync(); err != nil {
			t.Error(err)
		}
		if lastDone.Load() < t0 {
			t.Errorf("sync returned after a round that started before the call")
		}
	}
	var wg sync.WaitGroup
	wg.Go(check)
	<-entered
	const waiters = 8
	for range waiters {
		wg.Go(check)
	}
	for i := 0; ; i++ {
		s.mu.Lock()
		w := s.mu.waiting
		s.mu.Unlock()
		if w == waiters {
			break
		}
		if i > 1e6 {
			t.Fatalf("%d callers waiting, want %d", w, waiters)
		}
		runtime.Gosched()
	}
	close(gate)
	wg.Wait()
	if r := s.rounds(); r != 2 {
		t.Fatalf("%d rounds for 1 + %d callers arriving during the first, want 2", r, waiters)
	}
	// Sequential callers each get their own round.
	for range 3 {
		check()
	}
	if r := s.rounds(); r != 5 {
		t.Fatalf("%d rounds, want 5", r)
	}
}

// TestSyncerStickyError checks that a failed round fails every later call.
func TestSyncerStickyError(t *testing.T) {
	boom := errors.New("boom")
	n := 0
	s := newSyncer(func() error {
		n++
		if n == 2 {
			return boom
		}
		return nil
	})
	for i, want := range []error{nil, boom, boom, boom} {
		if err := s.sync(); !errors.Is(err, want) {
			t.Fatalf("call %d: %v, want %v", i, err, want)
		}
	}
	if n != 2 {
		t.Fatalf("%d rounds ran, want 2 (none after the failure)", n)
	}
}
