package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"stave.dev/stave/tools/conformance/cunit"
)

var update = flag.Bool("update", false, "rewrite testdata/report.md")

func TestParseReasons(t *testing.T) {
	tests := []struct {
		in      string
		want    Reasons
		wantErr bool
	}{
		{"", Reasons{}, false},
		{"# c\n\nA.B\tbecause\n", Reasons{"A.B": "because"}, false},
		{"ALL.A.B\t  spaced reason  \nA\twhole suite\n", Reasons{"ALL.A.B": "spaced reason", "A": "whole suite"}, false},
		{"A.B because\n", nil, true}, // no tab
		{"A.B\t\n", nil, true},       // no reason
	}
	for _, tt := range tests {
		got, err := ParseReasons(strings.NewReader(tt.in))
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseReasons(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if !tt.wantErr && !equal(got, tt.want) {
			t.Errorf("ParseReasons(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}

	rs := Reasons{"ALL.Read10.Simple": "full", "Read10.Simple": "key", "Read10": "suite"}
	for _, tt := range []struct {
		family, suite, test, want string
	}{
		{"ALL", "Read10", "Simple", "full"},
		{"SCSI", "Read10", "Simple", "key"},
		{"ALL", "Read10", "Dpo", "suite"},
		{"ALL", "Read12", "Dpo", ""},
	} {
		r := &cunit.Result{Family: tt.family, Suite: tt.suite, Test: tt.test}
		if got := rs.For(r); got != tt.want {
			t.Errorf("For(%s) = %q, want %q", r.Name(), got, tt.want)
		}
	}
}

func equal(a, b Reasons) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func load2(t *testing.T, name string, list []string) *cunit.Run {
	t.Helper()
	r, err := load(filepath.Join("testdata", name), list)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestReport(t *testing.T) {
	f, err := os.Open("testdata/list.txt")
	if err != nil {
		t.Fatal(err)
	}
	list, err := cunit.ParseList(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	stave, tgt := load2(t, "stave.log", list), load2(t, "tgt.log", list)

	if c := stave.Count(nil); c != (cunit.Counts{cunit.Pass: 1, cunit.Fail: 2, cunit.Skip: 1, cunit.NotRun: 1}) {
		t.Errorf("stave counts = %v", c)
	}
	if c := tgt.Count(nil); c != (cunit.Counts{cunit.Pass: 3, cunit.Fail: 1, cunit.Skip: 1}) {
		t.Errorf("tgt counts = %v", c)
	}
	var regs []string
	for _, r := range Regressions(stave, tgt) {
		regs = append(regs, r.Tgt.Key())
	}
	if got, want := strings.Join(regs, ","), "Read10.BeyondEol,iSCSIcmdsn.iSCSICmdSnTooHigh"; got != want {
		t.Errorf("Regressions = %s, want %s", got, want)
	}
	if Regressions(stave, nil) != nil || Regressions(tgt, tgt) != nil {
		t.Error("Regressions of a missing run or of a run against itself is not empty")
	}

	rf, err := os.Open("testdata/reasons.txt")
	if err != nil {
		t.Fatal(err)
	}
	reasons, err := ParseReasons(rf)
	rf.Close()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	Write(&buf, &Input{Stave: stave, Tgt: tgt, List: list, Reasons: reasons, Times: "tgt 19.0\nstave 20.5"})
	got := buf.String()
	for _, want := range []string{
		"| Stave | 1 | 2 | 1 | 1 | 5 |",
		"| tgt | 3 | 1 | 1 | 0 | 5 |",
		"| Read10.BeyondEol | fail | pass | [FAILED] READ10 successful but should have failed with ILLEGAL_REQUEST(0x05)/LBA_OUT_OF_RANGE(0x2100) [at test_read10_beyond_eol.c:40 - CU_ASSERT_EQUAL(_r,0)] | bug: LBA check off by one (issue 12) |",
		"| iSCSIcmdsn.iSCSICmdSnTooLow | not run | fail | no result: iscsi-test-cu did not reach this test | **no reason recorded** |",
		"| Sanitize.BlockErase | skip | skip | [SKIPPED] --allow-sanitize flag is not set. Skipping test. | not implemented |",
		"| SCSI.Read10 | 1 | 1 | 0 | 0 | 2 | 0 | 0 | 0 |",
		"| iSCSI.iSCSIcmdsn | 0 | 1 | 0 | 1 | 1 | 1 | 0 | 0 |",
		"Runs that did not end normally on Stave: timeout ALL.iSCSIcmdsn after 180s.",
		"wall time stave: 20.5s",
		"| Sanitize.BlockErase | [FAILED] PRIN command: failed with sense. RESERVATION CONFLICT |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	golden := filepath.Join("testdata", "report.md")
	if *update {
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("report differs from %s (rerun with -update and review the diff):\n%s", golden, got)
	}
}

func TestReportBaseline(t *testing.T) {
	stave := load2(t, "stave.log", nil)
	var buf bytes.Buffer
	Write(&buf, &Input{Stave: stave, Baseline: []string{"Read10.Simple", "Read10.BeyondEol", "Read10.Gone"}, BaselineName: "base.txt"})
	got := buf.String()
	for _, want := range []string{
		"## Passed on Stave before, not now",
		"Tests listed in `base.txt` that do not pass in this run.",
		"| Read10.BeyondEol | fail | [FAILED] READ10 successful",
		"| Read10.Gone | no result |  |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "| Read10.Simple |") {
		t.Errorf("a test that still passes is listed as regressed:\n%s", got)
	}
}

func TestReportOneTarget(t *testing.T) {
	stave := load2(t, "stave.log", nil)
	var buf bytes.Buffer
	Write(&buf, &Input{Stave: stave})
	got := buf.String()
	for _, want := range []string{"| tgt | – | – | – | – | not run |", "Not computed: both targets must be run."} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q:\n%s", want, got)
		}
	}
}
