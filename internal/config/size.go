package config

import (
	"fmt"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Size is a number of bytes, written in YAML and flags as an integer or
// with a unit: B, KiB, MiB, GiB, TiB or K, M, G, T (all powers of 1024),
// e.g. 50MiB.
type Size int64

var sizeUnits = []struct {
	name  string
	shift uint
}{
	{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10},
	{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}, {"B", 0},
}

// ParseSize parses "50MiB", "1G", "4096" or "0".
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	shift := uint(0)
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(t, u.name); ok {
			t, shift = strings.TrimSpace(n), u.shift
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: use a whole number of bytes with an optional unit B, KiB, MiB, GiB, TiB (or K, M, G, T), e.g. 50MiB", s)
	}
	if shift > 0 && n > (1<<63-1)>>shift {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return Size(n << shift), nil
}

// String formats s with the largest binary unit that divides it exactly.
func (s Size) String() string {
	if s == 0 {
		return "0"
	}
	for _, u := range sizeUnits[:4] {
		if s > 0 && s%(1<<u.shift) == 0 {
			return strconv.FormatInt(int64(s)>>u.shift, 10) + u.name
		}
	}
	return strconv.FormatInt(int64(s), 10)
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: want a size such as 50MiB, got %s", n.Line, kindName(n))}}
	}
	v, err := ParseSize(n.Value)
	if err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %v", n.Line, err)}}
	}
	*s = v
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (s Size) MarshalYAML() (any, error) { return s.String(), nil }
