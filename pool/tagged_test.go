package pool

import (
	"bytes"
	"context"
	"errors"
	"os"
	"sync"
	"testing"

	"stave.dev/stave/pool/internal/layout"
)

// tagModel is what a volume written through the tagged API must read:
// its bytes and each block's tag. untagged marks blocks written by
// WriteAt: their tag must have UntaggedBit and stay the same.
type tagModel struct {
	data     []byte
	tags     []uint64
	untagged map[int]bool
}

func newTagModel(size int64) *tagModel {
	return &tagModel{data: make([]byte, size), tags: make([]uint64, size/layout.BlockSize), untagged: map[int]bool{}}
}

func (m *tagModel) write(b []byte, off int64, tag uint64) {
	copy(m.data[off:], b)
	for blk := off / layout.BlockSize; blk*layout.BlockSize < off+int64(len(b)); blk++ {
		m.tags[blk] = tag
		m.untagged[int(blk)] = tag == 0
	}
}

func (m *tagModel) unmap(off, n int64, tag uint64) {
	clear(m.data[off : off+n])
	for blk := off / layout.BlockSize; blk*layout.BlockSize < off+n; blk++ {
		whole := blk*layout.BlockSize >= off && (blk+1)*layout.BlockSize <= off+n
		if whole {
			m.tags[blk], m.untagged[int(blk)] = 0, false
		} else {
			m.tags[blk], m.untagged[int(blk)] = tag, tag == 0
		}
	}
}

func (m *tagModel) set(first int64, tags []uint64, data []byte) {
	for i, tag := range tags {
		b := m.data[(first+int64(i))*layout.BlockSize:][:layout.BlockSize]
		if tag == 0 {
			clear(b)
		} else {
			copy(b, data[:layout.BlockSize])
			data = data[layout.BlockSize:]
		}
		m.tags[first+int64(i)], m.untagged[int(first)+i] = tag, false
	}
}

// check compares v with the model: every byte and every tag. Untagged
// blocks' tags are learned on the first check and must not change.
func (m *tagModel) check(t *testing.T, v *Volume, what string) {
	t.Helper()
	ctx := context.Background()
	if got := readAll(t, v, 0, len(m.data)); !bytes.Equal(got, m.data) {
		for i := range got {
			if got[i] != m.data[i] {
				t.Fatalf("%s: data differ from byte %d (block %d)", what, i, i/layout.BlockSize)
			}
		}
	}
	got := make([]uint64, len(m.tags))
	if err := v.Tags(ctx, 0, got); err != nil {
		t.Fatalf("%s: Tags: %v", what, err)
	}
	for i, tag := range got {
		if m.untagged[i] {
			if tag&UntaggedBit == 0 || (m.tags[i] != 0 && tag != m.tags[i]) {
				t.Fatalf("%s: block %d written untagged has tag %#x (before: %#x)", what, i, tag, m.tags[i])
			}
			m.tags[i] = tag
			continue
		}
		if tag != m.tags[i] {
			t.Fatalf("%s: block %d has tag %#x, want %#x", what, i, tag, m.tags[i])
		}
	}
	// A sub-range agrees with the whole.
	sub := make([]uint64, 7)
	if err := v.Tags(ctx, 3, sub); err != nil || !equalU64(sub, got[3:10]) {
		t.Fatalf("%s: Tags(3, 7) = %#x %v, want %#x", what, sub, err, got[3:10])
	}
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// sealAll seals every segment so that the cleaner may take any of them.
func sealAll(p *Pool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, row := range p.mu.open {
		p.mu.segs[row].sealed = true
		delete(p.mu.open, key)
	}
}

// tagWorkload writes, through every tagged call and WriteAt, the blocks
// of a 1 MiB volume (256 blocks) and mirrors them in the model.
func tagWorkload(t *testing.T, v *Volume, m *tagModel) {
	t.Helper()
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	const hi = 7<<40 | 1 // a high tag, lowered below
	b := pattern(1, 64<<10)
	must(v.WriteTagged(ctx, b, 0, hi))
	m.write(b, 0, hi)
	// A partial block: read, merged and tagged.
	b = pattern(2, 1536)
	must(v.WriteTagged(ctx, b, 20*layout.BlockSize+512, 7<<40|2))
	m.write(b, 20*layout.BlockSize+512, 7<<40|2)
	// Untagged blocks.
	b = pattern(3, 8192)
	must(v.WriteAt(ctx, b, 40*layout.BlockSize, false))
	m.write(b, 40*layout.BlockSize, 0)
	// Unmap: block 2 partial, 3-4 whole, 5 partial.
	must(v.UnmapTagged(ctx, 2*layout.BlockSize+512, 3*layout.BlockSize, 7<<40|3))
	m.unmap(2*layout.BlockSize+512, 3*layout.BlockSize, 7<<40|3)
	// Unmap within one block.
	must(v.UnmapTagged(ctx, 12*layout.BlockSize+1024, 1024, 7<<40|4))
	m.unmap(12*layout.BlockSize+1024, 1024, 7<<40|4)
	// SetBlocks lowers tags, unmaps, and maps blocks never written.
	tags := []uint64{2<<40 | 9, 0, 3<<40 | 1, 0, 0, 1, 2}
	data := pattern(4, 5*layout.BlockSize)
	must(v.SetBlocks(ctx, 8, tags, data))
	m.set(8, tags, data)
	tags = []uint64{0, 6<<40 | 5, 0}
	data = pattern(5, layout.BlockSize)
	must(v.SetBlocks(ctx, 40, tags, data)) // over untagged blocks
	m.set(40, tags, data)
	// Concurrent tagged and untagged writers (mixed batches).
	var wg sync.WaitGroup
	errs := make([]error, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := pattern(int64(100+i), layout.BlockSize)
			off := int64(100+i) * layout.BlockSize
			if i%2 == 0 {
				errs[i] = v.WriteAt(ctx, b, off, false)
			} else {
				errs[i] = v.WriteTagged(ctx, b, off, uint64(i))
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		must(err)
		tag := uint64(0)
		if i%2 == 1 {
			tag = uint64(i)
		}
		m.write(pattern(int64(100+i), layout.BlockSize), int64(100+i)*layout.BlockSize, tag)
	}
}

// TestTagsSurvive writes through the tagged API on a 2+1 pool and checks
// data and tags live, after replaying the log from an index taken before
// the writes, after a reopen, Recover, the cleaner rewriting the segment,
// reopen and Recover after that, a repaired chunk header and a device
// rebuild.
func TestTagsSurvive(t *testing.T) {
	ctx := context.Background()
	tp := newTestPool(t, 3, testDevSize)
	if _, err := tp.p.CreateVolume(ctx, "t", 1<<20, Policy{2, 1}); err != nil {
		t.Fatal(err)
	}
	tp.reopen(t)
	old := tp.saveIndex(t)
	m := newTagModel(1 << 20)
	tagWorkload(t, tp.vol(t, "t"), m)
	m.check(t, tp.vol(t, "t"), "live")

	// (a) Replay: the index from before the writes, the log after it.
	tp.replayFrom(t, old)
	m.check(t, tp.vol(t, "t"), "after replay")
	tp.reopen(t)
	m.check(t, tp.vol(t, "t"), "after reopen")
	// (b) Recover.
	tp.recover(t)
	m.check(t, tp.vol(t, "t"), "after Recover")

	// (c) The cleaner rewrites the segment of the tagged blocks.
	v := tp.vol(t, "t")
	l0, _ := blockLoc(t, tp.p, v, 0)
	sealAll(tp.p)
	if err := tp.p.cleanSegment(ctx, l0.row); err != nil {
		t.Fatal(err)
	}
	l1, _ := blockLoc(t, tp.p, v, 0)
	if l1.row == l0.row || l1.tag != 7<<40|1 {
		t.Fatalf("block 0 not moved by the cleaner with its tag: %+v -> %+v", l0, l1)
	}
	m.check(t, v, "after GC")
	tp.reopen(t)
	m.check(t, tp.vol(t, "t"), "after GC and reopen")
	tp.recover(t)
	m.check(t, tp.vol(t, "t"), "after GC and Recover")

	// (d) A flipped chunk header (a tag in it) is repaired by scrub,
	// byte for byte.
	v = tp.vol(t, "t")
	l, members := blockLoc(t, tp.p, v, 0)
	hoff := tp.p.rowOff(l.row) + l.batchOff
	orig := readFileAt(t, tp.devs[members[0]], hoff, int(l.hdrLen))
	h, err := layout.DecodeChunkHeader(orig, nil)
	if err != nil || h.Flags&layout.FlagTagged == 0 {
		t.Fatalf("block 0's batch: flags %#x, %v; want a tagged batch", h.Flags, err)
	}
	smash(t, tp.devs[members[0]], hoff+layout.FixedHeaderLen+layout.RecordLen, 8) // record 0's tag
	rep, err := tp.p.Scrub(ctx, nil)
	if err != nil || rep.ChecksumErrors == 0 || rep.Repaired == 0 || rep.Unrecoverable != 0 {
		t.Fatalf("scrub: %+v %v", rep, err)
	}
	if got := readFileAt(t, tp.devs[members[0]], hoff, int(l.hdrLen)); !bytes.Equal(got, orig) {
		t.Fatal("repaired chunk header differs from the original")
	}
	tp.recover(t)
	m.check(t, tp.vol(t, "t"), "after repair and Recover")

	// (e) Rebuild a device, lose another: the rebuilt chunks serve.
	nd := tp.devs[0] + ".new"
	if err := os.WriteFile(nd, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(nd, testDevSize); err != nil {
		t.Fatal(err)
	}
	if err := tp.p.ReplaceDevice(ctx, tp.devs[0], nd, nil); err != nil {
		t.Fatal(err)
	}
	tp.p.Close()
	if err := os.Remove(tp.devs[1]); err != nil {
		t.Fatal(err)
	}
	if err := Recover(ctx, tp.opts); err != nil {
		t.Fatal(err)
	}
	tp.open(t)
	m.check(t, tp.vol(t, "t"), "after rebuild, a lost device and Recover")
}

func readFileAt(t *testing.T, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSetBlocksLowerTagWins: a block set to a lower tag keeps it, and its
// data, at reopen, replay and Recover: records are ordered by the pool's
// versions, not by tags (ordered by tag, the higher one would win).
func TestSetBlocksLowerTagWins(t *testing.T) {
	ctx := context.Background()
	for _, pc := range policies[:2] {
		t.Run(pc.pol.String(), func(t *testing.T) {
			tp := newTestPool(t, pc.n, testDevSize)
			if _, err := tp.p.CreateVolume(ctx, "t", 1<<20, Policy{}); err != nil {
				t.Fatal(err)
			}
			tp.reopen(t)
			old := tp.saveIndex(t)
			v := tp.vol(t, "t")
			m := newTagModel(1 << 20)
			hiData := pattern(7, 4*layout.BlockSize)
			if err := v.WriteTagged(ctx, hiData, 0, 9<<40|100); err != nil {
				t.Fatal(err)
			}
			m.write(hiData, 0, 9<<40|100)
			// The new owner's content: lower tags, other data, one
			// block unmapped.
			tags := []uint64{8<<40 | 1, 8<<40 | 2, 0, 1}
			data := pattern(8, 3*layout.BlockSize)
			if err := v.SetBlocks(ctx, 0, tags, data); err != nil {
				t.Fatal(err)
			}
			m.set(0, tags, data)
			m.check(t, v, "live")
			tp.reopen(t)
			m.check(t, tp.vol(t, "t"), "after reopen")
			tp.replayFrom(t, old)
			m.check(t, tp.vol(t, "t"), "after replay")
			tp.recover(t)
			m.check(t, tp.vol(t, "t"), "after Recover")
			// And back up again.
			if err := tp.vol(t, "t").SetBlocks(ctx, 2, []uint64{9<<40 | 200}, hiData[:layout.BlockSize]); err != nil {
				t.Fatal(err)
			}
			m.set(2, []uint64{9<<40 | 200}, hiData[:layout.BlockSize])
			tp.recover(t)
			m.check(t, tp.vol(t, "t"), "after a higher tag and Recover")
		})
	}
}

// TestTaggedAPIErrors checks the arguments the tagged calls refuse.
func TestTaggedAPIErrors(t *testing.T) {
	ctx := context.Background()
	tp := newTestPool(t, 1, testDevSize)
	v, err := tp.p.CreateVolume(ctx, "t", 1<<20+512, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	blk := make([]byte, layout.BlockSize)
	for name, err := range map[string]error{
		"write tag 0":        v.WriteTagged(ctx, blk, 0, 0),
		"unmap tag 0":        v.UnmapTagged(ctx, 0, 4096, 0),
		"write unaligned":    v.WriteTagged(ctx, blk[:100], 0, 1),
		"tags past the end":  v.Tags(ctx, 256, make([]uint64, 2)),
		"tags negative":      v.Tags(ctx, -1, make([]uint64, 1)),
		"set past the end":   v.SetBlocks(ctx, 257, []uint64{1}, blk),
		"set short data":     v.SetBlocks(ctx, 0, []uint64{1, 2}, blk),
		"write past the end": v.WriteTagged(ctx, blk, 1<<20, 1),
	} {
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	// The last block is partial (512 bytes): it has a tag.
	if err := v.SetBlocks(ctx, 256, []uint64{5}, blk); err != nil {
		t.Fatal(err)
	}
	got := make([]uint64, 257)
	if err := v.Tags(ctx, 0, got); err != nil || got[256] != 5 || got[0] != 0 {
		t.Fatalf("Tags: %v %v", got[250:], err)
	}
	// Untagged tags differ between pools for the same writes.
	tp2 := newTestPool(t, 1, testDevSize)
	v2, err := tp2.p.CreateVolume(ctx, "t", 1<<20+512, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	var tags [2]uint64
	for i, v := range []*Volume{v, v2} {
		if err := v.WriteAt(ctx, blk, 0, false); err != nil {
			t.Fatal(err)
		}
		d := make([]uint64, 1)
		if err := v.Tags(ctx, 0, d); err != nil {
			t.Fatal(err)
		}
		tags[i] = d[0]
	}
	if tags[0]&UntaggedBit == 0 || tags[1]&UntaggedBit == 0 || tags[0] == tags[1] {
		t.Fatalf("untagged tags of two pools: %#x %#x", tags[0], tags[1])
	}
	tp.p.Close()
	if err := v.Tags(ctx, 0, got); !errors.Is(err, ErrClosed) {
		t.Fatalf("Tags after Close: %v", err)
	}
}

// TestLocDecode: an untagged location keeps the 60-byte encoding of
// indexes written before tags; both lengths decode.
func TestLocDecode(t *testing.T) {
	l := loc{row: 3, batchOff: 8192, hdrLen: 4096, payloadLen: 8192, block: 1, k: 2, m: 1, sha: [32]byte{1}}
	for _, tag := range []uint64{0, 5<<40 | 7} {
		l.tag = tag
		b := l.appendTo(nil)
		want := locLen
		if tag != 0 {
			want = taggedLocLen
		}
		if len(b) != want {
			t.Fatalf("tag %#x: %d bytes, want %d", tag, len(b), want)
		}
		got, err := decodeLoc(b)
		if err != nil || got != l {
			t.Fatalf("tag %#x: %+v %v", tag, got, err)
		}
	}
	if _, err := decodeLoc(make([]byte, locLen+4)); !errors.Is(err, ErrCorruption) {
		t.Fatalf("64-byte location: %v", err)
	}
}
