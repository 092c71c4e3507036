//go:build race

package ownership

// raceEnabled is true under -race: the model tests run fewer schedules.
const raceEnabled = true
