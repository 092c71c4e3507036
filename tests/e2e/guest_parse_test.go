package e2e

import (
	"strings"
	"testing"
)

// TestParseGuestConsole checks the console parser and the step checker on
// a captured-style log: markers after serial-console junk, dmesg lines that
// look like markers, failures, values and deviations. It needs no guest.
func TestParseGuestConsole(t *testing.T) {
	const console = "SeaBIOS\r\n" +
		"\x1b[2JSTAVE-GUEST boot 6.1.0-56-amd64\n" +
		"STAVE-GUEST ready t=4.25\n" +
		"STAVE-VALUE initiator iqn.2026-11.dev.stave.test:guest\n" +
		"STAVE-RUN a: true\n" +
		"STAVE-STEP a ok t=5.10\r\n" +
		"STAVE-STEP b FAIL rc=1 t=6.00\n" +
		"STAVE-STEP c ok rc=24 t=7.25\n" +
		"STAVE-VALUE pattern-sha256 abc def\n" +
		"STAVE-GUEST script rc=0\n" +
		"STAVE-DMESG begin\n" +
		"[ 1.0] STAVE-STEP d ok t=1\n" +
		"STAVE-DMESG end\n" +
		"STAVE-GUEST done\n"
	run := parseGuestConsole(console)
	if !run.ready || !run.done || run.scriptRC != 0 || run.readyAt != 4.25 {
		t.Fatalf("ready=%v at %v done=%v rc=%d", run.ready, run.readyAt, run.done, run.scriptRC)
	}
	if len(run.steps) != 3 {
		t.Fatalf("steps = %+v, want a, b, c (d is inside dmesg)", run.steps)
	}
	if s := run.steps[2]; s.name != "c" || !s.ok || s.at != 7.25 {
		t.Errorf("step c = %+v", s)
	}
	if s := run.steps[1]; s.name != "b" || s.ok {
		t.Errorf("step b = %+v", s)
	}
	if got := run.values["pattern-sha256"]; got != "abc def" {
		t.Errorf("pattern-sha256 = %q", got)
	}
	if got := run.values["initiator"]; got != guestInitiatorIQN {
		t.Errorf("initiator = %q", got)
	}

	tests := []struct {
		name       string
		want       []string
		deviations map[string]string
		problems   []string // substrings, one per problem
	}{
		{"all reported", []string{"a", "b", "c"}, nil, []string{"step b: STAVE-STEP b FAIL"}},
		{"deviation", []string{"a", "b", "c"}, map[string]string{"b": "known"}, nil},
		{"missing", []string{"a", "b", "c", "e"}, map[string]string{"b": "known"}, []string{"step e: not reported"}},
		{"unexpected", []string{"a", "b"}, map[string]string{"b": "known"}, []string{"step c: not expected"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := checkGuestSteps(run, tt.want, tt.deviations)
			if len(got) != len(tt.problems) {
				t.Fatalf("problems = %q, want %q", got, tt.problems)
			}
			for i := range got {
				if !strings.Contains(got[i], tt.problems[i]) {
					t.Errorf("problem %d = %q, want it to contain %q", i, got[i], tt.problems[i])
				}
			}
		})
	}

	if p := checkGuestSteps(parseGuestConsole(console+"STAVE-STEP a ok\n"), []string{"a", "b", "c"}, map[string]string{"b": "x"}); len(p) != 1 || !strings.Contains(p[0], "twice") {
		t.Errorf("duplicate step: problems = %q", p)
	}
}
