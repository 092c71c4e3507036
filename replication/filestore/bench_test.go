package filestore

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"

	"stave.dev/stave/replication"
)

// rawFile is the baseline: pwrite then fdatasync per call, no versions.
type rawFile struct{ f *osFile }

func (r rawFile) write(p []byte, off int64) error {
	if _, err := r.f.WriteAt(p, off); err != nil {
		return err
	}
	return r.f.Sync(false)
}

// BenchmarkWrite measures durable writes on the OS file system (run it on
// the disk the daemon uses: go test -bench Write -benchtime 2s): 4 KiB
// random writes at queue depth 1 and 32, over a 1 GiB volume (mostly
// idle chunks: two sync rounds) and over 32 MiB (armed chunks: one round),
// and 1 MiB sequential writes over 256 MiB (rewrites after the first
// pass, for both), for the Store and for a raw file with
// pwrite+fdatasync per call. Blocks are striped per goroutine so that
// concurrent calls never overlap, as the Store contract requires.
func BenchmarkWrite(b *testing.B) {
	for _, w := range []struct {
		name  string
		bs    int
		qd    int
		seq   bool
		space int64
	}{
		{"4k-rand-qd1-1g", 4096, 1, false, 1 << 30},
		{"4k-rand-qd1-32m", 4096, 1, false, 32 << 20},
		{"4k-rand-qd32-1g", 4096, 32, false, 1 << 30},
		{"4k-rand-qd32-32m", 4096, 32, false, 32 << 20},
		{"1m-seq-qd1-256m", 1 << 20, 1, true, 256 << 20},
	} {
		for _, impl := range []string{"store", "raw"} {
			b.Run(w.name+"/"+impl, func(b *testing.B) {
				dir := b.TempDir()
				var write func(p []byte, off int64, v uint64) error
				var st *Store
				if impl == "store" {
					s, err := Open(filepath.Join(dir, "vol"), 1<<30, Options{})
					if err != nil {
						b.Fatal(err)
					}
					defer s.Close()
					st = s
					write = func(p []byte, off int64, v uint64) error { return s.WriteAt(context.Background(), p, off, v) }
				} else {
					f, err := osFS{}.Open(filepath.Join(dir, "raw"), true)
					if err != nil {
						b.Fatal(err)
					}
					defer f.Close()
					if err := f.Truncate(1 << 30); err != nil {
						b.Fatal(err)
					}
					raw := rawFile{f.(*osFile)}
					write = func(p []byte, off int64, _ uint64) error { return raw.write(p, off) }
				}
				b.SetBytes(int64(w.bs))
				var ver atomic.Uint64
				var gids atomic.Int64
				body := func(next func() bool) {
					gid := gids.Add(1) - 1
					r := rand.New(rand.NewPCG(uint64(gid), 1))
					p := make([]byte, w.bs)
					for i := range p {
						p[i] = byte(r.Uint32())
					}
					slots := w.space / int64(w.bs)
					var seq int64
					for next() {
						var off int64
						if w.seq {
							off = seq % slots * int64(w.bs)
							seq++
						} else {
							stripes := int64(w.qd)
							off = (r.Int64N(slots/stripes)*stripes + gid%stripes) * int64(w.bs)
						}
						if err := write(p, off, replication.VersionOf(1, ver.Add(1))); err != nil {
							b.Error(err)
							return
						}
					}
				}
				b.ResetTimer()
				if w.qd == 1 {
					n := 0
					body(func() bool { n++; return n <= b.N })
				} else {
					b.SetParallelism((w.qd + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
					b.RunParallel(func(pb *testing.PB) { body(pb.Next) })
				}
				b.StopTimer()
				if st != nil {
					b.ReportMetric(float64(st.commitSync.rounds())/float64(b.N), "commits/op")
					b.ReportMetric(float64(st.intentSync.rounds())/float64(b.N), "arms/op")
				}
			})
		}
	}
}
