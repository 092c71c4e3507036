package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"stave.dev/stave/internal/logkey"
)

// ResyncProgress reports a resync (or the reconcile at OpenVolume).
type ResyncProgress struct {
	Node string
	// Regions is the number of regions of the volume; RegionsDone have
	// been compared, RegionsCopied of them differed and were sent.
	Regions, RegionsDone, RegionsCopied int64
	// BytesSent counts the RegionData frames sent (headers included).
	BytesSent int64
}

// digestBatch is the number of regions compared per DigestReq.
const digestBatch = 64

// Resync brings peer, a replica outside the ISR, back into it: from the
// moment it is connected it receives every new write (and writes wait for
// it), then every region whose version digest differs from the local one
// is sent, then ISR.Add makes it a member. progress, when set, is called
// after each batch of regions. A failure of the peer ends the resync with
// an error and leaves the ISR as it was; a failure of ISR.Add fences the
// volume (the epoch changed or the outcome is unknown).
func (v *Volume) Resync(ctx context.Context, peer Peer, progress func(ResyncProgress)) (ResyncProgress, error) {
	if err := v.usable(); err != nil {
		return ResyncProgress{Node: peer.Node}, err
	}
	for _, l := range v.links() {
		if l.peer.Node == peer.Node {
			return ResyncProgress{Node: peer.Node}, fmt.Errorf("replication: %s is already linked", peer.Node)
		}
	}
	// Under growMu: a Grow either ran before (the Hello says the new
	// size) or sees this link (and drops it: it catches up again).
	v.growMu.Lock()
	l, err := v.dial(ctx, peer)
	if err != nil {
		v.growMu.Unlock()
		if IsStale(err) {
			v.Fence(err)
		}
		return ResyncProgress{Node: peer.Node}, err
	}
	v.mu.Lock()
	v.mu.links = append(v.mu.links, l)
	v.mu.Unlock()
	v.growMu.Unlock()
	v.log.Info("resync started", logkey.Node, peer.Node)
	st, err := v.syncLink(ctx, l, progress)
	if err != nil {
		v.unlink(l)
		l.fail(err)
		return st, err
	}
	// From here a failure of the link must be removed from the ISR: the
	// Add may commit even if its answer is lost. A Grow that dropped the
	// link meanwhile ends the resync here.
	v.growMu.Lock()
	if err := l.err(); err != nil {
		v.growMu.Unlock()
		v.unlink(l)
		return st, err
	}
	l.isr.Store(true)
	v.growMu.Unlock()
	actx, cancel := context.WithTimeout(ctx, v.cfg.ISRTimeout)
	defer cancel()
	if err := v.cfg.ISR.Add(actx, v.cfg.Epoch, peer.Node); err != nil {
		err = fmt.Errorf("replication: add %s to the ISR: %w", peer.Node, err)
		v.Fence(err)
		return st, err
	}
	v.log.Info("replica back in the ISR", logkey.Node, peer.Node, logkey.RegionsCopied, st.RegionsCopied, logkey.BytesSent, st.BytesSent)
	return st, nil
}

// IsStale reports whether err says a newer epoch exists.
func IsStale(err error) bool { return err != nil && errors.Is(err, ErrStaleEpoch) }

// syncLink sends l every region whose digest differs from the local one.
// Each region is compared and copied under its block locks and queued on
// the link in the same critical section, so that the link's FIFO order
// puts every later write to the region after the copy.
func (v *Volume) syncLink(ctx context.Context, l *link, progress func(ResyncProgress)) (ResyncProgress, error) {
	rs := v.cfg.RegionSize
	per := rs / BlockSize
	size := l.size // what the replica's digests cover
	blocks := (size + BlockSize - 1) / BlockSize
	st := ResyncProgress{Node: l.peer.Node, Regions: (size + rs - 1) / rs}
	vers := make([]uint64, per)
	local := make([]byte, 0, digestBatch*DigestSize)
	for r0 := int64(0); r0 < st.Regions; r0 += digestBatch {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		n := min(digestBatch, st.Regions-r0)
		unlock := v.locks.lock(r0*per, min((r0+n)*per, blocks))
		local = local[:0]
		var err error
		for r := r0; r < r0+n && err == nil; r++ {
			b0 := r * per
			k := min(per, blocks-b0)
			err = v.cfg.Local.Versions(ctx, b0, vers[:k])
			d := RegionDigest(vers[:k])
			local = append(local, d[:]...)
		}
		var ch <-chan result
		if err == nil {
			ch = l.send(DigestReq{Epoch: v.cfg.Epoch, RegionSize: uint32(rs), First: uint64(r0), Count: uint32(n)})
		}
		unlock()
		if err != nil {
			return st, fmt.Errorf("replication: local versions: %w", err)
		}
		res := <-ch
		if res.err != nil {
			return st, res.err
		}
		remote, err := ParseDigests(res.payload)
		if err != nil || remote.First != uint64(r0) || remote.Count() != int(n) {
			return st, fmt.Errorf("%w: digests from %s do not match the request (%v)", ErrProtocol, l.peer.Node, err)
		}
		for i := range int(n) {
			if bytes.Equal(local[i*DigestSize:(i+1)*DigestSize], remote.Digest(i)) {
				continue
			}
			sent, err := v.copyRegion(ctx, l, r0+int64(i), per, size)
			if err != nil {
				return st, err
			}
			st.RegionsCopied++
			st.BytesSent += sent
		}
		st.RegionsDone += n
		if progress != nil {
			progress(st)
		}
	}
	v.log.Debug("region sync done", logkey.Node, l.peer.Node, logkey.RegionsCopied, st.RegionsCopied, logkey.BytesSent, st.BytesSent, logkey.Count, st.Regions)
	return st, nil
}

// copyRegion sends region r of a size-byte volume to l and waits for its
// ack; it returns the bytes of the frame.
func (v *Volume) copyRegion(ctx context.Context, l *link, r, per, size int64) (int64, error) {
	blocks := (size + BlockSize - 1) / BlockSize
	b0 := r * per
	k := min(per, blocks-b0)
	unlock := v.locks.lock(b0, b0+k)
	vers := make([]uint64, k)
	err := v.cfg.Local.Versions(ctx, b0, vers)
	var data []byte
	if err == nil {
		buf := make([]byte, k*BlockSize)
		err = v.cfg.Local.ReadAt(ctx, buf[:min(k*BlockSize, size-b0*BlockSize)], b0*BlockSize)
		for i, ver := range vers {
			if ver != 0 {
				data = append(data, buf[int64(i)*BlockSize:int64(i+1)*BlockSize]...)
			}
		}
	}
	var ch <-chan result
	m := RegionData{Epoch: v.cfg.Epoch, RegionSize: uint32(v.cfg.RegionSize), Region: uint64(r), Versions: vers, Data: data}
	if err == nil {
		ch = l.send(m)
	}
	unlock()
	if err != nil {
		return 0, fmt.Errorf("replication: read region %d: %w", r, err)
	}
	res := <-ch
	if res.err != nil {
		return 0, res.err
	}
	return int64(HeaderSize + 24 + 8*len(vers) + len(data)), nil
}

// lockStripes is the number of block lock stripes.
const lockStripes = 1024

// blockLocks serializes writes to the same blocks (striped by block
// number), so that per block the versions reach the local store and every
// link in order.
type blockLocks struct {
	m [lockStripes]sync.Mutex
}

// lock locks the stripes of blocks [b0, b1) in ascending order and returns
// the unlock function.
func (bl *blockLocks) lock(b0, b1 int64) func() {
	var idx []int
	if b1-b0 >= lockStripes {
		idx = make([]int, lockStripes)
		for i := range idx {
			idx[i] = i
		}
	} else {
		for b := b0; b < b1; b++ {
			idx = append(idx, int(b%lockStripes))
		}
		slices.Sort(idx)
		idx = slices.Compact(idx)
	}
	for _, i := range idx {
		bl.m[i].Lock()
	}
	return func() {
		for _, i := range slices.Backward(idx) {
			bl.m[i].Unlock()
		}
	}
}
