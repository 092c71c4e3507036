package adminapi

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"stave.dev/stave/internal/volume"
)

// fakeTargets records exports and holds fake sessions.
type fakeTargets struct {
	mu        sync.Mutex
	exported  map[string]bool
	sessions  []Session
	failNext  error
	unexports []string
}

func (f *fakeTargets) Export(_ context.Context, s *volume.Spec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failNext; err != nil {
		f.failNext = nil
		return err
	}
	f.exported[s.Name] = true
	return nil
}

func (f *fakeTargets) Unexport(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.exported, name)
	f.unexports = append(f.unexports, name)
	f.sessions = slices.DeleteFunc(f.sessions, func(s Session) bool { return s.TargetName == volume.TargetName(name) })
	return nil
}

func (f *fakeTargets) Exported(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.exported[name]
}

func (f *fakeTargets) Sessions() []Session {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.sessions)
}

type env struct {
	cat  *volume.Catalog
	tg   *fakeTargets
	cl   *Client
	sock string
	srv  *httptest.Server
	s    *Server
}

func shortTempDir(t *testing.T) string {
	t.Helper()
	// Unix socket paths are limited to 108 bytes; t.TempDir can be longer.
	d, err := os.MkdirTemp("", "stv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := shortTempDir(t)
	cat, err := volume.Open(volume.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	tg := &fakeTargets{exported: map[string]bool{}}
	s, err := New(Config{Volumes: cat, Targets: tg, Version: "test-1"})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "api.sock")
	ln, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(s.Handler())
	ts.Listener = ln
	ts.Start()
	t.Cleanup(ts.Close)
	cl, err := NewClient("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &env{cat: cat, tg: tg, cl: cl, sock: sock, srv: ts, s: s}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func apiErr(t *testing.T, err error, code int, substr string) {
	t.Helper()
	var ae *APIError
	if !errors.As(err, &ae) {
		t.Fatalf("error %v is not an *APIError", err)
	}
	if ae.StatusCode != code || !strings.Contains(ae.Message, substr) {
		t.Errorf("got %d %q, want %d containing %q", ae.StatusCode, ae.Message, code, substr)
	}
}

func TestSocketMode(t *testing.T) {
	e := newEnv(t)
	st, err := os.Stat(e.sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Mode().Type() != os.ModeSocket {
		t.Errorf("socket mode %v, want socket 0600", st.Mode())
	}
	if _, err := ListenUnix(e.sock); !errors.Is(err, ErrSocketInUse) {
		t.Errorf("second ListenUnix = %v, want ErrSocketInUse", err)
	}
	long := filepath.Join(filepath.Dir(e.sock), strings.Repeat("x", 120))
	if _, err := ListenUnix(long); err == nil || !strings.Contains(err.Error(), "shorter") {
		t.Errorf("ListenUnix(long path) = %v", err)
	}
	// A stale socket file (no listener) is replaced.
	stale := filepath.Join(filepath.Dir(e.sock), "stale.sock")
	ln, err := ListenUnix(stale)
	if err != nil {
		t.Fatal(err)
	}
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
	ln.Close()
	if _, err := os.Stat(stale); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	ln, err = ListenUnix(stale)
	if err != nil {
		t.Fatalf("ListenUnix over a stale socket: %v", err)
	}
	ln.Close()
	// A regular file is not replaced.
	reg := filepath.Join(filepath.Dir(e.sock), "file")
	if err := os.WriteFile(reg, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenUnix(reg); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("ListenUnix over a regular file = %v", err)
	}
}

func TestVolumeLifecycle(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	v, err := e.cl.CreateVolume(ctx, CreateRequest{Name: "db", Size: 1 << 20,
		ACL:  []string{"iqn.1993-08.org.debian:01:x"},
		CHAP: &volume.CHAP{User: "alice", Secret: "0123456789abc"}})
	if err != nil {
		t.Fatal(err)
	}
	if v.Name != "db" || v.Target != "iqn.2026-11.dev.stave:db" || v.CHAPUser != "alice" || v.Size != 1<<20 || v.BlockSize != 512 || !v.Exported {
		t.Errorf("created %+v", v)
	}
	if !e.tg.exported["db"] {
		t.Error("volume not exported")
	}
	e.tg.sessions = []Session{{InitiatorName: "iqn.1993-08.org.debian:01:x", TargetName: "iqn.2026-11.dev.stave:db", ISID: "023d00000001", TSIH: 1}}

	_, err = e.cl.CreateVolume(ctx, CreateRequest{Name: "db", Size: 1 << 20})
	apiErr(t, err, http.StatusConflict, `volume "db"`)
	_, err = e.cl.CreateVolume(ctx, CreateRequest{Name: "Bad_Name", Size: 1 << 20})
	apiErr(t, err, http.StatusBadRequest, "a-z")
	_, err = e.cl.CreateVolume(ctx, CreateRequest{Name: "x", Size: 1 << 20, ACL: []string{"nope"}})
	apiErr(t, err, http.StatusBadRequest, "iqn.YYYY-MM")
	_, err = e.cl.GetVolume(ctx, "nope")
	apiErr(t, err, http.StatusNotFound, `no volume named "nope"`)
	apiErr(t, e.cl.DeleteVolume(ctx, "nope"), http.StatusNotFound, "nope")

	vs, err := e.cl.ListVolumes(ctx)
	if err != nil || len(vs) != 1 || vs[0].Name != "db" || vs[0].Sessions != 1 {
		t.Fatalf("ListVolumes = %+v, %v", vs, err)
	}
	g, err := e.cl.GetVolume(ctx, "db")
	if err != nil || g.NAA != v.NAA || g.Sessions != 1 {
		t.Fatalf("GetVolume = %+v, %v", g, err)
	}
	ss, err := e.cl.Sessions(ctx)
	if err != nil || len(ss) != 1 || ss[0].TSIH != 1 {
		t.Fatalf("Sessions = %+v, %v", ss, err)
	}
	if err := e.cl.DeleteVolume(ctx, "db"); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(e.tg.unexports, []string{"db"}) || e.tg.exported["db"] {
		t.Errorf("unexports %v", e.tg.unexports)
	}
	if vs, err := e.cl.ListVolumes(ctx); err != nil || len(vs) != 0 {
		t.Errorf("after delete: %v %v", vs, err)
	}
}

func TestSecretsNeverReturned(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	const secret = "s3cr3t-s3cr3t"
	if _, err := e.cl.CreateVolume(ctx, CreateRequest{Name: "v", Size: 4096,
		CHAP: &volume.CHAP{User: "u", Secret: secret, MutualUser: "t", MutualSecret: "other-secret-1"}}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/v1/volumes", "/v1/volumes/v"} {
		b := get(t, e, p, http.StatusOK)
		if strings.Contains(b, secret) || strings.Contains(b, "other-secret-1") {
			t.Errorf("%s leaks a secret: %s", p, b)
		}
	}
}

func TestExportFailureRollsBack(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	e.tg.failNext = errors.New("boom")
	_, err := e.cl.CreateVolume(ctx, CreateRequest{Name: "v", Size: 4096})
	apiErr(t, err, http.StatusInternalServerError, "boom")
	if l := e.cat.List(); len(l) != 0 {
		t.Errorf("catalogue holds %v after failed export", l)
	}
}

func get(t *testing.T, e *env, path string, code int) string {
	t.Helper()
	resp, err := e.cl.hc.Get("http://stave" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != code {
		t.Errorf("GET %s: %d, want %d: %s", path, resp.StatusCode, code, b)
	}
	return string(b)
}

func TestMiscRoutes(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	h, err := e.cl.Health(ctx)
	if err != nil || h.Status != "ok" || h.Version != "test-1" {
		t.Errorf("Health = %+v %v", h, err)
	}
	if _, err := e.cl.CreateVolume(ctx, CreateRequest{Name: "m1", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	_, _ = e.cl.GetVolume(ctx, "absent")
	e.tg.mu.Lock()
	e.tg.sessions = []Session{{InitiatorName: "iqn.2026-11.test:i", ISID: "0x23d000000001", TSIH: 7,
		TargetName: volume.TargetName("m1"), Portal: "127.0.0.1:3260", Type: "Normal", Connections: 1}}
	e.tg.mu.Unlock()
	m := get(t, e, "/metrics", http.StatusOK)
	for _, want := range []string{"go_goroutines", "process_cpu_seconds_total", "go_build_info", "stave_volumes 1",
		`stave_info{version="test-1"} 1`, `stave_volume_size_bytes{volume="m1"} 1.048576e+06`, `stave_volume_allocated_bytes{volume="m1"}`,
		`stave_admin_requests_total{code="201",route="/v1/volumes"} 1`, `stave_admin_requests_total{code="404",route="/v1/volumes/{name}"} 1`,
		`stave_iscsi_session_connections{initiator="iqn.2026-11.test:i",isid="0x23d000000001",portal="127.0.0.1:3260",target="iqn.2026-11.dev.stave:m1",tsih="7",type="Normal"} 1`} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if b := get(t, e, "/v2/whatever", http.StatusNotFound); !strings.Contains(b, `"error"`) {
		t.Errorf("404 body %s", b)
	}
	req, _ := http.NewRequest(http.MethodPut, "http://stave/v1/volumes", nil)
	resp, err := e.cl.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") == "" {
		t.Errorf("PUT: %d allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	resp, err = e.cl.hc.Post("http://stave/v1/volumes", "application/json", strings.NewReader(`{"name":"x","size":4096,"bogus":1}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "bogus") {
		t.Errorf("unknown field: %d %s", resp.StatusCode, b)
	}
}

func TestUnreachable(t *testing.T) {
	cl, err := NewClient("unix:" + filepath.Join(shortTempDir(t), "none.sock"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = cl.ListVolumes(ctxT(t))
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "stave serve") {
		t.Errorf("err = %v", err)
	}
	if _, err := NewClient("tcp:1.2.3.4"); !errors.Is(err, ErrBadAddress) {
		t.Errorf("NewClient(tcp) = %v", err)
	}
}

func TestServeShutsDown(t *testing.T) {
	dir := shortTempDir(t)
	cat, err := volume.Open(volume.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Volumes: cat, Targets: &fakeTargets{exported: map[string]bool{}}})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "a.sock")
	ln, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	cl, _ := NewClient("unix:" + sock)
	defer cl.Close()
	if _, err := cl.Health(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}

// TestConcurrentCreateDelete races creates and deletes of a few names and
// checks that the catalogue and the exports agree at the end.
func TestConcurrentCreateDelete(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	names := []string{"a", "b", "c"}
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			for i := range 10 {
				n := names[(w+i)%len(names)]
				if i%2 == 0 {
					_, err := e.cl.CreateVolume(ctx, CreateRequest{Name: n, Size: 4096})
					var ae *APIError
					if err != nil && !(errors.As(err, &ae) && ae.StatusCode == http.StatusConflict) {
						t.Errorf("create %s: %v", n, err)
					}
				} else {
					err := e.cl.DeleteVolume(ctx, n)
					var ae *APIError
					if err != nil && !(errors.As(err, &ae) && ae.StatusCode == http.StatusNotFound) {
						t.Errorf("delete %s: %v", n, err)
					}
				}
			}
		})
	}
	wg.Wait()
	vs, err := e.cl.ListVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.tg.mu.Lock()
	defer e.tg.mu.Unlock()
	if len(vs) != len(e.tg.exported) {
		t.Errorf("%d volumes listed, %d exported", len(vs), len(e.tg.exported))
	}
	for _, v := range vs {
		if !e.tg.exported[v.Name] {
			t.Errorf("volume %s listed but not exported", v.Name)
		}
	}
}
