// Package sys holds the thin Linux system-call wrappers that package shm and
// its backends share: futexes, space reservation, exclusive publication of a
// file under a name, and process identity (PID, start time, PID namespace).
package sys

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Futex operations (golang.org/x/sys has no constants for them). Never
// FUTEX_PRIVATE_FLAG: the words live in memory shared between processes.
const (
	futexWait = 0
	futexWake = 1
)

// FutexWait sleeps while *addr == val, for at most d (d <= 0: no limit).
// It returns nil when woken (or spuriously), unix.ETIMEDOUT on timeout,
// unix.EAGAIN when *addr != val, unix.EINTR on a signal; callers treat all
// but EFAULT as "look again".
func FutexWait(addr *uint32, val uint32, d time.Duration) error {
	var tsp unsafe.Pointer
	var ts unix.Timespec
	if d > 0 {
		ts = unix.NsecToTimespec(int64(d))
		tsp = unsafe.Pointer(&ts)
	}
	_, _, e := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWait, uintptr(val), uintptr(tsp), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// FutexWake wakes up to n waiters on addr.
func FutexWake(addr *uint32, n int) error {
	_, err := FutexWakeN(addr, n)
	return err
}

// FutexWakeN wakes up to n waiters on addr and returns how many it woke.
func FutexWakeN(addr *uint32, n int) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWake, uintptr(n), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// Reserve allocates the pages of fd's first size bytes (fallocate mode 0),
// so that a full tmpfs fails here with ENOSPC rather than with SIGBUS on the
// first touch. The file's size becomes at least size.
func Reserve(fd int, size int64) error {
	for {
		err := unix.Fallocate(fd, 0, 0, size)
		if err != unix.EINTR {
			return err
		}
	}
}

// PublishNoReplace gives the file at tmp the name final, atomically and only
// if final does not exist (renameat2 RENAME_NOREPLACE, else link and
// unlink). It returns an error matching fs.ErrExist when final exists; tmp is
// then left in place.
func PublishNoReplace(tmp, final string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_NOREPLACE)
	if err != unix.EINVAL && err != unix.ENOSYS {
		return err
	}
	// A filesystem without RENAME_NOREPLACE: link is exclusive too.
	if err := unix.Link(tmp, final); err != nil {
		return err
	}
	return unix.Unlink(tmp)
}

// Identity identifies a process across PID reuse and PID namespaces.
type Identity struct {
	PID   int    // in the namespace of the process that recorded it
	Start uint64 // start time in clock ticks since boot (/proc/PID/stat field 22)
	NS    uint64 // inode of its PID namespace (0 when unknown)
}

var (
	selfOnce sync.Once
	self     Identity
	procOK   bool // /proc shows this process's PID namespace
)

// Self returns this process's identity, read once.
func Self() Identity {
	selfOnce.Do(func() {
		self.PID = os.Getpid()
		if st, err := readStat("self"); err == nil {
			self.Start = st.start
			procOK = st.pid == self.PID
		}
		self.NS = nsOf("self")
	})
	return self
}

func nsOf(pid string) uint64 {
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+pid+"/ns/pid", &st); err != nil {
		return 0
	}
	return st.Ino
}

type procStat struct {
	pid   int
	state byte
	start uint64
}

func readStat(pid string) (procStat, error) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return procStat{}, err
	}
	// pid (comm) state ppid ... ; comm may hold spaces and parentheses.
	var st procStat
	sp := bytes.IndexByte(b, ' ')
	rp := bytes.LastIndexByte(b, ')')
	if sp < 0 || rp < 0 || rp+2 >= len(b) {
		return st, errors.New("malformed /proc stat")
	}
	st.pid, _ = strconv.Atoi(string(b[:sp]))
	f := bytes.Fields(b[rp+2:])
	// f[0] is field 3 (state); start time is field 22.
	if len(f) < 20 {
		return st, errors.New("malformed /proc stat")
	}
	st.state = f[0][0]
	st.start, err = strconv.ParseUint(string(f[19]), 10, 64)
	return st, err
}

// Liveness is what can be said about a recorded process.
type Liveness int

// The order is package shm's (shm.LivenessUnknown, shm.Alive, shm.Dead):
// the zero value claims nothing.
const (
	Unknown Liveness = iota // cannot be judged from here (another PID namespace, no /proc)
	Alive                   // running (or stopped), same process as recorded
	Dead                    // gone, a zombie, or its PID now belongs to another process
)

// Check tells whether the process id recorded is still alive. A start time
// of 0 in id means "not recorded": only the PID is checked.
//
// It says Dead only on proof: the kernel has no process with the PID
// (kill(pid, 0) fails with ESRCH), the process with the PID started at
// another time (the PID was reused), or the process is a zombie whose every
// thread has exited. A process that /proc hides (hidepid) or that another
// uid owns is not dead: it is Alive when kill(2) finds it and its start
// time cannot be read, and the caller cannot tell it from the recorded one,
// so such a process is reported Unknown.
func Check(id Identity) Liveness {
	me := Self()
	if id.PID <= 0 {
		return Unknown
	}
	// A PID means something here only when it was recorded in our own PID
	// namespace.
	if id.NS == 0 || id.NS != me.NS {
		return Unknown
	}
	if id.PID == me.PID {
		if id.Start == 0 || id.Start == me.Start || me.Start == 0 {
			return Alive
		}
		return Dead
	}
	switch err := unix.Kill(id.PID, 0); err {
	case unix.ESRCH:
		return Dead
	case nil, unix.EPERM:
	default:
		return Unknown
	}
	if !procOK {
		return Unknown // /proc shows another namespace: no start time to compare
	}
	st, err := readStat(strconv.Itoa(id.PID))
	if err != nil {
		if isGone(err) && unix.Kill(id.PID, 0) == unix.ESRCH {
			return Dead // exited between the two looks
		}
		return Unknown // hidden (hidepid) or unreadable
	}
	if id.Start != 0 && st.start != id.Start {
		return Dead
	}
	if st.state == 'X' || st.state == 'x' {
		return Dead
	}
	if st.state == 'Z' && !otherThreads(id.PID) {
		// A zombie whose threads are gone; a thread-group leader that
		// exited while other threads run shows Z too, and lives.
		return Dead
	}
	return Alive
}

// otherThreads tells whether process pid has a thread besides its leader,
// or cannot be inspected (then it answers true, the safe side).
func otherThreads(pid int) bool {
	d, err := os.Open("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		return !isGone(err)
	}
	defer d.Close()
	names, err := d.Readdirnames(3)
	if err != nil {
		return true
	}
	for _, n := range names {
		if n != strconv.Itoa(pid) {
			return true
		}
	}
	return false
}

// StartTime returns the start time of process pid (clock ticks since boot),
// or 0 when it cannot be read.
func StartTime(pid int) uint64 {
	st, err := readStat(strconv.Itoa(pid))
	if err != nil {
		return 0
	}
	return st.start
}

// StoreWake stores v in *w and wakes every waiter on w.
func StoreWake(w *uint32, v uint32) {
	atomic.StoreUint32(w, v)
	FutexWake(w, 1<<30)
}

// WaitWhile sleeps while *w == v. check, called about once a second, ends
// the wait when it returns an error (a peer that went away, say).
func WaitWhile(w *uint32, v uint32, check func() error) error {
	for atomic.LoadUint32(w) == v {
		if err := FutexWait(w, v, time.Second); err == unix.ETIMEDOUT && check != nil {
			if err := check(); err != nil {
				return err
			}
		}
	}
	return nil
}

// WaitAtLeast sleeps until *w >= want; check is as for WaitWhile.
func WaitAtLeast(w *uint32, want uint32, check func() error) error {
	for {
		v := atomic.LoadUint32(w)
		if v >= want {
			return nil
		}
		if err := WaitWhile(w, v, check); err != nil {
			return err
		}
	}
}
