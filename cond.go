package shm

import (
	"context"
	"io/fs"
	"sync/atomic"

	"github.com/shmgo/shm/internal/sys"
)

// The region's condition, on its lock, like a pthread_cond_t used with a
// process-shared mutex: a sequence word that Signal and Broadcast advance
// and a count of the waiters, so that they enter the kernel only when
// someone may sleep.

// Wait releases the lock, sleeps until a Signal or Broadcast (in any
// process) or until ctx ends, then takes the lock again: it returns holding
// the lock in every case, with l still its Lock value, as
// pthread_cond_timedwait does. Like sync.Cond, it may wake without a
// Signal: call it in a loop that checks the condition.
//
// It returns nil when woken, ctx's error (matching ErrTimeout on a
// deadline) when ctx ended first, ErrOwnerDead when the lock was taken
// over from a holder that died meanwhile (repair, then MarkConsistent), and
// ErrNotLocked when l is not the current holding. Only after Close does it
// return without the lock, with ErrClosed.
//
// A Signal after Wait has released the lock always wakes it: the wait
// starts from the sequence it read while holding the lock. A waiter killed
// while it waits blocks nobody. Goroutines of one process that wait share
// one OS thread.
func (l Lock) Wait(ctx context.Context) error {
	r := l.r
	if r == nil {
		return &Error{Op: "wait", Err: ErrNotLocked}
	}
	if !r.enter() {
		return r.err("wait", ErrClosed)
	}
	defer r.leave()
	if r.guardLock {
		var err error
		if ferr := guard(func() { err = l.wait(ctx) }); ferr != nil {
			return r.err("wait", ferr)
		}
		return err
	}
	return l.wait(ctx)
}

func (l Lock) wait(ctx context.Context) error {
	r := l.r
	cur := r.lk.current(l.v)
	if atomic.LoadUint32(r.word)&(lockOwner|lockGen) != cur {
		return r.err("wait", ErrNotLocked)
	}
	c := &r.hdr.Cond
	mine := &r.slots[r.mine].Hazard
	atomic.AddUint32(&c.Waiters, 1)
	atomic.AddUint32(mine, 1<<16) // so that our death uncounts us
	done := func() {
		atomic.AddUint32(mine, ^uint32(1<<16-1)) // -1<<16
		atomic.AddUint32(&c.Waiters, ^uint32(0))
	}
	wt := watch(&c.Seq, atomic.LoadUint32(&c.Seq))
	if err := (Lock{r: r, v: cur}).unlock(); err != nil {
		wt.abandon()
		done()
		return err
	}
	werr := wt.wait(ctx)
	done()
	if r.closed.Load() {
		return r.err("wait", ErrClosed)
	}
	// Take the lock back, whatever ctx says, as a new holding (its
	// generation moves on, so that no Lock of a holding between is ever
	// valid again), which l stands for from now on.
	nl, lerr := r.lockAs(context.Background(), false, 0)
	if nl.r != nil {
		r.lk.remap(l.v, nl.v)
	}
	if lerr != nil {
		return lerr
	}
	if werr != nil {
		return r.err("wait", werr)
	}
	return nil
}

// Signal wakes a waiter of the region's condition (Lock.Wait), in any
// process; with nobody waiting it does nothing, and makes no system call.
// The caller need not hold the lock.
func (r *Region) Signal() error { return r.notify("signal", 1) }

// Broadcast wakes every waiter of the region's condition that was waiting
// when it was called, in every process.
func (r *Region) Broadcast() error { return r.notify("broadcast", 1<<30) }

func (r *Region) notify(op string, n int) error {
	if !r.enter() {
		return r.err(op, ErrClosed)
	}
	defer r.leave()
	if r.readOnly {
		return r.err(op, because("a read-only Region cannot notify", nil, fs.ErrPermission))
	}
	c := &r.hdr.Cond
	if atomic.LoadUint32(&c.Waiters) == 0 {
		return nil
	}
	atomic.AddUint32(&c.Seq, 1)
	sys.FutexWake(&c.Seq, n)
	return nil
}
