package replication

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// rawConn speaks the protocol by hand to a replica.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
	id uint64
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

// call sends m and returns the decoded answer, or the read error.
func (r *rawConn) call(m Message) (Message, error) {
	r.t.Helper()
	r.id++
	if _, err := r.c.Write(AppendFrame(nil, r.id, m)); err != nil {
		return nil, err
	}
	f, _, err := ReadFrame(r.br, nil, MaxPayload)
	if err != nil {
		return nil, err
	}
	if f.ID != r.id {
		r.t.Fatalf("answer to %d, want %d", f.ID, r.id)
	}
	return Decode(f)
}

func (r *rawConn) ack(m Message) Ack {
	r.t.Helper()
	a, err := r.call(m)
	if err != nil {
		r.t.Fatal(err)
	}
	return a.(Ack)
}

// TestServerEpochRules drives a replica by hand: unknown volume, wrong
// size, a newer owner's Hello making the old connection's writes stale,
// and a write of another epoch on a connection dropping it.
func TestServerEpochRules(t *testing.T) {
	checkNoLeak(t)
	st := NewMemStore(testSize)
	r := startReplica(t, "r1", st, t.TempDir(), nil)
	blk := bytes.Repeat([]byte{9}, BlockSize)

	if a := dialRaw(t, r.addr).ack(Hello{Epoch: 1, Size: testSize, Volume: "nope"}); a.Status != StatusUnknownVolume {
		t.Fatalf("unknown volume: %+v", a)
	}
	// An owner larger than the replica's store is refused (a smaller one
	// is fine: the replica grew first during an online grow).
	if a := dialRaw(t, r.addr).ack(Hello{Epoch: 1, Size: 2 * testSize, Volume: "vol"}); a.Status != StatusInvalid {
		t.Fatalf("wrong size: %+v", a)
	}
	old := dialRaw(t, r.addr)
	if a := old.ack(Hello{Epoch: 3, Size: testSize, Volume: "vol"}); a.Status != StatusOK || a.Epoch != 3 {
		t.Fatalf("hello 3: %+v", a)
	}
	if a := old.ack(Write{Version: VersionOf(3, 1), LBA: 0, Data: blk}); a.Status != StatusOK {
		t.Fatalf("write 3: %+v", a)
	}
	newer := dialRaw(t, r.addr)
	if a := newer.ack(Hello{Epoch: 5, Size: testSize, Volume: "vol"}); a.Status != StatusOK || a.Epoch != 5 {
		t.Fatalf("hello 5: %+v", a)
	}
	if a := old.ack(Write{Version: VersionOf(3, 2), LBA: 8, Data: blk}); a.Status != StatusStaleEpoch || a.Epoch != 5 {
		t.Fatalf("stale write: %+v", a)
	}
	if a := old.ack(Unmap{Version: VersionOf(3, 3), LBA: 0, Sectors: 8}); a.Status != StatusStaleEpoch {
		t.Fatalf("stale unmap: %+v", a)
	}
	var vers [2]uint64
	st.Versions(t.Context(), 0, vers[:])
	if vers != [2]uint64{VersionOf(3, 1), 0} {
		t.Fatalf("versions %x: a stale request was applied", vers)
	}
	// An old owner cannot even say Hello any more.
	if a := dialRaw(t, r.addr).ack(Hello{Epoch: 4, Size: testSize, Volume: "vol"}); a.Status != StatusStaleEpoch {
		t.Fatalf("hello 4: %+v", a)
	}
	// A write of another epoch than the connection's is a protocol error.
	if _, err := newer.call(Write{Version: VersionOf(6, 1), LBA: 0, Data: blk}); !errors.Is(err, io.EOF) {
		t.Fatalf("write of epoch 6 on an epoch-5 connection: %v, want the connection closed", err)
	}
	// Something other than Hello first is a protocol error too.
	if _, err := dialRaw(t, r.addr).call(Flush{Epoch: 5}); !errors.Is(err, io.EOF) {
		t.Fatalf("flush before hello: %v", err)
	}
	ep, _ := OpenEpochStore(r.dir)
	if e, _ := ep.Get("vol"); e != 5 {
		t.Fatalf("persisted epoch %d", e)
	}
	r.kill()
}

// TestEpochStoreLeftoverTemp: a crash between writing the temporary file
// and the rename leaves the old epoch in force.
func TestEpochStoreLeftoverTemp(t *testing.T) {
	dir := t.TempDir()
	s, _ := OpenEpochStore(dir)
	if _, err := s.Raise("v", 4); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "v.epoch.tmp"), []byte("torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	s2, _ := OpenEpochStore(dir)
	if e, err := s2.Get("v"); err != nil || e != 4 {
		t.Fatalf("Get = %d, %v", e, err)
	}
	if e, err := s2.Raise("v", 6); err != nil || e != 6 {
		t.Fatalf("Raise = %d, %v", e, err)
	}
}

// failingListener fails Accept at once, not because of the context.
type failingListener struct{ net.Listener }

func (failingListener) Accept() (net.Conn, error) { return nil, errors.New("accept failed") }

func TestServeAcceptError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep, _ := OpenEpochStore(t.TempDir())
	srv := NewServer(ServerConfig{Epochs: ep, Lookup: func(string) (Store, bool) { return nil, false }})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(t.Context(), failingListener{ln}) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Serve returned nil on an accept error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve hangs after an accept error")
	}
}
