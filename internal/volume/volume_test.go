package volume

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func openCat(t *testing.T, dir string) *Catalog {
	t.Helper()
	c, err := Open(Config{Dir: dir, Now: func() time.Time { return time.Date(2026, 11, 22, 1, 2, 3, 0, time.UTC) }})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCreateListGetDeleteReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c := openCat(t, dir)
	acl := []string{"iqn.1993-08.org.debian:01:abc"}
	s, err := c.Create(ctx, CreateRequest{Name: "db1", Size: 1 << 30, ACL: acl,
		CHAP: &CHAP{User: "u", Secret: "0123456789ab", MutualUser: "t", MutualSecret: "ba9876543210"}})
	if err != nil {
		t.Fatal(err)
	}
	if s.BlockSize != 512 || s.Size != 1<<30 || s.Name != "db1" || s.TargetName() != "iqn.2026-11.dev.stave:db1" {
		t.Errorf("spec = %+v", s)
	}
	id, err := s.NAAID()
	if err != nil {
		t.Fatal(err)
	}
	if id[0]>>4 != 6 {
		t.Errorf("NAA id %x does not start with NAA 6", id)
	}
	if len(s.Serial) == 0 || len(s.UUID) != 36 || s.UUID[14] != '4' {
		t.Errorf("serial %q uuid %q", s.Serial, s.UUID)
	}
	if _, err := c.Create(ctx, CreateRequest{Name: "a.b-c", Size: 4096, BlockSize: 4096}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(ctx, CreateRequest{Name: "db1", Size: 4096}); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate create = %v, want ErrExists", err)
	}
	l := c.List()
	if len(l) != 2 || l[0].Name != "a.b-c" || l[1].Name != "db1" {
		t.Fatalf("List = %v", l)
	}
	st, err := os.Stat(c.DataPath("db1"))
	if err != nil || st.Size() != 1<<30 {
		t.Fatalf("data file: %v %v", st, err)
	}
	st, err = os.Stat(filepath.Join(c.Dir("db1"), SpecFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("spec file mode: %v %v", st, err)
	}
	// Mutating a returned spec must not change the catalogue.
	l[1].ACL[0] = "changed"
	if g, _ := c.Get("db1"); g.ACL[0] != acl[0] {
		t.Error("List returned an aliased spec")
	}

	// Leftovers of interrupted operations go away at Open; volumes survive.
	if err := os.Mkdir(filepath.Join(dir, "volumes", ".tmp-x-123"), 0o700); err != nil {
		t.Fatal(err)
	}
	c2 := openCat(t, dir)
	g, err := c2.Get("db1")
	if err != nil {
		t.Fatal(err)
	}
	if g.NAA != s.NAA || g.Serial != s.Serial || g.CHAP == nil || g.CHAP.MutualSecret != "ba9876543210" || !g.Created.Equal(s.Created) {
		t.Errorf("reopened spec %+v differs from %+v", g, s)
	}
	if _, err := os.Stat(filepath.Join(dir, "volumes", ".tmp-x-123")); !os.IsNotExist(err) {
		t.Error("leftover temp dir not removed")
	}

	if err := c2.Delete(ctx, "db1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Get("db1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after delete = %v", err)
	}
	if err := c2.Delete(ctx, "db1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete = %v", err)
	}
	if _, err := os.Stat(c2.Dir("db1")); !os.IsNotExist(err) {
		t.Error("volume dir still there")
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "volumes"))
	if len(ents) != 1 {
		t.Errorf("volumes dir holds %d entries, want 1", len(ents))
	}
	// Name can be reused after delete, and gets a new identity.
	s2, err := c2.Create(ctx, CreateRequest{Name: "db1", Size: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if s2.NAA == s.NAA {
		t.Error("recreated volume reuses the NAA id")
	}
}

func TestUnreadableVolumeSkipped(t *testing.T) {
	dir := t.TempDir()
	c := openCat(t, dir)
	if _, err := c.Create(context.Background(), CreateRequest{Name: "good", Size: 4096}); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "volumes", "bad")
	if err := os.Mkdir(bad, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bad, SpecFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	c2 := openCat(t, dir)
	if l := c2.List(); len(l) != 1 || l[0].Name != "good" {
		t.Errorf("List = %v", l)
	}
	if _, err := c2.Create(context.Background(), CreateRequest{Name: "bad", Size: 4096}); !errors.Is(err, ErrExists) {
		t.Errorf("create over unreadable dir = %v, want ErrExists", err)
	}
}

func TestValidate(t *testing.T) {
	long := strings.Repeat("a", 64)
	ok := CreateRequest{Name: "v", Size: 1 << 20}
	cases := []struct {
		name string
		mod  func(r *CreateRequest)
		want string // substring of the error, "" for valid
	}{
		{"ok", func(r *CreateRequest) {}, ""},
		{"63 chars", func(r *CreateRequest) { r.Name = long[:63] }, ""},
		{"64 chars", func(r *CreateRequest) { r.Name = long }, "1 to 63"},
		{"upper", func(r *CreateRequest) { r.Name = "Vol" }, "a-z"},
		{"leading dot", func(r *CreateRequest) { r.Name = ".v" }, "starting with"},
		{"slash", func(r *CreateRequest) { r.Name = "a/b" }, "a-z"},
		{"empty", func(r *CreateRequest) { r.Name = "" }, "1 to 63"},
		{"zero size", func(r *CreateRequest) { r.Size = 0 }, "positive"},
		{"odd size", func(r *CreateRequest) { r.Size = 1000 }, "round it up to 1024"},
		{"4k odd", func(r *CreateRequest) { r.BlockSize = 4096; r.Size = 4096 + 512 }, "multiple"},
		{"bad bs", func(r *CreateRequest) { r.BlockSize = 1024 }, "512 or 4096"},
		{"acl ok", func(r *CreateRequest) {
			r.ACL = []string{"iqn.2004-10.com.ubuntu:01:deadbeef", "eui.02004567A425678D", "naa.52004567BA64678D", "iqn.1991-05.com.microsoft"}
		}, ""},
		{"acl bad", func(r *CreateRequest) { r.ACL = []string{"host1"} }, "iqn.YYYY-MM"},
		{"acl bad month", func(r *CreateRequest) { r.ACL = []string{"iqn.2004-13.com.x"} }, "iqn.YYYY-MM"},
		{"acl bad eui", func(r *CreateRequest) { r.ACL = []string{"eui.0123"} }, "eui."},
		{"acl kelvin", func(r *CreateRequest) { r.ACL = []string{"iqn.2004-10.com.\u212a"} }, "iqn.YYYY-MM"},
		{"chap ok", func(r *CreateRequest) { r.CHAP = &CHAP{User: "u", Secret: "123456789012"} }, ""},
		{"chap short", func(r *CreateRequest) { r.CHAP = &CHAP{User: "u", Secret: "short"} }, "12 to 255"},
		{"chap long", func(r *CreateRequest) { r.CHAP = &CHAP{User: "u", Secret: strings.Repeat("x", 256)} }, "12 to 255"},
		{"chap no user", func(r *CreateRequest) { r.CHAP = &CHAP{Secret: "123456789012"} }, "user name is empty"},
		{"mutual same", func(r *CreateRequest) {
			r.CHAP = &CHAP{User: "u", Secret: "123456789012", MutualUser: "t", MutualSecret: "123456789012"}
		}, "different"},
		{"mutual short", func(r *CreateRequest) {
			r.CHAP = &CHAP{User: "u", Secret: "123456789012", MutualUser: "t", MutualSecret: "x"}
		}, "mutual CHAP secret"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := ok
			c.mod(&r)
			err := r.Validate()
			switch {
			case c.want == "" && err != nil:
				t.Errorf("unexpected error %v", err)
			case c.want != "" && err == nil:
				t.Errorf("no error, want %q", c.want)
			case c.want != "" && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want)):
				t.Errorf("error %q, want ErrInvalid containing %q", err, c.want)
			}
		})
	}
}

func TestInvalidCreateLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	c := openCat(t, dir)
	if _, err := c.Create(context.Background(), CreateRequest{Name: "x", Size: 100}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("err = %v", err)
	}
	// 2^62 bytes is more than ext4 (16 TiB) or tmpfs allow for one file.
	switch _, err := c.Create(context.Background(), CreateRequest{Name: "huge", Size: 1 << 62}); {
	case err == nil:
		t.Log("this file system takes 2^62-byte files; the too-large case is not checked")
		if err := c.Delete(context.Background(), "huge"); err != nil {
			t.Fatal(err)
		}
	case !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "smaller size"):
		t.Fatalf("huge create: err = %v", err)
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "volumes"))
	if len(ents) != 0 {
		t.Errorf("volumes dir holds %v", ents)
	}
}

func TestTargetNames(t *testing.T) {
	if v, ok := VolumeFromTarget("iqn.2026-11.dev.stave:db1"); !ok || v != "db1" {
		t.Errorf("VolumeFromTarget = %q %v", v, ok)
	}
	for _, n := range []string{"iqn.2026-11.dev.stave:", "iqn.2026-11.dev.stave:A", "iqn.2000-01.com.x:db1"} {
		if _, ok := VolumeFromTarget(n); ok {
			t.Errorf("VolumeFromTarget(%q) accepted", n)
		}
	}
}

func TestNAALayout(t *testing.T) {
	var u [16]byte
	for i := range u {
		u[i] = byte(0xf0 + i)
	}
	got := naa6(u)
	want := []byte{0x65, 0x35, 0x45, 0x60, 0xf1, 0xf2, 0xf3, 0xf4, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff}
	if string(got) != string(want) {
		t.Errorf("naa6 = %x, want %x", got, want)
	}
}

func TestParsePolicy(t *testing.T) {
	for in, want := range map[string]Policy{"2+1": {2, 1}, "1+0": {1, 0}, "4+2": {4, 2}, " 3+1 ": {3, 1}} {
		got, err := ParsePolicy(in)
		if err != nil || got != want {
			t.Errorf("ParsePolicy(%q) = %v, %v; want %v", in, got, err, want)
		}
		if err == nil && got.String() != strings.TrimSpace(in) {
			t.Errorf("%v.String() = %q", got, got.String())
		}
	}
	for _, in := range []string{"", "2", "2+", "+1", "0+1", "2+-1", "a+b", "2++1", "30+3", "2+1+1", "2 + 1", "9223372036854775807+1"} {
		if _, err := ParsePolicy(in); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "DATA+PARITY") {
			t.Errorf("ParsePolicy(%q) = %v, want ErrInvalid with a hint", in, err)
		}
	}
}

func TestParseSnapshotRef(t *testing.T) {
	v, s, err := ParseSnapshotRef("db@nightly.1")
	if err != nil || v != "db" || s != "nightly.1" {
		t.Errorf("ParseSnapshotRef = %q %q %v", v, s, err)
	}
	for _, in := range []string{"db", "@s", "db@", "DB@s", "db@S!", "a@b@c"} {
		if _, _, err := ParseSnapshotRef(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseSnapshotRef(%q) = %v, want ErrInvalid", in, err)
		}
	}
}

func TestPoolBackend(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c := openCat(t, dir)
	s, err := c.Create(ctx, CreateRequest{Name: "p", Size: 1 << 30, Policy: "2+1", Backend: BackendPool, Origin: "a@b"})
	if err != nil {
		t.Fatal(err)
	}
	if !s.InPool() || s.Policy != "2+1" || s.Origin != "a@b" {
		t.Errorf("spec %+v", s)
	}
	if _, err := os.Stat(c.DataPath("p")); !os.IsNotExist(err) {
		t.Errorf("pool volume has a data file: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(c.Dir("p"), SpecFile))
	if err != nil || !strings.Contains(string(b), `"backend": "pool"`) || !strings.Contains(string(b), `"policy": "2+1"`) {
		t.Errorf("volume.json: %s %v", b, err)
	}
	f, err := c.Create(ctx, CreateRequest{Name: "f", Size: 4096})
	if err != nil || f.InPool() || f.Backend != BackendFile {
		t.Errorf("file volume %+v %v", f, err)
	}
	if _, err := c.Create(ctx, CreateRequest{Name: "x", Size: 4096, Backend: BackendPool}); !errors.Is(err, ErrInvalid) {
		t.Errorf("pool volume without policy: %v", err)
	}
	if _, err := c.Create(ctx, CreateRequest{Name: "x", Size: 4096, Backend: "tape"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown backend: %v", err)
	}
	// Specs survive reopening; a spec without a backend is a file volume.
	old := filepath.Join(dir, "volumes", "old")
	if err := os.MkdirAll(old, 0o700); err != nil {
		t.Fatal(err)
	}
	spec := `{"name":"old","size":4096,"block_size":512,"uuid":"x","serial":"y","naa":"6535456000000000000000000000000a"}`
	if err := os.WriteFile(filepath.Join(old, SpecFile), []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}
	c2 := openCat(t, dir)
	if g, err := c2.Get("p"); err != nil || !g.InPool() || g.Policy != "2+1" || g.Origin != "a@b" {
		t.Errorf("reopened pool spec %+v %v", g, err)
	}
	if g, err := c2.Get("old"); err != nil || g.InPool() {
		t.Errorf("old spec %+v %v", g, err)
	}
}

func TestValidateInitiatorNameCharacters(t *testing.T) {
	for _, name := range []string{
		"iqn.1993-08.org.debian:01:abcdef",
		"iqn.1991-05.com.microsoft:host-1.example.com",
		"iqn.2026-11.dev.stave:café",
	} {
		if err := ValidateInitiatorName(name); err != nil {
			t.Errorf("%q: %v", name, err)
		}
	}
	// RFC 3720 §3.2.6.2: only '-', '.', ':', letters and digits in ASCII.
	for _, name := range []string{
		"iqn.1993-08.org.debian:01:ab\x00cd",
		"iqn.1993-08.org.debian:01:ab\x7fcd",
		"iqn.1993-08.org.debian:01/ab",
		"iqn.1993-08.org.debian:a_b",
		"iqn.1993-08.org.debian:a\tb",
		"iqn.1993-08.org.debian:",
	} {
		if err := ValidateInitiatorName(name); err == nil {
			t.Errorf("%q accepted", name)
		}
	}
}
