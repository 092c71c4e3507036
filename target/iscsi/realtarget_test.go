package iscsi

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"stave.dev/stave/target/scsi"
)

// memBlock is an in-memory scsi.BlockDevice.
type memBlock struct {
	mu   sync.RWMutex
	data []byte
}

func (m *memBlock) Size() int64 { return int64(len(m.data)) }
func (m *memBlock) ReadAt(ctx context.Context, p []byte, off int64) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	copy(p, m.data[off:])
	return nil
}
func (m *memBlock) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.data[off:], p)
	return nil
}
func (m *memBlock) Flush(ctx context.Context) error { return nil }
func (m *memBlock) Unmap(ctx context.Context, off, length int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+length])
	return nil
}

// startRealServer serves a scsi.Target with one 64 MiB LU.
func startRealServer(t testing.TB, mods ...func(*Config)) *testServer {
	t.Helper()
	lu, err := scsi.NewLU(scsi.LUConfig{
		Logger: testLogger(t), Device: &memBlock{data: make([]byte, 64<<20)}, BlockSize: 512,
		Name: "vol0", Serial: "0123456789", NAA: [16]byte{0x60, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
	})
	if err != nil {
		t.Fatal(err)
	}
	tgt := scsi.NewTarget(scsi.TargetConfig{Logger: testLogger(t), LUNs: map[uint64]*scsi.LU{0: lu}})
	return startServer(t, append([]func(*Config){func(c *Config) {
		c.Targets = staticTargets{{Name: testTarget, Device: tgt}}
	}}, mods...)...)
}

func TestRealTargetReadWrite(t *testing.T) {
	ts := startRealServer(t)
	ti := newInitiator(t, dialTCP(t, ts.addr), 20)
	ti.login(testTarget)
	// The first command reports the power-on unit attention; clear it.
	for range 3 {
		if res := ti.do([]byte{0, 0, 0, 0, 0, 0}, 0, nil, false); res.status == 0 {
			break
		}
	}
	out := bytes.Repeat([]byte("stave!"), 200*512/6+1)[:200*512]
	if res := ti.do(cdb16(0x8a, 8, 200), uint32(len(out)), out, false); res.status != 0 {
		t.Fatalf("WRITE(16): %d sense %x", res.status, res.sense)
	}
	res := ti.do(cdb10(0x28, 8, 200), uint32(len(out)), nil, true)
	if res.status != 0 || !bytes.Equal(res.data, out) {
		t.Fatalf("READ(10): %d, equal %v", res.status, bytes.Equal(res.data, out))
	}
	// A 3 MiB write grows the task buffer past its initial size.
	big := make([]byte, 3<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	if res := ti.do(cdb16(0x8a, 4096, uint32(len(big)/512)), uint32(len(big)), big, false); res.status != 0 || res.r2ts < 2 {
		t.Fatalf("3 MiB WRITE(16): %d sense %x, %d R2Ts", res.status, res.sense, res.r2ts)
	}
	res = ti.do(cdb16(0x88, 4096, uint32(len(big)/512)), uint32(len(big)), nil, true)
	if res.status != 0 || !bytes.Equal(res.data, big) {
		t.Fatalf("3 MiB READ(16): %d, equal %v", res.status, bytes.Equal(res.data, big))
	}
	ti.logout()
	waitFor(t, "session removal", func() bool { return len(ts.srv.Sessions()) == 0 })
	waitFor(t, "tasks released", func() bool { return ts.srv.pools.live.Load() == 0 })
}

// TestLibiscsiRealTarget runs iscsi-test-cu's iSCSI suite (and, with
// STAVE_LIBISCSI_SUITE set, that suite instead) against the real SCSI layer.
func TestLibiscsiRealTarget(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	ts := startRealServer(t)
	suite := "iSCSI"
	if s := os.Getenv("STAVE_LIBISCSI_SUITE"); s != "" {
		suite = s
	}
	out, err := runTool(t, 5*time.Minute, "iscsi-test-cu", "--test="+suite, "--dataloss",
		"-i", "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test", libiscsiURL(ts))
	var summary, failed []string
	cur := ""
	for _, l := range strings.Split(out, "\n") {
		if i := strings.Index(l, "Test: "); i >= 0 {
			cur = strings.Fields(l[i+6:])[0]
		}
		if strings.Contains(l, "Test:") || strings.Contains(l, "tests ") {
			summary = append(summary, l)
		}
		if strings.HasPrefix(strings.TrimSpace(l), "FAILED") || strings.HasSuffix(l, "...FAILED") {
			failed = append(failed, cur)
		}
	}
	t.Logf("iscsi-test-cu %s:\n%s", suite, strings.Join(summary, "\n"))
	if err != nil && len(failed) == 0 {
		t.Fatalf("iscsi-test-cu: %v\n%s", err, out)
	}
	for _, f := range failed {
		t.Errorf("iscsi-test-cu %s: %s failed", suite, f)
	}
}
