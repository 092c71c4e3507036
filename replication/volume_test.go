package replication

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

const testSize = 1 << 20 // 1 MiB volumes, 64 KiB regions: 16 regions

// fakeISR is an etcd ISR record: changes are guarded by the epoch.
type fakeISR struct {
	mu      sync.Mutex
	epoch   uint64
	members []string
	calls   []string
	// gate, when set, holds Remove until it is closed; called is
	// signalled when Remove starts.
	gate    chan struct{}
	called  chan string
	removed map[string]time.Time
}

func newFakeISR(epoch uint64, members ...string) *fakeISR {
	return &fakeISR{epoch: epoch, members: members, removed: map[string]time.Time{}}
}

func (f *fakeISR) Remove(ctx context.Context, epoch uint64, node string) error {
	if f.called != nil {
		f.called <- node
	}
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "remove "+node)
	if epoch != f.epoch {
		return errors.New("fake etcd: epoch changed")
	}
	f.members = slices.DeleteFunc(f.members, func(m string) bool { return m == node })
	f.removed[node] = time.Now()
	return nil
}

func (f *fakeISR) Add(ctx context.Context, epoch uint64, node string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "add "+node)
	if epoch != f.epoch {
		return errors.New("fake etcd: epoch changed")
	}
	if !slices.Contains(f.members, node) {
		f.members = append(f.members, node)
	}
	return nil
}

func (f *fakeISR) Members() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(slices.Values(f.members))
}

// replica is one in-process replica server on loopback TCP.
type replica struct {
	node   string
	store  *MemStore
	dir    string
	addr   string
	cancel context.CancelFunc
	done   chan error
}

func startReplica(t *testing.T, node string, store *MemStore, dir string, tlsCfg *tls.Config) *replica {
	t.Helper()
	ep, err := OpenEpochStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(ServerConfig{Node: node, Epochs: ep, TLS: tlsCfg,
		Lookup: func(v string) (Store, bool) { return store, v == "vol" }})
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{node: node, store: store, dir: dir, addr: ln.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(r.kill)
	return r
}

// kill stops the server and closes its connections (idempotent).
func (r *replica) kill() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	<-r.done
	r.cancel = nil
}

func (r *replica) peer() Peer { return Peer{Node: r.node, Addr: r.addr} }

type cluster struct {
	owner    *Volume
	local    *MemStore
	replicas []*replica
	isr      *fakeISR
}

func newCluster(t *testing.T, epoch uint64, nrep int) *cluster {
	t.Helper()
	c := &cluster{local: NewMemStore(testSize), isr: newFakeISR(epoch, "owner")}
	var peers []Peer
	for i := range nrep {
		name := []string{"r1", "r2", "r3"}[i]
		r := startReplica(t, name, NewMemStore(testSize), t.TempDir(), nil)
		c.replicas = append(c.replicas, r)
		peers = append(peers, r.peer())
		c.isr.members = append(c.isr.members, name)
	}
	v, err := OpenVolume(context.Background(), VolumeConfig{Name: "vol", Node: "owner", Epoch: epoch,
		Local: c.local, Replicas: peers, ISR: c.isr, RegionSize: 64 << 10, AckTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c.owner = v
	t.Cleanup(func() { v.Close() })
	return c
}

func checkNoLeak(t *testing.T) {
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		for range 100 {
			if runtime.NumGoroutine() <= base {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		buf := make([]byte, 1<<16)
		t.Errorf("goroutines: %d before, %d after\n%s", base, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
	})
}

// randomIO runs n random writes and unmaps from each of workers goroutines.
func randomIO(t *testing.T, v *Volume, seed uint64, workers, n int, region func(r *mrand.Rand) int64) error {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			r := mrand.New(mrand.NewPCG(seed, uint64(w)))
			buf := make([]byte, 16<<10)
			for range n {
				base := int64(0)
				if region != nil {
					base = region(r)
				}
				var off, ln int64
				if r.IntN(2) == 0 { // aligned blocks
					off = base + int64(r.IntN(13))*BlockSize
					ln = int64(1+r.IntN(4)) * BlockSize
				} else { // sectors
					off = base + int64(r.IntN(119))*SectorSize
					ln = int64(1+r.IntN(9)) * SectorSize
				}
				if region == nil {
					off = int64(r.IntN(testSize/SectorSize-64)) * SectorSize
				}
				var err error
				if r.IntN(10) == 0 {
					err = v.Unmap(context.Background(), off, ln)
				} else {
					p := buf[:ln]
					for i := range p {
						p[i] = byte(r.Uint32())
					}
					err = v.WriteAt(context.Background(), p, off, false)
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
	return <-errs
}

func TestReplicatedWrites(t *testing.T) {
	checkNoLeak(t)
	c := newCluster(t, 1, 2)
	if err := randomIO(t, c.owner, 1, 8, 150, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.owner.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, r := range c.replicas {
		if !r.store.Equal(c.local) {
			t.Fatalf("replica %s differs from the owner", r.node)
		}
	}
	p := make([]byte, 8192)
	want := make([]byte, 8192)
	if err := c.owner.ReadAt(context.Background(), p, 4096); err != nil {
		t.Fatal(err)
	}
	c.local.ReadAt(context.Background(), want, 4096)
	if !bytes.Equal(p, want) {
		t.Fatal("ReadAt differs from the local store")
	}
	if got := c.owner.Members(); !slices.Equal(got, []string{"r1", "r2"}) {
		t.Fatalf("members %v", got)
	}
	c.owner.Close()
	for _, r := range c.replicas {
		r.kill()
	}
}

// TestReplicaKilledRemovedBeforeAck kills a replica while writes run: no
// write issued after the kill is acknowledged before the ISR removal has
// committed, and writes continue afterwards.
func TestReplicaKilledRemovedBeforeAck(t *testing.T) {
	checkNoLeak(t)
	c := newCluster(t, 1, 2)
	c.isr.gate = make(chan struct{})
	c.isr.called = make(chan string, 1)
	stop := make(chan struct{})
	type ack struct {
		start, end time.Time
		err        error
	}
	acks := make(chan ack, 1<<16)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			p := bytes.Repeat([]byte{byte(w + 1)}, BlockSize)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				s := time.Now()
				err := c.owner.WriteAt(context.Background(), p, int64(w*64+i%64)*BlockSize, false)
				acks <- ack{s, time.Now(), err}
			}
		})
	}
	time.Sleep(50 * time.Millisecond)
	c.replicas[1].kill() // returns once r2's connections are closed
	killed := time.Now()
	select {
	case n := <-c.isr.called:
		if n != "r2" {
			t.Fatalf("removal of %s", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no ISR removal after the kill")
	}
	// While the removal is pending, writes started after the kill must
	// not complete.
	time.Sleep(200 * time.Millisecond)
	released := time.Now()
	close(c.isr.gate)
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	close(acks)
	removed := c.isr.removed["r2"]
	var after, total int
	for a := range acks {
		total++
		if a.err != nil {
			t.Fatalf("write failed: %v", a.err)
		}
		if a.start.After(killed) {
			if a.end.Before(released) {
				t.Fatalf("a write started %v after the kill was acknowledged before the ISR removal", a.start.Sub(killed))
			}
			if a.end.Before(removed) {
				t.Fatal("write acknowledged before the removal committed")
			}
			after++
		}
	}
	if after == 0 {
		t.Fatal("no writes after the removal")
	}
	t.Logf("%d writes, %d started after the kill", total, after)
	if got := c.isr.Members(); !slices.Equal(got, []string{"owner", "r1"}) {
		t.Fatalf("ISR %v", got)
	}
	if got := c.owner.Members(); !slices.Equal(got, []string{"r1"}) {
		t.Fatalf("volume members %v", got)
	}
	if !c.replicas[0].store.Equal(c.local) {
		t.Fatal("r1 differs from the owner")
	}
	c.owner.Close()
	c.replicas[0].kill()
}

// TestStaleOwnerRejected: a new owner (epoch 2) opens the replicas; the
// old owner's next write is refused by the replicas and the old owner
// fences; an owner of a lower epoch cannot open.
func TestStaleOwnerRejected(t *testing.T) {
	checkNoLeak(t)
	c := newCluster(t, 1, 2)
	p := bytes.Repeat([]byte{1}, BlockSize)
	if err := c.owner.WriteAt(context.Background(), p, 0, false); err != nil {
		t.Fatal(err)
	}
	// Failover: r1 becomes owner in epoch 2 with r2 as its replica.
	c.isr.mu.Lock()
	c.isr.epoch = 2
	c.isr.mu.Unlock()
	nv, err := OpenVolume(context.Background(), VolumeConfig{Name: "vol", Node: "r1", Epoch: 2,
		Local: c.replicas[0].store, Replicas: []Peer{c.replicas[1].peer()}, ISR: c.isr, RegionSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer nv.Close()
	err = c.owner.WriteAt(context.Background(), p, BlockSize, false)
	if !errors.Is(err, ErrFenced) {
		t.Fatalf("old owner's write: %v, want ErrFenced", err)
	}
	select {
	case <-c.owner.Done():
	default:
		t.Fatal("old owner not fenced")
	}
	if err := c.owner.ReadAt(context.Background(), p, 0); !errors.Is(err, ErrFenced) {
		t.Fatalf("old owner's read: %v", err)
	}
	// The replica persisted epoch 2.
	ep, _ := OpenEpochStore(c.replicas[1].dir)
	if e, err := ep.Get("vol"); err != nil || e != 2 {
		t.Fatalf("persisted epoch %d, %v", e, err)
	}
	// An owner of epoch 1 cannot open.
	_, err = OpenVolume(context.Background(), VolumeConfig{Name: "vol", Node: "owner", Epoch: 1,
		Local: c.local, Replicas: []Peer{c.replicas[1].peer()}, ISR: c.isr})
	if !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("open in epoch 1: %v, want ErrStaleEpoch", err)
	}
	// The new owner serves.
	if err := nv.WriteAt(context.Background(), p, 2*BlockSize, false); err != nil {
		t.Fatal(err)
	}
	nv.Close()
	c.owner.Close()
}

// TestReconcileAtOpen: a replica holding a tail write that the new owner
// lacks is brought to the owner's content.
func TestReconcileAtOpen(t *testing.T) {
	checkNoLeak(t)
	local, rs := NewMemStore(testSize), NewMemStore(testSize)
	ctx := context.Background()
	local.WriteAt(ctx, bytes.Repeat([]byte{1}, BlockSize), 0, VersionOf(1, 1))
	rs.WriteAt(ctx, bytes.Repeat([]byte{1}, BlockSize), 0, VersionOf(1, 1))
	rs.WriteAt(ctx, bytes.Repeat([]byte{2}, BlockSize), 5*BlockSize, VersionOf(1, 2)) // the tail
	r := startReplica(t, "r1", rs, t.TempDir(), nil)
	isr := newFakeISR(2, "owner", "r1")
	v, err := OpenVolume(ctx, VolumeConfig{Name: "vol", Node: "owner", Epoch: 2, Local: local,
		Replicas: []Peer{r.peer()}, ISR: isr, RegionSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if !rs.Equal(local) {
		t.Fatal("replica not reconciled")
	}
	v.Close()
	r.kill()
}

// TestResync: a replica that missed writes to two regions receives exactly
// those regions, while writes continue; then all stores are identical.
func TestResync(t *testing.T) {
	checkNoLeak(t)
	c := newCluster(t, 1, 2)
	if err := randomIO(t, c.owner, 2, 4, 100, nil); err != nil {
		t.Fatal(err)
	}
	r2 := c.replicas[1]
	r2.kill()
	// Writes to regions 2 and 5 only (64 KiB regions); r2 is removed.
	inRegions := func(r *mrand.Rand) int64 { return int64([]int{2, 5}[r.IntN(2)]) * 64 << 10 }
	if err := randomIO(t, c.owner, 3, 4, 50, inRegions); err != nil {
		t.Fatal(err)
	}
	if got := c.owner.Members(); !slices.Equal(got, []string{"r1"}) {
		t.Fatalf("members %v", got)
	}
	back := startReplica(t, "r2", r2.store, r2.dir, nil)
	var calls []ResyncProgress
	st, err := c.owner.Resync(context.Background(), back.peer(), func(p ResyncProgress) { calls = append(calls, p) })
	if err != nil {
		t.Fatal(err)
	}
	if st.RegionsCopied != 2 || st.Regions != 16 || st.RegionsDone != 16 || len(calls) == 0 {
		t.Fatalf("resync %+v (%d progress calls)", st, len(calls))
	}
	// Two region frames: header + fields + 16 versions + mapped blocks.
	maxBytes := int64(2 * (HeaderSize + 24 + 16*8 + 16*BlockSize))
	if st.BytesSent <= 0 || st.BytesSent > maxBytes {
		t.Fatalf("sent %d bytes, want at most %d", st.BytesSent, maxBytes)
	}
	t.Logf("resync: %+v", st)
	// Writes during and after the resync reach r2 as well.
	if err := randomIO(t, c.owner, 4, 4, 50, nil); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*MemStore{c.replicas[0].store, r2.store} {
		if !s.Equal(c.local) {
			t.Fatal("stores differ after resync")
		}
	}
	if got := c.isr.Members(); !slices.Equal(got, []string{"owner", "r1", "r2"}) {
		t.Fatalf("ISR %v", got)
	}
	c.owner.Close()
	c.replicas[0].kill()
	back.kill()
}

// TestResyncConcurrentWrites runs writes while a resync copies regions.
func TestResyncConcurrentWrites(t *testing.T) {
	checkNoLeak(t)
	c := newCluster(t, 1, 1)
	if err := randomIO(t, c.owner, 5, 2, 50, nil); err != nil {
		t.Fatal(err)
	}
	extra := NewMemStore(testSize)
	back := startReplica(t, "r9", extra, t.TempDir(), nil)
	errc := make(chan error, 1)
	go func() { errc <- randomIO(t, c.owner, 6, 4, 100, nil) }()
	if _, err := c.owner.Resync(context.Background(), back.peer(), nil); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !extra.Equal(c.local) || !c.replicas[0].store.Equal(c.local) {
		t.Fatal("stores differ")
	}
	c.owner.Close()
	c.replicas[0].kill()
	back.kill()
}

func TestLeaseDeadlineFences(t *testing.T) {
	checkNoLeak(t)
	c := newCluster(t, 1, 1)
	p := make([]byte, BlockSize)
	c.owner.SetLeaseDeadline(time.Now().Add(time.Hour))
	if err := c.owner.WriteAt(context.Background(), p, 0, false); err != nil {
		t.Fatal(err)
	}
	c.owner.SetLeaseDeadline(time.Now().Add(-time.Millisecond))
	if err := c.owner.WriteAt(context.Background(), p, 0, false); !errors.Is(err, ErrFenced) {
		t.Fatalf("write after the deadline: %v", err)
	}
	if err := c.owner.ReadAt(context.Background(), p, 0); !errors.Is(err, ErrFenced) {
		t.Fatalf("read after the deadline: %v", err)
	}
	// A keepalive extended the lease in time: serve again.
	c.owner.SetLeaseDeadline(time.Now().Add(time.Hour))
	if err := c.owner.WriteAt(context.Background(), p, 0, false); err != nil {
		t.Fatal(err)
	}
	if c.owner.Err() != nil {
		t.Fatalf("fenced for good: %v", c.owner.Err())
	}
	c.owner.Close()
	c.replicas[0].kill()
}

func TestISRRemovalFailureFences(t *testing.T) {
	checkNoLeak(t)
	c := newCluster(t, 1, 2)
	c.isr.mu.Lock()
	c.isr.epoch = 5 // another owner took over in etcd
	c.isr.mu.Unlock()
	c.replicas[1].kill()
	err := c.owner.WriteAt(context.Background(), make([]byte, BlockSize), 0, false)
	if !errors.Is(err, ErrFenced) {
		t.Fatalf("write: %v, want ErrFenced", err)
	}
	c.owner.Close()
	c.replicas[0].kill()
}

func TestTLS(t *testing.T) {
	checkNoLeak(t)
	srvCfg, cliCfg := testTLS(t)
	rs := NewMemStore(testSize)
	r := startReplica(t, "r1", rs, t.TempDir(), srvCfg)
	local := NewMemStore(testSize)
	v, err := OpenVolume(context.Background(), VolumeConfig{Name: "vol", Node: "owner", Epoch: 1, Local: local,
		Replicas: []Peer{r.peer()}, ISR: newFakeISR(1, "owner", "r1"), TLS: cliCfg})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(context.Background(), bytes.Repeat([]byte{7}, 3*BlockSize), BlockSize, true); err != nil {
		t.Fatal(err)
	}
	if !rs.Equal(local) {
		t.Fatal("replica differs")
	}
	// A client that does not trust the server's certificate gets no link:
	// the replica is removed from the ISR.
	isr := newFakeISR(1, "owner", "r1")
	v2, err := OpenVolume(context.Background(), VolumeConfig{Name: "vol", Node: "owner", Epoch: 1, Local: local,
		Replicas: []Peer{r.peer()}, ISR: isr, TLS: &tls.Config{MinVersion: tls.VersionTLS13}})
	if err != nil {
		t.Fatalf("an unreachable replica is removed, not an open error: %v", err)
	}
	if got := v2.Members(); len(got) != 0 || !slices.Equal(isr.Members(), []string{"owner"}) {
		t.Fatalf("untrusted server: members %v, ISR %v", got, isr.Members())
	}
	v2.Close()
	v.Close()
	r.kill()
}

// testTLS returns a server config with a self-signed certificate for
// 127.0.0.1 and a client config that trusts it.
func testTLS(t *testing.T) (*tls.Config, *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "stave-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS13},
		&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}
}

func TestEpochStore(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenEpochStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if e, err := s.Get("a/b"); err != nil || e != 0 {
		t.Fatalf("Get = %d, %v", e, err)
	}
	for _, tc := range []struct{ raise, want uint64 }{{3, 3}, {2, 3}, {9, 9}} {
		if got, err := s.Raise("a/b", tc.raise); err != nil || got != tc.want {
			t.Fatalf("Raise(%d) = %d, %v", tc.raise, got, err)
		}
	}
	s2, _ := OpenEpochStore(dir)
	if e, err := s2.Get("a/b"); err != nil || e != 9 {
		t.Fatalf("after reopen: %d, %v", e, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "a%2Fb.epoch.tmp")); !os.IsNotExist(err) {
		t.Fatalf("temporary file left: %v", err)
	}
	p := filepath.Join(dir, "a%2Fb.epoch")
	b, _ := os.ReadFile(p)
	b[6] ^= 1
	os.WriteFile(p, b, 0o600)
	s3, _ := OpenEpochStore(dir)
	if _, err := s3.Get("a/b"); !errors.Is(err, ErrCorruptEpoch) {
		t.Fatalf("corrupt file: %v", err)
	}
}

func TestCounterExhaustionFences(t *testing.T) {
	checkNoLeak(t)
	c := newCluster(t, 1, 1)
	c.owner.mu.Lock()
	c.owner.mu.counter = 1<<counterBits - 2
	c.owner.mu.Unlock()
	p := make([]byte, BlockSize)
	if err := c.owner.WriteAt(context.Background(), p, 0, false); err != nil {
		t.Fatal(err) // the last version of the epoch
	}
	if err := c.owner.WriteAt(context.Background(), p, 0, false); !errors.Is(err, ErrFenced) {
		t.Fatalf("write past the counter: %v", err)
	}
	c.owner.Close()
	c.replicas[0].kill()
}
