// Package benchproc is what the cross-process benchmarks of cmd/shmbench
// and conformance.Bench share: the control block at the start of the
// region's data, through which the parent and its worker processes meet,
// and both sides of the contend and pingpong workloads. Starting the
// workers is the caller's (internal/reexec in both).
//
// The parent creates the region (at least CtlSize bytes of data, zeroed)
// and starts its workers, which open it; each worker calls Ready once it
// has. Then:
//
//   - contend: the parent starts the clock and sets the go word (Contend);
//     each worker does its locked increments of the counter and adds
//     itself to the done word (WorkContend).
//   - pingpong: the parent hands the turn word to the worker and sleeps
//     until it comes back, n times (PingPong); the worker hands it back
//     (WorkPingPong).
//
// A waiting side checks about once a second whether the other is still
// there: the parent with the check function it passes, a worker with
// ParentGone.
package benchproc

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/internal/sys"
)

// The control block: offsets in the region's data (the C baseline,
// bench/cbaseline/cbench.c, lays out its struct ctl the same way).
const (
	OffReady   = 0   // workers attached
	OffGo      = 4   // futex: 1 once the parent starts the clock
	OffDone    = 8   // workers finished
	OffTurn    = 12  // pingpong: futex, 0 = the parent's turn, 1 = the worker's
	OffCounter = 64  // contend: the counter (uint64), on its own cache line
	OffWait    = 128 // a cache line for other workloads (cmd/shmbench's notify and cond)
	CtlSize    = 192 // the data the control block needs
)

// Word is the 32-bit word at offset off of data.
func Word(data []byte, off int) *uint32 { return (*uint32)(unsafe.Pointer(&data[off])) }

// Counter is contend's counter in data.
func Counter(data []byte) *uint64 { return (*uint64)(unsafe.Pointer(&data[OffCounter])) }

// Ready tells the parent that this worker has attached to data.
func Ready(data []byte) { add(data, OffReady) }

func add(data []byte, off int) {
	w := Word(data, off)
	atomic.AddUint32(w, 1)
	sys.FutexWake(w, 1<<30)
}

// ParentGone reports, as an error, that this worker's parent has exited: a
// worker's check.
func ParentGone() error {
	if os.Getppid() == 1 {
		return errors.New("parent exited")
	}
	return nil
}

// Contend is the parent's side of contend: it waits until procs workers
// have attached, calls start (which starts the clock) and lets them go,
// waits until all have finished, and calls stop. check, called about once
// a second while it waits, ends the wait when it returns an error (a
// worker that failed).
func Contend(data []byte, procs int, check func() error, start, stop func()) error {
	if err := sys.WaitAtLeast(Word(data, OffReady), uint32(procs), check); err != nil {
		return err
	}
	start()
	sys.StoreWake(Word(data, OffGo), 1)
	err := sys.WaitAtLeast(Word(data, OffDone), uint32(procs), check)
	stop()
	return err
}

// WorkContend is a worker's side of contend on r: once attached (Ready) and
// let go, it does n locked increments of the counter, in g goroutines, and
// says it has finished. It returns the CPU time the process spent on them,
// in nanoseconds.
func WorkContend(r *shm.Region, n, g int) (cpuNS int64, err error) {
	data := r.Bytes()
	counter := Counter(data)
	Ready(data)
	if err := sys.WaitWhile(Word(data, OffGo), 0, ParentGone); err != nil {
		return 0, err
	}
	cpu0 := processCPU()
	var wg sync.WaitGroup
	errs := make([]error, g)
	for k := range g {
		cnt := n / g
		if k < n%g {
			cnt++
		}
		wg.Go(func() {
			for range cnt {
				l, err := r.Lock()
				if err != nil {
					errs[k] = err
					return
				}
				*counter++
				if err := l.Unlock(); err != nil {
					errs[k] = err
					return
				}
			}
		})
	}
	wg.Wait()
	cpuNS = processCPU() - cpu0
	add(data, OffDone)
	return cpuNS, errors.Join(errs...)
}

// PingPong is the parent's side of pingpong: it waits until the worker has
// attached, calls start, hands the turn to the worker and waits for it back
// n times, and calls stop. check is as for Contend.
func PingPong(data []byte, n int, check func() error, start, stop func()) error {
	if err := sys.WaitAtLeast(Word(data, OffReady), 1, check); err != nil {
		return err
	}
	turn := Word(data, OffTurn)
	start()
	for range n {
		sys.StoreWake(turn, 1)
		if err := sys.WaitWhile(turn, 1, check); err != nil {
			return err
		}
	}
	stop()
	return nil
}

// WorkPingPong is the worker's side of pingpong on data: once attached
// (Ready), it hands the turn back to the parent n times.
func WorkPingPong(data []byte, n int) error {
	turn := Word(data, OffTurn)
	Ready(data)
	for range n {
		if err := sys.WaitWhile(turn, 0, ParentGone); err != nil {
			return err
		}
		sys.StoreWake(turn, 0)
	}
	return nil
}

// processCPU is the CPU time of this process (all its threads), in
// nanoseconds.
func processCPU() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts)
	return ts.Nano()
}
