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
	// The layouts mode's section (make bench-pool).
	poolBeginMarker = "<!-- bench-pool:begin -->"
	poolEndMarker   = "<!-- bench-pool:end -->"
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
	P50    float64 `json:",omitempty"` // latency runs: median latency, µs
	P99    float64 `json:",omitempty"` // latency runs: 99th percentile, µs
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
	FS           string // filesystem of the work directory (backing files)
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

func p50(s Sample) float64 { return s.P50 }
func p99(s Sample) float64 { return s.P99 }

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
	if m.FS != "" {
		fmt.Fprintf(&b, "| backing files | %s |\n", m.FS)
	}
	for _, t := range r.Targets {
		fmt.Fprintf(&b, "| %s | %s |\n", t.Title, t.Version)
	}
	fmt.Fprintf(&b, "| clients | %s |\n", m.ClientTools)
	fmt.Fprintf(&b, "| Go | %s |\n\n", m.Go)

	if len(r.Targets) == 0 {
		b.WriteString("No target was measured.\n")
		return b.String()
	}
	// Ratios are against the baseline: tgt if measured, else the last.
	base := r.Targets[len(r.Targets)-1]
	for _, t := range r.Targets {
		if t.Key == "tgt" {
			base = t
		}
	}
	var others []TargetInfo
	for _, t := range r.Targets {
		if t.Key != base.Key {
			others = append(others, t)
		}
	}
	b.WriteString("| workload |")
	for _, t := range r.Targets {
		fmt.Fprintf(&b, " %s median (min–max) |", t.Title)
	}
	for _, t := range others {
		fmt.Fprintf(&b, " %s / %s |", t.Title, base.Title)
	}
	for _, t := range r.Targets {
		fmt.Fprintf(&b, " %s CPU s/GiB |", t.Title)
	}
	b.WriteString("\n| --- |" + strings.Repeat(" ---: |", 2*len(r.Targets)+len(others)) + "\n")
	var latCells []Cell
	for _, cell := range r.Cells {
		if cell.Tool == ToolLatency {
			latCells = append(latCells, cell)
			continue
		}
		unit := "MiB/s"
		if cell.IOPS {
			unit = "IOPS"
		}
		f := rate(cell)
		fmt.Fprintf(&b, "| %s (%s) |", cell.Title, unit)
		for _, t := range r.Targets {
			fmt.Fprintf(&b, " %s |", cellText(r.series(t.Key, cell.Name, f)))
		}
		bs := r.series(base.Key, cell.Name, f)
		for _, t := range others {
			fmt.Fprintf(&b, " %s |", ratio(r.series(t.Key, cell.Name, f), bs))
		}
		for _, t := range r.Targets {
			fmt.Fprintf(&b, " %s |", cpuText(r.series(t.Key, cell.Name, f)))
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
	b.WriteString("CPU s/GiB: user+system CPU seconds of the target daemon (/proc/PID/stat, whole run including " +
		"login and, for writes, the flush at close) per GiB moved; median of the runs.")
	if len(others) > 0 {
		fmt.Fprintf(&b, " X / %s is the ratio of the medians: above 1 X is faster.", base.Title)
	}
	b.WriteString("\n")
	if goal := r.poolGoal(base); goal != "" {
		b.WriteString("\n" + goal + "\n")
	}
	if len(latCells) > 0 {
		b.WriteString("\nQD1 latency, from this program's own initiator (tools/bench/initiator.go): one 4 KiB I/O at a " +
			"time at random 4 KiB-aligned offsets, each timed from sending its command to its status; " +
			"p50 and p99 of each run, median (min–max) over the runs. Lower is better; X / " + base.Title +
			" below 1 means X is faster.\n\n")
		fmt.Fprintf(&b, "| workload | target | p50 µs | p99 µs | IOPS | p50 / %s | p99 / %s |\n", base.Title, base.Title)
		b.WriteString("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n")
		for _, cell := range latCells {
			b50, b99 := r.series(base.Key, cell.Name, p50), r.series(base.Key, cell.Name, p99)
			for _, t := range r.Targets {
				s50, s99 := r.series(t.Key, cell.Name, p50), r.series(t.Key, cell.Name, p99)
				r50, r99 := ratio(s50, b50), ratio(s99, b99)
				if t.Key == base.Key {
					r50, r99 = "", ""
				}
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", cell.Title, t.Title, cellText(s50), cellText(s99),
					num(r.series(t.Key, cell.Name, rate(cell)).Median), r50, r99)
			}
		}
	}
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

// poolGoal states issue 7's goal, pool ≥ 1.0× tgt at 4 KiB QD32 read and
// write, when both were measured; "" otherwise.
func (r *Report) poolGoal(base TargetInfo) string {
	if base.Key != "tgt" {
		return ""
	}
	var pool *TargetInfo
	for i := range r.Targets {
		if r.Targets[i].Key == "pool" {
			pool = &r.Targets[i]
		}
	}
	if pool == nil {
		return ""
	}
	var parts []string
	for _, c := range []struct{ name, what string }{{"randread-4k-qd32", "read"}, {"randwrite-4k-qd32", "write"}} {
		cs, err := selectCells(c.name)
		if err != nil || !slices.ContainsFunc(r.Cells, func(x Cell) bool { return x.Name == c.name }) {
			continue
		}
		f := rate(cs[0])
		p, t := r.series(pool.Key, c.name, f), r.series(base.Key, c.name, f)
		verdict := "not measured"
		if p.N > 0 && t.N > 0 && t.Median > 0 {
			verdict = "not met"
			if p.Median >= t.Median {
				verdict = "met"
			}
		}
		parts = append(parts, fmt.Sprintf("%s %s× (%s)", c.what, ratio(p, t), verdict))
	}
	if len(parts) == 0 {
		return ""
	}
	return fmt.Sprintf("Issue 7 goal, %s ≥ 1.0× %s at 4 KiB QD32: %s.", pool.Title, base.Title, strings.Join(parts, ", "))
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
	return replaceSectionMarkers(doc, section, beginMarker, endMarker)
}

// replaceSectionMarkers is replaceSection with the given markers.
func replaceSectionMarkers(doc, section, begin, end string) string {
	gen := begin + "\n" + strings.TrimRight(section, "\n") + "\n" + end
	i := strings.Index(doc, begin)
	j := strings.Index(doc, end)
	if i >= 0 && j > i {
		return doc[:i] + gen + doc[j+len(end):]
	}
	if doc != "" && !strings.HasSuffix(doc, "\n\n") {
		doc = strings.TrimRight(doc, "\n") + "\n\n"
	}
	return doc + gen + "\n"
}

// writeSection rewrites the generated section of the markdown file at path.
func writeSection(path, section string) error {
	return writeSectionMarkers(path, section, beginMarker, endMarker)
}

// writeSectionMarkers rewrites the section between begin and end.
func writeSectionMarkers(path, section, begin, end string) error {
	old, err := os.ReadFile(path)
	doc := string(old)
	if errors.Is(err, os.ErrNotExist) {
		doc = defaultIntro
	} else if err != nil {
		return err
	}
	out := replaceSectionMarkers(doc, section, begin, end)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(out), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
