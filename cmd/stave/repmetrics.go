package main

import (
	"github.com/prometheus/client_golang/prometheus"
)

// replicationMetrics reports, at each scrape, the state of the replicated
// volumes this node holds (a prometheus.Collector over the exporter):
//
//	stave_replication_serving{volume}           1 while this node serves the volume (owner), else 0
//	stave_replication_epoch{volume}             ownership epoch this node last saw
//	stave_replication_isr_size{volume}          members of the in-sync replica set (owner included)
//	stave_replication_replicas{volume}          nodes that hold a copy
//	stave_replication_resync_regions_remaining{volume,node}  regions a resync still has to compare
//	stave_replication_owner_changes_total{volume} epochs this node started serving (failovers to it)
//
// Replication lag is nil by construction (a write is acknowledged only
// when every ISR member has it); what lags is a replica outside the ISR,
// which the ISR size and the resync gauge show.
type replicationMetrics struct {
	exp *exporter

	serving, epoch, isr, replicas, resync, changes *prometheus.Desc
}

func newReplicationMetrics(exp *exporter) *replicationMetrics {
	v := []string{"volume"}
	return &replicationMetrics{
		exp:      exp,
		serving:  prometheus.NewDesc("stave_replication_serving", "1 while this node serves (owns) the replicated volume.", v, nil),
		epoch:    prometheus.NewDesc("stave_replication_epoch", "Ownership epoch of the replicated volume as this node last saw it.", v, nil),
		isr:      prometheus.NewDesc("stave_replication_isr_size", "Nodes in the volume's in-sync replica set, the owner included.", v, nil),
		replicas: prometheus.NewDesc("stave_replication_replicas", "Nodes that hold a copy of the volume.", v, nil),
		resync: prometheus.NewDesc("stave_replication_resync_regions_remaining",
			"Regions a running resync of a replica has still to compare (reported by the owner).", []string{"volume", "node"}, nil),
		changes: prometheus.NewDesc("stave_replication_owner_changes_total",
			"Epochs in which this node started serving the volume (it became owner: at creation or by failover).", v, nil),
	}
}

// Describe implements prometheus.Collector.
func (m *replicationMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.serving, m.epoch, m.isr, m.replicas, m.resync, m.changes} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *replicationMetrics) Collect(ch chan<- prometheus.Metric) {
	m.exp.mu.RLock()
	var reps []*replica
	for _, x := range m.exp.mu.byIQ {
		if x.rep != nil {
			reps = append(reps, x.rep)
		}
	}
	m.exp.mu.RUnlock()
	for _, r := range reps {
		sp := r.specNow()
		name := sp.Name
		st := r.drv.Status()
		r.mu.Lock()
		serving, starts := r.mu.serving, r.mu.starts
		type rs struct {
			node string
			left float64
		}
		var resyncs []rs
		for _, p := range r.mu.resync {
			resyncs = append(resyncs, rs{p.Node, float64(max(p.Regions-p.RegionsDone, 0))})
		}
		r.mu.Unlock()
		b := 0.0
		if serving {
			b = 1
		}
		ch <- prometheus.MustNewConstMetric(m.serving, prometheus.GaugeValue, b, name)
		ch <- prometheus.MustNewConstMetric(m.epoch, prometheus.GaugeValue, float64(st.Epoch), name)
		ch <- prometheus.MustNewConstMetric(m.isr, prometheus.GaugeValue, float64(len(st.ISR)), name)
		ch <- prometheus.MustNewConstMetric(m.replicas, prometheus.GaugeValue, float64(len(sp.Replicas)), name)
		ch <- prometheus.MustNewConstMetric(m.changes, prometheus.CounterValue, float64(starts), name)
		for _, x := range resyncs {
			if x.node != "" {
				ch <- prometheus.MustNewConstMetric(m.resync, prometheus.GaugeValue, x.left, name, x.node)
			}
		}
	}
}
