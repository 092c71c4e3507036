package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Limits of the libiscsi load tests. Every wait is bounded.
const (
	qemuIOTimeout   = 60 * time.Second // one qemu-io command, or its login
	settleTimeout   = 30 * time.Second // sessions gone, goroutines back
	loadSessions    = 64               // concurrent sessions in TestLibiscsiConcurrentSessions
	loadRegion      = 1 << 20          // bytes each of them owns
	killWriters     = 32               // writers per round in TestLibiscsiAbruptDisconnects
	killRounds      = 4                // rounds of kill -9
	killRegion      = 2 << 20          // bytes each killed writer owns
	killChunk       = 128 << 10        // bytes per write command of a killed writer
	killAIODepth    = 4                // writes in flight when an odd-numbered writer is killed
	sectorSize      = 512
	e2eInitiatorIQN = "iqn.2026-11.dev.stave.e2e:"
)

// tgtPorts returns a free portal port in 3262-3269 and a tgtd control port
// (5 or 6) that no tgtd answers on, for a reference tgtd: other test runs
// and run.sh may hold some of them.
func tgtPorts(t *testing.T) (port, control int) {
	t.Helper()
	tgtadm := requireTool(t, "tgtadm")
	for c := 5; c <= 6 && control == 0; c++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := exec.CommandContext(ctx, tgtadm, "-C", strconv.Itoa(c), "--op", "show", "--mode", "system").Run()
		cancel()
		if err != nil {
			control = c
		}
	}
	for p := 3262; p <= 3269 && port == 0; p++ {
		if portFree(p) {
			port = p
		}
	}
	if port == 0 || control == 0 {
		t.Fatalf("no free tgtd portal port in 3262-3269 (got %d) or control port in 5-6 (got %d)", port, control)
	}
	return port, control
}

// lunTarget is one logical unit that libiscsi clients can reach, with a way
// to list the target's sessions.
type lunTarget struct {
	name   string // "stave" or "tgt", for messages
	portal string // 127.0.0.1:port
	iqn    string
	lun    int
	// sessions returns the target's session listing and how many sessions
	// it holds.
	sessions func() (raw string, n int, err error)
}

// url returns the libiscsi URL of the LU.
func (l *lunTarget) url() string {
	return fmt.Sprintf("iscsi://%s/%s/%d", l.portal, l.iqn, l.lun)
}

// imageOpts returns qemu's --image-opts for the LU, logging in as
// initiator; initiator names ending in "-hd" ask for HeaderDigest=CRC32C
// (libiscsi 1.19 has no data digest).
func (l *lunTarget) imageOpts(initiator string) string {
	opts := fmt.Sprintf("driver=iscsi,transport=tcp,portal=%s,target=%s,lun=%d,initiator-name=%s",
		l.portal, l.iqn, l.lun, initiator)
	if strings.HasSuffix(initiator, "-hd") {
		opts += ",header-digest=crc32c"
	}
	return opts
}

// loadInitiator is the initiator name of session i of the concurrent load:
// every other session uses a header digest.
func loadInitiator(i int) string {
	name := fmt.Sprintf("%sw%02d", e2eInitiatorIQN, i)
	if i%2 == 0 {
		name += "-hd"
	}
	return name
}

// reHeaderDigest matches a session with a CRC32C header digest in Stave's
// session list.
var reHeaderDigest = regexp.MustCompile(`"HeaderDigest":\s*"CRC32C"`)

// staveLUN creates a 1 GiB volume on d and describes it.
func staveLUN(t *testing.T, d *daemon, volume string) *lunTarget {
	t.Helper()
	d.MustCLI("volume", "create", volume, "--size", "1GiB")
	return &lunTarget{
		name:   "stave",
		portal: d.Portal(),
		iqn:    "iqn.2026-11.dev.stave:" + volume,
		lun:    0,
		sessions: func() (string, int, error) {
			out, err := d.CLI("session", "list", "--output", "json")
			if err != nil {
				return out, 0, fmt.Errorf("%v: %s", err, out)
			}
			n, err := countJSONList(out)
			return out, n, err
		},
	}
}

// countJSONList returns the number of elements of a JSON list, or of the
// first list-valued field of a JSON object; null counts as empty.
func countJSONList(s string) (int, error) {
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return 0, fmt.Errorf("session list is not JSON: %v: %q", err, s)
	}
	switch v := v.(type) {
	case nil:
		return 0, nil
	case []any:
		return len(v), nil
	case map[string]any:
		for _, f := range v {
			if l, ok := f.([]any); ok {
				return len(l), nil
			}
			if f == nil {
				return 0, nil
			}
		}
	}
	return 0, fmt.Errorf("session list: want a JSON list, got %q", s)
}

// startTgt starts Debian's tgtd with a 1 GiB sparse rdwr LU (LUN 1) on a
// free port of 127.0.0.1 (see tgtPorts) and stops it at cleanup.
func startTgt(t *testing.T) *lunTarget {
	t.Helper()
	port, control := tgtPorts(t)
	tgtd, tgtadm := requireTool(t, "tgtd"), requireTool(t, "tgtadm")
	dir := t.TempDir()
	img := filepath.Join(dir, "lu.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 1<<30); err != nil {
		t.Fatal(err)
	}
	if !portFree(port) {
		t.Fatalf("127.0.0.1:%d is in use", port)
	}
	var log bytes.Buffer
	cmd := exec.Command(tgtd, "-f", "--iscsi", fmt.Sprintf("portal=127.0.0.1:%d", port), "-C", strconv.Itoa(control))
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	adm := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, tgtadm, append([]string{"-C", strconv.Itoa(control)}, args...)...).CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		// tgtd ignores SIGTERM while it has targets.
		adm("--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1", "--force")
		adm("--op", "delete", "--mode", "system")
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Logf("tgtd did not exit; killing it")
			cmd.Process.Kill()
			<-done
		}
	})
	iqn := "iqn.2026-11.dev.stave:e2e-tgt"
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if _, err = adm("--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "1", "-T", iqn); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("tgtadm: creating the target: %v\n%s", err, log.String())
	}
	for _, args := range [][]string{
		{"--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", img, "--bstype", "rdwr"},
		{"--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"},
	} {
		if out, err := adm(args...); err != nil {
			t.Fatalf("tgtadm %v: %v\n%s", args, err, out)
		}
	}
	return &lunTarget{
		name:   "tgt",
		portal: fmt.Sprintf("127.0.0.1:%d", port),
		iqn:    iqn,
		lun:    1,
		sessions: func() (string, int, error) {
			out, err := adm("--lld", "iscsi", "--op", "show", "--mode", "conn", "--tid", "1")
			return out, strings.Count(out, "Session:"), err
		},
	}
}

// portFree reports whether nothing listens on 127.0.0.1:port.
func portFree(port int) bool {
	return !dialOK("tcp", fmt.Sprintf("127.0.0.1:%d", port))
}

// qemuIO is one interactive qemu-io process: one libiscsi session to the LU
// for its whole life. Its methods must not be called concurrently.
type qemuIO struct {
	name  string // initiator name
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   chan []byte   // stdout and stderr chunks; closed at EOF
	buf   bytes.Buffer  // output not yet consumed
	done  chan struct{} // closed when the process has exited
}

const qemuPrompt = "qemu-io> "

// startQemuIO starts qemu-io on the LU as initiator and waits until it has
// logged in (its first prompt).
func startQemuIO(ctx context.Context, l *lunTarget, initiator string) (*qemuIO, error) {
	cmd := exec.Command("qemu-io", "--image-opts", l.imageOpts(initiator))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, err
	}
	pw.Close()
	q := &qemuIO{name: initiator, cmd: cmd, stdin: stdin, out: make(chan []byte, 16), done: make(chan struct{})}
	go func() {
		defer close(q.out)
		defer pr.Close()
		for {
			b := make([]byte, 4096)
			n, err := pr.Read(b)
			if n > 0 {
				q.out <- b[:n]
			}
			if err != nil {
				return
			}
		}
	}()
	go func() { cmd.Wait(); close(q.done) }()
	if _, err := q.prompt(ctx); err != nil {
		q.kill()
		return nil, fmt.Errorf("qemu-io %s: login: %w", initiator, err)
	}
	return q, nil
}

// prompt returns the output up to the next prompt.
func (q *qemuIO) prompt(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, qemuIOTimeout)
	defer cancel()
	for {
		if i := bytes.Index(q.buf.Bytes(), []byte(qemuPrompt)); i >= 0 {
			s := string(q.buf.Next(i))
			q.buf.Next(len(qemuPrompt))
			return s, nil
		}
		select {
		case b, ok := <-q.out:
			if !ok {
				return q.buf.String(), fmt.Errorf("qemu-io exited: %q", q.buf.String())
			}
			q.buf.Write(b)
		case <-ctx.Done():
			return q.buf.String(), fmt.Errorf("no qemu-io prompt after %v: %q", qemuIOTimeout, q.buf.String())
		}
	}
}

// send writes one command line without waiting for its result.
func (q *qemuIO) send(line string) error {
	_, err := io.WriteString(q.stdin, line+"\n")
	return err
}

// run runs one command and returns its output; qemu-io reports failures
// ("write failed: ...", "Pattern verification failed ...") only in text,
// so want is a regexp that the output must match.
func (q *qemuIO) run(ctx context.Context, line string, want *regexp.Regexp) (string, error) {
	if err := q.send(line); err != nil {
		return "", fmt.Errorf("qemu-io %s: %s: %w", q.name, line, err)
	}
	out, err := q.prompt(ctx)
	if err != nil {
		return out, fmt.Errorf("qemu-io %s: %s: %w", q.name, line, err)
	}
	if strings.Contains(out, "failed") || !want.MatchString(out) {
		return out, fmt.Errorf("qemu-io %s: %s: %q", q.name, line, out)
	}
	return out, nil
}

var (
	reWrote = regexp.MustCompile(`(?m)^wrote (\d+)/(\d+) bytes at offset \d+$`)
	reRead  = regexp.MustCompile(`(?m)^read (\d+)/(\d+) bytes at offset \d+$`)
)

// write writes length bytes of pattern at off and checks the acknowledgement.
func (q *qemuIO) write(ctx context.Context, pattern byte, off, length int) error {
	_, err := q.run(ctx, fmt.Sprintf("write -P 0x%02x %d %d", pattern, off, length), reWrote)
	return err
}

// verify reads length bytes at off and checks that they all hold pattern.
func (q *qemuIO) verify(ctx context.Context, pattern byte, off, length int) error {
	_, err := q.run(ctx, fmt.Sprintf("read -P 0x%02x %d %d", pattern, off, length), reRead)
	return err
}

// quit ends the session cleanly (logout) and waits for the process.
func (q *qemuIO) quit() error {
	q.send("quit")
	q.stdin.Close()
	select {
	case <-q.done:
		go q.drain()
		if st := q.cmd.ProcessState; st != nil && !st.Success() {
			return fmt.Errorf("qemu-io %s: %v", q.name, st)
		}
		return nil
	case <-time.After(qemuIOTimeout):
		q.kill()
		return fmt.Errorf("qemu-io %s: did not exit after quit", q.name)
	}
}

// kill ends the process with SIGKILL (no logout, TCP connection reset by
// the kernel) and waits for it.
func (q *qemuIO) kill() {
	q.cmd.Process.Kill()
	<-q.done
	go q.drain()
}

// drain consumes the rest of the output so that the reader goroutine ends.
func (q *qemuIO) drain() {
	for range q.out {
	}
}

// waitSessions polls l's session listing until cond holds on its session
// count, or fails t after settleTimeout.
func waitSessions(t *testing.T, l *lunTarget, what string, cond func(n int) bool) string {
	t.Helper()
	var (
		raw string
		n   int
		err error
	)
	for deadline := time.Now().Add(settleTimeout); ; time.Sleep(100 * time.Millisecond) {
		raw, n, err = l.sessions()
		if err == nil && cond(n) {
			return raw
		}
		if time.Now().After(deadline) {
			break
		}
	}
	t.Fatalf("%s: session list never showed %s within %v: last %d sessions, err %v:\n%s", l.name, what, settleTimeout, n, err, raw)
	return ""
}

// runtimeStats is what the leak checks read from the daemon's /metrics.
type runtimeStats struct {
	goroutines float64
	heapInuse  float64
	gcCycles   float64 // go_gc_duration_seconds_count
}

// metricsClient returns an HTTP client for the daemon's admin unix socket.
func metricsClient(d *daemon) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", d.Socket())
		}},
	}
}

// scrapeMetrics reads go_goroutines, go_memstats_heap_inuse_bytes and
// go_gc_duration_seconds_count from /metrics on the daemon's admin unix
// socket.
func scrapeMetrics(d *daemon) (runtimeStats, error) {
	client := metricsClient(d)
	defer client.CloseIdleConnections()
	return scrapeWith(client)
}

func scrapeWith(client *http.Client) (runtimeStats, error) {
	resp, err := client.Get("http://stave/metrics")
	if err != nil {
		return runtimeStats{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return runtimeStats{}, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	var s runtimeStats
	found := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		var dst *float64
		switch name {
		case "go_goroutines":
			dst = &s.goroutines
		case "go_memstats_heap_inuse_bytes":
			dst = &s.heapInuse
		case "go_gc_duration_seconds_count":
			dst = &s.gcCycles
		default:
			continue
		}
		if *dst, err = strconv.ParseFloat(strings.TrimSpace(val), 64); err != nil {
			return s, fmt.Errorf("/metrics: %s: %v", name, err)
		}
		found++
	}
	if err := sc.Err(); err != nil {
		return s, err
	}
	if found != 3 {
		return s, errors.New("/metrics lacks go_goroutines, go_memstats_heap_inuse_bytes or go_gc_duration_seconds_count")
	}
	return s, nil
}

// baselineStats opens and closes one warm-up session (so that lazily
// started goroutines exist), waits for the session to go away and returns
// the daemon's runtime stats.
func baselineStats(t *testing.T, d *daemon, l *lunTarget) runtimeStats {
	t.Helper()
	ctx := context.Background()
	q, err := startQemuIO(ctx, l, e2eInitiatorIQN+"warmup")
	if err != nil {
		t.Fatal(err)
	}
	if err := q.write(ctx, 0x5a, 1<<29, 64<<10); err != nil {
		t.Fatal(err)
	}
	if err := q.quit(); err != nil {
		t.Fatal(err)
	}
	waitSessions(t, l, "no session", func(n int) bool { return n == 0 })
	s, err := scrapeMetrics(d)
	if err != nil {
		t.Fatalf("baseline metrics: %v", err)
	}
	t.Logf("baseline: %v goroutines, heap in use %.1f MiB", s.goroutines, s.heapInuse/(1<<20))
	return s
}

// checkSettled waits until the daemon's goroutine count is back within a
// few of base and, after at least two garbage collections since the load
// ended (sync.Pool memory survives one), its heap in use is near base; or
// fails t. An idle daemon allocates nothing and so collects nothing (the
// runtime forces a collection only every two minutes), so this scrapes
// /metrics in a loop: each scrape allocates about 150 KB in the daemon.
func checkSettled(t *testing.T, d *daemon, base runtimeStats) {
	t.Helper()
	const slackGoroutines = 10
	heapLimit := 3*base.heapInuse + 16<<20 // GOGC=100 garbage plus slack
	client := metricsClient(d)
	defer client.CloseIdleConnections()
	end, err := scrapeWith(client)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	s := end
	start := time.Now()
	for deadline := start.Add(settleTimeout); ; {
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 25 {
					scrapeWith(client)
				}
			}()
		}
		wg.Wait()
		s, err = scrapeWith(client)
		if err == nil && s.goroutines <= base.goroutines+slackGoroutines &&
			s.gcCycles >= end.gcCycles+2 && s.heapInuse <= heapLimit {
			t.Logf("settled after %v: %v goroutines (baseline %v), heap in use %.1f MiB (baseline %.1f MiB, %.1f MiB when the load ended), %v GC cycles since",
				time.Since(start).Round(time.Millisecond), s.goroutines, base.goroutines, s.heapInuse/(1<<20),
				base.heapInuse/(1<<20), end.heapInuse/(1<<20), s.gcCycles-end.gcCycles)
			return
		}
		if time.Now().After(deadline) {
			break
		}
	}
	t.Errorf("daemon did not settle within %v: %v goroutines (baseline %v, limit +%d), heap in use %.1f MiB (baseline %.1f MiB, limit %.1f MiB, %.1f MiB when the load ended) after %v GC cycles, err %v",
		settleTimeout, s.goroutines, base.goroutines, slackGoroutines, s.heapInuse/(1<<20), base.heapInuse/(1<<20),
		heapLimit/(1<<20), end.heapInuse/(1<<20), s.gcCycles-end.gcCycles, err)
}

// readBack reads length bytes from offset 0 of the LU through a fresh
// libiscsi session (qemu-img dd).
func readBack(t *testing.T, l *lunTarget, length int) []byte {
	t.Helper()
	const bs = 1 << 20
	if length%bs != 0 {
		t.Fatalf("readBack: length %d not a multiple of %d", length, bs)
	}
	out := filepath.Join(t.TempDir(), "readback.raw")
	ctx, cancel := context.WithTimeout(context.Background(), 2*qemuIOTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-img", "dd", "-f", "raw", "-O", "raw",
		fmt.Sprintf("bs=%d", bs), fmt.Sprintf("count=%d", length/bs), "if="+l.url(), "of="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("qemu-img dd from %s: %v\n%s", l.url(), err, b)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != length {
		t.Fatalf("qemu-img dd read %d bytes, want %d", len(data), length)
	}
	return data
}

// TestLibiscsiConcurrentSessions opens 64 libiscsi sessions (interactive
// qemu-io processes, distinct initiator names) to one Stave volume at once,
// checks that the daemon lists all of them, has each write and verify its
// own region concurrently, logs them out, and checks that the sessions go
// away, the data is there and the daemon's goroutines and heap return to
// baseline.
func TestLibiscsiConcurrentSessions(t *testing.T) {
	requireE2E(t)
	requireTool(t, "qemu-io")
	requireTool(t, "qemu-img")
	d := startDaemon(t)
	l := staveLUN(t, d, "load")
	base := baselineStats(t, d, l)
	concurrentSessions(t, l)
	checkSettled(t, d, base)
}

// TestLibiscsiConcurrentSessionsTgt runs the same load against Debian's
// tgt: it checks the harness, not Stave.
func TestLibiscsiConcurrentSessionsTgt(t *testing.T) {
	requireE2E(t)
	requireTool(t, "qemu-io")
	requireTool(t, "qemu-img")
	concurrentSessions(t, startTgt(t))
}

// loadPattern is the byte writer i writes in round r: distinct across the
// writers of a round and between consecutive rounds, never 0.
func loadPattern(i, r int) byte { return byte(1 + i + 64*(r%3)) }

func concurrentSessions(t *testing.T, l *lunTarget) {
	ctx := context.Background()
	start := time.Now()
	qs := make([]*qemuIO, loadSessions)
	errs := make([]error, loadSessions)
	var wg sync.WaitGroup
	for i := range qs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			qs[i], errs[i] = startQemuIO(ctx, l, loadInitiator(i))
		}()
	}
	wg.Wait()
	defer func() {
		for _, q := range qs {
			if q != nil {
				q.kill()
			}
		}
	}()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("opening %d sessions: %v", loadSessions, err)
	}
	t.Logf("%s: %d sessions logged in after %v", l.name, loadSessions, time.Since(start).Round(time.Millisecond))
	raw := waitSessions(t, l, fmt.Sprintf("%d sessions", loadSessions), func(n int) bool { return n == loadSessions })
	for i := range qs {
		if name := loadInitiator(i); !strings.Contains(raw, `"`+name+`"`) && !strings.Contains(raw, name+"\n") {
			t.Errorf("session list lacks initiator %s", name)
		}
	}
	if strings.Contains(raw, "HeaderDigest") {
		if n := len(reHeaderDigest.FindAllString(raw, -1)); n != loadSessions/2 {
			t.Errorf("session list shows %d sessions with HeaderDigest CRC32C, want %d", n, loadSessions/2)
		}
	}

	// Each session: its whole region with one pattern, then a 4 KiB write
	// at a sector boundary inside it, then verify all three parts.
	start = time.Now()
	const inner, innerLen = 3 * sectorSize, 4096
	for i, q := range qs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			off, p := i*loadRegion, loadPattern(i, 0)
			errs[i] = errors.Join(
				q.write(ctx, p, off, loadRegion),
				q.verify(ctx, p, off, loadRegion),
				q.write(ctx, ^p, off+inner, innerLen),
				q.verify(ctx, p, off, inner),
				q.verify(ctx, ^p, off+inner, innerLen),
				q.verify(ctx, p, off+inner+innerLen, loadRegion-inner-innerLen),
			)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent I/O: %v", err)
	}
	t.Logf("%s: %d sessions wrote and verified %d MiB each in %v", l.name, loadSessions, loadRegion>>20, time.Since(start).Round(time.Millisecond))
	for i, q := range qs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = q.quit() }()
	}
	wg.Wait()
	qs = nil
	if err := errors.Join(errs...); err != nil {
		t.Errorf("logout: %v", err)
	}
	waitSessions(t, l, "no session", func(n int) bool { return n == 0 })

	data := readBack(t, l, loadSessions*loadRegion)
	for i := 0; i < loadSessions; i++ {
		p := loadPattern(i, 0)
		for off := 0; off < loadRegion; off += sectorSize {
			want := p
			if off >= inner && off < inner+innerLen {
				want = ^p
			}
			at := i*loadRegion + off
			if s := data[at : at+sectorSize]; !uniform(s, want) {
				t.Fatalf("read back: sector at byte %d (writer %d) holds %#02x..., want %#02x", at, i, s[0], want)
			}
		}
	}
}

// uniform reports whether every byte of b is v.
func uniform(b []byte, v byte) bool {
	for _, c := range b {
		if c != v {
			return false
		}
	}
	return true
}

// TestLibiscsiAbruptDisconnects kills libiscsi writers (kill -9) while their
// writes are in flight, in several rounds, and checks that the daemon keeps
// serving, drops their sessions, returns to its baseline goroutines and
// heap, and holds every write it acknowledged.
func TestLibiscsiAbruptDisconnects(t *testing.T) {
	requireE2E(t)
	requireTool(t, "qemu-io")
	requireTool(t, "qemu-img")
	d := startDaemon(t)
	l := staveLUN(t, d, "kill")
	base := baselineStats(t, d, l)
	abruptDisconnects(t, l)
	checkSettled(t, d, base)
}

// TestLibiscsiAbruptDisconnectsTgt runs the same load against Debian's tgt:
// it checks the harness, not Stave.
func TestLibiscsiAbruptDisconnectsTgt(t *testing.T) {
	requireE2E(t)
	requireTool(t, "qemu-io")
	requireTool(t, "qemu-img")
	abruptDisconnects(t, startTgt(t))
}

// inflight returns how many writes killed writer i has in flight when it
// dies.
func inflight(i int) int {
	if i%2 == 1 {
		return killAIODepth
	}
	return 1
}

// chunkState is what a chunk of a killed writer's region may hold: any of
// the patterns in allowed, sector by sector (a write in flight when its
// writer died may have landed in part).
type chunkState struct{ allowed []byte }

func abruptDisconnects(t *testing.T, l *lunTarget) {
	ctx := context.Background()
	seed := time.Now().UnixNano()
	if v := os.Getenv("STAVE_KILL_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseInt(v, 10, 64); err != nil {
			t.Fatalf("STAVE_KILL_SEED: %v", err)
		}
	}
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	t.Logf("seed %d (replay the kill points with STAVE_KILL_SEED=%d)", seed, seed)
	const chunks = killRegion / killChunk
	state := make([][]chunkState, killWriters)
	for i := range state {
		state[i] = make([]chunkState, chunks)
		for c := range state[i] {
			state[i][c].allowed = []byte{0}
		}
	}
	for r := 1; r <= killRounds; r++ {
		start := time.Now()
		killAt := make([]int, killWriters)
		killDelay := make([]time.Duration, killWriters)
		for i := range killAt {
			// Chunks 0..k-1 acknowledged, then k..k+inflight(i)-1 in flight.
			killAt[i] = 1 + rng.IntN(chunks-1-killAIODepth)
			killDelay[i] = time.Duration(rng.IntN(500)) * time.Microsecond
		}
		errs := make([]error, killWriters)
		var wg sync.WaitGroup
		for i := 0; i < killWriters; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				q, err := startQemuIO(ctx, l, fmt.Sprintf("%sk%02d-r%d", e2eInitiatorIQN, i, r))
				if err != nil {
					errs[i] = err
					return
				}
				defer q.kill()
				p := loadPattern(i, r)
				for c := 0; c < killAt[i]; c++ {
					if err := q.write(ctx, p, i*killRegion+c*killChunk, killChunk); err != nil {
						errs[i] = err
						return
					}
				}
				// Send the next write(s) and die while they are in flight:
				// even writers one synchronous write, odd writers
				// killAIODepth asynchronous ones (several tasks with
				// outstanding R2Ts on the connection).
				for c := killAt[i]; c < killAt[i]+inflight(i); c++ {
					cmd := "write"
					if inflight(i) > 1 {
						cmd = "aio_write -q"
					}
					if err := q.send(fmt.Sprintf("%s -P 0x%02x %d %d", cmd, p, i*killRegion+c*killChunk, killChunk)); err != nil {
						errs[i] = err
						return
					}
				}
				time.Sleep(killDelay[i])
				q.kill()
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("round %d: %v", r, err)
		}
		for i := 0; i < killWriters; i++ {
			p := loadPattern(i, r)
			for c := 0; c < killAt[i]; c++ {
				state[i][c].allowed = []byte{p}
			}
			for c := killAt[i]; c < killAt[i]+inflight(i); c++ {
				st := &state[i][c]
				st.allowed = append(st.allowed, p)
			}
		}
		waitSessions(t, l, "no session", func(n int) bool { return n == 0 })
		// The daemon still serves.
		q, err := startQemuIO(ctx, l, fmt.Sprintf("%sprobe-r%d", e2eInitiatorIQN, r))
		if err != nil {
			t.Fatalf("round %d: after the kills: %v", r, err)
		}
		probeOff := killWriters*killRegion + r*killChunk
		err = errors.Join(q.write(ctx, byte(r), probeOff, killChunk), q.verify(ctx, byte(r), probeOff, killChunk))
		q.quit()
		if err != nil {
			t.Fatalf("round %d: after the kills: %v", r, err)
		}
		waitSessions(t, l, "no session", func(n int) bool { return n == 0 })
		t.Logf("%s: round %d: %d writers killed mid-write, sessions gone, probe ok, in %v", l.name, r, killWriters, time.Since(start).Round(time.Millisecond))
	}

	data := readBack(t, l, killWriters*killRegion)
	bad := 0
	var landed, lost, torn int // writes in flight at a kill: fully, not, partly on disk
	for i := range state {
		for c, st := range state[i] {
			if n := len(st.allowed); n > 1 {
				chunk := data[i*killRegion+c*killChunk : i*killRegion+(c+1)*killChunk]
				switch newest := st.allowed[n-1]; {
				case uniform(chunk, newest):
					landed++
				case bytes.IndexByte(chunk, newest) < 0:
					lost++
				default:
					torn++
				}
			}
			for s := 0; s < killChunk; s += sectorSize {
				at := i*killRegion + c*killChunk + s
				sec := data[at : at+sectorSize]
				if ok := bytes.IndexByte(st.allowed, sec[0]) >= 0 && uniform(sec, sec[0]); !ok {
					if bad++; bad <= 10 {
						t.Errorf("writer %d chunk %d: sector at byte %d holds %#02x... (uniform %v), want one of %#v",
							i, c, at, sec[0], uniform(sec, sec[0]), st.allowed)
					}
				}
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d sectors hold data that was never written or lost an acknowledged write", bad)
	}
	t.Logf("%s: last write in flight at a kill (per chunk, newest round): landed %d, not landed %d, partly landed %d", l.name, landed, lost, torn)
}
