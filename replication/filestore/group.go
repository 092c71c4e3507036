package filestore

import "sync"

// syncer is a group commit: every caller of sync needs a round of fn that
// starts after its call (so that it covers the writes the caller issued
// before). Rounds run one at a time, each in the goroutine of one caller
// (the leader); callers that arrive while a round runs share the next one.
// There is no background goroutine, and the number of waiters is bounded by
// the number of callers.
type syncer struct {
	fn func() error
	mu struct {
		sync.Mutex
		cond    sync.Cond
		started uint64 // rounds started
		done    uint64 // rounds finished
		running bool
		waiting int   // callers waiting for a round
		err     error // sticky: the first failed round fails every later call
	}
}

func newSyncer(fn func() error) *syncer {
	s := &syncer{fn: fn}
	s.mu.cond.L = &s.mu.Mutex
	return s
}

// sync returns once a round that started after the call has finished, with
// that round's error (or an earlier round's: after a failed fsync the page
// cache cannot be trusted, so failure is permanent).
func (s *syncer) sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// A round running now may have started before our writes: we need
	// the one after it (or lead one now if none runs).
	target := s.mu.started + 1
	for s.mu.done < target && s.mu.err == nil {
		if s.mu.running {
			s.mu.waiting++
			s.mu.cond.Wait()
			s.mu.waiting--
			continue
		}
		s.mu.started++
		s.mu.running = true
		s.mu.Unlock()
		err := s.fn()
		s.mu.Lock()
		s.mu.running = false
		s.mu.done = s.mu.started
		if err != nil && s.mu.err == nil {
			s.mu.err = err
		}
		s.mu.cond.Broadcast()
	}
	return s.mu.err
}

// rounds returns the number of finished rounds (for tests and benchmarks).
func (s *syncer) rounds() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.done
}
