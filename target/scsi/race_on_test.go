//go:build race

package scsi

// raceEnabled: the race detector makes sync.Pool drop items at random.
const raceEnabled = true
