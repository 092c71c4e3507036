package pool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"stave.dev/stave/target/scsi/sense"
)

const (
	testSegSize = 4 << 20
	testDevSize = 64 << 20
)

type testPool struct {
	dir  string
	devs []string
	opts Options
	p    *Pool
}

// newTestPool creates and opens a pool of n files of size devSize.
func newTestPool(t testing.TB, n int, devSize int64) *testPool {
	t.Helper()
	return newTestPoolSeg(t, n, devSize, testSegSize)
}

// newTestPoolSeg is newTestPool with a segment size.
func newTestPoolSeg(t testing.TB, n int, devSize, segSize int64) *testPool {
	t.Helper()
	dir := t.TempDir()
	tp := &testPool{dir: dir}
	for i := 0; i < n; i++ {
		path := filepath.Join(dir, fmt.Sprintf("dev%d", i))
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, devSize); err != nil {
			t.Fatal(err)
		}
		tp.devs = append(tp.devs, path)
	}
	ctx := context.Background()
	meta := filepath.Join(dir, "meta")
	if err := Create(ctx, CreateOptions{Devices: tp.devs, MetaDir: meta, SegmentSize: segSize}); err != nil {
		t.Fatal(err)
	}
	tp.opts = Options{MetaDir: meta}
	tp.open(t)
	return tp
}

func (tp *testPool) open(t testing.TB) {
	t.Helper()
	p, err := Open(context.Background(), tp.opts)
	if err != nil {
		t.Fatal(err)
	}
	tp.p = p
	t.Cleanup(func() {
		if !tp.p.closed.Load() {
			tp.p.Close()
		}
	})
}

func (tp *testPool) reopen(t testing.TB) {
	t.Helper()
	if err := tp.p.Close(); err != nil {
		t.Fatal(err)
	}
	tp.open(t)
}

func (tp *testPool) vol(t testing.TB, name string) *Volume {
	t.Helper()
	v, err := tp.p.Volume(name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func pattern(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

var policies = []struct {
	n   int
	pol Policy
}{{1, Policy{1, 0}}, {3, Policy{2, 1}}, {6, Policy{4, 2}}}

func TestWriteReadReopen(t *testing.T) {
	ctx := context.Background()
	for _, pc := range policies {
		t.Run(pc.pol.String(), func(t *testing.T) {
			tp := newTestPool(t, pc.n, testDevSize)
			v, err := tp.p.CreateVolume(ctx, "v", 16<<20, Policy{})
			if err != nil {
				t.Fatal(err)
			}
			if v.Policy() != pc.pol {
				t.Fatalf("policy %v, want %v", v.Policy(), pc.pol)
			}
			// Unmapped reads are zeros.
			buf := make([]byte, 8192)
			if err := v.ReadAt(ctx, buf, 4096); err != nil || !bytes.Equal(buf, make([]byte, 8192)) {
				t.Fatalf("unmapped read: %v", err)
			}
			a := pattern(1, 1<<20)
			if err := v.WriteAt(ctx, a, 1<<20, false); err != nil {
				t.Fatal(err)
			}
			// Sub-block overwrite (512 bytes at an odd sector).
			s := pattern(2, 1536)
			if err := v.WriteAt(ctx, s, 1<<20+512*3, true); err != nil {
				t.Fatal(err)
			}
			copy(a[512*3:], s)
			check := func() {
				t.Helper()
				got := make([]byte, 1<<20)
				if err := v.ReadAt(ctx, got, 1<<20); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, a) {
					t.Fatal("data mismatch")
				}
			}
			check()
			st := tp.p.Status()
			if st.Space.Logical != 1<<20 {
				t.Fatalf("logical %d", st.Space.Logical)
			}
			if pc.pol.Parity > 0 && st.Space.Parity == 0 {
				t.Fatal("no parity accounted")
			}
			tp.reopen(t)
			v = tp.vol(t, "v")
			check()
			if got := tp.p.Status().Space.Logical; got != 1<<20 {
				t.Fatalf("logical after reopen %d", got)
			}
			// Unmap the middle 64 KiB plus a partial sector range.
			if err := v.Unmap(ctx, 1<<20+4096*4+512, 65536); err != nil {
				t.Fatal(err)
			}
			clear(a[4096*4+512 : 4096*4+512+65536])
			check()
			mapped, n, err := v.MapStatus(ctx, 0, 16<<20)
			if err != nil || mapped || n != 1<<20 {
				t.Fatalf("MapStatus(0) = %v %d %v", mapped, n, err)
			}
			mapped, n, err = v.MapStatus(ctx, 1<<20, 16<<20)
			if err != nil || !mapped || n != 4096*5 {
				t.Fatalf("MapStatus(1M) = %v %d %v", mapped, n, err)
			}
			// Recover rebuilds the index from the devices.
			if err := tp.p.Close(); err != nil {
				t.Fatal(err)
			}
			if err := Recover(ctx, tp.opts); err != nil {
				t.Fatal(err)
			}
			tp.open(t)
			v = tp.vol(t, "v")
			check()
		})
	}
}

func TestVolumeErrors(t *testing.T) {
	ctx := context.Background()
	tp := newTestPool(t, 3, testDevSize)
	if _, err := tp.p.CreateVolume(ctx, "a", 1<<20, Policy{}); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.p.CreateVolume(ctx, "a", 1<<20, Policy{}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := tp.p.CreateVolume(ctx, "b", 1<<20, Policy{4, 2}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("policy too wide: %v", err)
	}
	if _, err := tp.p.Volume("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	if err := tp.p.DeleteVolume(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if len(tp.p.Volumes()) != 0 {
		t.Fatal("volume not deleted")
	}
	tp.reopen(t)
	if len(tp.p.Volumes()) != 0 {
		t.Fatal("volume back after reopen")
	}
	if err := tp.p.CreateSnapshot(ctx, "a", "s"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("snapshot of a deleted volume: %v", err)
	}
}

func TestPoolFull(t *testing.T) {
	ctx := context.Background()
	tp := newTestPool(t, 1, 16<<20) // 3 segments of 4 MiB
	v, err := tp.p.CreateVolume(ctx, "v", 64<<20, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	buf := pattern(3, 1<<20)
	var werr error
	for off := int64(0); off < 64<<20 && werr == nil; off += 1 << 20 {
		werr = v.WriteAt(ctx, buf, off, false)
	}
	var se *sense.Error
	if !errors.As(werr, &se) || se.Key != sense.KeyDataProtect || se.ASC != sense.ASCSpaceAllocationFailedWriteProtect {
		t.Fatalf("full pool: %v", werr)
	}
	if !errors.Is(werr, ErrNoSpace) {
		t.Fatalf("not ErrNoSpace: %v", werr)
	}
}
