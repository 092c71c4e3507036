// Package cunit parses the results of libiscsi's conformance suite,
// iscsi-test-cu, which is built on CUnit 2.1.
//
// Two formats are understood:
//
//   - The console output of the verbose mode (the default), possibly several
//     runs concatenated by tools/conformance/run.sh with its "### " marker
//     lines between them:
//
//     ### RUN ALL.Read10
//     Suite: Read10
//     Test: Simple ...passed
//     Test: BeyondEol ...    [FAILED] READ10 successful but should have failed ...
//     FAILED
//     1. test_read10_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)
//     Test: Dpo ...    [SKIPPED] DPO is not implemented.
//     passed
//     ### TIMEOUT ALL.Read10 after 180s
//     ### END ALL.Read10 rc=124
//
//     (CUnit indents "Test:" and assertion lines; the parser trims.)
//     A test whose status is "passed" but that printed a "[SKIPPED]" line
//     before its status is a skip: libiscsi reports skips as passes with a
//     message. Text after the status on the same line (e.g. "passed
//     [FAILED] PRIN ...") comes from the suite's teardown and does not
//     change the status.
//
//   - CUnit's "automated" XML (iscsi-test-cu --xml writes
//     CUnitAutomated-Results.xml). It has no skips (they are successes) and
//     no messages, only the failed assertions, so the console form is
//     preferred.
//
// Parse picks the format from the content. Tests that the listing
// (iscsi-test-cu --list, see ParseList) names but that have no result are
// added as NotRun by Run.AddMissing.
package cunit

import (
	"bufio"
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Status is the outcome of one test.
type Status uint8

// Test outcomes. The order is the order of severity used by Worse.
const (
	Pass Status = iota
	Skip
	Fail
	NotRun
)

// String returns the lower-case name of s.
func (s Status) String() string {
	switch s {
	case Pass:
		return "pass"
	case Skip:
		return "skip"
	case Fail:
		return "fail"
	case NotRun:
		return "not run"
	}
	return "Status(" + strconv.Itoa(int(s)) + ")"
}

// Result is the outcome of one test case.
type Result struct {
	// Family is the first component of the test name (ALL, SCSI, iSCSI),
	// taken from the run.sh marker; "ALL" when there is none.
	Family string
	Suite  string // CUnit suite, e.g. Read10
	Test   string // CUnit test, e.g. BeyondEol
	Status Status
	// Messages holds the "[FAILED]" and "[SKIPPED]" lines libiscsi printed
	// while the test ran, trimmed, consecutive duplicates folded into one
	// with a " (×N)" suffix. A "[FAILED]" line is prefixed with the one or
	// two progress lines before it ("Try writing one block ... / Verify
	// that the target returned SUCCESS → [FAILED] ..."). For a NotRun or
	// aborted test it holds why.
	Messages []string
	// Teardown holds the "[FAILED]" lines printed after the test's status,
	// by the suite's teardown (e.g. "PRIN command: failed with sense ...");
	// they do not change the status.
	Teardown []string
	// Output holds the last few untagged lines the test printed before its
	// status ("First block did not contain expected 'b'"), without the
	// "Send ..." and "[OK] ..." lines of iscsi-test-cu -V.
	Output []string
	// Asserts holds the failed CUnit assertions, "file.c:line - CONDITION".
	Asserts []string
}

// Name returns the full name, Family.Suite.Test.
func (r *Result) Name() string { return r.Family + "." + r.Suite + "." + r.Test }

// Key returns Suite.Test, the name without the family; results of the same
// test run under different families (ALL.Read10.Simple, SCSI.Read10.Simple)
// share a key.
func (r *Result) Key() string { return r.Suite + "." + r.Test }

// Summary returns a one-line explanation of a result: its messages (for a
// failure without "[FAILED]" messages, its last output lines), followed for
// a failure by where the first failed assertion is.
func (r *Result) Summary() string {
	var parts []string
	parts = append(parts, r.Messages...)
	if r.Status == Fail && !hasTag(r.Messages, "[FAILED]") && len(r.Output) > 0 {
		parts = append(parts, r.Output[max(0, len(r.Output)-2):]...)
	}
	s := strings.Join(parts, "; ")
	if r.Status == Fail && len(r.Asserts) > 0 {
		at := "at " + r.Asserts[0]
		if n := len(r.Asserts) - 1; n > 0 {
			at += fmt.Sprintf(" (+%d more)", n)
		}
		if s != "" {
			s += " "
		}
		s += "[" + at + "]"
	}
	return s
}

// hasTag reports whether a message holds tag.
func hasTag(msgs []string, tag string) bool {
	for _, m := range msgs {
		if strings.Contains(m, tag) {
			return true
		}
	}
	return false
}

// outputKeep is how many output lines a Result keeps.
const outputKeep = 4

// Run is the set of results of one or more iscsi-test-cu runs against one
// target.
type Run struct {
	Results []Result
	// Aborts lists the runs that did not end normally (run.sh TIMEOUT and
	// EXIT markers), in order.
	Aborts []string
}

// Counts is the number of results per status.
type Counts [NotRun + 1]int

// Total returns the number of results counted.
func (c Counts) Total() int { return c[Pass] + c[Skip] + c[Fail] + c[NotRun] }

// Count returns the results per status of the tests whose Result matches
// keep; a nil keep counts all.
func (r *Run) Count(keep func(*Result) bool) Counts {
	var c Counts
	for i := range r.Results {
		if keep == nil || keep(&r.Results[i]) {
			c[r.Results[i].Status]++
		}
	}
	return c
}

// ByKey returns the results indexed by Key. When a test ran more than once
// the last result wins.
func (r *Run) ByKey() map[string]*Result {
	m := make(map[string]*Result, len(r.Results))
	for i := range r.Results {
		m[r.Results[i].Key()] = &r.Results[i]
	}
	return m
}

// AddMissing appends a NotRun result for every test of list (full names
// Family.Suite.Test, see ParseList) of the given family that has no result,
// with why as its message.
func (r *Run) AddMissing(list []string, family, why string) {
	have := r.ByKey()
	for _, name := range list {
		f, suite, test, ok := splitName(name)
		if !ok || f != family {
			continue
		}
		if _, ok := have[suite+"."+test]; ok {
			continue
		}
		r.Results = append(r.Results, Result{Family: f, Suite: suite, Test: test, Status: NotRun, Messages: []string{why}})
	}
}

// splitName splits Family.Suite.Test. Test names may not hold dots, but
// some hold dashes (Control-D_SENSE).
func splitName(name string) (family, suite, test string, ok bool) {
	parts := strings.SplitN(name, ".", 3)
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}

// ParseList returns the test names (Family.Suite.Test) of iscsi-test-cu
// --list output, in order. Family and suite lines are left out.
func ParseList(rd io.Reader) ([]string, error) {
	var names []string
	sc := bufio.NewScanner(rd)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if _, _, _, ok := splitName(line); ok && !strings.ContainsAny(line, " \t") {
			names = append(names, line)
		}
	}
	return names, sc.Err()
}

// SuiteFamilies maps each suite name of a listing to the first non-ALL
// family that holds it, e.g. "Read10" → "SCSI". (The LINUX family repeats
// SCSI suites for SG_IO devices; iscsi-test-cu lists SCSI and iSCSI first.)
func SuiteFamilies(list []string) map[string]string {
	m := make(map[string]string)
	for _, name := range list {
		if f, suite, _, ok := splitName(name); ok && f != "ALL" && m[suite] == "" {
			m[suite] = f
		}
	}
	return m
}

// Parse parses console or XML output, chosen by content.
func Parse(data []byte) (*Run, error) {
	trimmed := bytes.TrimSpace(data)
	if bytes.HasPrefix(trimmed, []byte("<?xml")) || bytes.HasPrefix(trimmed, []byte("<CUNIT")) {
		return ParseXML(bytes.NewReader(data))
	}
	return ParseConsole(bytes.NewReader(data))
}

var (
	reSuite  = regexp.MustCompile(`^Suite: (\S+)\s*$`)
	reTest   = regexp.MustCompile(`^Test: (\S+) \.\.\.(.*)$`)
	reAssert = regexp.MustCompile(`^\d+\. (\S+:\d+)\s+- (.*)$`)
	reMarker = regexp.MustCompile(`^### (RUN|TIMEOUT|EXIT|END) (\S+)(.*)$`)
)

// consoleParser holds the state of ParseConsole.
type consoleParser struct {
	run     Run
	family  string
	suite   string
	cur     *Result // test in progress or just finished, nil between suites
	status  bool    // cur has its status
	skipped bool    // cur printed [SKIPPED] before its status
	failed  bool    // cur's status is FAILED: numbered lines are assertions
}

// ParseConsole parses the console output of iscsi-test-cu's verbose mode,
// possibly with run.sh markers.
func ParseConsole(rd io.Reader) (*Run, error) {
	p := &consoleParser{family: "ALL"}
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		p.line(strings.TrimRight(sc.Text(), "\r"))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cunit: reading console output: %w", err)
	}
	p.abort("output ended while this test ran")
	return &p.run, nil
}

func (p *consoleParser) line(raw string) {
	// A marker that run.sh wrote after a line iscsi-test-cu left unfinished.
	if i := strings.Index(raw, "### "); i > 0 && reMarker.MatchString(raw[i:]) {
		p.line(raw[:i])
		p.line(raw[i:])
		return
	}
	line := strings.TrimSpace(raw)
	if m := reMarker.FindStringSubmatch(line); m != nil {
		p.marker(m[1], m[2], strings.TrimSpace(m[3]))
		return
	}
	if m := reSuite.FindStringSubmatch(line); m != nil {
		p.abort("no result before the next suite started")
		p.suite = m[1]
		p.cur = nil
		return
	}
	if m := reTest.FindStringSubmatch(line); m != nil && p.suite != "" {
		p.abort("no result before the next test started")
		p.run.Results = append(p.run.Results, Result{Family: p.family, Suite: p.suite, Test: m[1]})
		p.cur = &p.run.Results[len(p.run.Results)-1]
		p.status, p.skipped, p.failed = false, false, false
		p.rest(strings.TrimSpace(m[2]))
		return
	}
	if strings.HasPrefix(line, "Run Summary:") {
		p.abort("no result before the run summary")
		p.cur = nil
		return
	}
	if p.cur == nil {
		return
	}
	if p.failed {
		if m := reAssert.FindStringSubmatch(line); m != nil {
			// -V teardown output may follow on the same line.
			cond, _, _ := strings.Cut(m[2], "    ")
			p.cur.Asserts = append(p.cur.Asserts, m[1]+" - "+cond)
			return
		}
	}
	p.rest(line)
}

// rest handles text that belongs to the current test: a status word, a
// message, or a status followed by a teardown message.
func (p *consoleParser) rest(s string) {
	for _, word := range []string{"passed", "FAILED"} {
		if s == word || strings.HasPrefix(s, word+" ") || strings.HasPrefix(s, word+"\t") {
			if !p.status {
				p.setStatus(word == "FAILED")
			}
			s = strings.TrimSpace(s[len(word):])
			break
		}
	}
	if s == "" {
		return
	}
	switch {
	case strings.HasPrefix(s, "[SKIPPED]"):
		if !p.status {
			p.skipped = true
		}
		p.message(s)
	case strings.HasPrefix(s, "[FAILED]"):
		if p.status {
			// After the status: the suite's teardown.
			p.cur.Teardown = append(p.cur.Teardown, s)
			return
		}
		if ctx := p.cur.Output[max(0, len(p.cur.Output)-2):]; len(ctx) > 0 {
			s = strings.Join(ctx, " / ") + " → " + s
		}
		p.message(s)
	case strings.HasPrefix(s, "["), strings.HasPrefix(s, "Send "), p.status:
		// [OK], [WARNING], -V command lines; text after the status.
	default:
		p.cur.Output = append(p.cur.Output, s)
		if n := len(p.cur.Output); n > outputKeep {
			p.cur.Output = append(p.cur.Output[:0], p.cur.Output[n-outputKeep:]...)
		}
	}
}

func (p *consoleParser) setStatus(failed bool) {
	p.status = true
	p.failed = failed
	switch {
	case failed:
		p.cur.Status = Fail
	case p.skipped:
		p.cur.Status = Skip
	default:
		p.cur.Status = Pass
	}
}

// message records s on the current test, folding repeats of the last one.
func (p *consoleParser) message(s string) {
	msgs := p.cur.Messages
	if n := len(msgs); n > 0 {
		last, count := msgs[n-1], 1
		if i := strings.LastIndex(last, " (×"); i >= 0 && strings.HasSuffix(last, ")") {
			if c, err := strconv.Atoi(last[i+len(" (×") : len(last)-1]); err == nil {
				last, count = last[:i], c
			}
		}
		if last == s {
			msgs[n-1] = fmt.Sprintf("%s (×%d)", s, count+1)
			return
		}
	}
	p.cur.Messages = append(msgs, s)
}

// abort fails the current test if it has no status yet.
func (p *consoleParser) abort(why string) {
	if p.cur != nil && !p.status {
		p.cur.Status = Fail
		p.cur.Messages = append(p.cur.Messages, why)
		p.status = true
	}
}

func (p *consoleParser) marker(kind, sel, rest string) {
	switch kind {
	case "RUN":
		p.abort("no result before the next run started")
		p.cur, p.suite = nil, ""
		if f, _, _ := strings.Cut(sel, "."); f != "" {
			p.family = f
		}
	case "TIMEOUT":
		p.abort("iscsi-test-cu was killed by the run's time limit while this test ran (" + sel + " " + rest + ")")
		p.run.Aborts = append(p.run.Aborts, strings.TrimSpace("timeout "+sel+" "+rest))
	case "EXIT":
		p.abort("iscsi-test-cu exited abnormally while this test ran (" + rest + ")")
		p.run.Aborts = append(p.run.Aborts, strings.TrimSpace("exit "+sel+" "+rest))
	case "END":
		p.abort("no result when iscsi-test-cu ended (" + rest + ")")
		p.cur, p.suite = nil, ""
	}
}

// ParseXML parses CUnit's automated XML results (CUnitAutomated-Results.xml).
// Every test is Pass or Fail; family is "ALL".
func ParseXML(rd io.Reader) (*Run, error) {
	dec := xml.NewDecoder(rd)
	dec.Strict = false
	var (
		run   Run
		suite string
		cur   *Result
		path  []string
		text  strings.Builder
		file  string
		line  string
	)
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("cunit: parsing XML: %w", err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			path = append(path, t.Name.Local)
			text.Reset()
			switch t.Name.Local {
			case "CUNIT_RUN_TEST_SUCCESS", "CUNIT_RUN_TEST_FAILURE":
				if cur == nil {
					run.Results = append(run.Results, Result{Family: "ALL", Suite: suite})
					cur = &run.Results[len(run.Results)-1]
				}
				if t.Name.Local == "CUNIT_RUN_TEST_FAILURE" {
					cur.Status = Fail
				}
			case "CUNIT_RUN_TEST_RECORD":
				cur = nil
			}
		case xml.CharData:
			text.Write(t)
		case xml.EndElement:
			v := strings.TrimSpace(text.String())
			parent := ""
			if len(path) >= 2 {
				parent = path[len(path)-2]
			}
			switch t.Name.Local {
			case "SUITE_NAME":
				if strings.HasPrefix(parent, "CUNIT_RUN_SUITE_") {
					suite = v
				}
			case "TEST_NAME":
				if cur != nil {
					cur.Test = v
				}
			case "FILE_NAME":
				file = v
			case "LINE_NUMBER":
				line = v
			case "CONDITION":
				if cur != nil {
					cur.Asserts = append(cur.Asserts, file+":"+line+" - "+v)
				}
			case "CUNIT_RUN_TEST_RECORD":
				cur = nil
			case "FAILURE_REASON":
				if strings.HasPrefix(parent, "CUNIT_RUN_SUITE_") {
					run.Aborts = append(run.Aborts, "suite "+suite+": "+v)
				}
			}
			if len(path) > 0 {
				path = path[:len(path)-1]
			}
			text.Reset()
		}
	}
	// Several failed assertions of one test are separate FAILURE elements
	// of one record; merge records that repeat a test name in a row.
	merged := run.Results[:0]
	for _, r := range run.Results {
		if r.Suite == "" || r.Test == "" {
			continue // a record without names: nothing to report it under
		}
		if n := len(merged); n > 0 && merged[n-1].Suite == r.Suite && merged[n-1].Test == r.Test {
			merged[n-1].Asserts = append(merged[n-1].Asserts, r.Asserts...)
			if r.Status == Fail {
				merged[n-1].Status = Fail
			}
			continue
		}
		merged = append(merged, r)
	}
	run.Results = merged
	return &run, nil
}

// Enrich replaces the messages, output and assertions of every failed
// test of r with those of the same test in detail (a second run of the
// failing suites with iscsi-test-cu -V) when it failed there too. A test
// that passed in detail keeps its own and gets a note that it is flaky.
func (r *Run) Enrich(detail *Run) {
	if detail == nil {
		return
	}
	d := detail.ByKey()
	for i := range r.Results {
		res := &r.Results[i]
		x := d[res.Key()]
		if res.Status != Fail || x == nil {
			continue
		}
		if x.Status != Fail {
			res.Messages = append(res.Messages, "passed when run again with -V (flaky?)")
			continue
		}
		res.Messages, res.Output, res.Asserts = x.Messages, x.Output, x.Asserts
	}
}

// Passing returns the sorted keys (Suite.Test) of the results that pass.
func (r *Run) Passing() []string {
	var keys []string
	for i := range r.Results {
		if r.Results[i].Status == Pass {
			keys = append(keys, r.Results[i].Key())
		}
	}
	sort.Strings(keys)
	return slices.Compact(keys)
}

// ParseKeys reads one Suite.Test key per line, as written by AppendKeys;
// blank lines and lines starting with '#' are ignored.
func ParseKeys(rd io.Reader) ([]string, error) {
	var keys []string
	sc := bufio.NewScanner(rd)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.Count(line, ".") != 1 || strings.ContainsAny(line, " \t") {
			return nil, fmt.Errorf("cunit: line %d: want Suite.Test, got %q", n, line)
		}
		keys = append(keys, line)
	}
	return keys, sc.Err()
}

// Regressed returns the keys of baseline whose result in r is not Pass (or
// missing), in baseline order.
func (r *Run) Regressed(baseline []string) []string {
	by := r.ByKey()
	var out []string
	for _, k := range baseline {
		if res := by[k]; res == nil || res.Status != Pass {
			out = append(out, k)
		}
	}
	return out
}

// Sort orders results by family, suite and test name.
func (r *Run) Sort() {
	sort.SliceStable(r.Results, func(i, j int) bool {
		a, b := &r.Results[i], &r.Results[j]
		if a.Family != b.Family {
			return a.Family < b.Family
		}
		if a.Suite != b.Suite {
			return a.Suite < b.Suite
		}
		return a.Test < b.Test
	})
}
