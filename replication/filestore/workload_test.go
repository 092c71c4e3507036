package filestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"

	"stave.dev/stave/replication"
)

// content returns the data of block b written with version v (zeros for
// 0): every whole-block write of the crash workloads carries it, so a
// clean version determines what the block must hold.
func content(b int64, v uint64) []byte {
	p := make([]byte, BlockSize)
	if v == 0 {
		return p
	}
	x := uint64(b)*0x9e3779b97f4a7c15 ^ v
	for i := 0; i < BlockSize; i += 8 {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
		z = (z ^ z>>27) * 0x94d049bb133111eb
		binary.LittleEndian.PutUint64(p[i:], z^z>>31)
	}
	return p
}

// opRec is one call of the crash workload: the blocks it sets and the
// version each gets.
type opRec struct {
	id       int64
	blocks   []int64
	versions []uint64
}

// recorder receives the workload's calls: start before a call begins,
// ack after it returned nil.
type recorder interface {
	start(op opRec)
	ack(op opRec)
}

// runWriter runs crash-workload calls from one writer on blocks [lo, hi)
// until a call fails, ctx is done or n calls (n < 0: no limit) are done.
// Only whole blocks are written, with content(b, v), so that the checker
// can tell a block's data from its version. Versions of epoch come from
// ctr; SetBlocks may set lower ones (the owner's content is truth).
func runWriter(ctx context.Context, s replication.Store, r *rand.Rand, lo, hi int64, epoch uint64, ctr *atomic.Uint64, ids *atomic.Int64, n int, rec recorder) {
	for i := 0; n < 0 || i < n; i++ {
		if ctx.Err() != nil {
			return
		}
		k := 1 + r.Int64N(min(8, hi-lo))
		b := lo + r.Int64N(hi-lo-k+1)
		op := opRec{id: ids.Add(1), blocks: make([]int64, k), versions: make([]uint64, k)}
		for j := range k {
			op.blocks[j] = b + j
		}
		var call func() error
		switch x := r.IntN(10); {
		case x < 6:
			v := replication.VersionOf(epoch, ctr.Add(1))
			p := make([]byte, 0, k*BlockSize)
			for j := range k {
				op.versions[j] = v
				p = append(p, content(b+j, v)...)
			}
			call = func() error { return s.WriteAt(ctx, p, b*BlockSize, v) }
		case x < 8:
			v := replication.VersionOf(epoch, ctr.Add(1))
			call = func() error { return s.Unmap(ctx, b*BlockSize, k*BlockSize, v) }
		default:
			var p []byte
			for j := range k {
				if r.IntN(4) != 0 {
					op.versions[j] = replication.VersionOf(epoch, 1+r.Uint64N(ctr.Load()+1))
					p = append(p, content(b+j, op.versions[j])...)
				}
			}
			call = func() error { return s.SetBlocks(ctx, b, op.versions, p) }
		}
		rec.start(op)
		if call() != nil {
			return
		}
		rec.ack(op)
	}
}

// history is what a crash checker knows of each block: its state when the
// round began and the calls on it since, each started and maybe
// acknowledged. Safe for concurrent use.
type history struct {
	mu     sync.Mutex
	blocks []blockHist
	byID   map[int64]opRec
}

type blockHist struct {
	base     uint64
	baseData []byte // kept for a dirty base only
	ops      []histOp
}

type histOp struct {
	version uint64
	acked   bool
}

// newHistory starts a round from the store's current state.
func newHistory(ctx context.Context, s replication.Store) (*history, error) {
	n := s.Size() / BlockSize
	h := &history{blocks: make([]blockHist, n), byID: map[int64]opRec{}}
	vers := make([]uint64, n)
	if err := s.Versions(ctx, 0, vers); err != nil {
		return nil, err
	}
	for b, v := range vers {
		h.blocks[b].base = v
		if IsDirty(v) {
			h.blocks[b].baseData = make([]byte, BlockSize)
			if err := s.ReadAt(ctx, h.blocks[b].baseData, int64(b)*BlockSize); err != nil {
				return nil, err
			}
		}
	}
	return h, nil
}

func (h *history) start(op opRec) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.byID[op.id] = op
	for i, b := range op.blocks {
		h.blocks[b].ops = append(h.blocks[b].ops, histOp{version: op.versions[i]})
	}
}

func (h *history) ack(op opRec) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, b := range op.blocks {
		// Calls on a block are sequential: the acknowledged one is the
		// last started.
		ops := h.blocks[b].ops
		ops[len(ops)-1].acked = true
	}
}

// acks returns the number of acknowledged block writes.
func (h *history) acks() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, b := range h.blocks {
		for _, o := range b.ops {
			if o.acked {
				n++
			}
		}
	}
	return n
}

// check compares the recovered store with the history: a block whose last
// call was acknowledged holds exactly that call's version and content;
// one with a call in flight holds the last acknowledged state, the
// in-flight call's, or a dirty marker; a clean version v always comes with
// content(b, v). It returns the number of dirty blocks.
func (h *history) check(ctx context.Context, s replication.Store) (dirty int, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := int64(len(h.blocks))
	vers := make([]uint64, n)
	if err := s.Versions(ctx, 0, vers); err != nil {
		return 0, err
	}
	data := make([]byte, n*BlockSize)
	if err := s.ReadAt(ctx, data, 0); err != nil {
		return 0, err
	}
	for b := range n {
		bh, got, d := h.blocks[b], vers[b], data[b*BlockSize:(b+1)*BlockSize]
		last := -1
		for i, o := range bh.ops {
			if o.acked {
				last = i
			}
		}
		allowed := []uint64{bh.base}
		if last >= 0 {
			allowed[0] = bh.ops[last].version
		}
		inflight := bh.ops[last+1:]
		for _, o := range inflight {
			allowed = append(allowed, o.version)
		}
		switch {
		case IsDirty(got):
			dirty++
			if len(inflight) > 0 {
				continue
			}
			if last < 0 && got == bh.base && bytes.Equal(d, bh.baseData) {
				continue
			}
			return dirty, fmt.Errorf("block %d: dirty version %#x, but no call on it was in flight (base %#x, calls %v)", b, got, bh.base, bh.ops)
		case !slices.Contains(allowed, got):
			return dirty, fmt.Errorf("block %d: version %#x, want one of %#x (base %#x, calls %v)", b, got, allowed, bh.base, bh.ops)
		case !bytes.Equal(d, content(b, got)):
			return dirty, fmt.Errorf("block %d: version %#x with data that was not written with it", b, got)
		}
	}
	return dirty, nil
}
