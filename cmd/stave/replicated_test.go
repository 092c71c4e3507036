package main

import (
	"errors"
	"log/slog"
	"path/filepath"
	"slices"
	"testing"

	"stave.dev/stave/cluster"
	"stave.dev/stave/internal/volume"
	"stave.dev/stave/replication"
	"stave.dev/stave/replication/filestore"
	"stave.dev/stave/target/scsi"
	"stave.dev/stave/target/scsi/sense"
)

func TestPlaceReplicas(t *testing.T) {
	node := func(id, zone string, free int64, up bool, rep string) cluster.NodeStatus {
		st := cluster.NodeDown
		if up {
			st = cluster.NodeUp
		}
		n := cluster.NodeStatus{NodeInfo: cluster.NodeInfo{ID: id, Replication: rep,
			Capacity: &cluster.Capacity{Size: 1 << 40, Free: free}}, State: st}
		if zone != "" {
			n.Labels = map[string]string{"zone": zone}
		}
		return n
	}
	ns := []cluster.NodeStatus{
		node("a", "z1", 100, true, "10.0.0.1:3270"),
		node("b", "z1", 300, true, "10.0.0.2:3270"),
		node("c", "z2", 200, true, "10.0.0.3:3270"),
		node("d", "z3", 900, false, "10.0.0.4:3270"), // down
		node("e", "z4", 999, true, ""),               // holds no replicas
		node("f", "z5", 10, true, "10.0.0.6:3270"),   // too small for 50
	}
	for _, tc := range []struct {
		n    int
		size int64
		want []string
	}{
		{1, 50, []string{"b"}},
		{2, 50, []string{"b", "c"}},      // zones first: b (z1, most free), c (z2)
		{3, 50, []string{"b", "c", "a"}}, // then by free space
		{3, 5, []string{"b", "c", "f"}},  // f fits and has its own zone
	} {
		got, err := placeReplicas(ns, tc.n, tc.size)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("place %d of %d bytes: %v, %v; want %v", tc.n, tc.size, got, err, tc.want)
		}
	}
	if _, err := placeReplicas(ns, 3, 150); !errors.Is(err, volume.ErrInvalid) {
		t.Errorf("3 replicas of 150 bytes on 2 nodes with room: err %v, want ErrInvalid", err)
	}
}

func TestALUAPorts(t *testing.T) {
	a := newALUAPorts(3, 2)
	for g := uint16(1); g <= 3; g++ {
		if s := a.AccessState(g); s != scsi.ALUATransitioning {
			t.Errorf("no owner: group %d is %v, want transitioning", g, s)
		}
	}
	if !a.setOwner(2) || a.setOwner(2) {
		t.Error("setOwner(2) twice: want a change, then none")
	}
	a.setCounts([]int{1, 2, 1})
	want := []scsi.PortGroup{
		{ID: 1, State: scsi.ALUAStandby, Ports: []uint16{0x101}},
		{ID: 2, State: scsi.ALUAActiveOptimized, Preferred: true, Ports: []uint16{0x201, 0x202}},
		{ID: 3, State: scsi.ALUAStandby, Ports: []uint16{0x301}},
	}
	got := a.PortGroups()
	if len(got) != len(want) {
		t.Fatalf("groups %+v", got)
	}
	for i := range want {
		if got[i].ID != want[i].ID || got[i].State != want[i].State || got[i].Preferred != want[i].Preferred ||
			!slices.Equal(got[i].Ports, want[i].Ports) {
			t.Errorf("group %d: %+v, want %+v", i+1, got[i], want[i])
		}
	}
	if s := a.AccessState(9); s != scsi.ALUAUnavailable {
		t.Errorf("unknown group: %v", s)
	}
}

func TestReplicaDeviceNotServing(t *testing.T) {
	d := &replicaDevice{store: replication.NewMemStore(1 << 20)}
	var se *sense.Error
	if err := d.WriteAt(t.Context(), make([]byte, 512), 0, false); !errors.As(err, &se) ||
		se.Key != sense.KeyNotReady || se.ASC != sense.ASCLogicalUnitNotAccessibleTransition {
		t.Fatalf("write while not serving: %v, want NOT READY / transition", err)
	}
	err := mapErr(replication.ErrFenced)
	if !errors.As(err, &se) || se.ASC != sense.ASCLogicalUnitNotAccessibleTransition || !errors.Is(err, replication.ErrFenced) {
		t.Fatalf("fenced: %v", err)
	}
}

func TestPlacePinned(t *testing.T) {
	mk := func(id, name string, up bool, rep string, free int64) cluster.NodeStatus {
		st := cluster.NodeDown
		if up {
			st = cluster.NodeUp
		}
		return cluster.NodeStatus{NodeInfo: cluster.NodeInfo{ID: id, Name: name, Replication: rep,
			Capacity: &cluster.Capacity{Free: free}}, State: st}
	}
	ns := []cluster.NodeStatus{
		mk("a1", "n1", true, "x:1", 100), mk("b2", "n2", true, "x:2", 300),
		mk("c3", "n3", true, "x:3", 200), mk("d4", "n4", false, "x:4", 900), mk("e5", "n5", true, "", 900),
	}
	got, err := placePinned(ns, 3, 50, []string{"n1", "c3"})
	if err != nil || !slices.Equal(got, []string{"a1", "c3", "b2"}) {
		t.Fatalf("pinned n1, c3: %v, %v", got, err)
	}
	for _, on := range [][]string{{"nx"}, {"n4"}, {"n5"}, {"n1", "a1"}} {
		if _, err := placePinned(ns, 3, 50, on); !errors.Is(err, volume.ErrInvalid) {
			t.Errorf("--on %v: err %v, want ErrInvalid", on, err)
		}
	}
	if _, err := placePinned(ns, 2, 150, []string{"n1"}); !errors.Is(err, volume.ErrInvalid) {
		t.Errorf("pinned node too small: err %v", err)
	}
}

func TestPickReplacement(t *testing.T) {
	mk := func(id, zone string, free int64) cluster.NodeStatus {
		return cluster.NodeStatus{NodeInfo: cluster.NodeInfo{ID: id, Replication: "x:1", Labels: map[string]string{"zone": zone},
			Capacity: &cluster.Capacity{Free: free}}, State: cluster.NodeUp}
	}
	nodes := map[string]cluster.NodeStatus{
		"a": mk("a", "z1", 10), "b": mk("b", "z2", 10), "d": mk("d", "z1", 500), "e": mk("e", "z3", 100),
	}
	sp := &volume.Spec{Name: "v", Size: 5, Replicas: []string{"a", "b", "c"}} // c is down (no record)
	if got, err := pickReplacement(nodes, sp); err != nil || got != "e" {
		t.Fatalf("replacement: %q, %v; want e (a zone no holder is in, over d with more room in z1)", got, err)
	}
	delete(nodes, "e")
	if got, err := pickReplacement(nodes, sp); err != nil || got != "d" {
		t.Fatalf("replacement without a free zone: %q, %v; want d", got, err)
	}
	delete(nodes, "d")
	if _, err := pickReplacement(nodes, sp); err == nil {
		t.Fatal("no candidate: want an error")
	}
}

// TestOpenCopyAtItsOwnSize: a file copy that a grow did not reach (the
// daemon stopped between the spec change and the copy's Resize) opens at
// its own size, so that openReplica can grow it, rather than failing on
// the size mismatch at every start.
func TestOpenCopyAtItsOwnSize(t *testing.T) {
	dir := t.TempDir()
	st, err := filestore.Open(filepath.Join(dir, replicaDir), 1<<20, filestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	h := &replicaHost{log: slog.New(slog.DiscardHandler)}
	s := &volume.Spec{Name: "v", Size: 2 << 20}
	c, err := h.openCopy(t.Context(), s, dir)
	if err != nil {
		t.Fatalf("openCopy of a copy smaller than its spec: %v", err)
	}
	defer c.Close()
	if c.Size() != 1<<20 {
		t.Fatalf("copy size %d, want its own 1 MiB", c.Size())
	}
	if err := c.Resize(s.Size); err != nil || c.Size() != s.Size {
		t.Fatalf("grow to the spec: size %d, %v", c.Size(), err)
	}

	// A new copy is created at the spec's size.
	dir2 := t.TempDir()
	c2, err := h.openCopy(t.Context(), s, dir2)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if c2.Size() != s.Size {
		t.Fatalf("new copy size %d, want %d", c2.Size(), s.Size)
	}
}
