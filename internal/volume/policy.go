package volume

import (
	"fmt"
	"strconv"
	"strings"
)

// MaxPolicyChunks bounds k+m of a policy: one chunk per device of a stripe.
const MaxPolicyChunks = 32

// Policy is a pool volume's erasure-coding policy: each stripe holds Data
// chunks of blocks and Parity chunks computed from them, on Data+Parity
// distinct devices; it survives the loss of Parity devices.
type Policy struct {
	Data, Parity int
}

// String returns "k+m", e.g. "2+1".
func (p Policy) String() string { return strconv.Itoa(p.Data) + "+" + strconv.Itoa(p.Parity) }

// Width is the number of devices one stripe spans, Data+Parity.
func (p Policy) Width() int { return p.Data + p.Parity }

// ParsePolicy parses "k+m" (e.g. "2+1", "4+2", "1+0"). Errors wrap
// ErrInvalid.
func ParsePolicy(s string) (Policy, error) {
	bad := func(why string) (Policy, error) {
		return Policy{}, fmt.Errorf("%w: policy %q: %s: write DATA+PARITY, e.g. 2+1 (3 devices, survives one failure) or 4+2 (6 devices, survives two)",
			ErrInvalid, s, why)
	}
	ks, ms, ok := strings.Cut(strings.TrimSpace(s), "+")
	if !ok {
		return bad("no '+'")
	}
	k, err1 := strconv.Atoi(ks)
	m, err2 := strconv.Atoi(ms)
	if err1 != nil || err2 != nil || strings.HasPrefix(ks, "+") || strings.HasPrefix(ms, "+") {
		return bad("not two whole numbers")
	}
	if k < 1 || m < 0 {
		return bad("need at least 1 data chunk and 0 or more parity chunks")
	}
	if k > MaxPolicyChunks || m > MaxPolicyChunks || k+m > MaxPolicyChunks {
		return bad(fmt.Sprintf("more than %d chunks", MaxPolicyChunks))
	}
	return Policy{Data: k, Parity: m}, nil
}

// ValidateSnapshotName checks a snapshot name: the same rules as a volume
// name (1 to 63 characters of a-z, 0-9, '.' and '-', starting with a
// letter or digit), so that VOLUME@SNAPSHOT is unambiguous.
func ValidateSnapshotName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: snapshot name %q: use 1 to 63 characters from a-z, 0-9, '.' and '-', starting with a letter or digit",
			ErrInvalid, name)
	}
	return nil
}

// ParseSnapshotRef splits "VOLUME@SNAPSHOT" and validates both names.
// Errors wrap ErrInvalid.
func ParseSnapshotRef(ref string) (vol, snap string, err error) {
	vol, snap, ok := strings.Cut(ref, "@")
	if !ok {
		return "", "", fmt.Errorf("%w: %q is not a snapshot reference: write VOLUME@SNAPSHOT, e.g. db@nightly", ErrInvalid, ref)
	}
	if err := ValidateName(vol); err != nil {
		return "", "", err
	}
	if err := ValidateSnapshotName(snap); err != nil {
		return "", "", err
	}
	return vol, snap, nil
}
