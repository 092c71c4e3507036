package scsi

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// task is one entry of an LU's task set. Entries are pooled; only the
// task set (under its mutex) and the goroutine running the task touch one.
type task struct {
	prev, next *task
	nexus      Nexus
	tag        uint64
	attr       TaskAttr
	// ctx is the task's context; pooled with the task, so that entering a
	// task into the set does not allocate.
	ctx *taskCtx
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
		tk = &task{ctx: new(taskCtx)}
	}
	tk.ctx.start(ctx)
	tk.nexus, tk.tag, tk.attr = t.Nexus, t.Tag, t.Attr
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
	return tk, tk.ctx
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
	tc := tk.ctx
	*tk = task{ctx: tc}
	s.mu.Unlock()
	tc.finish()
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
		p.ctx.cancel()
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

// taskCtx is the context of one task: done when its parent (the
// transport's context) is done or when task management aborts the task,
// and at the latest when the task leaves the set. It replaces
// context.WithCancel, which allocates for every task: a taskCtx is pooled
// with its task, its Done channel is made only when someone asks for it
// (handlers that only poll Err never do), and only then is it hooked to
// the parent with context.AfterFunc.
//
// NB: a taskCtx is reused by later tasks; a device must not keep the
// context of a call after the call returns (BlockDevice contract).
type taskCtx struct {
	parent    context.Context
	cancelled atomic.Bool // cancel was called in this incarnation
	mu        struct {
		sync.Mutex
		gen    uint64        // incarnation, for stale AfterFunc callbacks
		done   chan struct{} // made by Done; closed by cancel or finish
		closed bool          // done is closed
		stop   func() bool   // stops the AfterFunc on parent; nil when none
	}
}

var _ context.Context = (*taskCtx)(nil)

// start begins an incarnation under parent.
func (c *taskCtx) start(parent context.Context) {
	c.parent = parent
	c.cancelled.Store(false)
}

// Deadline returns the parent's deadline.
func (c *taskCtx) Deadline() (time.Time, bool) { return c.parent.Deadline() }

// Value returns the parent's value for key.
func (c *taskCtx) Value(key any) any { return c.parent.Value(key) }

// Err returns context.Canceled after cancel, else the parent's error.
func (c *taskCtx) Err() error {
	if c.cancelled.Load() {
		return context.Canceled
	}
	return c.parent.Err()
}

// Done returns a channel closed when the task is aborted, its parent is
// done or the task has left the set.
func (c *taskCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.done == nil {
		c.mu.done = make(chan struct{})
		if c.cancelled.Load() || c.parent.Err() != nil {
			close(c.mu.done)
			c.mu.closed = true
		} else if c.parent.Done() != nil {
			gen := c.mu.gen
			c.mu.stop = context.AfterFunc(c.parent, func() { c.cancelGen(gen) })
		}
	}
	return c.mu.done
}

// cancel aborts the task: Err returns context.Canceled and Done closes.
func (c *taskCtx) cancel() {
	c.cancelled.Store(true)
	c.mu.Lock()
	c.closeLocked()
	c.mu.Unlock()
}

// cancelGen closes Done for the parent's end, if incarnation gen is still
// the current one.
func (c *taskCtx) cancelGen(gen uint64) {
	c.mu.Lock()
	if c.mu.gen == gen {
		c.closeLocked()
	}
	c.mu.Unlock()
}

// REQUIRES: c.mu held.
func (c *taskCtx) closeLocked() {
	if c.mu.done != nil && !c.mu.closed {
		close(c.mu.done)
		c.mu.closed = true
	}
}

// finish ends the incarnation (as the cancel of context.WithCancel does
// when a task leaves the set) and makes c ready for reuse.
func (c *taskCtx) finish() {
	c.cancelled.Store(true)
	c.mu.Lock()
	if c.mu.stop != nil {
		c.mu.stop()
		c.mu.stop = nil
	}
	c.closeLocked()
	c.mu.done, c.mu.closed = nil, false
	c.mu.gen++
	c.mu.Unlock()
}
