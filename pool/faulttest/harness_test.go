package faulttest

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

// The tests in this file check the harness itself (the checker must catch
// what it claims to catch, the crashable device must keep what it claims
// to keep), independently of the pool.

func TestHarnessIdentify(t *testing.T) {
	b := blockData(7, 2, 42)
	if q, err := identify(b[:BlockSize], 7); err != nil || q != 42 {
		t.Fatalf("identify(own block) = %d, %v", q, err)
	}
	if q, err := identify(make([]byte, BlockSize), 7); err != nil || q != 0 {
		t.Fatalf("identify(zeros) = %d, %v", q, err)
	}
	if _, err := identify(b[BlockSize:], 7); err == nil {
		t.Fatal("a block of LBA 8 read at LBA 7 (misdirected) was accepted")
	}
	torn := slices.Clone(b[:BlockSize])
	copy(torn[sectorSize*3:], blockData(7, 1, 43)[sectorSize*3:])
	if _, err := identify(torn, 7); err == nil {
		t.Fatal("a block torn between two writes was accepted")
	}
	half := slices.Clone(b[:BlockSize])
	clear(half[BlockSize/2:])
	if _, err := identify(half, 7); err == nil {
		t.Fatal("a half-zero block was accepted")
	}
	flip := slices.Clone(b[:BlockSize])
	flip[1000] ^= 1
	if _, err := identify(flip, 7); err == nil {
		t.Fatal("a block with a flipped bit was accepted")
	}
}

func TestHarnessModel(t *testing.T) {
	// Block 0 history (stamps): initial seq 5;
	//   w10 issued 1 acked 2; w11 issued 3 acked 6; w12 issued 4 never acked;
	//   u13 (unmap) issued 7 not acked; w14 issued 8 acked 9 on block 1 only.
	m := newModel(map[int64]uint64{0: 5, 1: 5})
	m.issued(op{seq: 10, lba: 0, n: 1, issue: 1})
	must(t, m.acked(10, 2), "ack")
	m.issued(op{seq: 11, lba: 0, n: 2, issue: 3})
	m.issued(op{seq: 12, lba: 0, n: 1, issue: 4})
	must(t, m.acked(11, 6), "ack")
	m.issued(op{seq: 13, lba: 0, n: 1, issue: 7, unmap: true})
	m.issued(op{seq: 14, lba: 1, n: 1, issue: 8})
	must(t, m.acked(14, 9), "ack")
	// Block 0: newest acked issue is w11 (3); allowed: w11 (acked 6 > 3),
	// w12 (unacked), u13 (zeros, unacked); not w10 (acked 2 < 3) nor 5.
	if got, want := sorted(m.allowed(0)), []uint64{0, 11, 12}; !slices.Equal(got, want) {
		t.Errorf("allowed(0) = %v, want %v", got, want)
	}
	// Block 1: w14 issued 8 after w11 acked 6: only w14.
	if got, want := sorted(m.allowed(1)), []uint64{14}; !slices.Equal(got, want) {
		t.Errorf("allowed(1) = %v, want %v", got, want)
	}
	// Block 2: untouched: only its initial content (zeros).
	if got, want := m.allowed(2), []uint64{0}; !slices.Equal(got, want) {
		t.Errorf("allowed(2) = %v, want %v", got, want)
	}
	if _, err := m.check(0, blockData(0, 1, 10)); err == nil {
		t.Error("check accepted an overwritten acknowledged write")
	}
	if _, err := m.check(0, blockData(0, 1, 12)); err != nil {
		t.Errorf("check rejected an in-flight write: %v", err)
	}
	if _, err := m.check(1, make([]byte, BlockSize)); err == nil {
		t.Error("check accepted zeros for an acknowledged block")
	}
	// Concurrent writes, both acked: either may win.
	c := newModel(nil)
	c.issued(op{seq: 1, lba: 0, n: 1, issue: 1})
	c.issued(op{seq: 2, lba: 0, n: 1, issue: 2})
	must(t, c.acked(2, 3), "ack")
	must(t, c.acked(1, 4), "ack")
	if got, want := sorted(c.allowed(0)), []uint64{1, 2}; !slices.Equal(got, want) {
		t.Errorf("concurrent: allowed(0) = %v, want %v", got, want)
	}
}

func sorted(s []uint64) []uint64 {
	s = slices.Clone(s)
	slices.Sort(s)
	return slices.Compact(s)
}

func TestHarnessMemDisks(t *testing.T) {
	seed := testSeed(t)
	for mode := range numCrashModes {
		d := newMemDisks()
		d.add("a", 1<<20)
		d.add("b", 1<<20)
		da, _ := d.open("a")
		db, _ := d.open("b")
		synced := bytes.Repeat([]byte{1}, 8192)
		if _, err := da.WriteAt(synced, 0); err != nil {
			t.Fatal(err)
		}
		if err := da.Sync(); err != nil {
			t.Fatal(err)
		}
		var copied bool
		d.arm(3, mode, newRand(seed, uint64(mode)), func() { copied = true })
		// Writes 1 and 2 are unsynced; write 3 (on b) crashes.
		unsynced := bytes.Repeat([]byte{2}, 8192)
		if _, err := da.WriteAt(unsynced, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := da.WriteAt(unsynced, 8192); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 8192)
		if _, err := da.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, unsynced) {
			t.Fatalf("read before crash: %v", err)
		}
		if _, err := db.WriteAt(unsynced, 0); !errors.Is(err, errCrashed) {
			t.Fatalf("crashing write returned %v", err)
		}
		if !copied || !d.crashed() {
			t.Fatal("crash callback did not run")
		}
		if _, err := da.ReadAt(buf, 0); !errors.Is(err, errCrashed) {
			t.Fatalf("read after crash returned %v", err)
		}
		after := d.afterCrash()
		na, _ := after.open("a")
		got := make([]byte, 16384)
		if _, err := na.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		for s := 0; s < len(got); s += sectorSize {
			sec := got[s : s+sectorSize]
			var ok bool
			switch {
			case s < 8192:
				ok = sec[0] == 1 || (mode != crashDropUnsynced && sec[0] == 2)
			default:
				ok = sec[0] == 0 || (mode != crashDropUnsynced && sec[0] == 2)
			}
			if !ok || !bytes.Equal(sec, bytes.Repeat(sec[:1], sectorSize)) {
				t.Fatalf("mode %s: sector at %d after crash holds %d", mode, s, sec[0])
			}
		}
		if mode == crashDropUnsynced && !bytes.Equal(got[:8192], synced) {
			t.Fatalf("mode %s: synced data lost", mode)
		}
		if mode == crashPrefix {
			// A prefix: once a sector is old, every later one is too.
			old := false
			for s := 0; s < len(got); s += sectorSize {
				isNew := got[s] == 2
				if old && isNew {
					t.Fatalf("mode %s: not a prefix: new sector at %d after an old one", mode, s)
				}
				old = old || !isNew
			}
		}
	}
}
