package shm

import (
	"context"
	"errors"
	"io/fs"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/internal/sys"
)

// The lock word, at offset 384 of the header.
//
// It names its holder by the holder's slot in the user table (slot+1; 0 when
// free), so the holder can be judged from the instant it holds: taking the
// lock is one compare-and-swap and releasing it another, with nothing else
// written in between. A generation, advanced at every acquisition, makes
// each holding's value unique, so that a stale Lock value never releases
// another holding. Three flags:
//
//   - lockWaiters: a waiter may sleep in FUTEX_WAIT; Unlock must wake one.
//   - lockDied: a holder died holding the lock; set until MarkConsistent.
//   - lockHandoff: a waiter has waited long enough (starveAfter); while it
//     is set, a free lock goes to a waiter that has waited that long,
//     never to a newcomer, and a release wakes every sleeper.
const (
	lockOwnerBits = 13
	lockOwner     = 1<<lockOwnerBits - 1 // the holder's slot+1
	lockGenOne    = 1 << lockOwnerBits
	lockGen       = (1<<16 - 1) << lockOwnerBits
	lockHandoff   = 1 << 29
	lockDied      = 1 << 30
	lockWaiters   = 1 << 31
)

// nextGen is the generation after cur's, in place.
func nextGen(cur uint32) uint32 { return (cur + lockGenOne) & lockGen }

// Waiting: how long a waiter sleeps before it looks at the holder again (it
// starts short so that a dead holder is noticed fast, and backs off so that a
// long critical section costs its waiters little), and how long a waiter
// waits before the lock is handed to waiters rather than newcomers.
// They are variables for the tests, which make the probes long to show
// that no wake-up is lost without them.
var (
	probeMin    = time.Millisecond
	probeMax    = 8 * time.Millisecond
	starveAfter = time.Millisecond
)

// raceLock stands for every region lock in the race detector, which does not
// see the atomics on the shared lock word: two Regions of one process may map
// the same object, so one address serves them all.
var raceLock byte

// lockState is this process's side of the lock of one Region.
type lockState struct {
	// room is the waiting room: the goroutines of this process that find
	// the lock taken queue here in order, so that at most one OS thread
	// per Region sleeps in the kernel. Only the slow path touches it.
	room chan struct{}

	// moved maps the Lock value of a holding that went through Wait to the
	// holding Wait took back (from<<32 | to), or is 0. Holdings of a Region
	// exclude one another, so one entry serves.
	moved atomic.Uint64
}

// current is the holding that the Lock value v stands for now.
func (s *lockState) current(v uint32) uint32 {
	if m := s.moved.Load(); m != 0 && uint32(m>>32) == v {
		return uint32(m)
	}
	return v
}

// remap records that the Lock value from now stands for the holding to.
func (s *lockState) remap(from, to uint32) { s.moved.Store(uint64(from)<<32 | uint64(to)) }

// forget drops the remap of from, once its holding ended.
func (s *lockState) forget(from uint32) {
	if m := s.moved.Load(); m != 0 && uint32(m>>32) == from {
		s.moved.CompareAndSwap(m, 0)
	}
}

func (s *lockState) init() { s.room = make(chan struct{}, 1) }

// Lock is a holding of a region lock, returned by Region.Lock, LockContext
// and TryLock. Release it with Unlock, typically with defer. It is a small
// value: taking the lock allocates nothing.
type Lock struct {
	r *Region
	v uint32 // the holder and generation this holding put in the word
}

// Lock takes the region's lock, waiting as long as another process or
// goroutine holds it. The lock excludes every Region that maps the region,
// in this process and in others; it is not reentrant: locking twice from one
// goroutine deadlocks, as with sync.Mutex. A held lock is not tied to a
// goroutine: one goroutine may lock and another unlock.
//
// When the previous holder died holding the lock (its process was killed,
// crashed or exec'd), Lock returns the held lock together with an error
// matching ErrOwnerDead. The data the lock guards may then be half updated:
// repair it and call MarkConsistent before Unlock, or the next Lock reports
// ErrOwnerDead again.
//
// Waiters are served roughly in order: once a waiter has waited about a
// millisecond, the lock goes to waiters before a newcomer can take it.
func (r *Region) Lock() (Lock, error) {
	if l, ok := r.fastLock(); ok {
		return l, nil
	}
	return r.lock(context.Background(), false)
}

// LockContext is Lock that gives up when ctx is done, returning an error
// that wraps ctx.Err() (and matches ErrTimeout when its deadline passed).
func (r *Region) LockContext(ctx context.Context) (Lock, error) {
	if l, ok := r.fastLock(); ok {
		return l, nil
	}
	return r.lock(ctx, false)
}

// TryLock takes the lock if it is free and returns ErrLocked otherwise. Like
// Lock, it takes over the lock of a holder that died, returning the held
// lock with ErrOwnerDead. It never waits: while waiters are being handed the
// lock, TryLock reports ErrLocked.
func (r *Region) TryLock() (Lock, error) {
	if l, ok := r.fastLock(); ok {
		return l, nil
	}
	return r.lock(context.Background(), true)
}

// fastLock takes the lock if it is free and carries no flag, pinned so that
// Close cannot unmap between the check and the compare-and-swap (see
// pin.go). It reports false, having done nothing, in every other case.
func (r *Region) fastLock() (Lock, bool) {
	if r.guardLock || raceEnabled {
		return Lock{}, false
	}
	if !r.pinned.Load() {
		r.pinned.Store(true) // Close must wait for pinned sections (see pin.go)
	}
	procPin()
	if !r.closed.Load() {
		w := r.word
		cur := atomic.LoadUint32(w)
		if me := r.me.Load(); cur&^lockGen == 0 && me != 0 {
			v := nextGen(cur) | me
			if atomic.CompareAndSwapUint32(w, cur, v) {
				procUnpin()
				return Lock{r: r, v: v}, true
			}
		}
	}
	procUnpin()
	return Lock{}, false
}

// lock is Lock, LockContext and TryLock: the uncontended path, then the
// waiting path.
func (r *Region) lock(ctx context.Context, try bool) (Lock, error) {
	if !r.enter() {
		return Lock{}, r.err("lock", ErrClosed)
	}
	defer r.leave()
	if r.me.Load() == 0 {
		if r.readOnly {
			return Lock{}, r.err("lock", because("a read-only Region cannot lock", nil, fs.ErrPermission))
		}
		if err := r.ensureSlot(); err != nil {
			return Lock{}, r.err("lock", err)
		}
	}
	if r.guardLock {
		var l Lock
		ok := false
		if ferr := guard(func() { l, ok = r.lockFast() }); ferr != nil {
			return Lock{}, r.err("lock", ferr)
		}
		if ok {
			return l, nil
		}
	} else if l, ok := r.lockFast(); ok {
		return l, nil
	}
	return r.lockSlow(ctx, try)
}

// lockFast takes the lock if it is free and carries no flag.
func (r *Region) lockFast() (Lock, bool) {
	w := r.word
	cur := atomic.LoadUint32(w)
	if cur&^lockGen == 0 {
		v := nextGen(cur) | r.me.Load()
		if atomic.CompareAndSwapUint32(w, cur, v) {
			raceAcquire(unsafe.Pointer(&raceLock))
			return Lock{r: r, v: v}, true
		}
	}
	return Lock{}, false
}

// lockSlow takes the lock when the uncontended path could not: it waits,
// judges the holder, and takes the lock over from a dead one. The caller
// has entered (see enter).
func (r *Region) lockSlow(ctx context.Context, try bool) (Lock, error) {
	return r.lockAs(ctx, try, 0)
}

// lockAs is lockSlow that takes the lock as the holding want (the holder
// and generation of a Lock; 0: a new holding).
func (r *Region) lockAs(ctx context.Context, try bool, want uint32) (Lock, error) {
	if r.shrinks || r.guardLock {
		// The object may be truncated under us: a fault on the word here
		// becomes ErrCorrupt (the uncontended path is guarded only with
		// WithFaultGuard).
		var l Lock
		var err error
		if ferr := guard(func() { l, err = r.waitLock(ctx, try, want) }); ferr != nil {
			return Lock{}, r.err("lock", ferr)
		}
		return l, err
	}
	return r.waitLock(ctx, try, want)
}

func (r *Region) waitLock(ctx context.Context, try bool, want uint32) (Lock, error) {
	w := r.word
	if try {
		for {
			cur := atomic.LoadUint32(w)
			switch owner := cur & lockOwner; {
			case owner == 0 && cur&lockHandoff == 0:
				if l, ok := r.take(cur, cur&lockWaiters, want); ok {
					return r.acquired(l, cur&lockDied != 0)
				}
			case owner == 0:
				return Lock{}, r.err("lock", ErrLocked) // handed to waiters
			case owner == r.me.Load():
				return Lock{}, r.err("lock", ErrLocked)
			default:
				st, err := r.judge(owner, true)
				if err != nil {
					return Lock{}, err
				}
				if st != holderDead {
					if atomic.LoadUint32(w) != cur {
						continue
					}
					return Lock{}, r.err("lock", ErrLocked)
				}
				if l, ok := r.takeOver(cur, want, true); ok {
					return r.acquired(l, true)
				}
			}
		}
	}

	began := time.Now()
	if ctx.Done() != nil {
		// Cancellation wakes the sleepers on the word at once (every
		// waiter wakes spuriously and looks again; ours leaves).
		stop := context.AfterFunc(ctx, func() { sys.FutexWake(w, 1<<30) })
		defer stop()
	}
	// Enter the waiting room (the uncontended path never does).
	select {
	case r.lk.room <- struct{}{}:
	case <-ctx.Done():
		return Lock{}, r.lockCtxErr(ctx)
	case <-r.closing:
		return Lock{}, r.err("lock", ErrClosed)
	}
	defer func() { <-r.lk.room }()

	probe := probeMin
	slept := false // we slept on the word: a wake-up may have been ours
	deep := false  // the last sleep timed out: judge the holder by PID too
	for {
		if r.closed.Load() {
			r.passWake(slept)
			return Lock{}, r.err("lock", ErrClosed)
		}
		if ctx.Err() != nil {
			r.passWake(slept)
			return Lock{}, r.lockCtxErr(ctx)
		}
		starving := time.Since(began) >= starveAfter
		cur := atomic.LoadUint32(w)
		owner := cur & lockOwner
		switch {
		case owner == 0 && (cur&lockHandoff == 0 || starving):
			// Free, or handed to waiters that starve, and we are one (a
			// waiter that has not waited starveAfter sleeps again: the
			// hand-off is for the one that set it, which wakeNext woke
			// too). Take it with the waiters flag set if we slept:
			// others may sleep too, and the wake-up that freed us
			// cleared it.
			keep := cur & lockWaiters
			if slept {
				keep = lockWaiters
			}
			if l, ok := r.take(cur, keep, want); ok {
				return r.acquired(l, cur&lockDied != 0)
			}
			continue
		case owner != 0 && owner != r.me.Load():
			st, err := r.judge(owner, deep)
			if err != nil {
				return Lock{}, err
			}
			if st == holderDead {
				if l, ok := r.takeOver(cur, want, deep); ok {
					return r.acquired(l, true)
				}
				continue
			}
		}

		// Sleep until the word changes, or for a probe.
		want := cur | lockWaiters
		if starving && owner != 0 {
			want |= lockHandoff
		}
		if want != cur {
			if !atomic.CompareAndSwapUint32(w, cur, want) {
				continue
			}
			cur = want
		}
		wait := probe
		if owner == 0 {
			wait = probeMin // a hand-off we may not take yet: look again soon
		}
		if dl, ok := ctx.Deadline(); ok {
			left := time.Until(dl)
			if left <= 0 {
				r.passWake(slept)
				return Lock{}, r.lockCtxErr(ctx)
			}
			wait = min(wait, left)
		}
		err := sys.FutexWait(w, cur, wait)
		slept = true
		deep = err == unix.ETIMEDOUT
		if err == unix.EFAULT {
			return Lock{}, r.err("lock", because("lock word is no longer mapped (region truncated?)", err, ErrCorrupt))
		}
		if err == unix.ETIMEDOUT {
			probe = min(probe*2, probeMax)
		}
	}
}

// take acquires the free lock whose word is cur, setting the flags in keep,
// and clears the hand-off.
func (r *Region) take(cur, keep, want uint32) (Lock, bool) {
	v := holding(cur, r.me.Load(), want)
	if !atomic.CompareAndSwapUint32(r.word, cur, v|cur&lockDied|keep) {
		return Lock{}, false
	}
	return Lock{r: r, v: v}, true
}

// holding is the holder and generation a new holding puts in the word cur:
// want, or the next generation for the slot+1 me.
func holding(cur, me, want uint32) uint32 {
	if want != 0 {
		return want
	}
	return nextGen(cur) | me
}

// takeOver takes the lock from the dead holder that the word cur names.
// While it does, this Region's slot names the holder's as a hazard, so that
// no process reuses the dead holder's slot between the judgement and the
// compare-and-swap.
func (r *Region) takeOver(cur, want uint32, deep bool) (Lock, bool) {
	hz := &r.slots[r.mine].Hazard
	setHazard(hz, cur&lockOwner)
	defer setHazard(hz, 0)
	if atomic.LoadUint32(r.word) != cur {
		return Lock{}, false
	}
	if st, _ := r.judge(cur&lockOwner, deep); st != holderDead {
		return Lock{}, false
	}
	v := holding(cur, r.me.Load(), want)
	if !atomic.CompareAndSwapUint32(r.word, cur, v|lockDied|cur&lockWaiters) {
		return Lock{}, false
	}
	return Lock{r: r, v: v}, true
}

// judge judges the holder in slot owner (slot+1) of the word (see
// judgeSlot for deep).
func (r *Region) judge(owner uint32, deep bool) (holderState, error) {
	if owner > uint32(len(r.slots)) {
		return 0, r.err("lock", because("lock word names user slot "+strconv.Itoa(int(owner)-1)+
			" of a table of "+strconv.Itoa(len(r.slots)), nil, ErrCorrupt))
	}
	return judgeSlot(&r.slots[owner-1], deep), nil
}

// passWake is called by a waiter that leaves without the lock: if it slept,
// the wake-up it got may have been the only one, so it wakes another waiter
// when the lock is free, or makes sure the holder will.
func (r *Region) passWake(slept bool) {
	if !slept {
		return
	}
	w := r.word
	for {
		cur := atomic.LoadUint32(w)
		switch {
		case cur&lockOwner == 0:
			r.wakeNext(cur | lockWaiters)
			return
		case cur&lockWaiters != 0 || atomic.CompareAndSwapUint32(w, cur, cur|lockWaiters):
			return
		}
	}
}

func (r *Region) acquired(l Lock, died bool) (Lock, error) {
	raceAcquire(unsafe.Pointer(&raceLock))
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

// Unlock releases the lock. It returns ErrNotLocked when l is not the
// current holding (a second Unlock of the same Lock, or a Lock value kept
// from an earlier holding, for the next 65,535 holdings through the lock
// at least), and ErrClosed when the region was closed. Of two Unlocks of
// one holding, exactly one succeeds.
func (l Lock) Unlock() error {
	r := l.r
	if r == nil {
		return &Error{Op: "unlock", Err: ErrNotLocked}
	}
	if !r.guardLock && !raceEnabled && r.pinned.Load() {
		procPin() // see fastLock
		if !r.closed.Load() && atomic.CompareAndSwapUint32(r.word, l.v, l.v&lockGen) {
			procUnpin()
			return nil
		}
		procUnpin()
	}
	return l.unlockEntered()
}

// unlockEntered is Unlock past the uncontended path.
func (l Lock) unlockEntered() error {
	r := l.r
	if !r.enter() {
		return r.err("unlock", ErrClosed)
	}
	defer r.leave()
	if r.guardLock {
		var err error
		if ferr := guard(func() { err = l.unlock() }); ferr != nil {
			return r.err("unlock", ferr)
		}
		return err
	}
	return l.unlock()
}

func (l Lock) unlock() error {
	raceRelease(unsafe.Pointer(&raceLock))
	if atomic.CompareAndSwapUint32(l.r.word, l.v, l.v&lockGen) {
		return nil
	}
	return l.unlockSlow()
}

// unlockSlow releases a holding whose word carries flags, or that went
// through Wait.
func (l Lock) unlockSlow() error {
	r := l.r
	raceRelease(unsafe.Pointer(&raceLock))
	w := r.word
	v := r.lk.current(l.v)
	for {
		cur := atomic.LoadUint32(w)
		if cur&(lockOwner|lockGen) != v {
			return r.err("unlock", ErrNotLocked)
		}
		if atomic.CompareAndSwapUint32(w, cur, free(cur)) {
			r.lk.forget(l.v)
			r.wakeNext(cur)
			return nil
		}
	}
}

// free is the word cur with its holder gone: the generation and the
// inconsistent and hand-off flags stay, and a hand-off only while a waiter
// may take it.
func free(cur uint32) uint32 {
	f := cur & (lockGen | lockDied | lockHandoff)
	if cur&lockWaiters == 0 {
		f &^= lockHandoff // nobody sleeps to take it
	}
	return f
}

// wakeNext wakes a waiter after a release of the word cur, if one may
// sleep. When none was asleep, a hand-off has nobody to go to: it ends, and
// the lock is free for anyone.
func (r *Region) wakeNext(cur uint32) {
	if cur&lockWaiters == 0 {
		return
	}
	// A hand-off wakes every sleeper: the kernel would wake one, perhaps
	// one that has not waited long enough to take it, while the waiter
	// that starves sleeps on.
	n := 1
	if cur&lockHandoff != 0 {
		n = 1 << 30
	}
	if n, _ := sys.FutexWakeN(r.word, n); n == 0 && cur&lockHandoff != 0 {
		for {
			c := atomic.LoadUint32(r.word)
			if c&(lockOwner|lockHandoff) != lockHandoff || atomic.CompareAndSwapUint32(r.word, c, c&^lockHandoff) {
				return
			}
		}
	}
}

// MarkConsistent records that the data guarded by the lock was repaired
// after ErrOwnerDead, so that later Locks succeed without it.
func (l Lock) MarkConsistent() error {
	r := l.r
	if r == nil {
		return &Error{Op: "markconsistent", Err: ErrNotLocked}
	}
	if !r.enter() {
		return r.err("markconsistent", ErrClosed)
	}
	defer r.leave()
	var err error
	if ferr := guard(func() {
		w := r.word
		v := r.lk.current(l.v)
		for {
			cur := atomic.LoadUint32(w)
			if cur&(lockOwner|lockGen) != v {
				err = r.err("markconsistent", ErrNotLocked)
				return
			}
			if cur&lockDied == 0 || atomic.CompareAndSwapUint32(w, cur, cur&^lockDied) {
				return
			}
		}
	}); ferr != nil {
		return r.err("markconsistent", ferr)
	}
	return err
}

// releaseHeld frees the lock if this Region holds it, at Close: the holding
// ends as Unlock would end it.
func (r *Region) releaseHeld() {
	if r.me.Load() == 0 {
		return
	}
	w := r.word
	for {
		cur := atomic.LoadUint32(w)
		if cur&lockOwner != r.me.Load() {
			return
		}
		if atomic.CompareAndSwapUint32(w, cur, free(cur)) {
			r.wakeNext(cur)
			return
		}
	}
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

// Guard runs f on the region's data with memory faults caught: when
// another process truncated the object under this mapping (POSIX and file
// regions can be truncated by any process that may write them), a touch of
// a page past the new end makes Guard return an error matching ErrCorrupt
// instead of killing the process. Only f's own goroutine is protected, and
// only while f runs: f must not keep data. Close waits for Guard to
// return. Use it for your accesses to data that peers you do not trust
// could cut short; memfd regions are sealed and SysV segments cannot
// shrink, so they need none.
func (r *Region) Guard(f func(data []byte)) error {
	if !r.enter() {
		return r.err("guard", ErrClosed)
	}
	defer r.leave()
	if err := guard(func() { f(r.data) }); err != nil {
		return r.err("guard", err)
	}
	return nil
}
