package nstest_test

// A holder that cannot be judged: its kernel refuses robust lists, so its
// slot is judged by PID, and it runs in another PID namespace, where its
// PID means nothing here.

import (
	"testing"
	"time"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/posix"
)

// TestPIDNamespaceHolderUnknown: a live holder in a new PID namespace whose
// kernel refuses robust lists (envNoRobust, as where a seccomp filter
// does): shm.Stat from here says it cannot be judged (LockHolderUnknown,
// not robust, the user's liveness unknown), and the lock is never taken
// over while it lives. Once it releases, the lock is free and is taken
// here with no ErrOwnerDead. A holder armed on a robust list in the same
// place is judged: LockHeld.
func TestPIDNamespaceHolderUnknown(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name     string
		opts     nsOpts
		byPID    bool
		want     shm.LockState
		wantUser shm.Liveness
	}{
		{"by-pid/pid1", withEnv(nsPID1, envNoRobust+"=1"), true, shm.LockHolderUnknown, shm.LivenessUnknown},
		{"by-pid/pid1-host-proc", withEnv(nsPID1HostProc, envNoRobust+"=1"), true, shm.LockHolderUnknown, shm.LivenessUnknown},
		{"robust-list/pid1", nsPID1, false, shm.LockHeld, shm.LivenessAlive},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, k := newRegion(t, "unknown")
			h := start(t, "holder", "holder", k, "", tc.opts)
			line := holderLocked(t, h, 1)
			stat := func(when string) shm.Info {
				t.Helper()
				in, err := shm.Stat(k, shm.WithBackend(posix.New()))
				if err != nil {
					t.Fatalf("Stat %s: %v", when, err)
				}
				return in
			}
			check := func(when string) shm.Info {
				t.Helper()
				in := stat(when)
				l := in.Lock
				if l.State != tc.want || l.Robust == tc.byPID || l.PID != 1 {
					t.Fatalf("Stat %s: lock %v (state %d, robust %v, PID %d); want %v, robust %v, PID 1",
						when, l, l.State, l.Robust, l.PID, tc.want, !tc.byPID)
				}
				// The holder, and this process once it tried the lock.
				var holders []shm.User
				for _, u := range in.Users {
					if u.PID == 1 {
						holders = append(holders, u)
					}
				}
				if len(holders) != 1 || holders[0].Alive != tc.wantUser {
					t.Fatalf("Stat %s: users %+v, want one of PID 1, the holder, with liveness %v", when, in.Users, tc.wantUser)
				}
				return in
			}
			seen := check("while the holder lives")
			// Waits with probes that time out, so that the holder is
			// judged by PID too; TryLock judges it once more.
			mustTimeOut(t, r, 500*time.Millisecond, "a live holder in another PID namespace ("+tc.name+")")
			check("after the waits")
			release(t, h, r)
			if in := stat("after the release"); in.Lock.State != shm.LockFree || in.Lock.Inconsistent {
				t.Fatalf("Stat after the release: lock %v, want free and consistent", in.Lock)
			}
			t.Logf("holder: %s; Stat here: %v (robust %v)", line, seen.Lock, seen.Lock.Robust)
		})
	}
}

// withEnv is o with extra environment for the child.
func withEnv(o nsOpts, env ...string) nsOpts {
	o.env = append(append([]string(nil), o.env...), env...)
	return o
}
