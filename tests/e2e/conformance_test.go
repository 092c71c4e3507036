package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"stave.dev/stave/tools/conformance/cunit"
)

const (
	// conformanceSuiteLimit bounds each iscsi-test-cu run (one per suite);
	// on tgt the slowest suite takes a few seconds.
	conformanceSuiteLimit = 90 * time.Second
	// conformanceLimit bounds the whole test; a full run takes 20-60s per
	// target (both run at once) when nothing hangs.
	conformanceLimit = 25 * time.Minute
)

// TestConformance runs libiscsi's conformance suite (iscsi-test-cu
// --test=ALL --dataloss, via tools/conformance/run.sh) against a Stave
// file volume and against Debian's tgt (at once), then against a Stave
// pool volume (2+1 on three sparse files), and fails if, for either
// Stave volume,
//
//  1. a test that passes on tgt fails on Stave or has no result there,
//  2. any test of the iSCSI suites (ALL.iSCSI*) fails on Stave, or
//  3. a test listed in tools/conformance/stave-passing.txt (the tests that
//     passed on the file volume when it was last regenerated) does not
//     pass, except, on the pool volume, those of poolExceptions.
//
// Tests that Stave skips where tgt passes are reported but do not fail
// (docs/conformance.md lists them; they must still become passes). Set
// STAVE_CONFORMANCE_OUT=DIR to keep the raw outputs (then
// `go run ./tools/conformance/report -stave DIR/stave.log ...`; the pool
// volume's are in DIR/pool).
func TestConformance(t *testing.T) {
	requireE2E(t)
	for _, tool := range []string{"iscsi-test-cu", "iscsi-inq", "tgtd", "tgtadm", "timeout", "bash"} {
		requireTool(t, tool)
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := os.Getenv("STAVE_CONFORMANCE_OUT")
	if out == "" {
		out = t.TempDir()
	} else if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}

	d := startDaemon(t)
	d.MustCLI("volume", "create", "conformance", "--size", "1GiB")
	// Volumes created after the pool live in it.
	d.MustCLI(append([]string{"pool", "create"}, deviceFlags(sparseFiles(t, t.TempDir(), 3, 2<<30))...)...)
	d.MustCLI("volume", "create", "conformance-pool", "--size", "1GiB", "--policy", "2+1")
	lu := func(vol string) string {
		return fmt.Sprintf("iscsi://%s/iqn.2026-11.dev.stave:%s/0", d.Portal(), vol)
	}

	tgtPort, tgtControl := tgtPorts(t)
	limit := conformanceLimit
	if dl, ok := t.Deadline(); ok && time.Until(dl)-time.Minute < limit {
		limit = time.Until(dl) - time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	runSuite := func(out string, extra ...string) bool {
		t.Helper()
		start := time.Now()
		cmd := exec.CommandContext(ctx, "bash", append([]string{filepath.Join(root, "tools/conformance/run.sh"),
			"--stave-pid", fmt.Sprint(d.cmd.Process.Pid), "--out", out,
			"--timeout", fmt.Sprint(int(conformanceSuiteLimit.Seconds()))}, extra...)...)
		cmd.Dir = root
		// SIGTERM lets run.sh stop its tgtd; SIGKILL only if it does not.
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		cmd.WaitDelay = 30 * time.Second
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stderr, &stderr
		runErr := cmd.Run()
		t.Logf("run.sh %v took %v:\n%s", extra, time.Since(start).Round(100*time.Millisecond), stderr.String())
		if ee := (*exec.ExitError)(nil); errors.As(runErr, &ee) && ee.ExitCode() == 1 {
			// The daemon died or its LU stopped answering: report what ran.
			t.Errorf("run.sh: the Stave daemon died or its LU stopped answering during the run (outputs in %s)", out)
		} else if runErr != nil {
			for _, name := range []string{"stave.log", "tgt.log", "tgtd.log"} {
				t.Logf("last lines of %s:\n%s", name, tail(filepath.Join(out, name), 25))
			}
			t.Errorf("run.sh: %v (outputs in %s; set STAVE_CONFORMANCE_OUT to keep them)", runErr, out)
			return false
		}
		return true
	}
	if !runSuite(out, "--stave-url", lu("conformance"), "--parallel",
		"--tgt-port", fmt.Sprint(tgtPort), "--tgt-control", fmt.Sprint(tgtControl)) {
		t.FailNow()
	}
	list := readList(t, filepath.Join(out, "list.txt"))
	tgt := readRun(t, filepath.Join(out, "tgt.log"), list)
	if n := tgt.Count(func(r *cunit.Result) bool { return r.Status == cunit.Pass }); n[cunit.Pass] < 100 {
		t.Fatalf("only %d tests pass on tgt: the reference run is broken (see %s/tgt.log)", n[cunit.Pass], out)
	}
	c := tgt.Count(nil)
	t.Logf("tgt   pass %3d  fail %3d  skip %3d  not run %3d  (total %d)",
		c[cunit.Pass], c[cunit.Fail], c[cunit.Skip], c[cunit.NotRun], c.Total())
	for _, a := range tgt.Aborts {
		t.Logf("tgt: run did not end normally: %s", a)
	}

	baseFile := filepath.Join(root, "tools/conformance/stave-passing.txt")
	bf, err := os.Open(baseFile)
	if err != nil {
		t.Fatal(err)
	}
	baseline, err := cunit.ParseKeys(bf)
	bf.Close()
	if err != nil {
		t.Fatal(err)
	}
	checkConformance(t, "Stave file volume", out, list, tgt, baseline, baseFile, nil)

	poolOut := filepath.Join(out, "pool")
	if err := os.MkdirAll(poolOut, 0o755); err != nil {
		t.Fatal(err)
	}
	if runSuite(poolOut, "--stave-url", lu("conformance-pool"), "--targets", "stave") {
		checkConformance(t, "Stave pool volume", poolOut, list, tgt, baseline, baseFile, poolExceptions)
	}
	if t.Failed() {
		t.Logf("raw outputs: %s (set STAVE_CONFORMANCE_OUT to keep them)", out)
	}
}

// poolExceptions are the tests of stave-passing.txt that a pool volume
// may fail, with why (see tools/conformance/reasons.txt).
var poolExceptions = map[string]string{
	// The pool reports 8 logical blocks per 4 KiB physical block; this
	// libiscsi test agrees with SBC-3 only when LBPPB is 1.
	"GetLBAStatus.UnmapSingle": "libiscsi test bug at LBPPB 8",
}

// checkConformance applies TestConformance's three rules to the Stave
// run in out (stave.log, stave-detail.log), against tgt's run and the
// baseline; tests in except may fail.
func checkConformance(t *testing.T, name, out string, list []string, tgt *cunit.Run, baseline []string, baseFile string, except map[string]string) {
	t.Helper()
	stave := readRun(t, filepath.Join(out, "stave.log"), list)
	// Failing suites were run again with -V: take their messages (expected
	// and actual status of each command) from there.
	stave.Enrich(readRun(t, filepath.Join(out, "stave-detail.log"), nil))
	c := stave.Count(nil)
	t.Logf("%s: pass %3d  fail %3d  skip %3d  not run %3d  (total %d)", name,
		c[cunit.Pass], c[cunit.Fail], c[cunit.Skip], c[cunit.NotRun], c.Total())
	for _, a := range stave.Aborts {
		t.Logf("%s: run did not end normally: %s", name, a)
	}

	ref := tgt.ByKey()
	var regressions, iscsiFailures, skips, excused []string
	for i := range stave.Results {
		r := &stave.Results[i]
		bad := r.Status == cunit.Fail || r.Status == cunit.NotRun
		tr := ref[r.Key()]
		line := fmt.Sprintf("%s: %v on %s (tgt: %v): %s", r.Key(), r.Status, name, status(tr), r.Summary())
		switch {
		case bad && except[r.Key()] != "":
			excused = append(excused, line+" ["+except[r.Key()]+"]")
		case strings.HasPrefix(r.Suite, "iSCSI") && bad:
			iscsiFailures = append(iscsiFailures, line)
		case bad && tr != nil && tr.Status == cunit.Pass:
			regressions = append(regressions, line)
		case r.Status == cunit.Skip && tr != nil && tr.Status == cunit.Pass:
			skips = append(skips, line)
		}
	}
	sort.Strings(regressions)
	sort.Strings(iscsiFailures)
	sort.Strings(skips)
	if len(excused) > 0 {
		t.Logf("%s: %d known failures:\n\t%s", name, len(excused), strings.Join(excused, "\n\t"))
	}
	if len(skips) > 0 {
		t.Logf("%s: %d tests skip but pass on tgt (not fatal):\n\t%s", name, len(skips), strings.Join(skips, "\n\t"))
	}
	if len(iscsiFailures) > 0 {
		t.Errorf("%s: %d iSCSI-layer tests fail:\n\t%s", name, len(iscsiFailures), strings.Join(iscsiFailures, "\n\t"))
	}
	if len(regressions) > 0 {
		t.Errorf("%s: %d tests pass on tgt but fail:\n\t%s", name, len(regressions), strings.Join(regressions, "\n\t"))
	}

	// 3. Every test of the baseline still passes (also those tgt skips or
	// fails, e.g. COMPARE AND WRITE, UNMAP, persistent reservations).
	by := stave.ByKey()
	var lost []string
	for _, k := range stave.Regressed(baseline) {
		if except[k] != "" {
			continue
		}
		line := k + ": no result"
		if r := by[k]; r != nil {
			line = fmt.Sprintf("%s: %v: %s", k, r.Status, r.Summary())
		}
		lost = append(lost, line)
	}
	if len(lost) > 0 {
		t.Errorf("%s: %d tests of %s no longer pass (if on purpose, regenerate the file; see its header):\n\t%s",
			name, len(lost), baseFile, strings.Join(lost, "\n\t"))
	}
}

// tail returns the last n lines of the file at path, or why it cannot.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// status returns r's status, or "no result" for nil.
func status(r *cunit.Result) string {
	if r == nil {
		return "no result"
	}
	return r.Status.String()
}

// readList parses iscsi-test-cu --list output.
func readList(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	list, err := cunit.ParseList(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) == 0 {
		t.Fatalf("%s lists no tests", path)
	}
	return list
}

// readRun parses one target's console output and marks the tests of the
// ALL family without a result as not run.
func readRun(t *testing.T, path string, list []string) *cunit.Run {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := cunit.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	r.AddMissing(list, "ALL", "no result: iscsi-test-cu did not reach this test")
	return r
}
