// Package owner runs the ownership state machine of cluster/ownership
// against etcd: one Driver per volume and node grants and renews the
// node's lease, watches the volume's ownership record, claims the volume
// when its owner is gone, changes the in-sync replica set (ISR) for the
// data path, and tells a Handler when to reconcile, serve and stop.
//
// # The record in etcd
//
// A volume's ownership.Record lives in two keys (docs/etcd-keys.md):
//
//	/stave/v1/volumes/<name>/ownership  {"epoch":E,"isr":["n1","n2"]}  no lease
//	/stave/v1/volumes/<name>/owner      {"node":"n1","epoch":E}        owner's lease
//
// etcd deletes the owner key when the owner's lease lapses (Owner == ""),
// and Record.Lease is that key's lease. Both keys are read in one range
// request, so Record.Rev is the revision of the read (or, from the watch,
// of the last event applied). Every write is a transaction:
//
//   - create (InitOps): epoch 0, no owner, ISR = every replica;
//   - claim: if the ownership key is unchanged since the read that found
//     epoch E, no owner and this node in the ISR, and the owner key does not
//     exist, then put {E+1, ISR} and the owner key with the node's lease
//     (etcd refuses the put if the lease is gone);
//   - ISR change: if the ownership key and the owner key are unchanged since
//     the read that found epoch E owned by this node, put the new ISR.
//
// # Ordering rules of the driver
//
// One goroutine (Run) owns the machine. It ticks it with time.Since(start)
// at least every 50 ms and at the fence deadline, feeds it every event, and
// executes the actions of each batch in order:
//
//  1. Before any action of a batch: if the machine no longer owns the
//     epoch the Handler was given, fail the ISR calls of that epoch and call
//     Handler.Stop, so that I/O stops before the lease is revoked (which lets
//     another node claim at once) and before anything else happens.
//  2. PersistEpoch is EpochStore.Raise, run synchronously: it is durable
//     before the next action of the batch. If it fails, Run stops.
//  3. GrantLease, Keepalive, RevokeLease, ProposeClaim and
//     ProposeISRChange run in goroutines of their own with a timeout, and
//     their results come back as events. A keepalive is sent with
//     KeepAliveOnce when the machine emits it, never by the client's
//     keepalive stream: the machine measures the lease from the moment it
//     emitted the request, which is before the real send, so its fence
//     deadline is conservative.
//  4. ProposeClaim waits Config.ClaimDelay first, so that the preferred node
//     usually wins when all are up; the claim is a safe transaction anyway.
//  5. Reconcile calls Handler.Reconcile in a goroutine; the driver keeps
//     processing events meanwhile (the ISR removals that reconcile causes go
//     through ISR()). Its nil return is fed back as ReconcileDone. A
//     Reconcile of a newer epoch waits until the previous one has returned
//     and been stopped.
//  6. StartServing and ServeUntil call Handler.Serve with the fence
//     deadline as a time.Time carrying the monotonic clock. A StopServing
//     that only fences (the machine keeps the epoch and may serve again
//     after a late keepalive) calls nothing: the Handler enforces until.
//     A StopServing that ends the epoch is rule 1.
//
// When Run's context ends the driver stops its goroutines, waits for the
// Handler's Reconcile to return, calls Handler.Stop, and only then revokes
// its lease, so that the next owner can claim at once.
//
// The watch covers both keys; after a watch error (compaction, lost
// leader, closed connection) the driver reads the record again and watches
// from the revision of that read.
package owner
