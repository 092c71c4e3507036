package main

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"stave.dev/stave/cluster"
	"stave.dev/stave/internal/adminapi"
	"stave.dev/stave/internal/volume"
)

// clusterPlacement is the admin API's adminapi.Placement: it places the
// copies of a replicated volume on nodes that are up and hold replicas
// (a replication address), spread over zones (the "zone" label) and,
// within that, by free capacity.
type clusterPlacement struct {
	cl *cluster.Cluster
}

var _ adminapi.Placement = clusterPlacement{}

// Place implements adminapi.Placement.
func (p clusterPlacement) Place(ctx context.Context, n int, size int64, on []string) ([]string, error) {
	ns, err := p.cl.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	return placePinned(ns, n, size, on)
}

// placePinned places n copies, the nodes named in on (name or ID) first,
// each of which must be able to hold one; placeReplicas chooses the rest.
func placePinned(ns []cluster.NodeStatus, n int, size int64, on []string) ([]string, error) {
	var out []string
	for _, ref := range on {
		i := slices.IndexFunc(ns, func(x cluster.NodeStatus) bool { return x.ID == ref || x.Name == ref })
		if i < 0 {
			return nil, fmt.Errorf("%w: --on %s: no such node (see `stave node list`)", volume.ErrInvalid, ref)
		}
		x := ns[i]
		switch {
		case slices.Contains(out, x.ID):
			return nil, fmt.Errorf("%w: --on names node %s twice", volume.ErrInvalid, ref)
		case x.State != cluster.NodeUp:
			return nil, fmt.Errorf("%w: --on %s: the node is down", volume.ErrInvalid, ref)
		case x.Replication == "":
			return nil, fmt.Errorf("%w: --on %s: the node holds no replicas (no replication.listen)", volume.ErrInvalid, ref)
		case x.Capacity != nil && x.Capacity.Free < size:
			return nil, fmt.Errorf("%w: --on %s: the node has %d bytes free, the volume needs %d", volume.ErrInvalid, ref, x.Capacity.Free, size)
		}
		out = append(out, x.ID)
	}
	if len(out) == n {
		return out, nil
	}
	rest := slices.DeleteFunc(slices.Clone(ns), func(x cluster.NodeStatus) bool { return slices.Contains(out, x.ID) })
	more, err := placeReplicas(rest, n-len(out), size)
	if err != nil {
		return nil, err
	}
	return append(out, more...), nil
}

// placeReplicas chooses n nodes of ns: up, with a replication address and
// room for size bytes; first one per zone in order of free capacity
// (most first), then the rest by free capacity. The first node chosen is
// the preferred owner.
func placeReplicas(ns []cluster.NodeStatus, n int, size int64) ([]string, error) {
	var cands []cluster.NodeStatus
	for _, x := range ns {
		if x.State != cluster.NodeUp || x.Replication == "" {
			continue
		}
		if x.Capacity != nil && x.Capacity.Free < size {
			continue
		}
		cands = append(cands, x)
	}
	if len(cands) < n {
		return nil, fmt.Errorf("%w: %d replicas need %d nodes that are up, have replication.listen set and %d bytes free; %d do: "+
			"use fewer replicas or start more nodes (`stave node list`)", volume.ErrInvalid, n, n, size, len(cands))
	}
	free := func(x cluster.NodeStatus) int64 {
		if x.Capacity == nil {
			return 0
		}
		return x.Capacity.Free
	}
	slices.SortStableFunc(cands, func(a, b cluster.NodeStatus) int {
		if c := cmp.Compare(free(b), free(a)); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	var out []string
	zones := map[string]bool{}
	for _, x := range cands { // one per zone first
		z := x.Labels["zone"]
		if z != "" && zones[z] {
			continue
		}
		zones[z] = z != ""
		out = append(out, x.ID)
		if len(out) == n {
			return out, nil
		}
	}
	for _, x := range cands {
		if !slices.Contains(out, x.ID) {
			out = append(out, x.ID)
			if len(out) == n {
				break
			}
		}
	}
	return out, nil
}
