package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"stave.dev/stave/internal/adminapi"
)

// devFiles makes n sparse files of size bytes in t.TempDir().
func devFiles(t *testing.T, n int, size int64) []string {
	t.Helper()
	dir := t.TempDir()
	var out []string
	for i := range n {
		p := filepath.Join(dir, "dev"+string(rune('0'+i)))
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		f.Close()
		out = append(out, p)
	}
	return out
}

// poolCreateArgs returns `pool create --device ...` for devs.
func poolCreateArgs(devs []string, extra ...string) []string {
	args := []string{"pool", "create"}
	for _, d := range devs {
		args = append(args, "--device", d)
	}
	return append(args, extra...)
}

// requirePool creates a pool on devs, or, while package pool still has
// stubs, checks that the CLI says so clearly and skips the rest of t.
func requirePool(t *testing.T, d *daemon, devs []string) {
	t.Helper()
	code, out, errs := d.cli(poolCreateArgs(devs, "--segment-size", "4MiB")...)
	if code != 0 && strings.Contains(errs, "not implemented") {
		if code != 1 || !strings.HasPrefix(errs, "stave: ") || !strings.Contains(errs, "the pool does not do this yet") ||
			strings.Count(errs, "\n") != 1 {
			t.Fatalf("pool create with a stub pool: exit %d, stderr %q", code, errs)
		}
		if _, err := os.Stat(filepath.Join(d.dir, "data", poolMetaDir)); !os.IsNotExist(err) {
			t.Errorf("failed pool create left %s behind: %v", poolMetaDir, err)
		}
		t.Skipf("package pool is not implemented yet: %s", strings.TrimSpace(errs))
	}
	if code != 0 {
		t.Fatalf("pool create: exit %d: %s%s", code, out, errs)
	}
	if !strings.Contains(out, "created pool") {
		t.Errorf("pool create printed %q", out)
	}
}

func poolStatusJSON(t *testing.T, d *daemon) adminapi.PoolStatus {
	t.Helper()
	var st adminapi.PoolStatus
	if err := json.Unmarshal([]byte(d.mustCLI("pool", "status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestPoolCLIWithoutPool checks the verbs' errors before a pool exists and
// the client-side validation, which needs no pool implementation.
func TestPoolCLIWithoutPool(t *testing.T) {
	d := newDaemon(t)
	devs := devFiles(t, 3, 64<<20)
	hint := "create one with `stave pool create --device PATH"
	d.wantFail(hint, "pool", "status")
	d.wantFail(hint, "pool", "scrub")
	d.wantFail(hint, "pool", "add-device", devs[0])
	d.wantFail(hint, "pool", "replace-device", devs[0], devs[1])
	d.wantFail("--policy 2+1 needs a pool", "volume", "create", "v", "--size", "1MiB", "--policy", "2+1")
	d.wantFail("DATA+PARITY", "volume", "create", "v", "--size", "1MiB", "--policy", "2-1")
	d.wantFail("DATA+PARITY", "volume", "create", "v", "--size", "1MiB", "--policy", "0+1")
	if out := d.mustCLI("snapshot", "list"); !strings.Contains(out, "SNAPSHOT") {
		t.Errorf("snapshot list:\n%s", out)
	}

	// Device checks, made by the client before asking the daemon.
	d.wantFail("does not exist", poolCreateArgs([]string{devs[0], devs[0] + ".missing"})...)
	d.wantFail("is a directory", poolCreateArgs([]string{devs[0], filepath.Dir(devs[0])})...)
	d.wantFail("given twice", poolCreateArgs([]string{devs[0], devs[0]})...)
	d.wantFail("Required flag \"device\"", "pool", "create")
	d.wantFail("--device PATH", "pool", "create", "--device", devs[0], devs[1])
	d.wantFail(`unknown unit "MB"`, poolCreateArgs(devs, "--segment-size", "4MB")...)
	d.wantFail("OLD and NEW", "pool", "replace-device", devs[0])

	// A file volume made now is a sparse file, as before the pool.
	d.mustCLI("volume", "create", "old", "--size", "1MiB")
	d.wantFail("created before the pool", "snapshot", "create", "old", "s1")
	d.wantFail("created before the pool", "volume", "revert", "old@s1")
	d.wantFail("snapshot reference", "volume", "clone", "old", "new")
	d.wantFail("VOLUME SNAPSHOT NEWVOLUME", "volume", "clone", "old")
	d.wantFail("snapshot name", "snapshot", "create", "old", "Bad!")
	d.wantFail(`no volume named "nope"`, "snapshot", "list", "nope")

	// pool recover is offline: it needs the data dir's lock and a pool.
	d.wantFail("has no pool", "pool", "recover", "--data-dir", filepath.Join(d.dir, "data"))
	if err := os.Mkdir(filepath.Join(d.dir, "data", poolMetaDir), 0o700); err != nil {
		t.Fatal(err)
	}
	d.wantFail("in use by another 'stave serve'", "pool", "recover", "--data-dir", filepath.Join(d.dir, "data"))
	if err := os.Remove(filepath.Join(d.dir, "data", poolMetaDir)); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"stave", "pool", "recover", "--help"}, &out, &errb)
	if code != 0 || !strings.Contains(out.String(), "daemon stopped") {
		t.Errorf("pool recover --help: %d %q", code, out.String())
	}
}

// need runs a client command that needs a pool feature. While package
// pool answers "not implemented" for it, need checks that the CLI says so
// clearly and skips t; otherwise a failure is fatal. It returns stdout.
func (d *daemon) need(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errs := d.cli(args...)
	if code != 0 && strings.Contains(errs, "not implemented") {
		if code != 1 || !strings.HasPrefix(errs, "stave: ") || !strings.Contains(errs, "the pool does not do this yet") ||
			strings.Count(errs, "\n") != 1 {
			t.Fatalf("stave %s with the feature missing: exit %d, stderr %q", strings.Join(args, " "), code, errs)
		}
		t.Skipf("waiting on package pool: stave %s: %s", strings.Join(args, " "), strings.TrimSpace(errs))
	}
	if code != 0 {
		t.Fatalf("stave %s: exit %d: %s%s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

// TestPoolCLI runs every pool verb against a live in-process daemon with a
// pool on three files. Subtests whose feature package pool does not have
// yet skip (see need); the others go on.
func TestPoolCLI(t *testing.T) {
	d := newDaemon(t)
	d.mustCLI("volume", "create", "old", "--size", "1MiB")
	devs := devFiles(t, 5, 256<<20)
	requirePool(t, d, devs[:3])
	a, b := bytes.Repeat([]byte{0xa1}, 4096), bytes.Repeat([]byte{0xb2}, 4096)
	want := a // what volume db holds at LBA 8

	t.Run("status", func(t *testing.T) {
		st := poolStatusJSON(t, d)
		if len(st.Devices) != 3 || st.State != "ok" || st.Space.Capacity <= 0 || st.Space.Free <= 0 {
			t.Errorf("pool status %+v", st)
		}
		for i, dv := range st.Devices {
			if dv.Path != devs[i] || dv.State != "ok" || dv.Size <= 0 {
				t.Errorf("device %d: %+v", i, dv)
			}
		}
		tbl := d.mustCLI("pool", "status")
		for _, w := range []string{"CHECKSUM ERR", "REPAIRS", devs[2], "Space: logical", "parity", "garbage", "free"} {
			if !strings.Contains(tbl, w) {
				t.Errorf("pool status table lacks %q:\n%s", w, tbl)
			}
		}
		d.wantFail("has a pool already", poolCreateArgs(devs[3:])...)
	})

	t.Run("volumes", func(t *testing.T) {
		out := d.mustCLI("volume", "create", "db", "--size", "16MiB")
		if !strings.Contains(out, "in the pool, policy 2+1") {
			t.Errorf("volume create printed %q", out)
		}
		// The spec lives in etcd (docs/etcd-keys.md); the API reports it.
		spec := d.mustCLI("volume", "show", "db", "-o", "json")
		if !strings.Contains(spec, `"backend": "pool"`) || !strings.Contains(spec, `"policy": "2+1"`) {
			t.Errorf("volume show db: %s", spec)
		}
		if _, err := os.Stat(filepath.Join(d.dir, "data", "volumes", "db", "data")); !os.IsNotExist(err) {
			t.Errorf("pool volume has a data file: %v", err)
		}
		d.mustCLI("volume", "create", "mirror", "--size", "1MiB", "--policy", "1+1")
		d.wantFail("the pool has 3", "volume", "create", "wide", "--size", "1MiB", "--policy", "4+2")
		list := d.mustCLI("volume", "list")
		for _, w := range []string{"pool 2+1", "pool 1+1", "file"} {
			if !strings.Contains(list, w) {
				t.Errorf("volume list lacks %q:\n%s", w, list)
			}
		}
		ic := dialISCSI(t, d.portal, "iqn.2026-11.dev.test:pool", "iqn.2026-11.dev.stave:db")
		defer ic.c.Close()
		ic.write(t, 8, a)
		if got := ic.read(t, 8, 4096); !bytes.Equal(got, a) {
			t.Fatalf("read back % x...", got[:8])
		}
	})

	t.Run("snapshots", func(t *testing.T) {
		ic := dialISCSI(t, d.portal, "iqn.2026-11.dev.test:pool", "iqn.2026-11.dev.stave:db")
		defer func() { ic.c.Close(); waitNoSessions(t, d, "iqn.2026-11.dev.stave:db") }()
		d.mustCLI("snapshot", "create", "db", "s1")
		d.mustCLI("snapshot", "create", "db@s2")
		d.wantFail("already", "snapshot", "create", "db", "s1")
		ic.write(t, 8, b)
		want = b
		if got := ic.read(t, 8, 4096); !bytes.Equal(got, b) {
			t.Fatalf("read after second write: % x...", got[:8])
		}
		var ss []adminapi.Snapshot
		if err := json.Unmarshal([]byte(d.mustCLI("snapshot", "list", "db", "-o", "json")), &ss); err != nil || len(ss) != 2 {
			t.Fatalf("snapshot list db: %+v %v", ss, err)
		}
		if out := d.mustCLI("snapshot", "list"); !strings.Contains(out, "s1") || !strings.Contains(out, "s2") {
			t.Errorf("snapshot list:\n%s", out)
		}
		d.wantFail(`no snapshot "nope"`, "volume", "revert", "db", "nope")

		t.Run("clone", func(t *testing.T) {
			d.mustCLI("volume", "clone", "db", "s1", "c1")
			d.wantFail(`no snapshot "nope"`, "volume", "clone", "db", "nope", "c0")
			d.mustCLI("volume", "clone", "db@s2", "c2")
			var cv adminapi.Volume
			if err := json.Unmarshal([]byte(d.mustCLI("volume", "show", "c1", "-o", "json")), &cv); err != nil ||
				cv.Origin != "db@s1" || cv.Size != 16<<20 || !cv.Exported {
				t.Errorf("clone: %+v %v", cv, err)
			}
			icc := dialISCSI(t, d.portal, "iqn.2026-11.dev.test:clone", "iqn.2026-11.dev.stave:c1")
			defer icc.c.Close()
			if got := icc.read(t, 8, 4096); !bytes.Equal(got, a) {
				t.Errorf("clone reads % x..., want the snapshot's a1", got[:8])
			}
		})

		t.Run("revert", func(t *testing.T) {
			d.wantFail("iqn.2026-11.dev.test:pool", "volume", "revert", "db", "s1")
			ic.c.Close()
			waitNoSessions(t, d, "iqn.2026-11.dev.stave:db")
			out := d.mustCLI("volume", "revert", "db", "s1")
			want = a
			if !strings.Contains(out, "reverted volume db to snapshot s1") {
				t.Errorf("revert printed %q", out)
			}
			ic2 := dialISCSI(t, d.portal, "iqn.2026-11.dev.test:pool", "iqn.2026-11.dev.stave:db")
			defer ic2.c.Close()
			if got := ic2.read(t, 8, 4096); !bytes.Equal(got, a) {
				t.Errorf("after revert reads % x..., want a1", got[:8])
			}
		})

		d.mustCLI("snapshot", "delete", "db", "s2")
		d.wantFail(`no snapshot "s2"`, "snapshot", "delete", "db@s2")
	})

	t.Run("scrub", func(t *testing.T) {
		out := d.need(t, "pool", "scrub")
		if !strings.Contains(out, "scrub done") || strings.Contains(out, "\r") {
			t.Errorf("pool scrub printed %q", out)
		}
	})

	t.Run("add-device", func(t *testing.T) {
		out := d.need(t, "pool", "add-device", devs[3])
		if !strings.Contains(out, "4 device(s)") {
			t.Errorf("add-device printed %q", out)
		}
		d.wantFail("already", "pool", "add-device", devs[3])
	})

	t.Run("replace-device", func(t *testing.T) {
		d.wantFail("not a device of the pool", "pool", "replace-device", devs[4]+"x", devs[4])
		d.wantFail("device 0 of this pool already", "pool", "replace-device", devs[1], devs[0])
		out := d.need(t, "pool", "replace-device", devs[1], devs[4])
		if !strings.Contains(out, "replaced "+devs[1]+" with "+devs[4]) || !strings.Contains(out, "replace-device: ") {
			t.Errorf("replace-device printed %q", out)
		}
		st := poolStatusJSON(t, d)
		if st.Devices[1].Path != devs[4] || st.State != "ok" {
			t.Errorf("after replace: %+v", st)
		}
		if n := len(st.Operations); n == 0 || st.Operations[n-1].State != adminapi.OpDone {
			t.Errorf("operations: %+v", st.Operations)
		}
	})

	t.Run("restart", func(t *testing.T) {
		d.stop()
		d.start()
		ic := dialISCSI(t, d.portal, "iqn.2026-11.dev.test:pool", "iqn.2026-11.dev.stave:db")
		defer func() { ic.c.Close(); waitNoSessions(t, d, "iqn.2026-11.dev.stave:db") }()
		if got := ic.read(t, 8, 4096); !bytes.Equal(got, want) {
			t.Errorf("after restart reads % x..., want % x...", got[:8], want[:8])
		}
		if m := metrics(t, d); !strings.Contains(m, "stave_pool") {
			t.Error("/metrics has no stave_pool metrics")
		}
		if vs := d.volumes(); len(vs) < 3 || !vs[0].Exported {
			t.Errorf("volumes after restart: %+v", vs)
		}
	})

	t.Run("recover", func(t *testing.T) {
		data := filepath.Join(d.dir, "data")
		d.stop()
		out := d.need(t, "pool", "recover", "--data-dir", data)
		if !strings.Contains(out, "rebuilt the index") {
			t.Errorf("pool recover printed %q", out)
		}
	})
	if d.cancel == nil {
		d.start()
	}
	t.Run("after-recover", func(t *testing.T) {
		ic := dialISCSI(t, d.portal, "iqn.2026-11.dev.test:pool", "iqn.2026-11.dev.stave:db")
		defer func() { ic.c.Close(); waitNoSessions(t, d, "iqn.2026-11.dev.stave:db") }()
		if got := ic.read(t, 8, 4096); !bytes.Equal(got, want) {
			t.Errorf("after recover reads % x..., want % x...", got[:8], want[:8])
		}
	})

	t.Run("open-failure", func(t *testing.T) {
		pj := filepath.Join(d.dir, "data", poolMetaDir, "pool.json")
		good, err := os.ReadFile(pj)
		if err != nil {
			t.Fatal(err)
		}
		d.stop()
		if err := os.WriteFile(pj, []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
		d.start()
		defer func() {
			d.stop()
			if err := os.WriteFile(pj, good, 0o600); err != nil {
				t.Error(err)
			}
		}()
		d.wantFail("could not be opened at start-up", "pool", "status")
		d.wantFail("could not be opened at start-up", "pool", "scrub")
		d.wantFail("could not be opened at start-up", "pool", "replace-device", devs[0], devs[4])
		d.wantFail("stave pool recover --data-dir", "volume", "create", "x", "--size", "1MiB")
		var v adminapi.Volume
		if err := json.Unmarshal([]byte(d.mustCLI("volume", "show", "db", "-o", "json")), &v); err != nil || v.Exported {
			t.Errorf("pool volume with the pool not open: %+v %v", v, err)
		}
	})
	if d.cancel == nil {
		d.start()
	}

	t.Run("delete", func(t *testing.T) {
		for _, v := range d.volumes() {
			d.mustCLI("volume", "delete", v.Name)
		}
		if st := poolStatusJSON(t, d); st.Volumes != 0 {
			t.Errorf("pool volumes after delete: %d", st.Volumes)
		}
	})

	t.Run("foreign-device", func(t *testing.T) {
		d2 := newDaemon(t)
		d2.wantFail("Stave superblock", poolCreateArgs([]string{devs[0]})...)
	})
}

// metrics fetches /metrics through the API socket.
func metrics(t *testing.T, d *daemon) string {
	t.Helper()
	c, err := net.Dial("unix", d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("GET /metrics HTTP/1.0\r\nHost: stave\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	_, _ = b.ReadFrom(c)
	return b.String()
}

// waitNoSessions waits until the daemon lists no session for target.
func waitNoSessions(t *testing.T, d *daemon, target string) {
	t.Helper()
	for range 100 {
		var ss []adminapi.Session
		if err := json.Unmarshal([]byte(d.mustCLI("session", "list", "-o", "json")), &ss); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, s := range ss {
			if s.TargetName == target {
				n++
			}
		}
		if n == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("sessions to %s still listed after 5s", target)
}

// iscsiConn is a logged-in connection for a few READ(10)/WRITE(10)
// commands, one at a time, with immediate data (RFC 7143 §11.3).
type iscsiConn struct {
	c         net.Conn
	itt       uint32
	cmdSN     uint32
	expStatSN uint32
}

func dialISCSI(t *testing.T, portal, initiator, target string) *iscsiConn {
	t.Helper()
	c, rsp := loginRaw(t, portal, initiator, target)
	if rsp[36] != 0 || rsp[37] != 0 {
		t.Fatalf("login to %s refused: status %d/%d", target, rsp[36], rsp[37])
	}
	_ = c.SetDeadline(time.Time{})
	return &iscsiConn{c: c, itt: 10, cmdSN: 1, expStatSN: binary.BigEndian.Uint32(rsp[24:]) + 1}
}

// command sends one SCSI Command PDU and returns the Data-In payload and
// the SCSI status.
func (ic *iscsiConn) command(t *testing.T, cdb []byte, write []byte, readLen int) ([]byte, byte) {
	t.Helper()
	ic.itt++
	bhs := make([]byte, 48)
	bhs[0] = 0x01
	bhs[1] = 0x80 | 1 // F, ATTR simple
	edtl := readLen
	if write != nil {
		bhs[1] |= 0x20
		edtl = len(write)
		bhs[5], bhs[6], bhs[7] = byte(len(write)>>16), byte(len(write)>>8), byte(len(write))
	} else {
		bhs[1] |= 0x40
	}
	binary.BigEndian.PutUint32(bhs[16:], ic.itt)
	binary.BigEndian.PutUint32(bhs[20:], uint32(edtl))
	binary.BigEndian.PutUint32(bhs[24:], ic.cmdSN)
	binary.BigEndian.PutUint32(bhs[28:], ic.expStatSN)
	copy(bhs[32:], cdb)
	ic.cmdSN++
	_ = ic.c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := ic.c.Write(append(bhs, write...)); err != nil {
		t.Fatal(err)
	}
	var data []byte
	for {
		p := readPDU(t, ic.c)
		dlen := int(p[5])<<16 | int(p[6])<<8 | int(p[7])
		switch p[0] & 0x3f {
		case 0x20: // NOP-In
			continue
		case 0x25: // Data-In
			data = append(data, p[48:48+dlen]...)
			if p[1]&0x01 != 0 { // S: status in this PDU
				ic.expStatSN = binary.BigEndian.Uint32(p[24:]) + 1
				return data, p[3]
			}
		case 0x21: // SCSI Response
			ic.expStatSN = binary.BigEndian.Uint32(p[24:]) + 1
			return data, p[3]
		default:
			t.Fatalf("unexpected PDU opcode 0x%02x", p[0]&0x3f)
		}
	}
}

func (ic *iscsiConn) write(t *testing.T, lba uint32, b []byte) {
	t.Helper()
	cdb := []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(cdb[2:], lba)
	binary.BigEndian.PutUint16(cdb[7:], uint16(len(b)/512))
	if _, st := ic.command(t, cdb, b, 0); st != 0 {
		t.Fatalf("WRITE(10) lba %d: status 0x%02x", lba, st)
	}
}

func (ic *iscsiConn) read(t *testing.T, lba uint32, n int) []byte {
	t.Helper()
	cdb := []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(cdb[2:], lba)
	binary.BigEndian.PutUint16(cdb[7:], uint16(n/512))
	data, st := ic.command(t, cdb, nil, n)
	if st != 0 || len(data) != n {
		t.Fatalf("READ(10) lba %d: status 0x%02x, %d bytes", lba, st, len(data))
	}
	return data
}

func TestProgressBar(t *testing.T) {
	p := adminapi.Progress{Done: 53 << 20, Total: 100 << 20}
	if got, want := progressBar(p, 10), "[=====>    ] 53% 53 MiB/100 MiB"; got != want {
		t.Errorf("progressBar = %q, want %q", got, want)
	}
	if got := progressBar(adminapi.Progress{Done: 1, Total: 1}, 4); got != "[====] 100% 1 B/1 B" {
		t.Errorf("full bar = %q", got)
	}
	if got := progressText(adminapi.Progress{Total: 0, Repaired: 2}); got != "0% 0 B/0 B, 2 repaired" {
		t.Errorf("progressText = %q", got)
	}
	if isTerminal(&bytes.Buffer{}) {
		t.Error("a buffer is a terminal")
	}
}

// TestFileVolumeData checks the raw iSCSI helper on a file volume.
func TestFileVolumeData(t *testing.T) {
	d := newDaemon(t)
	d.mustCLI("volume", "create", "f", "--size", "1MiB")
	ic := dialISCSI(t, d.portal, "iqn.2026-11.dev.test:f", "iqn.2026-11.dev.stave:f")
	defer ic.c.Close()
	a := bytes.Repeat([]byte{0x5a}, 4096)
	ic.write(t, 0, a)
	if got := ic.read(t, 0, 4096); !bytes.Equal(got, a) {
		t.Errorf("read back % x...", got[:8])
	}
}
