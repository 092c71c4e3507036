package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"stave.dev/stave/cluster"
	"stave.dev/stave/internal/volume"
	"stave.dev/stave/target/scsi/pr"
)

// The etcd tests: everything the cluster keeps in etcd (volume specs with
// ACL and CHAP secrets, persistent reservations) survives a clean restart
// and a kill -9 of the daemon, with the data intact; a data dir of an
// older release is migrated into etcd; and a daemon runs against an
// external etcd.

const (
	etcdInitiator = "iqn.2026-11.dev.stave.test:etcd"
	etcdOther     = "iqn.2026-11.dev.stave.test:other"
	etcdPRKey     = 0xabc123
)

// miniConn is a minimal iSCSI initiator (one connection, no digests, no
// CHAP) for SCSI commands the host has no tool for.
type miniConn struct {
	c         net.Conn
	itt       uint32
	cmdSN     uint32
	expStatSN uint32
}

// miniLogin logs in to target as initiator. It returns the connection or
// the Login Response's status class and detail when refused.
func miniLogin(t *testing.T, portal, initiator, target string) (*miniConn, uint16) {
	t.Helper()
	c, err := net.DialTimeout("tcp", portal, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	data := []byte("InitiatorName=" + initiator + "\x00SessionType=Normal\x00TargetName=" + target +
		"\x00HeaderDigest=None\x00DataDigest=None\x00")
	bhs := make([]byte, 48)
	bhs[0] = 0x40 | 0x03     // immediate, Login Request
	bhs[1] = 0x80 | 1<<2 | 3 // T, CSG=operational, NSG=full feature
	bhs[5], bhs[6], bhs[7] = byte(len(data)>>16), byte(len(data)>>8), byte(len(data))
	copy(bhs[8:14], []byte{0x80, 0x12, 0x34, 0x56, 0x00, 0x02}) // ISID, random format
	binary.BigEndian.PutUint32(bhs[16:], 1)
	binary.BigEndian.PutUint32(bhs[24:], 1)
	pdu := append(bhs, data...)
	for len(pdu)%4 != 0 {
		pdu = append(pdu, 0)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(pdu); err != nil {
		t.Fatal(err)
	}
	rsp := miniRead(t, c)
	if rsp[0]&0x3f != 0x23 {
		t.Fatalf("login: opcode 0x%02x, want Login Response", rsp[0]&0x3f)
	}
	if st := binary.BigEndian.Uint16(rsp[36:]); st != 0 {
		c.Close()
		return nil, st
	}
	_ = c.SetDeadline(time.Time{})
	return &miniConn{c: c, itt: 10, cmdSN: 1, expStatSN: binary.BigEndian.Uint32(rsp[24:]) + 1}, 0
}

// miniRead reads one PDU (no digests): BHS and padded data.
func miniRead(t *testing.T, c net.Conn) []byte {
	t.Helper()
	bhs := make([]byte, 48)
	if _, err := io.ReadFull(c, bhs); err != nil {
		t.Fatalf("reading PDU: %v", err)
	}
	n := int(bhs[4])*4 + (int(bhs[5])<<16 | int(bhs[6])<<8 | int(bhs[7]))
	rest := make([]byte, (n+3)&^3)
	if _, err := io.ReadFull(c, rest); err != nil {
		t.Fatalf("reading PDU data: %v", err)
	}
	return append(bhs, rest...)
}

// command runs one SCSI command (data-out as immediate data) and returns
// the Data-In payload, the status and the sense data.
func (m *miniConn) command(t *testing.T, cdb, write []byte, readLen int) ([]byte, byte, []byte) {
	t.Helper()
	m.itt++
	bhs := make([]byte, 48)
	bhs[0] = 0x01
	bhs[1] = 0x80 | 1 // F, simple
	edtl := readLen
	if write != nil {
		bhs[1] |= 0x20
		edtl = len(write)
		bhs[5], bhs[6], bhs[7] = byte(len(write)>>16), byte(len(write)>>8), byte(len(write))
	} else if readLen > 0 {
		bhs[1] |= 0x40
	}
	binary.BigEndian.PutUint32(bhs[16:], m.itt)
	binary.BigEndian.PutUint32(bhs[20:], uint32(edtl))
	binary.BigEndian.PutUint32(bhs[24:], m.cmdSN)
	binary.BigEndian.PutUint32(bhs[28:], m.expStatSN)
	copy(bhs[32:], cdb)
	m.cmdSN++
	pdu := append(bhs, write...)
	for len(pdu)%4 != 0 {
		pdu = append(pdu, 0)
	}
	_ = m.c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := m.c.Write(pdu); err != nil {
		t.Fatal(err)
	}
	var data []byte
	for {
		p := miniRead(t, m.c)
		dlen := int(p[5])<<16 | int(p[6])<<8 | int(p[7])
		switch p[0] & 0x3f {
		case 0x20: // NOP-In
		case 0x25: // Data-In
			data = append(data, p[48:48+dlen]...)
			if p[1]&0x01 != 0 {
				m.expStatSN = binary.BigEndian.Uint32(p[24:]) + 1
				return data, p[3], nil
			}
		case 0x21: // SCSI Response; sense data is SenseLength(2) + sense
			m.expStatSN = binary.BigEndian.Uint32(p[24:]) + 1
			var sense []byte
			if dlen >= 2 {
				sense = p[50 : 48+dlen]
			}
			return data, p[3], sense
		default:
			t.Fatalf("unexpected PDU opcode 0x%02x", p[0]&0x3f)
		}
	}
}

// must runs a command, retrying once on CHECK CONDITION with UNIT
// ATTENTION (a capacity change or a reservation change queued one), and
// fails t unless it ends GOOD.
func (m *miniConn) must(t *testing.T, what string, cdb, write []byte, readLen int) []byte {
	t.Helper()
	for try := 0; ; try++ {
		data, st, sense := m.command(t, cdb, write, readLen)
		if st == 0 {
			return data
		}
		if st == 0x02 && len(sense) > 2 && sense[2]&0x0f == 0x06 && try < 3 {
			continue
		}
		t.Fatalf("%s: status 0x%02x sense % x", what, st, sense)
	}
}

func (m *miniConn) write(t *testing.T, lba uint32, b []byte) {
	cdb := []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(cdb[2:], lba)
	binary.BigEndian.PutUint16(cdb[7:], uint16(len(b)/512))
	m.must(t, "WRITE(10)", cdb, b, 0)
}

func (m *miniConn) read(t *testing.T, lba uint32, n int) []byte {
	cdb := []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(cdb[2:], lba)
	binary.BigEndian.PutUint16(cdb[7:], uint16(n/512))
	return m.must(t, "READ(10)", cdb, nil, n)
}

// capacity returns the LU's size in bytes (READ CAPACITY(16)).
func (m *miniConn) capacity(t *testing.T) int64 {
	cdb := make([]byte, 16)
	cdb[0], cdb[1], cdb[13] = 0x9e, 0x10, 32
	d := m.must(t, "READ CAPACITY(16)", cdb, nil, 32)
	return int64(binary.BigEndian.Uint64(d[0:])+1) * int64(binary.BigEndian.Uint32(d[8:]))
}

// prOut sends PERSISTENT RESERVE OUT (SPC-4 §6.15) with a 24-byte
// parameter list.
func (m *miniConn) prOut(t *testing.T, sa, typ byte, key, saKey uint64, aptpl bool) {
	cdb := make([]byte, 10)
	cdb[0], cdb[1], cdb[2], cdb[8] = 0x5f, sa, typ, 24
	p := make([]byte, 24)
	binary.BigEndian.PutUint64(p[0:], key)
	binary.BigEndian.PutUint64(p[8:], saKey)
	if aptpl {
		p[20] = 1
	}
	m.must(t, fmt.Sprintf("PERSISTENT RESERVE OUT sa %d", sa), cdb, p, 0)
}

// prKeys returns the registered keys (PERSISTENT RESERVE IN, READ KEYS).
func (m *miniConn) prKeys(t *testing.T) []uint64 {
	cdb := []byte{0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0}
	d := m.must(t, "PERSISTENT RESERVE IN READ KEYS", cdb, nil, 4096)
	n := int(binary.BigEndian.Uint32(d[4:]))
	var keys []uint64
	for i := 8; i+8 <= 8+n && i+8 <= len(d); i += 8 {
		keys = append(keys, binary.BigEndian.Uint64(d[i:]))
	}
	return keys
}

// prReservation returns the reservation's key and type (READ
// RESERVATION); ok is false when there is none.
func (m *miniConn) prReservation(t *testing.T) (key uint64, typ byte, ok bool) {
	cdb := []byte{0x5e, 1, 0, 0, 0, 0, 0, 0x10, 0, 0}
	d := m.must(t, "PERSISTENT RESERVE IN READ RESERVATION", cdb, nil, 4096)
	if binary.BigEndian.Uint32(d[4:]) < 16 {
		return 0, 0, false
	}
	return binary.BigEndian.Uint64(d[8:]), d[21] & 0x0f, true
}

// etcdClient connects to the etcd a daemon uses: its embedded member's
// URL from DATA/etcd/endpoints, or the given endpoints.
func etcdClient(t *testing.T, d *daemon, endpoints ...string) *clientv3.Client {
	t.Helper()
	if len(endpoints) == 0 {
		b, err := os.ReadFile(filepath.Join(d.DataDir(), "etcd", "endpoints"))
		if err != nil {
			t.Fatal(err)
		}
		endpoints = strings.Split(strings.TrimSpace(string(b)), ",")
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// etcdGet returns the value at key, or nil.
func etcdGet(t *testing.T, cli *clientv3.Client, key string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatalf("etcd get %s: %v", key, err)
	}
	if len(r.Kvs) == 0 {
		return nil
	}
	return r.Kvs[0].Value
}

// showJSON is `stave volume show NAME -o json`, decoded.
func showJSON(t *testing.T, d *daemon, name string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(d.MustCLI("volume", "show", name, "-o", "json")), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestEtcdRestartAndCrash(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t)
	d.MustCLI("volume", "create", "secure", "--size", "8MiB", "--allow", etcdInitiator,
		"--chap", "etcd-user:etcd-secret-0123", "--mutual-chap", "etcd-target:etcd-target-4567")
	d.MustCLI("volume", "create", "resv", "--size", "16MiB", "--allow", etcdInitiator)
	before := map[string]map[string]any{"secure": showJSON(t, d, "secure"), "resv": showJSON(t, d, "resv")}

	pattern := bytes.Repeat([]byte("stave-etcd-pattern:"), 4096/19+1)[:4096]
	m, st := miniLogin(t, d.Portal(), etcdInitiator, staveIQN("resv"))
	if m == nil {
		t.Fatalf("login to resv refused: 0x%04x", st)
	}
	m.write(t, 100, pattern)
	m.prOut(t, 0, 0, 0, etcdPRKey, true)  // REGISTER, APTPL
	m.prOut(t, 1, 1, etcdPRKey, 0, false) // RESERVE, Write Exclusive
	m.c.Close()

	check := func(when string) {
		t.Helper()
		for name, want := range before {
			got := showJSON(t, d, name)
			for _, k := range []string{"naa", "serial", "uuid", "size", "chap_user", "mutual_chap_user", "acl", "exported"} {
				if fmt.Sprint(got[k]) != fmt.Sprint(want[k]) {
					t.Errorf("%s: volume %s %s = %v, want %v", when, name, k, got[k], want[k])
				}
			}
		}
		cli := etcdClient(t, d)
		var spec volume.Spec
		if err := json.Unmarshal(etcdGet(t, cli, cluster.VolumeSpecKey("secure")), &spec); err != nil {
			t.Fatalf("%s: spec of secure in etcd: %v", when, err)
		}
		if spec.CHAP == nil || spec.CHAP.Secret != "etcd-secret-0123" || spec.CHAP.MutualSecret != "etcd-target-4567" {
			t.Errorf("%s: CHAP secrets in etcd: %+v", when, spec.CHAP)
		}
		var prs pr.State
		if err := json.Unmarshal(etcdGet(t, cli, cluster.ReservationKey("resv")), &prs); err != nil || !prs.APTPL {
			t.Errorf("%s: reservations of resv in etcd: %+v %v", when, prs, err)
		}
		// The ACL and CHAP still apply: another initiator and a login
		// without CHAP are refused.
		if m, st := miniLogin(t, d.Portal(), etcdOther, staveIQN("resv")); m != nil || st != 0x0202 {
			t.Errorf("%s: initiator outside the ACL: login status 0x%04x, want 0x0202", when, st)
		}
		if m, st := miniLogin(t, d.Portal(), etcdInitiator, staveIQN("secure")); m != nil || st>>8 != 2 {
			t.Errorf("%s: login without CHAP to a CHAP volume: status 0x%04x, want class 2", when, st)
		}
		m, st := miniLogin(t, d.Portal(), etcdInitiator, staveIQN("resv"))
		if m == nil {
			t.Fatalf("%s: login to resv refused: 0x%04x", when, st)
		}
		defer m.c.Close()
		if keys := m.prKeys(t); len(keys) != 1 || keys[0] != etcdPRKey {
			t.Errorf("%s: registered keys %x, want [%x]", when, keys, etcdPRKey)
		}
		if key, typ, ok := m.prReservation(t); !ok || key != etcdPRKey || typ != 1 {
			t.Errorf("%s: reservation key %x type %d held %v, want %x type 1", when, key, typ, ok, etcdPRKey)
		}
		if got := m.read(t, 100, 4096); !bytes.Equal(got, pattern) {
			t.Errorf("%s: data at LBA 100 changed", when)
		}
	}
	check("before restart")
	d.Restart()
	check("after restart")
	d.Kill()
	d.start()
	check("after kill -9")

	// Online grow, then a crash: the size stays, in etcd and in the file.
	m, _ = miniLogin(t, d.Portal(), etcdInitiator, staveIQN("resv"))
	if got := m.capacity(t); got != 16<<20 {
		t.Fatalf("capacity %d before resize", got)
	}
	d.MustCLI("volume", "resize", "resv", "--size", "32MiB")
	_, st2, sense := m.command(t, []byte{0, 0, 0, 0, 0, 0}, nil, 0) // TEST UNIT READY
	if st2 != 0x02 || len(sense) < 14 || sense[2]&0x0f != 0x06 || sense[12] != 0x2a || sense[13] != 0x09 {
		t.Errorf("after resize: TEST UNIT READY status 0x%02x sense % x, want UNIT ATTENTION CAPACITY DATA HAS CHANGED (2a/09)", st2, sense)
	}
	if got := m.capacity(t); got != 32<<20 {
		t.Errorf("capacity %d after resize, want %d", got, 32<<20)
	}
	m.c.Close()
	if out, err := d.CLI("volume", "resize", "resv", "--size", "8MiB"); err == nil || !strings.Contains(out, "shrinking is not supported") {
		t.Errorf("shrink: %v\n%s", err, out)
	}
	d.Kill()
	d.start()
	before["resv"]["size"] = float64(32 << 20)
	check("after resize and kill -9")
	if st, err := os.Stat(filepath.Join(d.DataDir(), "volumes", "resv", "data")); err != nil || st.Size() != 32<<20 {
		t.Errorf("backing file: %v %v", st, err)
	}

	// The status the daemon writes, and the etcd health metric.
	var vs cluster.VolumeStatus
	if err := json.Unmarshal(etcdGet(t, etcdClient(t, d), cluster.VolumeStatusKey("resv")), &vs); err != nil || !vs.Exported || vs.Size != 32<<20 {
		t.Errorf("status of resv in etcd: %+v %v", vs, err)
	}
	client := metricsClient(d)
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://stave/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `stave_etcd_up{mode="embedded"} 1`) {
		t.Errorf("/metrics lacks stave_etcd_up 1:\n%s", grepLines(string(body), "etcd"))
	}
}

// grepLines returns the lines of s that contain substr.
func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestEtcdMigratesOldDataDir starts a daemon on a data dir written by a
// release before etcd (spec and PR files) and finds the volume, its
// reservations and its data.
func TestEtcdMigratesOldDataDir(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t)
	d.Stop()
	if err := os.RemoveAll(d.DataDir()); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	old, err := volume.Open(volume.Config{Dir: d.DataDir()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Create(ctx, volume.CreateRequest{Name: "legacy", Size: 4 << 20, ACL: []string{etcdInitiator}}); err != nil {
		t.Fatal(err)
	}
	st := pr.State{APTPL: true, Registrations: []pr.Registration{{Key: etcdPRKey, InitiatorName: etcdInitiator}}}
	if err := (pr.FileStore{Path: old.PRPath("legacy")}).Save(ctx, st); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(old.DataPath("legacy"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	pattern := bytes.Repeat([]byte{0x5a}, 4096)
	if _, err := f.WriteAt(pattern, 100*512); err != nil {
		t.Fatal(err)
	}
	f.Close()

	d.start()
	if v := showJSON(t, d, "legacy"); v["exported"] != true {
		t.Fatalf("migrated volume: %v", v)
	}
	for _, p := range []string{"volume.json.migrated", "pr.json.migrated"} {
		if _, err := os.Stat(filepath.Join(d.DataDir(), "volumes", "legacy", p)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	m, code := miniLogin(t, d.Portal(), etcdInitiator, staveIQN("legacy"))
	if m == nil {
		t.Fatalf("login refused: 0x%04x", code)
	}
	if keys := m.prKeys(t); len(keys) != 1 || keys[0] != etcdPRKey {
		t.Errorf("migrated keys %x", keys)
	}
	if !bytes.Equal(m.read(t, 100, 4096), pattern) {
		t.Error("migrated data differs")
	}
	m.c.Close()
	d.Restart() // a second start imports nothing again and keeps everything
	if v := showJSON(t, d, "legacy"); v["exported"] != true {
		t.Fatalf("after restart: %v", v)
	}
}

// TestEtcdExternal runs the daemon against an etcd it does not embed (a
// member started by the test) and checks that the catalogue lives there.
func TestEtcdExternal(t *testing.T) {
	requireE2E(t)
	ext, err := cluster.Open(context.Background(), cluster.Config{DataDir: t.TempDir(), NodeID: "00000000000000ee",
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer ext.Close()
	eps := ext.ClientURLs()
	d := startDaemon(t, "--etcd-endpoints", eps[0])
	d.MustCLI("volume", "create", "outside", "--size", "4MiB", "--chap", "ext-user:ext-secret-0123")
	if _, err := os.Stat(filepath.Join(d.DataDir(), "etcd")); !os.IsNotExist(err) {
		t.Errorf("a daemon with --etcd-endpoints made %s/etcd: %v", d.DataDir(), err)
	}
	var spec volume.Spec
	if err := json.Unmarshal(etcdGet(t, etcdClient(t, d, eps...), cluster.VolumeSpecKey("outside")), &spec); err != nil || spec.CHAP == nil {
		t.Fatalf("spec in the external etcd: %+v %v", spec, err)
	}
	d.Kill()
	d.start()
	if v := showJSON(t, d, "outside"); v["exported"] != true || v["chap_user"] != "ext-user" {
		t.Errorf("after kill -9: %v", v)
	}
	// A change made in etcd by someone else (another node's API) takes
	// effect here without a request: the reconcile loop follows the watch.
	spec.ACL = []string{etcdOther}
	b, _ := json.Marshal(spec)
	cli := etcdClient(t, d, eps...)
	if _, err := cli.Put(context.Background(), cluster.VolumeSpecKey("outside"), string(b)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		v := showJSON(t, d, "outside")
		if fmt.Sprint(v["acl"]) == fmt.Sprint([]any{etcdOther}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ACL change in etcd not applied: %v", v)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if m, st := miniLogin(t, d.Portal(), etcdInitiator, staveIQN("outside")); m != nil || st != 0x0202 {
		t.Errorf("login outside the new ACL: status 0x%04x, want 0x0202 (authorization failure)", st)
	}
	// The volume's delete in etcd unexports it.
	if _, err := cli.Delete(context.Background(), cluster.VolumeSpecKey("outside")); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for strings.Contains(d.MustCLI("volume", "list"), "outside") || !strings.Contains(d.Log(), "volume unexported") {
		if time.Now().After(deadline) {
			t.Fatalf("delete in etcd not applied:\n%s", d.MustCLI("volume", "list"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
