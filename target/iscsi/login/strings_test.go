package login

import (
	"strings"
	"testing"
)

func TestStatusStrings(t *testing.T) {
	all := []Status{
		StatusSuccess, StatusTargetMovedTemporarily, StatusTargetMovedPermanently,
		StatusInitiatorError, StatusAuthenticationFailure, StatusAuthorizationFailure,
		StatusNotFound, StatusTargetRemoved, StatusUnsupportedVersion,
		StatusTooManyConnections, StatusMissingParameter, StatusCantIncludeInSession,
		StatusSessionTypeNotSupported, StatusSessionDoesNotExist, StatusInvalidDuringLogin,
		StatusTargetError, StatusServiceUnavailable, StatusOutOfResources,
	}
	seen := map[string]bool{}
	for _, s := range all {
		str := s.String()
		if strings.HasPrefix(str, "Status(") || seen[str] {
			t.Errorf("%#04x: %q", uint16(s), str)
		}
		seen[str] = true
		if uint16(s.Class())<<8|uint16(s.Detail()) != uint16(s) {
			t.Errorf("%v: class %d detail %d", s, s.Class(), s.Detail())
		}
	}
	if StatusAuthorizationFailure.Class() != 2 || StatusAuthorizationFailure.Detail() != 2 {
		t.Error("0x0202 class/detail")
	}
	if got := Status(0x02ff).String(); got != "Status(0x02ff)" {
		t.Errorf("unknown status %q", got)
	}
}

func TestEnumStrings(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{SecurityNegotiation.String(), "SecurityNegotiation"},
		{LoginOperationalNegotiation.String(), "LoginOperationalNegotiation"},
		{FullFeaturePhase.String(), "FullFeaturePhase"},
		{Stage(2).String(), "Stage(2)"},
		{SessionNormal.String(), "Normal"},
		{SessionDiscovery.String(), "Discovery"},
		{SessionType(7).String(), "SessionType(7)"},
		{DigestAllowed.String(), "Allowed"},
		{DigestDisabled.String(), "Disabled"},
		{DigestRequired.String(), "Required"},
		{DigestPolicy(9).String(), "DigestPolicy(9)"},
		{CHAPMD5.String(), "MD5"},
		{CHAPSHA1.String(), "SHA1"},
		{CHAPSHA256.String(), "SHA-256"},
		{CHAPSHA3256.String(), "SHA3-256"},
		{CHAPAlgorithm(1).String(), "CHAPAlgorithm(1)"},
		{chapWaitA.String(), "WaitA"},
		{chapWaitResponse.String(), "WaitResponse"},
		{chapDone.String(), "Done"},
		{chapPhase(9).String(), "chapPhase(9)"},
		{authUndecided.String(), "Undecided"},
		{authNone.String(), "None"},
		{authCHAP.String(), "CHAP"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	m := New(Config{})
	if m.Stage() != SecurityNegotiation || m.Done() || m.Failed() || m.Err() != nil {
		t.Error("fresh machine state")
	}
	if _, ok := m.Target(); ok {
		t.Error("fresh machine has a target")
	}
}
