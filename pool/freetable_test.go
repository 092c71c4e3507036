package pool

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// flakyDev fails writes and syncs while fail is set.
type flakyDev struct {
	Device
	fail *atomic.Bool
}

func (d flakyDev) WriteAt(p []byte, off int64) (int, error) {
	if d.fail.Load() {
		return 0, errors.New("injected write error")
	}
	return d.Device.WriteAt(p, off)
}

func (d flakyDev) Sync() error {
	if d.fail.Load() {
		return errors.New("injected sync error")
	}
	return d.Device.Sync()
}

// TestRecoverAfterDegradedFree cleans segments while one device of a 1+1
// pool is failed (so its stale chunks are not invalidated), revives it and
// runs Recover: the free table must keep unmapped data from coming back.
func TestRecoverAfterDegradedFree(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	var devs []string
	fail := map[string]*atomic.Bool{}
	for _, n := range []string{"a", "b"} {
		p := filepath.Join(dir, n)
		os.WriteFile(p, nil, 0o644)
		os.Truncate(p, testDevSize)
		devs = append(devs, p)
		fail[p] = new(atomic.Bool)
	}
	open := func(path string) (Device, error) {
		d, err := openOSDevice(path)
		if err != nil {
			return nil, err
		}
		return flakyDev{d, fail[path]}, nil
	}
	meta := filepath.Join(dir, "meta")
	if err := Create(ctx, CreateOptions{Devices: devs, MetaDir: meta, SegmentSize: testSegSize, OpenDevice: open}); err != nil {
		t.Fatal(err)
	}
	opts := Options{MetaDir: meta, OpenDevice: open, GCInterval: 1 << 40}
	p, err := Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	v, err := p.CreateVolume(ctx, "v", 4<<20, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	model := make([]byte, 4<<20)
	for i := 0; i < 3; i++ {
		b := pattern(int64(i), 4<<20)
		copy(model, b)
		if err := v.WriteAt(ctx, b, 0, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Unmap(ctx, 0, 2<<20); err != nil {
		t.Fatal(err)
	}
	clear(model[:2<<20])
	fail[devs[1]].Store(true)
	b := pattern(9, 64<<10)
	copy(model[3<<20:], b)
	if err := v.WriteAt(ctx, b, 3<<20, false); err != nil {
		t.Fatal(err)
	}
	if st := p.Status(); st.Devices[1].State != DeviceFailed {
		t.Fatalf("device b not failed: %+v", st.Devices[1])
	}
	p.mu.Lock()
	for _, s := range p.mu.segs {
		s.sealed = true
	}
	p.mu.open = map[[2]uint8]uint32{}
	p.mu.Unlock()
	if gcAll(t, p) == 0 {
		t.Fatal("nothing cleaned")
	}
	p.Close()
	fail[devs[1]].Store(false) // the stale device comes back
	if err := Recover(ctx, opts); err != nil {
		t.Fatal(err)
	}
	if p, err = Open(ctx, opts); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	v, _ = p.Volume("v")
	got := make([]byte, 4<<20)
	if err := v.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("stale data came back after Recover")
	}
}
