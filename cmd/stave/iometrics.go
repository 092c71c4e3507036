package main

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"stave.dev/stave/target/iscsi"
	"stave.dev/stave/target/scsi"
	"stave.dev/stave/target/scsi/sense"
)

// ioMetrics counts the SCSI commands each volume's target executes: reads
// and writes (commands, bytes, latency), errors and the commands in
// flight. It is a prometheus.Collector and safe for concurrent use.
//
// Wiring (serve.go): create it, register it on the daemon's registry, and
// hand the iSCSI server source(exp) instead of the exporter:
//
//	iom := newIOMetrics()
//	reg.MustRegister(iom)
//	… iscsi.Config{Targets: iom.source(exp), …}
//
// A command counts once it completes, whatever its status; bytes count
// only for GOOD status: the Data-In sent (at most the initiator's expected
// length) for reads, the Data-Out received for writes. Errors are completed
// commands with another status (CHECK CONDITION, RESERVATION CONFLICT,
// BUSY, …); aborted tasks count neither as ops nor as errors.
type ioMetrics struct {
	ops      *prometheus.CounterVec   // volume, op
	bytes    *prometheus.CounterVec   // volume, op
	errors   *prometheus.CounterVec   // volume, op
	latency  *prometheus.HistogramVec // volume, op
	inflight *prometheus.GaugeVec     // volume
}

// ioOp classifies a CDB for the metrics.
type ioOp uint8

const (
	opOther ioOp = iota
	opRead
	opWrite
)

// String returns the op label.
func (o ioOp) String() string {
	switch o {
	case opRead:
		return "read"
	case opWrite:
		return "write"
	}
	return "other"
}

func newIOMetrics() *ioMetrics {
	labels := []string{"volume", "op"}
	return &ioMetrics{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stave", Subsystem: "volume", Name: "ops_total",
			Help: "SCSI commands completed, by volume and op (read, write, other)."}, labels),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stave", Subsystem: "volume", Name: "bytes_total",
			Help: "Bytes read or written by commands that completed with GOOD status."}, labels),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stave", Subsystem: "volume", Name: "errors_total",
			Help: "SCSI commands completed with a status other than GOOD."}, labels),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "stave", Subsystem: "volume",
			Name: "latency_seconds", Help: "Time from the start to the end of a command's execution (target side).",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16)}, labels),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "stave", Subsystem: "volume", Name: "queue_depth",
			Help: "SCSI commands executing now (all sessions)."}, []string{"volume"}),
	}
}

// Describe implements prometheus.Collector.
func (m *ioMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.ops.Describe(ch)
	m.bytes.Describe(ch)
	m.errors.Describe(ch)
	m.latency.Describe(ch)
	m.inflight.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *ioMetrics) Collect(ch chan<- prometheus.Metric) {
	m.ops.Collect(ch)
	m.bytes.Collect(ch)
	m.errors.Collect(ch)
	m.latency.Collect(ch)
	m.inflight.Collect(ch)
}

// opSeries are one volume's series of one op, resolved once so that the
// I/O path does no label lookups.
type opSeries struct {
	ops, bytes, errors prometheus.Counter
	latency            prometheus.Observer
}

// meteredDevice is a scsi.Device that counts what it executes.
type meteredDevice struct {
	scsi.Device
	inflight prometheus.Gauge
	series   [3]opSeries // by ioOp
}

var (
	_ scsi.Device           = (*meteredDevice)(nil)
	_ iscsi.DataOutLengther = (*meteredDevice)(nil)
)

// wrap returns dev counting into volume's series.
func (m *ioMetrics) wrap(volume string, dev scsi.Device) *meteredDevice {
	d := &meteredDevice{Device: dev, inflight: m.inflight.WithLabelValues(volume)}
	for op := range d.series {
		l := ioOp(op).String()
		d.series[op] = opSeries{
			ops: m.ops.WithLabelValues(volume, l), bytes: m.bytes.WithLabelValues(volume, l),
			errors: m.errors.WithLabelValues(volume, l), latency: m.latency.WithLabelValues(volume, l),
		}
	}
	return d
}

// forget drops the series of a volume that is no longer exported.
func (m *ioMetrics) forget(volume string) {
	m.inflight.DeleteLabelValues(volume)
	for op := range 3 {
		l := ioOp(op).String()
		m.ops.DeleteLabelValues(volume, l)
		m.bytes.DeleteLabelValues(volume, l)
		m.errors.DeleteLabelValues(volume, l)
		m.latency.DeleteLabelValues(volume, l)
	}
}

// Execute implements scsi.Device.
func (d *meteredDevice) Execute(ctx context.Context, t *scsi.Task) scsi.Result {
	op := opOf(t.CDB)
	d.inflight.Inc()
	start := time.Now()
	res := d.Device.Execute(ctx, t)
	elapsed := time.Since(start)
	d.inflight.Dec()
	if res.Aborted {
		return res
	}
	s := &d.series[op]
	s.ops.Inc()
	s.latency.Observe(elapsed.Seconds())
	switch {
	case res.Status != sense.StatusGood:
		s.errors.Inc()
	case op == opRead:
		n := len(res.Data)
		if t.ExpectedDataIn < n {
			n = t.ExpectedDataIn // the transport sends no more
		}
		s.bytes.Add(float64(n))
	case op == opWrite:
		s.bytes.Add(float64(len(t.DataOut)))
	}
	return res
}

// DataOutLength implements iscsi.DataOutLengther for the wrapped device.
func (d *meteredDevice) DataOutLength(lun uint64, cdb []byte) (int, bool) {
	if l, ok := d.Device.(iscsi.DataOutLengther); ok {
		return l.DataOutLength(lun, cdb)
	}
	return 0, false
}

// opOf classifies a CDB (SBC-3 §5): READ (6), (10), (12), (16) are reads;
// WRITE and WRITE AND VERIFY (6), (10), (12), (16) are writes.
func opOf(cdb []byte) ioOp {
	if len(cdb) == 0 {
		return opOther
	}
	switch cdb[0] {
	case 0x08, 0x28, 0xa8, 0x88:
		return opRead
	case 0x0a, 0x2a, 0xaa, 0x8a, 0x2e, 0xae, 0x8e:
		return opWrite
	}
	return opOther
}

// meteredSource is an iscsi.TargetSource that hands out the targets of
// another with their devices metered. A target is wrapped once; a new
// *iscsi.Target of a volume (its ACL or CHAP changed) is wrapped anew.
// Safe for concurrent use.
type meteredSource struct {
	m     *ioMetrics
	inner iscsi.TargetSource

	mu struct {
		sync.Mutex
		byOrig map[*iscsi.Target]*iscsi.Target // inner target → metered copy
	}
}

var _ iscsi.TargetSource = (*meteredSource)(nil)

// source returns inner's targets, metered.
func (m *ioMetrics) source(inner iscsi.TargetSource) *meteredSource {
	s := &meteredSource{m: m, inner: inner}
	s.mu.byOrig = make(map[*iscsi.Target]*iscsi.Target)
	return s
}

// volumeOf returns the volume name of a target: its alias, else the part
// after the IQN's colon.
func volumeOf(t *iscsi.Target) string {
	if t.Alias != "" {
		return t.Alias
	}
	if i := strings.LastIndexByte(t.Name, ':'); i >= 0 {
		return t.Name[i+1:]
	}
	return t.Name
}

// metered returns the metered copy of t.
func (s *meteredSource) metered(t *iscsi.Target) *iscsi.Target {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w, ok := s.mu.byOrig[t]; ok {
		return w
	}
	vol := volumeOf(t)
	// A volume has one current target: drop the copy of an older one.
	for o := range s.mu.byOrig {
		if o.Name == t.Name {
			delete(s.mu.byOrig, o)
		}
	}
	w := *t
	w.ACL = slices.Clone(t.ACL)
	w.Device = s.m.wrap(vol, t.Device)
	s.mu.byOrig[t] = &w
	return &w
}

// Target implements iscsi.TargetSource.
func (s *meteredSource) Target(name string) (*iscsi.Target, bool) {
	t, ok := s.inner.Target(name)
	if !ok {
		return nil, false
	}
	return s.metered(t), true
}

// Targets implements iscsi.TargetSource. It also forgets the series of
// volumes that are gone.
func (s *meteredSource) Targets() []*iscsi.Target {
	ts := s.inner.Targets()
	out := make([]*iscsi.Target, 0, len(ts))
	live := make(map[string]bool, len(ts))
	for _, t := range ts {
		out = append(out, s.metered(t))
		live[t.Name] = true
	}
	s.mu.Lock()
	var gone []string
	for o := range s.mu.byOrig {
		if !live[o.Name] {
			delete(s.mu.byOrig, o)
			gone = append(gone, volumeOf(o))
		}
	}
	s.mu.Unlock()
	for _, v := range gone {
		s.m.forget(v)
	}
	return out
}
