package nstest_test

// The robust lock (WithRobustLock) across PID namespaces: the kernel marks
// a dead holder's lock, wherever the holder lived.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

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
		t.Logf("holder: %s", h.expect("locked", time.Minute))
		mustTimeOut(t, r, time.Second, "a live holder in another PID namespace")
		h.send("unlock")
		h.expect("unlocked", time.Minute)
		mustLock(t, r)
		h.mustSucceed(time.Minute)
	})

	// Unlike the default lock, a robust lock is recovered from outside the
	// dead holder's PID namespace.
	t.Run("holder-killed-waiter-outside", func(t *testing.T) {
		r, k := newRobustRegion(t, "rob-killout")
		h := start(t, "holder", "holder", k, "", nsPID1)
		h.expect("locked", time.Minute)
		h.kill()
		if err := h.wait(time.Minute); !killed(err) {
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
		h.expect("locked", time.Minute)
		h.kill()
		if err := h.wait(time.Minute); !killed(err) {
			t.Fatalf("holder: %v, want killed", err)
		}
		w := start(t, "waiter", "waiter", k, "expect-ownerdead", nsPID1)
		t.Logf("waiter in a new PID namespace: %s", w.expect("recovered", time.Minute))
		w.mustSucceed(time.Minute)
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
		hl := h.expect("locked", time.Minute)
		w := start(t, "waiter", "waiter", k, "wait", nsPID1)
		wl := w.expect("waiting", time.Minute)
		if ht, wt := field(t, hl, "tid"), field(t, wl, "tid"); ht != "1" || wt != "1" {
			t.Fatalf("holder locks from thread %s, waiter from thread %s: want 1 for both", ht, wt)
		}
		waitInFutex(t, w.cmd.Process.Pid)
		w.kill()
		if err := w.wait(time.Minute); !killed(err) {
			t.Fatalf("waiter: %v, want killed", err)
		}
		mustTimeOut(t, r, time.Second, "a live holder whose thread ID equals the dead waiter's")
		h.send("unlock")
		h.expect("unlocked", time.Minute)
		mustLock(t, r)
		h.mustSucceed(time.Minute)
	})
}

// waitInFutex waits until the main thread of process pid (in this PID
// namespace) sleeps in a futex wait: the waiter role has entered Lock.
func waitInFutex(t *testing.T, pid int) {
	t.Helper()
	path := fmt.Sprintf("/proc/%d/task/%d/wchan", pid, pid)
	deadline := time.Now().Add(time.Minute)
	var b backoff
	for {
		wchan, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(wchan), "futex") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the waiter's main thread is not in a futex wait (wchan %q)", wchan)
		}
		b.sleep()
	}
}
