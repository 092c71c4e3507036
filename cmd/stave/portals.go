package main

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"time"

	"stave.dev/stave/cluster"
	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/internal/volume"
)

// portalLookupTimeout bounds the etcd reads of one volumePortals call
// (GET /v1/volumes/{name}/connection, `stave k8s pv`).
const portalLookupTimeout = 3 * time.Second

// portalCluster is what volumePortals reads from etcd; *cluster.Cluster
// implements it. Implementations must be safe for concurrent use.
type portalCluster interface {
	// Nodes returns every node record, up or down, with the portals each
	// node advertised.
	Nodes(ctx context.Context) ([]cluster.NodeStatus, error)
	// VolumeStatus returns what the serving node applied of a volume's
	// spec; ok is false when there is no status.
	VolumeStatus(ctx context.Context, name string) (st cluster.VolumeStatus, ok bool, err error)
}

// volumePortals returns the HOST:PORT portals through which initiators
// reach the volume sp, for `stave k8s pv` (targetPortal = the first,
// portals = the rest):
//
//  1. The nodes that hold the volume are sp.Nodes(); a spec without a node
//     (written before etcd) is held by this node, self.
//  2. The serving node comes first: sp.Node for a volume with one copy;
//     for a replicated one, the node of its status in etcd when that node
//     holds a copy, else the first replica.
//  3. Each node contributes the portals of its record in etcd, in
//     placement order after the serving node; this node contributes own,
//     its live advertised list. Wildcard addresses, which initiators
//     cannot be told, and duplicates are dropped.
//  4. When etcd gives nothing (unreachable, or no record has a usable
//     portal), the result is own.
//
// Failed etcd reads are logged at Warn. It is safe for concurrent use.
func volumePortals(ctx context.Context, log *slog.Logger, pc portalCluster, sp *volume.Spec, self string, own []string) []string {
	holders := sp.Nodes()
	if len(holders) == 0 {
		holders = []string{self}
	}
	serving := holders[0] // sp.Node, or Replicas[0]
	if len(sp.Replicas) > 0 {
		st, ok, err := pc.VolumeStatus(ctx, sp.Name)
		switch {
		case err != nil:
			log.Warn("cannot read the volume's status from etcd; listing its first replica's portals first",
				logkey.Volume, sp.Name, logkey.Err, err)
		case ok && slices.Contains(holders, st.Node):
			serving = st.Node
		}
	}
	order := append([]string{serving}, slices.DeleteFunc(slices.Clone(holders), func(id string) bool { return id == serving })...)

	byID := map[string][]string{}
	if slices.ContainsFunc(order, func(id string) bool { return id != self }) {
		ns, err := pc.Nodes(ctx)
		if err != nil {
			log.Warn("cannot read the node records from etcd; listing only this node's portals",
				logkey.Volume, sp.Name, logkey.Err, err)
		}
		for _, n := range ns {
			byID[n.ID] = n.Portals
		}
	}
	var out []string
	for _, id := range order {
		ps := byID[id]
		if id == self {
			ps = own
		}
		for _, p := range ps {
			if tellable(p) && !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	if len(out) == 0 {
		out = slices.Clone(own)
	}
	// A floating portal address follows the owner: it goes first (the
	// targetPortal), on the port of the first portal.
	if f, err := netip.ParsePrefix(sp.FloatingIP); err == nil && len(out) > 0 {
		if _, port, err := net.SplitHostPort(out[0]); err == nil {
			out = append([]string{net.JoinHostPort(f.Addr().String(), port)}, out...)
		}
	}
	return out
}

// tellable reports whether p is a HOST:PORT an initiator can be told: a
// host that is not a wildcard address.
func tellable(p string) bool {
	host, port, err := net.SplitHostPort(p)
	if err != nil || host == "" || port == "" {
		return false
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return false
	}
	return true
}
