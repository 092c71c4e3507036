package faulttest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"stave.dev/stave/pool"
)

// history records, per block, the writes to it with their stamps, for
// checking reads that race with writes. Safe for concurrent use.
type history struct {
	mu  sync.Mutex
	ops map[int64][]op
}

func (h *history) add(o op) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range int64(o.n) {
		h.ops[o.lba+i] = append(h.ops[o.lba+i], o)
	}
}

func (h *history) ack(o op, stamp uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range int64(o.n) {
		l := h.ops[o.lba+i]
		for j := range l {
			if l[j].seq == o.seq {
				l[j].ack = stamp
			}
		}
	}
}

// model returns the history as a model (for the read-back at the end).
func (h *history) model() *model {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := newModel(nil)
	seen := map[uint64]bool{}
	for _, ops := range h.ops {
		for _, o := range ops {
			if seen[o.seq] {
				continue
			}
			seen[o.seq] = true
			m.issued(o)
			if o.ack != notAcked {
				_ = m.acked(o.seq, o.ack)
			}
		}
	}
	return m
}

// checkRead checks block lba read by a read that started at rIssue and
// returned at rDone. The read may return write W (or the zero initial
// content, as a write acknowledged at 0) iff W started before the read
// returned (W.issue < rDone) and no write W' acknowledged before the read
// started (W'.ack < rIssue) started after W was acknowledged (W'.issue >
// W.ack): reads never see a torn block, never go back in time past an
// acknowledged write, and never see a write that had not started.
func (h *history) checkRead(lba int64, b []byte, rIssue, rDone uint64) error {
	got, err := identify(b, lba)
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	ops := h.ops[lba]
	var floor uint64 // newest issue stamp among writes acked before the read started
	for _, o := range ops {
		if o.ack != notAcked && o.ack < rIssue && o.issue > floor {
			floor = o.issue
		}
	}
	if got == 0 && floor == 0 {
		return nil
	}
	for _, o := range ops {
		if o.seq == got && o.issue < rDone && (o.ack == notAcked || o.ack > floor) {
			return nil
		}
	}
	return fmt.Errorf("block %d read during [%d, %d] returned seq %d; writes: %+v", lba, rIssue, rDone, got, ops)
}

// TestConcurrentReadWrite races verifying readers and a scrubber against
// writers on a small hot set of blocks (2+1 pool): every block read must
// be whole (one write's content), never older than a write acknowledged
// before the read started, and never from a write not yet started; a
// scrub must not report damage that is not there.
func TestConcurrentReadWrite(t *testing.T) {
	seed := testSeed(t)
	ctx := testContext(t, time.Minute)
	f := newFilePool(ctx, t, 3, 64<<20, time.Hour)
	raceReadWrite(ctx, t, seed, f, 64, 4, 32, 120, true)
}

// TestReadDuringGC is the same race on a small 1+0 pool whose log is
// mostly garbage and whose cleaner runs every millisecond: reads must not
// fail or return wrong data while GC moves the blocks they are reading.
func TestReadDuringGC(t *testing.T) {
	seed := testSeed(t)
	ctx := testContext(t, time.Minute)
	f := newFilePool(ctx, t, 1, superblockArea+5*testSegmentSize, time.Millisecond)
	raceReadWrite(ctx, t, seed, f, 512, 32, 512, 150, false)
}

// raceReadWrite runs 3 writers (writes each of 1..maxN blocks, fua or not)
// and 3 readers (reads of 1..maxRead blocks) (and, with scrub, a scrubber) on a new volume of blocks
// blocks of f, then reads everything back.
func raceReadWrite(ctx context.Context, t *testing.T, seed uint64, f *filePool, blocks int64, maxN, maxRead, writes int, scrub bool) {
	v, err := f.p.CreateVolume(ctx, "hot", blocks*BlockSize, pool.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	h := &history{ops: map[int64][]op{}}
	var clock, seqs atomic.Uint64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	report := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if len(errs) < 10 {
			errs = append(errs, err)
		}
	}
	stop := make(chan struct{})
	for w := range 3 {
		wg.Go(func() {
			rng := newRand(seed, uint64(w))
			for i := 0; i < writes; i++ {
				n := 1 + rng.IntN(maxN)
				lba := rng.Int64N(blocks - int64(n) + 1)
				o := op{seq: seqs.Add(1), lba: lba, n: n, ack: notAcked}
				o.issue = clock.Add(1)
				h.add(o)
				if err := v.WriteAt(ctx, blockData(lba, n, o.seq), lba*BlockSize, rng.IntN(2) == 0); err != nil {
					report(fmt.Errorf("write: %w", err))
					return
				}
				h.ack(o, clock.Add(1))
			}
		})
	}
	var readers sync.WaitGroup
	var reads atomic.Int64
	for r := range 3 {
		readers.Go(func() {
			rng := newRand(seed, uint64(r)+10)
			buf := make([]byte, maxRead*BlockSize)
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := 1 + rng.IntN(maxRead)
				lba := rng.Int64N(blocks - int64(n) + 1)
				rIssue := clock.Add(1)
				if err := v.ReadAt(ctx, buf[:n*BlockSize], lba*BlockSize); err != nil {
					report(fmt.Errorf("read: %w", err))
					return
				}
				rDone := clock.Add(1)
				reads.Add(1)
				for i := range int64(n) {
					if err := h.checkRead(lba+i, buf[i*BlockSize:(i+1)*BlockSize], rIssue, rDone); err != nil {
						report(err)
						return
					}
				}
			}
		})
	}
	// A scrubber runs alongside: it must not mistake batches being
	// written for damage, nor disturb them.
	scrubs := 0
	readers.Go(func() {
		if !scrub {
			return
		}
		for {
			select {
			case <-stop:
				return
			default:
			}
			rep, err := f.p.Scrub(ctx, nil)
			if err != nil {
				report(fmt.Errorf("scrub during writes: %w", err))
				return
			}
			scrubs++
			if rep.Unrecoverable != 0 || rep.ChecksumErrors != 0 {
				report(fmt.Errorf("scrub during writes (no fault injected) reports %+v", rep))
				return
			}
		}
	})
	wg.Wait()
	close(stop)
	readers.Wait()
	if _, errs := verifyVolume(ctx, v, h.model(), blocks); len(errs) > 0 {
		t.Errorf("seed %d: read-back after the race: %v", seed, errs)
	}
	for _, e := range errs {
		t.Errorf("seed %d: %v", seed, e)
	}
	t.Logf("%d writes, %d reads, %d scrubs", seqs.Load(), reads.Load(), scrubs)
}
