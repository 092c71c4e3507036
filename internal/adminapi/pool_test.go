package adminapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"stave.dev/stave/internal/volume"
)

// fakePool is an in-memory Pool.
type fakePool struct {
	mu      sync.Mutex
	exists  bool
	devices []string
	vols    map[string]volume.Policy
	snaps   map[string][]string // volume → snapshot names
	reverts []string
	release chan struct{} // ReplaceDevice and Scrub wait on it after the first progress
}

func newFakePool() *fakePool {
	return &fakePool{vols: map[string]volume.Policy{}, snaps: map[string][]string{}, release: make(chan struct{})}
}

func (f *fakePool) Exists() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.exists
}

func (f *fakePool) Create(_ context.Context, req PoolCreateRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.exists {
		return fmt.Errorf("%w: a pool exists", ErrConflict)
	}
	f.exists, f.devices = true, slices.Clone(req.Devices)
	return nil
}

func (f *fakePool) Status(context.Context) (*PoolStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := &PoolStatus{ID: "fake", State: "ok", Volumes: len(f.vols)}
	for i, d := range f.devices {
		st.Devices = append(st.Devices, PoolDevice{Index: i, Path: d, State: "ok", Size: 1 << 30})
	}
	return st, nil
}

func (f *fakePool) ResolvePolicy(s string) (volume.Policy, error) {
	if s == "" {
		return volume.Policy{Data: 2, Parity: 1}, nil
	}
	p, err := volume.ParsePolicy(s)
	if err == nil && p.Width() > len(f.devices) {
		err = fmt.Errorf("%w: policy %s needs %d devices", volume.ErrInvalid, p, p.Width())
	}
	return p, err
}

func (f *fakePool) AddDevice(_ context.Context, path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.devices = append(f.devices, path)
	return nil
}

func (f *fakePool) CheckReplace(old, _ string) error {
	if old == "/d/unknown" {
		return fmt.Errorf("%w: %s is not a device of the pool", volume.ErrNotFound, old)
	}
	return nil
}

func (f *fakePool) ReplaceDevice(ctx context.Context, old, newDev string, progress func(Progress)) error {
	progress(Progress{Done: 1 << 20, Total: 4 << 20})
	select {
	case <-f.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	progress(Progress{Done: 4 << 20, Total: 4 << 20})
	f.mu.Lock()
	defer f.mu.Unlock()
	i := slices.Index(f.devices, old)
	if i < 0 {
		return fmt.Errorf("%w: no device %s", volume.ErrNotFound, old)
	}
	f.devices[i] = newDev
	return nil
}

func (f *fakePool) Scrub(ctx context.Context, progress func(Progress)) (*ScrubReport, error) {
	progress(Progress{Done: 0, Total: 8 << 20})
	select {
	case <-f.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &ScrubReport{Stripes: 4, Bytes: 8 << 20, Repaired: 1}, nil
}

func (f *fakePool) CreateVolume(_ context.Context, name string, _ int64, p volume.Policy) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.vols[name]; ok {
		return fmt.Errorf("%w: pool volume %s", volume.ErrExists, name)
	}
	f.vols[name] = p
	return nil
}

func (f *fakePool) DeleteVolume(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.vols[name]; !ok {
		return fmt.Errorf("%w: pool volume %s", volume.ErrNotFound, name)
	}
	delete(f.vols, name)
	delete(f.snaps, name)
	return nil
}

func (f *fakePool) Allocated(name string) (int64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.vols[name]
	return 4096, ok
}

func (f *fakePool) CreateSnapshot(_ context.Context, vol, snap string) (*Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.vols[vol]; !ok {
		return nil, fmt.Errorf("%w: pool volume %s", volume.ErrNotFound, vol)
	}
	if slices.Contains(f.snaps[vol], snap) {
		return nil, fmt.Errorf("%w: snapshot %s@%s", volume.ErrExists, vol, snap)
	}
	f.snaps[vol] = append(f.snaps[vol], snap)
	return &Snapshot{Volume: vol, Name: snap, Created: time.Unix(1, 0)}, nil
}

func (f *fakePool) DeleteSnapshot(_ context.Context, vol, snap string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := slices.Index(f.snaps[vol], snap)
	if i < 0 {
		return fmt.Errorf("%w: volume %q has no snapshot %q", volume.ErrNotFound, vol, snap)
	}
	f.snaps[vol] = slices.Delete(f.snaps[vol], i, i+1)
	return nil
}

func (f *fakePool) Snapshots(_ context.Context, vol string) ([]Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Snapshot
	for _, s := range f.snaps[vol] {
		out = append(out, Snapshot{Volume: vol, Name: s})
	}
	return out, nil
}

func (f *fakePool) Clone(_ context.Context, vol, snap, newVol string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.Contains(f.snaps[vol], snap) {
		return fmt.Errorf("%w: volume %q has no snapshot %q", volume.ErrNotFound, vol, snap)
	}
	f.vols[newVol] = f.vols[vol]
	return nil
}

func (f *fakePool) Revert(_ context.Context, vol, snap string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.Contains(f.snaps[vol], snap) {
		return fmt.Errorf("%w: volume %q has no snapshot %q", volume.ErrNotFound, vol, snap)
	}
	f.reverts = append(f.reverts, vol+"@"+snap)
	return nil
}

// newPoolEnv is newEnv with a fake pool.
func newPoolEnv(t *testing.T) (*env, *fakePool, *Server) {
	t.Helper()
	e := newEnv(t)
	fp := newFakePool()
	s, err := New(Config{Volumes: e.cat, Targets: e.tg, Version: "test-1", Pool: fp})
	if err != nil {
		t.Fatal(err)
	}
	e.srv.Config.Handler = s.Handler()
	t.Cleanup(s.Close)
	return e, fp, s
}

func TestNoPool(t *testing.T) {
	e, _, _ := newPoolEnv(t)
	ctx := ctxT(t)
	_, err := e.cl.PoolStatus(ctx)
	apiErr(t, err, http.StatusConflict, "stave pool create --device")
	_, err = e.cl.CreateVolume(ctx, CreateRequest{Name: "v", Size: 4096, Policy: "2+1"})
	apiErr(t, err, http.StatusConflict, "--policy 2+1 needs a pool")
	_, err = e.cl.Scrub(ctx)
	apiErr(t, err, http.StatusConflict, "no pool yet")
	// Without a pool, volumes are sparse files as before.
	v, err := e.cl.CreateVolume(ctx, CreateRequest{Name: "f", Size: 4096})
	if err != nil || v.Backend != volume.BackendFile {
		t.Fatalf("file volume %+v %v", v, err)
	}
	_, err = e.cl.CreateSnapshot(ctx, "f", "s")
	apiErr(t, err, http.StatusBadRequest, "sparse file")
	// A replicated volume (placed by the daemon, here written to the
	// catalogue directly) says so rather than "sparse file".
	if _, err := e.cat.Create(ctx, volume.CreateRequest{Name: "r", Size: 4096, Replicas: 2,
		Backend: volume.BackendReplicated, Nodes: []string{"n1", "n2"}}); err != nil {
		t.Fatal(err)
	}
	_, err = e.cl.CreateSnapshot(ctx, "r", "s")
	apiErr(t, err, http.StatusNotImplemented, "replicated")
	if ss, err := e.cl.Snapshots(ctx, ""); err != nil || len(ss) != 0 {
		t.Errorf("Snapshots = %v %v", ss, err)
	}
	_, err = e.cl.CreatePool(ctx, PoolCreateRequest{Devices: []string{"rel/path"}})
	apiErr(t, err, http.StatusBadRequest, "relative")
	_, err = e.cl.CreatePool(ctx, PoolCreateRequest{Devices: []string{"/a", "/a/"}})
	apiErr(t, err, http.StatusBadRequest, "given twice")
	_, err = e.cl.CreatePool(ctx, PoolCreateRequest{})
	apiErr(t, err, http.StatusBadRequest, "--device")
}

func TestPoolVolumesAndSnapshots(t *testing.T) {
	e, fp, _ := newPoolEnv(t)
	ctx := ctxT(t)
	old, err := e.cl.CreateVolume(ctx, CreateRequest{Name: "old", Size: 4096})
	if err != nil || old.Backend != volume.BackendFile {
		t.Fatalf("file volume %+v %v", old, err)
	}
	st, err := e.cl.CreatePool(ctx, PoolCreateRequest{Devices: []string{"/d/0", "/d/1", "/d/2"}})
	if err != nil || len(st.Devices) != 3 {
		t.Fatalf("CreatePool = %+v %v", st, err)
	}
	_, err = e.cl.CreatePool(ctx, PoolCreateRequest{Devices: []string{"/d/9"}})
	apiErr(t, err, http.StatusConflict, "a pool exists")

	v, err := e.cl.CreateVolume(ctx, CreateRequest{Name: "db", Size: 1 << 20,
		CHAP: &volume.CHAP{User: "alice", Secret: "0123456789abc"}})
	if err != nil || v.Backend != volume.BackendPool || v.Policy != "2+1" || !v.Exported || v.Allocated != 4096 {
		t.Fatalf("pool volume %+v %v", v, err)
	}
	if p, ok := fp.vols["db"]; !ok || p != (volume.Policy{Data: 2, Parity: 1}) {
		t.Errorf("pool volumes %v", fp.vols)
	}
	_, err = e.cl.CreateVolume(ctx, CreateRequest{Name: "big", Size: 4096, Policy: "4+2"})
	apiErr(t, err, http.StatusBadRequest, "needs 6 devices")
	_, err = e.cl.CreateVolume(ctx, CreateRequest{Name: "bad", Size: 4096, Policy: "two"})
	apiErr(t, err, http.StatusBadRequest, "DATA+PARITY")
	if _, err := e.cat.Get("big"); err == nil {
		t.Error("catalogue holds a volume whose policy was refused")
	}
	// A pool failure rolls back the catalogue entry.
	fp.vols["taken"] = volume.Policy{Data: 1}
	_, err = e.cl.CreateVolume(ctx, CreateRequest{Name: "taken", Size: 4096})
	apiErr(t, err, http.StatusConflict, "pool volume taken")
	if _, err := e.cat.Get("taken"); err == nil {
		t.Error("catalogue holds a volume the pool refused")
	}

	// Snapshots.
	if _, err := e.cl.CreateSnapshot(ctx, "db", "s1"); err != nil {
		t.Fatal(err)
	}
	_, err = e.cl.CreateSnapshot(ctx, "db", "s1")
	apiErr(t, err, http.StatusConflict, "snapshot db@s1")
	_, err = e.cl.CreateSnapshot(ctx, "db", "Bad!")
	apiErr(t, err, http.StatusBadRequest, "snapshot name")
	_, err = e.cl.CreateSnapshot(ctx, "nope", "s")
	apiErr(t, err, http.StatusNotFound, `no volume named "nope"`)
	_, err = e.cl.CreateSnapshot(ctx, "old", "s")
	apiErr(t, err, http.StatusBadRequest, "created before the pool")
	if ss, err := e.cl.Snapshots(ctx, "db"); err != nil || len(ss) != 1 || ss[0].Name != "s1" {
		t.Errorf("Snapshots(db) = %v %v", ss, err)
	}

	// Clone: a new exported pool volume with the parent's settings.
	c, err := e.cl.Clone(ctx, "db", "s1", "db2")
	if err != nil {
		t.Fatal(err)
	}
	if c.Origin != "db@s1" || c.Size != 1<<20 || c.Policy != "2+1" || c.CHAPUser != "alice" || !c.Exported {
		t.Errorf("clone %+v", c)
	}
	_, err = e.cl.Clone(ctx, "db", "nosnap", "db3")
	apiErr(t, err, http.StatusNotFound, `no snapshot "nosnap"`)
	if _, err := e.cat.Get("db3"); err == nil {
		t.Error("catalogue holds a failed clone")
	}
	_, err = e.cl.Clone(ctx, "db", "s1", "db2")
	apiErr(t, err, http.StatusConflict, `volume "db2" already exists`)
	if ss, err := e.cl.Snapshots(ctx, ""); err != nil || len(ss) != 1 {
		t.Errorf("all snapshots = %v %v", ss, err)
	}

	// Revert: refused while a session is logged in.
	e.tg.mu.Lock()
	e.tg.sessions = []Session{{InitiatorName: "iqn.1993-08.org.debian:01:x", TargetName: volume.TargetName("db")}}
	e.tg.mu.Unlock()
	_, err = e.cl.Revert(ctx, "db", "s1")
	apiErr(t, err, http.StatusConflict, "iqn.1993-08.org.debian:01:x")
	if len(fp.reverts) != 0 {
		t.Errorf("reverted with a session: %v", fp.reverts)
	}
	e.tg.mu.Lock()
	e.tg.sessions = nil
	e.tg.mu.Unlock()
	if _, err := e.cl.Revert(ctx, "db", "s1"); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(fp.reverts, []string{"db@s1"}) || !e.tg.Exported("db") {
		t.Errorf("reverts %v, exported %v", fp.reverts, e.tg.Exported("db"))
	}
	_, err = e.cl.Revert(ctx, "db", "s9")
	apiErr(t, err, http.StatusNotFound, `no snapshot "s9"`)
	if !e.tg.Exported("db") {
		t.Error("failed revert left the volume unexported")
	}

	if err := e.cl.DeleteSnapshot(ctx, "db", "s1"); err != nil {
		t.Fatal(err)
	}
	apiErr(t, e.cl.DeleteSnapshot(ctx, "db", "s1"), http.StatusNotFound, "no snapshot")

	// Delete goes to the pool too, and tolerates a volume missing there.
	if err := e.cl.DeleteVolume(ctx, "db2"); err != nil {
		t.Fatal(err)
	}
	delete(fp.vols, "db")
	if err := e.cl.DeleteVolume(ctx, "db"); err != nil {
		t.Fatalf("delete of a volume missing from the pool: %v", err)
	}
	if len(fp.vols) != 1 { // "taken"
		t.Errorf("pool volumes after delete: %v", fp.vols)
	}
	// The old file volume still works.
	if g, err := e.cl.GetVolume(ctx, "old"); err != nil || g.Backend != volume.BackendFile {
		t.Errorf("old volume %+v %v", g, err)
	}
	m := get(t, e, "/metrics", http.StatusOK)
	if !strings.Contains(m, `stave_volume_allocated_bytes{volume="old"}`) {
		t.Errorf("metrics lack the file volume's allocation")
	}
}

func TestPoolOperations(t *testing.T) {
	e, fp, s := newPoolEnv(t)
	ctx := ctxT(t)
	if _, err := e.cl.CreatePool(ctx, PoolCreateRequest{Devices: []string{"/d/0", "/d/1", "/d/2"}}); err != nil {
		t.Fatal(err)
	}
	if st, err := e.cl.AddDevice(ctx, "/d/3"); err != nil || len(st.Devices) != 4 {
		t.Fatalf("AddDevice = %+v %v", st, err)
	}
	_, err := e.cl.AddDevice(ctx, "d3")
	apiErr(t, err, http.StatusBadRequest, "relative")
	_, err = e.cl.ReplaceDevice(ctx, "/d/1", "/d/1")
	apiErr(t, err, http.StatusBadRequest, "both")
	_, err = e.cl.ReplaceDevice(ctx, "/d/unknown", "/d/8")
	apiErr(t, err, http.StatusNotFound, "not a device of the pool")

	op, err := e.cl.ReplaceDevice(ctx, "/d/1", "/d/9")
	if err != nil || op.State != OpRunning || op.Kind != OpReplaceDevice {
		t.Fatalf("ReplaceDevice = %+v %v", op, err)
	}
	// Progress shows up; a second operation waits its turn.
	waitOp(t, e, op.ID, func(o *Operation) bool { return o.Progress.Done == 1<<20 && o.Progress.Total == 4<<20 })
	_, err = e.cl.Scrub(ctx)
	apiErr(t, err, http.StatusConflict, "replace-device /d/1 /d/9 (operation 1) is running")
	st, err := e.cl.PoolStatus(ctx)
	if err != nil || len(st.Operations) != 1 || st.Operations[0].State != OpRunning {
		t.Errorf("status operations %+v %v", st, err)
	}
	fp.release <- struct{}{}
	done := waitOp(t, e, op.ID, func(o *Operation) bool { return o.State != OpRunning })
	if done.State != OpDone || done.Progress.Done != 4<<20 || done.Finished == nil {
		t.Errorf("finished op %+v", done)
	}
	if !slices.Contains(fp.devices, "/d/9") {
		t.Errorf("devices %v", fp.devices)
	}

	// A failed operation reports why.
	op, err = e.cl.ReplaceDevice(ctx, "/d/nope", "/d/10")
	if err != nil {
		t.Fatal(err)
	}
	fp.release <- struct{}{}
	failed := waitOp(t, e, op.ID, func(o *Operation) bool { return o.State != OpRunning })
	if failed.State != OpFailed || !strings.Contains(failed.Error, "no device /d/nope") || strings.Contains(failed.Error, "volume: not found") {
		t.Errorf("failed op %+v", failed)
	}

	// Scrub reports; Close interrupts a running one.
	op, err = e.cl.Scrub(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fp.release <- struct{}{}
	sc := waitOp(t, e, op.ID, func(o *Operation) bool { return o.State != OpRunning })
	if sc.State != OpDone || sc.Scrub == nil || sc.Scrub.Repaired != 1 {
		t.Errorf("scrub op %+v", sc)
	}
	op, err = e.cl.Scrub(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	o, err := e.cl.Operation(ctx, op.ID)
	if err != nil || o.State != OpFailed || !strings.Contains(o.Error, "shutdown") {
		t.Errorf("op after Close: %+v %v", o, err)
	}
	_, err = e.cl.Scrub(ctx)
	apiErr(t, err, http.StatusConflict, "shutting down")
	_, err = e.cl.Operation(ctx, "99")
	apiErr(t, err, http.StatusNotFound, "no operation")
}

// waitOp polls an operation until ok holds.
func waitOp(t *testing.T, e *env, id string, ok func(*Operation) bool) *Operation {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		op, err := e.cl.Operation(ctxT(t), id)
		if err != nil {
			t.Fatal(err)
		}
		if ok(op) {
			return op
		}
		if time.Now().After(deadline) {
			t.Fatalf("operation %s: %+v", id, op)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestUnsupportedPoolError(t *testing.T) {
	e := newEnv(t) // no Pool
	_, err := e.cl.CreatePool(ctxT(t), PoolCreateRequest{Devices: []string{"/a"}})
	apiErr(t, err, http.StatusNotImplemented, "without pool support")
	var ae *APIError
	if !errors.As(err, &ae) {
		t.Fatal(err)
	}
}
