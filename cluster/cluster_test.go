package cluster

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"stave.dev/stave/internal/volume"
	"stave.dev/stave/target/scsi/pr"
)

func openTest(t *testing.T, dir string) *Cluster {
	t.Helper()
	start := time.Now()
	c, err := Open(context.Background(), Config{DataDir: dir, NodeID: "0123456789abcdef",
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("embedded etcd ready in %s", time.Since(start))
	return c
}

func TestEmbeddedVolumesReservationsRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c := openTest(t, dir)
	if !c.Embedded() || len(c.ClientURLs()) != 1 {
		t.Fatalf("embedded %v urls %v", c.Embedded(), c.ClientURLs())
	}
	if err := c.Healthy(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	vs := c.Volumes()
	s := &volume.Spec{Name: "v1", Size: 1 << 20, BlockSize: 512, NAA: "6535456000000000000000000000000a",
		Backend: volume.BackendFile, ACL: []string{"iqn.2000-01.test:a"}, CHAP: &volume.CHAP{User: "u", Secret: "0123456789ab"}}
	rev, err := vs.Create(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vs.Create(ctx, s); !errors.Is(err, volume.ErrExists) {
		t.Fatalf("second create = %v, want ErrExists", err)
	}
	s2 := *s
	s2.Size = 2 << 20
	rev2, err := vs.Update(ctx, &s2, rev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vs.Update(ctx, &s2, rev); !errors.Is(err, volume.ErrConflict) {
		t.Fatalf("stale update = %v, want ErrConflict", err)
	}
	rs := c.Reservations("v1")
	if _, err := rs.Load(ctx); err != nil {
		t.Fatal(err)
	}
	st := pr.State{APTPL: true, Registrations: []pr.Registration{{Key: 0x1234, InitiatorName: "iqn.2000-01.test:a",
		InitiatorPort: "iqn.2000-01.test:a,i,0x023d00000001", TargetPort: "iqn.2026-11.dev.stave:v1,t,0x0001", RelativeTargetPort: 1}}}
	if err := rs.Save(ctx, st); err != nil {
		t.Fatal(err)
	}
	other := c.Reservations("v1")
	if err := other.Save(ctx, pr.State{}); !errors.Is(err, ErrConflict) {
		t.Fatalf("blind save = %v, want ErrConflict", err)
	}
	if err := c.PutVolumeStatus(ctx, "v1", VolumeStatus{Node: "n", Exported: true, Size: 2 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	c = openTest(t, dir)
	defer c.Close()
	specs, _, err := c.Volumes().Load(ctx)
	if err != nil || len(specs) != 1 || specs[0].Spec.Size != 2<<20 || specs[0].ModRev != rev2 || specs[0].Spec.CHAP.Secret != "0123456789ab" {
		t.Fatalf("after restart: %+v %v", specs, err)
	}
	got, err := c.Reservations("v1").Load(ctx)
	if err != nil || len(got.Registrations) != 1 || got.Registrations[0].Key != 0x1234 {
		t.Fatalf("reservations after restart: %+v %v", got, err)
	}
	if _, ok, _ := c.VolumeStatus(ctx, "v1"); !ok {
		t.Fatal("status lost")
	}
	if err := c.Volumes().Delete(ctx, "v1", rev2); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := c.VolumeStatus(ctx, "v1"); ok {
		t.Fatal("status outlived the volume")
	}
	if got, _ := c.Reservations("v1").Load(ctx); len(got.Registrations) != 0 {
		t.Fatal("reservations outlived the volume")
	}
}

func TestSchemaMismatch(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c := openTest(t, dir)
	if _, err := c.Client().Put(ctx, SchemaKey, "9"); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	_, err := Open(ctx, Config{DataDir: dir, NodeID: "0123456789abcdef"})
	if !errors.Is(err, ErrSchemaMismatch) {
		t.Fatalf("Open = %v, want ErrSchemaMismatch", err)
	}
}

func TestWatchAndMigration(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	c := openTest(t, dir)
	defer c.Close()
	// An old data dir: a spec file and a PR file.
	old, err := volume.Open(volume.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Create(ctx, volume.CreateRequest{Name: "legacy", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	prPath := old.PRPath("legacy")
	if err := (pr.FileStore{Path: prPath}).Save(ctx, pr.State{APTPL: true}); err != nil {
		t.Fatal(err)
	}
	cat, err := volume.OpenContext(ctx, volume.Config{Dir: dir, Store: c.Volumes(), Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if s, err := cat.Get("legacy"); err != nil || s.Node != "n1" {
		t.Fatalf("migrated spec %+v %v", s, err)
	}
	if _, err := os.Stat(filepath.Join(old.Dir("legacy"), volume.SpecFile+volume.MigratedSuffix)); err != nil {
		t.Fatal(err)
	}
	if err := c.MigrateReservations(ctx, "legacy", prPath); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Reservations("legacy").Load(ctx); err != nil || !st.APTPL {
		t.Fatalf("migrated PR state %+v %v", st, err)
	}
	// A second catalogue sees the first one's changes through the watch.
	cat2, err := volume.OpenContext(ctx, volume.Config{Dir: t.TempDir(), Store: c.Volumes(), Node: "n2"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cat2.Run(ctx) }()
	if _, err := cat.Resize(ctx, "legacy", 4<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := cat.Resize(ctx, "legacy", 1<<20); !errors.Is(err, volume.ErrInvalid) {
		t.Fatalf("shrink = %v, want ErrInvalid", err)
	}
	deadline := time.After(10 * time.Second)
	for {
		if s, err := cat2.Get("legacy"); err == nil && s.Size == 4<<20 {
			break
		}
		select {
		case <-cat2.Changed():
		case <-deadline:
			t.Fatal("watch did not deliver the resize")
		}
	}
	if err := cat.Delete(ctx, "legacy"); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := cat2.Get("legacy"); errors.Is(err, volume.ErrNotFound) {
			break
		}
		select {
		case <-cat2.Changed():
		case <-deadline:
			t.Fatal("watch did not deliver the delete")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
