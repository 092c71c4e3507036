package main

import (
	"bytes"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseSize checks that parseSize never panics, that what it accepts
// is non-negative, and that a number with each unit parses to number ×
// unit.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"1GiB", "512", "4k", "1.5G", "", "GB", "99999999999999999999T", " 7 MiB "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseSize(s)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("parseSize(%q) = %d", s, n)
		}
		for _, u := range []string{"B", "KiB", "MiB", "GiB", "TiB", "k", "M", "g", "T"} {
			mul, _ := sizeUnit(u)
			m, err := parseSize(strconv.FormatInt(n, 10) + u)
			if n > 0 && mul > 0 && n <= (1<<62)/mul {
				if err != nil || m != n*mul {
					t.Fatalf("parseSize(%d%s) = %d, %v; want %d", n, u, m, err, n*mul)
				}
			}
		}
	})
}

// FuzzReorderArgs checks that reorderArgs never panics and only permutes
// its input, keeping the program name first.
func FuzzReorderArgs(f *testing.F) {
	for _, s := range []string{
		"volume create db --size 1GiB --allow a",
		"--api unix:/x volume show db -o json",
		"serve --portal a:1 --advertise b:2",
		"volume delete -- --x",
		"volume create --size",
	} {
		f.Add(s)
	}
	app := newApp(&bytes.Buffer{}, &bytes.Buffer{})
	f.Fuzz(func(t *testing.T, s string) {
		args := append([]string{"stave"}, strings.Fields(s)...)
		got := reorderArgs(app, slices.Clone(args))
		if len(got) != len(args) || got[0] != "stave" {
			t.Fatalf("reorderArgs(%q) = %q", args, got)
		}
		a, g := slices.Clone(args), slices.Clone(got)
		slices.Sort(a)
		slices.Sort(g)
		if !slices.Equal(a, g) {
			t.Fatalf("reorderArgs(%q) = %q: not a permutation", args, got)
		}
	})
}
