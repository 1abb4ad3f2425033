package shm

import (
	"context"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"unsafe"

	"github.com/shmgo/shm/internal/sys"
)

// WithRobustLock makes the new region's lock a kernel robust futex: the lock
// word holds the holder's thread ID, and the lock is on the holder thread's
// robust list while held, so that when the holder dies (SIGKILL, a crash,
// its thread ending) the kernel itself marks the lock and wakes a waiter,
// which gets ErrOwnerDead.
//
// The default lock finds dead holders by probing their PID, which works only
// for holders in the waiter's own PID namespace; a robust lock also recovers
// from holders in other PID namespaces (other containers). It costs a
// system call or two per Lock, and the goroutine stays locked to its OS
// thread from Lock to Unlock, so the goroutine that locks must unlock. Every
// process that opens the region uses the mode its creator chose.
func WithRobustLock() Option {
	return func(o *options) error {
		o.robust = true
		return nil
	}
}

// The lock line's links must lie where glibc's robust mutexes have theirs.
var _ [0]struct{} = [int(unsafe.Offsetof(lockLine{}.RobustNext)) - int(unsafe.Offsetof(lockLine{}.Word)) + sys.RobustOffset]struct{}{}

func (ll *lockLine) entry() *sys.RobustEntry {
	return (*sys.RobustEntry)(unsafe.Pointer(&ll.RobustPrev))
}

func (r *Region) lockRobust(ctx context.Context, try bool) (l Lock, err error) {
	runtime.LockOSThread()
	head, tid, err := sys.ThreadRobust()
	if err != nil {
		runtime.UnlockOSThread()
		return Lock{}, r.err("lock", because("", err, ErrInvalidOption))
	}
	ll := &r.hdr.Lock
	e := uintptr(unsafe.Pointer(&ll.RobustNext))
	if r.guard {
		old := debug.SetPanicOnFault(true)
		defer func() {
			debug.SetPanicOnFault(old)
			if p := recover(); p != nil {
				head.Pending = 0
				runtime.UnlockOSThread()
				l, err = Lock{}, r.err("lock", faultError(p))
			}
		}()
	}
	head.Pending = e
	if atomic.CompareAndSwapUint32(&ll.Word, 0, tid) {
		l = r.acquired(false)
	} else {
		head.Pending = 0 // not while we wait: see lockSlow
		l, err = r.lockSlow(ctx, try, tid, head)
	}
	if l.r == nil {
		head.Pending = 0
		runtime.UnlockOSThread()
		return l, err
	}
	head.Link(ll.entry())
	head.Pending = 0
	r.lk.head = head
	return l, err
}

func (r *Region) unlockRobust(died bool, head *sys.RobustHead) (err error) {
	ll := &r.hdr.Lock
	if r.guard {
		old := debug.SetPanicOnFault(true)
		defer func() {
			debug.SetPanicOnFault(old)
			if p := recover(); p != nil {
				err = r.err("unlock", faultError(p))
			}
		}()
	}
	defer runtime.UnlockOSThread()
	head.Pending = uintptr(unsafe.Pointer(&ll.RobustNext))
	head.Unlink(ll.entry())
	r.unlockWord(died)
	head.Pending = 0
	return nil
}
