package e2e

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// TestK8sPVPortalsAcrossNodes starts two daemons, n1 on 127.0.0.6 and n2
// on 127.0.0.7 (joining n1), as one cluster, and checks that `stave k8s pv` names the
// portal of the node that holds the volume first, whichever node's API
// answers: a volume created through n2 lives on n2, and n1's API gives
// n2's portal as the targetPortal (read from n2's node record in etcd).
func TestK8sPVPortalsAcrossNodes(t *testing.T) {
	requireE2E(t)
	ips := []string{"127.0.0.6", "127.0.0.7"}
	for _, ip := range ips {
		requireLoopbackAlias(t, ip)
	}
	staveBinary(t)
	// n1 forms a one-member etcd cluster; n2 joins it (an initial cluster
	// of two is refused: an even count tolerates no failure more).
	a := newClusterNode(t, "n1", ips[0])
	a.setArgs("--initial-cluster", a.name+"="+a.peer)
	if err := a.startErr(); err != nil {
		t.Fatal(err)
	}
	b := newClusterNode(t, "n2", ips[1])
	b.setArgs("--join", a.client)
	if err := b.startErr(); err != nil {
		t.Fatal(err)
	}
	a.waitStates(t, map[string]string{"n1": "up", "n2": "up"})

	b.MustCLI("volume", "create", "on-b", "--size", "1MiB")
	a.MustCLI("volume", "create", "on-a", "--size", "1MiB")
	for _, c := range []struct {
		api  *clusterNode
		vol  string
		want string
	}{
		{a, "on-b", b.portal}, // the case that needs etcd
		{a, "on-a", a.portal},
		{b, "on-a", a.portal},
		{b, "on-b", b.portal},
	} {
		src := waitPVPortal(t, c.api, c.vol, c.want)
		if len(src.Portals) != 0 {
			t.Errorf("k8s pv %s on %s: portals %q, want none (one copy on one node)", c.vol, c.api.name, src.Portals)
		}
	}
}

// pvISCSI is the iscsi source of `stave k8s pv -o json`.
type pvISCSI struct {
	TargetPortal string   `json:"targetPortal"`
	Portals      []string `json:"portals"`
	IQN          string   `json:"iqn"`
}

// waitPVPortal polls `stave k8s pv VOL -o json` on n until its
// targetPortal is want (n learns of a volume created elsewhere through
// its etcd watch) and returns the source.
func waitPVPortal(t *testing.T, n *clusterNode, vol, want string) pvISCSI {
	t.Helper()
	deadline := time.Now().Add(clusterWaitTimeout)
	var last string
	for {
		out, err := n.CLI("k8s", "pv", vol, "-o", "json")
		if err == nil {
			var pv struct {
				Spec struct {
					ISCSI pvISCSI `json:"iscsi"`
				} `json:"spec"`
			}
			if err := json.Unmarshal([]byte(out), &pv); err != nil {
				t.Fatalf("k8s pv %s on %s: %v\n%s", vol, n.name, err, out)
			}
			src := pv.Spec.ISCSI
			if src.TargetPortal == want {
				if src.IQN != "iqn.2026-11.dev.stave:"+vol {
					t.Errorf("k8s pv %s on %s: iqn %s", vol, n.name, src.IQN)
				}
				return src
			}
			last = fmt.Sprintf("targetPortal %s portals %q", src.TargetPortal, src.Portals)
		} else {
			last = fmt.Sprintf("%v: %s", err, out)
		}
		if time.Now().After(deadline) {
			t.Fatalf("k8s pv %s on %s: want targetPortal %s within %v; last: %s", vol, n.name, want, clusterWaitTimeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
