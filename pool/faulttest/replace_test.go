package faulttest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"stave.dev/stave/pool"
)

// hookDevice is a pool.Device that calls onWrite before every write and
// onClose before Close.
type hookDevice struct {
	pool.Device
	onWrite func(off int64)
	onClose func()
}

// WriteAt implements pool.Device.
func (h *hookDevice) WriteAt(p []byte, off int64) (int, error) {
	if h.onWrite != nil {
		h.onWrite(off)
	}
	return h.Device.WriteAt(p, off)
}

// Close implements pool.Device.
func (h *hookDevice) Close() error {
	if h.onClose != nil {
		h.onClose()
	}
	return h.Device.Close()
}

// poolJSON is the part of MetaDir/pool.json these tests read: the device
// list Open uses and the devices marked as lacking chunks.
type poolJSON struct {
	Devices    []string `json:"devices"`
	Rebuilding []int    `json:"rebuilding"`
}

func readPoolJSON(meta string) (poolJSON, error) {
	var pf poolJSON
	b, err := os.ReadFile(filepath.Join(meta, "pool.json"))
	if err != nil {
		return pf, err
	}
	return pf, json.Unmarshal(b, &pf)
}

// TestReplaceDeviceListsNewDeviceFirst: no chunk may reach the new device
// of ReplaceDevice before pool.json names it (marked rebuilding). Open
// reads only the devices pool.json names, so a batch acknowledged with a
// chunk on a device it does not name yet has one chunk fewer after a power
// cut: on a 2+1 pool whose third member missed the batch, fewer than k.
// That was the lost write TestCrashDuringRebuild found about once in 30
// runs (the window was the fsync of pool.json after the in-memory swap);
// here a write goes through the pool while the old device is being
// closed, inside ReplaceDevice, and every write to the spare past its
// superblock checks pool.json, so the order is checked deterministically.
func TestReplaceDeviceListsNewDeviceFirst(t *testing.T) {
	ctx := testContext(t, time.Minute)
	dir := t.TempDir()
	disks := newMemDisks()
	var paths []string
	for i := range 4 { // mem3 is the spare
		p := filepath.Join(dir, fmt.Sprintf("mem%d", i))
		disks.add(p, superblockArea+4*testSegmentSize)
		paths = append(paths, p)
	}
	meta := filepath.Join(dir, "meta")
	var mu sync.Mutex // guards the fields below
	var (
		onClose     func()
		formatted   bool // the spare's superblock is written: what follows are chunks
		rebuilt     bool // ReplaceDevice returned: the rebuilding mark is gone
		chunkWrites int
		violations  []string
	)
	open := func(path string) (pool.Device, error) {
		d, err := disks.open(path)
		if err != nil {
			return nil, err
		}
		h := &hookDevice{Device: d}
		switch path {
		case paths[1]:
			h.onClose = func() {
				mu.Lock()
				f := onClose
				onClose = nil
				mu.Unlock()
				if f != nil {
					f()
				}
			}
		case paths[3]:
			h.onWrite = func(off int64) {
				mu.Lock()
				defer mu.Unlock()
				if off == 0 {
					formatted = true // superblock copy 0, the last write of the format
					return
				}
				if !formatted || off < superblockArea {
					return
				}
				chunkWrites++
				pf, err := readPoolJSON(meta)
				switch {
				case err != nil:
					violations = append(violations, fmt.Sprintf("write at %d: reading pool.json: %v", off, err))
				case len(pf.Devices) < 2 || pf.Devices[1] != path:
					violations = append(violations, fmt.Sprintf("write at %d while pool.json lists %v", off, pf.Devices))
				case !rebuilt && !slices.Contains(pf.Rebuilding, 1):
					violations = append(violations, fmt.Sprintf("write at %d while pool.json marks %v rebuilding, not device 1", off, pf.Rebuilding))
				}
			}
		}
		return h, nil
	}
	must(t, pool.Create(ctx, pool.CreateOptions{Devices: paths[:3], MetaDir: meta, SegmentSize: testSegmentSize, OpenDevice: disks.open}), "Create")
	p, err := pool.Open(ctx, pool.Options{MetaDir: meta, OpenDevice: open})
	must(t, err, "Open")
	defer p.Close()
	const blocks = 512
	v, err := p.CreateVolume(ctx, "r", blocks*BlockSize, pool.Policy{})
	must(t, err, "CreateVolume")
	exp := map[int64]uint64{}
	for lba := int64(0); lba < blocks; lba += 64 {
		writeSeq(ctx, t, v, exp, lba, 64, uint64(lba)+1)
	}
	mu.Lock()
	onClose = func() {
		// ReplaceDevice closes the old device once the spare took its
		// place: a write now lands on the spare.
		writeSeq(ctx, t, v, exp, 100, 8, 1000)
	}
	mu.Unlock()
	must(t, p.ReplaceDevice(ctx, paths[1], paths[3], nil), "ReplaceDevice")
	mu.Lock()
	rebuilt = true
	mu.Unlock()
	writeSeq(ctx, t, v, exp, 200, 8, 1001)

	mu.Lock()
	defer mu.Unlock()
	if onClose != nil {
		t.Fatal("ReplaceDevice did not close the old device")
	}
	if chunkWrites == 0 {
		t.Fatal("no chunk was written to the spare")
	}
	for _, v := range violations {
		t.Errorf("chunk written to the spare before pool.json named it: %s", v)
	}
	if st := p.Status(); st.Degraded {
		t.Errorf("degraded after the rebuild: %s", st.Reason)
	}
	expectBlocks(ctx, t, v, exp, blocks, "after ReplaceDevice")
}
