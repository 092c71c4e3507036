// Package ownership is the pure state machine that decides, on one node,
// whether that node owns a volume, may acknowledge I/O for it, must fence
// itself, claims the next epoch, or changes the in-sync replica set (ISR).
// It does no I/O, starts no goroutines and never reads a clock: a driver
// feeds it events (Step) with time as a node-local monotonic reading
// (Tick), and executes the actions it returns (Ready), in order, feeding
// the outcomes back (etcd-io/raft's RawNode pattern, STYLE.md §11-12).
//
// # The record in etcd
//
// Each volume has one ownership record, changed only by transactions:
//
//	Record{Epoch, Owner, Lease, ISR}
//
// Owner is attached to the owner's etcd lease: when the lease lapses etcd
// deletes it (Owner == ""). ISR includes the owner.
//
//   - claim: if Epoch == e && Owner == "" && self ∈ ISR && lease alive
//     then Owner = self, Lease = lease, Epoch = e+1.
//   - ISR change: if Epoch == e && Owner == self then add/remove node.
//
// # Self-fencing
//
// etcd starts a lease's TTL when it handles the grant or keepalive, which
// is after the node sent it. The node therefore measures from the send time
// s on its own monotonic clock, whose rate differs from etcd's by at most
// MaxDrift (ρ). If the local clock reads l then the true elapsed time since
// s is at most (l-s)/(1-ρ), so the lease is certainly alive while
//
//	l < s + TTL·(1-ρ)
//
// The owner stops acknowledging I/O Margin earlier (fence deadline
//
//	s + TTL·(1-ρ) - Margin
//
// ), which covers the time between the driver's last MayAck check and the
// acknowledgement leaving the node. A new owner can only claim after etcd
// deleted the old Owner key, i.e. after the old lease's true expiry, so
// the old owner has stopped before the new one starts.
//
// # Ordering rules for the driver
//
//  1. Execute actions in the order Ready returns them. PersistEpoch must be
//     durable before any later action of the same batch runs.
//  2. Acknowledge a write only when MayAck(now) holds at the moment of the
//     acknowledgement, and every node of Required() has it durable.
//  3. A replica that stops answering is reported with ReplicaFailed. The
//     writes it missed wait until ISRResult{OK: true} for its removal
//     arrives; a failed removal fences the owner and fails those writes.
//  4. A node being added (ProposeISRChange{Add: true}) is in Required()
//     from the moment the proposal is made: once etcd commits the add, every
//     write acknowledged later must be durable on it.
//
// The invariants are checked by a randomized model of several nodes with
// drifting clocks, an etcd with leases and transactions, lossy delayed
// links, partitions and crashes (model_test.go).
package ownership
