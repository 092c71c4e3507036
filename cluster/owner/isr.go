package owner

import (
	"context"
	"fmt"
	"slices"

	"stave.dev/stave/cluster/ownership"
	"stave.dev/stave/replication"
)

// isrRequest is an ISR change asked by the data path, and its waiter.
type isrRequest struct {
	epoch uint64
	node  string
	add   bool
	reply chan error // buffered: the loop never blocks on it
}

// isrBridge implements replication.ISR on top of the driver.
type isrBridge struct{ d *Driver }

// ISR returns the bridge the data path (replication.Volume) uses to
// change the ISR. Remove feeds ReplicaFailed and Add feeds ResyncDone to
// the machine; both return when the resulting transaction is answered:
// nil only if the change is committed (or the committed record already
// says so), an error wrapping ErrNotCommitted if it did not commit or its
// outcome is unknown (the owner then steps down), ErrNotOwner if epoch is
// not the epoch this node owns, ErrStopped once Run returned, or ctx's
// error. Safe for concurrent use.
//
// NB: rule 4 of cluster/ownership (a node being added is required from
// the moment the add is proposed) is the data path's part:
// replication.Volume.Resync makes a catching-up replica receive, and
// wait for, every write before it calls Add. Status.Required reports the
// machine's view.
func (d *Driver) ISR() replication.ISR { return isrBridge{d} }

// Remove implements replication.ISR.
func (b isrBridge) Remove(ctx context.Context, epoch uint64, node string) error {
	return b.d.changeRequest(ctx, epoch, node, false)
}

// Add implements replication.ISR.
func (b isrBridge) Add(ctx context.Context, epoch uint64, node string) error {
	return b.d.changeRequest(ctx, epoch, node, true)
}

func (d *Driver) changeRequest(ctx context.Context, epoch uint64, node string, add bool) error {
	r := isrRequest{epoch: epoch, node: node, add: add, reply: make(chan error, 1)}
	select {
	case d.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	case <-d.done:
		return ErrStopped
	}
	select {
	case err := <-r.reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-d.done:
		return ErrStopped
	}
}

// handleISR feeds an ISR request to the machine; process executes the
// proposal and resolveWaiters answers it.
func (d *Driver) handleISR(r *isrRequest) {
	own := d.m.Epoch()
	if own == 0 || uint64(own) != r.epoch {
		r.reply <- fmt.Errorf("%w: %s of %s asked in epoch %d, this node owns epoch %d",
			ErrNotOwner, addRemove(r.add), r.node, r.epoch, own)
		return
	}
	n := ownership.NodeID(r.node)
	if r.add {
		d.step(ownership.ResyncDone{Node: n})
	} else {
		d.step(ownership.ReplicaFailed{Node: n})
	}
	d.waiters = append(d.waiters, r)
}

// resolveWaiters answers the ISR requests that can be answered without
// waiting for a transaction: those of an epoch this node no longer owns,
// and those for a node with no proposal executing, from the record (a
// request the machine did not turn into a proposal: the node is already
// in or out, or a concurrent change decided it). Requests whose node
// has a proposal executing wait for its ISRResult (handleEvent).
func (d *Driver) resolveWaiters() {
	d.failStaleWaiters()
	rec := d.m.Record()
	d.waiters = slices.DeleteFunc(d.waiters, func(w *isrRequest) bool {
		n := ownership.NodeID(w.node)
		switch {
		case d.inflight[n] > 0:
			return false
		case rec.InISR(n) == w.add:
			w.reply <- nil
		default:
			w.reply <- fmt.Errorf("%w: %s of %s in epoch %d: a concurrent change decided otherwise",
				ErrNotCommitted, addRemove(w.add), w.node, w.epoch)
		}
		return true
	})
}

// failStaleWaiters fails the ISR requests of epochs this node does not
// own, before Handler.Stop (which may wait for the writes that wait on
// them).
func (d *Driver) failStaleWaiters() {
	own := d.m.Epoch()
	d.waiters = slices.DeleteFunc(d.waiters, func(w *isrRequest) bool {
		if own != 0 && uint64(own) == w.epoch {
			return false
		}
		w.reply <- fmt.Errorf("%w: %s of %s in epoch %d: this node owns epoch %d now",
			ErrNotOwner, addRemove(w.add), w.node, w.epoch, own)
		return true
	})
}
