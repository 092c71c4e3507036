package faulttest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"stave.dev/stave/pool"
	"stave.dev/stave/target/scsi/sense"
)

var (
	seedFlag  = flag.Uint64("seed", 0, "replay a randomised fault test with this seed (0: pick one)")
	heavyFlag = flag.Bool("faulttest.heavy", false, "run the heavier variants of the fault tests (also FAULTTEST_HEAVY=1)")
)

// BlockSize is the pool's block: writes in these tests are aligned to it.
const BlockSize = 4096

// sectorSize is the granularity at which devices may tear writes and at
// which block contents identify themselves.
const sectorSize = 512

// heavy reports whether the opt-in heavy variants run.
func heavy() bool { return *heavyFlag || os.Getenv("FAULTTEST_HEAVY") == "1" }

// testSeed returns the seed for t: the -seed flag or a fresh one. It logs
// the command that replays the test.
func testSeed(t testing.TB) uint64 {
	t.Helper()
	s := *seedFlag
	if s == 0 {
		s = uint64(time.Now().UnixNano())
	}
	name := t.Name()
	if i := strings.IndexByte(name, '/'); i >= 0 {
		name = name[:i]
	}
	t.Logf("seed %d (replay: go test ./pool/faulttest -run '^%s$' -seed %d)", s, name, s)
	return s
}

// newRand returns a deterministic generator for seed and a stream label.
func newRand(seed uint64, stream uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, stream))
}

// testContext returns a context that ends before the test's deadline (or
// after d), so a hung pool call fails the test instead of the whole run.
func testContext(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

const blockMagic = 0x5354415645465431 // "STAVEFT1"

// splitmix64 is the stateless mixer used to derive block bytes.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// fillBlock writes into b (BlockSize bytes) the content of block lba as
// written by the write with sequence number seq. seq 0 means zeros.
func fillBlock(b []byte, lba int64, seq uint64) {
	if seq == 0 {
		clear(b[:BlockSize])
		return
	}
	for s := 0; s < BlockSize/sectorSize; s++ {
		sec := b[s*sectorSize : (s+1)*sectorSize]
		binary.LittleEndian.PutUint64(sec[0:], blockMagic)
		binary.LittleEndian.PutUint64(sec[8:], uint64(lba))
		binary.LittleEndian.PutUint64(sec[16:], seq)
		binary.LittleEndian.PutUint64(sec[24:], uint64(s))
		x := splitmix64(uint64(lba)*0x100000001b3 ^ seq<<8 ^ uint64(s))
		for i := 32; i < sectorSize; i += 8 {
			x = splitmix64(x)
			binary.LittleEndian.PutUint64(sec[i:], x)
		}
	}
}

// blockData returns n consecutive blocks starting at lba, all written by seq.
func blockData(lba int64, n int, seq uint64) []byte {
	b := make([]byte, n*BlockSize)
	for i := range n {
		fillBlock(b[i*BlockSize:], lba+int64(i), seq)
	}
	return b
}

// identify returns the write sequence number whose content b (one block at
// lba) is, 0 for an all-zero block, or an error describing it sector by
// sector when it is neither (torn, misdirected or garbage).
func identify(b []byte, lba int64) (uint64, error) {
	b = b[:BlockSize]
	var hdr [BlockSize / sectorSize]string
	seqs := map[uint64]bool{}
	for s := range BlockSize / sectorSize {
		sec := b[s*sectorSize : (s+1)*sectorSize]
		switch {
		case isZero(sec):
			hdr[s] = "zero"
			seqs[0] = true
		case binary.LittleEndian.Uint64(sec) == blockMagic:
			l := int64(binary.LittleEndian.Uint64(sec[8:]))
			q := binary.LittleEndian.Uint64(sec[16:])
			i := binary.LittleEndian.Uint64(sec[24:])
			hdr[s] = fmt.Sprintf("lba=%d seq=%d idx=%d", l, q, i)
			seqs[q] = true
		default:
			hdr[s] = "garbage"
			seqs[math.MaxUint64] = true
		}
	}
	if len(seqs) == 1 {
		for q := range seqs {
			if q == math.MaxUint64 {
				break
			}
			var want [BlockSize]byte
			fillBlock(want[:], lba, q)
			if bytes.Equal(b, want[:]) {
				return q, nil
			}
		}
	}
	return 0, fmt.Errorf("block %d is not a whole block of one write (torn, misdirected or corrupt): sectors [%s]",
		lba, strings.Join(hdr[:], "; "))
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// notAcked is the ack stamp of a write that was never acknowledged.
const notAcked = math.MaxUint64

// op is one write or unmap of the workload model.
type op struct {
	seq   uint64 // unique, > 0; an unmap's blocks read as seq 0 (zeros)
	lba   int64  // first block
	n     int    // blocks
	unmap bool
	issue uint64 // stamp taken before the call started
	ack   uint64 // stamp taken after it (and any Flush) returned nil; notAcked otherwise
}

// model records the writes made to one volume since a known state and
// checks a read-back against them.
//
// The rule, per block b: let W range over the writes covering b plus the
// known initial content (treated as a write acknowledged at stamp 0).
// The block must be the content of some W such that no acknowledged write
// W' covering b was issued after W was acknowledged (W'.issue > W.ack).
// Stamps come from one counter: issue is taken before the call starts and
// ack after it returned, so W'.issue > W.ack means W' really started after
// W completed, and an acknowledged W' must then win over W. An
// unacknowledged write has ack = ∞ and may or may not have happened.
// The block must be entirely that content: a torn block (sectors from
// different writes) or any other content fails.
type model struct {
	base  map[int64]uint64 // block → seq of its known initial content (absent: 0 = zeros)
	ops   map[uint64]*op
	cover map[int64][]*op
}

func newModel(base map[int64]uint64) *model {
	if base == nil {
		base = map[int64]uint64{}
	}
	return &model{base: base, ops: map[uint64]*op{}, cover: map[int64][]*op{}}
}

// issued records an op before it starts.
func (m *model) issued(o op) {
	p := &o
	p.ack = notAcked
	m.ops[o.seq] = p
	for i := range o.n {
		m.cover[o.lba+int64(i)] = append(m.cover[o.lba+int64(i)], p)
	}
}

// acked records that op seq was acknowledged at stamp.
func (m *model) acked(seq, stamp uint64) error {
	o := m.ops[seq]
	if o == nil {
		return fmt.Errorf("ack of unknown write seq %d", seq)
	}
	o.ack = stamp
	return nil
}

// allowed returns the sequence numbers block lba may hold (0 = zeros).
func (m *model) allowed(lba int64) []uint64 {
	ops := m.cover[lba]
	var maxIssue uint64 // largest issue stamp of an acknowledged write
	for _, o := range ops {
		if o.ack != notAcked && o.issue > maxIssue {
			maxIssue = o.issue
		}
	}
	var out []uint64
	if maxIssue == 0 {
		out = append(out, m.base[lba])
	}
	for _, o := range ops {
		if o.ack > maxIssue || o.ack == notAcked {
			if o.unmap {
				out = append(out, 0)
			} else {
				out = append(out, o.seq)
			}
		}
	}
	return out
}

// check verifies one block read back from lba and returns its seq.
func (m *model) check(lba int64, b []byte) (uint64, error) {
	got, err := identify(b, lba)
	if err != nil {
		return 0, fmt.Errorf("%w; %s", err, m.explain(lba))
	}
	for _, q := range m.allowed(lba) {
		if q == got {
			return got, nil
		}
	}
	return got, fmt.Errorf("block %d holds seq %d, which is not allowed (lost acknowledged write or resurrected old data); %s",
		lba, got, m.explain(lba))
}

// explain describes the history of block lba for a failure message.
func (m *model) explain(lba int64) string {
	var parts []string
	parts = append(parts, fmt.Sprintf("initial seq %d", m.base[lba]))
	ops := append([]*op(nil), m.cover[lba]...)
	sort.Slice(ops, func(i, j int) bool { return ops[i].issue < ops[j].issue })
	for _, o := range ops {
		kind := "write"
		if o.unmap {
			kind = "unmap"
		}
		ack := "not acked"
		if o.ack != notAcked {
			ack = fmt.Sprintf("acked@%d", o.ack)
		}
		parts = append(parts, fmt.Sprintf("%s seq %d [%d+%d] issued@%d %s", kind, o.seq, o.lba, o.n, o.issue, ack))
	}
	if len(parts) > 12 {
		parts = append(parts[:1], append([]string{"…"}, parts[len(parts)-10:]...)...)
	}
	return fmt.Sprintf("allowed %v; history: %s", m.allowed(lba), strings.Join(parts, ", "))
}

// reader is the read side of a volume (scsi.BlockDevice).
type reader interface {
	ReadAt(ctx context.Context, p []byte, off int64) error
}

// verifyVolume reads blocks [0, blocks) of v and checks them against m.
// It returns the state read (block → seq, zeros omitted) and at most a
// few errors.
func verifyVolume(ctx context.Context, v reader, m *model, blocks int64) (map[int64]uint64, []error) {
	return verifyRange(ctx, v, m, 0, blocks)
}

// verifyRange is verifyVolume for blocks [lo, hi).
func verifyRange(ctx context.Context, v reader, m *model, lo, hi int64) (map[int64]uint64, []error) {
	state := map[int64]uint64{}
	var errs []error
	const chunk = 64
	buf := make([]byte, chunk*BlockSize)
	for lba := lo; lba < hi; lba += chunk {
		n := min(chunk, hi-lba)
		if err := v.ReadAt(ctx, buf[:n*BlockSize], lba*BlockSize); err != nil {
			errs = append(errs, fmt.Errorf("read blocks [%d+%d]: %w", lba, n, err))
			if len(errs) > 5 {
				return state, errs
			}
			continue
		}
		for i := range n {
			q, err := m.check(lba+i, buf[i*BlockSize:(i+1)*BlockSize])
			if err != nil {
				errs = append(errs, err)
				if len(errs) > 5 {
					return state, errs
				}
			}
			if q != 0 {
				state[lba+i] = q
			}
		}
	}
	return state, errs
}

// expectSense asserts that err carries a *sense.Error with key and (when
// asc != 0xffff) the given ASC/ASCQ.
func expectSense(t testing.TB, err error, key sense.Key, asc sense.ASC, what string) {
	t.Helper()
	var se *sense.Error
	if !errors.As(err, &se) {
		t.Errorf("%s: got error %v (%T), want a *sense.Error %s/%s", what, err, err, key, asc)
		return
	}
	if se.Key != key || (asc != 0xffff && se.ASC != asc) {
		t.Errorf("%s: got sense %s/%s, want %s/%s (err %v)", what, se.Key, se.ASC, key, asc, err)
	}
}

// makeFiles creates n sparse files of size bytes in dir and returns their paths.
func makeFiles(t testing.TB, dir, prefix string, n int, size int64) []string {
	t.Helper()
	var paths []string
	for i := range n {
		p := filepath.Join(dir, fmt.Sprintf("%s%d", prefix, i))
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

// copyDir copies the regular files of src (recursively) into dst.
func copyDir(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) && p != src {
				return nil // removed while copying (pebble deletes obsolete files)
			}
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o600)
	})
}

// dirState summarises the files under dir (name, size, mtime, inode-ish)
// so a copy can be checked for having raced with a writer.
func dirState(dir string) (string, error) {
	var sb strings.Builder
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		var ino uint64
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			ino = st.Ino
		}
		fmt.Fprintf(&sb, "%s %d %d %d\n", p, fi.Size(), fi.ModTime().UnixNano(), ino)
		return nil
	})
	return sb.String(), err
}

// copyDirStable copies src to a fresh dst and retries (bounded) until no
// file changed while copying, so the copy is one instant of the directory.
func copyDirStable(src, dst string) error {
	var last error
	for range 50 {
		before, err := dirState(src)
		if err != nil {
			last = err
			continue
		}
		if err := os.RemoveAll(dst); err != nil {
			return err
		}
		if err := copyDir(src, dst); err != nil {
			last = err
			continue
		}
		after, err := dirState(src)
		if err != nil {
			last = err
			continue
		}
		if before == after {
			return nil
		}
		last = errors.New("directory changed while copying")
	}
	return fmt.Errorf("copy %s: %w", src, last)
}

// pebbleDirs returns the directories under metaDir that hold a pebble
// store (a CURRENT or MANIFEST-* file): the pool's index.
func pebbleDirs(metaDir string) ([]string, error) {
	var dirs []string
	err := filepath.WalkDir(metaDir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		name := d.Name()
		if name == "CURRENT" || strings.HasPrefix(name, "MANIFEST-") {
			dir := filepath.Dir(p)
			if len(dirs) == 0 || dirs[len(dirs)-1] != dir {
				dirs = append(dirs, dir)
			}
		}
		return nil
	})
	return dirs, err
}

// deleteIndex removes the pebble index from metaDir, keeping the device
// list, as after losing the metadata disk's index.
func deleteIndex(t testing.TB, metaDir string) {
	t.Helper()
	dirs, err := pebbleDirs(metaDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) == 0 {
		t.Fatalf("no pebble index found under %s", metaDir)
	}
	for _, d := range dirs {
		if d == metaDir {
			// The index shares the directory with pool.json: remove
			// everything but the device list.
			ents, err := os.ReadDir(d)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				if e.Name() == "pool.json" {
					continue
				}
				if err := os.RemoveAll(filepath.Join(d, e.Name())); err != nil {
					t.Fatal(err)
				}
			}
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			t.Fatal(err)
		}
	}
}

// testSegmentSize is the smallest segment the pool accepts (CreateOptions):
// small segments make the tests cross segment boundaries and fill pools.
const testSegmentSize = 4 << 20

// filePool is a pool on plain files in a temp dir, opened through a
// faultFiles so tests can fail devices.
type filePool struct {
	t     testing.TB
	dir   string
	files []string
	ff    *faultFiles
	opts  pool.Options
	p     *pool.Pool
}

// newFilePool creates and opens a pool of devices files of size bytes.
// gc is Options.GCInterval (0: the pool's default).
func newFilePool(ctx context.Context, t testing.TB, devices int, size int64, gc time.Duration) *filePool {
	t.Helper()
	f := &filePool{t: t, dir: t.TempDir(), ff: newFaultFiles()}
	f.files = makeFiles(t, f.dir, "dev", devices, size)
	meta := filepath.Join(f.dir, "meta")
	if err := pool.Create(ctx, pool.CreateOptions{Devices: f.files, MetaDir: meta, SegmentSize: testSegmentSize, OpenDevice: f.ff.open}); err != nil {
		must(t, err, "Create")
	}
	f.opts = pool.Options{MetaDir: meta, OpenDevice: f.ff.open, GCInterval: gc}
	f.open(ctx)
	t.Cleanup(func() {
		if f.p != nil {
			f.p.Close()
		}
	})
	return f
}

// open opens the pool (after close).
func (f *filePool) open(ctx context.Context) {
	f.t.Helper()
	p, err := pool.Open(ctx, f.opts)
	if err != nil {
		f.t.Fatalf("Open: %v", err)
	}
	f.p = p
}

// close closes the pool.
func (f *filePool) close() {
	f.t.Helper()
	p := f.p
	f.p = nil
	if err := p.Close(); err != nil {
		f.t.Fatalf("Close: %v", err)
	}
}

// volume returns the named volume or fails the test.
func (f *filePool) volume(name string) *pool.Volume {
	f.t.Helper()
	v, err := f.p.Volume(name)
	if err != nil {
		f.t.Fatalf("Volume(%q): %v", name, err)
	}
	return v
}

// writeSeq writes blocks [lba, lba+n) with content seq (fua) and records
// them in exp; it fails the test on error.
func writeSeq(ctx context.Context, t testing.TB, v *pool.Volume, exp map[int64]uint64, lba int64, n int, seq uint64) {
	t.Helper()
	if err := v.WriteAt(ctx, blockData(lba, n, seq), lba*BlockSize, true); err != nil {
		t.Fatalf("write [%d+%d] seq %d: %v", lba, n, seq, err)
	}
	for i := range int64(n) {
		exp[lba+i] = seq
	}
}

// expectBlocks checks that blocks [0, blocks) of v hold exactly exp
// (absent: zeros).
func expectBlocks(ctx context.Context, t testing.TB, v reader, exp map[int64]uint64, blocks int64, what string) {
	t.Helper()
	_, errs := verifyVolume(ctx, v, newModel(exp), blocks)
	for _, e := range errs {
		t.Errorf("%s: %v", what, e)
	}
}

// copyMap returns a copy of m.
func copyMap(m map[int64]uint64) map[int64]uint64 {
	c := make(map[int64]uint64, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// must fails the test when err is not nil.
func must(t testing.TB, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
