package replication

import (
	"bytes"
	"context"
	"errors"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// growStore is a MemStore that can grow (the daemon's filestore.Store has
// Resize): every call holds mu shared, Grow holds it exclusively and
// copies the content into a larger MemStore.
type growStore struct {
	mu sync.RWMutex
	s  *MemStore
}

func newGrowStore(size int64) *growStore { return &growStore{s: NewMemStore(size)} }

func (g *growStore) Size() int64 {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.s.Size()
}

func (g *growStore) ReadAt(ctx context.Context, p []byte, off int64) error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.s.ReadAt(ctx, p, off)
}

func (g *growStore) WriteAt(ctx context.Context, p []byte, off int64, version uint64) error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.s.WriteAt(ctx, p, off, version)
}

func (g *growStore) Unmap(ctx context.Context, off, length int64, version uint64) error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.s.Unmap(ctx, off, length, version)
}

func (g *growStore) Flush(ctx context.Context) error { return nil }

func (g *growStore) Versions(ctx context.Context, first int64, dst []uint64) error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.s.Versions(ctx, first, dst)
}

func (g *growStore) SetBlocks(ctx context.Context, first int64, versions []uint64, data []byte) error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.s.SetBlocks(ctx, first, versions, data)
}

// Grow makes the store size bytes; the new blocks are unmapped.
func (g *growStore) Grow(size int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := NewMemStore(size)
	copy(n.mu.data, g.s.mu.data)
	copy(n.mu.ver, g.s.mu.ver)
	g.s = n
}

// sameUpTo reports whether a and b hold the same data and versions in
// their first size bytes.
func sameUpTo(t *testing.T, a, b Store, size int64) bool {
	t.Helper()
	ctx := context.Background()
	da, db := make([]byte, size), make([]byte, size)
	va, vb := make([]uint64, size/BlockSize), make([]uint64, size/BlockSize)
	for _, err := range []error{a.ReadAt(ctx, da, 0), b.ReadAt(ctx, db, 0), a.Versions(ctx, 0, va), b.Versions(ctx, 0, vb)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return bytes.Equal(da, db) && slices.Equal(va, vb)
}

// growReplica is a replica server over a growStore.
type growReplica struct {
	node  string
	store *growStore
	addr  string
	stop  func()
}

func startGrowReplica(t *testing.T, node string, st *growStore) *growReplica {
	t.Helper()
	addr, stop := serveStore(t, node, st)
	return &growReplica{node: node, store: st, addr: addr, stop: stop}
}

func (r *growReplica) peer() Peer { return Peer{Node: r.node, Addr: r.addr} }

// growCluster is an owner over a growStore and replicas over growStores.
type growCluster struct {
	owner    *Volume
	local    *growStore
	replicas []*growReplica
	isr      *fakeISR
}

func newGrowCluster(t *testing.T, size int64, nrep int, growTimeout time.Duration) *growCluster {
	t.Helper()
	c := &growCluster{local: newGrowStore(size), isr: newFakeISR(1, "owner")}
	var peers []Peer
	for i := range nrep {
		name := []string{"r1", "r2", "r3"}[i]
		r := startGrowReplica(t, name, newGrowStore(size))
		c.replicas = append(c.replicas, r)
		peers = append(peers, r.peer())
		c.isr.members = append(c.isr.members, name)
	}
	v, err := OpenVolume(context.Background(), VolumeConfig{Name: "vol", Node: "owner", Epoch: 1, Local: c.local,
		Replicas: peers, ISR: c.isr, RegionSize: 64 << 10, AckTimeout: time.Second, GrowTimeout: growTimeout})
	if err != nil {
		t.Fatal(err)
	}
	c.owner = v
	t.Cleanup(func() { v.Close() })
	return c
}

// beyond returns write bases in [testSize, 2*testSize) for randomIO.
func beyond(r *mrand.Rand) int64 { return testSize + int64(r.IntN(15))*64<<10 }

// TestGrow: write, grow while writes run (one replica grows its store
// only after Grow started, like a node that sees the new spec late),
// write beyond the old end: every store holds the same data and versions
// and the ISR is unchanged.
func TestGrow(t *testing.T) {
	checkNoLeak(t)
	ctx := context.Background()
	c := newGrowCluster(t, testSize, 2, 10*time.Second)
	if err := randomIO(t, c.owner, 11, 4, 100, nil); err != nil {
		t.Fatal(err)
	}
	p := bytes.Repeat([]byte{0xee}, BlockSize)
	if err := c.owner.WriteAt(ctx, p, testSize, false); err == nil {
		t.Fatal("write beyond the end accepted before the grow")
	}
	// Grow fails while the local store is small, and never shrinks.
	if err := c.owner.Grow(ctx, 2*testSize); err == nil {
		t.Fatal("Grow with a small local store succeeded")
	}
	if err := c.owner.Grow(ctx, testSize/2); err == nil {
		t.Fatal("Grow to a smaller size succeeded")
	}
	if err := c.owner.Grow(ctx, testSize+SectorSize); err == nil {
		t.Fatal("Grow to an unaligned size succeeded")
	}
	c.local.Grow(2 * testSize)
	c.replicas[0].store.Grow(2 * testSize)
	io := make(chan error, 1)
	go func() { io <- randomIO(t, c.owner, 12, 4, 100, nil) }()
	grown := make(chan error, 1)
	go func() { grown <- c.owner.Grow(ctx, 2*testSize) }()
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-grown:
		t.Fatalf("Grow returned before r2 grew: %v", err)
	default:
	}
	if got := c.owner.Size(); got != testSize {
		t.Fatalf("size %d before every replica grew", got)
	}
	c.replicas[1].store.Grow(2 * testSize)
	if err := <-grown; err != nil {
		t.Fatal(err)
	}
	if err := <-io; err != nil {
		t.Fatal(err)
	}
	if got := c.owner.Size(); got != 2*testSize {
		t.Fatalf("size %d after Grow", got)
	}
	// Writes beyond the old end, and across it.
	if err := randomIO(t, c.owner, 13, 4, 100, beyond); err != nil {
		t.Fatal(err)
	}
	if err := c.owner.WriteAt(ctx, bytes.Repeat([]byte{0x5a}, 4*BlockSize), testSize-2*BlockSize, false); err != nil {
		t.Fatal(err)
	}
	if err := c.owner.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, BlockSize)
	if err := c.owner.ReadAt(ctx, got, testSize+BlockSize); err != nil {
		t.Fatal(err)
	}
	for _, r := range c.replicas {
		if !sameUpTo(t, r.store, c.local, 2*testSize) {
			t.Fatalf("replica %s differs from the owner", r.node)
		}
	}
	if got := c.owner.Members(); !slices.Equal(got, []string{"r1", "r2"}) {
		t.Fatalf("members %v", got)
	}
	if got := c.isr.Members(); !slices.Equal(got, []string{"owner", "r1", "r2"}) {
		t.Fatalf("ISR %v", got)
	}
	// A second Grow to the same size is a no-op.
	if err := c.owner.Grow(ctx, 2*testSize); err != nil {
		t.Fatal(err)
	}
	c.owner.Close()
	for _, r := range c.replicas {
		r.stop()
	}
}

// TestGrowReplicaCannotGrow: a replica whose store does not grow is
// removed from the ISR through the normal path, and the owner keeps
// acknowledging writes, beyond the old end too.
func TestGrowReplicaCannotGrow(t *testing.T) {
	checkNoLeak(t)
	ctx := context.Background()
	c := newGrowCluster(t, testSize, 2, 300*time.Millisecond)
	c.local.Grow(2 * testSize)
	c.replicas[0].store.Grow(2 * testSize)
	io := make(chan error, 1)
	go func() { io <- randomIO(t, c.owner, 21, 4, 100, nil) }()
	if err := c.owner.Grow(ctx, 2*testSize); err != nil {
		t.Fatal(err)
	}
	if err := <-io; err != nil {
		t.Fatal(err)
	}
	if got := c.isr.Members(); !slices.Equal(got, []string{"owner", "r1"}) {
		t.Fatalf("ISR %v", got)
	}
	if got := c.owner.Members(); !slices.Equal(got, []string{"r1"}) {
		t.Fatalf("members %v", got)
	}
	if err := randomIO(t, c.owner, 22, 4, 100, beyond); err != nil {
		t.Fatal(err)
	}
	if !sameUpTo(t, c.replicas[0].store, c.local, 2*testSize) {
		t.Fatal("r1 differs from the owner")
	}
	if c.replicas[1].store.Size() != testSize {
		t.Fatal("r2 grew")
	}
	c.owner.Close()
	for _, r := range c.replicas {
		r.stop()
	}
}

// TestGrowCanceled: a Grow whose context ends while a replica has not
// grown leaves the size and the ISR as they were.
func TestGrowCanceled(t *testing.T) {
	checkNoLeak(t)
	c := newGrowCluster(t, testSize, 1, 10*time.Second)
	c.local.Grow(2 * testSize)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := c.owner.Grow(ctx, 2*testSize); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Grow: %v, want DeadlineExceeded", err)
	}
	if c.owner.Size() != testSize || !slices.Equal(c.owner.Members(), []string{"r1"}) || !slices.Equal(c.isr.Members(), []string{"owner", "r1"}) {
		t.Fatalf("size %d, members %v, ISR %v", c.owner.Size(), c.owner.Members(), c.isr.Members())
	}
	c.owner.Close()
	c.replicas[0].stop()
}

// TestReplicaLargerThanOwner: a replica whose store grew ahead of the
// owner (whose size ends in a partial region) is accepted; digests cover
// the owner's size, so a replica with the same content receives nothing
// and one that missed a write receives exactly that region.
func TestReplicaLargerThanOwner(t *testing.T) {
	checkNoLeak(t)
	ctx := context.Background()
	const size = testSize + 3*BlockSize // 16 regions of 64 KiB and a partial one
	c := newGrowCluster(t, size, 1, 0)
	if err := randomIO(t, c.owner, 31, 4, 100, nil); err != nil {
		t.Fatal(err)
	}
	last := bytes.Repeat([]byte{0x77}, 3*BlockSize)
	if err := c.owner.WriteAt(ctx, last, testSize, false); err != nil {
		t.Fatal(err)
	}
	// r2: a copy of the owner's store, grown ahead.
	big := newGrowStore(size)
	copy(big.s.mu.data, c.local.s.mu.data)
	copy(big.s.mu.ver, c.local.s.mu.ver)
	big.Grow(2 * testSize)
	r2 := startGrowReplica(t, "r2", big)
	st, err := c.owner.Resync(ctx, r2.peer(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Regions != 17 || st.RegionsCopied != 0 {
		t.Fatalf("resync of an identical, larger replica: %+v", st)
	}
	// r3: larger and missing the write to the partial last region.
	r3s := newGrowStore(size)
	copy(r3s.s.mu.data, c.local.s.mu.data[:testSize])
	copy(r3s.s.mu.ver, c.local.s.mu.ver[:testSize/BlockSize])
	r3s.Grow(3 * testSize)
	r3 := startGrowReplica(t, "r3", r3s)
	if st, err = c.owner.Resync(ctx, r3.peer(), nil); err != nil {
		t.Fatal(err)
	}
	if st.RegionsCopied != 1 {
		t.Fatalf("resync of a larger replica that missed one region: %+v", st)
	}
	if err := randomIO(t, c.owner, 32, 4, 50, nil); err != nil {
		t.Fatal(err)
	}
	for _, s := range []Store{c.replicas[0].store, big, r3s} {
		if !sameUpTo(t, s, c.local, size) {
			t.Fatal("a replica differs from the owner")
		}
	}
	if got := c.isr.Members(); !slices.Equal(got, []string{"owner", "r1", "r2", "r3"}) {
		t.Fatalf("ISR %v", got)
	}
	// The owner then grows to the size r2 already has.
	c.local.Grow(2 * testSize)
	c.replicas[0].store.Grow(2 * testSize)
	if err := c.owner.Grow(ctx, 2*testSize); err != nil {
		t.Fatal(err)
	}
	if err := randomIO(t, c.owner, 33, 4, 50, beyond); err != nil {
		t.Fatal(err)
	}
	for _, s := range []Store{c.replicas[0].store, big, r3s} {
		if !sameUpTo(t, s, c.local, 2*testSize) {
			t.Fatal("a replica differs from the owner after the grow")
		}
	}
	if got := c.owner.Members(); !slices.Equal(got, []string{"r1", "r2", "r3"}) {
		t.Fatalf("members %v", got)
	}
	c.owner.Close()
	for _, r := range []*growReplica{c.replicas[0], r2, r3} {
		r.stop()
	}
}

// TestGrowDuringResync: a replica still catching up when the volume grows
// is dropped (its resync covered only the old size), its Resync fails and
// it does not join the ISR; resynced again, it holds the grown volume.
func TestGrowDuringResync(t *testing.T) {
	checkNoLeak(t)
	ctx := context.Background()
	c := newGrowCluster(t, testSize, 1, 5*time.Second)
	if err := randomIO(t, c.owner, 41, 4, 100, nil); err != nil {
		t.Fatal(err)
	}
	r2s := newGrowStore(testSize)
	r2 := startGrowReplica(t, "r2", r2s)
	inResync, release := make(chan struct{}), make(chan struct{})
	resynced := make(chan error, 1)
	go func() {
		var once bool
		_, err := c.owner.Resync(ctx, r2.peer(), func(ResyncProgress) {
			if !once {
				once = true
				close(inResync)
				<-release
			}
		})
		resynced <- err
	}()
	<-inResync // r2 is linked and catching up, not yet in the ISR
	c.local.Grow(2 * testSize)
	c.replicas[0].store.Grow(2 * testSize)
	r2s.Grow(2 * testSize)
	if err := c.owner.Grow(ctx, 2*testSize); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-resynced; err == nil {
		t.Fatal("a resync that the grow overtook succeeded")
	}
	if got := c.isr.Members(); !slices.Equal(got, []string{"owner", "r1"}) {
		t.Fatalf("ISR %v after the overtaken resync", got)
	}
	if got := c.owner.Members(); !slices.Equal(got, []string{"r1"}) {
		t.Fatalf("members %v after the overtaken resync", got)
	}
	if err := randomIO(t, c.owner, 42, 4, 100, beyond); err != nil {
		t.Fatal(err)
	}
	st, err := c.owner.Resync(ctx, r2.peer(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Regions != 2*testSize/(64<<10) {
		t.Fatalf("second resync covered %d regions, want the grown volume's %d", st.Regions, 2*testSize/(64<<10))
	}
	if got := c.isr.Members(); !slices.Equal(got, []string{"owner", "r1", "r2"}) {
		t.Fatalf("ISR %v after the second resync", got)
	}
	for _, s := range []Store{c.replicas[0].store, r2s} {
		if !sameUpTo(t, s, c.local, 2*testSize) {
			t.Fatal("a replica differs from the owner")
		}
	}
	c.owner.Close()
	c.replicas[0].stop()
	r2.stop()
}
