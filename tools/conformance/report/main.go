// Command report turns the raw output of tools/conformance/run.sh (libiscsi's
// iscsi-test-cu against Stave and against Debian's tgt) into
// docs/conformance.md: pass/fail/skip counts per suite for both targets side
// by side, totals, the tests that fail or skip on Stave with the reason a
// human recorded in tools/conformance/reasons.txt, and the tests that pass
// on tgt but not on Stave (the list that must become empty).
//
// Usage:
//
//	go run ./tools/conformance/report -stave OUT/stave.log -tgt OUT/tgt.log \
//	    [-stave-detail OUT/stave-detail.log] [-tgt-detail OUT/tgt-detail.log] \
//	    -list OUT/list.txt -reasons tools/conformance/reasons.txt \
//	    [-times OUT/times.txt] [-env OUT/env.txt] -out docs/conformance.md
//
// reasons.txt holds one "Name<TAB>reason" per line; Name is Family.Suite.Test,
// Suite.Test or Suite (the whole suite); '#' starts a comment line.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"stave.dev/stave/tools/conformance/cunit"
)

// options are the command-line flags.
type options struct {
	stave, tgt, staveDetail, tgtDetail string
	list, reasons, times, env, out     string
	baseline, writeBaseline            string
	staveLU                            string
}

func main() {
	var o options
	flag.StringVar(&o.stave, "stave", "", "iscsi-test-cu output against Stave (console or CUnit XML)")
	flag.StringVar(&o.tgt, "tgt", "", "iscsi-test-cu output against tgt")
	flag.StringVar(&o.staveDetail, "stave-detail", "", "iscsi-test-cu -V output of the suites that failed on Stave (run.sh stave-detail.log)")
	flag.StringVar(&o.tgtDetail, "tgt-detail", "", "iscsi-test-cu -V output of the suites that failed on tgt")
	flag.StringVar(&o.list, "list", "", "iscsi-test-cu --list output (marks tests without a result as not run)")
	flag.StringVar(&o.reasons, "reasons", "", "reasons file: Name<TAB>reason per line")
	flag.StringVar(&o.times, "times", "", "run.sh times.txt")
	flag.StringVar(&o.env, "env", "", "run.sh env.txt")
	flag.StringVar(&o.baseline, "baseline", "", "tests that passed on Stave before (tools/conformance/stave-passing.txt); the report lists those that no longer pass")
	flag.StringVar(&o.writeBaseline, "write-baseline", "", "write the tests that pass on Stave now to this file (to accept a new baseline)")
	flag.StringVar(&o.out, "out", "docs/conformance.md", "markdown file to write; - for stdout")
	flag.StringVar(&o.staveLU, "stave-lu", defaultStaveLU, "what Stave's LU was, for the report's header")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	in := Input{StaveLU: o.staveLU}
	var err error
	if o.list != "" {
		f, err := os.Open(o.list)
		if err != nil {
			return err
		}
		in.List, err = cunit.ParseList(f)
		f.Close()
		if err != nil {
			return err
		}
	}
	if in.Stave, err = load(o.stave, in.List); err != nil {
		return err
	}
	if in.Tgt, err = load(o.tgt, in.List); err != nil {
		return err
	}
	for _, x := range []struct {
		run  *cunit.Run
		path string
	}{{in.Stave, o.staveDetail}, {in.Tgt, o.tgtDetail}} {
		if x.run == nil || x.path == "" {
			continue
		}
		d, err := load(x.path, nil)
		if err != nil {
			return err
		}
		x.run.Enrich(d)
	}
	if o.reasons != "" {
		f, err := os.Open(o.reasons)
		if err != nil {
			return err
		}
		in.Reasons, err = ParseReasons(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", o.reasons, err)
		}
	}
	if o.baseline != "" {
		f, err := os.Open(o.baseline)
		if err != nil {
			return err
		}
		in.Baseline, err = cunit.ParseKeys(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", o.baseline, err)
		}
		in.BaselineName = o.baseline
	}
	if o.times != "" {
		if b, err := os.ReadFile(o.times); err == nil {
			in.Times = strings.TrimSpace(string(b))
		}
	}
	if o.env != "" {
		if b, err := os.ReadFile(o.env); err == nil {
			in.Env = strings.TrimSpace(string(b))
		}
	}
	if o.writeBaseline != "" {
		if in.Stave == nil {
			return errors.New("-write-baseline needs -stave")
		}
		var b strings.Builder
		b.WriteString("# Tests that pass on Stave: TestConformance fails if one of them stops passing.\n")
		b.WriteString("# Regenerate on purpose (review the diff): go run ./tools/conformance/report \\\n")
		b.WriteString("#   -stave OUT/stave.log -list OUT/list.txt -write-baseline tools/conformance/stave-passing.txt -out /dev/null\n")
		for _, k := range in.Stave.Passing() {
			b.WriteString(k + "\n")
		}
		if err := os.WriteFile(o.writeBaseline, []byte(b.String()), 0o644); err != nil {
			return err
		}
	}
	var w io.Writer = os.Stdout
	if o.out != "-" {
		f, err := os.Create(o.out)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	bw := bufio.NewWriter(w)
	Write(bw, &in)
	return bw.Flush()
}

// load parses one result file; an empty path gives nil (target not run).
func load(path string, list []string) (*cunit.Run, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r, err := cunit.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	r.AddMissing(list, "ALL", "no result: iscsi-test-cu did not reach this test")
	return r, nil
}

// Input is everything the report is made of. Stave or Tgt may be nil when
// that target was not run.
type Input struct {
	Stave, Tgt *cunit.Run
	List       []string // iscsi-test-cu --list
	Reasons    Reasons
	Times      string // "stave 40.1\ntgt 19.0"
	Env        string // run.sh env.txt
	// Baseline lists the tests (Suite.Test) that passed on Stave before;
	// BaselineName is the file it came from.
	Baseline     []string
	BaselineName string
	// StaveLU describes the LU Stave served (the header says "Stave:
	// <StaveLU>."); empty means defaultStaveLU.
	StaveLU string
}

// defaultStaveLU is what make conformance serves: a file-backed volume.
const defaultStaveLU = "one 1 GiB volume, LUN 0"

// Reasons maps test names (Family.Suite.Test, Suite.Test or Suite) to the
// reason a human gave for a failure or skip.
type Reasons map[string]string

// ParseReasons reads "Name<TAB>reason" lines; blank lines and lines starting
// with '#' are ignored.
func ParseReasons(rd io.Reader) (Reasons, error) {
	m := Reasons{}
	sc := bufio.NewScanner(rd)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, reason, ok := strings.Cut(line, "\t")
		name, reason = strings.TrimSpace(name), strings.TrimSpace(reason)
		if !ok || name == "" || reason == "" {
			return nil, fmt.Errorf("line %d: want Name<TAB>reason, got %q", n, line)
		}
		m[name] = reason
	}
	return m, sc.Err()
}

// For returns the reason recorded for r: by full name, then Suite.Test,
// then Suite.
func (rs Reasons) For(r *cunit.Result) string {
	for _, k := range []string{r.Name(), r.Key(), r.Suite} {
		if v, ok := rs[k]; ok {
			return v
		}
	}
	return ""
}

// Regressions returns the tests that pass on tgt but not on Stave, sorted by
// name, with the Stave result (nil when Stave has none).
func Regressions(stave, tgt *cunit.Run) []Regression {
	if stave == nil || tgt == nil {
		return nil
	}
	s := stave.ByKey()
	var out []Regression
	for i := range tgt.Results {
		t := &tgt.Results[i]
		if t.Status != cunit.Pass {
			continue
		}
		if r := s[t.Key()]; r == nil || r.Status != cunit.Pass {
			out = append(out, Regression{Tgt: t, Stave: r})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Tgt.Key() < out[j].Tgt.Key() })
	return out
}

// Regression is a test that passes on tgt but not on Stave.
type Regression struct {
	Tgt   *cunit.Result
	Stave *cunit.Result // nil: no Stave result at all
}

// Write renders the report as markdown.
func Write(w io.Writer, in *Input) {
	fmt.Fprintln(w, "# libiscsi conformance: Stave and tgt")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Generated by `tools/conformance/report` from the output of `tools/conformance/run.sh`")
	fmt.Fprintln(w, "(libiscsi `iscsi-test-cu --test=ALL --dataloss --allow-sanitize`, two initiator names, the")
	fmt.Fprintln(w, "LU URL given twice so that the MultipathIO tests run; one iscsi-test-cu run per suite with a")
	fmt.Fprintln(w, "hard time limit; suites with failures run again with `-V` for the messages below). Stave:")
	lu := in.StaveLU
	if lu == "" {
		lu = defaultStaveLU
	}
	fmt.Fprintf(w, "%s. tgt: Debian's tgtd, rdwr backing store on a sparse 1 GiB file,\n", lu)
	fmt.Fprintln(w, "LUN 1. Do not edit by hand: rerun `tools/conformance/run.sh --report`; give reasons in")
	fmt.Fprintln(w, "`tools/conformance/reasons.txt`. `go test ./tests/e2e -run TestConformance` (with")
	fmt.Fprintln(w, "STAVE_E2E=1) fails when the list \"Passes on tgt but not on Stave\" is not empty or an")
	fmt.Fprintln(w, "iSCSI-layer test (suites iSCSI*) fails on Stave.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "A skip is a test that libiscsi passed after printing `[SKIPPED]` (the feature is optional")
	fmt.Fprintln(w, "and the LU says it lacks it). \"not run\" means iscsi-test-cu never reported the test (time")
	fmt.Fprintln(w, "limit, crash, or a suite set-up failure). \"Stave says\" shows each `[FAILED]` line with the")
	fmt.Fprintln(w, "one or two progress lines before it (what was sent and what was expected).")
	fmt.Fprintln(w)
	if in.Env != "" || in.Times != "" {
		fmt.Fprintln(w, "```")
		if in.Env != "" {
			fmt.Fprintln(w, in.Env)
		}
		for _, l := range strings.Split(in.Times, "\n") {
			if f := strings.Fields(l); len(f) == 2 {
				fmt.Fprintf(w, "wall time %s: %ss\n", f[0], f[1])
			}
		}
		fmt.Fprintln(w, "```")
		fmt.Fprintln(w)
	}

	fmt.Fprintln(w, "## Totals")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | pass | fail | skip | not run | total |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: |")
	for _, t := range []struct {
		name string
		run  *cunit.Run
	}{{"Stave", in.Stave}, {"tgt", in.Tgt}} {
		if t.run == nil {
			fmt.Fprintf(w, "| %s | – | – | – | – | not run |\n", t.name)
			continue
		}
		c := t.run.Count(nil)
		fmt.Fprintf(w, "| %s | %d | %d | %d | %d | %d |\n", t.name, c[cunit.Pass], c[cunit.Fail], c[cunit.Skip], c[cunit.NotRun], c.Total())
	}
	fmt.Fprintln(w)
	for _, t := range []struct {
		name string
		run  *cunit.Run
	}{{"Stave", in.Stave}, {"tgt", in.Tgt}} {
		if t.run != nil && len(t.run.Aborts) > 0 {
			fmt.Fprintf(w, "Runs that did not end normally on %s: %s.\n\n", t.name, strings.Join(t.run.Aborts, "; "))
		}
	}

	fmt.Fprintln(w, "## Passes on tgt but not on Stave")
	fmt.Fprintln(w)
	switch {
	case in.Stave == nil || in.Tgt == nil:
		fmt.Fprintln(w, "Not computed: both targets must be run.")
	default:
		regs := Regressions(in.Stave, in.Tgt)
		if len(regs) == 0 {
			fmt.Fprintln(w, "None.")
			break
		}
		fmt.Fprintln(w, "This list must become empty.")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| test | Stave | Stave says | reason |")
		fmt.Fprintln(w, "| --- | --- | --- | --- |")
		for _, r := range regs {
			status, msg, reason := "no result", "", ""
			if r.Stave != nil {
				status, msg, reason = r.Stave.Status.String(), r.Stave.Summary(), in.Reasons.For(r.Stave)
			} else {
				reason = in.Reasons.For(r.Tgt)
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s |\n", r.Tgt.Key(), status, cell(msg), cell(reason))
		}
	}
	fmt.Fprintln(w)

	if in.Stave != nil && in.Baseline != nil {
		fmt.Fprintln(w, "## Passed on Stave before, not now")
		fmt.Fprintln(w)
		fmt.Fprintf(w, "Tests listed in `%s` that do not pass in this run.\n\n", in.BaselineName)
		if reg := in.Stave.Regressed(in.Baseline); len(reg) == 0 {
			fmt.Fprintln(w, "None.")
		} else {
			by := in.Stave.ByKey()
			fmt.Fprintln(w, "| test | Stave | Stave says |")
			fmt.Fprintln(w, "| --- | --- | --- |")
			for _, k := range reg {
				status, msg := "no result", ""
				if r := by[k]; r != nil {
					status, msg = r.Status.String(), r.Summary()
				}
				fmt.Fprintf(w, "| %s | %s | %s |\n", k, status, cell(msg))
			}
		}
		fmt.Fprintln(w)
	}

	fmt.Fprintln(w, "## Failing or skipped on Stave")
	fmt.Fprintln(w)
	if in.Stave == nil {
		fmt.Fprintln(w, "Stave was not run.")
	} else {
		var tgtBy map[string]*cunit.Result
		if in.Tgt != nil {
			tgtBy = in.Tgt.ByKey()
		}
		rows := 0
		for _, st := range []cunit.Status{cunit.Fail, cunit.NotRun, cunit.Skip} {
			for i := range in.Stave.Results {
				r := &in.Stave.Results[i]
				if r.Status != st {
					continue
				}
				if rows == 0 {
					fmt.Fprintln(w, "| test | Stave | tgt | Stave says | reason |")
					fmt.Fprintln(w, "| --- | --- | --- | --- | --- |")
				}
				rows++
				tgtStatus := "–"
				if t := tgtBy[r.Key()]; t != nil {
					tgtStatus = t.Status.String()
				}
				reason := in.Reasons.For(r)
				if reason == "" {
					reason = "**no reason recorded**"
				}
				fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", r.Key(), r.Status, tgtStatus, cell(r.Summary()), cell(reason))
			}
		}
		if rows == 0 {
			fmt.Fprintln(w, "None.")
		}
	}
	fmt.Fprintln(w)

	if in.Stave != nil {
		var rows []string
		for i := range in.Stave.Results {
			r := &in.Stave.Results[i]
			for _, m := range r.Teardown {
				rows = append(rows, fmt.Sprintf("| %s | %s |", r.Key(), cell(m)))
			}
		}
		if len(rows) > 0 {
			fmt.Fprintln(w, "## Errors in suite teardown on Stave")
			fmt.Fprintln(w)
			fmt.Fprintln(w, "Printed after the test passed or failed, by the suite's clean-up; they change no result")
			fmt.Fprintln(w, "but can show a bug (a unit attention after a reset is expected).")
			fmt.Fprintln(w)
			fmt.Fprintln(w, "| after test | message |")
			fmt.Fprintln(w, "| --- | --- |")
			for _, r := range rows {
				fmt.Fprintln(w, r)
			}
			fmt.Fprintln(w)
		}
	}

	fmt.Fprintln(w, "## Per suite")
	writeSuites(w, in)
}

// writeSuites writes one table per family (SCSI, iSCSI, ...) with a row per
// suite.
func writeSuites(w io.Writer, in *Input) {
	fam := cunit.SuiteFamilies(in.List)
	type row struct{ stave, tgt cunit.Counts }
	rows := map[string]map[string]*row{} // family → suite → counts
	add := func(r *cunit.Run, isStave bool) {
		if r == nil {
			return
		}
		for i := range r.Results {
			res := &r.Results[i]
			f := fam[res.Suite]
			if f == "" {
				f = "other"
			}
			if rows[f] == nil {
				rows[f] = map[string]*row{}
			}
			rw := rows[f][res.Suite]
			if rw == nil {
				rw = &row{}
				rows[f][res.Suite] = rw
			}
			if isStave {
				rw.stave[res.Status]++
			} else {
				rw.tgt[res.Status]++
			}
		}
	}
	add(in.Stave, true)
	add(in.Tgt, false)
	var families []string
	for f := range rows {
		families = append(families, f)
	}
	sort.Strings(families)
	for _, f := range families {
		fmt.Fprintln(w)
		fmt.Fprintf(w, "### %s\n\n", f)
		fmt.Fprintln(w, "| suite | Stave pass | fail | skip | not run | tgt pass | fail | skip | not run |")
		fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
		var suites []string
		for s := range rows[f] {
			suites = append(suites, s)
		}
		sort.Strings(suites)
		var tot row
		for _, s := range suites {
			rw := rows[f][s]
			fmt.Fprintf(w, "| %s.%s | %s | %s |\n", f, s, counts(rw.stave, in.Stave != nil), counts(rw.tgt, in.Tgt != nil))
			for st := range tot.stave {
				tot.stave[st] += rw.stave[st]
				tot.tgt[st] += rw.tgt[st]
			}
		}
		fmt.Fprintf(w, "| **total** | %s | %s |\n", counts(tot.stave, in.Stave != nil), counts(tot.tgt, in.Tgt != nil))
	}
}

// counts renders pass | fail | skip | not run, or dashes when not run.
func counts(c cunit.Counts, ran bool) string {
	if !ran {
		return "– | – | – | –"
	}
	return fmt.Sprintf("%d | %d | %d | %d", c[cunit.Pass], c[cunit.Fail], c[cunit.Skip], c[cunit.NotRun])
}

// cell makes s safe for a markdown table cell.
func cell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	s = strings.ReplaceAll(s, "\n", " ")
	const max = 400
	if r := []rune(s); len(r) > max {
		s = string(r[:max]) + "…"
	}
	return s
}
