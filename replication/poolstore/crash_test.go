package poolstore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"stave.dev/stave/pool"
	"stave.dev/stave/replication"
)

// The crash writer is this test binary re-executed with envCrashWriter
// set: TestMain runs crashWriterMain instead of the tests. It opens the
// pool and the store, prints "R", then, from several workers, each owning
// a range of blocks, calls WriteAt, Unmap and SetBlocks (lower versions
// included) until it is killed, printing one line per event:
//
//	I <worker> <first> <v0,v1,...>   before a call: the version each block
//	                                 of [first, ...) gets (0: unmapped)
//	A <worker>                       after the call returned nil
//
// A block of version v holds blockData(lba, v). Each line is one
// write(2) of less than PIPE_BUF bytes.
const (
	envCrashWriter = "POOLSTORE_CRASHWRITER"
	envMeta        = "POOLSTORE_META"
	envSeed        = "POOLSTORE_SEED"
	envWorkers     = "POOLSTORE_WORKERS"
)

// crashBlocks is the blocks the crash writer uses (of testSize).
const crashBlocks = 240

// TestMain runs the crash writer when re-executed as one, else the tests.
func TestMain(m *testing.M) {
	if os.Getenv(envCrashWriter) == "1" {
		os.Exit(crashWriterMain())
	}
	os.Exit(m.Run())
}

// blockData is the content of block lba at version ver (ver != 0).
func blockData(lba int64, ver uint64) []byte {
	r := rand.New(rand.NewPCG(uint64(lba), ver))
	b := make([]byte, replication.BlockSize)
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

func crashWriterMain() int {
	ctx := context.Background()
	seed, err1 := strconv.ParseUint(os.Getenv(envSeed), 10, 64)
	workers, err2 := strconv.Atoi(os.Getenv(envWorkers))
	if err1 != nil || err2 != nil || workers <= 0 {
		fmt.Fprintf(os.Stderr, "crashwriter: bad environment: %v %v\n", err1, err2)
		return 2
	}
	p, err := pool.Open(ctx, pool.Options{MetaDir: os.Getenv(envMeta), GCInterval: 20 * time.Millisecond})
	if err != nil {
		fmt.Fprintf(os.Stderr, "crashwriter: open: %v\n", err)
		return 2
	}
	v, err := p.Volume("crash")
	if err != nil {
		fmt.Fprintf(os.Stderr, "crashwriter: volume: %v\n", err)
		return 2
	}
	s := Open(v)
	var mu sync.Mutex
	printf := func(format string, args ...any) {
		b := fmt.Appendf(nil, format+"\n", args...)
		mu.Lock()
		defer mu.Unlock()
		if _, err := os.Stdout.Write(b); err != nil {
			os.Exit(4) // the parent is gone
		}
	}
	printf("R")
	per := int64(crashBlocks / workers)
	for w := range workers {
		go func() {
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			lo := int64(w) * per
			for counter := uint64(1); ; counter++ {
				n := 1 + rng.Int64N(6)
				first := lo + rng.Int64N(per-n+1)
				vers := make([]uint64, n)
				var call func() error
				switch rng.IntN(4) {
				case 0: // unmap whole blocks
					call = func() error {
						return s.Unmap(ctx, first*replication.BlockSize, n*replication.BlockSize, replication.VersionOf(seed%100+1, counter))
					}
				case 1: // set blocks, versions lower or higher than now
					var data []byte
					for i := range vers {
						if rng.IntN(4) > 0 {
							vers[i] = replication.VersionOf(1+rng.Uint64N(3), 1+rng.Uint64N(1<<20))
							data = append(data, blockData(first+int64(i), vers[i])...)
						}
					}
					call = func() error { return s.SetBlocks(ctx, first, vers, data) }
				default:
					ver := replication.VersionOf(1+rng.Uint64N(3), 1+rng.Uint64N(1<<20))
					var data []byte
					for i := range vers {
						vers[i] = ver
						data = append(data, blockData(first+int64(i), ver)...)
					}
					call = func() error { return s.WriteAt(ctx, data, first*replication.BlockSize, ver) }
				}
				vs := make([]string, n)
				for i, v := range vers {
					vs[i] = strconv.FormatUint(v, 10)
				}
				printf("I %d %d %s", w, first, strings.Join(vs, ","))
				if err := call(); err != nil {
					fmt.Fprintf(os.Stderr, "crashwriter: worker %d: %v\n", w, err)
					os.Exit(5)
				}
				printf("A %d", w)
			}
		}()
	}
	time.Sleep(time.Minute) // a safety net: the parent kills it long before
	fmt.Fprintln(os.Stderr, "crashwriter: not killed")
	return 3
}

// crashCall is one call of the crash writer: the versions it gives to
// the blocks from first.
type crashCall struct {
	first int64
	vers  []uint64
}

// TestCrashKill kills a process writing through a Store on a 2+1 pool at
// random moments, several times over the same pool: after each kill, at
// reopen (log replay) and after Recover, every block holds the data and
// version of the last call acknowledged on it, or of the call in flight
// on it when the process died.
func TestCrashKill(t *testing.T) {
	if testing.Short() {
		t.Skip("kills child processes")
	}
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with -seed %d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	tp := newTestPool(t, 3)
	tp.store(t, "crash")
	if err := tp.p.Close(); err != nil {
		t.Fatal(err)
	}
	// acked[b] is the version of block b after its last acknowledged call.
	acked := make([]uint64, testSize/replication.BlockSize)
	for it := range 4 {
		workers := 2 + rng.IntN(4)
		inflight := runCrashWriter(t, seed+uint64(it), workers, tp.opts.MetaDir, time.Duration(40+rng.IntN(200))*time.Millisecond, acked)
		for _, recover := range []bool{false, true} {
			if recover {
				if err := pool.Recover(context.Background(), tp.opts); err != nil {
					t.Fatal(err)
				}
			}
			tp.open(t)
			checkCrash(t, fmt.Sprintf("kill %d (recover %v)", it, recover), tp.store(t, "crash"), acked, inflight)
			if err := tp.p.Close(); err != nil {
				t.Fatal(err)
			}
		}
		// What survived is now the state of every block.
		tp.open(t)
		if err := tp.store(t, "crash").Versions(context.Background(), 0, acked); err != nil {
			t.Fatal(err)
		}
		if err := tp.p.Close(); err != nil {
			t.Fatal(err)
		}
	}
	tp.open(t) // for the cleanup's Close
}

// runCrashWriter runs the crash writer on the pool, kills it after
// delay, applies the acknowledged calls to acked and returns the calls in
// flight (announced, not acknowledged), by worker.
func runCrashWriter(t *testing.T, seed uint64, workers int, meta string, delay time.Duration, acked []uint64) map[int]crashCall {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envCrashWriter+"=1", envMeta+"="+meta,
		envSeed+"="+strconv.FormatUint(seed, 10), envWorkers+"="+strconv.Itoa(workers))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		io.Copy(io.Discard, stdout)
	}()
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	select {
	case l, ok := <-lines:
		if !ok || l != "R" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("crash writer did not start: %q %s", l, stderr.String())
		}
	case <-timeout.C:
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("crash writer not ready after 30s: %s", stderr.String())
	}
	// SIGKILL after delay; the pipe then ends.
	kill := time.AfterFunc(delay, func() { cmd.Process.Kill() })
	defer kill.Stop()
	inflight := map[int]crashCall{}
	acks := 0
	for l := range lines {
		f := strings.Fields(l)
		switch {
		case len(f) == 4 && f[0] == "I":
			w, _ := strconv.Atoi(f[1])
			first, _ := strconv.ParseInt(f[2], 10, 64)
			var c crashCall
			c.first = first
			for _, s := range strings.Split(f[3], ",") {
				v, err := strconv.ParseUint(s, 10, 64)
				if err != nil {
					t.Fatalf("bad line %q", l)
				}
				c.vers = append(c.vers, v)
			}
			inflight[w] = c
		case len(f) == 2 && f[0] == "A":
			w, _ := strconv.Atoi(f[1])
			c, ok := inflight[w]
			if !ok {
				t.Fatalf("ack of worker %d without a call", w)
			}
			copy(acked[c.first:], c.vers)
			delete(inflight, w)
			acks++
		default:
			t.Fatalf("bad line %q", l)
		}
	}
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != -1 {
		t.Fatalf("crash writer ended by itself: %v %s", err, stderr.String())
	}
	t.Logf("crash writer: %d workers, %d calls acknowledged, %d in flight, killed after %v", workers, acks, len(inflight), delay)
	return inflight
}

// checkCrash checks every block of s against the acknowledged versions
// and the calls in flight.
func checkCrash(t *testing.T, what string, s *Store, acked []uint64, inflight map[int]crashCall) {
	t.Helper()
	ctx := context.Background()
	alt := map[int64]uint64{} // the version the call in flight gives a block
	for _, c := range inflight {
		for i, v := range c.vers {
			alt[c.first+int64(i)] = v
		}
	}
	got := make([]uint64, len(acked))
	if err := s.Versions(ctx, 0, got); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, testSize)
	if err := s.ReadAt(ctx, data, 0); err != nil {
		t.Fatal(err)
	}
	for b := range acked {
		v := got[b]
		a, inFlight := alt[int64(b)]
		if v != acked[b] && (!inFlight || v != a) {
			t.Fatalf("%s: block %d has version %#x, want %#x (acknowledged) or %#x (in flight: %v)", what, b, v, acked[b], a, inFlight)
		}
		want := make([]byte, replication.BlockSize)
		if v != 0 {
			want = blockData(int64(b), v)
		}
		if !bytes.Equal(data[b*replication.BlockSize:][:replication.BlockSize], want) {
			t.Fatalf("%s: block %d (version %#x) does not hold its data", what, b, v)
		}
	}
}
