// Package pool is Stave's node-local block store: a log-structured,
// erasure-coded, checksummed pool of devices (DESIGN.md "Pool").
//
// The on-disk format (superblocks, segments, chunk headers, records) is
// drawn in package pool/internal/layout. In short: each device has two
// superblock copies and then segment rows of SegmentSize bytes; a segment
// row is used on k+m member devices for one policy; a batch (one group
// commit) is one full stripe, the same byte range on every member, each
// chunk a header carrying every record of the batch (volume, LBA, version,
// kind, SHA-256, and in a tagged batch a tag) and a payload (data blocks,
// or Reed-Solomon parity).
//
// The index (pebble, in Options.MetaDir/index) is a cache of the log:
//
//	'b' vol lba ^version -> location (segment, batch offset, geometry, block, SHA-256,
//	                        tag if nonzero), or "T": a tombstone that hides older
//	                        versions kept for snapshots
//	's' segment          -> members, tail, data blocks, live blocks, parity bytes,
//	                        lowest version, other records (tombstones, meta; absent
//	                        in states written before it was kept)
//	'v' volume id        -> volume metadata
//	'c'                  -> checkpoint: last batch seq applied, max version, max volume id
//
// Write path ("persist, then ack"), run by one committer goroutine with up
// to 4 batches in flight, each in its own open segment (a lane: a segment
// never has two batches in flight, so its log is torn at most at its end):
//
//  1. Take every queued request of one policy up to the batch cap (a
//     small batch waits while another is being written, gathering more).
//  2. Allocate in an idle lane; assign the batch seq and versions
//     (epoch<<40 | counter).
//  3. Encode data chunks and parity; write chunk i to member i (O_DIRECT
//     when the device allows); sync every member (syncs of concurrent
//     batches coalesce). Members that fail are marked failed; the batch
//     counts as durable when at least k chunks are (a degraded stripe).
//  4. In seq order, once durable: apply the records to the index (highest
//     version per LBA wins) with the checkpoint in the same pebble batch
//     (not synced: replay covers). A lone data batch has its index entries
//     computed while it is written.
//  5. Acknowledge every request of the batch: so every batch before an
//     acknowledged one is durable.
//
// Open replays the batches after the checkpoint (scanning open segments
// from their tail and unknown segments from 0); a last batch with fewer
// than k valid chunks is torn (ErrTornTail, discarded); one followed by a
// valid batch is ErrCorruption. Recover deletes the index and replays
// everything.
//
// Reads look the block up (no entry: zeros), read it from its data chunk
// and verify its SHA-256; on an error or mismatch the stripe is read,
// reconstructed, the bad chunks are rewritten in place and counted.
//
// The cleaner (GC) rewrites the live blocks of mostly-dead sealed segments
// with their versions (batches flagged GC) into its own open segment,
// carries forward tombstones that may still shadow older versions, the
// meta records of volumes still in the index and delete records, then
// zeroes the segment's first chunk header on every healthy member and
// frees it. Ordinary writes leave gcReserve segments free for it.
//
// Tags (tagged.go): WriteTagged, UnmapTagged and SetBlocks store a
// caller-given version (a replication version) per block as its records'
// tag, reported by Tags. Records stay ordered by the pool's own version,
// so a block may be set to a lower tag; every path that moves or rebuilds
// records (replay, Recover, the cleaner, repair, rebuild) keeps the tag.
//
// Snapshots, clones and revert are meta records in the log; the index
// keeps, per LBA, every version that the head, a snapshot or a clone
// reads (see snapshot.go), and replay applies records in version order.
package pool
