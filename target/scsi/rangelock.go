package scsi

import (
	"context"
	"sync"
)

// rangeLock serialises commands that modify overlapping block ranges, so
// that COMPARE AND WRITE (and ORWRITE) read-modify-write sequences are
// atomic with respect to every other write. Ranges are [start, end) in
// logical blocks. Holding costs one mutex round trip; waiting allocates
// one channel per contended range.
type rangeLock struct {
	mu struct {
		sync.Mutex
		next uint64
		held []heldRange
	}
}

type heldRange struct {
	id         uint64
	start, end uint64
	wait       chan struct{} // closed on release; created by the first waiter
}

// lock acquires [start, end) and returns a token for unlock.
func (r *rangeLock) lock(ctx context.Context, start, end uint64) (uint64, error) {
	for {
		r.mu.Lock()
		conflict := -1
		for i := range r.mu.held {
			h := &r.mu.held[i]
			if start < h.end && h.start < end {
				conflict = i
				break
			}
		}
		if conflict < 0 {
			r.mu.next++
			id := r.mu.next
			r.mu.held = append(r.mu.held, heldRange{id: id, start: start, end: end})
			r.mu.Unlock()
			return id, nil
		}
		h := &r.mu.held[conflict]
		if h.wait == nil {
			h.wait = make(chan struct{})
		}
		ch := h.wait
		r.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// unlock releases the range acquired with token id.
func (r *rangeLock) unlock(id uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.mu.held {
		if r.mu.held[i].id != id {
			continue
		}
		if w := r.mu.held[i].wait; w != nil {
			close(w)
		}
		last := len(r.mu.held) - 1
		r.mu.held[i] = r.mu.held[last]
		r.mu.held[last] = heldRange{}
		r.mu.held = r.mu.held[:last]
		return
	}
}
