package sys

import (
	"errors"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Liveness words on the kernel's robust futex lists.
//
// A thread registers a list head with set_robust_list. When the thread exits,
// however it exits (SIGKILL, a crash, exec), the kernel walks the list and,
// for each 32-bit futex word whose low 30 bits hold the thread's ID, replaces
// the ID by FutexOwnerDied (keeping FutexWaiters) and wakes one waiter on
// the word. The kernel does this in any PID namespace and before the thread
// ID can be reused, so a word that holds a live thread's ID is alive and a
// word the kernel marked is dead: nothing needs to be judged from /proc.
//
// glibc keeps the list of the mutexes a thread holds and links and unlinks
// entries at every lock and unlock. Here the word does not say "this thread
// holds a lock" but "this process is alive": Arm stores the ID of one of the
// process's guardian threads (OS threads that do nothing but exist as long
// as the process does) in a word of the caller's and links the word's entry
// on that guardian's list once; Disarm unlinks it. The lock itself never
// touches the list, so locking costs no system call and a lock may be
// released by any goroutine.
//
// The list lives partly in memory that other processes can write: an
// entry's link is the 8 bytes at RobustEntryOffset after its word, in the
// shared mapping, because the kernel finds the word from the entry. This
// package never reads a link back: it keeps each guardian's list privately
// and only stores into the links what it computed itself, so a peer that
// rewrites them cannot make this process write anywhere. (It can still cut
// the kernel's walk at this process's death, which a peer able to write the
// lock word could disturb in simpler ways.)

// Futex word bits, as the kernel's robust futexes use them.
const (
	FutexWaiters   = 1 << 31   // a waiter may sleep on the word
	FutexOwnerDied = 1 << 30   // set by the kernel when the owner died
	FutexTIDMask   = 1<<30 - 1 // the owner's thread ID
)

// RobustEntryOffset is where a word's list entry lies, in bytes after the
// word. The entry is one pointer; 8 bytes are reserved for it whatever the
// pointer size, so that 32- and 64-bit processes share one layout.
const RobustEntryOffset = 8

// guardianEntries bounds the entries of one guardian's list: the kernel
// walks at most 2048 (ROBUST_LIST_LIMIT) and stops there.
const guardianEntries = 1024

// ErrNoRobustList is returned by Arm when the kernel does not let this
// process register a robust futex list (a seccomp filter, a kernel without
// robust futexes).
var ErrNoRobustList = errors.New("kernel robust futex lists are not available")

// robustHead is the kernel's struct robust_list_head.
type robustHead struct {
	list    uintptr // first entry, or the head's own address when empty
	offset  int     // from an entry to its futex word (a C long)
	pending uintptr // entry whose word is changing, or 0
}

// guardian is an OS thread that exists while the process does, and its list.
type guardian struct {
	head  *robustHead // in the Go heap, which does not move
	tid   uint32
	first *entry // the private copy of the list, most recent first
	n     int
}

type entry struct {
	addr       uintptr // the entry in the caller's memory: the word's address + RobustEntryOffset
	prev, next *entry
	g          *guardian
}

var (
	robustMu  sync.Mutex
	guardians []*guardian
	robustErr error // set when registration failed once: every later Arm fails too
)

// Armed is a word armed by Arm.
type Armed struct{ e *entry }

// Arm stores in *w the thread ID of one of this process's guardian threads
// and links w's entry on that thread's robust list, so that when this
// process dies or execs the kernel sets FutexOwnerDied in *w. The caller
// owns *w (no other process may change it until Disarm) and the 8 bytes at
// RobustEntryOffset after it, and must call Disarm before that memory goes.
// Arm returns ErrNoRobustList, having stored nothing, when the kernel
// refuses a robust list.
func Arm(w *uint32) (Armed, error) {
	robustMu.Lock()
	defer robustMu.Unlock()
	g, err := freeGuardian()
	if err != nil {
		return Armed{}, err
	}
	e := &entry{addr: uintptr(unsafe.Pointer(w)) + RobustEntryOffset, g: g}
	next := uintptr(unsafe.Pointer(g.head))
	if g.first != nil {
		next = g.first.addr
	}
	// The word changes with the entry pending, so that a death between
	// the store and the link still marks it.
	atomic.StoreUintptr(&g.head.pending, e.addr)
	if faulted(func() {
		atomic.StoreUint32(w, g.tid)
		storeLink(e.addr, next)
	}) {
		atomic.StoreUintptr(&g.head.pending, 0)
		return Armed{}, errFault
	}
	if g.first != nil {
		g.first.prev = e
	}
	e.next = g.first
	g.first = e
	g.n++
	atomic.StoreUintptr(&g.head.list, e.addr)
	atomic.StoreUintptr(&g.head.pending, 0)
	return Armed{e}, nil
}

// errFault is returned by Arm when the word's memory faulted (its object
// was truncated).
var errFault = errors.New("memory fault arming a liveness word (object truncated?)")

// Disarm unlinks the word's entry and stores v in the word, returning what
// the word held just before. It reports tampered as true when the entry's
// link in shared memory was not what this process wrote there (another
// process rewrote it); the list is repaired from the private copy either
// way. When the word's memory faults (its object was truncated), the entry
// is unlinked all the same and old is 0.
func (a Armed) Disarm(v uint32) (old uint32, tampered bool) {
	e := a.e
	if e == nil {
		return 0, false
	}
	robustMu.Lock()
	defer robustMu.Unlock()
	g := e.g
	if g == nil {
		return 0, false // disarmed already
	}
	next := uintptr(unsafe.Pointer(g.head))
	if e.next != nil {
		next = e.next.addr
	}
	// The private list first: whatever faults below, the entry is gone
	// from it.
	if e.prev == nil {
		g.first = e.next
	} else {
		e.prev.next = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	}
	g.n--
	e.g = nil
	atomic.StoreUintptr(&g.head.pending, e.addr)
	if e.prev == nil {
		atomic.StoreUintptr(&g.head.list, next)
	} else {
		// The previous entry lies in another mapping, which a peer may
		// have truncated; the kernel's walk would stop there anyway.
		faulted(func() { storeLink(e.prev.addr, next) })
	}
	faulted(func() {
		tampered = loadLink(e.addr) != next
		old = atomic.SwapUint32((*uint32)(ptr(e.addr-RobustEntryOffset)), v)
	})
	atomic.StoreUintptr(&g.head.pending, 0)
	return old, tampered
}

// faulted runs f and reports whether it hit a memory fault (a page of a
// truncated object), which it swallows; any other panic goes on.
func faulted(f func()) (hit bool) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if p := recover(); p != nil {
			if _, ok := p.(interface{ Addr() uintptr }); !ok {
				panic(p)
			}
			hit = true
		}
	}()
	f()
	return false
}

// TID returns the guardian thread ID that Arm stored.
func (a Armed) TID() uint32 {
	if a.e == nil || a.e.g == nil {
		return 0
	}
	return a.e.g.tid
}

// RefuseRobustLists makes every later Arm fail with ErrNoRobustList, as on
// a kernel that refuses robust lists, so that tests can exercise the
// fallback. It returns a function that undoes it.
func RefuseRobustLists() (undo func()) {
	robustMu.Lock()
	defer robustMu.Unlock()
	refused = true
	return func() {
		robustMu.Lock()
		defer robustMu.Unlock()
		refused = false
	}
}

var refused bool

// freeGuardian returns a guardian with room on its list, starting one when
// none has room. The caller holds robustMu.
func freeGuardian() (*guardian, error) {
	if refused {
		return nil, ErrNoRobustList
	}
	for _, g := range guardians {
		if g.n < guardianEntries {
			return g, nil
		}
	}
	if robustErr != nil {
		return nil, robustErr
	}
	g, err := startGuardian()
	if err != nil {
		robustErr = err
		return nil, err
	}
	guardians = append(guardians, g)
	return g, nil
}

// startGuardian starts an OS thread that registers an empty robust list and
// then sleeps for the life of the process. Its goroutine never returns, so
// the Go runtime never ends or reuses the thread.
func startGuardian() (*guardian, error) {
	type result struct {
		g   *guardian
		err error
	}
	done := make(chan result)
	go func() {
		runtime.LockOSThread()
		h := &robustHead{offset: -RobustEntryOffset}
		h.list = uintptr(unsafe.Pointer(h))
		_, _, e := unix.RawSyscall(unix.SYS_SET_ROBUST_LIST, uintptr(unsafe.Pointer(h)), unsafe.Sizeof(*h), 0)
		if e != 0 {
			done <- result{err: errors.Join(ErrNoRobustList, e)}
			return // the thread ends with the goroutine: it holds nothing
		}
		done <- result{g: &guardian{head: h, tid: uint32(unix.Gettid())}}
		select {}
	}()
	r := <-done
	return r.g, r.err
}

func storeLink(addr, v uintptr)     { atomic.StoreUintptr((*uintptr)(ptr(addr)), v) }
func loadLink(addr uintptr) uintptr { return atomic.LoadUintptr((*uintptr)(ptr(addr))) }

// ptr turns an address this package computed back into a pointer: entries
// lie in mappings outside the Go heap, which the garbage collector ignores.
func ptr(addr uintptr) unsafe.Pointer {
	return *(*unsafe.Pointer)(unsafe.Pointer(&addr))
}
