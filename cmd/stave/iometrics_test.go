package main

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"stave.dev/stave/target/iscsi"
	"stave.dev/stave/target/scsi"
	"stave.dev/stave/target/scsi/sense"
)

// gathered returns every sample of reg as "name{l1=v1,...}" → value
// (counter, gauge, or a histogram's sample count).
func gathered(t *testing.T, c prometheus.Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			key := mf.GetName() + "{" + strings.Join(ls, ",") + "}"
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// fakeDevice answers every command with status and, for reads, data.
type fakeDevice struct {
	status sense.Status
	abort  bool
}

func (f *fakeDevice) Execute(_ context.Context, t *scsi.Task) scsi.Result {
	if f.abort {
		return scsi.Result{Aborted: true}
	}
	if opOf(t.CDB) == opRead {
		return scsi.Result{Status: f.status, Data: make([]byte, 3*4096+100)} // more than asked
	}
	return scsi.Result{Status: f.status}
}

func (f *fakeDevice) TaskManagement(context.Context, scsi.Nexus, scsi.TMF, uint64, uint64) scsi.TMFResponse {
	return 0
}

func (f *fakeDevice) NexusLost(scsi.Nexus) {}

func TestOpOf(t *testing.T) {
	for _, c := range []struct {
		cdb []byte
		op  ioOp
	}{
		{[]byte{0x08, 0, 0, 0, 0, 0}, opRead}, {[]byte{0x28}, opRead}, {[]byte{0xa8}, opRead}, {[]byte{0x88}, opRead},
		{[]byte{0x0a}, opWrite}, {[]byte{0x2a}, opWrite}, {[]byte{0xaa}, opWrite}, {[]byte{0x8a}, opWrite},
		{[]byte{0x2e}, opWrite}, {[]byte{0xae}, opWrite}, {[]byte{0x8e}, opWrite},
		{[]byte{0x00}, opOther}, {[]byte{0x35}, opOther}, {[]byte{0x42}, opOther}, {nil, opOther},
	} {
		if got := opOf(c.cdb); got != c.op {
			t.Errorf("opOf(% x) = %v, want %v", c.cdb, got, c.op)
		}
	}
}

func TestMeteredDevice(t *testing.T) {
	m := newIOMetrics()
	dev := &fakeDevice{}
	d := m.wrap("v1", dev)
	ctx := context.Background()
	write := &scsi.Task{CDB: []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 2, 0}, DataOut: make([]byte, 2*4096)}
	read := &scsi.Task{CDB: []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 3, 0}, ExpectedDataIn: 3 * 4096}
	for range 5 {
		d.Execute(ctx, write)
	}
	for range 4 {
		d.Execute(ctx, read)
	}
	d.Execute(ctx, &scsi.Task{CDB: []byte{0x00, 0, 0, 0, 0, 0}})
	dev.status = sense.StatusCheckCondition
	d.Execute(ctx, write)
	dev.abort = true
	d.Execute(ctx, read)

	got := gathered(t, m)
	for key, want := range map[string]float64{
		"stave_volume_ops_total{op=write,volume=v1}":       6,
		"stave_volume_ops_total{op=read,volume=v1}":        4,
		"stave_volume_ops_total{op=other,volume=v1}":       1,
		"stave_volume_bytes_total{op=write,volume=v1}":     5 * 2 * 4096,
		"stave_volume_bytes_total{op=read,volume=v1}":      4 * 3 * 4096,
		"stave_volume_errors_total{op=write,volume=v1}":    1,
		"stave_volume_errors_total{op=read,volume=v1}":     0,
		"stave_volume_latency_seconds{op=write,volume=v1}": 6,
		"stave_volume_latency_seconds{op=read,volume=v1}":  4,
		"stave_volume_queue_depth{volume=v1}":              0,
	} {
		if v, ok := got[key]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", key, v, ok, want)
		}
	}
	m.forget("v1")
	if got := gathered(t, m); len(got) != 0 {
		t.Errorf("series after forget: %v", got)
	}
}

// fakeSource is an iscsi.TargetSource over a map.
type fakeSource map[string]*iscsi.Target

func (f fakeSource) Target(name string) (*iscsi.Target, bool) { t, ok := f[name]; return t, ok }

func (f fakeSource) Targets() []*iscsi.Target {
	var out []*iscsi.Target
	for _, t := range f {
		out = append(out, t)
	}
	return out
}

func TestMeteredSource(t *testing.T) {
	m := newIOMetrics()
	orig := &iscsi.Target{Name: "iqn.2026-11.dev.stave:a", Alias: "a", ACL: []string{"iqn.x"}, Device: &fakeDevice{}}
	src := fakeSource{orig.Name: orig}
	ms := m.source(src)
	t1, ok := ms.Target(orig.Name)
	if !ok || t1 == orig || t1.Name != orig.Name || t1.ACL[0] != "iqn.x" {
		t.Fatalf("Target = %+v %v", t1, ok)
	}
	if _, ok := t1.Device.(*meteredDevice); !ok {
		t.Fatalf("device %T is not metered", t1.Device)
	}
	if t2, _ := ms.Target(orig.Name); t2 != t1 {
		t.Error("a second lookup wraps the target again")
	}
	// A replaced target (new ACL) is wrapped anew.
	repl := &iscsi.Target{Name: orig.Name, Alias: "a", Device: &fakeDevice{}}
	src[orig.Name] = repl
	if t3, _ := ms.Target(orig.Name); t3 == t1 || t3.Device.(*meteredDevice).Device != repl.Device {
		t.Error("replaced target not rewrapped")
	}
	if _, ok := ms.Target("iqn.nope"); ok {
		t.Error("unknown target found")
	}
	t3, _ := ms.Target(orig.Name)
	t3.Device.Execute(context.Background(), &scsi.Task{CDB: []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0}})
	if got := gathered(t, m); got["stave_volume_ops_total{op=read,volume=a}"] != 1 {
		t.Errorf("metrics after one read: %v", got)
	}
	delete(src, orig.Name)
	if ts := ms.Targets(); len(ts) != 0 {
		t.Errorf("Targets = %v", ts)
	}
	if got := gathered(t, m); len(got) != 0 {
		t.Errorf("series after the volume went: %v", got)
	}
}
