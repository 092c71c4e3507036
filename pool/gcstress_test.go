package pool

import (
	"context"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestGCStress writes concurrently to a small volume on a pool of six
// segments, reopening often: the cleaner must keep the pool writable.
func TestGCStress(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	dev := filepath.Join(dir, "dev0")
	os.WriteFile(dev, nil, 0o644)
	os.Truncate(dev, (1<<20)+6*testSegSize)
	meta := filepath.Join(dir, "meta")
	if err := Create(ctx, CreateOptions{Devices: []string{dev}, MetaDir: meta, SegmentSize: testSegSize}); err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	opts := Options{MetaDir: meta, Logger: logger, GCInterval: 20 * time.Millisecond}
	p, err := Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateVolume(ctx, "s", 2<<20, Policy{}); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 6; round++ {
		v, err := p.Volume("s")
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewSource(int64(round*10 + w)))
				buf := make([]byte, 64<<10)
				for i := 0; i < 100; i++ {
					n := (1 + rng.Intn(16)) * 4096
					off := rng.Int63n(int64(2<<20-n)/512) * 512
					rng.Read(buf[:n])
					var err error
					if rng.Intn(10) == 0 {
						err = v.Unmap(ctx, off/4096*4096, int64(n))
					} else {
						err = v.WriteAt(ctx, buf[:n], off, false)
					}
					if err != nil {
						t.Errorf("round %d: %v (space %+v)", round, err, p.Status().Space)
						return
					}
				}
			}()
		}
		wg.Wait()
		if t.Failed() {
			p.mu.Lock()
			for r, s := range p.mu.segs {
				t.Logf("seg %d: sealed %v tail %d blocks %d live %d", r, s.sealed, s.tail, s.blocks, s.live)
			}
			p.mu.Unlock()
			break
		}
		p.Close()
		if p, err = Open(ctx, opts); err != nil {
			t.Fatal(err)
		}
	}
	p.Close()
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }
