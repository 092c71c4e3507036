package scsi

import (
	"context"
	"sync"
)

// task is one entry of an LU's task set. Entries are pooled; only the
// task set (under its mutex) and the goroutine running the task touch one.
type task struct {
	prev, next *task
	nexus      Nexus
	tag        uint64
	attr       TaskAttr
	cancel     context.CancelFunc
	// Guarded by taskSet.mu:
	done    chan struct{} // created on demand by waiters, closed at removal
	aborted bool          // a TMF aborted the task
	tas     bool          // report TASK ABORTED instead of no response
	// Owned by the goroutine running the task; embedded so that the hot
	// path does not allocate them.
	c   cmd
	res Result
}

// taskSet is the SAM-5 task set of one LU (TST=000b: one task set shared
// by all I_T nexuses).
type taskSet struct {
	pool sync.Pool
	mu   struct {
		sync.Mutex
		head, tail *task
		ordered    int // ORDERED tasks in the set
	}
}

// add enters a task at the tail and returns it with a context that
// task management cancels.
func (s *taskSet) add(ctx context.Context, t *Task) (*task, context.Context) {
	tk, _ := s.pool.Get().(*task)
	if tk == nil {
		tk = new(task)
	}
	tctx, cancel := context.WithCancel(ctx)
	tk.nexus, tk.tag, tk.attr, tk.cancel = t.Nexus, t.Tag, t.Attr, cancel
	s.mu.Lock()
	tk.prev = s.mu.tail
	if s.mu.tail != nil {
		s.mu.tail.next = tk
	} else {
		s.mu.head = tk
	}
	s.mu.tail = tk
	if tk.attr == TaskOrdered {
		s.mu.ordered++
	}
	s.mu.Unlock()
	return tk, tctx
}

// wait blocks until the task may start: SIMPLE (and ACA) tasks wait for
// older ORDERED tasks, ORDERED tasks wait for every older task, HEAD OF
// QUEUE tasks start at once (SAM-5 §8.6). It returns errAborted when the
// task was aborted while waiting, or the context's error.
func (s *taskSet) wait(ctx context.Context, tk *task) error {
	for {
		s.mu.Lock()
		if tk.aborted {
			s.mu.Unlock()
			return errAborted
		}
		var blocker *task
		switch tk.attr {
		case TaskHeadOfQueue:
		case TaskOrdered:
			blocker = tk.prev
		default:
			if s.mu.ordered > 0 {
				for p := tk.prev; p != nil; p = p.prev {
					if p.attr == TaskOrdered {
						blocker = p
						break
					}
				}
			}
		}
		if blocker == nil {
			s.mu.Unlock()
			return nil
		}
		if blocker.done == nil {
			blocker.done = make(chan struct{})
		}
		ch := blocker.done
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// remove takes the task out of the set, wakes its waiters and reports
// whether it was aborted and whether TASK ABORTED status applies.
func (s *taskSet) remove(tk *task) (aborted, tas bool) {
	s.mu.Lock()
	if tk.prev != nil {
		tk.prev.next = tk.next
	} else {
		s.mu.head = tk.next
	}
	if tk.next != nil {
		tk.next.prev = tk.prev
	} else {
		s.mu.tail = tk.prev
	}
	if tk.attr == TaskOrdered {
		s.mu.ordered--
	}
	if tk.done != nil {
		close(tk.done)
	}
	aborted, tas = tk.aborted, tk.tas
	cancel := tk.cancel
	*tk = task{}
	s.mu.Unlock()
	cancel()
	s.pool.Put(tk)
	return aborted, tas
}

// abort aborts every task that match selects, cancelling its context, and
// returns channels that close when each has left the set. tas(n) says
// whether a task of nexus n gets TASK ABORTED status.
func (s *taskSet) abort(match func(*task) bool, tas func(Nexus) bool) (waits []chan struct{}, nexuses []Nexus) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := s.mu.head; p != nil; p = p.next {
		if p.aborted || !match(p) {
			continue
		}
		p.aborted = true
		p.tas = tas(p.nexus)
		if p.done == nil {
			p.done = make(chan struct{})
		}
		waits = append(waits, p.done)
		nexuses = append(nexuses, p.nexus)
		p.cancel()
	}
	return waits, nexuses
}

// waitAll waits for every channel or the context.
func waitAll(ctx context.Context, chs []chan struct{}) error {
	for _, ch := range chs {
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// count returns the number of tasks in the set.
func (s *taskSet) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for p := s.mu.head; p != nil; p = p.next {
		n++
	}
	return n
}
