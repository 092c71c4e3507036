package volume

import (
	"fmt"
	"regexp"
	"strings"
)

// IQNPrefix is the prefix of every Stave target name; the volume name
// follows it (DESIGN.md: one target per volume, LUN 0).
const IQNPrefix = "iqn.2026-11.dev.stave:"

// TargetName returns the iSCSI target name that exports the volume.
func TargetName(volume string) string { return IQNPrefix + volume }

// VolumeFromTarget returns the volume name in a Stave target name, and
// false when name is not one.
func VolumeFromTarget(name string) (string, bool) {
	v, ok := strings.CutPrefix(name, IQNPrefix)
	if !ok || ValidateName(v) != nil {
		return "", false
	}
	return v, true
}

var (
	nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,62}$`)
	// RFC 7143 §4.2.7.4: iqn.<yyyy-mm>.<reversed domain>[:<identifier>], where
	// RFC 3720 §3.2.6.2 allows, of ASCII, only '-', '.', ':', letters and digits.
	iqnRE = regexp.MustCompile(`^iqn\.[0-9]{4}-(0[1-9]|1[0-2])\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[a-z0-9.:\x{80}-\x{10FFFF}-]+)?$`)
	// RFC 7143 §4.2.7.5: eui.<16 hex digits> (EUI-64).
	euiRE = regexp.MustCompile(`^eui\.[0-9a-f]{16}$`)
	// RFC 7143 §4.2.7.6 (RFC 3980): naa.<16 or 32 hex digits>.
	naaRE = regexp.MustCompile(`^naa\.([0-9a-f]{16}|[0-9a-f]{32})$`)
)

// MaxISCSINameLen is the longest iSCSI name in bytes (RFC 7143 §4.2.7.1).
const MaxISCSINameLen = 223

// ValidateName checks a volume name: 1 to 63 characters of a-z, 0-9, '.'
// and '-', starting with a letter or digit, so that it is safe in a
// directory name and in an IQN.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: volume name %q: use 1 to 63 characters from a-z, 0-9, '.' and '-', starting with a letter or digit",
			ErrInvalid, name)
	}
	return nil
}

// ValidateInitiatorName checks an iSCSI initiator name as used in ACLs:
// iqn.YYYY-MM.reversed.domain[:anything], eui.<16 hex> or naa.<16 or 32
// hex> (RFC 7143 §4.2.7). Names compare case-insensitively, as iSCSI names
// are normalised to lower case (RFC 3722).
func ValidateInitiatorName(name string) error {
	// Lower only ASCII: strings.ToLower would turn e.g. the Kelvin sign
	// into 'k' and let it pass as a domain label.
	l := strings.Map(func(r rune) rune {
		if 'A' <= r && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}, name)
	ok := len(name) <= MaxISCSINameLen &&
		(iqnRE.MatchString(l) || euiRE.MatchString(l) || naaRE.MatchString(l))
	if !ok {
		return fmt.Errorf("%w: initiator name %q: use iqn.YYYY-MM.reversed.domain[:identifier] "+
			"(e.g. iqn.1993-08.org.debian:01:abcdef), eui.<16 hex digits> or naa.<16 or 32 hex digits>",
			ErrInvalid, name)
	}
	return nil
}

// CHAP secret length limits in bytes. RFC 7143 §12.1.3 recommends at least
// 12 bytes (96 bits) for a secret; Microsoft's initiator requires 12 to 16.
const (
	MinCHAPSecret = 12
	MaxCHAPSecret = 255
)

// ValidateCHAP checks one CHAP user name and secret; what names them in
// the error ("CHAP", "mutual CHAP", "discovery CHAP"). The user name must
// be non-empty and the secret MinCHAPSecret to MaxCHAPSecret bytes.
func ValidateCHAP(what, user, secret string) error {
	if user == "" {
		return fmt.Errorf("%w: %s user name is empty: give USER:SECRET", ErrInvalid, what)
	}
	if strings.ContainsFunc(user, isControl) || strings.ContainsFunc(secret, isControl) {
		return fmt.Errorf("%w: %s user name and secret must not contain control characters (NUL, tab, line breaks, DEL)", ErrInvalid, what)
	}
	if len(user) > MaxCHAPSecret {
		return fmt.Errorf("%w: %s user name is %d bytes: use at most %d (RFC 7143 §6.1 caps a key value at 255 bytes)", ErrInvalid, what, len(user), MaxCHAPSecret)
	}
	if n := len(secret); n < MinCHAPSecret || n > MaxCHAPSecret {
		return fmt.Errorf("%w: %s secret is %d characters: use %d to %d (RFC 7143 recommends at least 12; Windows initiators need 12 to 16)",
			ErrInvalid, what, n, MinCHAPSecret, MaxCHAPSecret)
	}
	return nil
}

// isControl reports an ASCII control character.
func isControl(r rune) bool { return r < 0x20 || r == 0x7f }
