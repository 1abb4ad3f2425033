package shm

import (
	"context"
	"errors"
	"slices"
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

// Wait sleeps while the word holds old: it returns nil once a Wake woke it
// or it finds the word holding something else (spurious wake-ups are
// possible, so check the word again), or ctx's error (matching ErrTimeout
// when its deadline passed) when ctx ends first. It returns at once when
// the word does not hold old. As with futex(2), a change of the word
// reaches a sleeping Wait through Wake: store, then Wake.
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

// Waiting for a word of shared memory to change. The goroutines of one
// process that wait on one word form a group; one of them, the leader,
// sleeps in FUTEX_WAIT (one OS thread for the group) and, when it wakes,
// wakes the others (its followers) through channels; when it leaves (its
// context ended), it hands the lead to a follower. Close cancels the groups
// of its mapping before the memory goes.
//
// A lone waiter, the common case, leads at once: it allocates its group
// (without a map) and takes its waiter, channel included, from a pool.

type group struct {
	addr      *uint32
	followers map[*waiter]struct{} // not the leader; nil until one follows
	leader    *waiter              // asleep in the kernel, or about to be
	leadDone  <-chan struct{}      // the leader's ctx.Done()
	cancelled error                // set by Close: ErrClosed
}

type waiter struct {
	old uint32
	ch  chan waitMsg // buffered: at most one message is ever pending
	g   *group       // nil when satisfied at once
}

type waitMsg struct {
	lead bool  // become the leader
	err  error // with lead false: nil when woken, or why the wait ended
}

var groups struct {
	mu sync.Mutex
	m  map[*uint32]*group
}

// waiters holds waiters that are in no group and have no message pending.
var waiters = sync.Pool{New: func() any { return &waiter{ch: make(chan waitMsg, 1)} }}

// waitWord waits until *addr does not hold old, a FUTEX_WAKE woke the
// group's leader, or ctx ends.
func waitWord(ctx context.Context, addr *uint32, old uint32) error {
	return watch(addr, old).wait(ctx)
}

// watch registers a wait for *addr to change from old (satisfied at once
// when *addr does not hold old); wait blocks for it, or abandon drops it.
// In between, a change or a wake-up is not lost.
func watch(addr *uint32, old uint32) *waiter {
	wt := waiters.Get().(*waiter)
	wt.old = old
	groups.mu.Lock()
	defer groups.mu.Unlock()
	if atomic.LoadUint32(addr) != old {
		return wt
	}
	if groups.m == nil {
		groups.m = map[*uint32]*group{}
	}
	g := groups.m[addr]
	if g == nil {
		g = &group{addr: addr}
		groups.m[addr] = g
	}
	wt.g = g
	if g.leader == nil {
		g.leader = wt // no follower either (see handOff)
	} else {
		if g.followers == nil {
			g.followers = map[*waiter]struct{}{}
		}
		g.followers[wt] = struct{}{}
	}
	return wt
}

// release puts wt, in no group and with no message pending, back in the
// pool.
func (wt *waiter) release() {
	wt.g = nil
	waiters.Put(wt)
}

// wait blocks until the waiter is woken or ctx ends. The caller does not
// hold groups.mu, and does not use wt after.
func (wt *waiter) wait(ctx context.Context) error {
	if wt.g == nil {
		wt.release()
		return nil
	}
	err := wt.waitGroup(ctx)
	wt.release()
	return err
}

func (wt *waiter) waitGroup(ctx context.Context) error {
	g := wt.g
	for {
		groups.mu.Lock()
		if g.leader == wt {
			select {
			case <-wt.ch: // handOff's message
			default:
			}
			groups.mu.Unlock()
			return wt.lead(ctx)
		}
		groups.mu.Unlock()
		select {
		case m := <-wt.ch:
			if !m.lead {
				return m.err
			}
			// The lead came to us: loop to take it.
		case <-ctx.Done():
			groups.mu.Lock()
			var m waitMsg
			got := false
			select {
			case m = <-wt.ch:
				got = true
			default:
			}
			delete(g.followers, wt)
			if g.leader == wt { // handed to us meanwhile
				got = false
				g.leader = nil
				g.handOff()
			}
			g.drop()
			groups.mu.Unlock()
			if got {
				return m.err // woken meanwhile: that counts
			}
			return ctxError(ctx)
		}
	}
}

// abandon drops a wait that watch registered and that wait will not block
// for.
func (wt *waiter) abandon() {
	if g := wt.g; g != nil {
		groups.mu.Lock()
		select {
		case <-wt.ch:
		default:
		}
		delete(g.followers, wt)
		if g.leader == wt {
			g.leader = nil
			g.handOff()
		}
		g.drop()
		groups.mu.Unlock()
	}
	wt.release()
}

// lead sleeps in the kernel for the group, wakes the others when it wakes,
// and returns for itself. The word is not touched once the leader has left
// (then Close may unmap it).
func (wt *waiter) lead(ctx context.Context) error {
	g := wt.g
	done := ctx.Done()
	var cw *ctxWatch
	leave := func() { // with groups.mu held
		if cw != nil {
			cw.users--
		}
	}
	for {
		groups.mu.Lock()
		if done != nil && cw == nil {
			cw = watchCtx(ctx, done)
			cw.users++
		}
		g.leadDone = done
		if g.cancelled != nil {
			err := g.cancelled
			g.leader = nil
			g.drop()
			leave()
			groups.mu.Unlock()
			return err
		}
		cur := atomic.LoadUint32(g.addr) // mapped: Close cancels us first
		if wt.old != cur {
			g.wakeAll(nil)
			leave()
			groups.mu.Unlock()
			return nil
		}
		for w := range g.followers {
			if w.old != cur {
				delete(g.followers, w)
				w.ch <- waitMsg{}
			}
		}
		if ctx.Err() != nil {
			g.leader = nil
			g.handOff()
			g.drop()
			leave()
			groups.mu.Unlock()
			return ctxError(ctx)
		}
		groups.mu.Unlock()
		// No timeout: an hrtimer per sleep costs about 0.5 us a round
		// trip; a change of the word comes with a Wake (see Wait), and
		// ctx and Close wake the sleeper themselves.
		err := sys.FutexWait(g.addr, cur, 0)
		if err == nil {
			// Woken, by a Wake that need not have changed the word (or by
			// our context's end): every waiter wakes and checks its own
			// condition.
			groups.mu.Lock()
			if g.cancelled == nil {
				same := atomic.LoadUint32(g.addr) == wt.old
				g.wakeAll(nil)
				leave()
				groups.mu.Unlock()
				if same && ctx.Err() != nil {
					return ctxError(ctx)
				}
				return nil
			}
			groups.mu.Unlock()
		} else if err == unix.EFAULT {
			groups.mu.Lock()
			g.cancel(because("the word is no longer mapped", err, ErrClosed))
			groups.mu.Unlock()
		}
	}
}

// wakeAll ends every wait of the group (the leader's too) with err. The
// caller holds groups.mu.
func (g *group) wakeAll(err error) {
	for w := range g.followers {
		delete(g.followers, w)
		w.ch <- waitMsg{err: err}
	}
	g.leader = nil
	g.drop()
}

// handOff gives the lead to a follower, if any is left. The caller holds
// groups.mu and has cleared g.leader. So a group without a leader has no
// follower either.
func (g *group) handOff() {
	for w := range g.followers {
		delete(g.followers, w)
		g.leader = w
		w.ch <- waitMsg{lead: true}
		return
	}
}

// drop forgets an empty group. The caller holds groups.mu.
func (g *group) drop() {
	if len(g.followers) == 0 && g.leader == nil && groups.m[g.addr] == g {
		delete(groups.m, g.addr)
	}
}

// cancel ends every wait of the group but the leader's with err, and makes
// the leader leave when it wakes. The caller holds groups.mu.
func (g *group) cancel(err error) {
	g.cancelled = err
	for w := range g.followers {
		delete(g.followers, w)
		w.ch <- waitMsg{err: err}
	}
	if groups.m[g.addr] == g {
		delete(groups.m, g.addr) // later waits start a new group
	}
}

// The end of a leader's context wakes it: context.AfterFunc calls wakeLeaders
// for the context. A registration stays for the next waits with the same
// context (a loop of waits usually has one), up to ctxWatchMax contexts:
// registering costs more than a round trip's sleep and wake-up. Those kept
// are held until they end or newer ones push them out; one that a leader
// uses stays.

const ctxWatchMax = 4

type ctxWatch struct {
	done  <-chan struct{}
	stop  func() bool
	users int // leaders that rely on it
}

// ctxWatches, newest first, under groups.mu.
var ctxWatches []*ctxWatch

// watchCtx makes sure that the end of ctx, whose Done channel is done, wakes
// the leaders that wait with it (those that count themselves in its users).
// The caller holds groups.mu.
func watchCtx(ctx context.Context, done <-chan struct{}) *ctxWatch {
	for i, w := range ctxWatches {
		if w.done == done {
			if i > 0 {
				copy(ctxWatches[1:i+1], ctxWatches[:i])
				ctxWatches[0] = w
			}
			return w
		}
	}
	w := &ctxWatch{done: done}
	w.stop = context.AfterFunc(ctx, func() { wakeLeaders(w) })
	if len(ctxWatches) >= ctxWatchMax {
		for i := len(ctxWatches) - 1; i >= 0; i-- {
			if ctxWatches[i].users == 0 {
				ctxWatches[i].stop()
				ctxWatches = slices.Delete(ctxWatches, i, i+1)
				break
			}
		}
	}
	ctxWatches = slices.Insert(ctxWatches, 0, w)
	return w
}

// wakeLeaders wakes the leaders whose context w watched, which has ended
// (and, spuriously, other processes' sleepers on their words, which look
// again), until none is left: a leader that was about to sleep when the
// first wake-up came sleeps through it.
func wakeLeaders(w *ctxWatch) {
	for wait := 20 * time.Microsecond; ; wait = min(2*wait, time.Millisecond) {
		groups.mu.Lock()
		if i := slices.Index(ctxWatches, w); i >= 0 {
			ctxWatches = slices.Delete(ctxWatches, i, i+1)
		}
		left := false
		for _, g := range groups.m {
			if g.leader != nil && g.leadDone == w.done {
				sys.FutexWake(g.addr, 1<<30) // mapped while in groups.m
				left = true
			}
		}
		groups.mu.Unlock()
		if !left {
			return
		}
		time.Sleep(wait)
	}
}

func ctxError(ctx context.Context) error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		return because("", err, ErrTimeout)
	}
	return err
}

// cancelWatchers ends the waits on words within mem, with ErrClosed, and
// returns once no leader sleeps on them or may touch them.
func cancelWatchers(mem []byte) {
	if len(mem) == 0 {
		return
	}
	lo := uintptr(unsafe.Pointer(&mem[0]))
	hi := lo + uintptr(len(mem))
	var gs []*group
	groups.mu.Lock()
	for a, g := range groups.m {
		if p := uintptr(unsafe.Pointer(a)); p >= lo && p < hi {
			g.cancel(ErrClosed)
			gs = append(gs, g)
		}
	}
	groups.mu.Unlock()
	for _, g := range gs {
		// The leader may be on its way into FUTEX_WAIT: wake it until it
		// has left.
		for wait := 20 * time.Microsecond; ; wait = min(2*wait, time.Millisecond) {
			groups.mu.Lock()
			gone := g.leader == nil
			groups.mu.Unlock()
			if gone {
				break
			}
			sys.FutexWake(g.addr, 1<<30)
			time.Sleep(wait)
		}
	}
}
