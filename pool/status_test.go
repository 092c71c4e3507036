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
