package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"stave.dev/stave/internal/initiator"
)

// The failover harness (issue 6): a client writes and verifies
// continuously through internal/initiator's Multipath (dm-multipath's
// ALUA behaviour) while the node that serves the volume is killed with
// SIGKILL, again and again. Each run measures the time from the kill to
// the first acknowledged write issued after it; at the end every block is
// read back through the final owner and checked against the writes that
// were acknowledged. The distribution goes to the test log and to
// $STAVE_E2E_LOGDIR/<test>-failover-times.txt.
//
// TestClusterFailover runs it on three daemons on 127.0.0.2-4 with a
// 3-replica volume; TestFailoverHarnessSingleNode proves the harness on
// one daemon with a file volume that is killed and restarted.

const (
	failoverBlock      = 4096
	failoverWorkingSet = 2048             // blocks written in turn (8 MiB); the rest of the volume must stay zero
	failoverResume     = 30 * time.Second // a kill after which no write is acknowledged for this long fails the test
	failoverIOTimeout  = 20 * time.Second // per write, across paths and retries
	failoverBudget     = 4 * time.Minute  // the whole cluster test
	failoverRunsEnv    = "STAVE_E2E_FAILOVER_RUNS"
	failoverInitiator  = "iqn.2026-11.dev.stave:e2e-failover"
)

// failoverRuns is the number of kills: 10, or $STAVE_E2E_FAILOVER_RUNS.
func failoverRuns(t *testing.T) int {
	if v := os.Getenv(failoverRunsEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number of runs", failoverRunsEnv, v)
		}
		return n
	}
	return 10
}

// failoverPattern fills b (one block) with the content of write seq to lba:
// a header (lba, seq, magic) and words derived from (lba, seq, offset), so
// that a block is recognised and a torn one is not whole.
func failoverPattern(b []byte, lba, seq uint64) {
	binary.BigEndian.PutUint64(b[0:], lba)
	binary.BigEndian.PutUint64(b[8:], seq)
	copy(b[16:24], "failover")
	for i := 24; i+8 <= len(b); i += 8 {
		binary.BigEndian.PutUint64(b[i:], lba*0x9e3779b97f4a7c15^seq*0xc2b2ae3d27d4eb4f^uint64(i))
	}
}

// blockHistory is what the writer knows of one block: the last
// acknowledged write (0: never written) and the writes issued after it
// that returned an error (each may or may not be on disk).
type blockHistory struct {
	acked   uint64
	pending []uint64
}

// failoverWriter writes failoverWorkingSet blocks in turn through a
// Multipath, one at a time, and records every acknowledged write. The
// blocks and counters are owned by its goroutine until stop returns.
type failoverWriter struct {
	m      *initiator.Multipath
	per    uint64 // logical blocks per 4 KiB block
	blocks []blockHistory
	seq    uint64 // last sequence number issued
	acks   int
	errs   []string // failed writes (first 20)

	mu struct {
		sync.Mutex
		lastIssue, lastAck time.Time // of the latest acknowledged write
		lastPath           string
		acks               int
	}
	start  time.Time
	cancel context.CancelFunc
	done   chan struct{}
}

// startFailoverWriter starts the writer goroutine.
func startFailoverWriter(m *initiator.Multipath, c initiator.Capacity) *failoverWriter {
	ctx, cancel := context.WithCancel(context.Background())
	w := &failoverWriter{m: m, per: uint64(failoverBlock / c.BlockSize), blocks: make([]blockHistory, failoverWorkingSet), start: time.Now(), cancel: cancel, done: make(chan struct{})}
	go w.run(ctx)
	return w
}

func (w *failoverWriter) run(ctx context.Context) {
	defer close(w.done)
	b := make([]byte, failoverBlock)
	for ctx.Err() == nil {
		w.seq++
		lba := w.seq % failoverWorkingSet
		failoverPattern(b, lba, w.seq)
		issued := time.Now()
		err := w.m.Write(ctx, lba*w.per, b)
		h := &w.blocks[lba]
		if err != nil {
			// Unacknowledged: it may or may not have been written.
			h.pending = append(h.pending, w.seq)
			if len(w.errs) < 20 && ctx.Err() == nil {
				w.errs = append(w.errs, fmt.Sprintf("seq %d lba %d: %v", w.seq, lba, err))
			}
			continue
		}
		h.acked, h.pending = w.seq, h.pending[:0]
		w.acks++
		now := time.Now()
		w.mu.Lock()
		w.mu.lastIssue, w.mu.lastAck, w.mu.lastPath = issued, now, w.m.LastPath()
		w.mu.acks++
		w.mu.Unlock()
	}
}

// stop ends the writer and waits for it.
func (w *failoverWriter) stop() {
	w.cancel()
	<-w.done
}

// waitResumed waits until a write issued at or after since is
// acknowledged through a portal other than notPortal ("" for any), and
// returns the time from since to that acknowledgement.
func (w *failoverWriter) waitResumed(since time.Time, notPortal string, timeout time.Duration) (time.Duration, string, error) {
	deadline := time.Now().Add(timeout)
	for {
		w.mu.Lock()
		issue, ack, p := w.mu.lastIssue, w.mu.lastAck, w.mu.lastPath
		w.mu.Unlock()
		if !issue.Before(since) && (notPortal == "" || p != notPortal) {
			return ack.Sub(since), p, nil
		}
		select {
		case <-w.done:
			return 0, "", errors.New("the writer stopped")
		default:
		}
		if time.Now().After(deadline) {
			return 0, "", fmt.Errorf("no write acknowledged within %v (last acknowledged %v ago through %s; paths %+v)",
				timeout, time.Since(ack).Round(time.Millisecond), p, w.m.Paths())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitProgress waits until n more writes than now are acknowledged.
func (w *failoverWriter) waitProgress(n int, timeout time.Duration) error {
	w.mu.Lock()
	target := w.mu.acks + n
	w.mu.Unlock()
	deadline := time.Now().Add(timeout)
	for {
		w.mu.Lock()
		acks := w.mu.acks
		w.mu.Unlock()
		if acks >= target {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("writer acknowledged %d of %d writes in %v (paths %+v)", acks-target+n, n, timeout, w.m.Paths())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// verify reads every block of the volume through m (after stop) and
// checks it against the history: a written block holds the last
// acknowledged write or a later unacknowledged one, whole; every other
// block is zero. It returns one line per bad block (at most 20) and the
// number of bad blocks.
func (w *failoverWriter) verify(ctx context.Context, m *initiator.Multipath, blocks uint64) ([]string, int, error) {
	var bad []string
	n := 0
	report := func(f string, a ...any) {
		n++
		if len(bad) < 20 {
			bad = append(bad, fmt.Sprintf(f, a...))
		}
	}
	const chunk = 64
	buf := make([]byte, chunk*failoverBlock)
	for lba := uint64(0); lba < blocks; lba += chunk {
		k := min(chunk, blocks-lba)
		if err := m.Read(ctx, lba*w.per, buf[:k*failoverBlock]); err != nil {
			return bad, n, fmt.Errorf("reading blocks %d+%d: %w", lba, k, err)
		}
		for i := range k {
			got := buf[i*failoverBlock : (i+1)*failoverBlock]
			l := lba + i
			var h blockHistory
			if l < failoverWorkingSet {
				h = w.blocks[l]
			}
			if msg := checkBlock(l, got, h); msg != "" {
				report("%s", msg)
			}
		}
	}
	return bad, n, nil
}

// checkBlock returns what is wrong with block l holding got, given its
// history, or "" when it holds the last acknowledged write or a later
// unacknowledged one, whole (or zeros if never acknowledged).
func checkBlock(l uint64, got []byte, h blockHistory) string {
	if !slices.ContainsFunc(got, func(b byte) bool { return b != 0 }) {
		if h.acked != 0 {
			return fmt.Sprintf("block %d is zero; write %d was acknowledged: LOST", l, h.acked)
		}
		return ""
	}
	gl, gs := binary.BigEndian.Uint64(got[0:]), binary.BigEndian.Uint64(got[8:])
	want := make([]byte, len(got))
	failoverPattern(want, gl, gs)
	switch {
	case gl != l || !bytes.Equal(got, want):
		return fmt.Sprintf("block %d is not a whole block written here (header lba %d seq %d); last acknowledged %d", l, gl, gs, h.acked)
	case gs == h.acked || slices.Contains(h.pending, gs):
		return ""
	case gs < h.acked:
		return fmt.Sprintf("block %d holds write %d; write %d was acknowledged after it: LOST", l, gs, h.acked)
	}
	return fmt.Sprintf("block %d holds write %d, never issued for it (acknowledged %d, pending %v)", l, gs, h.acked, h.pending)
}

// TestCheckBlock checks the harness's verdicts without a daemon.
func TestCheckBlock(t *testing.T) {
	blk := func(lba, seq uint64) []byte {
		b := make([]byte, failoverBlock)
		failoverPattern(b, lba, seq)
		return b
	}
	torn := blk(7, 9)
	copy(torn[2048:], blk(7, 5)[2048:])
	for _, c := range []struct {
		name string
		got  []byte
		h    blockHistory
		bad  string // substring of the verdict; "" for a good block
	}{
		{"never written", make([]byte, failoverBlock), blockHistory{}, ""},
		{"unacknowledged, absent", make([]byte, failoverBlock), blockHistory{pending: []uint64{3}}, ""},
		{"acknowledged, absent", make([]byte, failoverBlock), blockHistory{acked: 3}, "LOST"},
		{"last acknowledged", blk(7, 9), blockHistory{acked: 9}, ""},
		{"later unacknowledged", blk(7, 12), blockHistory{acked: 9, pending: []uint64{12, 15}}, ""},
		{"older than acknowledged", blk(7, 5), blockHistory{acked: 9}, "LOST"},
		{"torn", torn, blockHistory{acked: 9}, "not a whole block"},
		{"another block's", blk(8, 9), blockHistory{acked: 9}, "not a whole block"},
		{"never issued", blk(7, 20), blockHistory{acked: 9, pending: []uint64{12}}, "never issued"},
	} {
		got := checkBlock(7, c.got, c.h)
		if (c.bad == "") != (got == "") || !strings.Contains(got, c.bad) {
			t.Errorf("%s: checkBlock = %q, want %q", c.name, got, c.bad)
		}
	}
}

// failoverSummary returns the distribution of ds as one line, nearest
// rank percentiles.
func failoverSummary(ds []time.Duration) string {
	if len(ds) == 0 {
		return "no runs"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	q := func(p float64) time.Duration {
		r := int(math.Ceil(p*float64(len(s)))) - 1
		return s[min(max(r, 0), len(s)-1)]
	}
	ms := func(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 0, 64) + " ms" }
	return fmt.Sprintf("%d runs: min %s, median %s, p90 %s, p99 %s, max %s",
		len(s), ms(s[0]), ms(q(0.5)), ms(q(0.9)), ms(q(0.99)), ms(s[len(s)-1]))
}

// syncBuffer is a bytes.Buffer safe for concurrent writes (the multipath
// log).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// openFailoverMultipath logs in to target through portals and waits until
// READ CAPACITY answers through one of them (the volume may still be
// coming up). The multipath log is kept in log.
func openFailoverMultipath(t *testing.T, portals []string, target string, log *syncBuffer) (*initiator.Multipath, initiator.Capacity) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m, err := initiator.OpenMultipath(ctx, initiator.MultipathConfig{
		Logger:        slog.New(slog.NewTextHandler(log, nil)),
		Portals:       portals,
		Target:        target,
		InitiatorName: failoverInitiator,
		IOTimeout:     failoverIOTimeout,
		// The SCSI command timeout of one try on one path: a node that
		// stops answering without closing its connections is given up on
		// after this.
		AttemptTimeout: 3 * time.Second,
		Backoff:        50 * time.Millisecond,
		CheckInterval:  500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	for {
		c, err := m.ReadCapacity(ctx)
		if err == nil {
			if failoverBlock%c.BlockSize != 0 {
				t.Fatalf("block size %d does not divide %d", c.BlockSize, failoverBlock)
			}
			return m, c
		}
		if ctx.Err() != nil {
			t.Fatalf("READ CAPACITY through %v: %v\nmultipath log:\n%s", portals, err, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// volumeJSON returns `stave volume show NAME --output json` as a generic
// map, so that the accessors below survive field renames.
func volumeJSON(d *daemon, name string) (map[string]any, error) {
	out, err := d.CLI("volume", "show", name, "--output", "json")
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return nil, fmt.Errorf("volume show output: %v\n%s", err, out)
	}
	return v, nil
}

// volumeOwner is the accessor for the node that serves a replicated
// volume, as `volume show` reports it (adminapi.Volume.Replication.Owner:
// a node name or ID; "" while ownership moves). NB: adapt here if the
// field moves.
func volumeOwner(v map[string]any) string {
	if r, ok := v["replication"].(map[string]any); ok {
		if o, ok := r["owner"].(string); ok {
			return o
		}
	}
	if o, ok := v["owner"].(string); ok {
		return o
	}
	return ""
}

// volumeISR is the accessor for the in-sync replica set
// (adminapi.Volume.Replication.ISR); ok is false when the field is absent.
func volumeISR(v map[string]any) (isr []string, ok bool) {
	r, _ := v["replication"].(map[string]any)
	raw, ok := r["isr"].([]any)
	if !ok {
		return nil, false
	}
	for _, x := range raw {
		if s, ok := x.(string); ok {
			isr = append(isr, s)
		}
	}
	return isr, true
}

// nodeMatches reports whether a node reference from the API (ID or name)
// names n, as n itself lists it.
func nodeMatches(n *clusterNode, ref string, ids map[string]string) bool {
	return ref != "" && (ref == n.name || ids[ref] == n.name)
}

// findOwner returns the live node that serves vol: the owner `volume
// show` reports, else (field absent or empty) the node whose portal the
// multipath sees active/optimized in REPORT TARGET PORT GROUPS.
func findOwner(t *testing.T, nodes []*clusterNode, vol string, m *initiator.Multipath, timeout time.Duration) *clusterNode {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		for _, n := range nodes {
			if n.cmd == nil {
				continue
			}
			ns, err := n.nodes()
			if err != nil {
				last = err.Error()
				continue
			}
			ids := map[string]string{}
			for _, nd := range ns {
				ids[nd.ID] = nd.Name
			}
			v, err := volumeJSON(n.daemon, vol)
			if err != nil {
				last = err.Error()
				continue
			}
			if o := volumeOwner(v); o != "" {
				for _, c := range nodes {
					if nodeMatches(c, o, ids) && c.cmd != nil {
						return c
					}
				}
				last = fmt.Sprintf("owner %q is not a running node", o)
			} else {
				last = "volume show reports no owner"
			}
			break
		}
		for _, p := range m.Paths() {
			if p.Up && p.Known && p.State == initiator.ActiveOptimized {
				for _, c := range nodes {
					if c.portal == p.Portal && c.cmd != nil {
						return c
					}
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no owner of %s found within %v: %s; paths %+v", vol, timeout, last, m.Paths())
	return nil
}

// waitInSync waits until vol's ISR, as n reports it, holds every replica
// (3), and reports whether the ISR field exists at all.
func waitInSync(n *clusterNode, vol string, want int, timeout time.Duration) (bool, error) {
	deadline := time.Now().Add(timeout)
	var last []string
	for {
		v, err := volumeJSON(n.daemon, vol)
		if err == nil {
			isr, ok := volumeISR(v)
			if !ok {
				return false, nil
			}
			if len(isr) >= want {
				return true, nil
			}
			last = isr
		}
		if time.Now().After(deadline) {
			return true, fmt.Errorf("ISR of %s still %v after %v (err %v)", vol, last, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// finishFailover stops the writer, verifies every block through m, logs
// and saves the distribution, and fails t on a lost or torn write.
func finishFailover(t *testing.T, w *failoverWriter, m *initiator.Multipath, c initiator.Capacity, times []time.Duration, extra string) {
	t.Helper()
	w.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	blocks := c.Bytes() / failoverBlock
	bad, n, err := w.verify(ctx, m, uint64(blocks))
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	pending := 0
	for _, h := range w.blocks {
		pending += len(h.pending)
	}
	summary := failoverSummary(times)
	t.Logf("kill -9 to first acknowledged write: %s", summary)
	t.Logf("writes: %d issued, %d acknowledged (%.0f/s), %d unacknowledged; %d blocks verified through %s; multipath %+v",
		w.seq, w.acks, float64(w.acks)/time.Since(w.start).Seconds(), pending, blocks, m.LastPath(), m.Stats())
	for _, e := range w.errs {
		t.Logf("unacknowledged write: %s", e)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# %s, %s\n# %s\n", t.Name(), time.Now().UTC().Format(time.RFC3339), extra)
	fmt.Fprintf(&b, "kill -9 to first acknowledged write: %s\n", summary)
	for i, d := range times {
		fmt.Fprintf(&b, "run %d: %d ms\n", i+1, d.Milliseconds())
	}
	fmt.Fprintf(&b, "writes: %d issued, %d acknowledged, %d unacknowledged; %d blocks verified, %d bad\n", w.seq, w.acks, pending, blocks, n)
	saveLog(t, "failover-times.txt", b.String())
	if n > 0 {
		t.Errorf("%d of %d blocks do not hold their last acknowledged write (or a later unacknowledged one):\n%s",
			n, blocks, strings.Join(bad, "\n"))
	}
	if w.acks == 0 {
		t.Error("no write was acknowledged")
	}
}

// TestClusterFailover is issue 6's failover measurement: three daemons on
// 127.0.0.2-4, a 3-replica volume, a client writing and verifying through
// every node's portal; kill -9 the owner, time the first write after the
// kill, restart the node, wait until it is back in sync; at least 10
// times; then no acknowledged write may be missing. The times are logged,
// not asserted (the goal is p99 under 5 s).
func TestClusterFailover(t *testing.T) {
	requireE2E(t)
	testStart := time.Now()
	runs := failoverRuns(t)
	const vol = "failover"
	// Two nodes keep their copies in their pools, the third in a file:
	// failover and resync go between both kinds of copy.
	ns, target := startReplicatedClusterPools(t, []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}, vol, 2)

	var mlog syncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("multipath log:\n%s", mlog.String())
		}
		saveLog(t, "multipath.log", mlog.String())
	})
	portals := make([]string, len(ns))
	for i, n := range ns {
		portals[i] = n.portal
	}
	m, capa := openFailoverMultipath(t, portals, target, &mlog)
	w := startFailoverWriter(m, capa)
	defer w.stop()
	if err := w.waitProgress(100, failoverResume); err != nil {
		t.Fatal(err)
	}

	var times []time.Duration
	for run := 1; run <= runs; run++ {
		if time.Since(testStart) > failoverBudget {
			t.Fatalf("run %d: over the %v budget", run, failoverBudget)
		}
		owner := findOwner(t, ns, vol, m, clusterWaitTimeout)
		killed := time.Now()
		owner.Kill()
		d, via, err := w.waitResumed(killed, owner.portal, failoverResume)
		if err != nil {
			t.Fatalf("run %d: killed owner %s (%s): %v", run, owner.name, owner.portal, err)
		}
		times = append(times, d)
		t.Logf("run %d: killed %s (%s); writes resumed through %s after %v", run, owner.name, owner.portal, via, d.Round(time.Millisecond))
		if err := owner.startErr(); err != nil {
			t.Fatalf("run %d: restarting %s: %v", run, owner.name, err)
		}
		for _, n := range ns {
			if n != owner {
				n.waitStates(t, map[string]string{owner.name: "up"})
				break
			}
		}
		has, err := waitInSync(owner, vol, 3, clusterWaitTimeout)
		if err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		if !has {
			t.Logf("run %d: volume show has no ISR field; continuing without waiting for resync", run)
		}
		if err := w.waitProgress(50, failoverResume); err != nil {
			t.Fatalf("run %d: after the restart: %v", run, err)
		}
	}
	finishFailover(t, w, m, capa, times, fmt.Sprintf("3 nodes on 127.0.0.2-4, 3-replica 64 MiB volume, QD1 4 KiB writes over %d blocks", failoverWorkingSet))
	t.Logf("whole test %v", time.Since(testStart).Round(time.Millisecond))
}

// TestFailoverHarnessSingleNode proves the harness on what a single node
// offers: one daemon with a file volume, killed with SIGKILL and
// restarted while the multipath writer runs against its portal. Writes
// must resume after each restart and nothing acknowledged may be lost.
func TestFailoverHarnessSingleNode(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t)
	const vol = "failover1"
	d.MustCLI("volume", "create", vol, "--size", "64MiB")
	v, err := volumeJSON(d, vol)
	if err != nil {
		t.Fatal(err)
	}
	target, _ := v["target"].(string)
	if target == "" {
		t.Fatalf("volume show has no target: %v", v)
	}
	var mlog syncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("multipath log:\n%s", mlog.String())
		}
		saveLog(t, "multipath.log", mlog.String())
	})
	m, capa := openFailoverMultipath(t, []string{d.Portal()}, target, &mlog)
	w := startFailoverWriter(m, capa)
	defer w.stop()
	if err := w.waitProgress(100, failoverResume); err != nil {
		t.Fatal(err)
	}
	var times []time.Duration
	for run := 1; run <= 3; run++ {
		killed := time.Now()
		if err := d.CrashRestartErr(); err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		restarted := time.Since(killed)
		dt, _, err := w.waitResumed(killed, "", failoverResume)
		if err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		times = append(times, dt)
		t.Logf("run %d: daemon back in %v; writes resumed %v after the kill", run, restarted.Round(time.Millisecond), dt.Round(time.Millisecond))
		if err := w.waitProgress(50, failoverResume); err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
	}
	finishFailover(t, w, m, capa, times, "one daemon, file volume, kill -9 and restart")
}
