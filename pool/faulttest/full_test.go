package faulttest

import (
	"errors"
	"testing"
	"time"

	"stave.dev/stave/pool"
	"stave.dev/stave/target/scsi/sense"
)

// TestFullPool fills a small 2+1 pool through a thin volume larger than
// the pool: the first write that does not fit fails with DATA PROTECT /
// SPACE ALLOCATION FAILED WRITE PROTECT (0x07/0x27/0x07), later writes too,
// and every write acknowledged before is intact (also after a reopen).
// After UNMAP of most of the data, GC makes room and writes succeed again.
func TestFullPool(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	// 1 MiB reserved + 6 segments of 4 MiB per device: 48 MiB of data
	// capacity at 2+1, less the GC reserve.
	f := newFilePool(ctx, t, 3, superblockArea+6*testSegmentSize, 50*time.Millisecond)
	const blocks = 32768 // 128 MiB, thin
	const chunk = 64
	v, err := f.p.CreateVolume(ctx, "full", blocks*BlockSize, pool.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	m := newModel(nil)
	var stamp uint64
	var full error
	written := int64(0)
	for lba := int64(0); lba+chunk <= blocks; lba += chunk {
		seq := uint64(lba) + 1
		stamp++
		m.issued(op{seq: seq, lba: lba, n: chunk, issue: stamp})
		err := v.WriteAt(ctx, blockData(lba, chunk, seq), lba*BlockSize, true)
		stamp++
		if err != nil {
			full = err
			written = lba + chunk
			break
		}
		_ = m.acked(seq, stamp)
	}
	if full == nil {
		t.Fatalf("wrote %d MiB to a pool of 3 x 25 MiB devices without running out of space", blocks*BlockSize>>20)
	}
	t.Logf("full after %d MiB: %v; space %+v", (written-chunk)*BlockSize>>20, full, f.p.Status().Space)
	expectSense(t, full, sense.KeyDataProtect, sense.ASCSpaceAllocationFailedWriteProtect, "write to a full pool")
	if !errors.Is(full, pool.ErrNoSpace) {
		t.Logf("the full-pool error does not wrap pool.ErrNoSpace: %v", full)
	}
	// Later writes fail the same way (nothing half-recovers).
	for i := range 3 {
		lba := written + int64(i)*chunk
		seq := uint64(1<<40) + uint64(i)
		stamp++
		m.issued(op{seq: seq, lba: lba, n: chunk, issue: stamp})
		err := v.WriteAt(ctx, blockData(lba, chunk, seq), lba*BlockSize, true)
		stamp++
		if err == nil {
			_ = m.acked(seq, stamp)
			t.Errorf("write %d after the pool was full succeeded", i)
			continue
		}
		expectSense(t, err, sense.KeyDataProtect, sense.ASCSpaceAllocationFailedWriteProtect, "second write to a full pool")
	}
	end := written + 3*chunk
	state, errs := verifyVolume(ctx, v, m, end)
	for _, e := range errs {
		t.Errorf("full pool lost data: %v", e)
	}
	f.close()
	f.open(ctx)
	v = f.volume("full")
	expectBlocks(ctx, t, v, state, end, "full pool after reopen")
	if t.Failed() {
		t.FailNow()
	}

	// Free all but the first 1 MiB; GC must make room.
	const keep = 256
	if err := v.Unmap(ctx, keep*BlockSize, (end-keep)*BlockSize); err != nil {
		t.Fatalf("UNMAP on a full pool: %v", err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatalf("Flush after UNMAP: %v", err)
	}
	exp := map[int64]uint64{}
	for lba, q := range state {
		if lba < keep {
			exp[lba] = q
		}
	}
	var lastErr error
	try := uint64(0)
	ok := waitFor(ctx, 30*time.Second, func() bool {
		try++
		lastErr = v.WriteAt(ctx, blockData(keep, chunk, 2<<40|try), keep*BlockSize, true)
		return lastErr == nil
	})
	if !ok {
		t.Fatalf("writes still fail 30s after UNMAP freed the pool (space %+v): %v", f.p.Status().Space, lastErr)
	}
	for i := range int64(chunk) {
		exp[keep+i] = 2<<40 | try
	}
	// Another 16 MiB fits now.
	for lba := int64(keep + chunk); lba < keep+chunk+4096; lba += chunk {
		writeSeq(ctx, t, v, exp, lba, chunk, 3<<40|uint64(lba))
	}
	expectBlocks(ctx, t, v, exp, end, "after UNMAP, GC and new writes")
	f.close()
	f.open(ctx)
	expectBlocks(ctx, t, f.volume("full"), exp, end, "after UNMAP, GC, new writes and reopen")
}
