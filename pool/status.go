package pool

import (
	"encoding/hex"
	"sort"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"stave.dev/stave/pool/internal/layout"
)

func sortInfos(v []VolumeInfo) { sort.Slice(v, func(i, j int) bool { return v[i].Name < v[j].Name }) }

// Status returns a snapshot of device health and space accounting.
func (p *Pool) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := Status{PoolID: hex.EncodeToString(p.poolID[:]), Volumes: len(p.mu.vols), Reason: p.mu.reason}
	st.Degraded = st.Reason != ""
	used := make([]int64, len(p.mu.devs))
	for _, s := range p.mu.segs {
		for _, mi := range s.members[:s.width()] {
			if int(mi) < len(used) {
				used[mi] += s.tail
			}
		}
		st.Space.Physical += s.tail * int64(s.width())
		st.Space.Parity += s.parity
		if s.sealed {
			st.Space.Garbage += (s.blocks - s.live) * layout.BlockSize
		}
	}
	for _, vm := range p.mu.vols {
		st.Space.Logical += vm.live * layout.BlockSize
	}
	n := int64(len(p.mu.devs))
	st.Space.Capacity = int64(p.rows) * p.segSize * n
	st.Space.Free = int64(p.rows-len(p.mu.segs)) * p.segSize * n
	for i, d := range p.mu.devs {
		ds := DeviceStatus{Path: d.path, Index: d.index, State: DeviceState(d.state.Load()), Used: used[i],
			ReadErrors: d.readErrs.Load(), WriteErrors: d.writeErrs.Load(), ChecksumErrors: d.csumErrs.Load(),
			Repairs: d.repairs.Load()}
		if d.dev != nil {
			ds.Size = d.dev.Size()
		}
		st.Devices = append(st.Devices, ds)
	}
	return st
}

// metrics are the pool's Prometheus metrics.
type metrics struct {
	reg                                   prometheus.Registerer
	cs                                    []prometheus.Collector
	batches, checksumErrors, repairs      prometheus.Counter
	unrecoverable, tornBatches, readBytes prometheus.Counter
	writeBytes, segmentsFreed             prometheus.Counter
	batchBlocks                           prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, p *Pool) *metrics {
	m := &metrics{reg: reg}
	c := func(name, help string) prometheus.Counter {
		x := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "stave", Subsystem: "pool", Name: name, Help: help})
		m.cs = append(m.cs, x)
		return x
	}
	m.batches = c("batches_total", "Batches (stripes) written.")
	m.checksumErrors = c("checksum_errors_total", "Blocks or chunks that failed verification.")
	m.repairs = c("repairs_total", "Chunks rewritten after reconstruction.")
	m.unrecoverable = c("unrecoverable_total", "Stripes that could not be reconstructed.")
	m.tornBatches = c("torn_batches_total", "Torn batches discarded at replay.")
	m.readBytes = c("read_bytes_total", "Bytes read by volumes.")
	m.writeBytes = c("write_bytes_total", "Bytes written by volumes.")
	m.segmentsFreed = c("gc_segments_freed_total", "Segments freed by the cleaner.")
	m.batchBlocks = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "stave", Subsystem: "pool",
		Name: "batch_blocks", Help: "Data blocks per batch (group commit size).",
		Buckets: prometheus.ExponentialBuckets(1, 2, 10)})
	m.cs = append(m.cs, m.batchBlocks)
	space := func(name, help string, f func(SpaceStatus) int64) {
		m.cs = append(m.cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "stave", Subsystem: "pool",
			Name: name, Help: help}, func() float64 { return float64(f(p.Status().Space)) }))
	}
	space("logical_bytes", "Live volume data.", func(s SpaceStatus) int64 { return s.Logical })
	space("physical_bytes", "Bytes of in-use segments.", func(s SpaceStatus) int64 { return s.Physical })
	space("parity_bytes", "Parity bytes.", func(s SpaceStatus) int64 { return s.Parity })
	space("garbage_bytes", "Dead blocks in sealed segments.", func(s SpaceStatus) int64 { return s.Garbage })
	space("free_bytes", "Bytes of free segments.", func(s SpaceStatus) int64 { return s.Free })
	m.cs = append(m.cs, deviceCollector{p})
	if reg != nil {
		for _, x := range m.cs {
			if err := reg.Register(x); err != nil {
				p.log.Warn("metric not registered", "err", err)
			}
		}
	}
	return m
}

func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, x := range m.cs {
		m.reg.Unregister(x)
	}
}

// Per-device metric descriptions (labels: the device's path and index).
var (
	deviceErrorsDesc = prometheus.NewDesc("stave_pool_device_errors_total",
		"I/O and checksum errors of one pool device since the pool opened it (kind: read, write, checksum).",
		[]string{"device", "index", "kind"}, nil)
	deviceRepairsDesc = prometheus.NewDesc("stave_pool_device_repairs_total",
		"Blocks or chunks of one pool device rewritten after reconstruction since the pool opened it.",
		[]string{"device", "index"}, nil)
	deviceStateDesc = prometheus.NewDesc("stave_pool_device_state",
		"1 for the current state of each pool device (ok, failed, missing).",
		[]string{"device", "index", "state"}, nil)
	deviceStates = []DeviceState{DeviceOK, DeviceFailed, DeviceMissing}
)

// deviceCollector exports the per-device counters of Status at scrape time.
type deviceCollector struct{ p *Pool }

// Describe implements prometheus.Collector.
func (c deviceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- deviceErrorsDesc
	ch <- deviceRepairsDesc
	ch <- deviceStateDesc
}

// Collect implements prometheus.Collector.
func (c deviceCollector) Collect(ch chan<- prometheus.Metric) {
	for _, d := range c.p.Status().Devices {
		idx := strconv.Itoa(d.Index)
		for _, e := range []struct {
			kind string
			n    int64
		}{{"read", d.ReadErrors}, {"write", d.WriteErrors}, {"checksum", d.ChecksumErrors}} {
			ch <- prometheus.MustNewConstMetric(deviceErrorsDesc, prometheus.CounterValue, float64(e.n), d.Path, idx, e.kind)
		}
		ch <- prometheus.MustNewConstMetric(deviceRepairsDesc, prometheus.CounterValue, float64(d.Repairs), d.Path, idx)
		for _, st := range deviceStates {
			v := 0.0
			if d.State == st {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(deviceStateDesc, prometheus.GaugeValue, v, d.Path, idx, st.String())
		}
	}
}
