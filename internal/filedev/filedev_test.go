package filedev

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
)

const mib = 1 << 20

func newDev(t *testing.T, size int64) *Device {
	t.Helper()
	p := filepath.Join(t.TempDir(), "data")
	if err := Create(p, size); err != nil {
		t.Fatal(err)
	}
	d, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func TestCreateRejects(t *testing.T) {
	dir := t.TempDir()
	if err := Create(filepath.Join(dir, "x"), 0); err == nil {
		t.Error("Create with size 0 succeeded")
	}
	p := filepath.Join(dir, "y")
	if err := Create(p, 4096); err != nil {
		t.Fatal(err)
	}
	if err := Create(p, 4096); err == nil {
		t.Error("Create over an existing file succeeded")
	}
	if d, err := Open(dir); err == nil {
		_ = d.Close()
		t.Error("Open of a directory succeeded")
	}
	if _, err := Open(filepath.Join(dir, "missing")); err == nil {
		t.Error("Open of a missing file succeeded")
	}
}

func TestReadWriteRoundTrip(t *testing.T) {
	ctx := context.Background()
	d := newDev(t, 8*mib)
	if got := d.Size(); got != 8*mib {
		t.Fatalf("Size = %d", got)
	}
	// A fresh device reads as zeros.
	buf := make([]byte, 64*1024)
	for i := range buf {
		buf[i] = 0xff
	}
	if err := d.ReadAt(ctx, buf, 3*mib); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, make([]byte, len(buf))) {
		t.Fatal("hole did not read as zeros")
	}
	w := make([]byte, 12*1024)
	for i := range w {
		w[i] = byte(i * 7)
	}
	for _, fua := range []bool{false, true} {
		off := int64(512 * 9)
		if fua {
			off = 8*mib - int64(len(w))
		}
		if err := d.WriteAt(ctx, w, off, fua); err != nil {
			t.Fatal(err)
		}
		r := make([]byte, len(w))
		if err := d.ReadAt(ctx, r, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(r, w) {
			t.Fatalf("fua=%v: read back differs", fua)
		}
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestOutOfRange(t *testing.T) {
	ctx := context.Background()
	d := newDev(t, mib)
	b := make([]byte, 1024)
	for _, off := range []int64{-512, mib - 512, mib, 2 * mib} {
		if err := d.ReadAt(ctx, b, off); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("ReadAt(%d) = %v, want ErrOutOfRange", off, err)
		}
		if err := d.WriteAt(ctx, b, off, false); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("WriteAt(%d) = %v, want ErrOutOfRange", off, err)
		}
	}
	if err := d.Unmap(ctx, mib-512, 1024); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Unmap past end = %v, want ErrOutOfRange", err)
	}
}

func TestContextAndClose(t *testing.T) {
	d := newDev(t, mib)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b := make([]byte, 512)
	if err := d.ReadAt(ctx, b, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("ReadAt with cancelled ctx = %v", err)
	}
	if err := d.WriteAt(ctx, b, 0, true); !errors.Is(err, context.Canceled) {
		t.Errorf("WriteAt with cancelled ctx = %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if err := d.ReadAt(context.Background(), b, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadAt after Close = %v, want ErrClosed", err)
	}
}

func TestUnmapPunchesHoles(t *testing.T) {
	ctx := context.Background()
	d := newDev(t, 16*mib)
	data := bytes.Repeat([]byte{0xa5}, 8*mib)
	if err := d.WriteAt(ctx, data, 4*mib, true); err != nil {
		t.Fatal(err)
	}
	before, err := d.Allocated()
	if err != nil {
		t.Fatal(err)
	}
	if before < 8*mib {
		t.Fatalf("allocated %d after writing 8 MiB", before)
	}
	if err := d.Unmap(ctx, 6*mib, 4*mib); err != nil {
		t.Fatal(err)
	}
	after, err := d.Allocated()
	if err != nil {
		t.Fatal(err)
	}
	if after > before-4*mib {
		t.Errorf("st_blocks: %d bytes before unmap, %d after; want at least 4 MiB fewer", before, after)
	}
	r := make([]byte, 8*mib)
	if err := d.ReadAt(ctx, r, 4*mib); err != nil {
		t.Fatal(err)
	}
	want := append(append(bytes.Repeat([]byte{0xa5}, 2*mib), make([]byte, 4*mib)...), bytes.Repeat([]byte{0xa5}, 2*mib)...)
	if !bytes.Equal(r, want) {
		t.Error("unmapped range does not read as zeros, or neighbours changed")
	}
	// A sub-block unmap zeroes exactly its range.
	if err := d.Unmap(ctx, 4*mib+512, 1024); err != nil {
		t.Fatal(err)
	}
	r = r[:4096]
	if err := d.ReadAt(ctx, r, 4*mib); err != nil {
		t.Fatal(err)
	}
	want = append(append(bytes.Repeat([]byte{0xa5}, 512), make([]byte, 1024)...), bytes.Repeat([]byte{0xa5}, 2560)...)
	if !bytes.Equal(r, want) {
		t.Error("partial-block unmap wrong")
	}
}

func TestMapStatus(t *testing.T) {
	ctx := context.Background()
	d := newDev(t, 16*mib)
	// Whole device is a hole.
	mapped, n, err := d.MapStatus(ctx, 0, 32*mib)
	if err != nil || mapped || n != 16*mib {
		t.Fatalf("empty: MapStatus = %v %d %v, want false %d", mapped, n, err, 16*mib)
	}
	if err := d.WriteAt(ctx, bytes.Repeat([]byte{1}, 2*mib), 4*mib, false); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		off, limit int64
		mapped     bool
		n          int64
	}{
		{0, 16 * mib, false, 4 * mib},
		{0, mib, false, mib},
		{4 * mib, 16 * mib, true, 2 * mib},
		{5 * mib, 16 * mib, true, mib},
		{4 * mib, 4096, true, 4096},
		{6 * mib, 16 * mib, false, 10 * mib},
		{16 * mib, 16 * mib, false, 0},
	}
	for _, c := range cases {
		mapped, n, err := d.MapStatus(ctx, c.off, c.limit)
		if err != nil || mapped != c.mapped || n != c.n {
			t.Errorf("MapStatus(%d, %d) = %v %d %v, want %v %d", c.off, c.limit, mapped, n, err, c.mapped, c.n)
		}
	}
	if err := d.Unmap(ctx, 4*mib, 2*mib); err != nil {
		t.Fatal(err)
	}
	if mapped, n, err := d.MapStatus(ctx, 0, 16*mib); err != nil || mapped || n != 16*mib {
		t.Errorf("after unmap: MapStatus = %v %d %v, want false %d", mapped, n, err, 16*mib)
	}
}

func TestConcurrentIO(t *testing.T) {
	ctx := context.Background()
	d := newDev(t, 4*mib)
	const workers, blocks, bs = 8, 64, 4096
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			buf := make([]byte, bs)
			got := make([]byte, bs)
			for i := range blocks {
				// Each worker owns its own stripe of blocks.
				off := int64((i*workers + w) * bs)
				for j := range buf {
					buf[j] = byte(r.Uint32())
				}
				if err := d.WriteAt(ctx, buf, off, i%16 == 0); err != nil {
					t.Error(err)
					return
				}
				if i%3 == 0 {
					if err := d.Unmap(ctx, off, bs); err != nil {
						t.Error(err)
						return
					}
					clear(buf)
				}
				if err := d.ReadAt(ctx, got, off); err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(got, buf) {
					t.Errorf("worker %d block %d: read back differs", w, i)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestReadWriteAllocs pins the data path to zero allocations (STYLE.md §22).
func TestReadWriteAllocs(t *testing.T) {
	ctx := context.Background()
	d := newDev(t, mib)
	buf := make([]byte, 4096)
	if n := testing.AllocsPerRun(100, func() {
		if err := d.WriteAt(ctx, buf, 8192, false); err != nil {
			t.Fatal(err)
		}
		if err := d.ReadAt(ctx, buf, 8192); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("ReadAt+WriteAt: %.1f allocations, want 0", n)
	}
}

func BenchmarkWriteAt4K(b *testing.B) {
	ctx := context.Background()
	p := filepath.Join(b.TempDir(), "data")
	if err := Create(p, 64*mib); err != nil {
		b.Fatal(err)
	}
	d, err := Open(p)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	buf := make([]byte, 4096)
	b.SetBytes(int64(len(buf)))
	var off int64
	for b.Loop() {
		if err := d.WriteAt(ctx, buf, off, false); err != nil {
			b.Fatal(err)
		}
		off = (off + 4096) % (64 * mib)
	}
}

func BenchmarkReadAt4K(b *testing.B) {
	ctx := context.Background()
	p := filepath.Join(b.TempDir(), "data")
	if err := Create(p, 64*mib); err != nil {
		b.Fatal(err)
	}
	d, err := Open(p)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	buf := make([]byte, 4096)
	b.SetBytes(int64(len(buf)))
	var off int64
	for b.Loop() {
		if err := d.ReadAt(ctx, buf, off); err != nil {
			b.Fatal(err)
		}
		off = (off + 4096) % (64 * mib)
	}
}
