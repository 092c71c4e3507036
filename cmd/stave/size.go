package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// sizeUnit returns the multiplier of an accepted unit (any case). K, M, G
// and T are powers of 1024 like KiB, MiB, GiB and TiB (and Kubernetes'
// Ki, Mi, Gi, Ti). NB: KB, MB, GB and TB are refused: some tools read
// them as powers of 1000, others as powers of 1024.
func sizeUnit(u string) (int64, bool) {
	switch strings.ToLower(u) {
	case "", "b":
		return 1, true
	case "k", "kib", "ki":
		return 1 << 10, true
	case "m", "mib", "mi":
		return 1 << 20, true
	case "g", "gib", "gi":
		return 1 << 30, true
	case "t", "tib", "ti":
		return 1 << 40, true
	}
	return 0, false
}

// binaryFor returns the binary unit that a refused decimal-looking unit
// (KB, MB, GB, TB) probably means, for the error message.
func binaryFor(u string) (string, bool) {
	switch strings.ToUpper(u) {
	case "KB", "MB", "GB", "TB":
		return strings.ToUpper(u[:1]) + "iB", true
	}
	return "", false
}

const acceptedUnits = "B, KiB, MiB, GiB, TiB, or K, M, G, T (powers of 1024)"

// parseSize parses a whole number of bytes with an optional unit, e.g.
// "1GiB", "512M", "4096".
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("bad size %q: give a whole number with a unit, e.g. 1GiB or 512MiB", s)
	}
	unit := strings.TrimSpace(t[i:])
	if strings.HasPrefix(unit, ".") || strings.HasPrefix(unit, ",") {
		return 0, fmt.Errorf("bad size %q: give a whole number with a unit, e.g. 1536MiB rather than 1.5GiB", s)
	}
	mul, ok := sizeUnit(unit)
	if !ok {
		if d, ok := binaryFor(unit); ok {
			return 0, fmt.Errorf("bad size %q: unknown unit %q: use %s; %s is ambiguous (powers of 1000 or 1024?): write %s%s, or the number of bytes",
				s, unit, acceptedUnits, unit, t[:i], d)
		}
		return 0, fmt.Errorf("bad size %q: unknown unit %q: use %s", s, unit, acceptedUnits)
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil || n > math.MaxInt64/mul {
		return 0, fmt.Errorf("bad size %q: too large", s)
	}
	return n * mul, nil
}

// formatSize renders n bytes with the largest binary unit that divides it
// to one decimal place, e.g. "1 GiB", "1.5 MiB", "512 B".
func formatSize(n int64) string {
	units := []struct {
		name string
		v    int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}
	for _, u := range units {
		if n >= u.v {
			if n%u.v == 0 {
				return fmt.Sprintf("%d %s", n/u.v, u.name)
			}
			return fmt.Sprintf("%.1f %s", float64(n)/float64(u.v), u.name)
		}
	}
	return fmt.Sprintf("%d B", n)
}
