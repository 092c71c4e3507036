package scsi

import (
	"context"
	"errors"
	"testing"
	"time"
)

// closed reports whether ch is closed, waiting up to a second for it.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-time.After(time.Second):
		return false
	}
}

func TestTaskCtx(t *testing.T) {
	var s taskSet
	tt := &Task{Tag: 1}

	// Abort: Err and Done report it, in either order of Done and cancel.
	tk, ctx := s.add(context.Background(), tt)
	if ctx.Err() != nil {
		t.Fatal("fresh task context is done")
	}
	done := ctx.Done()
	s.abort(func(*task) bool { return true }, func(Nexus) bool { return false })
	if !closed(done) || !errors.Is(ctx.Err(), context.Canceled) {
		t.Fatal("abort did not cancel the task context")
	}
	s.remove(tk)

	// The parent's end reaches Done (made before and after it).
	parent, cancel := context.WithCancel(context.Background())
	tk, ctx = s.add(parent, tt)
	done = ctx.Done()
	cancel()
	if !closed(done) || ctx.Err() == nil {
		t.Fatal("parent cancel did not reach the task context")
	}
	s.remove(tk)
	tk, ctx = s.add(parent, tt)
	if !closed(ctx.Done()) || ctx.Err() == nil {
		t.Fatal("task context under a done parent is not done")
	}
	s.remove(tk)

	// Leaving the set ends the context, like the cancel of WithCancel;
	// the next incarnation starts fresh.
	tk, ctx = s.add(context.Background(), tt)
	done = ctx.Done()
	s.remove(tk)
	if !closed(done) || ctx.Err() == nil {
		t.Fatal("context still live after remove")
	}
	tk, ctx = s.add(context.Background(), tt)
	if ctx.Err() != nil {
		t.Fatal("reused context starts done")
	}
	select {
	case <-ctx.Done():
		t.Fatal("reused context's Done is closed")
	default:
	}
	s.remove(tk)

	// Values and deadlines come from the parent.
	type key struct{}
	dl := time.Now().Add(time.Hour)
	p2, cancel2 := context.WithDeadline(context.WithValue(context.Background(), key{}, 7), dl)
	defer cancel2()
	tk, ctx = s.add(p2, tt)
	if ctx.Value(key{}) != 7 {
		t.Fatal("Value not from parent")
	}
	if d, ok := ctx.Deadline(); !ok || !d.Equal(dl) {
		t.Fatal("Deadline not from parent")
	}
	// A child context derived from a task context ends with it.
	child, cc := context.WithCancel(ctx)
	defer cc()
	s.remove(tk)
	if !closed(child.Done()) {
		t.Fatal("child of a finished task context still live")
	}
}

// TestTaskCtxNoAlloc pins that entering and leaving the task set does not
// allocate when nobody asks for Done.
func TestTaskCtxNoAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items under -race")
	}
	var s taskSet
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	tt := &Task{Tag: 1}
	allocs := testing.AllocsPerRun(1000, func() {
		tk, ctx := s.add(parent, tt)
		if ctx.Err() != nil {
			t.Fatal("done")
		}
		s.remove(tk)
	})
	if allocs != 0 {
		t.Fatalf("%.2f allocations per task", allocs)
	}
}
