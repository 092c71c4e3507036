package main

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"stave.dev/stave/cluster"
	"stave.dev/stave/internal/config"
	"stave.dev/stave/internal/logkey"
)

// etcdProbeTimeout bounds the read behind stave_etcd_up.
const etcdProbeTimeout = time.Second

// openCluster loads (or makes) the node ID in the data dir and opens the
// etcd named by the configuration: an embedded member in DATA/etcd, or
// the external endpoints.
func openCluster(ctx context.Context, log *slog.Logger, cfg *config.Config) (string, *cluster.Cluster, error) {
	nodeID, err := cluster.LoadNodeID(cfg.DataDir)
	if err != nil {
		return "", nil, err
	}
	start := time.Now()
	cl, err := cluster.Open(ctx, cluster.Config{
		DataDir:          cfg.DataDir,
		NodeID:           nodeID,
		Name:             cfg.Node.Name,
		InitialCluster:   cfg.Etcd.InitialCluster,
		Join:             cfg.Etcd.Join,
		Endpoints:        cfg.Etcd.Endpoints,
		CAFile:           cfg.Etcd.CA,
		CertFile:         cfg.Etcd.Cert,
		KeyFile:          cfg.Etcd.Key,
		ListenClientURLs: cfg.Etcd.ListenClientURLs,
		ListenPeerURLs:   cfg.Etcd.ListenPeerURLs,
		Logger:           log,
	})
	if err != nil {
		return "", nil, err
	}
	mode := "embedded"
	if !cl.Embedded() {
		mode = "external"
	}
	log.Info("etcd connected", "node", nodeID, "etcd", mode, "endpoints", cl.ClientURLs(),
		"elapsed", time.Since(start).Round(time.Millisecond))
	return nodeID, cl, nil
}

// etcdUpGauge is stave_etcd_up: 1 when etcd answers a linearizable read
// within a second at scrape time, else 0.
func etcdUpGauge(ctx context.Context, cl *cluster.Cluster) prometheus.Collector {
	mode := "embedded"
	if !cl.Embedded() {
		mode = "external"
	}
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "stave_etcd_up",
		Help:        "1 when the etcd holding the cluster state answers a linearizable read within 1s, else 0.",
		ConstLabels: prometheus.Labels{"mode": mode},
	}, func() float64 {
		if cl.Healthy(context.WithoutCancel(ctx), etcdProbeTimeout) != nil {
			return 0
		}
		return 1
	})
}

// hostname is the node's host name for its etcd record, or "" when the
// system does not say.
func hostname() string {
	h, _ := os.Hostname()
	return h
}

// publishPool records the node's pool in etcd (/stave/v1/pools/<node>); a
// failure is logged, the pool works without it.
func publishPool(ctx context.Context, h *poolHost, cl *cluster.Cluster, node string) {
	info := cluster.PoolInfo{Node: node, Exists: h.Exists(), Updated: time.Now().UTC()}
	if p, err := h.get(); err == nil {
		for _, d := range p.Status().Devices {
			info.Devices = append(info.Devices, d.Path)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	if err := cl.PutPool(ctx, info); err != nil {
		h.log.Warn("pool record not written to etcd", logkey.Err, err)
	}
}
