package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"stave.dev/stave/internal/initiator"
)

// TestClusterReplaceNode: a holder of a 3-replica volume dies for good;
// after replication.replace_after the owner moves its copy to the fourth
// node, a resync rebuilds it there and it joins the ISR, while a client
// keeps writing. Afterwards every acknowledged write is checked, the new
// copy is compared byte for byte with the owner's, and the dead node,
// restarted, drops its stale copy.
func TestClusterReplaceNode(t *testing.T) {
	requireE2E(t)
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"}
	for _, ip := range ips {
		requireLoopbackAlias(t, ip)
	}
	staveBinary(t)
	ns := make([]*clusterNode, 4)
	var initial []string
	for i := range ns {
		ns[i] = newClusterNode(t, fmt.Sprintf("n%d", i+1), ips[i])
		if i < 3 {
			initial = append(initial, ns[i].name+"="+ns[i].peer)
		}
	}
	for i, n := range ns {
		etcd := []string{"--initial-cluster", strings.Join(initial, ",")}
		if i == 3 {
			etcd = []string{"--join", ns[0].client}
		}
		n.setArgs(append(etcd, "--replication-listen", net.JoinHostPort(ips[i], strconv.Itoa(freePort(t))),
			"--replace-after", "3s")...)
	}
	startTogether(t, ns[:3], func(_ int, n *clusterNode) error { return n.startErr() })
	if err := ns[3].startErr(); err != nil {
		t.Fatal(err)
	}
	ns[0].waitStates(t, map[string]string{"n1": "up", "n2": "up", "n3": "up", "n4": "up"})
	ids := map[string]string{} // name -> ID
	nodes, err := ns[0].nodes()
	if err != nil {
		t.Fatal(err)
	}
	for _, nd := range nodes {
		ids[nd.Name] = nd.ID
	}

	const vol = "moving"
	out := ns[0].MustCLI("volume", "create", vol, "--size", "32MiB", "--replicas", "3", "--on", "n1", "--on", "n2", "--on", "n3")
	if !strings.Contains(out, ids["n1"]) || strings.Contains(out, ids["n4"]) {
		t.Fatalf("create with --on n1 n2 n3: %s", out)
	}
	if _, err := waitInSync(ns[0], vol, 3, clusterWaitTimeout); err != nil {
		t.Fatal(err)
	}
	checkSameRTPG(t, []*clusterNode{ns[0], ns[1], ns[2]}, "iqn.2026-11.dev.stave:"+vol)
	var mlog syncBuffer
	t.Cleanup(func() { saveLog(t, "multipath.log", mlog.String()) })
	portals := []string{ns[0].portal, ns[1].portal, ns[2].portal, ns[3].portal}
	m, capa := openFailoverMultipath(t, portals, "iqn.2026-11.dev.stave:"+vol, &mlog)
	w := startFailoverWriter(m, capa)
	defer w.stop()
	if err := w.waitProgress(200, failoverResume); err != nil {
		t.Fatal(err)
	}
	owner := findOwner(t, ns[:3], vol, m, clusterWaitTimeout)
	var victim *clusterNode
	for _, n := range ns[:3] {
		if n != owner {
			victim = n
			break
		}
	}
	victim.Kill()
	killed := time.Now()
	t.Logf("killed %s (a holder, not the owner %s)", victim.name, owner.name)

	// The node record lapses after ~10 s, then replace_after (3 s), then
	// the resync of the new copy.
	deadline := time.Now().Add(90 * time.Second)
	var last string
	for {
		v, err := volumeJSON(owner.daemon, vol)
		if err == nil {
			r, _ := v["replication"].(map[string]any)
			reps := anyStrings(r["replicas"])
			isr, _ := volumeISR(v)
			last = fmt.Sprintf("replicas %v isr %v", reps, isr)
			if slices.Contains(reps, ids["n4"]) && !slices.Contains(reps, ids[victim.name]) &&
				len(isr) == 3 && slices.Contains(isr, ids["n4"]) {
				break
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("copy of %s not moved to n4 and resynced within 90 s of the kill: %s", victim.name, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("copy moved to n4 and in sync %v after the kill", time.Since(killed).Round(time.Millisecond))
	if err := w.waitProgress(100, failoverResume); err != nil {
		t.Fatal(err)
	}
	finishFailover(t, w, m, capa, nil, "replace: one holder killed for good, its copy rebuilt on n4")

	// Writes have stopped and were synchronous: the new copy must equal
	// the owner's, byte for byte.
	read := func(n *clusterNode) []byte {
		b, err := os.ReadFile(filepath.Join(n.dataDir, "volumes", vol, "replica", "data"))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if !bytes.Equal(read(owner), read(ns[3])) {
		t.Fatal("n4's rebuilt copy differs from the owner's")
	}

	// The dead node comes back: it no longer holds a copy and drops it.
	if err := victim.startErr(); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(victim.dataDir, "volumes", vol, "replica")
	for end := time.Now().Add(clusterWaitTimeout); ; {
		if _, err := os.Stat(stale); os.IsNotExist(err) {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("%s kept its stale copy %s after restarting", victim.name, stale)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkSameRTPG checks that REPORT TARGET PORT GROUPS answers the same
// through every holder's port (issue 6), with the same NAA: one group per holder, exactly
// one active/optimized, the others standby, and the relative port of
// each session in its own node's group. It polls until the holders agree
// (each learns the owner through its own etcd watch).
func checkSameRTPG(t *testing.T, holders []*clusterNode, target string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterWaitTimeout)
	defer cancel()
	var last string
	for {
		var first []initiator.PortGroup
		var naa []byte
		same := true
		for i, n := range holders {
			s, err := initiator.Dial(ctx, initiator.Config{Addr: n.portal, Target: target,
				InitiatorName: "iqn.2026-11.dev.stave:e2e-rtpg", ISID: [6]byte{0x80, 0, 0, 0, 0, byte(i + 1)}})
			if err != nil {
				t.Fatalf("%s: login: %v", n.name, err)
			}
			pgs, err := s.ReportTargetPortGroups(ctx)
			id, idErr := s.DeviceID(ctx)
			s.Close()
			if err != nil || idErr != nil {
				t.Fatalf("%s: RTPG %v, VPD 0x83 %v", n.name, err, idErr)
			}
			ao, sb := 0, 0
			for _, g := range pgs {
				switch g.State {
				case initiator.ActiveOptimized:
					ao++
				case initiator.Standby:
					sb++
				}
			}
			if len(pgs) != len(holders) || ao != 1 || sb != len(holders)-1 {
				same, last = false, fmt.Sprintf("%s: %+v", n.name, pgs)
			}
			if i == 0 {
				naa = id.NAA
			} else if !bytes.Equal(id.NAA, naa) || len(naa) == 0 {
				t.Fatalf("%s: NAA %x, %s: %x: multipath needs one NAA on every path", holders[0].name, naa, n.name, id.NAA)
			}
			if i == 0 {
				first = pgs
			} else if fmt.Sprint(pgs) != fmt.Sprint(first) {
				same, last = false, fmt.Sprintf("%s: %+v vs %s: %+v", holders[0].name, first, n.name, pgs)
			}
			if !slices.ContainsFunc(pgs, func(g initiator.PortGroup) bool {
				return g.ID == id.PortGroup && slices.Contains(g.Ports, id.RelativePort)
			}) {
				same, last = false, fmt.Sprintf("%s: its port %d (group %d) is not in %+v", n.name, id.RelativePort, id.PortGroup, pgs)
			}
		}
		if same {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("REPORT TARGET PORT GROUPS differs between holders or is not one active/optimized group: %s", last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// anyStrings converts a JSON array of strings.
func anyStrings(v any) []string {
	raw, _ := v.([]any)
	var out []string
	for _, x := range raw {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}
