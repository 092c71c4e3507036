package replication

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// slowStore delays every WriteAt by a random 0-2 ms, so that pipelined
// requests finish out of order unless the server orders them, and logs
// the order in which calls start and end.
type slowStore struct {
	*MemStore
	mu     sync.Mutex
	rng    *rand.Rand
	events []string
}

func (s *slowStore) note(e string) {
	s.mu.Lock()
	s.events = append(s.events, e)
	s.mu.Unlock()
}

func (s *slowStore) WriteAt(ctx context.Context, p []byte, off int64, version uint64) error {
	s.mu.Lock()
	d := time.Duration(s.rng.IntN(2000)) * time.Microsecond
	s.events = append(s.events, fmt.Sprintf("w%d+", version&(1<<counterBits-1)))
	s.mu.Unlock()
	time.Sleep(d)
	err := s.MemStore.WriteAt(ctx, p, off, version)
	s.note(fmt.Sprintf("w%d-", version&(1<<counterBits-1)))
	return err
}

func (s *slowStore) Flush(ctx context.Context) error {
	s.note("f+")
	err := s.MemStore.Flush(ctx)
	s.note("f-")
	return err
}

// serveStore runs a replica Server named node that serves st as volume
// "vol" on a loopback port, and returns its address and an idempotent
// stop (also run at cleanup).
func serveStore(t *testing.T, node string, st Store) (addr string, stop func()) {
	t.Helper()
	ep, err := OpenEpochStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(ServerConfig{Node: node, Epochs: ep, Lookup: func(v string) (Store, bool) { return st, v == "vol" }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

// send writes m as frame id without waiting for the answer.
func (r *rawConn) send(id uint64, m Message) {
	r.t.Helper()
	if _, err := r.c.Write(AppendFrame(nil, id, m)); err != nil {
		r.t.Fatal(err)
	}
}

// answers reads n answers and checks that they come in frame order from
// first.
func (r *rawConn) answers(first uint64, n int) []Message {
	r.t.Helper()
	out := make([]Message, n)
	for i := range n {
		f, _, err := ReadFrame(r.br, nil, MaxPayload)
		if err != nil {
			r.t.Fatal(err)
		}
		if f.ID != first+uint64(i) {
			r.t.Fatalf("answer %d is to frame %d, want %d (answers out of order)", i, f.ID, first+uint64(i))
		}
		if out[i], err = Decode(f); err != nil {
			r.t.Fatal(err)
		}
	}
	return out
}

// TestServerPipelineOrder sends 300 writes to 8 blocks without waiting
// (random delays in the store), then a Flush: the answers come in order,
// every block ends with the data and version of the last write to it, and
// the Flush starts only after every write before it ended.
func TestServerPipelineOrder(t *testing.T) {
	checkNoLeak(t)
	for seed := range uint64(3) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			st := &slowStore{MemStore: NewMemStore(testSize), rng: rand.New(rand.NewPCG(seed, 1))}
			addr, _ := serveStore(t, "r1", st)
			rc := dialRaw(t, addr)
			if a := rc.ack(Hello{Epoch: 1, Size: testSize, Volume: "vol"}); a.Status != StatusOK {
				t.Fatalf("hello: %+v", a)
			}
			rng := rand.New(rand.NewPCG(seed, 2))
			const n = 300
			last := map[uint64]uint64{} // block -> seq
			for seq := uint64(1); seq <= n; seq++ {
				blk := uint64(rng.IntN(8))
				// Some writes span two blocks, so that ranges overlap
				// partly.
				nb := 1 + rng.IntN(2)
				if blk+uint64(nb) > 8 {
					nb = 1
				}
				data := bytes.Repeat([]byte{byte(seq)}, nb*BlockSize)
				rc.send(seq+1, Write{Version: VersionOf(1, seq), LBA: blk * BlockSize / SectorSize, Data: data})
				for b := blk; b < blk+uint64(nb); b++ {
					last[b] = seq
				}
			}
			rc.send(n+2, Flush{Epoch: 1})
			for i, m := range rc.answers(2, n+1) {
				if a, ok := m.(Ack); !ok || a.Status != StatusOK {
					t.Fatalf("answer %d: %+v", i, m)
				}
			}
			vers := make([]uint64, 8)
			if err := st.Versions(context.Background(), 0, vers); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, BlockSize)
			for b := range uint64(8) {
				seq, ok := last[b]
				if !ok {
					continue
				}
				if vers[b] != VersionOf(1, seq) {
					t.Errorf("block %d: version %#x, want write %d's", b, vers[b], seq)
				}
				if err := st.ReadAt(context.Background(), got, int64(b)*BlockSize); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, bytes.Repeat([]byte{byte(seq)}, BlockSize)) {
					t.Errorf("block %d: data of write %d, want %d", b, got[0], byte(seq))
				}
			}
			st.mu.Lock()
			defer st.mu.Unlock()
			ended := 0
			for _, e := range st.events {
				switch {
				case e == "f+":
					if ended != n {
						t.Fatalf("Flush started after %d of the %d writes before it ended", ended, n)
					}
				case e[len(e)-1] == '-' && e[0] == 'w':
					ended++
				}
			}
		})
	}
}

// TestServerPipelineStaleEpoch: writes pipelined on an owner's connection
// after a newer owner said Hello are nacked as stale and not applied.
func TestServerPipelineStaleEpoch(t *testing.T) {
	checkNoLeak(t)
	st := &slowStore{MemStore: NewMemStore(testSize), rng: rand.New(rand.NewPCG(9, 9))}
	addr, _ := serveStore(t, "r1", st)
	old := dialRaw(t, addr)
	if a := old.ack(Hello{Epoch: 1, Size: testSize, Volume: "vol"}); a.Status != StatusOK {
		t.Fatalf("hello 1: %+v", a)
	}
	if a := dialRaw(t, addr).ack(Hello{Epoch: 2, Size: testSize, Volume: "vol"}); a.Status != StatusOK {
		t.Fatalf("hello 2: %+v", a)
	}
	for i := range uint64(16) {
		old.send(i+2, Write{Version: VersionOf(1, i+1), LBA: i * BlockSize / SectorSize, Data: bytes.Repeat([]byte{7}, BlockSize)})
	}
	for i, m := range old.answers(2, 16) {
		if a, ok := m.(Ack); !ok || a.Status != StatusStaleEpoch || a.Epoch != 2 {
			t.Fatalf("stale write %d: %+v", i, m)
		}
	}
	vers := make([]uint64, 16)
	if err := st.Versions(context.Background(), 0, vers); err != nil {
		t.Fatal(err)
	}
	for b, v := range vers {
		if v != 0 {
			t.Errorf("block %d has version %#x: a stale write was applied", b, v)
		}
	}
}
