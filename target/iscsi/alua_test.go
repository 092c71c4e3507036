package iscsi

import (
	"context"
	"slices"
	"sync"
	"testing"

	"stave.dev/stave/target/scsi"
)

// nexusDev records the nexus of every command it executes.
type nexusDev struct {
	*fakeDev
	mu  sync.Mutex
	got []scsi.Nexus
}

func (d *nexusDev) Execute(ctx context.Context, t *scsi.Task) scsi.Result {
	d.mu.Lock()
	d.got = append(d.got, t.Nexus)
	d.mu.Unlock()
	return d.fakeDev.Execute(ctx, t)
}

// TestClusterTarget checks the per-target cluster fields: SendTargets
// announces the other nodes' portals after this server's own (without
// repeating one), and commands carry the target's port group and offset
// relative port.
func TestClusterTarget(t *testing.T) {
	dev := &nexusDev{fakeDev: newFakeDev(64)}
	var self string
	ts := startServer(t, func(c *Config) {
		c.Targets = staticTargets{{Name: testTarget, Device: dev, PortGroup: 3, RelativePortBase: 0x300,
			Peers: []string{"192.0.2.7:3260,1", "192.0.2.8:3260,1"}, Lead: []string{"192.0.2.100:3260,1"}}}
	})
	self = ts.addr + ",1"
	ts.srv.cfg.Targets.(staticTargets)[0].Peers = append(ts.srv.cfg.Targets.(staticTargets)[0].Peers, self)
	ti := newInitiator(t, dialTCP(t, ts.addr), 3)
	ti.login(testTarget)
	got := ti.sendTargets("")
	want := []string{"TargetName=" + testTarget, "TargetAddress=192.0.2.100:3260,1", "TargetAddress=" + self,
		"TargetAddress=192.0.2.7:3260,1", "TargetAddress=192.0.2.8:3260,1"}
	if !slices.Equal(got, want) {
		t.Fatalf("SendTargets:\n got %q\nwant %q", got, want)
	}
	if res := ti.do([]byte{0, 0, 0, 0, 0, 0}, 0, nil, false); res.status != 0 {
		t.Fatalf("TEST UNIT READY: status %d", res.status)
	}
	dev.mu.Lock()
	defer dev.mu.Unlock()
	if len(dev.got) == 0 {
		t.Fatal("no command reached the device")
	}
	n := dev.got[len(dev.got)-1]
	if n.TargetPortGroup != 3 || n.RelativeTargetPort != 0x301 {
		t.Fatalf("nexus port group %d, relative port %#x; want 3, 0x301", n.TargetPortGroup, n.RelativeTargetPort)
	}
}
