package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Target is one iSCSI target under test: a daemon this program starts and
// stops, serving one logical unit backed by a file of the benchmark size.
type Target interface {
	// Key is the target's name in flags and logs ("stave", "pool", "tgt").
	Key() string
	// Start starts the daemon and creates the logical unit; it returns
	// once the LU answers READ CAPACITY.
	Start(ctx context.Context) error
	// URL is the libiscsi URL of the logical unit.
	URL() string
	// PID is the daemon's process id, for its CPU time.
	PID() int
	// BackingFiles are the files that hold the LU's blocks (the pool's
	// devices for a pool volume).
	BackingFiles() []string
	// Fillable reports whether the LU's content is its backing file's, so
	// that the file may be filled directly (not a pool's devices).
	Fillable() bool
	// Exited reports whether the daemon has exited, and how.
	Exited() (bool, error)
	// Stop stops the daemon; it is safe to call more than once and after
	// a failed Start.
	Stop()
}

// daemon is a child process whose exit is watched.
type daemon struct {
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{} // closed when the process has exited
	err  error         // its Wait error; valid once done is closed
}

// startDaemon starts name args with its output to logPath, at niceness
// nice (0: unchanged) so that every thread it creates inherits it.
func startDaemon(logPath string, nice int, name string, args ...string) (*daemon, error) {
	name, args = niced(nice, name, args)
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout = f
	cmd.Stderr = f
	// Its own process group: a ^C to this program reaches it only through
	// Stop, so that the LU is torn down in order. If this program dies
	// without stopping it, the kernel kills it (the ports stay free).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &daemon{cmd: cmd, log: f, done: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		f.Close()
		close(d.done)
	}()
	return d, nil
}

func (d *daemon) exited() (bool, error) {
	if d == nil {
		return true, nil
	}
	select {
	case <-d.done:
		return true, d.err
	default:
		return false, nil
	}
}

// wait waits up to t for the process to exit and reports whether it did.
func (d *daemon) wait(t time.Duration) bool {
	select {
	case <-d.done:
		return true
	case <-time.After(t):
		return false
	}
}

// stop sends SIGTERM, waits up to grace, then SIGKILL.
func (d *daemon) stop(grace time.Duration) {
	if d == nil {
		return
	}
	if ok, _ := d.exited(); ok {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	if d.wait(grace) {
		return
	}
	_ = d.cmd.Process.Kill()
	d.wait(5 * time.Second)
}

// tail returns the last n lines of the daemon's log.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// niced returns the command line that runs name args under nice(1).
func niced(nice int, name string, args []string) (string, []string) {
	if nice == 0 {
		return name, args
	}
	return "nice", append([]string{"-n", strconv.Itoa(nice), name}, args...)
}

// portFree reports whether nothing listens on 127.0.0.1:port.
func portFree(port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
	if err != nil {
		return true
	}
	c.Close()
	return false
}

var (
	blockLenRE  = regexp.MustCompile(`LOGICAL BLOCK LENGTH IN BYTES:([0-9]+)`)
	totalSizeRE = regexp.MustCompile(`Total size:([0-9]+)`)
)

// Geometry is what READ CAPACITY (16) reports for a logical unit.
type Geometry struct {
	BlockSize int
	Size      int64
}

// parseReadCapacity parses the output of iscsi-readcapacity16.
func parseReadCapacity(out string) (Geometry, error) {
	b := blockLenRE.FindStringSubmatch(out)
	s := totalSizeRE.FindStringSubmatch(out)
	if b == nil || s == nil {
		return Geometry{}, fmt.Errorf("iscsi-readcapacity16: unexpected output: %s", lastLine(out))
	}
	bs, _ := strconv.Atoi(b[1])
	size, _ := strconv.ParseInt(s[1], 10, 64)
	if bs <= 0 || size <= 0 {
		return Geometry{}, fmt.Errorf("iscsi-readcapacity16: block size %d, size %d", bs, size)
	}
	return Geometry{BlockSize: bs, Size: size}, nil
}

// waitLU polls url with iscsi-readcapacity16 until it answers or d runs
// out; alive reports whether the daemon is still there.
func waitLU(ctx context.Context, url, initiator string, d time.Duration, alive func() error) (Geometry, error) {
	deadline := time.Now().Add(d)
	var last error
	for time.Now().Before(deadline) {
		if err := alive(); err != nil {
			return Geometry{}, err
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		out, err := exec.CommandContext(cctx, "iscsi-readcapacity16", "-i", initiator, url).CombinedOutput()
		cancel()
		if err == nil {
			return parseReadCapacity(string(out))
		}
		last = fmt.Errorf("%w: %s", err, lastLine(string(out)))
		if ctx.Err() != nil {
			return Geometry{}, ctx.Err()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return Geometry{}, fmt.Errorf("%s not reachable after %v: %v", url, d, last)
}

// staveTarget runs `stave serve` with one volume: a file volume, or with
// pool set, a pool volume on a new pool of pool.devices files.
type staveTarget struct {
	key       string
	bin       string
	dir       string // data dir
	port      int
	size      int64
	volume    string
	initiator string
	nice      int
	pool      *poolSpec // nil: a file volume
	d         *daemon
}

// poolSpec is the pool under a pool-backed Stave target.
type poolSpec struct {
	Devices []string // device files, created and written through by Start with DevSize bytes
	DevSize int64
	Policy  string // "k+m"
	// KeepFiles keeps device files that already have DevSize bytes (the
	// layouts mode's, written by fio) instead of creating them anew.
	KeepFiles bool
}

func (s *staveTarget) Key() string { return s.key }
func (s *staveTarget) iqn() string { return "iqn.2026-11.dev.stave:" + s.volume }
func (s *staveTarget) URL() string {
	return fmt.Sprintf("iscsi://127.0.0.1:%d/%s/0", s.port, s.iqn())
}
func (s *staveTarget) api() string { return "unix:" + filepath.Join(s.dir, "api.sock") }
func (s *staveTarget) logPath() string {
	return filepath.Join(filepath.Dir(s.dir), s.key+"-serve.log")
}
func (s *staveTarget) BackingFiles() []string {
	if s.pool != nil {
		// The devices, and the index's tables, which the pool also reads
		// through the page cache.
		ssts, _ := filepath.Glob(filepath.Join(s.dir, "pool", "index", "*.sst"))
		return append(slices.Clone(s.pool.Devices), ssts...)
	}
	return []string{filepath.Join(s.dir, "volumes", s.volume, "data")}
}
func (s *staveTarget) Fillable() bool { return s.pool == nil }

// cli runs a stave client verb against the daemon.
func (s *staveTarget) cli(ctx context.Context, args ...string) error {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(cctx, s.bin, append([]string{"--api", s.api()}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("stave %s: %w: %s", strings.Join(args, " "), err, lastLine(string(out)))
	}
	return nil
}
func (s *staveTarget) PID() int              { return s.d.cmd.Process.Pid }
func (s *staveTarget) Exited() (bool, error) { return s.d.exited() }

func (s *staveTarget) Start(ctx context.Context) error {
	if !portFree(s.port) {
		return fmt.Errorf("127.0.0.1:%d is in use", s.port)
	}
	// A fresh data dir: one left by an earlier run with the same -work
	// would already hold the volume.
	if err := os.RemoveAll(s.dir); err != nil {
		return err
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	d, err := startDaemon(s.logPath(), s.nice, s.bin, "serve", "--data-dir", s.dir,
		"--portal", fmt.Sprintf("127.0.0.1:%d", s.port), "--api", s.api())
	if err != nil {
		return err
	}
	s.d = d
	alive := func() error {
		if ok, err := d.exited(); ok {
			return fmt.Errorf("stave serve exited (%v): %s", err, tail(s.logPath(), 10))
		}
		return nil
	}
	up := false
	for range 75 {
		if err := alive(); err != nil {
			return err
		}
		if _, err := os.Stat(filepath.Join(s.dir, "api.sock")); err == nil {
			if s.cli(ctx, "volume", "list") == nil {
				up = true
				break
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !up {
		return fmt.Errorf("stave serve did not answer on %s: %s", s.api(), tail(s.logPath(), 5))
	}
	create := []string{"volume", "create", s.volume, "--size", strconv.FormatInt(s.size, 10)}
	if s.pool != nil {
		args := []string{"pool", "create"}
		for _, dev := range s.pool.Devices {
			if st, err := os.Stat(dev); s.pool.KeepFiles && err == nil && st.Size() == s.pool.DevSize {
				args = append(args, "--device", dev)
				continue
			}
			// Written through once, like the layouts mode's fio pass: a
			// pool's devices are raw disks, whose blocks need no
			// allocation; in a sparse file every new segment would make
			// each batch's fdatasync commit the file system's journal
			// too (measured: 609 against 372 µs per 2+1 batch).
			if err := createFile(dev, s.pool.DevSize); err != nil {
				return err
			}
			if err := fillFile(dev); err != nil {
				return err
			}
			args = append(args, "--device", dev)
		}
		if err := s.cli(ctx, args...); err != nil {
			return err
		}
		create = append(create, "--policy", s.pool.Policy)
	}
	if err := s.cli(ctx, create...); err != nil {
		return err
	}
	g, err := waitLU(ctx, s.URL(), s.initiator, 15*time.Second, alive)
	if err != nil {
		return err
	}
	if g.Size != s.size {
		return fmt.Errorf("stave LU is %d bytes, want %d", g.Size, s.size)
	}
	return nil
}

func (s *staveTarget) Stop() { s.d.stop(10 * time.Second) }

// tgtTarget runs Debian's tgtd with one target: LUN 1 (LUN 0 is tgt's
// controller) on an rdwr (buffered pread/pwrite) backing store.
type tgtTarget struct {
	dir       string
	port      int
	control   int // tgtadm -C
	size      int64
	initiator string
	nice      int
	d         *daemon
	tid       int
	made      bool // the target exists in tgtd
}

func (t *tgtTarget) Key() string            { return "tgt" }
func (t *tgtTarget) iqn() string            { return "iqn.2026-11.dev.stave.bench:tgt" }
func (t *tgtTarget) URL() string            { return fmt.Sprintf("iscsi://127.0.0.1:%d/%s/1", t.port, t.iqn()) }
func (t *tgtTarget) BackingFile() string    { return filepath.Join(t.dir, "tgt.img") }
func (t *tgtTarget) BackingFiles() []string { return []string{t.BackingFile()} }
func (t *tgtTarget) Fillable() bool         { return true }
func (t *tgtTarget) PID() int               { return t.d.cmd.Process.Pid }
func (t *tgtTarget) Exited() (bool, error)  { return t.d.exited() }
func (t *tgtTarget) logPath() string        { return filepath.Join(t.dir, "tgtd.log") }

// adm runs tgtadm against this tgtd.
func (t *tgtTarget) adm(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	args = append([]string{"-C", strconv.Itoa(t.control)}, args...)
	out, err := exec.CommandContext(ctx, "tgtadm", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("tgtadm %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (t *tgtTarget) Start(ctx context.Context) error {
	if !portFree(t.port) {
		return fmt.Errorf("127.0.0.1:%d is in use", t.port)
	}
	// A tgtd left over on our control port would take our tgtadm calls.
	if err := t.adm("--op", "show", "--mode", "system"); err == nil {
		return fmt.Errorf("a tgtd already answers on control port %d", t.control)
	}
	if err := createFile(t.BackingFile(), t.size); err != nil {
		return err
	}
	d, err := startDaemon(t.logPath(), t.nice, "tgtd", "-f", "--iscsi",
		fmt.Sprintf("portal=127.0.0.1:%d", t.port), "-C", strconv.Itoa(t.control))
	if err != nil {
		return err
	}
	t.d = d
	alive := func() error {
		if ok, err := d.exited(); ok {
			return fmt.Errorf("tgtd exited (%v): %s", err, tail(t.logPath(), 10))
		}
		return nil
	}
	t.tid = 1
	for i := 0; ; i++ {
		err = t.adm("--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", strconv.Itoa(t.tid), "-T", t.iqn())
		if err == nil {
			break
		}
		if aerr := alive(); aerr != nil {
			return aerr
		}
		if i == 50 || ctx.Err() != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.made = true
	if err := t.adm("--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", strconv.Itoa(t.tid),
		"--lun", "1", "-b", t.BackingFile(), "--bstype", "rdwr"); err != nil {
		return err
	}
	if err := t.adm("--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", strconv.Itoa(t.tid), "-I", "ALL"); err != nil {
		return err
	}
	g, err := waitLU(ctx, t.URL(), t.initiator, 10*time.Second, alive)
	if err != nil {
		return err
	}
	if g.Size != t.size {
		return fmt.Errorf("tgt LU is %d bytes, want %d", g.Size, t.size)
	}
	return nil
}

// Stop deletes the target first: tgtd ignores SIGTERM while it has any.
func (t *tgtTarget) Stop() {
	if t.d == nil {
		return
	}
	if ok, _ := t.d.exited(); ok {
		return
	}
	if t.made {
		_ = t.adm("--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", strconv.Itoa(t.tid), "--force")
		t.made = false
	}
	_ = t.adm("--op", "delete", "--mode", "system")
	if t.d.wait(5 * time.Second) {
		return
	}
	t.d.stop(2 * time.Second)
}

// createFile creates a sparse file of size bytes at path.
func createFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// fillFile writes fillPattern over the whole of path (without changing its
// size) and syncs it, so that reads hit allocated, non-zero blocks.
func fillFile(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = fillPattern
	}
	for off := int64(0); off < st.Size(); off += int64(len(buf)) {
		n := min(int64(len(buf)), st.Size()-off)
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// Whence values of lseek(2) on Linux that skip holes.
const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

// warmFile reads path through, so that its pages are in the page cache
// (the machine reclaims idle page cache within about 30 s). It reads only
// the allocated extents (SEEK_DATA/SEEK_HOLE): a pool's device files are
// mostly holes.
func warmFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	buf := make([]byte, 4<<20)
	for off := int64(0); off < st.Size(); {
		start, err := f.Seek(off, seekData)
		if err != nil {
			// ENXIO: no data after off. Filesystems without SEEK_DATA
			// fail differently; then read everything.
			if errors.Is(err, syscall.ENXIO) {
				return nil
			}
			start = off
		}
		end, err := f.Seek(start, seekHole)
		if err != nil {
			end = st.Size()
		}
		for p := start; p < end; {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), end-p)], p)
			p += int64(n)
			if err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
		}
		off = end
	}
	return nil
}
