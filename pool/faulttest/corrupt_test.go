package faulttest

import (
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"stave.dev/stave/pool"
)

const (
	// superblockArea is the reserved start of every device (two 4 KiB
	// superblock copies, then padding up to the first segment).
	superblockArea = 1 << 20
	superblockSize = 4096
)

// writtenPages returns the offsets of the non-zero 4 KiB pages of path at
// or after from: where the pool has written.
func writtenPages(path string, from int64) ([]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var offs []int64
	for off := from; off+4096 <= int64(len(b)); off += 4096 {
		if !isZero(b[off : off+4096]) {
			offs = append(offs, off)
		}
	}
	return offs, nil
}

// flipByte XORs the byte at off in path with a non-zero mask.
func flipByte(path string, off int64, mask byte) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		return err
	}
	b[0] ^= mask
	_, err = f.WriteAt(b[:], off)
	return err
}

// TestCorruption writes known data on 2+1 and 4+2 pools of files, then
// flips random bytes in the written areas of the device files (outside the
// superblocks) while readers verify every block concurrently. At most m
// devices are corrupted per segment, so every stripe stays recoverable:
// every read must return correct data, Status must count checksum errors
// and repairs, a Scrub must leave nothing to find for a second Scrub.
// Then one superblock copy is corrupted and the pool must reopen with the
// same data.
func TestCorruption(t *testing.T) {
	seed := testSeed(t)
	for _, c := range []struct {
		name    string
		devices int
		parity  int
	}{{"2+1", 3, 1}, {"4+2", 6, 2}} {
		t.Run(c.name, func(t *testing.T) {
			corruptPolicy(t, seed+uint64(c.devices), c.devices, c.parity)
		})
	}
}

func corruptPolicy(t *testing.T, seed uint64, devices, parity int) {
	ctx := testContext(t, 2*time.Minute)
	rng := newRand(seed, 0)
	f := newFilePool(ctx, t, devices, 64<<20, time.Hour)
	const blocks = 2048 // 8 MiB
	v, err := f.p.CreateVolume(ctx, "c", blocks*BlockSize, pool.Policy{})
	if err != nil {
		must(t, err, "CreateVolume")
	}
	exp := map[int64]uint64{}
	for lba := int64(0); lba < blocks; lba += 64 {
		writeSeq(ctx, t, v, exp, lba, 64, uint64(lba)+1)
	}
	// Overwrite a random third so the log holds garbage too.
	for range blocks / 3 / 8 {
		lba := rng.Int64N(blocks - 8)
		writeSeq(ctx, t, v, exp, lba, 8, 1<<32|rng.Uint64N(1<<30))
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	// Where the pool wrote, per device, and which devices may be corrupted
	// in each segment (at most parity of them).
	pages := make([][]int64, devices)
	for i, path := range f.files {
		if pages[i], err = writtenPages(path, superblockArea); err != nil {
			t.Fatal(err)
		}
	}
	victims := map[int64][]int{} // segment → devices
	victimsOf := func(off int64) []int {
		seg := (off - superblockArea) / testSegmentSize
		if v, ok := victims[seg]; ok {
			return v
		}
		v := rng.Perm(devices)[:parity]
		victims[seg] = v
		return v
	}
	type flip struct {
		dev  int
		off  int64
		mask byte
	}
	var flips []flip
	for len(flips) < 400 {
		dev := rng.IntN(devices)
		if len(pages[dev]) == 0 {
			continue
		}
		page := pages[dev][rng.IntN(len(pages[dev]))]
		ok := false
		for _, d := range victimsOf(page) {
			ok = ok || d == dev
		}
		if !ok {
			continue
		}
		flips = append(flips, flip{dev: dev, off: page + rng.Int64N(4096), mask: byte(1 + rng.IntN(255))})
	}

	// Readers verify whole passes while the flipper corrupts; each reader
	// does at least two passes after the last flip.
	var wg sync.WaitGroup
	flipped := make(chan struct{})
	var mu sync.Mutex
	var readErrs []error
	for r := range 3 {
		wg.Go(func() {
			after := 0
			for pass := 0; after < 2 && pass < 200; pass++ {
				select {
				case <-flipped:
					after++
				default:
				}
				_, errs := verifyVolume(ctx, v, newModel(exp), blocks)
				if len(errs) > 0 {
					mu.Lock()
					for _, e := range errs {
						readErrs = append(readErrs, fmt.Errorf("reader %d pass %d: %w", r, pass, e))
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	for i, fl := range flips {
		if err := flipByte(f.files[fl.dev], fl.off, fl.mask); err != nil {
			t.Fatal(err)
		}
		if i%50 == 49 {
			// Let the readers catch up between bursts.
			_, errs := verifyVolume(ctx, v, newModel(exp), 256)
			for _, e := range errs {
				t.Errorf("after %d flips: %v", i+1, e)
			}
		}
	}
	close(flipped)
	wg.Wait()
	for _, e := range readErrs {
		t.Errorf("seed %d: read during corruption: %v", seed, e)
	}
	csumCount := func() (csum, repairs int64) {
		for _, d := range f.p.Status().Devices {
			csum += d.ChecksumErrors
			repairs += d.Repairs
		}
		return csum, repairs
	}
	readCsum, readRepairs := csumCount()

	var last pool.Progress
	rep, err := f.p.Scrub(ctx, func(p pool.Progress) { last = p })
	if err != nil {
		must(t, err, fmt.Sprintf("seed %d: Scrub", seed))
	}
	t.Logf("first scrub: %+v; last progress %+v", rep, last)
	if rep.Unrecoverable != 0 {
		t.Errorf("seed %d: first scrub found %d unrecoverable stripes, want 0 (at most %d devices corrupted per segment)", seed, rep.Unrecoverable, parity)
	}
	if rep.ChecksumErrors != rep.Repaired {
		t.Errorf("seed %d: first scrub repaired %d of %d bad chunks", seed, rep.Repaired, rep.ChecksumErrors)
	}
	// Reads verify only data chunks (a victim may hold only parity), so
	// the counters are checked after the scrub has read everything.
	csum, repairs := csumCount()
	t.Logf("%d flips on %d segments; Status after reads: %d checksum errors, %d repairs; after scrub: %d, %d",
		len(flips), len(victims), readCsum, readRepairs, csum, repairs)
	if csum == 0 || repairs == 0 {
		t.Errorf("seed %d: after %d flipped bytes, reads and a scrub: Status counts %d checksum errors and %d repairs, want both > 0 (devices %+v)",
			seed, len(flips), csum, repairs, f.p.Status().Devices)
	}
	rep2, err := f.p.Scrub(ctx, nil)
	if err != nil {
		t.Fatalf("seed %d: second Scrub: %v", seed, err)
	}
	if rep2.ChecksumErrors != 0 || rep2.Repaired != 0 || rep2.Unrecoverable != 0 {
		t.Errorf("seed %d: second scrub still finds something: %+v", seed, rep2)
	}
	if rep2.Stripes == 0 || rep2.Bytes == 0 {
		t.Errorf("seed %d: second scrub verified nothing: %+v", seed, rep2)
	}
	expectBlocks(ctx, t, v, exp, blocks, "after scrub")

	// Corrupt one superblock copy of one device; the pool must reopen with
	// the same data.
	f.close()
	dev, cp := rng.IntN(devices), int64(rng.IntN(2))
	for range 8 {
		if err := flipByte(f.files[dev], cp*superblockSize+rng.Int64N(100), byte(1+rng.IntN(255))); err != nil {
			t.Fatal(err)
		}
	}
	f.open(ctx)
	expectBlocks(ctx, t, f.volume("c"), exp, blocks, fmt.Sprintf("seed %d: after corrupting superblock copy %d of device %d", seed, cp, dev))
	for _, d := range f.p.Status().Devices {
		if d.State != pool.DeviceOK {
			t.Errorf("seed %d: device %d is %s after corrupting one superblock copy of device %d, want ok", seed, d.Index, d.State, dev)
		}
	}
}
