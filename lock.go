package shm

import (
	"context"
	"errors"
	"runtime/debug"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/internal/sys"
)

// The lock word, in the header's lock line: the holder's PID, or 0 when
// free, with two flags. The layout follows the kernel's robust futexes.
const (
	lockWaiters = 1 << 31 // someone may sleep in FUTEX_WAIT: Unlock must wake
	lockDied    = 1 << 30 // a holder died; cleared by MarkConsistent
	lockPIDMask = lockDied - 1
)

// How long a waiter sleeps before it looks at the holder again: it starts
// short so that a dead holder is noticed fast, and backs off to a cap so that
// a long critical section costs its waiters little.
const (
	probeMin = time.Millisecond
	probeMax = 10 * time.Millisecond
)

// raceLock stands for every region lock in the race detector, which does not
// see the atomics on the shared lock word: two Regions of one process may map
// the same object, so one address serves them all.
var raceLock byte

// lockState is this process's side of the lock of one Region.
type lockState struct {
	// room is the waiting room: the goroutines of this process that find
	// the lock taken queue here, so that at most one OS thread per Region
	// sleeps in the kernel. Only the slow path touches it.
	room chan struct{}

	me     uint32 // our PID, as stored in the word
	record uint64 // our holder record
	ns     uint64

	// Written only by the goroutine holding the lock.
	held bool
	head *sys.RobustHead // robust mode: the holder thread's list
	died bool            // acquired with ErrOwnerDead and not yet marked consistent
	gen  uint64          // counts acquisitions, so that a stale Lock cannot unlock
}

func (s *lockState) init() {
	id := sys.Self()
	s.room = make(chan struct{}, 1)
	s.me = uint32(id.PID)
	s.record = holderRecord(id)
	s.ns = id.NS
}

// Lock is a held region lock, returned by Region.Lock, LockContext and
// TryLock. Release it with Unlock, typically with defer. It is a small value:
// taking the lock allocates nothing.
type Lock struct {
	r   *Region
	gen uint64
}

// Lock takes the region's lock, waiting as long as another process or
// goroutine holds it. The lock excludes every process that maps the region
// and every goroutine in this one; it is not reentrant: locking twice from
// one goroutine deadlocks, as with sync.Mutex.
//
// When the previous holder died holding the lock, Lock returns the held lock
// together with an error matching ErrOwnerDead. The data the lock guards may
// then be half updated: repair it and call MarkConsistent before Unlock, or
// the next Lock reports ErrOwnerDead again.
func (r *Region) Lock() (Lock, error) {
	return r.lock(context.Background(), false)
}

// LockContext is Lock that gives up when ctx is done, returning an error
// that wraps ctx.Err() (and matches ErrTimeout when its deadline passed).
func (r *Region) LockContext(ctx context.Context) (Lock, error) {
	return r.lock(ctx, false)
}

// TryLock takes the lock if it is free and returns ErrLocked otherwise. Like
// Lock, it may return the held lock with ErrOwnerDead.
func (r *Region) TryLock() (Lock, error) {
	return r.lock(context.Background(), true)
}

// lock is Lock, LockContext and TryLock: the uncontended paths of each lock
// mode, then the waiting path.
func (r *Region) lock(ctx context.Context, try bool) (Lock, error) {
	if r.closed.Load() {
		return Lock{}, r.err("lock", ErrClosed)
	}
	if r.robust {
		return r.lockRobust(ctx, try)
	}
	if r.guard {
		if r.casGuarded() {
			return r.held(false), nil
		}
		return r.lockGuarded(ctx, try)
	}
	if atomic.CompareAndSwapUint32(&r.hdr.Lock.Word, 0, r.lk.me) {
		return r.acquired(false), nil
	}
	return r.lockSlow(ctx, try, r.lk.me, nil)
}

// casGuarded is the uncontended path of lockGuarded: it takes a free lock
// and writes the holder record, or reports false, also when the header
// faulted (lockGuarded then turns the fault into an error). Its deferred
// call costs less than lockGuarded's.
func (r *Region) casGuarded() (ok bool) {
	defer endGuard(debug.SetPanicOnFault(true))
	if atomic.CompareAndSwapUint32(&r.hdr.Lock.Word, 0, r.lk.me) {
		ll := &r.hdr.Lock
		*(*uint64)(unsafe.Pointer(&ll.HolderNS)) = r.lk.ns
		*(*uint64)(unsafe.Pointer(&ll.Holder)) = r.lk.record
		return true
	}
	return false
}

// unlockFast is unlockWord for a lock taken without the died flag, under a
// guard: it reports false, having freed nothing, when the header faulted
// (unlockGuarded then turns the fault into an error).
func (r *Region) unlockFast() (ok bool) {
	defer endGuard(debug.SetPanicOnFault(true))
	w := &r.hdr.Lock.Word
	*(*uint64)(unsafe.Pointer(&r.hdr.Lock.Holder)) = 0 // as unlockWord
	if atomic.SwapUint32(w, 0)&lockWaiters != 0 {
		sys.FutexWake(w, 1)
	}
	return true
}

// endGuard ends the guard of a function that reports a fault by returning
// its zero value: it restores the goroutine's fault mode and swallows a
// memory fault (any other panic goes on).
func endGuard(old bool) {
	debug.SetPanicOnFault(old)
	if p := recover(); p != nil {
		faultError(p)
	}
}

// lockGuarded is the lock for objects that another process may shrink under
// us (POSIX, file): a fault on the lock word becomes an error, not a crash.
func (r *Region) lockGuarded(ctx context.Context, try bool) (l Lock, err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if p := recover(); p != nil {
			l, err = Lock{}, r.err("lock", faultError(p))
		}
	}()
	if atomic.CompareAndSwapUint32(&r.hdr.Lock.Word, 0, r.lk.me) {
		return r.acquired(false), nil
	}
	return r.lockSlow(ctx, try, r.lk.me, nil)
}

// acquired records this process as the holder; the caller holds the word.
func (r *Region) acquired(died bool) Lock {
	// Plain stores: only waiters in other processes read the record (a
	// waiter never judges its own process), after the word says who holds.
	if !r.robust {
		ll := &r.hdr.Lock
		*(*uint64)(unsafe.Pointer(&ll.HolderNS)) = r.lk.ns
		*(*uint64)(unsafe.Pointer(&ll.Holder)) = r.lk.record
	}
	return r.held(died)
}

// held records in this process that the lock is ours.
func (r *Region) held(died bool) Lock {
	raceAcquire(unsafe.Pointer(&raceLock))
	r.lk.held = true
	r.lk.died = died
	r.lk.gen++
	return Lock{r: r, gen: r.lk.gen}
}

// lockSlow waits for the lock and takes it with the word me (our PID, or in
// robust mode our thread ID).
func (r *Region) lockSlow(ctx context.Context, try bool, me uint32, head *sys.RobustHead) (Lock, error) {
	w := &r.hdr.Lock.Word
	// take is the compare-and-swap that acquires. In robust mode the entry
	// is pending on the thread's robust list only around it: were it
	// pending while we wait and this thread died, the kernel would mark a
	// word that holds a thread of another PID namespace with our TID.
	take := func(old, new uint32) bool {
		if head == nil {
			return atomic.CompareAndSwapUint32(w, old, new)
		}
		head.Pending = uintptr(unsafe.Pointer(&r.hdr.Lock.RobustNext))
		if atomic.CompareAndSwapUint32(w, old, new) {
			return true // pending until linked
		}
		head.Pending = 0
		return false
	}
	if try {
		for {
			v := atomic.LoadUint32(w)
			if v&lockPIDMask != 0 {
				return Lock{}, r.err("lock", ErrLocked)
			}
			if take(v, v|me) {
				return r.afterSlow(v&lockDied != 0)
			}
		}
	}

	// Enter the waiting room (the uncontended path never does).
	select {
	case r.lk.room <- struct{}{}:
	case <-ctx.Done():
		return Lock{}, r.lockCtxErr(ctx)
	}
	defer func() { <-r.lk.room }()

	var suspect [3]uint64 // the state last judged dead, confirmed on the next probe
	probe := probeMin
	for {
		if r.closed.Load() {
			return Lock{}, r.err("lock", ErrClosed)
		}
		v := atomic.LoadUint32(w)
		if v&lockPIDMask == 0 {
			// Free. Take it with the waiters flag set: another process
			// may have slept on it while we did.
			if take(v, v|me|lockWaiters) {
				return r.afterSlow(v&lockDied != 0)
			}
			continue
		}
		if v&lockWaiters == 0 {
			if !atomic.CompareAndSwapUint32(w, v, v|lockWaiters) {
				continue
			}
			v |= lockWaiters
		}
		wait := probe
		if dl, ok := ctx.Deadline(); ok {
			left := time.Until(dl)
			if left <= 0 {
				return Lock{}, r.lockCtxErr(ctx)
			}
			wait = min(wait, left)
		}
		err := sys.FutexWait(w, v, wait)
		if err == unix.EFAULT {
			return Lock{}, r.err("lock", because("lock word is no longer mapped (region truncated?)", err, ErrCorrupt))
		}
		if ctx.Err() != nil {
			return Lock{}, r.lockCtxErr(ctx)
		}
		if err != unix.ETIMEDOUT {
			continue
		}
		probe = min(probe*2, probeMax)

		// The holder has had the lock for a while: is it alive? (In
		// robust mode the kernel marks a dead holder's word itself.)
		pid := v & lockPIDMask
		if r.robust || pid == r.lk.me {
			continue // a goroutine of ours, through another Region
		}
		ll := &r.hdr.Lock
		rec := atomic.LoadUint64(&ll.Holder)
		ns := atomic.LoadUint64(&ll.HolderNS)
		if uint32(rec>>40) != pid {
			suspect = [3]uint64{}
			continue // the holder has not written its record yet
		}
		id := sys.Identity{PID: int(pid), Start: rec & (1<<40 - 1), NS: ns}
		if !deadHolder(id) {
			suspect = [3]uint64{}
			continue
		}
		state := [3]uint64{uint64(v), rec, ns}
		if state != suspect {
			suspect = state // judge twice, one probe apart, before taking over
			probe = probeMin
			continue
		}
		if take(v, me|lockWaiters|lockDied) {
			return r.afterSlow(true)
		}
		suspect = [3]uint64{}
	}
}

// deadHolder tells whether the recorded holder is certainly dead. The start
// time in the record holds only its low 40 bits.
func deadHolder(id sys.Identity) bool {
	switch sys.Check(sys.Identity{PID: id.PID, NS: id.NS}) {
	case sys.Dead:
		return true
	case sys.Unknown:
		return false
	}
	now := sys.StartTime(id.PID)
	return now != 0 && now&(1<<40-1) != id.Start
}

func (r *Region) afterSlow(died bool) (Lock, error) {
	l := r.acquired(died)
	if died {
		return l, r.err("lock", because("previous holder died holding the lock; repair the data, then MarkConsistent", nil, ErrOwnerDead))
	}
	return l, nil
}

func (r *Region) lockCtxErr(ctx context.Context) error {
	err := ctx.Err()
	if err == nil {
		err = context.DeadlineExceeded // our clock saw the deadline first
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return r.err("lock", because("", err, ErrTimeout))
	}
	return r.err("lock", err)
}

// Unlock releases the lock. It returns ErrNotLocked when l is no longer held
// (a second Unlock) and ErrClosed when the region was closed.
func (l Lock) Unlock() error {
	r := l.r
	if r == nil {
		return &Error{Op: "unlock", Err: ErrNotLocked}
	}
	if r.closed.Load() {
		return r.err("unlock", ErrClosed)
	}
	if !r.lk.held || r.lk.gen != l.gen {
		return r.err("unlock", ErrNotLocked)
	}
	died, head := r.lk.died, r.lk.head
	r.lk.held = false
	raceRelease(unsafe.Pointer(&raceLock))
	if r.robust {
		return r.unlockRobust(died, head)
	}
	if r.guard {
		if !died && r.unlockFast() {
			return nil
		}
		return r.unlockGuarded(died)
	}
	r.unlockWord(died)
	return nil
}

func (r *Region) unlockGuarded(died bool) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if p := recover(); p != nil {
			err = r.err("unlock", faultError(p))
		}
	}()
	r.unlockWord(died)
	return nil
}

// unlockWord frees the word, keeping the died flag when the data was not
// marked consistent, and wakes one waiter if any may sleep.
func (r *Region) unlockWord(died bool) {
	w := &r.hdr.Lock.Word
	if !r.robust {
		// Clear the record first, so that a waiter never pairs the next
		// holder's word with our record (the next holder writes its own
		// just after its compare-and-swap). The swap below orders it.
		*(*uint64)(unsafe.Pointer(&r.hdr.Lock.Holder)) = 0
	}
	var v uint32
	if died {
		v = atomic.SwapUint32(w, lockDied)
	} else {
		v = atomic.SwapUint32(w, 0)
	}
	if v&lockWaiters != 0 {
		sys.FutexWake(w, 1)
	}
}

// MarkConsistent records that the data guarded by the lock was repaired
// after ErrOwnerDead, so that later Locks succeed without it.
func (l Lock) MarkConsistent() error {
	r := l.r
	if r == nil {
		return &Error{Op: "markconsistent", Err: ErrNotLocked}
	}
	if r.closed.Load() {
		return r.err("markconsistent", ErrClosed)
	}
	if !r.lk.held || r.lk.gen != l.gen {
		return r.err("markconsistent", ErrNotLocked)
	}
	if r.lk.died {
		if err := guard(func() { atomic.AndUint32(&r.hdr.Lock.Word, ^uint32(lockDied)) }); err != nil {
			return r.err("markconsistent", err)
		}
		r.lk.died = false
	}
	return nil
}

// faultError turns the panic of a memory fault (debug.SetPanicOnFault) into
// an error; any other panic goes on.
func faultError(p any) error {
	if e, ok := p.(interface {
		error
		Addr() uintptr
	}); ok {
		return because("memory fault in the region's header (was the object truncated?)", e, ErrCorrupt)
	}
	panic(p)
}

// guard runs f, turning a memory fault into an error.
func guard(f func()) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if p := recover(); p != nil {
			err = faultError(p)
		}
	}()
	f()
	return nil
}
