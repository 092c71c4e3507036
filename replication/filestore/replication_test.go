package filestore

import (
	"context"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"stave.dev/stave/replication"
	"stave.dev/stave/replication/replicatest"
)

// testISR is an ISR record guarded by the epoch, like etcd's.
type testISR struct {
	mu      sync.Mutex
	epoch   uint64
	members []string
}

func (f *testISR) Remove(_ context.Context, epoch uint64, node string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if epoch != f.epoch {
		return errors.New("test isr: epoch changed")
	}
	f.members = slices.DeleteFunc(f.members, func(m string) bool { return m == node })
	return nil
}

func (f *testISR) Add(_ context.Context, epoch uint64, node string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if epoch != f.epoch {
		return errors.New("test isr: epoch changed")
	}
	if !slices.Contains(f.members, node) {
		f.members = append(f.members, node)
	}
	return nil
}

// serveReplica runs a replication.Server for volume "vol" on st over
// loopback until the test ends.
func serveReplica(t *testing.T, node string, st replication.Store) replication.Peer {
	t.Helper()
	p, _ := replicatest.Serve(t, node, st, "")
	return p
}

// TestReplicatedVolume drives replication.Volume and two replication
// Servers, all on filestores, over loopback: random writes and unmaps from
// 8 goroutines, then every replica must equal the owner block by block
// (versions and data). Then a replica diverges while it is out (a write
// it missed, a dirty block, a block it has and the owner does not) and
// the next epoch's OpenVolume must reconcile it with the owner.
func TestReplicatedVolume(t *testing.T) {
	ctx := context.Background()
	const size = 2 << 20
	open := func(name string) *Store {
		s, err := Open(filepath.Join(t.TempDir(), name), size, Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	owner, r1, r2 := open("owner"), open("r1"), open("r2")
	peers := []replication.Peer{serveReplica(t, "r1", r1), serveReplica(t, "r2", r2)}
	isr := &testISR{epoch: 1, members: []string{"owner", "r1", "r2"}}
	cfg := replication.VolumeConfig{Name: "vol", Node: "owner", Epoch: 1, Local: owner, Replicas: peers,
		ISR: isr, RegionSize: 64 << 10, AckTimeout: 10 * time.Second}
	v, err := replication.OpenVolume(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(7, uint64(w)))
			buf := make([]byte, 64<<10)
			for range 40 {
				var off, n int64
				if r.IntN(2) == 0 {
					n = (1 + r.Int64N(16)) * BlockSize
					off = r.Int64N((size-n)/BlockSize+1) * BlockSize
				} else {
					n = (1 + r.Int64N(24)) * replication.SectorSize
					off = r.Int64N((size-n)/replication.SectorSize+1) * replication.SectorSize
				}
				var err error
				if r.IntN(8) == 0 {
					err = v.Unmap(ctx, off, n)
				} else {
					p := buf[:n]
					for i := range p {
						p[i] = byte(r.Uint32())
					}
					err = v.WriteAt(ctx, p, off, false)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if m := v.Members(); !slices.Equal(m, []string{"r1", "r2"}) {
		t.Fatalf("ISR members %v after the writes, want [r1 r2]", m)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*Store{r1, r2} {
		if err := sameStore(ctx, owner, r); err != nil {
			t.Fatalf("replica %s differs from the owner: %v", r.Dir(), err)
		}
	}

	// r1 diverges while the owner does not talk to it.
	if err := r1.WriteAt(ctx, content(3, 99), 3*BlockSize, replication.VersionOf(1, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := r1.SetBlocks(ctx, 100, []uint64{dirtyBit | 12345}, content(100, 1)); err != nil {
		t.Fatal(err)
	}
	if err := r1.Unmap(ctx, 200*BlockSize, 8*BlockSize, 0); err != nil {
		t.Fatal(err)
	}
	if err := sameStore(ctx, owner, r1); err == nil {
		t.Fatal("r1 did not diverge")
	}
	isr.mu.Lock()
	isr.epoch = 2
	isr.mu.Unlock()
	cfg.Epoch = 2
	if v, err = replication.OpenVolume(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*Store{r1, r2} {
		if err := sameStore(ctx, owner, r); err != nil {
			t.Fatalf("replica %s differs from the owner after reconcile: %v", r.Dir(), err)
		}
	}
}

// sameStore compares two stores' versions and data.
func sameStore(ctx context.Context, a, b *Store) error {
	m := replication.NewMemStore(a.Size())
	n := a.Size() / BlockSize
	vers := make([]uint64, n)
	if err := a.Versions(ctx, 0, vers); err != nil {
		return err
	}
	data := make([]byte, a.Size())
	if err := a.ReadAt(ctx, data, 0); err != nil {
		return err
	}
	var mapped []byte
	for i, v := range vers {
		if v != 0 {
			mapped = append(mapped, data[i*BlockSize:(i+1)*BlockSize]...)
		}
	}
	if err := m.SetBlocks(ctx, 0, vers, mapped); err != nil {
		return err
	}
	return equalStores(ctx, b, m)
}
