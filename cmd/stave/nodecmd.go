package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"stave.dev/stave/cluster"
	"stave.dev/stave/internal/adminapi"
	"stave.dev/stave/internal/config"
)

// nodeRefresh is how often the daemon re-reads its capacity and rewrites
// its node record when it changed.
const nodeRefresh = 30 * time.Second

func nodeCommand() *cli.Command {
	return &cli.Command{
		Name:  "node",
		Usage: "inspect the cluster's nodes",
		Subcommands: []*cli.Command{
			{Name: "list", Aliases: []string{"ls"}, Usage: "list every node that ever registered, up or down", Action: nodeList},
			{Name: "show", Usage: "show one node (default: the one the API belongs to)", ArgsUsage: "[ID|NAME]", Action: nodeShow},
		},
	}
}

func nodeList(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("node list takes no arguments, got %q", c.Args().Slice())
	}
	return withAPI(c, func(ctx context.Context, cl *adminapi.Client, o string) error {
		ns, err := cl.ListNodes(ctx)
		if err != nil {
			return err
		}
		if o == "json" {
			return writeJSON(c.App.Writer, ns)
		}
		return writeNodeTable(c.App.Writer, ns)
	})
}

// writeNodeTable renders nodes one per line.
func writeNodeTable(w io.Writer, ns []adminapi.Node) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tID\tSTATE\tPORTALS\tLABELS\tCAPACITY\tETCD\tVERSION")
	for _, n := range ns {
		name := n.Name
		if n.Self {
			name += " *"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, n.ID, n.State, orDash(strings.Join(n.Portals, ",")),
			orDash(labelText(n.Labels)), capacityText(n.Capacity), etcdText(n), shortVersion(n.Version))
	}
	return tw.Flush()
}

func nodeShow(c *cli.Context) error {
	var id string
	switch c.NArg() {
	case 0:
	case 1:
		id = c.Args().First()
	default:
		return fmt.Errorf("node show: want at most one node ID or name, got %q", c.Args().Slice())
	}
	return withAPI(c, func(ctx context.Context, cl *adminapi.Client, o string) error {
		n, err := cl.GetNode(ctx, id)
		if err != nil {
			return err
		}
		if o == "json" {
			return writeJSON(c.App.Writer, n)
		}
		return writeNodeDetail(c.App.Writer, n)
	})
}

// writeNodeDetail renders one node as "Key: value" lines.
func writeNodeDetail(w io.Writer, n *adminapi.Node) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	state := n.State
	if n.State == cluster.NodeDown {
		state += " (stopped, dead or cut off from etcd; last record written " + n.Updated.Format(time.RFC3339) + ")"
	}
	member := "none (external etcd)"
	if n.EtcdMemberID != "" {
		member = n.EtcdMemberID
		if !n.EtcdMember {
			member += " (not in etcd's member list)"
		}
	}
	for _, kv := range [][2]string{
		{"Name", n.Name},
		{"ID", n.ID},
		{"Host", n.Host},
		{"State", state},
		{"This node", yesNo(n.Self)},
		{"Portals", orDash(strings.Join(n.Portals, ", "))},
		{"Admin API", orDash(n.Admin)},
		{"Labels", orDash(labelText(n.Labels))},
		{"Capacity", capacityText(n.Capacity)},
		{"etcd member", member},
		{"etcd client URLs", orDash(strings.Join(n.EtcdClientURLs, ", "))},
		{"Version", n.Version},
		{"Started", n.Started.Format(time.RFC3339)},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// labelText renders labels as k=v,k=v in key order.
func labelText(l map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}

// capacityText renders "FREE free of SIZE (pool)".
func capacityText(c *adminapi.NodeCapacity) string {
	if c == nil {
		return "-"
	}
	return fmt.Sprintf("%s free of %s (%s)", formatSize(c.Free), formatSize(c.Size), strings.ReplaceAll(c.Source, "_", " "))
}

// etcdText renders a node's etcd membership for the table.
func etcdText(n adminapi.Node) string {
	switch {
	case n.EtcdMemberID == "":
		return "external"
	case n.EtcdMember:
		return "member " + n.EtcdMemberID
	}
	return "not a member"
}

// shortVersion keeps the version's first word (the module version).
func shortVersion(v string) string {
	if f := strings.Fields(v); len(f) > 0 {
		return f[0]
	}
	return "-"
}

// clusterNodes serves GET /v1/nodes from etcd.
type clusterNodes struct {
	cl   *cluster.Cluster
	self string // this node's ID
}

// List implements adminapi.Nodes.
func (c clusterNodes) List(ctx context.Context) ([]adminapi.Node, error) {
	ns, err := c.cl.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]adminapi.Node, 0, len(ns))
	for _, n := range ns {
		a := adminapi.Node{ID: n.ID, Name: n.Name, Host: n.Host, State: n.State, Self: n.ID == c.self,
			Portals: n.Portals, Admin: n.Admin, Labels: n.Labels, EtcdMemberID: n.EtcdMemberID, EtcdMember: n.EtcdMember,
			EtcdClientURLs: n.EtcdClientURLs, Version: n.Version, Started: n.Started, Updated: n.Updated}
		if a.Portals == nil {
			a.Portals = []string{}
		}
		if n.Capacity != nil {
			a.Capacity = &adminapi.NodeCapacity{Source: n.Capacity.Source, Size: n.Capacity.Size, Free: n.Capacity.Free}
		}
		out = append(out, a)
	}
	return out, nil
}

// nodeRecord returns the function that builds this node's etcd record
// (cluster.RunNode calls it at registration and every nodeRefresh).
func nodeRecord(cfg *config.Config, cl *cluster.Cluster, ph *poolHost, id string, portals []string) func() cluster.NodeInfo {
	host := hostname()
	name := cfg.Node.Name
	if name == "" {
		name = host
	}
	admin := "unix:" + cfg.SocketPath()
	if cfg.HTTP.Listen != "" {
		scheme := "http://"
		if cfg.HTTP.TLSCert != "" {
			scheme = "https://"
		}
		admin = scheme + cfg.HTTP.Listen
	}
	started := time.Now().UTC()
	base := cluster.NodeInfo{ID: id, Name: name, Host: host, Portals: slices.Clone(portals), Admin: admin,
		Labels: maps.Clone(cfg.Node.Labels), EtcdMemberID: cluster.FormatMemberID(cl.MemberID()),
		Version: versionString(), Started: started}
	if cl.Embedded() {
		base.EtcdClientURLs = cl.ClientURLs()
	}
	dataDir := cfg.DataDir
	return func() cluster.NodeInfo {
		n := base
		n.Capacity = nodeCapacity(ph, dataDir)
		return n
	}
}

// nodeCapacity is the open pool's space, else the free space of the data
// directory's file system; nil when neither is known.
func nodeCapacity(ph *poolHost, dataDir string) *cluster.Capacity {
	if ph != nil {
		if p, err := ph.get(); err == nil {
			sp := p.Status().Space
			return &cluster.Capacity{Source: "pool", Size: sp.Capacity, Free: sp.Free}
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dataDir, &st); err != nil {
		return nil
	}
	return &cluster.Capacity{Source: "data_dir", Size: int64(st.Blocks) * st.Bsize, Free: int64(st.Bavail) * st.Bsize}
}
