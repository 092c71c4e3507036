package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"stave.dev/stave/internal/config"
)

// The package test builds the .deb with `make package` and installs it
// with dpkg. As root it installs into a copy of the guest's debootstrap
// root (tools/guest/build.sh, unpacked from its initramfs) through chroot,
// as on a Debian host; otherwise into a scratch root with `dpkg --root
// --force-script-chrootless` (docs/packaging.md).
const (
	packageBuildTimeout = 10 * time.Minute // the first build compiles nfpm
	packageStepTimeout  = 2 * time.Minute  // each dpkg and stave run
	unitFile            = "/usr/lib/systemd/system/stave.service"
	packageDataDir      = "/var/lib/stave"
)

// networkHints mark a `make package` failure as the module proxy being
// unreachable while fetching nfpm.
var networkHints = []string{"dial tcp", "no such host", "i/o timeout", "connection refused",
	"network is unreachable", "TLS handshake timeout", "proxyconnect"}

// debRoot is where the package is installed.
type debRoot struct {
	dir    string
	chroot bool // dpkg and stave run inside dir with chroot
}

// cmd returns a command that runs argv in the root: under chroot, or
// with dpkg's --root options (for dpkg) or the root's path prefixed (for
// installed programs).
func (r debRoot) cmd(ctx context.Context, argv ...string) *exec.Cmd {
	var c *exec.Cmd
	switch {
	case r.chroot:
		c = exec.CommandContext(ctx, "chroot", append([]string{r.dir}, argv...)...)
		// The root's own environment, not the test's.
		c.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C", "DEBIAN_FRONTEND=noninteractive", "HOME=/root"}
	case argv[0] == "dpkg":
		c = exec.CommandContext(ctx, "dpkg", append([]string{"--root=" + r.dir, "--log=/dev/null", "--force-not-root",
			"--force-script-chrootless"}, argv[1:]...)...)
	case argv[0] == "dpkg-query":
		c = exec.CommandContext(ctx, "dpkg-query", append([]string{"--admindir=" + r.path("/var/lib/dpkg")}, argv[1:]...)...)
	default:
		c = exec.CommandContext(ctx, r.path(argv[0]), argv[1:]...)
	}
	c.WaitDelay = 5 * time.Second
	return c
}

// path returns where the absolute path p of the installed system is.
func (r debRoot) path(p string) string { return filepath.Join(r.dir, p) }

// run runs argv in the root and returns its combined output, failing t
// when it fails. Lines about the files lists that the guest image drops
// (tools/guest/build.sh deletes /var/lib/dpkg/info) are left out.
func (r debRoot) run(t *testing.T, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), packageStepTimeout)
	defer cancel()
	out, err := r.cmd(ctx, argv...).CombinedOutput()
	var kept []string
	for l := range strings.Lines(string(out)) {
		if !strings.Contains(l, "files list file for package") {
			kept = append(kept, l)
		}
	}
	text := strings.Join(kept, "")
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, text)
	}
	return text
}

// TestDebInstall builds the .deb exactly as `make package` does (with BIN
// and DIST in a scratch directory), installs it with dpkg, checks that
// every file is where the systemd unit expects it and that postinst
// created the data directory 0700, runs the installed binary's
// `serve --print-config` on the installed configuration, then purges the
// package: its files go, /var/lib/stave stays.
func TestDebInstall(t *testing.T) {
	requireE2E(t)
	for _, tool := range []string{"dpkg", "dpkg-deb", "dpkg-query", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: the .deb needs Debian's dpkg tools and make", tool)
		}
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	start := time.Now()
	deb := makePackage(t, root, work)
	t.Logf("make package: %s (%v)", filepath.Base(deb), time.Since(start).Round(time.Millisecond))

	r := debRoot{dir: filepath.Join(work, "root")}
	start = time.Now()
	if os.Geteuid() == 0 {
		// A debootstrap'd Debian: the guest image's root file system.
		requireTool(t, "chroot")
		unpackGuestRoot(t, buildGuest(t).initrd, r.dir)
		r.chroot = true
		t.Logf("chroot into a copy of the guest's debootstrap root (%v)", time.Since(start).Round(time.Millisecond))
	} else {
		for _, d := range []string{"var/lib/dpkg/updates", "var/lib/dpkg/info"} {
			if err := os.MkdirAll(filepath.Join(r.dir, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(r.path("/var/lib/dpkg/status"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("not root: a scratch root, maintainer scripts run outside it (dpkg --root --force-script-chrootless)")
	}
	// The guest image has no dpkg file lists: dpkg needs the directory.
	if err := os.MkdirAll(r.path("/var/lib/dpkg/info"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(r.path(packageDataDir)); err == nil {
		t.Fatalf("%s exists before the install: the root is not fresh", packageDataDir)
	}

	// 1. Install.
	debArg := deb
	if r.chroot {
		b, err := os.ReadFile(deb)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(r.path("/tmp/stave.deb"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		debArg = "/tmp/stave.deb"
	}
	out := r.run(t, "dpkg", "-i", debArg)
	t.Logf("dpkg -i:\n%s", out)
	checkScriptOutput(t, r, "dpkg -i", out)
	if st := r.run(t, "dpkg-query", "-W", "-f=${Status}", "stave"); st != "install ok installed" {
		t.Errorf("dpkg-query status %q, want install ok installed", st)
	}

	// 2. Every file is where the unit expects it.
	installed := strings.Fields(r.run(t, "dpkg-query", "-L", "stave"))
	for _, p := range installed {
		if _, err := os.Lstat(r.path(p)); err != nil {
			t.Errorf("dpkg -L lists %s: %v", p, err)
		}
	}
	checkFile(t, r, unitFile, 0o644, filepath.Join(root, "packaging/systemd/stave.service"))
	unit := readUnit(t, r.path(unitFile))
	execStart := strings.Fields(unit["ExecStart"])
	if len(execStart) != 4 || execStart[1] != "serve" || execStart[2] != "--config" {
		t.Fatalf("the installed unit's ExecStart %q: want BINARY serve --config FILE", unit["ExecStart"])
	}
	bin, conf := execStart[0], execStart[3]
	checkFile(t, r, bin, 0o755, "")
	checkFile(t, r, conf, 0o640, filepath.Join(root, "packaging/stave.yaml"))
	checkFile(t, r, filepath.Dir(conf), fs.ModeDir|0o750, "")
	if b, err := os.ReadFile(r.path("/var/lib/dpkg/info/stave.conffiles")); err != nil || strings.TrimSpace(string(b)) != conf {
		t.Errorf("conffiles %q (%v), want %s", b, err, conf)
	}
	for _, doc := range strings.Fields(unit["Documentation"]) {
		checkFile(t, r, strings.TrimPrefix(doc, "file:"), 0o644, "")
	}
	// postinst creates the data directory (the package does not ship it).
	checkFile(t, r, packageDataDir, fs.ModeDir|0o700, "")
	if slices.Contains(installed, packageDataDir) {
		t.Errorf("the package ships %s: postinst must create it, so that purge keeps it", packageDataDir)
	}
	for _, p := range strings.Fields(unit["ReadWritePaths"]) {
		if p == packageDataDir {
			continue
		}
		if !strings.HasPrefix(p, "/run/") {
			t.Errorf("ReadWritePaths %s: neither the data directory nor under /run (RuntimeDirectory)", p)
		}
	}

	// 3. The installed binary reads the installed configuration.
	cfgArg := conf
	if !r.chroot {
		cfgArg = r.path(conf)
	}
	printed := r.run(t, bin, "serve", "--config", cfgArg, "--print-config")
	got, err := config.Load("stave serve --print-config", strings.NewReader(printed))
	if err != nil {
		t.Fatalf("--print-config output does not load: %v\n%s", err, printed)
	}
	want, err := config.LoadFile(filepath.Join(root, "packaging/stave.yaml"), false)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*config.Config{got, want} {
		if err := c.Finish(); err != nil {
			t.Fatal(err)
		}
	}
	if got.DataDir != packageDataDir || got.API != want.API || got.SocketPath() != want.SocketPath() {
		t.Errorf("--print-config: data_dir %s api %s, want %s and %s", got.DataDir, got.API, packageDataDir, want.API)
	}
	if !strings.HasPrefix(got.SocketPath(), "/run/stave/") || !slices.Contains(strings.Fields(unit["ReadWritePaths"]), "/run/stave") {
		t.Errorf("the API socket %s is not in the unit's RuntimeDirectory /run/stave", got.SocketPath())
	}
	if v := strings.TrimSpace(r.run(t, bin, "version", "--output", "json")); !strings.Contains(v, `"client"`) {
		t.Errorf("stave version: %s", v)
	}

	// 4. Purge: the files go, the data directory stays.
	marker := r.path(filepath.Join(packageDataDir, "keep"))
	if err := os.WriteFile(marker, []byte("volume data\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out = r.run(t, "dpkg", "--purge", "stave")
	t.Logf("dpkg --purge:\n%s", out)
	checkScriptOutput(t, r, "dpkg --purge", out)
	if !strings.Contains(out, packageDataDir+" (volumes and pool index) was kept") {
		t.Errorf("purge does not say that %s was kept", packageDataDir)
	}
	for _, p := range append(installed, conf, filepath.Dir(conf)) {
		if p == "/" || !strings.Contains(p, "stave") {
			continue // shared directories (/usr, /etc, ...)
		}
		if _, err := os.Lstat(r.path(p)); err == nil {
			t.Errorf("%s is left after purge", p)
		}
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("purge removed the data directory's contents: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), packageStepTimeout)
	defer cancel()
	if st, err := r.cmd(ctx, "dpkg-query", "-W", "-f=${Status}", "stave").CombinedOutput(); err == nil &&
		!strings.Contains(string(st), "not-installed") {
		t.Errorf("dpkg-query after purge: %s", st)
	}
}

// makePackage runs `make package` with BIN and DIST under work and returns
// the .deb. A failure to fetch nfpm through the module proxy skips t.
func makePackage(t *testing.T, root, work string) string {
	t.Helper()
	dist := filepath.Join(work, "dist")
	ctx, cancel := context.WithTimeout(context.Background(), packageBuildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", "--no-print-directory", "-C", root, "package",
		"GO="+goTool(), "BIN="+filepath.Join(work, "stave"), "DIST="+dist)
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			t.Fatalf("make package: killed after %v\n%s", packageBuildTimeout, out)
		}
		for _, h := range networkHints {
			if bytes.Contains(out, []byte(h)) && bytes.Contains(out, []byte("nfpm")) {
				t.Skipf("make package could not fetch nfpm through the Go module proxy (no network?): %v\n%s", err, out)
			}
		}
		t.Fatalf("make package: %v\n%s", err, out)
	}
	debs, err := filepath.Glob(filepath.Join(dist, "stave_*.deb"))
	if err != nil || len(debs) != 1 {
		t.Fatalf("make package made %q in %s (%v), want one stave_*.deb\n%s", debs, dist, err, out)
	}
	return debs[0]
}

// unpackGuestRoot extracts the guest image's initramfs (a gzip'd newc
// cpio of its whole debootstrap root) into dir.
func unpackGuestRoot(t *testing.T, initrd, dir string) {
	t.Helper()
	requireTool(t, "cpio")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(initrd)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(bufio.NewReader(f))
	if err != nil {
		t.Fatalf("%s: %v", initrd, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), packageStepTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "cpio", "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir, cmd.Stdin = dir, zr
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("unpacking %s: %v\n%s", initrd, err, out)
	}
	for _, p := range []string{"usr/bin/dpkg", "usr/bin/dpkg-query", "usr/sbin/ldconfig", "usr/sbin/start-stop-daemon", "usr/bin/install"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Fatalf("the guest root lacks %s, which dpkg and the maintainer scripts need: %v", p, err)
		}
	}
}

// checkScriptOutput fails t when the maintainer scripts printed a shell
// error (a missing command, a syntax error).
func checkScriptOutput(t *testing.T, r debRoot, what, out string) {
	t.Helper()
	// The guest image drops perl (tools/guest/build.sh), which
	// deb-systemd-helper is written in; the scripts call it with
	// `|| true`, as debhelper's do, and a Debian root has perl-base.
	_, err := os.Stat(r.path("/usr/bin/perl"))
	noPerl := r.chroot && err != nil
	for l := range strings.Lines(out) {
		if noPerl && strings.Contains(l, "deb-systemd-helper: not found") {
			continue
		}
		if strings.Contains(l, "not found") || strings.Contains(l, "Syntax error") || strings.Contains(l, "subprocess") {
			t.Errorf("%s: %s", what, strings.TrimSpace(l))
		}
	}
}

// checkFile checks that the installed path p has the given type and
// permission bits and, when src is set, the same content as src.
func checkFile(t *testing.T, r debRoot, p string, mode fs.FileMode, src string) {
	t.Helper()
	fi, err := os.Lstat(r.path(p))
	if err != nil {
		t.Errorf("%s is not installed: %v", p, err)
		return
	}
	if got := fi.Mode() & (fs.ModeType | fs.ModePerm); got != mode {
		t.Errorf("%s has mode %v, want %v", p, got, mode)
	}
	// As root, dpkg gives the files the owners the package says.
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && r.chroot && (st.Uid != 0 || st.Gid != 0) {
		t.Errorf("%s is owned by %d:%d, want root:root", p, st.Uid, st.Gid)
	}
	if src == "" {
		return
	}
	got, err := os.ReadFile(r.path(p))
	if err != nil {
		t.Error(err)
		return
	}
	want, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("installed %s differs from %s", p, src)
	}
}

// readUnit returns the [Service] and [Unit] keys of a systemd unit file,
// each key's values joined by spaces.
func readUnit(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := map[string]string{}
	for l := range strings.Lines(string(b)) {
		l = strings.TrimSpace(l)
		if l == "" || l[0] == '#' || l[0] == ';' || l[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			t.Fatalf("%s: bad line %q", path, l)
		}
		u[k] = strings.TrimSpace(fmt.Sprint(u[k], " ", v))
	}
	return u
}
