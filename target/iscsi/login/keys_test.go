package login

import (
	"strings"
	"testing"
)

// TestKeyResults checks the answer and the resulting Params for every
// RFC 7143 §13 key, one key per login, in the operational stage of a
// normal (or discovery) session.
func TestKeyResults(t *testing.T) {
	type tc struct {
		key, value string
		lim        func(*Limits)
		discovery  bool
		answer     string // "" = no answer expected
		status     Status
		check      func(p Params) bool
	}
	cases := []tc{
		// HeaderDigest / DataDigest: list, first supported (§13.1).
		{key: "HeaderDigest", value: "CRC32C,None", answer: "CRC32C", check: func(p Params) bool { return p.HeaderDigest }},
		{key: "HeaderDigest", value: "None,CRC32C", answer: "None", check: func(p Params) bool { return !p.HeaderDigest }},
		{key: "HeaderDigest", value: "X-foo,CRC32C", answer: "CRC32C", check: func(p Params) bool { return p.HeaderDigest }},
		{key: "HeaderDigest", value: "MD5", answer: "Reject", check: func(p Params) bool { return !p.HeaderDigest }},
		{key: "HeaderDigest", value: "CRC32C,,None", answer: "Reject"},
		{key: "HeaderDigest", value: "CRC32C,None", lim: func(l *Limits) { l.HeaderDigest = DigestDisabled }, answer: "None",
			check: func(p Params) bool { return !p.HeaderDigest }},
		{key: "HeaderDigest", value: "CRC32C", lim: func(l *Limits) { l.HeaderDigest = DigestDisabled }, answer: "Reject"},
		{key: "HeaderDigest", value: "None,CRC32C", lim: func(l *Limits) { l.HeaderDigest = DigestRequired }, answer: "CRC32C",
			check: func(p Params) bool { return p.HeaderDigest }},
		{key: "HeaderDigest", value: "None", lim: func(l *Limits) { l.HeaderDigest = DigestRequired }, status: StatusInitiatorError},
		{key: "DataDigest", value: "CRC32C", answer: "CRC32C", check: func(p Params) bool { return p.DataDigest && !p.HeaderDigest }},
		{key: "DataDigest", value: "None", answer: "None", check: func(p Params) bool { return !p.DataDigest }},
		{key: "DataDigest", value: "CRC32C,None", discovery: true, answer: "CRC32C", check: func(p Params) bool { return p.DataDigest }},
		// MaxConnections: min 1..65535 (§13.2).
		{key: "MaxConnections", value: "8", answer: "1", check: func(p Params) bool { return p.MaxConnections == 1 }},
		{key: "MaxConnections", value: "8", lim: func(l *Limits) { l.MaxConnections = 4 }, answer: "4",
			check: func(p Params) bool { return p.MaxConnections == 4 }},
		{key: "MaxConnections", value: "2", lim: func(l *Limits) { l.MaxConnections = 4 }, answer: "2"},
		{key: "MaxConnections", value: "0", answer: "Reject", check: func(p Params) bool { return p.MaxConnections == 1 }},
		{key: "MaxConnections", value: "65536", answer: "Reject"},
		{key: "MaxConnections", value: "1", discovery: true, answer: "Irrelevant"},
		// InitialR2T: OR (§13.10).
		{key: "InitialR2T", value: "No", answer: "No", check: func(p Params) bool { return !p.InitialR2T }},
		{key: "InitialR2T", value: "Yes", answer: "Yes", check: func(p Params) bool { return p.InitialR2T }},
		{key: "InitialR2T", value: "No", lim: func(l *Limits) { l.InitialR2T = true }, answer: "Yes",
			check: func(p Params) bool { return p.InitialR2T }},
		{key: "InitialR2T", value: "yes", answer: "Reject", check: func(p Params) bool { return p.InitialR2T }},
		{key: "InitialR2T", value: "No", discovery: true, answer: "Irrelevant", check: func(p Params) bool { return p.InitialR2T }},
		// ImmediateData: AND (§13.11).
		{key: "ImmediateData", value: "Yes", answer: "Yes", check: func(p Params) bool { return p.ImmediateData }},
		{key: "ImmediateData", value: "No", answer: "No", check: func(p Params) bool { return !p.ImmediateData }},
		{key: "ImmediateData", value: "Yes", lim: func(l *Limits) { l.DisableImmediateData = true }, answer: "No",
			check: func(p Params) bool { return !p.ImmediateData }},
		{key: "ImmediateData", value: "Maybe", answer: "Reject", check: func(p Params) bool { return p.ImmediateData }},
		{key: "ImmediateData", value: "Yes", discovery: true, answer: "Irrelevant"},
		// MaxRecvDataSegmentLength: declarative 512..2^24-1 (§13.12).
		{key: "MaxRecvDataSegmentLength", value: "65536", check: func(p Params) bool {
			return p.InitiatorMaxRecvDataSegmentLength == 65536 && p.TargetMaxRecvDataSegmentLength == 262144
		}},
		{key: "MaxRecvDataSegmentLength", value: "0x200", check: func(p Params) bool { return p.InitiatorMaxRecvDataSegmentLength == 512 }},
		{key: "MaxRecvDataSegmentLength", value: "16777215", check: func(p Params) bool { return p.InitiatorMaxRecvDataSegmentLength == 16777215 }},
		{key: "MaxRecvDataSegmentLength", value: "8192", lim: func(l *Limits) { l.MaxRecvDataSegmentLength = 1 << 20 },
			check: func(p Params) bool { return p.TargetMaxRecvDataSegmentLength == 1<<20 }},
		{key: "MaxRecvDataSegmentLength", value: "511", status: StatusInitiatorError},
		{key: "MaxRecvDataSegmentLength", value: "abc", status: StatusInitiatorError},
		// MaxBurstLength: min 512..2^24-1 (§13.13).
		{key: "MaxBurstLength", value: "16776192", answer: "1048576", check: func(p Params) bool { return p.MaxBurstLength == 1048576 }},
		{key: "MaxBurstLength", value: "65536", answer: "65536", check: func(p Params) bool {
			return p.MaxBurstLength == 65536 && p.FirstBurstLength == 65536
		}},
		{key: "MaxBurstLength", value: "0x40000", answer: "262144"},
		{key: "MaxBurstLength", value: "16776192", lim: func(l *Limits) { l.MaxBurstLength = 1<<24 - 1 }, answer: "16776192"},
		{key: "MaxBurstLength", value: "511", answer: "Reject", check: func(p Params) bool { return p.MaxBurstLength == 262144 }},
		{key: "MaxBurstLength", value: "16777216", answer: "Reject"},
		{key: "MaxBurstLength", value: "-1", answer: "Reject"},
		{key: "MaxBurstLength", value: "262144", discovery: true, answer: "Irrelevant"},
		// FirstBurstLength: min, at most MaxBurstLength (§13.14).
		{key: "FirstBurstLength", value: "1048576", answer: "262144", check: func(p Params) bool { return p.FirstBurstLength == 262144 }},
		{key: "FirstBurstLength", value: "8192", answer: "8192", check: func(p Params) bool { return p.FirstBurstLength == 8192 }},
		{key: "FirstBurstLength", value: "100", answer: "Reject", check: func(p Params) bool { return p.FirstBurstLength == 65536 }},
		{key: "FirstBurstLength", value: "1048576", lim: func(l *Limits) { l.MaxBurstLength = 131072; l.FirstBurstLength = 131072 },
			answer: "131072"},
		{key: "FirstBurstLength", value: "65536", discovery: true, answer: "Irrelevant"},
		// DefaultTime2Wait: max 0..3600 (§13.15).
		{key: "DefaultTime2Wait", value: "0", answer: "2", check: func(p Params) bool { return p.DefaultTime2Wait == 2 }},
		{key: "DefaultTime2Wait", value: "10", answer: "10", check: func(p Params) bool { return p.DefaultTime2Wait == 10 }},
		{key: "DefaultTime2Wait", value: "3601", answer: "Reject"},
		{key: "DefaultTime2Wait", value: "5", discovery: true, answer: "5"},
		// DefaultTime2Retain: min 0..3600 (§13.16).
		{key: "DefaultTime2Retain", value: "0", answer: "0", check: func(p Params) bool { return p.DefaultTime2Retain == 0 }},
		{key: "DefaultTime2Retain", value: "3600", answer: "20", check: func(p Params) bool { return p.DefaultTime2Retain == 20 }},
		{key: "DefaultTime2Retain", value: "99999", answer: "Reject"},
		// MaxOutstandingR2T: min 1..65535 (§13.17).
		{key: "MaxOutstandingR2T", value: "1", answer: "1", check: func(p Params) bool { return p.MaxOutstandingR2T == 1 }},
		{key: "MaxOutstandingR2T", value: "64", answer: "8", check: func(p Params) bool { return p.MaxOutstandingR2T == 8 }},
		{key: "MaxOutstandingR2T", value: "0", answer: "Reject"},
		{key: "MaxOutstandingR2T", value: "4", discovery: true, answer: "Irrelevant"},
		// DataPDUInOrder / DataSequenceInOrder: OR, the target wants Yes (§13.18-19).
		{key: "DataPDUInOrder", value: "No", answer: "Yes", check: func(p Params) bool { return p.DataPDUInOrder }},
		{key: "DataPDUInOrder", value: "Yes", answer: "Yes"},
		{key: "DataSequenceInOrder", value: "No", answer: "Yes", check: func(p Params) bool { return p.DataSequenceInOrder }},
		{key: "DataSequenceInOrder", value: "1", answer: "Reject"},
		{key: "DataSequenceInOrder", value: "No", discovery: true, answer: "Irrelevant"},
		// ErrorRecoveryLevel: min 0..2 (§13.20).
		{key: "ErrorRecoveryLevel", value: "2", answer: "0", check: func(p Params) bool { return p.ErrorRecoveryLevel == 0 }},
		{key: "ErrorRecoveryLevel", value: "2", lim: func(l *Limits) { l.ErrorRecoveryLevel = 1 }, answer: "1",
			check: func(p Params) bool { return p.ErrorRecoveryLevel == 1 }},
		{key: "ErrorRecoveryLevel", value: "3", answer: "Reject"},
		{key: "ErrorRecoveryLevel", value: "0", discovery: true, answer: "0"},
		// Obsolete marker keys (§13.25).
		{key: "IFMarker", value: "No", answer: "Reject"},
		{key: "OFMarker", value: "Yes", answer: "Reject"},
		{key: "IFMarkInt", value: "2048~8192", answer: "Reject"},
		{key: "OFMarkInt", value: "2048", answer: "Reject"},
		// TaskReporter (§13.23).
		{key: "TaskReporter", value: "ResponseFence,RFC3720", answer: "RFC3720"},
		{key: "TaskReporter", value: "FastAbort", answer: "Reject"},
		{key: "TaskReporter", value: "RFC3720", discovery: true, answer: "Irrelevant"},
		// iSCSIProtocolLevel (RFC 7144).
		{key: "iSCSIProtocolLevel", value: "2", answer: "1"},
		{key: "iSCSIProtocolLevel", value: "0", answer: "0"},
		{key: "iSCSIProtocolLevel", value: "32", answer: "Reject"},
		// iSER keys (RFC 7145).
		{key: "RDMAExtensions", value: "Yes", answer: "No"},
		{key: "RDMAExtensions", value: "No", answer: "No"},
		{key: "RDMAExtensions", value: "Sure", answer: "Reject"},
		{key: "TargetRecvDataSegmentLength", value: "8192", answer: "Irrelevant"},
		{key: "InitiatorRecvDataSegmentLength", value: "8192", answer: "Irrelevant"},
		{key: "MaxOutstandingUnexpectedPDUs", value: "0", answer: "Irrelevant"},
		// Private and unknown keys (§13.5.4-5, §6.2).
		{key: "X-com.example.Foo", value: "bar", answer: "NotUnderstood"},
		{key: "X#com.example.Foo", value: "bar", answer: "NotUnderstood"},
		{key: "FutureKey", value: "1", answer: "NotUnderstood"},
		{key: "X-com.example.Foo", value: "bar", discovery: true, answer: "NotUnderstood"},
		// Declarative keys with no answer.
		{key: "InitiatorAlias", value: "Web Server 4", check: func(p Params) bool { return p.InitiatorAlias == "Web Server 4" }},
	}
	for _, c := range cases {
		name := c.key + "=" + c.value
		if c.discovery {
			name += "/discovery"
		}
		t.Run(name, func(t *testing.T) {
			cfg := Config{Targets: testTargets()}
			if c.lim != nil {
				c.lim(&cfg.Limits)
			}
			m := New(cfg)
			kvs := []KeyValue{{keyInitiatorName, "iqn.1994-05.com.redhat:x"}}
			if c.discovery {
				kvs = append(kvs, KeyValue{keySessionType, valDiscovery})
			} else {
				kvs = append(kvs, KeyValue{keyTargetName, tgtOpen})
			}
			kvs = append(kvs, KeyValue{c.key, c.value})
			resp := m.Step(Request{Transit: true, CSG: LoginOperationalNegotiation, NSG: FullFeaturePhase,
				Data: AppendText(nil, kvs...)})
			if resp.Status != c.status {
				t.Fatalf("status %v, want %v (%v)", resp.Status, c.status, m.Err())
			}
			if c.status != StatusSuccess {
				if !m.Failed() || m.Done() {
					t.Fatalf("failed=%v done=%v", m.Failed(), m.Done())
				}
				return
			}
			if !m.Done() || !resp.Transit || resp.NSG != FullFeaturePhase {
				t.Fatalf("done=%v transit=%v nsg=%v", m.Done(), resp.Transit, resp.NSG)
			}
			got, err := ParseText(resp.Data)
			if err != nil {
				t.Fatal(err)
			}
			var answer string
			var found bool
			for _, kv := range got {
				if kv.Key == c.key {
					answer, found = kv.Value, true
				}
			}
			// MaxRecvDataSegmentLength in the response is the target's
			// own declaration, not an answer.
			if c.key == keyMaxRecvDSL {
				answer, found = "", false
			}
			switch {
			case c.answer == "" && found:
				t.Fatalf("unexpected answer %s=%s", c.key, answer)
			case c.answer != "" && !found:
				t.Fatalf("no answer for %s in %q", c.key, strings.ReplaceAll(string(resp.Data), "\x00", " "))
			case answer != c.answer:
				t.Fatalf("answer %s=%s, want %s", c.key, answer, c.answer)
			}
			if c.check != nil && !c.check(m.Params()) {
				t.Fatalf("params check failed: %+v", m.Params())
			}
		})
	}
}

// TestResultFunctions covers the result functions directly.
func TestResultFunctions(t *testing.T) {
	for _, c := range []struct {
		offer         string
		ours, lo, hi  uint64
		wantMin, wMax uint64
		ok            bool
	}{
		{"10", 5, 0, 100, 5, 10, true},
		{"3", 5, 0, 100, 3, 5, true},
		{"0x10", 5, 0, 100, 5, 16, true},
		{"0X0a", 5, 0, 100, 5, 10, true},
		{"101", 5, 0, 100, 0, 0, false},
		{"", 5, 0, 100, 0, 0, false},
		{"1e3", 5, 0, 2000, 0, 0, false},
		{"+5", 5, 0, 100, 0, 0, false},
		{"0x", 5, 0, 100, 0, 0, false},
		{"18446744073709551616", 5, 0, 1 << 63, 0, 0, false},
	} {
		gotMin, ok1 := resultMin(c.offer, c.ours, c.lo, c.hi)
		gotMax, ok2 := resultMax(c.offer, c.ours, c.lo, c.hi)
		if ok1 != c.ok || ok2 != c.ok || (c.ok && (gotMin != c.wantMin || gotMax != c.wMax)) {
			t.Errorf("%q ours=%d: min=%d,%v max=%d,%v", c.offer, c.ours, gotMin, ok1, gotMax, ok2)
		}
	}
	for _, c := range []struct {
		offer           string
		ours            bool
		wantOr, wantAnd bool
		ok              bool
	}{
		{"Yes", false, true, false, true},
		{"No", false, false, false, true},
		{"Yes", true, true, true, true},
		{"No", true, true, false, true},
		{"YES", true, false, false, false},
		{"", true, false, false, false},
	} {
		or, ok1 := resultOr(c.offer, c.ours)
		and, ok2 := resultAnd(c.offer, c.ours)
		if ok1 != c.ok || ok2 != c.ok || (c.ok && (or != c.wantOr || and != c.wantAnd)) {
			t.Errorf("%q ours=%v: or=%v,%v and=%v,%v", c.offer, c.ours, or, ok1, and, ok2)
		}
	}
	sup := func(s string) bool { return s == "B" || s == "C" }
	for _, c := range []struct {
		offer, want string
		ok          bool
	}{
		{"A,B,C", "B", true},
		{"C,B", "C", true},
		{"A", "", false},
		{"A,,B", "", false},
		{"", "", false},
	} {
		got, ok := resultList(c.offer, sup)
		if ok != c.ok || got != c.want {
			t.Errorf("list %q: %q,%v", c.offer, got, ok)
		}
	}
}
