//go:build race

package shm

import (
	"runtime"
	"unsafe"
)

// The race detector ignores atomics on memory outside the Go heap, such as
// the shared lock word: tell it that the lock orders goroutines.
func raceAcquire(addr unsafe.Pointer) { runtime.RaceAcquire(addr) }
func raceRelease(addr unsafe.Pointer) { runtime.RaceReleaseMerge(addr) }

const raceEnabled = true
