package pool

// Tagged writes: the local copy of a replicated volume.
//
// replication.Store gives every write a version of its own (epoch<<40 |
// counter of the volume's owner) and may set a block to a LOWER version
// than it holds (a resync after failover: the new owner's content is
// truth). The pool cannot use that version as its own: records are
// ordered by the pool's version (highest wins at replay and Recover, and
// the cleaner keeps versions). So the pool keeps its order and stores the
// caller's version as a tag: a tagged batch (layout.FlagTagged) has a tag
// in every record, the index location of a block keeps its record's tag,
// and replay, Recover, the cleaner, scrub, repair and rebuild carry it
// unchanged (they copy records, or re-encode headers, whole). The last
// write of a block in the pool's order gives it its tag, whatever its
// value: writing a lower tag over a higher one is what a resync needs.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"stave.dev/stave/pool/internal/layout"
)

// UntaggedBit is set in the tag that Tags reports for a block written
// without a tag (WriteAt): such a block reports UntaggedBit | a 63-bit
// hash of the pool's id and the block's pool version, so the value is
// nonzero (mapped), never equals a replication version (epoch<<40 |
// counter with epoch < 2^23) and differs between pools and between
// writes with overwhelming probability.
const UntaggedBit = uint64(1) << 63

// WriteTagged writes b at off (multiples of 512 bytes) like WriteAt and
// sets the tag of every 4 KiB block it touches to tag; a partial block is
// read, merged and written whole with the new tag. It returns once the
// data and the tags are durable. tag 0 is refused with ErrInvalid (0
// means unmapped). Safe for concurrent use; writes to overlapping blocks
// are applied in some order, as with WriteAt.
func (v *Volume) WriteTagged(ctx context.Context, b []byte, off int64, tag uint64) error {
	if tag == 0 {
		return fmt.Errorf("%w: tag 0 for a write to volume %q (0 means unmapped)", ErrInvalid, v.name)
	}
	return v.write(ctx, b, off, tag)
}

// UnmapTagged deallocates [off, off+length) (multiples of 512 bytes) like
// Unmap: whole 4 KiB blocks become unmapped (Tags reports 0 for them),
// the covered part of partial blocks is zeroed and those blocks get tag.
// Durable on return. tag 0 is refused with ErrInvalid.
func (v *Volume) UnmapTagged(ctx context.Context, off, length int64, tag uint64) error {
	if tag == 0 {
		return fmt.Errorf("%w: tag 0 for an unmap of volume %q (0 means unmapped)", ErrInvalid, v.name)
	}
	return v.unmap(ctx, off, length, tag)
}

// blocks returns the number of 4 KiB blocks of the volume (the last one
// may be partial).
func (v *Volume) blocks() int64 {
	return (v.size.Load() + layout.BlockSize - 1) / layout.BlockSize
}

// checkBlocks checks that blocks [first, first+n) are in the volume.
func (v *Volume) checkBlocks(first int64, n int) error {
	if v.deleted.Load() {
		return fmt.Errorf("%w: volume %q deleted", ErrNotFound, v.name)
	}
	if v.p.closed.Load() {
		return ErrClosed
	}
	if nb := v.blocks(); first < 0 || first+int64(n) > nb {
		return fmt.Errorf("%w: blocks [%d, +%d) of volume %q (%d blocks)", ErrInvalid, first, n, v.name, nb)
	}
	return nil
}

// Tags fills dst[i] with the tag of 4 KiB block firstBlock+i as the
// volume's head reads it: 0 for an unmapped block (never written, or
// unmapped whole), the tag of the last write for a block written by
// WriteTagged, UnmapTagged or SetBlocks, and UntaggedBit | a hash for a
// block written by WriteAt or Unmap. It reads the index only. It returns
// ErrInvalid for blocks outside the volume.
func (v *Volume) Tags(ctx context.Context, firstBlock int64, dst []uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := v.checkBlocks(firstBlock, len(dst)); err != nil {
		return err
	}
	clear(dst)
	if len(dst) == 0 {
		return nil
	}
	lba0 := uint64(firstBlock)
	return v.p.forEachVisibleEnt(v.id, lba0, lba0+uint64(len(dst)), func(lba uint64, e *ent) error {
		dst[lba-lba0] = v.p.tagOf(e)
		return nil
	})
}

// tagOf returns the tag Tags reports for data entry e.
func (p *Pool) tagOf(e *ent) uint64 {
	if e.l.tag != 0 {
		return e.l.tag
	}
	return UntaggedBit | mix64(p.tagSalt^mix64(e.ver))>>1
}

// mix64 is the splitmix64 finalizer: a bijection of uint64 that spreads
// every input bit over the output.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// maxSetRecords caps the tombstone records of one SetBlocks request.
const maxSetRecords = 256

// SetBlocks makes the 4 KiB blocks firstBlock.. exactly as given: block i
// gets tags[i] and, when tags[i] != 0, the next 4096 bytes of data (data
// holds the mapped blocks back to back); tags[i] == 0 unmaps it. The
// blocks' current tags do not matter: a block may get a lower tag than it
// has (the pool orders its records by its own versions, so the last
// SetBlocks wins at reopen and Recover too). Durable on return; not
// atomic: after a failure or a crash, each block is either as before or
// as given. It returns ErrInvalid for blocks outside the volume or short
// data. Callers serialize calls on overlapping blocks.
func (v *Volume) SetBlocks(ctx context.Context, firstBlock int64, tags []uint64, data []byte) error {
	if err := v.checkBlocks(firstBlock, len(tags)); err != nil {
		return err
	}
	mapped := 0
	for _, t := range tags {
		if t != 0 {
			mapped++
		}
	}
	if len(data) < mapped*layout.BlockSize {
		return fmt.Errorf("%w: SetBlocks of volume %q: %d bytes of data for %d mapped blocks", ErrInvalid, v.name, len(data), mapped)
	}
	if len(tags) == 0 {
		return nil
	}
	if err := v.writable(); err != nil {
		return err
	}
	for {
		err := v.setBlocksOnce(ctx, uint64(firstBlock), tags, data)
		if err == nil {
			v.p.m.writeBytes.Add(float64(mapped * layout.BlockSize))
			return nil
		}
		// Out of space: wait for the cleaner without the block locks,
		// then set every block again (setting is idempotent).
		if !errors.Is(err, ErrNoSpace) || !v.p.waitForSpace(ctx, 10*time.Second) {
			return mapWriteErr(err)
		}
	}
}

// setBlocksOnce does one attempt of SetBlocks under the block locks: the
// mapped blocks as tagged data records, runs of unmapped blocks as
// tombstones.
func (v *Volume) setBlocksOnce(ctx context.Context, lba0 uint64, tags []uint64, data []byte) error {
	unlock := v.p.lockBlocks(v.id, lba0, len(tags))
	defer unlock()
	var reqs, tombs []*writeReq
	var cur, tomb *writeReq
	bcap := v.p.batchCap(int(v.k))
	for i, tag := range tags {
		lba := lba0 + uint64(i)
		if tag == 0 {
			if tomb != nil {
				if r := &tomb.recs[len(tomb.recs)-1]; r.LBA+uint64(r.Count) == lba {
					r.Count++
					continue
				}
			}
			if tomb == nil || len(tomb.recs) >= maxSetRecords {
				tomb = &writeReq{k: v.k, m: v.m, reserve: true} // tombstones free space
				tombs = append(tombs, tomb)
			}
			tomb.recs = append(tomb.recs, layout.Record{Volume: v.id, LBA: lba, Kind: layout.KindTombstone, Count: 1})
			continue
		}
		if cur == nil || len(cur.blocks) >= bcap {
			cur = &writeReq{k: v.k, m: v.m}
			reqs = append(reqs, cur)
		}
		cur.blocks = append(cur.blocks, data[:layout.BlockSize:layout.BlockSize])
		data = data[layout.BlockSize:]
		cur.recs = append(cur.recs, layout.Record{Volume: v.id, LBA: lba, Kind: layout.KindData, Tag: tag})
	}
	hashBlocks(reqs)
	return v.p.submitAll(ctx, append(reqs, tombs...))
}
