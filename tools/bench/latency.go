package main

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"stave.dev/stave/internal/initiator"
)

// Latencies summarises the per-I/O latencies of one run, in microseconds.
type Latencies struct {
	P50, P99, Mean, Max float64
}

// summarise returns the percentiles of d (nearest-rank; d is sorted in
// place).
func summarise(d []time.Duration) Latencies {
	if len(d) == 0 {
		return Latencies{P50: math.NaN(), P99: math.NaN(), Mean: math.NaN(), Max: math.NaN()}
	}
	slices.Sort(d)
	var sum time.Duration
	for _, v := range d {
		sum += v
	}
	us := func(v time.Duration) float64 { return float64(v) / float64(time.Microsecond) }
	return Latencies{
		P50:  us(d[rank(len(d), 0.50)]),
		P99:  us(d[rank(len(d), 0.99)]),
		Mean: us(sum) / float64(len(d)),
		Max:  us(d[len(d)-1]),
	}
}

// rank is the 0-based index of the p-quantile of n sorted values by the
// nearest-rank method: the smallest value with at least p·n values at or
// below it.
func rank(n int, p float64) int {
	r := int(math.Ceil(p*float64(n))) - 1
	return min(max(r, 0), n-1)
}

// Latency runs 4 KiB-aligned random reads or writes of cell.BlockSize, one
// at a time, against url for d with this package's own initiator, and
// times each from the send of its command to its status. Writes carry
// fillPattern. The result's Lat holds the percentiles; Ops and Elapsed the
// rate.
func (c Client) Latency(ctx context.Context, rawURL string, cell Cell, d time.Duration) (Result, error) {
	u, err := initiator.ParseURL(rawURL)
	if err != nil {
		return Result{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, d+c.Grace)
	defer cancel()
	s, capa, err := dialSession(ctx, u, c.InitiatorName)
	if err != nil {
		return Result{}, fmt.Errorf("latency client: %w", err)
	}
	defer s.Close()
	// The connection is closed when ctx ends, so that a stalled target
	// cannot hold the run past its limit. The commands themselves run
	// under context.Background: no per-I/O timer on the measured path.
	stop := context.AfterFunc(ctx, s.Abort)
	defer stop()
	bs := cell.BlockSize
	slots := capa.Bytes() / 4096
	if bs%capa.BlockSize != 0 || int64(bs) > slots*4096 {
		return Result{}, fmt.Errorf("latency client: %d-byte I/O on a %d-block LU of %d-byte blocks", bs, capa.Blocks, capa.BlockSize)
	}
	slots -= int64(bs-1) / 4096
	buf := make([]byte, bs)
	if cell.Write {
		for i := range buf {
			buf[i] = fillPattern
		}
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	lat := make([]time.Duration, 0, 1<<16)
	start := time.Now()
	end := start.Add(d)
	for {
		t0 := time.Now()
		if !t0.Before(end) {
			break
		}
		off := rng.Int64N(slots) * 4096
		var err error
		if lba := uint64(off / int64(capa.BlockSize)); cell.Write {
			err = s.Write(context.Background(), lba, buf)
		} else {
			err = s.Read(context.Background(), lba, buf)
		}
		if err != nil {
			if ctx.Err() != nil {
				return Result{}, fmt.Errorf("latency client: %w after %v", errStall, d+c.Grace)
			}
			return Result{}, fmt.Errorf("latency client: %s at %d: %w", cell.Name, off, err)
		}
		lat = append(lat, time.Since(t0))
	}
	el := time.Since(start)
	res := Result{Ops: float64(len(lat)), Elapsed: el, Lat: summarise(lat)}
	res.Output = fmt.Sprintf("%d I/Os in %v: p50 %.1f µs, p99 %.1f µs, mean %.1f µs, max %.1f µs\n",
		len(lat), el.Round(time.Millisecond), res.Lat.P50, res.Lat.P99, res.Lat.Mean, res.Lat.Max)
	return res, nil
}
