package filestore

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Environment of the helper process of TestKill9.
const (
	killDirEnv   = "STAVE_FILESTORE_KILL_DIR"
	killEpochEnv = "STAVE_FILESTORE_KILL_EPOCH"
	killWriters  = 4
	killBlocks   = 1000 // 4 chunks, writer ranges straddle them
)

// pipeRecorder reports the workload's calls to the parent, one line per
// event in a single write (atomic on a pipe): "S id b v b v ..." before a
// call, "A id" after it succeeded.
type pipeRecorder struct {
	mu sync.Mutex
	w  *os.File
}

func (p *pipeRecorder) start(op opRec) {
	var b strings.Builder
	fmt.Fprintf(&b, "S %d", op.id)
	for i, blk := range op.blocks {
		fmt.Fprintf(&b, " %d %d", blk, op.versions[i])
	}
	b.WriteByte('\n')
	p.write(b.String())
}

func (p *pipeRecorder) ack(op opRec) { p.write(fmt.Sprintf("A %d\n", op.id)) }

func (p *pipeRecorder) write(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := p.w.WriteString(s); err != nil {
		os.Exit(3) // the parent is gone
	}
}

// TestKill9Child is the helper process of TestKill9: it writes until it is
// killed (or, as a safety net, for 20 s).
func TestKill9Child(t *testing.T) {
	dir := os.Getenv(killDirEnv)
	if dir == "" {
		t.Skip("helper process of TestKill9")
	}
	epoch, _ := strconv.ParseUint(os.Getenv(killEpochEnv), 10, 64)
	s, err := Open(dir, 0, Options{MaxArmedChunks: 2})
	if err != nil {
		t.Fatal(err)
	}
	rec := &pipeRecorder{w: os.NewFile(3, "events")}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var ctr atomic.Uint64
	var ids atomic.Int64
	per := int64(killBlocks / killWriters)
	var wg sync.WaitGroup
	for w := range int64(killWriters) {
		r := rand.New(rand.NewPCG(epoch, uint64(w)))
		wg.Go(func() { runWriter(ctx, s, r, w*per, (w+1)*per, epoch, &ctr, &ids, -1, rec) })
	}
	wg.Wait()
	s.Close()
}

// TestKill9 re-executes the test binary as a writer process (4 goroutines
// writing whole blocks derived from (block, version), reporting each call
// before it starts and each acknowledgement over a pipe) and kills it with
// SIGKILL at a random moment, 20 times; after each kill it reopens the
// store and checks every block against the reported history.
//
// NB: SIGKILL keeps the page cache, so this checks the process-crash
// states (every issued write present); power loss is TestCrashInjection's.
func TestKill9(t *testing.T) {
	kills := 20
	if testing.Short() {
		kills = 5
	}
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(dir, killBlocks*BlockSize, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	var totalAcks, totalDirty int
	for i := range kills {
		if s, err = Open(dir, 0, Options{}); err != nil {
			t.Fatalf("kill %d: reopen: %v", i, err)
		}
		h, err := newHistory(ctx, s)
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd := exec.Command(os.Args[0], "-test.run=^TestKill9Child$", "-test.count=1")
		cmd.Env = append(os.Environ(), killDirEnv+"="+dir, killEpochEnv+"="+strconv.Itoa(i+1))
		cmd.ExtraFiles = []*os.File{pw}
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pw.Close()
		// The reader owns pr and ends at EOF (the child's death).
		acked := make(chan struct{})
		readErr := make(chan error, 1)
		go func() {
			readErr <- readEvents(pr, h, 20, acked)
			pr.Close()
		}()
		select {
		case <-acked:
		case err := <-readErr:
			cmd.Wait()
			t.Fatalf("kill %d: the writer ended by itself (%v); stderr:\n%s", i, err, stderr.String())
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("kill %d: the writer acknowledged too little in 10 s; stderr:\n%s", i, stderr.String())
		}
		time.Sleep(time.Duration(r.IntN(100)) * time.Millisecond)
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		if err := <-readErr; err != nil {
			t.Fatalf("kill %d: %v", i, err)
		}
		if s, err = Open(dir, 0, Options{}); err != nil {
			t.Fatalf("kill %d: reopen after SIGKILL: %v", i, err)
		}
		dirty, err := h.check(ctx, s)
		s.Close()
		if err != nil {
			t.Fatalf("kill %d: %v", i, err)
		}
		totalAcks += h.acks()
		totalDirty += dirty
	}
	t.Logf("%d kills: %d acknowledged block writes checked, %d blocks dirty after recovery", kills, totalAcks, totalDirty)
}

// readEvents feeds the child's events into h until EOF; acked is closed
// once n calls are acknowledged.
func readEvents(pr *os.File, h *history, n int, acked chan struct{}) error {
	ops := map[int64]opRec{}
	sc := bufio.NewScanner(pr)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	acks := 0
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			return fmt.Errorf("bad event %q", sc.Text())
		}
		id, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return fmt.Errorf("bad event %q", sc.Text())
		}
		switch f[0] {
		case "S":
			op := opRec{id: id}
			for j := 2; j+1 < len(f); j += 2 {
				b, err1 := strconv.ParseInt(f[j], 10, 64)
				v, err2 := strconv.ParseUint(f[j+1], 10, 64)
				if err1 != nil || err2 != nil {
					return fmt.Errorf("bad event %q", sc.Text())
				}
				op.blocks = append(op.blocks, b)
				op.versions = append(op.versions, v)
			}
			ops[id] = op
			h.start(op)
		case "A":
			op, ok := ops[id]
			if !ok {
				return fmt.Errorf("ack of unknown call %d", id)
			}
			h.ack(op)
			if acks++; acks == n {
				close(acked)
			}
		default:
			return fmt.Errorf("bad event %q", sc.Text())
		}
	}
	return sc.Err()
}
