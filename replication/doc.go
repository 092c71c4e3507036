// Package replication is the volume engine: it turns a local store plus
// links to the in-sync replicas (ISR) into the scsi.BlockDevice that the
// target serves. The owner writes locally and to every ISR member in
// parallel and acknowledges a write only when all of them have it durable;
// replicas persist the highest epoch they have seen and refuse writes from
// lower epochs; a replica that stops answering is removed from the ISR (an
// etcd transaction guarded by the epoch, through the ISR interface) before
// any write it missed is acknowledged; a returning replica is resynced
// region by region, receiving only the regions whose version digests
// differ. The ownership decisions themselves (leases, claims, fencing)
// are made by cluster/ownership; this package is the data path.
//
// # Versions
//
// Every write carries a version, epoch<<40 | counter (VersionOf). The
// version of a 4 KiB block (BlockSize) is the version of the last write to
// it; 0 means unmapped. The owner always replicates whole blocks, so a
// block's version determines its content.
//
// # Wire format
//
// The owner opens one TCP connection (optionally TLS) per replica and
// volume. Each message is a frame: a 24-byte header and a payload, all
// integers big-endian.
//
//	 0       4   5   6       8           12                  20          24
//	+-------+---+---+-------+-----------+-------------------+-----------+
//	| magic |ver|typ| flags |  length   |    request ID     |  CRC32C   |
//	| "SRPL"| 1 |   |   0   | (payload) |                   |           |
//	+-------+---+---+-------+-----------+-------------------+-----------+
//
// The CRC32C (Castagnoli) covers header bytes 0-19 and the payload. The
// owner sends requests; the replica answers each with one frame carrying
// the same request ID, in order. Payloads by type:
//
//	Hello        epoch u64 | size u64 | len u16 | volume | len u16 | node
//	Write        version u64 | lba u64 (512-byte sectors) | data
//	Unmap        version u64 | lba u64 | sectors u64
//	Flush        epoch u64
//	Ack          status u8 | epoch u64 (replica's highest) | len u16 | reason
//	DigestReq    epoch u64 | region size u32 | first region u64 | count u32
//	Digests      first region u64 | count u32 | count × 32-byte SHA-256
//	RegionData   epoch u64 | region size u32 | region u64 | blocks u32 |
//	             blocks × version u64 | data of each mapped block (4 KiB each)
//
// A region digest is the SHA-256 of the big-endian versions of the
// region's blocks.
//
// Hello's size is the owner's volume size. A replica accepts it when its
// store is at least that large (a replica grows its copy when it sees a
// grown spec, possibly before the owner does) and refuses a larger one;
// digests cover the owner's size. Volume.Grow sends every ISR member a
// Hello of the new size before the LU reports it, and drops from the ISR
// a member that does not accept it within GrowTimeout.
//
// # Ordering rules
//
// Owner, for each write:
//
//  1. Lock the written blocks; assign the next version.
//  2. Queue the frame to every link (ISR members and catching-up
//     replicas) and write the local store; unlock. Per block, frames and
//     local writes are thus in version order.
//  3. Wait for the local store and every link. A link that failed and whose
//     node is in the ISR is removed from the ISR (ISR.Remove) before the
//     write is acknowledged; if the removal fails, the volume fences and
//     the write fails.
//  4. Acknowledge only if the lease deadline (SetLeaseDeadline) has not
//     passed.
//
// Replica, for each request: check the epoch against the highest persisted
// epoch (lower: Ack StaleEpoch; higher: persist it first), apply to the
// store, which is durable on return, then Ack.
package replication
