//go:build race

package tunnel

// raceEnabled: the race detector multiplies memory use, so RSS checks skip.
const raceEnabled = true
