package shm

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/internal/sys"
)

// Futex is a 32-bit word in shared memory for lock-free protocols between
// processes: atomic operations, and a wait for the word to change that a
// Wake in any process ends. Place it in a pointer-free struct of yours and
// reach it with View, like any other field; its zero value is 0.
//
//	type Ring struct {
//		Head, Tail shm.Futex
//		Slots      [64]uint64
//	}
//	ring, err := shm.View[Ring](r, 0)
//	ring.Tail.Add(1) // the producer, then:
//	ring.Tail.Wake(1)
//	err = ring.Tail.Wait(ctx, seen) // a consumer sleeps while Tail is seen
//
// Like Bytes, a Futex's memory goes with the region's Close: Wait ends with
// ErrClosed when its Region closes, and no method may be called after.
// Waits on one word in one process share one OS thread, whatever the number
// of goroutines. A Futex also works in a read-only Region (WithReadOnly) for
// Load, Wait and Wake. The race detector does not see what other processes
// do to the word.
type Futex struct {
	v uint32
}

// Load returns the word.
func (f *Futex) Load() uint32 {
	v := atomic.LoadUint32(&f.v)
	raceAcquire(unsafe.Pointer(&raceFutex))
	return v
}

// Store sets the word to v.
func (f *Futex) Store(v uint32) {
	raceRelease(unsafe.Pointer(&raceFutex))
	atomic.StoreUint32(&f.v, v)
}

// Add adds delta to the word and returns the new value.
func (f *Futex) Add(delta uint32) uint32 {
	raceRelease(unsafe.Pointer(&raceFutex))
	v := atomic.AddUint32(&f.v, delta)
	raceAcquire(unsafe.Pointer(&raceFutex))
	return v
}

// CompareAndSwap sets the word to new if it holds old, and reports whether
// it did.
func (f *Futex) CompareAndSwap(old, new uint32) bool {
	raceRelease(unsafe.Pointer(&raceFutex))
	ok := atomic.CompareAndSwapUint32(&f.v, old, new)
	raceAcquire(unsafe.Pointer(&raceFutex))
	return ok
}

// Wait sleeps while the word holds old: it returns nil once the word holds
// something else or a Wake woke it (spurious wake-ups are possible, so
// check the word again), or ctx's error (matching ErrTimeout when its
// deadline passed) when ctx ends first. It returns at once when the word
// does not hold old.
func (f *Futex) Wait(ctx context.Context, old uint32) error {
	if atomic.LoadUint32(&f.v) != old {
		raceAcquire(unsafe.Pointer(&raceFutex))
		return nil
	}
	err := waitWord(ctx, &f.v, old)
	raceAcquire(unsafe.Pointer(&raceFutex))
	if err != nil {
		return &Error{Op: "wait", Err: err}
	}
	return nil
}

// Wake wakes up to n processes sleeping in Wait on the word (every
// goroutine of a process that waits on it wakes), and returns how many it
// woke. It enters the kernel every time: a Futex does not count its
// waiters; a protocol that knows there are none can skip it.
func (f *Futex) Wake(n int) int {
	raceRelease(unsafe.Pointer(&raceFutex))
	woke, _ := sys.FutexWakeN(&f.v, n)
	return woke
}

// raceFutex stands for every Futex in the race detector, which does not see
// atomics on memory outside the Go heap.
var raceFutex byte

// Waiting for a word of shared memory to change. Each waited word has one
// watcher per process: a goroutine that sleeps in FUTEX_WAIT (one OS thread)
// and wakes the goroutines waiting on the word, so that a thousand waiting
// goroutines cost one thread. Close cancels the watchers of its mapping
// before the memory goes.

type watcher struct {
	addr      *uint32
	waiters   map[*waiter]struct{}
	cancelled bool
	done      chan struct{}
}

type waiter struct {
	old uint32
	ch  chan error // buffered: nil when the word changed or was woken, ErrClosed
	w   *watcher
}

var watchers struct {
	mu sync.Mutex
	m  map[*uint32]*watcher
}

// watchTimeout bounds a watcher's sleep, so that it looks at the word again
// now and then even if a wake-up went to another process.
const watchTimeout = time.Second

// waitWord waits, through the word's watcher, until *addr does not hold old,
// a FUTEX_WAKE woke the watcher, or ctx ends.
func waitWord(ctx context.Context, addr *uint32, old uint32) error {
	return watch(addr, old).wait(ctx)
}

// watch registers a wait for *addr to change from old (it is already
// satisfied when *addr does not hold old); wait blocks for it. In between,
// a change or a wake-up is not lost.
func watch(addr *uint32, old uint32) *waiter {
	wt := &waiter{old: old, ch: make(chan error, 1)}
	watchers.mu.Lock()
	defer watchers.mu.Unlock()
	if atomic.LoadUint32(addr) != old {
		wt.ch <- nil
		return wt
	}
	if watchers.m == nil {
		watchers.m = map[*uint32]*watcher{}
	}
	w := watchers.m[addr]
	if w == nil || w.cancelled {
		w = &watcher{addr: addr, waiters: map[*waiter]struct{}{}, done: make(chan struct{})}
		watchers.m[addr] = w
		go w.run()
	}
	wt.w = w
	w.waiters[wt] = struct{}{}
	return wt
}

// wait blocks until the waiter is woken or ctx ends.
func (wt *waiter) wait(ctx context.Context) error {
	select {
	case err := <-wt.ch:
		return err
	case <-ctx.Done():
		if wt.w != nil {
			watchers.mu.Lock()
			delete(wt.w.waiters, wt)
			watchers.mu.Unlock()
		}
		select {
		case err := <-wt.ch: // woken meanwhile: that counts
			return err
		default:
		}
		err := ctx.Err()
		if errors.Is(err, context.DeadlineExceeded) {
			return because("", err, ErrTimeout)
		}
		return err
	}
}

func (w *watcher) run() {
	for {
		watchers.mu.Lock()
		if w.cancelled || len(w.waiters) == 0 {
			if watchers.m[w.addr] == w {
				delete(watchers.m, w.addr)
			}
			watchers.mu.Unlock()
			close(w.done)
			return
		}
		cur := atomic.LoadUint32(w.addr) // mapped: Close cancels us first
		for wt := range w.waiters {
			if wt.old != cur {
				delete(w.waiters, wt)
				wt.ch <- nil
			}
		}
		if len(w.waiters) == 0 {
			watchers.mu.Unlock()
			continue
		}
		watchers.mu.Unlock()
		err := sys.FutexWait(w.addr, cur, watchTimeout)
		if err == nil {
			// Woken: by a Wake that may not have changed the word. Every
			// waiter wakes (it checks its own condition again).
			watchers.mu.Lock()
			for wt := range w.waiters {
				delete(w.waiters, wt)
				wt.ch <- nil
			}
			watchers.mu.Unlock()
		} else if err == unix.EFAULT {
			w.cancel(because("the word is no longer mapped", err, ErrClosed))
		}
	}
}

// cancel ends every wait on w with err. The caller does not hold the lock.
func (w *watcher) cancel(err error) {
	watchers.mu.Lock()
	w.cancelled = true
	for wt := range w.waiters {
		delete(w.waiters, wt)
		wt.ch <- err
	}
	watchers.mu.Unlock()
}

// cancelWatchers ends the waits on words within mem, with ErrClosed, and
// returns once their watchers no longer touch it.
func cancelWatchers(mem []byte) {
	if len(mem) == 0 {
		return
	}
	lo := uintptr(unsafe.Pointer(&mem[0]))
	hi := lo + uintptr(len(mem))
	var ws []*watcher
	watchers.mu.Lock()
	for a, w := range watchers.m {
		if p := uintptr(unsafe.Pointer(a)); p >= lo && p < hi {
			ws = append(ws, w)
		}
	}
	watchers.mu.Unlock()
	for _, w := range ws {
		w.cancel(ErrClosed)
		// The watcher may be on its way into FUTEX_WAIT: wake it until it
		// has left.
		for wait := 20 * time.Microsecond; ; wait = min(2*wait, time.Millisecond) {
			sys.FutexWake(w.addr, 1<<30)
			select {
			case <-w.done:
			case <-time.After(wait):
				continue
			}
			break
		}
	}
}
