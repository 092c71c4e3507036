package cunit

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// want is the expected outcome of one test in a sample.
type want struct {
	name    string // Family.Suite.Test
	status  Status
	msg     string // substring of Summary(); empty: not checked
	asserts int    // number of failed assertions
}

func TestParse(t *testing.T) {
	tests := []struct {
		file   string
		want   []want
		aborts []string
	}{{
		file: "console-basic.txt",
		want: []want{
			{"ALL.GetLBAStatus.Simple", Pass, "", 0},
			{"ALL.GetLBAStatus.BeyondEol", Fail, "should have failed with ILLEGAL_REQUEST(0x05)/LBA_OUT_OF_RANGE(0x2100)", 1},
			{"ALL.GetLBAStatus.UnmapSingle", Skip, "[SKIPPED] Logical unit is fully provisioned", 0},
			// A [WARNING] line is neither a skip nor a failure.
			{"ALL.ModeSense6.Control", Pass, "", 0},
			{"ALL.ModeSense6.Control-D_SENSE", Pass, "", 0},
			// Repeated messages fold into one.
			{"ALL.OrWrite.BeyondEol", Fail, "but failed with Sense: (null)(0x03)/(0x1100) (×3)", 2},
			// Progress lines are not messages.
			{"ALL.Reserve6.2Initiators", Fail, "MODE SENSE should fail from the second initiator → [FAILED] MODESENSE6 successful but should have failed", 1},
			{"ALL.Reserve6.TargetColdReset", Skip, "ColdReset is not working/implemented", 0},
			// Text after the status comes from the teardown: still a pass.
			{"ALL.Reserve6.LUNReset", Pass, "", 0},
			// libiscsi prints [FAILED] for an optional feature and passes.
			{"ALL.WriteSame10.UnmapVPD", Pass, "INVALID_FIELD_IN_CDB", 0},
			{"ALL.iSCSIdatasn.iSCSIDataSnInvalid", Fail, "[at test_iscsi_datasn_invalid.c:98 - CU_ASSERT_NOT_EQUAL(ret,0) (+1 more)]", 2},
			// Without a [FAILED] line, the last output explains.
			{"ALL.iSCSIResiduals.Write10Residuals", Fail, "First block did not contain expected 'b' [at test_write10_residuals.c:89 - CU_ASSERT_EQUAL(task->status,SCSI_STATUS_GOOD) (+1 more)]", 2},
		},
	}, {
		// iscsi-test-cu -V: [FAILED] lines get the progress lines before
		// them as context; Send and [OK] lines are not context.
		file: "console-verbose.txt",
		want: []want{
			{"ALL.iSCSIResiduals.Write10Residuals", Fail, "Try writing one block but with iSCSI expected transfer length==0 / Verify that the target returned SUCCESS → [FAILED] Target returned error SENSE KEY:ILLEGAL_REQUEST(5) ASCQ:(null)(0x0e03); Try writing two blocks", 4},
		},
	}, {
		file: "console-markers.txt",
		want: []want{
			{"iSCSI.iSCSIcmdsn.iSCSICmdSnTooHigh", Pass, "", 0},
			{"iSCSI.iSCSIcmdsn.iSCSICmdSnTooLow", Fail, "killed by the run's time limit", 0},
			{"ALL.Read10.Simple", Pass, "", 0},
			{"ALL.Read10.BeyondEol", Fail, "exited abnormally while this test ran (rc=139)", 0},
			{"ALL.Write10.Simple", Pass, "", 0},
		},
		aborts: []string{"timeout iSCSI.iSCSIcmdsn after 180s", "exit ALL.Read10 rc=139"},
	}, {
		file: "results.xml",
		want: []want{
			{"ALL.GetLBAStatus.Simple", Pass, "", 0},
			{"ALL.GetLBAStatus.BeyondEol", Fail, "test_get_lba_status_beyond_eol.c:38 - CU_ASSERT_EQUAL(_r,0)", 1},
			// The XML cannot tell skips from passes.
			{"ALL.GetLBAStatus.UnmapSingle", Pass, "", 0},
			{"ALL.iSCSIdatasn.iSCSIDataSnInvalid", Fail, "[at test_iscsi_datasn_invalid.c:98 - CU_ASSERT_NOT_EQUAL(ret,0) (+3 more)]", 4},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			run, err := Parse(data)
			if err != nil {
				t.Fatal(err)
			}
			if len(run.Results) != len(tt.want) {
				var got []string
				for _, r := range run.Results {
					got = append(got, r.Name()+"="+r.Status.String())
				}
				t.Fatalf("got %d results, want %d:\n%s", len(run.Results), len(tt.want), strings.Join(got, "\n"))
			}
			for i, w := range tt.want {
				r := &run.Results[i]
				if r.Name() != w.name || r.Status != w.status {
					t.Errorf("result %d = %s %v, want %s %v (%q)", i, r.Name(), r.Status, w.name, w.status, r.Summary())
				}
				if !strings.Contains(r.Summary(), w.msg) {
					t.Errorf("%s: summary %q does not contain %q", w.name, r.Summary(), w.msg)
				}
				if len(r.Asserts) != w.asserts {
					t.Errorf("%s: %d asserts %q, want %d", w.name, len(r.Asserts), r.Asserts, w.asserts)
				}
			}
			if tt.file == "console-basic.txt" {
				r := run.ByKey()["Reserve6.LUNReset"]
				if len(r.Teardown) != 1 || !strings.Contains(r.Teardown[0], "ASCQ:BUS_RESET(0x2900)") || len(r.Messages) != 0 {
					t.Errorf("LUNReset teardown %q, messages %q", r.Teardown, r.Messages)
				}
			}
			if !reflect.DeepEqual(run.Aborts, tt.aborts) {
				t.Errorf("aborts = %q, want %q", run.Aborts, tt.aborts)
			}
		})
	}
}

func TestListAndMissing(t *testing.T) {
	f, err := os.Open(filepath.Join("testdata", "list.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	list, err := ParseList(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 13 || list[0] != "ALL.Read10.Simple" || list[12] != "LINUX.Read10.Simple" {
		t.Fatalf("ParseList = %q", list)
	}
	fam := SuiteFamilies(list)
	if fam["Read10"] != "SCSI" || fam["iSCSIcmdsn"] != "iSCSI" || len(fam) != 3 {
		t.Errorf("SuiteFamilies = %v", fam)
	}

	data, err := os.ReadFile(filepath.Join("testdata", "console-markers.txt"))
	if err != nil {
		t.Fatal(err)
	}
	run, err := ParseConsole(strings.NewReader(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	// Results are keyed without family, so iSCSI.iSCSIcmdsn.* count for
	// ALL.iSCSIcmdsn.*; only ALL.Read10.ZeroBlocks is missing.
	run.AddMissing(list, "ALL", "not reached")
	c := run.Count(nil)
	if want := (Counts{Pass: 3, Fail: 2, NotRun: 1}); c != want {
		t.Errorf("Count = %v, want %v", c, want)
	}
	last := run.Results[len(run.Results)-1]
	if last.Name() != "ALL.Read10.ZeroBlocks" || last.Status != NotRun || last.Summary() != "not reached" {
		t.Errorf("missing result = %+v", last)
	}
	if c.Total() != 6 {
		t.Errorf("Total = %d", c.Total())
	}
}

func TestParseEmpty(t *testing.T) {
	run, err := Parse(nil)
	if err != nil || len(run.Results) != 0 {
		t.Fatalf("Parse(nil) = %+v, %v", run, err)
	}
	run, err = Parse([]byte("iscsi_connect failed: connection refused\n"))
	if err != nil || len(run.Results) != 0 {
		t.Fatalf("Parse(garbage) = %+v, %v", run, err)
	}
}

func TestEnrich(t *testing.T) {
	parse := func(name string) *Run {
		t.Helper()
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		r, err := Parse(data)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	run, detail := parse("console-basic.txt"), parse("console-verbose.txt")
	// A test that failed in the run and passes in the detail run.
	detail.Results = append(detail.Results, Result{Family: "ALL", Suite: "GetLBAStatus", Test: "BeyondEol", Status: Pass})
	run.Enrich(detail)
	by := run.ByKey()
	if got := by["iSCSIResiduals.Write10Residuals"].Summary(); !strings.Contains(got, "length==0 / Verify that the target returned SUCCESS → [FAILED] Target returned error") {
		t.Errorf("enriched summary = %q", got)
	}
	if got := by["GetLBAStatus.BeyondEol"].Summary(); !strings.Contains(got, "LBA_OUT_OF_RANGE(0x2100); passed when run again with -V (flaky?)") {
		t.Errorf("flaky summary = %q", got)
	}
	if got := by["OrWrite.BeyondEol"].Summary(); !strings.Contains(got, "(×3)") {
		t.Errorf("summary of a test absent from the detail run changed: %q", got)
	}
}

// FuzzParse checks that Parse never panics and that every result it returns
// names a suite and a test and has a valid status.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"console-basic.txt", "console-markers.txt", "console-verbose.txt", "results.xml"} {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("Suite: A\n  Test: B ...passed    [FAILED] x\n### END ALL.A rc=1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		run, err := Parse(data)
		if err != nil {
			return // malformed XML
		}
		for i := range run.Results {
			r := &run.Results[i]
			if r.Suite == "" || r.Test == "" || r.Status > NotRun {
				t.Fatalf("bad result %+v", r)
			}
			_ = r.Summary()
		}
		run.Enrich(run)
		run.Count(nil)
	})
}

func TestBaseline(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "console-markers.txt"))
	if err != nil {
		t.Fatal(err)
	}
	run, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(run.Passing(), ","), "Read10.Simple,Write10.Simple,iSCSIcmdsn.iSCSICmdSnTooHigh"; got != want {
		t.Errorf("Passing = %s, want %s", got, want)
	}
	keys, err := ParseKeys(strings.NewReader("# c\n\nRead10.Simple\nRead10.BeyondEol\nRead10.Gone\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(run.Regressed(keys), ","), "Read10.BeyondEol,Read10.Gone"; got != want {
		t.Errorf("Regressed = %s, want %s", got, want)
	}
	for _, bad := range []string{"Read10\n", "ALL.Read10.Simple\n", "Read10.Simple x\n"} {
		if _, err := ParseKeys(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseKeys(%q) accepted", bad)
		}
	}
}
