package faulttest

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"stave.dev/stave/pool"
	"stave.dev/stave/target/scsi/sense"
)

// regionIO runs workers that each own a region of blocks of v and
// alternate random writes and verifying reads of their region, ops times
// each. Before op number at (counted over all workers) it calls fault
// once. Every op should succeed and every read must be right; a failed
// write leaves its blocks either old or new (see model), which is
// resolved by reading them back at the end. exp is updated with what the
// volume holds.
func regionIO(ctx context.Context, t *testing.T, seed uint64, v *pool.Volume, exp map[int64]uint64, blocks int64,
	workers, ops, at int, fault func()) {
	t.Helper()
	region := blocks / int64(workers)
	var clock atomic.Uint64
	var mu sync.Mutex // guards exp, count, errs
	count := 0
	var once sync.Once
	var errs []error
	failedWrites, failedReads := 0, 0
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := newRand(seed, uint64(w)+100)
			lo := int64(w) * region
			hi := lo + region
			mu.Lock()
			m := newModel(copyMap(exp))
			mu.Unlock()
			fail := func(err error, write bool) {
				mu.Lock()
				defer mu.Unlock()
				if write {
					failedWrites++
				} else {
					failedReads++
				}
				if len(errs) < 8 {
					errs = append(errs, err)
				}
			}
			for i := range ops {
				mu.Lock()
				count++
				n := count
				mu.Unlock()
				if n == at {
					once.Do(fault)
				}
				k := 1 + rng.IntN(16)
				lba := lo + rng.Int64N(region-int64(k)+1)
				if i%2 == 0 {
					seq := uint64(w+1)<<40 | (seed&0xffff)<<20 | uint64(i+1)
					m.issued(op{seq: seq, lba: lba, n: k, issue: clock.Add(1)})
					if err := v.WriteAt(ctx, blockData(lba, k, seq), lba*BlockSize, true); err != nil {
						fail(fmt.Errorf("worker %d op %d: write [%d+%d]: %w", w, i, lba, k, err), true)
						continue
					}
					_ = m.acked(seq, clock.Add(1))
					continue
				}
				buf := make([]byte, k*BlockSize)
				if err := v.ReadAt(ctx, buf, lba*BlockSize); err != nil {
					fail(fmt.Errorf("worker %d op %d: read [%d+%d]: %w", w, i, lba, k, err), false)
					continue
				}
				for j := range int64(k) {
					if _, err := m.check(lba+j, buf[j*BlockSize:]); err != nil {
						fail(fmt.Errorf("worker %d op %d: WRONG DATA: %w", w, i, err), false)
						break
					}
				}
			}
			state, rerrs := verifyRange(ctx, v, m, lo, hi)
			for _, err := range rerrs {
				fail(fmt.Errorf("worker %d final read-back: %w", w, err), false)
			}
			mu.Lock()
			for lba := lo; lba < hi; lba++ {
				if q, ok := state[lba]; ok {
					exp[lba] = q
				} else {
					delete(exp, lba)
				}
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	once.Do(fault)
	if failedWrites > 0 || failedReads > 0 {
		t.Errorf("seed %d: %d of %d writes and %d of %d reads failed (want all to succeed); first errors:",
			seed, failedWrites, workers*ops/2, failedReads, workers*ops/2)
		for _, e := range errs {
			t.Errorf("  %v", e)
		}
	}
}

// fillVolume writes every block of v once.
func fillVolume(ctx context.Context, t *testing.T, v *pool.Volume, blocks int64) map[int64]uint64 {
	t.Helper()
	exp := map[int64]uint64{}
	for lba := int64(0); lba < blocks; lba += 64 {
		writeSeq(ctx, t, v, exp, lba, int(min(64, blocks-lba)), uint64(lba)+1)
	}
	return exp
}

// replace runs ReplaceDevice and checks that progress reached 100%.
func replace(ctx context.Context, t *testing.T, f *filePool, old, new string) {
	t.Helper()
	var last pool.Progress
	calls := 0
	err := f.p.ReplaceDevice(ctx, old, new, func(p pool.Progress) { last = p; calls++ })
	if err != nil {
		must(t, err, fmt.Sprintf("ReplaceDevice(%s, %s)", filepath.Base(old), filepath.Base(new)))
	}
	if calls == 0 || last.Total <= 0 || last.Done < last.Total {
		t.Errorf("ReplaceDevice(%s, %s): last progress %+v after %d calls, want Done >= Total > 0 (100%%)",
			filepath.Base(old), filepath.Base(new), last, calls)
	}
	if last.Unreadable != 0 {
		t.Errorf("ReplaceDevice: %d stripes unreadable during rebuild, want 0", last.Unreadable)
	}
	t.Logf("rebuild of %s onto %s: %+v (%d progress calls)", filepath.Base(old), filepath.Base(new), last, calls)
}

// deviceState returns the state of the device at path in Status.
func deviceState(f *filePool, path string) (pool.DeviceState, bool) {
	for _, d := range f.p.Status().Devices {
		if d.Path == path {
			return d.State, true
		}
	}
	return 0, false
}

// TestDeviceLoss fails one device of a 2+1 pool (I/O errors, or the file
// zeroed under the pool) during concurrent verified I/O: every read and
// write must keep succeeding with correct data. ReplaceDevice must rebuild
// it (progress to 100%); then another device fails and the data must still
// be right, which it can only be if the rebuild wrote correct chunks.
func TestDeviceLoss(t *testing.T) {
	seed := testSeed(t)
	for _, mode := range []string{"errors", "zeroed"} {
		t.Run("2+1-"+mode, func(t *testing.T) {
			ctx := testContext(t, 2*time.Minute)
			f := newFilePool(ctx, t, 3, 64<<20, time.Hour)
			spares := makeFiles(t, f.dir, "spare", 1, 64<<20)
			const blocks = 2048
			v, err := f.p.CreateVolume(ctx, "d", blocks*BlockSize, pool.Policy{})
			if err != nil {
				t.Fatal(err)
			}
			exp := fillVolume(ctx, t, v, blocks)
			victim := f.files[1]
			if mode == "zeroed" {
				victim = f.files[2]
			}
			regionIO(ctx, t, seed, v, exp, blocks, 4, 200, 100, func() {
				if mode == "errors" {
					f.ff.set(victim, faultFail)
				} else if err := zeroFile(victim); err != nil {
					t.Error(err)
				}
			})
			expectBlocks(ctx, t, v, exp, blocks, fmt.Sprintf("seed %d: after losing %s (%s)", seed, filepath.Base(victim), mode))
			if mode == "errors" {
				if st, _ := deviceState(f, victim); st == pool.DeviceOK {
					t.Errorf("device %s still ok after failing every call", filepath.Base(victim))
				}
			}
			replace(ctx, t, f, victim, spares[0])
			expectBlocks(ctx, t, v, exp, blocks, "after rebuild")
			if st, ok := deviceState(f, spares[0]); !ok || st != pool.DeviceOK {
				t.Errorf("new device: state %s, listed %v; want ok", st, ok)
			}
			// Another device fails: only the rebuilt chunks can serve.
			f.ff.set(f.files[0], faultFail)
			expectBlocks(ctx, t, v, exp, blocks, fmt.Sprintf("seed %d: after the rebuild and losing %s", seed, filepath.Base(f.files[0])))
			regionIO(ctx, t, seed+1, v, exp, blocks, 2, 40, 1, func() {})
			expectBlocks(ctx, t, v, exp, blocks, "after writes with the rebuilt device")
		})
	}

	t.Run("2+1-replace-under-load", func(t *testing.T) {
		// A healthy device is replaced while writers and readers run:
		// batches in flight during the swap must end up on the new device
		// (or be rebuilt there).
		ctx := testContext(t, 2*time.Minute)
		f := newFilePool(ctx, t, 3, 64<<20, time.Hour)
		spares := makeFiles(t, f.dir, "spare", 1, 64<<20)
		const blocks = 2048
		v, err := f.p.CreateVolume(ctx, "d", blocks*BlockSize, pool.Policy{})
		if err != nil {
			t.Fatal(err)
		}
		exp := fillVolume(ctx, t, v, blocks)
		regionIO(ctx, t, seed, v, exp, blocks, 4, 200, 60, func() {
			replace(ctx, t, f, f.files[2], spares[0])
		})
		expectBlocks(ctx, t, v, exp, blocks, "after replacing a healthy device under load")
		f.ff.set(f.files[0], faultFail)
		expectBlocks(ctx, t, v, exp, blocks, fmt.Sprintf("seed %d: after replacing dev2 under load, then losing dev0", seed))
	})

	t.Run("4+2-two", func(t *testing.T) {
		ctx := testContext(t, 2*time.Minute)
		f := newFilePool(ctx, t, 6, 64<<20, time.Hour)
		spares := makeFiles(t, f.dir, "spare", 2, 64<<20)
		const blocks = 2048
		v, err := f.p.CreateVolume(ctx, "d", blocks*BlockSize, pool.Policy{})
		if err != nil {
			t.Fatal(err)
		}
		exp := fillVolume(ctx, t, v, blocks)
		a, b := f.files[1], f.files[4]
		regionIO(ctx, t, seed, v, exp, blocks, 4, 200, 100, func() {
			f.ff.set(a, faultFail)
			f.ff.set(b, faultFail)
		})
		expectBlocks(ctx, t, v, exp, blocks, fmt.Sprintf("seed %d: after losing two devices", seed))
		replace(ctx, t, f, a, spares[0])
		replace(ctx, t, f, b, spares[1])
		f.ff.set(f.files[0], faultFail)
		f.ff.set(f.files[2], faultFail)
		expectBlocks(ctx, t, v, exp, blocks, "after two rebuilds and losing two other devices")
	})

	t.Run("2+1-below-minimum", func(t *testing.T) {
		ctx := testContext(t, 2*time.Minute)
		f := newFilePool(ctx, t, 3, 64<<20, time.Hour)
		const blocks = 1024
		v, err := f.p.CreateVolume(ctx, "d", blocks*BlockSize, pool.Policy{})
		if err != nil {
			t.Fatal(err)
		}
		exp := fillVolume(ctx, t, v, blocks)
		f.ff.set(f.files[0], faultFail)
		f.ff.set(f.files[2], faultFail)
		// Reads: right data or a clean error, never wrong data.
		readBack := func(what string) (ok, failed int) {
			m := newModel(exp)
			buf := make([]byte, BlockSize)
			for lba := int64(0); lba < blocks; lba++ {
				if err := v.ReadAt(ctx, buf, lba*BlockSize); err != nil {
					failed++
					continue
				}
				if _, err := m.check(lba, buf); err != nil {
					t.Errorf("%s: read returned wrong data: %v", what, err)
					return
				}
				ok++
			}
			return ok, failed
		}
		ok, failed := readBack("below minimum")
		t.Logf("below minimum: %d blocks read right, %d failed cleanly", ok, failed)
		// Writes: all fail; after the first, with DATA PROTECT.
		var first error
		for i := range 8 {
			lba := int64(i * 16)
			err := v.WriteAt(ctx, blockData(lba, 4, 1<<50|uint64(i)), lba*BlockSize, true)
			if err == nil {
				t.Errorf("write %d [%d+4] succeeded on a 2+1 volume with two of three devices failed", i, lba)
				exp[lba], exp[lba+1], exp[lba+2], exp[lba+3] = 1<<50|uint64(i), 1<<50|uint64(i), 1<<50|uint64(i), 1<<50|uint64(i)
				continue
			}
			if i == 0 {
				first = err
				var se *sense.Error
				if !errors.As(err, &se) || se.Key != sense.KeyDataProtect {
					t.Logf("first write after the loss failed with %v (not DATA PROTECT; allowed for the write that discovers the loss)", err)
				}
				continue
			}
			expectSense(t, err, sense.KeyDataProtect, sense.ASCWriteProtected, fmt.Sprintf("write %d below minimum redundancy", i))
			if !errors.Is(err, pool.ErrDegraded) {
				t.Logf("write %d: error %v does not wrap pool.ErrDegraded", i, err)
			}
		}
		t.Logf("first failed write: %v", first)
		if st := f.p.Status(); !st.Degraded {
			t.Errorf("Status().Degraded = false with two of three devices failed (%+v)", st)
		}
		for _, vi := range f.p.Volumes() {
			if vi.Name == "d" && !vi.ReadOnly {
				t.Errorf("volume d not ReadOnly below its policy's minimum: %+v", vi)
			}
		}
		// Unmap is a write too.
		if err := v.Unmap(ctx, 0, BlockSize); err == nil {
			t.Errorf("unmap succeeded below minimum redundancy")
			delete(exp, 0)
		}
		readBack("after refused writes")
	})
}

// TestInterruptedRebuild interrupts ReplaceDevice after its first segment
// (as a crash or a cancelled admin request would) and reopens the pool.
// The replacement device then lacks the chunks of the segments not yet
// rebuilt, so the pool must not report itself healthy (Status.Degraded)
// until they are rebuilt; a Scrub must finish the job, after which the
// data survives losing another device.
func TestInterruptedRebuild(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	f := newFilePool(ctx, t, 3, 64<<20, time.Hour)
	spares := makeFiles(t, f.dir, "spare", 1, 64<<20)
	const blocks = 6144 // 24 MiB: three segment rows at 2+1
	v, err := f.p.CreateVolume(ctx, "r", blocks*BlockSize, pool.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	exp := fillVolume(ctx, t, v, blocks)
	f.ff.set(f.files[1], faultFail)
	rctx, cancel := context.WithCancel(ctx)
	calls := 0
	err = f.p.ReplaceDevice(rctx, f.files[1], spares[0], func(p pool.Progress) {
		calls++
		cancel()
	})
	cancel()
	if err == nil {
		t.Skipf("ReplaceDevice finished despite the cancel after %d progress calls; nothing interrupted", calls)
	}
	if !errors.Is(err, context.Canceled) {
		must(t, err, "ReplaceDevice")
	}
	t.Logf("rebuild interrupted after %d progress calls: %v", calls, err)
	expectBlocks(ctx, t, v, exp, blocks, "during the interrupted rebuild")
	f.close()
	f.open(ctx)
	v = f.volume("r")
	st := f.p.Status()
	if !st.Degraded {
		t.Errorf("after an interrupted rebuild and a reopen, Status reports a healthy pool (Degraded=false), "+
			"but %s lacks the chunks of the segments not yet rebuilt: one more device failure would lose data (devices %+v)",
			filepath.Base(spares[0]), st.Devices)
	}
	// What would be lost if another device failed now.
	f.ff.set(f.files[0], faultFail)
	lost := 0
	buf := make([]byte, 64*BlockSize)
	for lba := int64(0); lba < blocks; lba += 64 {
		if err := v.ReadAt(ctx, buf, lba*BlockSize); err != nil {
			lost++
		}
	}
	if lost > 0 {
		t.Logf("with dev0 failed before the rebuild finished, %d of %d 256 KiB ranges are unreadable", lost, blocks/64)
	}
	f.ff.set(f.files[0], faultNone)
	f.close()
	f.open(ctx)
	v = f.volume("r")
	rep, err := f.p.Scrub(ctx, nil)
	if err != nil {
		t.Fatalf("Scrub: %v", err)
	}
	t.Logf("scrub after the interrupted rebuild: %+v", rep)
	if st := f.p.Status(); st.Degraded {
		t.Errorf("still degraded after a full scrub: %s", st.Reason)
	}
	f.ff.set(f.files[0], faultFail)
	expectBlocks(ctx, t, v, exp, blocks, "after the scrub finished the rebuild and dev0 failed")
}
