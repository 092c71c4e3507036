package replication_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"stave.dev/stave/replication"
	"stave.dev/stave/replication/filestore"
	"stave.dev/stave/replication/replicatest"
)

// benchISR accepts every ISR change (a benchmark never loses a replica).
type benchISR struct{}

func (benchISR) Remove(context.Context, uint64, string) error { return nil }
func (benchISR) Add(context.Context, uint64, string) error    { return nil }

// BenchmarkServerPipelined measures the replica side of the data path: an
// owner Volume (MemStore local, so that only the replica touches the disk)
// writes through a loopback TCP link to a Server applying to a filestore
// on b.TempDir(). Writes are random and aligned within the first 32 MiB,
// whose chunks stay armed (one sync round per write, see filestore).
//
//	go test -run XXX -bench ServerPipelined -benchtime 3s ./replication/
func BenchmarkServerPipelined(b *testing.B) {
	for _, bc := range []struct {
		name    string
		size    int
		workers int
	}{
		{"4KiB-QD32", 4 << 10, 32},
		{"1MiB-QD8", 1 << 20, 8},
	} {
		b.Run(bc.name, func(b *testing.B) { benchServer(b, bc.size, bc.workers) })
	}
}

func benchServer(b *testing.B, size, workers int) {
	const volSize = 64 << 20
	const span = 32 << 20
	st, err := filestore.Open(b.TempDir(), volSize, filestore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	peer, stop := replicatest.Serve(b, "r1", st, "")
	defer stop() // before st.Close
	ctx := context.Background()

	v, err := replication.OpenVolume(ctx, replication.VolumeConfig{Name: "vol", Node: "owner", Epoch: 1,
		Local: replication.NewMemStore(volSize), Replicas: []replication.Peer{peer},
		ISR: benchISR{}, AckTimeout: 30 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	// Arm the chunks of the span once, outside the measurement.
	warm := make([]byte, 1<<20)
	for off := int64(0); off < span; off += int64(len(warm)) {
		if err := v.WriteAt(ctx, warm, off, false); err != nil {
			b.Fatal(err)
		}
	}

	b.SetBytes(int64(size))
	b.ResetTimer()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(1, uint64(w)))
			p := make([]byte, size)
			for i := range p {
				p[i] = byte(r.Uint32())
			}
			for next.Add(1) <= int64(b.N) {
				off := int64(r.IntN(span/size)) * int64(size)
				if err := v.WriteAt(ctx, p, off, false); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/el.Seconds(), "IOPS")
}
