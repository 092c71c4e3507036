package scsi

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"stave.dev/stave/target/scsi/sense"
)

// TestCompareAndWriteAtomic has several initiators increment one counter
// block with COMPARE AND WRITE (read, then compare-and-swap; retry on
// MISCOMPARE) while others WRITE neighbouring blocks. If COMPARE AND WRITE
// were not atomic, increments would be lost.
func TestCompareAndWriteAtomic(t *testing.T) {
	dev := newMemDev(64*512, 512)
	lu, err := NewLU(LUConfig{Device: dev})
	if err != nil {
		t.Fatal(err)
	}
	tgt := NewTarget(TargetConfig{LUNs: map[uint64]*LU{0: lu}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const workers, perWorker = 4, 100
	var wg sync.WaitGroup
	errs := make(chan error, workers+1)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := testNexus(string(rune('a'+w)), 1)
			read := &Task{Nexus: n, CDB: []byte{0x28, 0, 0, 0, 0, 5, 0, 0, 1, 0}}
			for done := 0; done < perWorker; {
				r := tgt.Execute(ctx, read)
				if r.Status != sense.StatusGood {
					errs <- ctx.Err()
					return
				}
				buf := make([]byte, 1024)
				copy(buf, r.Data)
				if r.Release != nil {
					r.Release()
				}
				v := binary.BigEndian.Uint64(buf)
				binary.BigEndian.PutUint64(buf[512:], v+1)
				caw := &Task{Nexus: n, CDB: []byte{0x89, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0}, DataOut: buf}
				switch r := tgt.Execute(ctx, caw); r.Status {
				case sense.StatusGood:
					done++
				case sense.StatusCheckCondition:
					if r.Sense[2]&0x0f != byte(sense.KeyMiscompare) {
						t.Errorf("CAW: sense % x", r.Sense)
						return
					}
				default:
					t.Errorf("CAW: %s", r.Status)
					return
				}
			}
		}()
	}
	// A writer hammering the blocks around the counter must not disturb it.
	wg.Add(1)
	go func() {
		defer wg.Done()
		w := &Task{Nexus: testNexus("w", 1), CDB: []byte{0x2a, 0, 0, 0, 0, 4, 0, 0, 1, 0}, DataOut: make([]byte, 512)}
		w2 := &Task{Nexus: w.Nexus, CDB: []byte{0x2a, 0, 0, 0, 0, 6, 0, 0, 1, 0}, DataOut: make([]byte, 512)}
		for i := 0; i < 200; i++ {
			for _, tk := range []*Task{w, w2} {
				if r := tgt.Execute(ctx, tk); r.Status != sense.StatusGood {
					t.Errorf("WRITE: %s", r.Status)
					return
				}
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 512)
	if err := dev.ReadAt(ctx, buf, 5*512); err != nil {
		t.Fatal(err)
	}
	if got := binary.BigEndian.Uint64(buf); got != workers*perWorker {
		t.Fatalf("counter = %d, want %d: COMPARE AND WRITE lost updates", got, workers*perWorker)
	}
}
