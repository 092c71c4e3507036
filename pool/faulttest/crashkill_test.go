package faulttest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"stave.dev/stave/pool"
)

// The crash writer is this test binary re-executed with envCrashWriter
// set: TestMain runs crashWriterMain instead of the tests. It opens the
// pool, prints "R", then writes from several goroutines until it is
// killed, printing one line per event on stdout (a pipe to the parent):
//
//	I <seq> <lba> <n> <w|u> <issue>   before a write (w) or unmap (u) starts
//	A <seq> <ack>                     after it returned nil (and Flush did)
//	E <seq> <error>                   after it failed
//
// Each line is one write(2) of less than PIPE_BUF bytes, so it reaches the
// parent whole or not at all, and an I line is in the pipe before the
// write it announces starts. Stamps come from one counter (see model).
const (
	envCrashWriter = "FAULTTEST_CRASHWRITER"
	envMeta        = "FAULTTEST_META"
	envVolume      = "FAULTTEST_VOLUME"
	envSeed        = "FAULTTEST_SEED"
	envSeqBase     = "FAULTTEST_SEQBASE"
	envWorkers     = "FAULTTEST_WORKERS"
	envBlocks      = "FAULTTEST_BLOCKS"
	envLifetime    = "FAULTTEST_LIFETIME"
	envGCInterval  = "FAULTTEST_GC_MS"
)

// TestMain runs the crash writer when re-executed as one, else the tests.
func TestMain(m *testing.M) {
	if os.Getenv(envCrashWriter) == "1" {
		os.Exit(crashWriterMain())
	}
	os.Exit(m.Run())
}

// lineOut writes whole lines to stdout, one write(2) each.
type lineOut struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lineOut) printf(format string, args ...any) {
	b := fmt.Appendf(nil, format, args...)
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.w.Write(b); err != nil {
		// The parent is gone: nothing else to report to.
		os.Exit(4)
	}
}

func envInt(name string) int64 {
	v, err := strconv.ParseInt(os.Getenv(name), 10, 64)
	if err != nil {
		fmt.Fprintf(os.Stderr, "crashwriter: bad %s: %v\n", name, err)
		os.Exit(2)
	}
	return v
}

// crashWriterMain is the child's main. It returns only when its lifetime
// (a safety net; the parent kills it long before) ends or on a setup error.
func crashWriterMain() int {
	ctx := context.Background()
	seed := uint64(envInt(envSeed))
	seqBase := uint64(envInt(envSeqBase))
	workers := int(envInt(envWorkers))
	blocks := envInt(envBlocks)
	lifetime := time.Duration(envInt(envLifetime)) * time.Millisecond
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	gc := time.Duration(envInt(envGCInterval)) * time.Millisecond
	p, err := pool.Open(ctx, pool.Options{MetaDir: os.Getenv(envMeta), Logger: logger, GCInterval: gc})
	if err != nil {
		fmt.Fprintf(os.Stderr, "crashwriter: open: %v\n", err)
		return 2
	}
	v, err := p.Volume(os.Getenv(envVolume))
	if err != nil {
		fmt.Fprintf(os.Stderr, "crashwriter: volume: %v\n", err)
		return 2
	}
	out := &lineOut{w: os.Stdout}
	out.printf("R")
	var clock, seqs atomic.Uint64
	for w := range workers {
		go func() {
			rng := newRand(seed, uint64(w))
			for {
				n := 1 + rng.IntN(8)
				if rng.IntN(8) == 0 {
					// Large writes: batches that the committer writes
					// while others are in flight (in other segments).
					n = 64 + rng.IntN(65)
				}
				lba := rng.Int64N(blocks - int64(n) + 1)
				unmap := rng.IntN(10) == 0
				fua := rng.IntN(3) != 0
				seq := seqBase + seqs.Add(1)
				kind := "w"
				if unmap {
					kind = "u"
				}
				issue := clock.Add(1)
				out.printf("I %d %d %d %s %d", seq, lba, n, kind, issue)
				var err error
				if unmap {
					err = v.Unmap(ctx, lba*BlockSize, int64(n)*BlockSize)
				} else {
					err = v.WriteAt(ctx, blockData(lba, n, seq), lba*BlockSize, fua)
				}
				if err == nil && (unmap || !fua) {
					err = v.Flush(ctx)
				}
				if err != nil {
					out.printf("E %d %s", seq, strings.ReplaceAll(err.Error(), "\n", " "))
					continue
				}
				out.printf("A %d %d", seq, clock.Add(1))
			}
		}()
	}
	<-time.After(lifetime)
	fmt.Fprintf(os.Stderr, "crashwriter: not killed within %v\n", lifetime)
	return 3
}

// childRun is the outcome of one crash writer run.
type childRun struct {
	ready  bool
	lines  []string
	stderr string
}

// runCrashWriter starts the crash writer on the pool in metaDir, kills it
// with SIGKILL at a random moment (usually 50-300 ms after it is ready,
// sometimes 0-40 ms after it starts, i.e. during Open's replay) and returns
// what it printed.
func runCrashWriter(t *testing.T, it int, seed uint64, metaDir, volume string, blocks int64, seqBase uint64) childRun {
	t.Helper()
	rng := newRand(seed, uint64(it)<<8|1)
	early := rng.IntN(5) == 0
	delay := time.Duration(50+rng.IntN(251)) * time.Millisecond
	if early {
		delay = time.Duration(rng.IntN(41)) * time.Millisecond
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		envCrashWriter+"=1",
		envMeta+"="+metaDir,
		envVolume+"="+volume,
		envSeed+"="+strconv.FormatUint(rng.Uint64()>>1, 10),
		envSeqBase+"="+strconv.FormatUint(seqBase, 10),
		envWorkers+"="+strconv.Itoa(2+rng.IntN(5)),
		envBlocks+"="+strconv.FormatInt(blocks, 10),
		envLifetime+"=60000",
		envGCInterval+"="+strconv.Itoa(5+rng.IntN(46)),
	)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var run childRun
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		first := true
		for sc.Scan() {
			line := sc.Text()
			if line == "R" && first {
				close(ready)
				first = false
				continue
			}
			run.lines = append(run.lines, line)
		}
	}()
	if !early {
		select {
		case <-ready:
			run.ready = true
		case <-done:
			// Exited before ready: a setup error, reported below.
		case <-time.After(30 * time.Second):
			t.Errorf("iteration %d: crash writer not ready after 30s", it)
		}
	}
	kill := time.NewTimer(delay)
	select {
	case <-kill.C:
	case <-done:
		kill.Stop()
	}
	_ = cmd.Process.Kill() // SIGKILL
	<-done
	werr := cmd.Wait()
	run.stderr = stderr.String()
	select {
	case <-ready:
		run.ready = true
	default:
	}
	if ws, ok := cmd.ProcessState.Sys().(interface{ Signaled() bool }); !ok || !ws.Signaled() {
		t.Errorf("iteration %d: crash writer exited by itself (%v); stderr:\n%s", it, werr, run.stderr)
	}
	return run
}

// parseRun feeds a crash writer's lines into m; it returns the number of
// writes issued and acknowledged and any write errors.
func parseRun(m *model, lines []string) (issued, acked int, errs []string, err error) {
	for _, line := range lines {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "I":
			if len(f) != 6 {
				return issued, acked, errs, fmt.Errorf("bad line %q", line)
			}
			seq, _ := strconv.ParseUint(f[1], 10, 64)
			lba, _ := strconv.ParseInt(f[2], 10, 64)
			n, _ := strconv.Atoi(f[3])
			issue, _ := strconv.ParseUint(f[5], 10, 64)
			m.issued(op{seq: seq, lba: lba, n: n, unmap: f[4] == "u", issue: issue})
			issued++
		case "A":
			if len(f) != 3 {
				return issued, acked, errs, fmt.Errorf("bad line %q", line)
			}
			seq, _ := strconv.ParseUint(f[1], 10, 64)
			stamp, _ := strconv.ParseUint(f[2], 10, 64)
			if err := m.acked(seq, stamp); err != nil {
				return issued, acked, errs, err
			}
			acked++
		case "E":
			errs = append(errs, line)
		default:
			return issued, acked, errs, fmt.Errorf("bad line %q", line)
		}
	}
	return issued, acked, errs, nil
}

// TestCrashKill kills a writing process (SIGKILL) at random moments and
// checks after each reopen (pool.Open replays the log) that every
// acknowledged write survived whole and nothing else appeared (see model
// for the exact rule), on 1+0, 2+1 and 4+2 pools. Each policy runs 20
// iterations (100 with -faulttest.heavy) on the same small pool, so later
// iterations replay logs that grew across earlier crashes and the cleaner
// (GC) is killed in the middle of its work too.
func TestCrashKill(t *testing.T) {
	seed := testSeed(t)
	iters := 20
	if heavy() {
		iters = 100
	}
	for _, c := range []struct {
		name    string
		devices int
	}{{"1+0", 1}, {"2+1", 3}, {"4+2", 6}} {
		t.Run(c.name, func(t *testing.T) {
			crashKillPolicy(t, seed+uint64(c.devices), c.devices, iters)
		})
	}
}

func crashKillPolicy(t *testing.T, seed uint64, devices, iters int) {
	ctx := testContext(t, 3*time.Minute)
	dir := t.TempDir()
	meta := filepath.Join(dir, "meta")
	// Ten segments per device: the log wraps many times over the
	// iterations, so the cleaner (GCInterval 5-50 ms in the writer) runs
	// and gets killed mid-pass.
	files := makeFiles(t, dir, "dev", devices, superblockArea+10*testSegmentSize)
	const volume = "crash"
	const blocks = 512 // 2 MiB: small, so concurrent writes overlap often
	if err := pool.Create(ctx, pool.CreateOptions{Devices: files, MetaDir: meta, SegmentSize: testSegmentSize}); err != nil {
		must(t, err, "Create")
	}
	p, err := pool.Open(ctx, pool.Options{MetaDir: meta})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if _, err := p.CreateVolume(ctx, volume, blocks*BlockSize, pool.Policy{}); err != nil {
		must(t, err, "CreateVolume")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	base := map[int64]uint64{}
	var totIssued, totAcked, early int
	for it := range iters {
		if ctx.Err() != nil {
			t.Fatalf("out of time after %d iterations", it)
		}
		run := runCrashWriter(t, it, seed, meta, volume, blocks, uint64(it+1)<<32)
		if !run.ready {
			early++
		}
		m := newModel(base)
		issued, acked, werrs, err := parseRun(m, run.lines)
		if err != nil {
			t.Fatalf("seed %d iteration %d: %v", seed, it, err)
		}
		if len(werrs) > 0 {
			t.Errorf("seed %d iteration %d: %d writes failed in the crash writer, first: %s", seed, it, len(werrs), werrs[0])
		}
		totIssued += issued
		totAcked += acked
		p, err := pool.Open(ctx, pool.Options{MetaDir: meta})
		if err != nil {
			t.Fatalf("seed %d iteration %d: Open after kill: %v\ncrash writer stderr:\n%s", seed, it, err, run.stderr)
		}
		v, err := p.Volume(volume)
		if err != nil {
			t.Fatalf("seed %d iteration %d: Volume: %v", seed, it, err)
		}
		state, errs := verifyVolume(ctx, v, m, blocks)
		if len(errs) > 0 {
			for _, e := range errs {
				t.Errorf("seed %d iteration %d (policy %d devices, %d issued, %d acked, ready=%v): %v",
					seed, it, devices, issued, acked, run.ready, e)
			}
			p.Close()
			t.FailNow()
		}
		if err := p.Close(); err != nil {
			t.Fatalf("seed %d iteration %d: Close: %v", seed, it, err)
		}
		if it%5 == 4 {
			// A second open must see exactly the same blocks: what the
			// first open decided about in-flight writes is final.
			p, err := pool.Open(ctx, pool.Options{MetaDir: meta})
			if err != nil {
				t.Fatalf("seed %d iteration %d: second Open: %v", seed, it, err)
			}
			v, err := p.Volume(volume)
			if err != nil {
				t.Fatalf("seed %d iteration %d: Volume: %v", seed, it, err)
			}
			_, errs := verifyVolume(ctx, v, newModel(state), blocks)
			for _, e := range errs {
				t.Errorf("seed %d iteration %d: second open differs from the first: %v", seed, it, e)
			}
			if err := p.Close(); err != nil {
				t.Fatalf("seed %d iteration %d: Close: %v", seed, it, err)
			}
			if t.Failed() {
				t.FailNow()
			}
		}
		base = state
	}
	t.Logf("%d kills (%d during open), %d writes issued, %d acknowledged and verified", iters, early, totIssued, totAcked)
}
