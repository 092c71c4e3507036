package volume

import (
	"strings"
	"testing"
)

// FuzzValidateInitiatorName checks that validation never panics, that
// accepted names are short enough and of a known type, and that case does
// not change the verdict.
func FuzzValidateInitiatorName(f *testing.F) {
	for _, s := range []string{"iqn.1993-08.org.debian:01:abc", "eui.02004567A425678D", "naa.52004567BA64678D",
		"iqn.2004-13.com.x", "host1", "iqn.2026-11.dev.stave", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := ValidateInitiatorName(s)
		if err == nil {
			l := strings.ToLower(s)
			if len(s) > MaxISCSINameLen || !(strings.HasPrefix(l, "iqn.") || strings.HasPrefix(l, "eui.") || strings.HasPrefix(l, "naa.")) {
				t.Fatalf("accepted %q", s)
			}
		}
		upper := strings.Map(func(r rune) rune {
			if 'a' <= r && r <= 'z' {
				return r - 'a' + 'A'
			}
			return r
		}, s)
		if (ValidateInitiatorName(upper) == nil) != (err == nil) {
			t.Fatalf("verdict on %q depends on case", s)
		}
		if err == nil && strings.ContainsFunc(s[:min(len(s), strings.IndexByte(s+":", ':'))], func(r rune) bool { return r > 0x7f }) {
			t.Fatalf("accepted non-ASCII before ':' in %q", s)
		}
	})
}

// FuzzValidateName checks that accepted volume names make valid target
// names that map back to the volume.
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"db", "a.b-c", "-x", "A", strings.Repeat("a", 64), ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidateName(s) != nil {
			return
		}
		if strings.ContainsAny(s, "/\x00") || s == "." || s == ".." || len(s) > 63 {
			t.Fatalf("accepted unsafe name %q", s)
		}
		v, ok := VolumeFromTarget(TargetName(s))
		if !ok || v != s {
			t.Fatalf("VolumeFromTarget(TargetName(%q)) = %q, %v", s, v, ok)
		}
	})
}

// FuzzParsePolicy checks that policy parsing never panics and that an
// accepted policy prints back to a string that parses to the same policy.
func FuzzParsePolicy(f *testing.F) {
	for _, s := range []string{"2+1", "4+2", "1+0", "0+1", "+", "2++1", "99999999999999999999+1", " 3+1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePolicy(s)
		if err != nil {
			return
		}
		if p.Data < 1 || p.Parity < 0 || p.Width() > MaxPolicyChunks {
			t.Fatalf("accepted %q as %+v", s, p)
		}
		q, err := ParsePolicy(p.String())
		if err != nil || q != p {
			t.Fatalf("%q → %v → %v, %v", s, p, q, err)
		}
	})
}
