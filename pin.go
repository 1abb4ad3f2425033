package shm

import (
	"runtime"
	"sync"
	_ "unsafe" // go:linkname
)

// Close and the uncontended lock.
//
// Close may run while other goroutines lock: those calls must end with
// ErrClosed and never touch the mapping after it is gone. The waiting paths
// register themselves with an atomic counter (Region.enter), which Close
// waits to drain. The uncontended Lock and Unlock cannot afford the two
// atomic additions that would cost (they would double the cost of a lock),
// so they pin themselves to their P instead, as sync.Pool does: a pinned
// goroutine is never preempted, and the world cannot stop until it unpins.
// Close sets closed, then stops the world once: every pinned section that
// began before is over, and every later one sees closed.

//go:linkname procPin runtime.procPin
func procPin() int

//go:linkname procUnpin runtime.procUnpin
func procUnpin()

var stwMu sync.Mutex
var stwStats runtime.MemStats

// waitPinned returns once every goroutine pinned now has unpinned:
// ReadMemStats stops the world, which waits for them.
func waitPinned() {
	stwMu.Lock()
	runtime.ReadMemStats(&stwStats)
	stwMu.Unlock()
}
