package pool

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestMetricsAndStatus(t *testing.T) {
	ctx := context.Background()
	tp := newTestPool(t, 3, testDevSize)
	tp.p.Close()
	reg := prometheus.NewRegistry()
	tp.opts.Registerer = reg
	tp.open(t)
	v, err := tp.p.CreateVolume(ctx, "m", 1<<20, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, pattern(5, 65536), 0, true); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch {
			case m.Counter != nil:
				got[mf.GetName()] = m.Counter.GetValue()
			case m.Gauge != nil:
				got[mf.GetName()] = m.Gauge.GetValue()
			}
		}
	}
	if got["stave_pool_logical_bytes"] != 65536 || got["stave_pool_write_bytes_total"] != 65536 || got["stave_pool_batches_total"] < 2 {
		t.Fatalf("metrics %v", got)
	}
	st := tp.p.Status()
	if st.Degraded || len(st.Devices) != 3 || st.Volumes != 1 || st.Space.Free+st.Space.Physical > st.Space.Capacity {
		t.Fatalf("status %+v", st)
	}
	for _, d := range st.Devices {
		if d.State != DeviceOK || d.Used == 0 || !strings.HasPrefix(d.Path, tp.dir) {
			t.Fatalf("device %+v", d)
		}
	}
	// Close unregisters, so the pool can be reopened with the same registry.
	tp.reopen(t)
}

// strictRegisterer fails the test on any registration error.
type strictRegisterer struct {
	*prometheus.Registry
	t *testing.T
}

func (r strictRegisterer) Register(c prometheus.Collector) error {
	if err := r.Registry.Register(c); err != nil {
		r.t.Errorf("Register: %v", err)
		return err
	}
	return nil
}

func TestMetricsRegisterOnce(t *testing.T) {
	tp := newTestPool(t, 1, testDevSize)
	tp.p.Close()
	tp.opts.Registerer = strictRegisterer{prometheus.NewPedanticRegistry(), t}
	tp.open(t)
}

// TestDeviceMetrics checks that the per-device metrics report what
// Status reports, after a corrupted chunk was found and repaired.
func TestDeviceMetrics(t *testing.T) {
	ctx := context.Background()
	tp := newTestPool(t, 3, testDevSize)
	tp.p.Close()
	reg := prometheus.NewPedanticRegistry()
	tp.opts.Registerer = reg
	tp.open(t)
	v, err := tp.p.CreateVolume(ctx, "v", 8<<20, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	a := pattern(21, 64<<10)
	if err := v.WriteAt(ctx, a, 0, false); err != nil {
		t.Fatal(err)
	}
	l, members := blockLoc(t, tp.p, v, 3)
	c, boff := l.chunk()
	smash(t, tp.devs[members[c]], tp.p.rowOff(l.row)+l.batchOff+boff+100, 10)
	if got := readAll(t, v, 0, 64<<10); string(got) != string(a) {
		t.Fatal("wrong data after corruption")
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{} // name{device,kind|state} → value
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, lp := range m.GetLabel() {
				if lp.GetName() != "index" {
					key += "," + lp.GetValue()
				}
			}
			got[key] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	var csTotal float64
	for _, d := range tp.p.Status().Devices {
		for key, want := range map[string]int64{
			"stave_pool_device_errors_total," + d.Path + ",checksum": d.ChecksumErrors,
			"stave_pool_device_errors_total," + d.Path + ",read":     d.ReadErrors,
			"stave_pool_device_repairs_total," + d.Path:              d.Repairs,
			"stave_pool_device_state," + d.Path + ",ok":              1,
			"stave_pool_device_state," + d.Path + ",failed":          0,
		} {
			if v, ok := got[key]; !ok || v != float64(want) {
				t.Errorf("%s = %v (present %v), want %d", key, v, ok, want)
			}
		}
		csTotal += float64(d.ChecksumErrors)
	}
	if csTotal == 0 {
		t.Error("no checksum error counted on any device")
	}
}
