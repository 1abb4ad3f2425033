package nstest_test

// The lock judges holders exactly: a waiter that inherited the dead
// holder's PID, and a waiter that /proc does not let see the holder.

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/posix"
)

func init() { roles["procview"] = procView }

// procView says what reading /proc/ARG/stat gives: "seen", or the error.
func procView(c *child) error {
	_, err := os.ReadFile("/proc/" + c.arg + "/stat")
	var errno syscall.Errno
	switch {
	case err == nil:
		c.Say("view seen")
	case errors.As(err, &errno):
		c.Say("view %s", errno.Error())
	default:
		c.Say("view %v", err)
	}
	return nil
}

// lockModes runs f with holders armed on the kernel's robust lists, and
// with holders whose kernel refuses them (judged by PID).
func lockModes(t *testing.T, f func(t *testing.T)) {
	t.Run("robust-list", f)
	t.Run("by-pid", func(t *testing.T) {
		t.Setenv(envNoRobust, "1")
		f(t)
	})
}

// TestWaiterInheritsDeadHolderPID: a holder with PID P in a PID namespace
// is killed; a waiter that then gets PID P there (as happens once PIDs wrap)
// takes the lock over with ErrOwnerDead: it does not mistake the dead
// holder for itself.
func TestWaiterInheritsDeadHolderPID(t *testing.T) {
	requireRoot(t)
	lockModes(t, func(t *testing.T) {
		ns := newPIDNS(t)
		r, k := newRegion(t, "inherit")
		const pid = 5000
		h := ns.startWithPID(t, "holder", "holder", k, "", pid)
		h.expect("locked")
		mustTimeOut(t, r, 300*time.Millisecond, "a live holder")
		h.kill()
		if err := h.Err(); !killed(err) {
			t.Fatalf("holder: %v, want killed", err)
		}
		w := ns.startWithPID(t, "waiter with the dead holder's PID", "waiter", k, "expect-ownerdead", pid)
		t.Logf("waiter: %s", w.expect("recovered"))
		w.Wait()
		mustLock(t, r)
	})
}

// TestLockUnderHidepid: /proc mounted with hidepid=invisible (systemd's
// ProtectProc=invisible) or hidepid=noaccess hides a root holder from a
// waiter of another uid, to which /proc/PID of the holder gives ENOENT or
// EACCES: the waiter never takes a live holder's lock over, and recovers a
// dead one's.
func TestLockUnderHidepid(t *testing.T) {
	requireRoot(t)
	for _, hp := range []string{"hidepid2", "hidepid1"} {
		t.Run(hp, func(t *testing.T) {
			lockModes(t, func(t *testing.T) {
				k := key("hidepid")
				r, err := shm.Create(k, sharedSize, shm.WithBackend(posix.New()), shm.WithMode(0o666))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { r.Unlink(); r.Close() })
				as := nsOpts{flags: syscall.CLONE_NEWNS, setup: []string{"private", hp, "nobody"}}

				h := start(t, "holder", "holder", k, "", nsOpts{})
				h.expect("locked")
				// The premise: the waiter cannot see the holder in /proc.
				v := start(t, "procview", "procview", k, fmt.Sprint(h.PID()), as)
				seen := v.expect("view")
				v.Wait()
				want := map[string]string{"hidepid2": syscall.ENOENT.Error(), "hidepid1": syscall.EPERM.Error()}[hp]
				if seen != want && !(hp == "hidepid1" && seen == syscall.EACCES.Error()) {
					t.Fatalf("the waiter's view of /proc/%d: %q, want %q", h.PID(), seen, want)
				}
				w := start(t, "waiter", "waiter", k, "", as)
				t.Logf("waiter (uid 65534, /proc %s): %s", hp, w.expect("timedout"))
				w.Wait()

				h.kill()
				if err := h.Err(); !killed(err) {
					t.Fatalf("holder: %v, want killed", err)
				}
				w = start(t, "waiter", "waiter", k, "expect-ownerdead", as)
				t.Logf("waiter after the holder died: %s", w.expect("recovered"))
				w.Wait()
				mustLock(t, r)
			})
		})
	}
}
