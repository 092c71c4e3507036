package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

// memStore is an in-memory Store with etcd's revision semantics.
type memStore struct {
	mu    sync.Mutex
	rev   int64
	specs map[string]Stored
	watch chan Event
}

func newMemStore() *memStore {
	return &memStore{specs: map[string]Stored{}, watch: make(chan Event, 64)}
}

func (m *memStore) Load(context.Context) ([]Stored, int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Stored
	for _, s := range m.specs {
		out = append(out, Stored{Spec: s.Spec.clone(), ModRev: s.ModRev})
	}
	return out, m.rev, nil
}

func (m *memStore) Create(_ context.Context, s *Spec) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.specs[s.Name]; ok {
		return 0, fmt.Errorf("%w: %s", ErrExists, s.Name)
	}
	m.rev++
	m.specs[s.Name] = Stored{Spec: s.clone(), ModRev: m.rev}
	m.watch <- Event{Name: s.Name, Spec: s.clone(), ModRev: m.rev}
	return m.rev, nil
}

func (m *memStore) Update(_ context.Context, s *Spec, rev int64) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old, ok := m.specs[s.Name]
	if !ok {
		return 0, fmt.Errorf("%w: %s", ErrNotFound, s.Name)
	}
	if old.ModRev != rev {
		return 0, fmt.Errorf("%w: %s", ErrConflict, s.Name)
	}
	m.rev++
	m.specs[s.Name] = Stored{Spec: s.clone(), ModRev: m.rev}
	m.watch <- Event{Name: s.Name, Spec: s.clone(), ModRev: m.rev}
	return m.rev, nil
}

func (m *memStore) Delete(_ context.Context, name string, rev int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	old, ok := m.specs[name]
	if !ok {
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if old.ModRev != rev {
		return fmt.Errorf("%w: %s", ErrConflict, name)
	}
	m.rev++
	delete(m.specs, name)
	m.watch <- Event{Name: name, ModRev: m.rev}
	return nil
}

func (m *memStore) Watch(ctx context.Context, _ int64, fn func(Event)) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev := <-m.watch:
			fn(ev)
		}
	}
}

func TestStoreBackedCatalog(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	// An older data dir with one file volume in a spec file.
	old := openCat(t, dir)
	if _, err := old.Create(ctx, CreateRequest{Name: "legacy", Size: 1 << 20, ACL: []string{"iqn.2000-01.test:a"}}); err != nil {
		t.Fatal(err)
	}
	st := newMemStore()
	c, err := OpenContext(ctx, Config{Dir: dir, Store: st, Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Get("legacy")
	if err != nil || s.Node != "n1" || len(s.ACL) != 1 {
		t.Fatalf("migrated: %+v %v", s, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "volumes", "legacy", SpecFile+MigratedSuffix)); err != nil {
		t.Fatal("spec file not renamed after migration")
	}
	// Reopening does not import it again, and the data file stays.
	if _, err := OpenContext(ctx, Config{Dir: dir, Store: st, Node: "n1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.DataPath("legacy")); err != nil {
		t.Fatal(err)
	}

	n, err := c.Create(ctx, CreateRequest{Name: "new", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if n.Node != "n1" || !c.Pending("new") {
		t.Fatalf("node %q pending %v", n.Node, c.Pending("new"))
	}
	if _, err := os.Stat(filepath.Join(c.Dir("new"), SpecFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a store-backed volume has a spec file")
	}
	c.Settle("new")
	if c.Pending("new") {
		t.Fatal("still pending after Settle")
	}
	if _, err := c.Resize(ctx, "new", 4<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Resize(ctx, "new", 2<<20); !errors.Is(err, ErrInvalid) {
		t.Fatalf("shrink: %v", err)
	}
	// Another writer changes the spec: our next write loses the CAS, the
	// watch brings the change in, and a retry succeeds.
	st.mu.Lock()
	cur := st.specs["new"]
	st.mu.Unlock()
	cp := cur.Spec.clone()
	cp.ACL = []string{"iqn.2000-01.test:b"}
	if _, err := st.Update(ctx, cp, cur.ModRev); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Resize(ctx, "new", 8<<20); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale resize: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	for {
		<-c.Changed()
		if s, _ := c.Get("new"); len(s.ACL) == 1 {
			break
		}
	}
	if s, err := c.Resize(ctx, "new", 8<<20); err != nil || s.ACL[0] != "iqn.2000-01.test:b" {
		t.Fatalf("resize after watch: %+v %v", s, err)
	}
	if err := c.Delete(ctx, "new"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Dir("new")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("data dir left after delete")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"2GiB": 2 << 30, "512M": 512 << 20, "4096": 4096, "1 TiB": 1 << 40, "3k": 3 << 10} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "GiB", "2GB", "2 parsecs", "99999999999999T"} {
		if _, err := ParseSize(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseSize(%q) = %v, want ErrInvalid", in, err)
		}
	}
}

func TestReplaceReplica(t *testing.T) {
	ctx := context.Background()
	c, err := OpenContext(ctx, Config{Dir: t.TempDir(), Store: newMemStore(), Node: "a"})
	if err != nil {
		t.Fatal(err)
	}
	sp, err := c.Create(ctx, CreateRequest{Name: "r", Size: 1 << 20, Replicas: 3, Backend: BackendReplicated, Nodes: []string{"a", "b", "c"}})
	if err != nil {
		t.Fatal(err)
	}
	if sp.Node != "a" || !slices.Equal(sp.Replicas, []string{"a", "b", "c"}) || !sp.Replicated() || sp.HasDataFile() {
		t.Fatalf("created %+v", sp)
	}
	got, err := c.ReplaceReplica(ctx, "r", "a", "d")
	if err != nil || got.Node != "d" || !slices.Equal(got.Replicas, []string{"d", "b", "c"}) {
		t.Fatalf("replace a by d: %+v, %v", got, err)
	}
	if s, _ := c.Get("r"); !slices.Equal(s.Replicas, got.Replicas) {
		t.Fatalf("catalogue after replace: %v", s.Replicas)
	}
	for _, tc := range [][2]string{{"a", "e"}, {"b", "c"}, {"b", ""}} {
		if _, err := c.ReplaceReplica(ctx, "r", tc[0], tc[1]); !errors.Is(err, ErrInvalid) {
			t.Errorf("replace %s by %q: %v, want ErrInvalid", tc[0], tc[1], err)
		}
	}
	if _, err := c.ReplaceReplica(ctx, "nope", "a", "b"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown volume: %v", err)
	}
}
