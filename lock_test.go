package shm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shmgo/shm/internal/sys"
)

// Children of the lock tests: SHMGO_LOCK_CHILD=<role>:<key>.
func init() {
	spec := os.Getenv("SHMGO_LOCK_CHILD")
	if spec == "" {
		return
	}
	role, key, _ := strings.Cut(spec, ":")
	if os.Getenv("SHMGO_LOCK_NOROBUST") != "" {
		sys.RefuseRobustLists()
	}
	if err := lockChild(role, key); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// lockChild opens key, and for "hold" takes the lock, adds 1000 to the
// counter, says "locked" and waits to be killed; for "count" does 50,000
// locked increments.
func lockChild(role, key string) error {
	r, err := Open(key, 10*time.Second)
	if err != nil {
		return err
	}
	switch role {
	case "hold":
		_, err := r.Lock()
		if err != nil {
			return err
		}
		*(*uint64)(r.Pointer()) += 1000
		fmt.Println("locked", os.Getpid(), r.armed.TID())
		select {}
	case "count":
		for range 50000 {
			l, err := r.Lock()
			if err != nil {
				return err
			}
			*(*uint64)(r.Pointer())++
			if err := l.Unlock(); err != nil {
				return err
			}
		}
		fmt.Println("done")
		return nil
	}
	return errors.New("unknown role " + role)
}

func lockRegion(t *testing.T, tag string, opts ...Option) (*Region, string) {
	t.Helper()
	key := fmt.Sprintf("/t-lock-%d-%s", os.Getpid(), tag)
	r, err := Create(key, 64, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Unlink(); r.Close() })
	return r, key
}

func startLockChild(t *testing.T, role, key string, attr *syscall.SysProcAttr, env ...string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "SHMGO_LOCK_CHILD="+role+":"+key, "GORACE=atexit_sleep_ms=0"), env...)
	cmd.SysProcAttr = attr
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, bufio.NewScanner(out)
}

func TestLockBasics(t *testing.T) {
	r, key := lockRegion(t, "basic")
	u, err := Open(key, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if r.me == 0 || u.me == 0 || r.me == u.me {
		t.Fatalf("user slots %d and %d, want two different ones", r.me, u.me)
	}
	if r.armed.TID() == 0 {
		t.Fatal("the owner's slot is not armed on a robust list")
	}
	l, err := r.Lock()
	if err != nil {
		t.Fatal(err)
	}
	if owner := atomic.LoadUint32(r.word) & lockOwner; owner != r.me {
		t.Fatalf("word names slot %d, want %d", owner, r.me)
	}
	if _, err := u.TryLock(); !errors.Is(err, ErrLocked) {
		t.Fatalf("TryLock while held: %v", err)
	}
	if _, err := r.TryLock(); !errors.Is(err, ErrLocked) {
		t.Fatalf("TryLock through the holding Region: %v", err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	// Goroutines of two Regions exclude each other.
	var wg sync.WaitGroup
	for g := range 8 {
		x := r
		if g%2 == 1 {
			x = u
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 2000 {
				l, err := x.Lock()
				if err != nil {
					t.Error(err)
					return
				}
				*(*uint64)(x.Pointer())++
				l.Unlock()
			}
		}()
	}
	wg.Wait()
	if got := *(*uint64)(r.Pointer()); got != 16000 {
		t.Fatalf("counter %d, want 16000", got)
	}
}

// A goroutine may unlock what another locked, as with sync.Mutex.
func TestLockUnlockFromAnotherGoroutine(t *testing.T) {
	r, _ := lockRegion(t, "othergo")
	l, err := r.Lock()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- l.Unlock() }()
	if err := <-done; err != nil {
		t.Fatalf("Unlock from another goroutine: %v", err)
	}
	if err := l.Unlock(); !errors.Is(err, ErrNotLocked) {
		t.Fatalf("second Unlock: %v, want ErrNotLocked", err)
	}
	l2, err := r.TryLock()
	if err != nil {
		t.Fatalf("TryLock after the unlock: %v", err)
	}
	l2.Unlock()
}

// Stale and duplicate Unlocks race with Locks: a stale Lock value never
// releases another holding, and of two Unlocks of one holding exactly one
// succeeds. Mutual exclusion holds throughout.
func TestLockStaleUnlocks(t *testing.T) {
	r, key := lockRegion(t, "stale")
	u, err := Open(key, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	var inside atomic.Int32
	var violations, staleOK, dupBoth atomic.Int64
	var stale sync.Map // Region -> an old Lock value
	var wg sync.WaitGroup
	deadline := time.Now().Add(time.Second)
	for g := range 4 {
		x := r
		if g%2 == 1 {
			x = u
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				l, err := x.Lock()
				if err != nil {
					t.Error(err)
					return
				}
				if inside.Add(1) != 1 {
					violations.Add(1)
				}
				if old, ok := stale.Load(x); ok && old.(Lock) != l {
					if old.(Lock).Unlock() == nil {
						staleOK.Add(1)
					}
				}
				inside.Add(-1)
				// Two Unlocks of this holding at once.
				var ok atomic.Int32
				var w2 sync.WaitGroup
				for range 2 {
					w2.Add(1)
					go func() {
						defer w2.Done()
						if l.Unlock() == nil {
							ok.Add(1)
						}
					}()
				}
				w2.Wait()
				if ok.Load() != 1 {
					dupBoth.Add(1)
				}
				stale.Store(x, l)
			}
		}()
	}
	wg.Wait()
	if v, s, d := violations.Load(), staleOK.Load(), dupBoth.Load(); v != 0 || s != 0 || d != 0 {
		t.Fatalf("%d violations of mutual exclusion, %d stale Unlocks that succeeded, %d holdings not released exactly once", v, s, d)
	}
}

func TestLockProcesses(t *testing.T) {
	r, key := lockRegion(t, "procs")
	var cmds []*exec.Cmd
	var outs []*bufio.Scanner
	for range 2 {
		c, o := startLockChild(t, "count", key, nil)
		cmds, outs = append(cmds, c), append(outs, o)
	}
	for i, c := range cmds {
		outs[i].Scan()
		if outs[i].Text() != "done" {
			t.Fatalf("child said %q", outs[i].Text())
		}
		c.Wait()
	}
	if got := *(*uint64)(r.Pointer()); got != 100000 {
		t.Fatalf("counter %d, want 100000", got)
	}
}

// The kernel marks the slot of a holder killed with SIGKILL.
func TestLockHolderKilled(t *testing.T) {
	testHolderKilled(t, nil)
}

// A holder in another PID namespace: its PID means nothing here, but the
// kernel still marks its slot when it dies.
func TestLockHolderInOtherPIDNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: a new PID namespace needs root (CI runs as root)")
	}
	testHolderKilled(t, &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID})
}

// Where the kernel refuses robust lists, slots are judged by PID: a killed
// holder is recovered all the same.
func TestLockHolderKilledWithoutRobustLists(t *testing.T) {
	testHolderKilled(t, nil, "SHMGO_LOCK_NOROBUST=1")
}

func testHolderKilled(t *testing.T, attr *syscall.SysProcAttr, env ...string) {
	r, key := lockRegion(t, "killed")
	cmd, out := startLockChild(t, "hold", key, attr, env...)
	out.Scan()
	if !strings.HasPrefix(out.Text(), "locked") {
		t.Fatalf("child said %q", out.Text())
	}
	t.Logf("holder says %q; its PID here is %d", out.Text(), cmd.Process.Pid)
	if _, err := r.TryLock(); !errors.Is(err, ErrLocked) {
		t.Fatalf("TryLock while the child holds: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := make(chan error, 1)
	var l Lock
	go func() {
		var err error
		l, err = r.LockContext(ctx)
		got <- err
	}()
	time.Sleep(20 * time.Millisecond)
	cmd.Process.Kill()
	err := <-got
	if !errors.Is(err, ErrOwnerDead) {
		t.Fatalf("Lock after the holder was killed: %v, want ErrOwnerDead", err)
	}
	if c := *(*uint64)(r.Pointer()); c != 1000 {
		t.Fatalf("counter %d, want the dead holder's 1000", c)
	}
	*(*uint64)(r.Pointer()) = 0
	l.MarkConsistent()
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
}

// Slots: one per open Region, given back at Close, never more than the
// table holds.
func TestUserSlots(t *testing.T) {
	r, key := lockRegion(t, "slots", WithMaxUsers(3))
	var us []*Region
	for range 2 {
		u, err := Open(key, 0)
		if err != nil {
			t.Fatal(err)
		}
		us = append(us, u)
	}
	if _, err := Open(key, 0); !errors.Is(err, ErrTooManyUsers) {
		t.Fatalf("Open of a fourth user of 3: %v, want ErrTooManyUsers", err)
	}
	info, err := Stat(key)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Users) != 3 || info.MaxUsers != 3 {
		t.Fatalf("Stat: %d users of %d, want 3 of 3", len(info.Users), info.MaxUsers)
	}
	for _, u := range info.Users {
		if u.PID != os.Getpid() || u.Alive != Alive {
			t.Fatalf("user %+v, want PID %d alive", u, os.Getpid())
		}
	}
	us[0].Close()
	u, err := Open(key, 0)
	if err != nil {
		t.Fatalf("Open after a Close freed a slot: %v", err)
	}
	u.Close()
	us[1].Close()
	for _, n := range []int{0, -1, MaxUsers + 1} {
		if _, err := Create(key+"-bad", 64, WithMaxUsers(n)); !errors.Is(err, ErrInvalidOption) {
			t.Fatalf("WithMaxUsers(%d): %v, want ErrInvalidOption", n, err)
		}
	}
	_ = r
}

// A slot of a process killed while it had the region open (not holding the
// lock) is reused by the next Open.
func TestUserSlotOfDeadProcessReused(t *testing.T) {
	r, key := lockRegion(t, "reuse", WithMaxUsers(2))
	cmd, out := startLockChild(t, "hold", key, nil)
	out.Scan()
	if !strings.HasPrefix(out.Text(), "locked") {
		t.Fatalf("child said %q", out.Text())
	}
	cmd.Process.Kill()
	cmd.Wait()
	l, err := r.Lock()
	if !errors.Is(err, ErrOwnerDead) {
		t.Fatalf("Lock after the holder died: %v, want ErrOwnerDead", err)
	}
	l.MarkConsistent()
	l.Unlock()
	u, err := Open(key, 0)
	if err != nil {
		t.Fatalf("Open into the dead user's slot: %v", err)
	}
	u.Close()
}

func BenchmarkLockUnlock(b *testing.B) {
	for _, mode := range []struct {
		name string
		opts []Option
	}{{"default", nil}, {"guarded", []Option{WithFaultGuard()}}} {
		b.Run(mode.name, func(b *testing.B) {
			key := fmt.Sprintf("/t-lock-bench-%d-%s", os.Getpid(), mode.name)
			r, err := Create(key, 64, mode.opts...)
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			defer r.Unlink()
			for b.Loop() {
				l, _ := r.Lock()
				l.Unlock()
			}
		})
	}
}

func TestWithFaultGuard(t *testing.T) {
	r, key := lockRegion(t, "guard")
	u, err := Open(key, 0, WithFaultGuard())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if r.guardLock || !u.guardLock {
		t.Fatalf("guard: default %v, WithFaultGuard %v; want false, true", r.guardLock, u.guardLock)
	}
	l, err := u.Lock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.TryLock(); !errors.Is(err, ErrLocked) {
		t.Fatalf("TryLock through the unguarded mapping: %v", err)
	}
	l.Unlock()
}
