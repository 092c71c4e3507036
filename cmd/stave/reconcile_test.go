package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"stave.dev/stave/cluster"
	"stave.dev/stave/internal/volume"
)

// etcdOf connects to the embedded etcd of an in-process daemon.
func etcdOf(t *testing.T, d *daemon) *clientv3.Client {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(d.dir, "data", cluster.EtcdDir, "endpoints"))
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(strings.TrimSpace(string(b)), ","), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// eventually polls cond for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 10s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestReconcileFollowsEtcd changes specs in etcd behind the API's back,
// as another node would, and checks that the daemon applies them: an ACL
// change refuses the next login, a new spec is exported, a deleted one
// unexported; the API's resize raises CAPACITY DATA HAS CHANGED.
func TestReconcileFollowsEtcd(t *testing.T) {
	d := newDaemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d.mustCLI("volume", "create", "r1", "--size", "1MiB")
	cli := etcdOf(t, d)

	// Resize through the API: the logged-in initiator sees the UA and the
	// new capacity.
	ic := dialISCSI(t, d.portal, "iqn.2026-11.dev.test:r", "iqn.2026-11.dev.stave:r1")
	// The LU learns of a nexus from its first command; only known nexuses
	// get the unit attention.
	if _, st := ic.command(t, make([]byte, 6), nil, 0); st != 0 {
		t.Fatalf("TEST UNIT READY: status 0x%02x", st)
	}
	out := d.mustCLI("volume", "resize", "r1", "--size", "3MiB")
	if !strings.Contains(out, "resized volume r1 to 3 MiB") {
		t.Errorf("resize printed %q", out)
	}
	if _, st := ic.command(t, make([]byte, 6), nil, 0); st != 0x02 {
		t.Errorf("TEST UNIT READY after resize: status 0x%02x, want CHECK CONDITION (capacity changed)", st)
	}
	cdb := make([]byte, 16)
	cdb[0], cdb[1], cdb[13] = 0x9e, 0x10, 32
	data, st := ic.command(t, cdb, nil, 32)
	if st != 0 || (binary.BigEndian.Uint64(data)+1)*512 != 3<<20 {
		t.Errorf("READ CAPACITY(16) after resize: status 0x%02x, data % x", st, data)
	}
	ic.c.Close()
	d.wantFail("shrinking is not supported", "volume", "resize", "r1", "--size", "1MiB")

	// An ACL written to etcd applies to the next login.
	r, err := cli.Get(ctx, cluster.VolumeSpecKey("r1"))
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("spec in etcd: %v", err)
	}
	var s volume.Spec
	if err := json.Unmarshal(r.Kvs[0].Value, &s); err != nil {
		t.Fatal(err)
	}
	s.ACL = []string{"iqn.2026-11.dev.test:only"}
	b, _ := json.Marshal(s)
	if _, err := cli.Put(ctx, cluster.VolumeSpecKey("r1"), string(b)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ACL from etcd in the API", func() bool {
		vs := d.volumes()
		return len(vs) == 1 && len(vs[0].ACL) == 1
	})
	eventually(t, "ACL from etcd at login", func() bool {
		c, rsp := loginRaw(t, d.portal, "iqn.2026-11.dev.test:r", "iqn.2026-11.dev.stave:r1")
		c.Close()
		return rsp[36] == 2 && rsp[37] == 2
	})

	// A spec created in etcd (a create on another node for this one) is
	// exported; deleting it unexports it.
	s2 := s
	s2.Name, s2.ACL, s2.Backend, s2.Size = "r2", nil, volume.BackendPool, 1<<20
	s2.Policy = "1+0"
	b, _ = json.Marshal(s2)
	if _, err := cli.Put(ctx, cluster.VolumeSpecKey("r2"), string(b)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "spec from etcd listed", func() bool { return len(d.volumes()) == 2 })
	// There is no pool: the export fails, loudly, in the status.
	eventually(t, "status of r2", func() bool {
		r, err := cli.Get(ctx, cluster.VolumeStatusKey("r2"))
		if err != nil || len(r.Kvs) == 0 {
			return false
		}
		var vs cluster.VolumeStatus
		return json.Unmarshal(r.Kvs[0].Value, &vs) == nil && !vs.Exported && strings.Contains(vs.Error, "pool")
	})
	if !strings.Contains(d.log.String(), "volume not exported") {
		t.Error("no log line for the volume that could not be exported")
	}
	if _, err := cli.Delete(ctx, cluster.VolumeSpecKey("r1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "delete from etcd", func() bool {
		c, rsp := loginRaw(t, d.portal, "iqn.2026-11.dev.test:only", "iqn.2026-11.dev.stave:r1")
		c.Close()
		return rsp[36] == 2 && rsp[37] == 3 // not found
	})
	eventually(t, "status of a deleted volume removed", func() bool {
		r, err := cli.Get(ctx, cluster.VolumeStatusKey("r1"))
		return err == nil && len(r.Kvs) == 0
	})
	if !strings.Contains(d.mustCLI("version"), "daemon") {
		t.Error("daemon gone")
	}
	rc, err := net.Dial("unix", d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	_, _ = rc.Write([]byte("GET /readyz HTTP/1.0\r\nHost: stave\r\n\r\n"))
	if body, _ := io.ReadAll(rc); !strings.Contains(string(body), `"etcd": "ok"`) {
		t.Errorf("/readyz has no etcd check that passes:\n%s", body)
	}
	if !strings.Contains(metrics(t, d), `stave_etcd_up{mode="embedded"} 1`) {
		t.Errorf("metrics lack stave_etcd_up 1")
	}
}

// TestResizePoolVolume grows a pool volume online and across a restart.
func TestResizePoolVolume(t *testing.T) {
	d := newDaemon(t)
	requirePool(t, d, devFiles(t, 1, 128<<20))
	d.mustCLI("volume", "create", "pv", "--size", "4MiB")
	ic := dialISCSI(t, d.portal, "iqn.2026-11.dev.test:r", "iqn.2026-11.dev.stave:pv")
	a := make([]byte, 4096)
	for i := range a {
		a[i] = byte(i)
	}
	ic.write(t, 8, a)
	d.mustCLI("volume", "resize", "pv", "--size", "12MiB")
	cdb := make([]byte, 16)
	cdb[0], cdb[1], cdb[13] = 0x9e, 0x10, 32
	var data []byte
	for range 3 { // the first answer may be the capacity-changed unit attention
		var st byte
		if data, st = ic.command(t, cdb, nil, 32); st == 0 {
			break
		}
	}
	if len(data) < 8 || (binary.BigEndian.Uint64(data)+1)*512 != 12<<20 {
		t.Fatalf("READ CAPACITY(16) after growing a pool volume: % x", data)
	}
	ic.write(t, 12<<20/512-8, a) // the last 4 KiB, new space
	ic.c.Close()
	d.stop()
	d.start()
	ic = dialISCSI(t, d.portal, "iqn.2026-11.dev.test:r", "iqn.2026-11.dev.stave:pv")
	defer ic.c.Close()
	if got := ic.read(t, 8, 4096); !bytes.Equal(got, a) {
		t.Error("old data changed by the resize")
	}
	if got := ic.read(t, 12<<20/512-8, 4096); !bytes.Equal(got, a) {
		t.Error("data in the new space lost across a restart")
	}
}

// TestResizeFinishedAtStart: a crash after the catalogue write of a
// resize but before the backing file grew is finished at the next start.
func TestResizeFinishedAtStart(t *testing.T) {
	d := newDaemon(t)
	d.mustCLI("volume", "create", "half", "--size", "1MiB")
	d.mustCLI("volume", "resize", "half", "--size", "2MiB")
	d.stop()
	data := filepath.Join(d.dir, "data", "volumes", "half", "data")
	if err := os.Truncate(data, 1<<20); err != nil {
		t.Fatal(err)
	}
	d.start()
	vs := d.volumes()
	if len(vs) != 1 || !vs[0].Exported || vs[0].Size != 2<<20 {
		t.Fatalf("after start: %+v", vs)
	}
	if st, err := os.Stat(data); err != nil || st.Size() != 2<<20 {
		t.Fatalf("backing file not grown at start: %v %v", st, err)
	}
}
