package sys

import (
	"errors"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Robust futex lists. A thread registers a list head with set_robust_list;
// while it holds a lock, the lock's entry is on that list. When the thread
// exits, however it exits, the kernel walks the list and, for each futex
// word that still holds the thread's ID, sets the owner-died bit (1<<30) and
// wakes a waiter. That works across PID namespaces, which a PID probe cannot.
//
// Under cgo, glibc registers a list for every thread it starts and links
// its robust pthread mutexes there. Our entries use glibc's layout (a
// {prev, next} pair whose next field lies RobustOffset bytes after... before
// the futex word: word = &next + RobustOffset) and its linking protocol, so
// they can share glibc's list; without glibc we register our own head.

// RobustOffset is the futex_offset of glibc's lists on 64-bit Linux: from an
// entry's next field to its futex word.
const RobustOffset = -32

// RobustHead is the kernel's struct robust_list_head.
type RobustHead struct {
	List    uintptr // first entry's next field; the head's own address when empty
	Offset  int64   // from an entry to its futex word
	Pending uintptr // entry being acquired or released, or 0
}

// RobustEntry is an entry's pair of links, as in glibc's __pthread_list_t.
type RobustEntry struct {
	Prev uintptr // the previous entry's Next field, or the head
	Next uintptr // the next entry's Next field, or the head
}

var (
	robustMu    sync.Mutex
	robustHeads = map[uintptr]robustThread{} // heads we registered, by address
)

type robustThread struct {
	head *RobustHead
	tid  uint32
}

// ErrForeignRobustList is returned when the calling thread's robust list does
// not use glibc's layout.
var ErrForeignRobustList = errors.New("this thread's robust futex list has an unknown layout")

// ThreadRobust returns the calling thread's robust list head and thread ID,
// registering a head when the thread has none. The caller must have locked
// its goroutine to the thread.
func ThreadRobust() (*RobustHead, uint32, error) {
	var cur, size uintptr
	if _, _, e := unix.RawSyscall(unix.SYS_GET_ROBUST_LIST, 0, uintptr(unsafe.Pointer(&cur)), uintptr(unsafe.Pointer(&size))); e != 0 {
		return nil, 0, e
	}
	if cur != 0 {
		robustMu.Lock()
		t, ours := robustHeads[cur]
		robustMu.Unlock()
		if ours {
			return t.head, t.tid, nil
		}
		// A C library's head, in its thread's control block.
		h := (*RobustHead)(ptr(cur))
		if h.Offset != RobustOffset {
			return nil, 0, ErrForeignRobustList
		}
		return h, uint32(unix.Gettid()), nil
	}
	h := &RobustHead{Offset: RobustOffset}
	h.List = uintptr(unsafe.Pointer(h))
	if _, _, e := unix.RawSyscall(unix.SYS_SET_ROBUST_LIST, uintptr(unsafe.Pointer(h)), unsafe.Sizeof(*h), 0); e != 0 {
		return nil, 0, e
	}
	t := robustThread{head: h, tid: uint32(unix.Gettid())}
	// Heads live as long as the process: the kernel may read a head until
	// its thread exits, and the map keeps it from the garbage collector.
	robustMu.Lock()
	robustHeads[uintptr(unsafe.Pointer(h))] = t
	robustMu.Unlock()
	return h, t.tid, nil
}

// Link puts e at the front of the list, as glibc's ENQUEUE_MUTEX does.
func (h *RobustHead) Link(e *RobustEntry) {
	first := h.List &^ 1
	headAddr := uintptr(unsafe.Pointer(h))
	if first != headAddr {
		prevOf(first).Prev = uintptr(unsafe.Pointer(&e.Next))
	}
	e.Next = h.List
	e.Prev = headAddr
	h.List = uintptr(unsafe.Pointer(&e.Next))
}

// Unlink removes e from the list, as glibc's DEQUEUE_MUTEX does.
func (h *RobustHead) Unlink(e *RobustEntry) {
	next := e.Next &^ 1
	if next != uintptr(unsafe.Pointer(h)) {
		prevOf(next).Prev = e.Prev
	}
	*(*uintptr)(ptr(e.Prev)) = e.Next // the previous Next, or the head's List
	e.Prev, e.Next = 0, 0
}

// prevOf returns the entry whose Next field is at addr.
func prevOf(addr uintptr) *RobustEntry {
	return (*RobustEntry)(ptr(addr - unsafe.Offsetof(RobustEntry{}.Next)))
}

// ptr turns an address the kernel or a list holds back into a pointer. The
// addresses are of memory outside the Go heap (a mapping, a C thread's
// control block) or of heads that robustHeads keeps alive.
func ptr(addr uintptr) unsafe.Pointer {
	return *(*unsafe.Pointer)(unsafe.Pointer(&addr))
}
