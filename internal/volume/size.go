package volume

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ParseSize parses a whole number of bytes with an optional unit: B, KiB,
// MiB, GiB, TiB, or K, M, G, T (all powers of 1024), e.g. "2GiB". KB, MB,
// GB and TB are refused as ambiguous. Errors wrap ErrInvalid and say
// what to write instead.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("%w: bad size %q: give a whole number with a unit, e.g. 2GiB or 512MiB", ErrInvalid, s)
	}
	unit := strings.TrimSpace(t[i:])
	var mul int64
	switch strings.ToLower(unit) {
	case "", "b":
		mul = 1
	case "k", "kib", "ki":
		mul = 1 << 10
	case "m", "mib", "mi":
		mul = 1 << 20
	case "g", "gib", "gi":
		mul = 1 << 30
	case "t", "tib", "ti":
		mul = 1 << 40
	case "kb", "mb", "gb", "tb":
		return 0, fmt.Errorf("%w: bad size %q: %s is ambiguous (powers of 1000 or 1024?): write %s%siB, or the number of bytes",
			ErrInvalid, s, unit, t[:i], strings.ToUpper(unit[:1]))
	default:
		return 0, fmt.Errorf("%w: bad size %q: unknown unit %q: use B, KiB, MiB, GiB, TiB, or K, M, G, T (powers of 1024)", ErrInvalid, s, unit)
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil || n > math.MaxInt64/mul {
		return 0, fmt.Errorf("%w: bad size %q: too large", ErrInvalid, s)
	}
	return n * mul, nil
}
