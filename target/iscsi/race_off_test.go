//go:build !race

package iscsi

// raceEnabled is true when tests run with -race (which allocates).
const raceEnabled = false
