//go:build !race

package memfd_test

const raceEnabled = false
