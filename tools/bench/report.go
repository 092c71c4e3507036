package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"time"
)

// Markers around the generated section of docs/benchmarks.md; the text
// outside them is kept as it is.
const (
	beginMarker = "<!-- bench:begin -->"
	endMarker   = "<!-- bench:end -->"
)

// gib is the unit of the CPU cost figures.
const gib = 1 << 30

// Sample is one run of one cell against one target.
type Sample struct {
	Target string  // Target.Key
	Cell   string  // Cell.Name
	Run    int     // 1-based
	IOPS   float64 // completed I/Os per second
	Bytes  float64 // bytes moved
	CPU    float64 // CPU seconds (user+system) the target's daemon used during the run
	Err    string  // non-empty: the run failed and the figures are zero
	// Stalled says the client was killed at its time limit.
	Stalled bool `json:",omitempty"`
}

// TargetInfo names a target in the report.
type TargetInfo struct {
	Key, Title, Version string
	// Failed, when set, says why the target was not measured at all.
	Failed string
}

// Machine describes where the benchmark ran.
type Machine struct {
	CPUs         int
	CPUModel     string
	Kernel       string
	MemTotal     string
	LoadAtStart  string // /proc/loadavg, first three fields
	LoadAtEnd    string
	ClientTools  string // versions of iscsi-perf and qemu-img
	Go           string
	Start, Until time.Time
}

// Report is everything the generated section shows.
type Report struct {
	Command string
	Machine Machine
	Runs    int
	RunTime time.Duration
	Size    int64
	Fill    string
	Targets []TargetInfo
	Cells   []Cell
	Samples []Sample
	Notes   []string
}

// Stats is min, median and max of one series.
type Stats struct {
	N                 int
	Min, Median, Max  float64
	Failed            int    // runs that failed
	FirstErr          string // the first failure's message
	CPUPerGiBMedian   float64
	CPUPerGiBMeasured bool
}

// median returns the median of v (mean of the middle two for even n).
func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return math.NaN()
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// series returns the statistics of the samples of cell on target, with
// value mapping a sample to the reported figure.
func (r *Report) series(target, cell string, value func(Sample) float64) Stats {
	var st Stats
	var vals, cpu []float64
	for _, s := range r.Samples {
		if s.Target != target || s.Cell != cell {
			continue
		}
		if s.Err != "" {
			st.Failed++
			if st.FirstErr == "" {
				st.FirstErr = s.Err
			}
			continue
		}
		vals = append(vals, value(s))
		if s.Bytes > 0 {
			cpu = append(cpu, s.CPU/(s.Bytes/gib))
		}
	}
	st.N = len(vals)
	if st.N > 0 {
		st.Min, st.Max = slices.Min(vals), slices.Max(vals)
		st.Median = median(vals)
	}
	if len(cpu) > 0 {
		st.CPUPerGiBMedian = median(cpu)
		st.CPUPerGiBMeasured = true
	}
	return st
}

// rate maps a sample to the cell's figure: IOPS or MiB/s.
func rate(c Cell) func(Sample) float64 {
	if c.IOPS {
		return func(s Sample) float64 { return s.IOPS }
	}
	return func(s Sample) float64 { return s.IOPS * float64(c.BlockSize) / (1 << 20) }
}

// latencyMicros maps a QD1 sample to its mean latency, 1/IOPS.
func latencyMicros(s Sample) float64 {
	if s.IOPS <= 0 {
		return math.Inf(1)
	}
	return 1e6 / s.IOPS
}

// num formats a figure compactly: 21.8k, 950, 12.5.
func num(v float64) string {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return "–"
	case v >= 10000:
		return fmt.Sprintf("%.1fk", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// cellText renders one target's figure: "median (min–max)" or why not.
func cellText(st Stats) string {
	if st.N == 0 {
		if st.Failed == 0 {
			return "–"
		}
		return "failed: " + shortErr(st.FirstErr)
	}
	s := num(st.Median)
	if st.N > 1 {
		s += fmt.Sprintf(" (%s–%s)", num(st.Min), num(st.Max))
	}
	if st.Failed > 0 {
		s += fmt.Sprintf(", %d failed", st.Failed)
	}
	return s
}

// shortErr trims an error message for a table cell.
func shortErr(s string) string {
	s = strings.ReplaceAll(s, "|", "/")
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 90 {
		s = s[:87] + "…"
	}
	return s
}

func ratio(a, b Stats) string {
	if a.N == 0 || b.N == 0 || b.Median == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", a.Median/b.Median)
}

func cpuText(st Stats) string {
	if !st.CPUPerGiBMeasured {
		return "–"
	}
	return fmt.Sprintf("%.2f", st.CPUPerGiBMedian)
}

// Markdown renders the generated section (without the markers).
func (r *Report) Markdown() string {
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "## Results\n\n")
	fmt.Fprintf(&b, "Command: `%s`. Runs per cell and target: %d of %v; the targets take turns run by run "+
		"(only one is under load at a time). LU size %s, backing files filled first (%s).\n\n",
		r.Command, r.Runs, r.RunTime, sizeText(r.Size), r.Fill)
	fmt.Fprintf(&b, "| | |\n| --- | --- |\n")
	fmt.Fprintf(&b, "| date | %s – %s |\n", m.Start.UTC().Format("2006-01-02 15:04"), m.Until.UTC().Format("15:04 UTC"))
	fmt.Fprintf(&b, "| machine | %d × %s, %s RAM, Linux %s |\n", m.CPUs, m.CPUModel, m.MemTotal, m.Kernel)
	fmt.Fprintf(&b, "| load average (1, 5, 15 min) | %s at start, %s at end |\n", m.LoadAtStart, m.LoadAtEnd)
	for _, t := range r.Targets {
		fmt.Fprintf(&b, "| %s | %s |\n", t.Title, t.Version)
	}
	fmt.Fprintf(&b, "| clients | %s |\n", m.ClientTools)
	fmt.Fprintf(&b, "| Go | %s |\n\n", m.Go)

	if len(r.Targets) == 0 {
		b.WriteString("No target was measured.\n")
		return b.String()
	}
	// The table compares the first target with the second (Stave, tgt).
	a, c := r.Targets[0], r.Targets[len(r.Targets)-1]
	pair := len(r.Targets) > 1
	b.WriteString("| workload | ")
	if pair {
		fmt.Fprintf(&b, "%s median (min–max) | %s median (min–max) | %s/%s | %s CPU s/GiB | %s CPU s/GiB |\n",
			a.Title, c.Title, a.Title, c.Title, a.Title, c.Title)
		b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: |\n")
	} else {
		fmt.Fprintf(&b, "%s median (min–max) | %s CPU s/GiB |\n", a.Title, a.Title)
		b.WriteString("| --- | ---: | ---: |\n")
	}
	row := func(title string, sa, sc Stats, cpu bool) {
		ca, cc := "–", "–"
		if cpu {
			ca, cc = cpuText(sa), cpuText(sc)
		}
		if pair {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", title, cellText(sa), cellText(sc), ratio(sa, sc), ca, cc)
		} else {
			fmt.Fprintf(&b, "| %s | %s | %s |\n", title, cellText(sa), ca)
		}
	}
	for _, cell := range r.Cells {
		unit := "MiB/s"
		if cell.IOPS {
			unit = "IOPS"
		}
		f := rate(cell)
		row(fmt.Sprintf("%s (%s)", cell.Title, unit), r.series(a.Key, cell.Name, f), r.series(c.Key, cell.Name, f), true)
	}
	for _, cell := range r.Cells {
		if cell.Latency != "" {
			row(cell.Latency+", lower is better", r.series(a.Key, cell.Name, latencyMicros), r.series(c.Key, cell.Name, latencyMicros), false)
		}
	}
	b.WriteString("\n")
	b.WriteString("CPU s/GiB: user+system CPU seconds of the target daemon (/proc/PID/stat, whole run including " +
		"login and, for writes, the flush at close) per GiB moved; median of the runs.")
	if pair {
		fmt.Fprintf(&b, " %s/%s is the ratio of the medians: above 1 %s is faster, except for latency.",
			a.Title, c.Title, a.Title)
	}
	b.WriteString("\n")
	var notes []string
	for _, t := range r.Targets {
		if t.Failed != "" {
			notes = append(notes, fmt.Sprintf("%s was not measured: %s", t.Title, t.Failed))
		}
	}
	notes = append(notes, r.Notes...)
	if len(notes) > 0 {
		b.WriteString("\nNotes from this run:\n\n")
		for _, n := range notes {
			fmt.Fprintf(&b, "- %s\n", strings.ReplaceAll(n, "\n", " "))
		}
	}
	return b.String()
}

// sizeText renders a byte count in the largest binary unit that divides it.
func sizeText(n int64) string {
	for _, u := range []struct {
		s string
		n int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.n && n%u.n == 0 {
			return fmt.Sprintf("%d %s", n/u.n, u.s)
		}
	}
	return fmt.Sprintf("%d B", n)
}

// defaultIntro starts docs/benchmarks.md when the file does not exist yet.
const defaultIntro = "# Benchmarks: Stave and tgt\n\n" +
	"Generated by `make bench` (tools/bench) between the markers below; the text outside them is kept.\n\n"

// replaceSection returns doc with the text between the markers replaced by
// section; without markers, it appends them with the section.
func replaceSection(doc, section string) string {
	gen := beginMarker + "\n" + strings.TrimRight(section, "\n") + "\n" + endMarker
	i := strings.Index(doc, beginMarker)
	j := strings.Index(doc, endMarker)
	if i >= 0 && j > i {
		return doc[:i] + gen + doc[j+len(endMarker):]
	}
	if doc != "" && !strings.HasSuffix(doc, "\n\n") {
		doc = strings.TrimRight(doc, "\n") + "\n\n"
	}
	return doc + gen + "\n"
}

// writeSection rewrites the generated section of the markdown file at path.
func writeSection(path, section string) error {
	old, err := os.ReadFile(path)
	doc := string(old)
	if errors.Is(err, os.ErrNotExist) {
		doc = defaultIntro
	} else if err != nil {
		return err
	}
	out := replaceSection(doc, section)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(out), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
