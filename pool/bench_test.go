package pool

import (
	"context"
	"math/rand"
	"sync/atomic"
	"testing"
	"time"
)

// Benchmarks: go test ./pool -run XXX -bench . -benchtime 2s
// 4 KiB random I/O runs with 32 concurrent writers/readers (group commit),
// and with one writer (qd1: the latency of one synced batch);
// 1 MiB sequential I/O with one, and writes with 8 (qd8). Throughput is reported as MB/s (SetBytes)
// and iops.
const benchDevSize = 2 << 30

func benchPool(b *testing.B, n int, volSize int64) *Volume {
	tp := newTestPoolSeg(b, n, benchDevSize, 64<<20)
	v, err := tp.p.CreateVolume(context.Background(), "bench", volSize, Policy{})
	if err != nil {
		b.Fatal(err)
	}
	return v
}

// reportCPU reports the process's CPU seconds per GiB moved since start
// (all goroutines: the writers, the committer, the index).
func reportCPU(b *testing.B, start time.Duration, bytesPerOp int64) {
	if gib := float64(b.N) * float64(bytesPerOp) / (1 << 30); gib > 0 {
		b.ReportMetric((cpuTime()-start).Seconds()/gib, "cpu-s/GiB")
	}
}

func BenchmarkPool(b *testing.B) {
	ctx := context.Background()
	const volSize = 256 << 20
	for _, pc := range policies {
		b.Run(pc.pol.String()+"/4KiB-randwrite", func(b *testing.B) {
			v := benchPool(b, pc.n, volSize)
			buf := pattern(1, 4096)
			var seed atomic.Int64
			b.SetBytes(4096)
			b.SetParallelism(16) // 32 writers on 2 cores
			b.ResetTimer()
			cpu0 := cpuTime()
			b.RunParallel(func(pb *testing.PB) {
				rng := rand.New(rand.NewSource(seed.Add(1)))
				for pb.Next() {
					if err := v.WriteAt(ctx, buf, rng.Int63n(volSize/4096)*4096, false); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "iops")
			reportCPU(b, cpu0, 4096)
		})
		b.Run(pc.pol.String()+"/4KiB-randwrite-qd1", func(b *testing.B) {
			v := benchPool(b, pc.n, volSize)
			buf := pattern(1, 4096)
			rng := rand.New(rand.NewSource(1))
			b.SetBytes(4096)
			b.ResetTimer()
			cpu0 := cpuTime()
			for i := 0; i < b.N; i++ {
				if err := v.WriteAt(ctx, buf, rng.Int63n(volSize/4096)*4096, false); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "iops")
			reportCPU(b, cpu0, 4096)
		})
		b.Run(pc.pol.String()+"/4KiB-randread", func(b *testing.B) {
			const span = 64 << 20
			v := benchPool(b, pc.n, volSize)
			big := pattern(2, 1<<20)
			for off := int64(0); off < span; off += 1 << 20 {
				if err := v.WriteAt(ctx, big, off, false); err != nil {
					b.Fatal(err)
				}
			}
			var seed atomic.Int64
			b.SetBytes(4096)
			b.SetParallelism(16)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				rng := rand.New(rand.NewSource(seed.Add(1)))
				buf := make([]byte, 4096)
				for pb.Next() {
					if err := v.ReadAt(ctx, buf, rng.Int63n(span/4096)*4096); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "iops")
		})
		b.Run(pc.pol.String()+"/1MiB-seqwrite", func(b *testing.B) {
			v := benchPool(b, pc.n, volSize)
			buf := pattern(3, 1<<20)
			b.SetBytes(1 << 20)
			b.ResetTimer()
			cpu0 := cpuTime()
			for i := 0; i < b.N; i++ {
				if err := v.WriteAt(ctx, buf, int64(i%(volSize>>20))<<20, false); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu0, 1<<20)
		})
		b.Run(pc.pol.String()+"/1MiB-seqwrite-qd8", func(b *testing.B) {
			// 8 writers, each on its own stretch of the volume in turn
			// (the iSCSI benchmark's QD8).
			v := benchPool(b, pc.n, volSize)
			buf := pattern(3, 1<<20)
			var next atomic.Int64
			b.SetBytes(1 << 20)
			b.SetParallelism(4) // 8 writers on 2 cores
			b.ResetTimer()
			cpu0 := cpuTime()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := next.Add(1)
					if err := v.WriteAt(ctx, buf, (i%(volSize>>20))<<20, false); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportCPU(b, cpu0, 1<<20)
		})
		b.Run(pc.pol.String()+"/1MiB-seqread", func(b *testing.B) {
			const span = 64 << 20
			v := benchPool(b, pc.n, volSize)
			buf := pattern(4, 1<<20)
			for off := int64(0); off < span; off += 1 << 20 {
				if err := v.WriteAt(ctx, buf, off, false); err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(1 << 20)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := v.ReadAt(ctx, buf, int64(i%(span>>20))<<20); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
