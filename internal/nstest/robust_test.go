package nstest_test

// The robust lock (WithRobustLock) across PID namespaces: the kernel marks
// a dead holder's lock, wherever the holder lived.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/posix"
)

// newRobustRegion creates a POSIX region with a robust lock for a test and
// removes it afterwards.
func newRobustRegion(t *testing.T, what string) (*shm.Region, string) {
	t.Helper()
	k := key(what)
	r, err := shm.Create(k, sharedSize, shm.WithBackend(posix.New()), shm.WithRobustLock())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Unlink()
		r.Close()
	})
	return r, k
}

func TestRobustLockAcrossPIDNamespaces(t *testing.T) {
	requireRoot(t)

	t.Run("live-holder-excludes", func(t *testing.T) {
		r, k := newRobustRegion(t, "rob-excl")
		h := start(t, "holder", "holder", k, "", nsPID1)
		t.Logf("holder: %s", h.expect("locked"))
		mustTimeOut(t, r, time.Second, "a live holder in another PID namespace")
		h.Send("unlock")
		h.expect("unlocked")
		mustLock(t, r)
		h.Wait()
	})

	// Unlike the default lock, a robust lock is recovered from outside the
	// dead holder's PID namespace.
	t.Run("holder-killed-waiter-outside", func(t *testing.T) {
		r, k := newRobustRegion(t, "rob-killout")
		h := start(t, "holder", "holder", k, "", nsPID1)
		h.expect("locked")
		h.kill()
		if err := h.Err(); !killed(err) {
			t.Fatalf("holder: %v, want killed", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		l, err := r.LockContext(ctx)
		if !errors.Is(err, shm.ErrOwnerDead) {
			if err == nil {
				l.Unlock()
			}
			t.Fatalf("Lock after a holder in another PID namespace was killed: %v, want ErrOwnerDead", err)
		}
		if err := l.MarkConsistent(); err != nil {
			t.Fatal(err)
		}
		l.Unlock()
		mustLock(t, r)
	})

	t.Run("holder-outside-killed-waiter-inside", func(t *testing.T) {
		r, k := newRobustRegion(t, "rob-killhost")
		h := start(t, "holder", "holder", k, "", nsOpts{})
		h.expect("locked")
		h.kill()
		if err := h.Err(); !killed(err) {
			t.Fatalf("holder: %v, want killed", err)
		}
		w := start(t, "waiter", "waiter", k, "expect-ownerdead", nsPID1)
		t.Logf("waiter in a new PID namespace: %s", w.expect("recovered"))
		w.Wait()
		mustLock(t, r)
	})

	// Thread IDs are per PID namespace: the PID 1s of two containers both
	// lock from thread 1. A waiter that dies while waiting must not make
	// the kernel mark the lock of a live holder with the same thread ID as
	// its own (the kernel treats a dying thread's pending robust entry as
	// its own lock when the word holds the thread's ID).
	t.Run("waiter-killed-same-tid", func(t *testing.T) {
		r, k := newRobustRegion(t, "rob-sametid")
		h := start(t, "holder", "holder", k, "", nsPID1)
		hl := h.expect("locked")
		w := start(t, "waiter", "waiter", k, "wait", nsPID1)
		wl := w.expect("waiting")
		if ht, wt := field(t, hl, "tid"), field(t, wl, "tid"); ht != "1" || wt != "1" {
			t.Fatalf("holder locks from thread %s, waiter from thread %s: want 1 for both", ht, wt)
		}
		waitInFutex(t, w.PID(), "/dev/shm"+k)
		w.kill()
		if err := w.Err(); !killed(err) {
			t.Fatalf("waiter: %v, want killed", err)
		}
		mustTimeOut(t, r, time.Second, "a live holder whose thread ID equals the dead waiter's")
		h.Send("unlock")
		h.expect("unlocked")
		mustLock(t, r)
		h.Wait()
	})
}

// waitInFutex waits until the main thread of process pid (in this PID
// namespace) sleeps in a futex call on a word of the region file at path:
// the waiter role has entered Lock and waits there. A futex wait of the Go
// runtime's own (a goroutine parked with its locked thread) does not
// count: its word is not in the region.
func waitInFutex(t *testing.T, pid int, path string) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	var b backoff
	var last string
	for {
		// "NR ARG1 ... SP PC" while in a system call.
		sc, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/syscall", pid, pid))
		if err != nil {
			t.Fatal(err)
		}
		last = strings.TrimSpace(string(sc))
		f := strings.Fields(last)
		if len(f) > 1 && f[0] == strconv.Itoa(unix.SYS_FUTEX) {
			addr, err := strconv.ParseUint(strings.TrimPrefix(f[1], "0x"), 16, 64)
			if err != nil {
				t.Fatalf("/proc/%d/task/%d/syscall: %q: %v", pid, pid, last, err)
			}
			if mapsFile(t, pid, addr, &st) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the waiter's main thread is not in a futex wait on %s (syscall %q)", path, last)
		}
		b.sleep()
	}
}

// mapsFile tells whether process pid maps the file st at address addr.
func mapsFile(t *testing.T, pid int, addr uint64, st *unix.Stat_t) bool {
	t.Helper()
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	dev := fmt.Sprintf("%02x:%02x", unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev)))
	for _, line := range strings.Split(string(maps), "\n") {
		// START-END PERMS OFFSET MAJOR:MINOR INODE PATH
		f := strings.Fields(line)
		if len(f) < 5 || f[3] != dev || f[4] != strconv.FormatUint(st.Ino, 10) {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		l, err1 := strconv.ParseUint(lo, 16, 64)
		h, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 == nil && err2 == nil && l <= addr && addr < h {
			return true
		}
	}
	return false
}
