package filestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"stave.dev/stave/replication"
)

// equalStores compares every version and byte of s with the model.
func equalStores(ctx context.Context, s *Store, m *replication.MemStore) error {
	n := s.Size() / BlockSize
	got, want := make([]uint64, n), make([]uint64, n)
	if err := s.Versions(ctx, 0, got); err != nil {
		return err
	}
	m.Versions(ctx, 0, want)
	if !slices.Equal(got, want) {
		for b := range got {
			if got[b] != want[b] {
				return fmt.Errorf("block %d: version %#x, model %#x", b, got[b], want[b])
			}
		}
	}
	gd, wd := make([]byte, s.Size()), make([]byte, s.Size())
	if err := s.ReadAt(ctx, gd, 0); err != nil {
		return err
	}
	m.ReadAt(ctx, wd, 0)
	if !bytes.Equal(gd, wd) {
		for i := range gd {
			if gd[i] != wd[i] {
				return fmt.Errorf("byte %d (block %d): %#x, model %#x", i, i/BlockSize, gd[i], wd[i])
			}
		}
	}
	return nil
}

// TestModel runs random calls (sector-granular writes and unmaps, block
// SetBlocks with versions going up and down) against a Store and a
// replication.MemStore and compares them after every call and across
// Close/Open, on the OS file system and on the in-memory one.
func TestModel(t *testing.T) {
	for _, tc := range []struct {
		name string
		fs   func() fsys
		ops  int
	}{
		{"memfs", func() fsys { return newMemFS() }, 3000},
		{"os", func() fsys { return osFS{} }, 300},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			const size = 2*chunkBytes + 64*BlockSize // a partial last chunk
			dir := filepath.Join(t.TempDir(), "vol")
			opts := Options{fs: tc.fs(), MaxArmedChunks: 1}
			s, err := Open(dir, size, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { s.Close() }()
			m := replication.NewMemStore(size)
			r := rand.New(rand.NewPCG(1, 2))
			const sectors = size / replication.SectorSize
			for i := range tc.ops {
				var serr, merr error
				var desc string
				switch x := r.IntN(20); {
				case x < 9:
					n := 1 + r.Int64N(24)
					off := r.Int64N(sectors-n+1) * replication.SectorSize
					p := make([]byte, n*replication.SectorSize)
					for j := range p {
						p[j] = byte(r.Uint32())
					}
					v := r.Uint64N(1 << 50)
					desc = fmt.Sprintf("WriteAt(%d+%d, %#x)", off, len(p), v)
					serr, merr = s.WriteAt(ctx, p, off, v), m.WriteAt(ctx, p, off, v)
				case x < 13:
					n := 1 + r.Int64N(40)
					off := r.Int64N(sectors-n+1) * replication.SectorSize
					v := r.Uint64N(1 << 50)
					desc = fmt.Sprintf("Unmap(%d+%d, %#x)", off, n*replication.SectorSize, v)
					serr, merr = s.Unmap(ctx, off, n*replication.SectorSize, v), m.Unmap(ctx, off, n*replication.SectorSize, v)
				case x < 18:
					n := 1 + r.Int64N(20)
					first := r.Int64N(size/BlockSize - n + 1)
					vers := make([]uint64, n)
					var data []byte
					for j := range vers {
						if r.IntN(3) != 0 {
							vers[j] = r.Uint64N(1 << 50)
							data = append(data, content(first+int64(j), vers[j])...)
						}
					}
					desc = fmt.Sprintf("SetBlocks(%d, %#x)", first, vers)
					serr, merr = s.SetBlocks(ctx, first, vers, data), m.SetBlocks(ctx, first, vers, data)
				default:
					desc = "Close+Open"
					if serr = s.Close(); serr == nil {
						s, serr = Open(dir, 0, opts)
					}
				}
				if serr != nil || merr != nil {
					t.Fatalf("op %d %s: store %v, model %v", i, desc, serr, merr)
				}
				if err := equalStores(ctx, s, m); err != nil {
					t.Fatalf("op %d %s: %v", i, desc, err)
				}
			}
		})
	}
}

// TestErrors checks argument validation and state errors.
func TestErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(dir, 16*BlockSize, Options{})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, BlockSize)
	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"read unaligned", func() error { return s.ReadAt(ctx, buf[:100], 0) }, ErrRange},
		{"read past end", func() error { return s.ReadAt(ctx, buf, 16*BlockSize) }, ErrRange},
		{"write negative", func() error { return s.WriteAt(ctx, buf, -512, 1) }, ErrRange},
		{"write past end", func() error { return s.WriteAt(ctx, buf, 15*BlockSize+512, 1) }, ErrRange},
		{"unmap unaligned", func() error { return s.Unmap(ctx, 1, 512, 1) }, ErrRange},
		{"versions past end", func() error { return s.Versions(ctx, 10, make([]uint64, 7)) }, ErrRange},
		{"set blocks past end", func() error { return s.SetBlocks(ctx, 16, []uint64{1}, buf) }, ErrRange},
		{"set blocks short data", func() error { return s.SetBlocks(ctx, 0, []uint64{1, 2}, buf) }, ErrRange},
		{"set blocks extra data", func() error { return s.SetBlocks(ctx, 0, []uint64{0}, buf) }, ErrRange},
		{"resize shrink", func() error { return s.Resize(8 * BlockSize) }, ErrRange},
		{"resize unaligned", func() error { return s.Resize(16*BlockSize + 512) }, ErrRange},
		{"canceled", func() error {
			c, cancel := context.WithCancel(ctx)
			cancel()
			return s.WriteAt(c, buf, 0, 1)
		}, context.Canceled},
	} {
		if err := tc.call(); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteAt(ctx, buf, 0, 1); !errors.Is(err, ErrClosed) {
		t.Errorf("write after close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	if _, err := Open(dir, 32*BlockSize, Options{}); err == nil {
		t.Error("open with another size succeeded")
	}
	if _, err := Open(t.TempDir(), 1000, Options{}); !errors.Is(err, ErrRange) {
		t.Errorf("create with an unaligned size: %v", err)
	}
	if _, err := Open(t.TempDir(), 0, Options{}); !errors.Is(err, ErrRange) {
		t.Errorf("create with size 0: %v", err)
	}
	// A damaged header.
	f, err := os.OpenFile(filepath.Join(dir, versName), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0xff}, 25)
	f.Close()
	if _, err := Open(dir, 0, Options{}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("open with a damaged header: %v", err)
	}
}

// TestFailedStore checks that an I/O error fails the store for good and
// that reopening recovers it.
func TestFailedStore(t *testing.T) {
	ctx := context.Background()
	fs := newMemFS()
	s, err := Open("/v", 4*BlockSize, Options{fs: fs})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WriteAt(ctx, content(0, 7), 0, 7); err != nil {
		t.Fatal(err)
	}
	fs.setCrashAfter(2) // chunk 0 is armed: the data write succeeds, the entry write fails
	if err := s.WriteAt(ctx, content(1, 8), BlockSize, 8); !errors.Is(err, ErrFailed) {
		t.Fatalf("write with a failing entry write: %v", err)
	}
	fs.uncrash()
	if err := s.WriteAt(ctx, content(2, 9), 2*BlockSize, 9); !errors.Is(err, ErrFailed) {
		t.Fatalf("write on a failed store: %v", err)
	}
	if err := s.Flush(ctx); !errors.Is(err, ErrFailed) {
		t.Fatalf("flush on a failed store: %v", err)
	}
	if err := s.ReadAt(ctx, make([]byte, BlockSize), 0); err != nil {
		t.Fatalf("read on a failed store: %v", err)
	}
	s.Close()
	if s, err = Open("/v", 0, Options{fs: fs}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	vers := make([]uint64, 4)
	if err := s.Versions(ctx, 0, vers); err != nil {
		t.Fatal(err)
	}
	// Block 1 holds the data of the failed write without its entry:
	// recovery marks it dirty.
	if vers[0] != 7 || !IsDirty(vers[1]) || vers[2] != 0 {
		t.Fatalf("versions after reopen %#x, want [7 dirty 0 0]", vers)
	}
	if err := s.WriteAt(ctx, content(1, 8), BlockSize, 8); err != nil {
		t.Fatalf("write after reopen: %v", err)
	}
}

// TestResize grows a store, checks the new blocks are unmapped and the old
// ones intact, across reopen and across a crash at every step of Resize.
func TestResize(t *testing.T) {
	ctx := context.Background()
	const old, grown = 300 * BlockSize, 700 * BlockSize
	for k := 1; ; k++ {
		fs := newMemFS()
		s, err := Open("/v", old, Options{fs: fs})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.WriteAt(ctx, content(299, 5), 299*BlockSize, 5); err != nil {
			t.Fatal(err)
		}
		fs.setCrashAfter(k)
		rerr := s.Resize(grown)
		crashed := fs.isCrashed()
		fs.crash()
		s.Close()
		fs = fs.crashClone(rand.New(rand.NewPCG(uint64(k), 0)))
		s, err = Open("/v", 0, Options{fs: fs})
		if err != nil {
			t.Fatalf("crash at op %d of Resize: reopen: %v", k, err)
		}
		if rerr == nil && s.Size() != grown {
			t.Fatalf("crash at op %d: Resize returned nil but the size is %d", k, s.Size())
		}
		if sz := s.Size(); sz != old && sz != grown {
			t.Fatalf("crash at op %d: size %d", k, sz)
		}
		h := &history{blocks: make([]blockHist, s.Size()/BlockSize)}
		h.blocks[299].base = 5
		if _, err := h.check(ctx, s); err != nil {
			t.Fatalf("crash at op %d of Resize: %v", k, err)
		}
		if s.Size() == grown {
			if err := s.WriteAt(ctx, content(650, 6), 650*BlockSize, 6); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if s, err = Open("/v", grown, Options{fs: fs}); err != nil {
				t.Fatal(err)
			}
			h.blocks[650].base = 6
			if _, err := h.check(ctx, s); err != nil {
				t.Fatalf("after resize and reopen: %v", err)
			}
		}
		s.Close()
		if !crashed {
			if k < 4 {
				t.Fatalf("Resize finished within %d operations", k)
			}
			return
		}
	}
}

// TestMapStatus checks runs of mapped and unmapped blocks.
func TestMapStatus(t *testing.T) {
	ctx := context.Background()
	s, err := Open(t.TempDir(), 600*BlockSize, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.WriteAt(ctx, make([]byte, 300*BlockSize), 10*BlockSize, 1); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		off, limit int64
		mapped     bool
		length     int64
	}{
		{0, 1 << 30, false, 10 * BlockSize},
		{512, 1 << 30, false, 10*BlockSize - 512},
		{10 * BlockSize, 1 << 30, true, 300 * BlockSize},
		{11*BlockSize + 1024, 1 << 30, true, 299*BlockSize - 1024},
		{10 * BlockSize, 5 * BlockSize, true, 5 * BlockSize},
		{310 * BlockSize, 1 << 30, false, 290 * BlockSize},
		{600 * BlockSize, 1 << 30, false, 0},
	} {
		m, n, err := s.MapStatus(ctx, tc.off, tc.limit)
		if err != nil || m != tc.mapped || n != tc.length {
			t.Errorf("MapStatus(%d, %d) = %v, %d, %v; want %v, %d", tc.off, tc.limit, m, n, err, tc.mapped, tc.length)
		}
	}
}
