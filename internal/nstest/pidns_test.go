package nstest_test

// Lock holders and waiters in other PID namespaces.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/posix"
	"github.com/shmgo/shm/internal/reexec"
)

func init() {
	// A child's roles run on the main goroutine: keep it on the main
	// thread, whose thread ID is the PID (1 for PID 1 of a namespace), so
	// that robust-mode lock words of two namespaces' PID 1s hold the same
	// thread ID.
	reexec.LockMainThread()
	roles["holder"] = holder
	roles["waiter"] = waiter
	roles["counter"] = counterRole
	roles["init"] = nsInit
}

// How a child enters a new PID namespace.
var (
	// PID 1 of a new PID namespace, with /proc mounted for it (as in a
	// container).
	nsPID1 = nsOpts{flags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS, setup: []string{"private", "proc"}}
	// PID 1 of a new PID namespace that still sees the parent's /proc.
	nsPID1HostProc = nsOpts{flags: syscall.CLONE_NEWPID}
)

// unshareOpts starts the child as PID 1 of a new PID namespace made by
// unshare(1), as an administrator would.
func unshareOpts(t *testing.T) nsOpts {
	return nsOpts{prefix: []string{requireUnshare(t), "--pid", "--fork", "--mount-proc", "--kill-child"}}
}

// lastPIDWorks skips the test when PIDs cannot be chosen in a new namespace.
func lastPIDWorks(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/proc/sys/kernel/ns_last_pid"); err != nil {
		t.Skipf("skipped: kernel without /proc/sys/kernel/ns_last_pid (CONFIG_CHECKPOINT_RESTORE), cannot choose a PID: %v", err)
	}
}

// newRegion creates a POSIX region for a test and removes it afterwards.
func newRegion(t *testing.T, what string) (*shm.Region, string) {
	t.Helper()
	k := key(what)
	r, err := shm.Create(k, sharedSize, shm.WithBackend(posix.New()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Unlink()
		r.Close()
	})
	return r, k
}

// mustTimeOut tries to take a lock held by a live process (or one that
// cannot be judged from here) for d: it must time out, and never take the
// lock over.
func mustTimeOut(t *testing.T, r *shm.Region, d time.Duration, holder string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	l, err := r.LockContext(ctx)
	switch {
	case err == nil:
		l.Unlock()
		t.Fatalf("took the lock over from %s", holder)
	case errors.Is(err, shm.ErrOwnerDead):
		l.MarkConsistent()
		l.Unlock()
		t.Fatalf("took the lock over from %s, judged dead: %v", holder, err)
	case !errors.Is(err, shm.ErrTimeout):
		t.Fatalf("LockContext while %s holds: %v, want ErrTimeout", holder, err)
	}
	if l, err := r.TryLock(); !errors.Is(err, shm.ErrLocked) {
		if err == nil || errors.Is(err, shm.ErrOwnerDead) {
			l.Unlock()
		}
		t.Fatalf("TryLock while %s holds: %v, want ErrLocked", holder, err)
	}
}

// mustLock takes the lock, which must be free or freed soon, and releases it.
func mustLock(t *testing.T, r *shm.Region) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := r.LockContext(ctx)
	if err != nil {
		if errors.Is(err, shm.ErrOwnerDead) {
			l.Unlock()
		}
		t.Fatalf("Lock after the holder released: %v", err)
	}
	l.Unlock()
}

// TestPIDNamespaceHolderExcludes: a live holder in a new PID namespace
// keeps the lock against a waiter here, although its PID names another
// process here (PID 1) or none (a PID unused here); then it releases and
// the waiter gets the lock, with no ErrOwnerDead.
func TestPIDNamespaceHolderExcludes(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name string
		opts func(*testing.T) nsOpts
	}{
		{"pid1", func(*testing.T) nsOpts { return nsPID1 }},
		{"pid1-host-proc", func(*testing.T) nsOpts { return nsPID1HostProc }},
		{"unshare-cmd", unshareOpts},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts(t)
			r, k := newRegion(t, "excl")
			h := start(t, "holder", "holder", k, "", o)
			line := holderLocked(t, h, 1)
			if unusedHere(1) {
				t.Fatal("no PID 1 in this test's PID namespace")
			}
			mustTimeOut(t, r, time.Second, "a live holder, PID 1 in another PID namespace")
			release(t, h, r)
			t.Logf("holder: %s", line)
		})
	}

	// The holder's PID is one that no process here has: judged by its PID
	// alone, it would be dead.
	t.Run("pid-unused-here", func(t *testing.T) {
		r, k := newRegion(t, "excl")
		ns := newPIDNS(t)
		tried := map[int]bool{}
		const attempts = 5
		for attempt := 1; ; attempt++ {
			pid, sure := ns.pidUnusedHere(t, tried)
			tried[pid] = true
			h := ns.startWithPID(t, "holder", "holder", k, "", pid)
			line := holderLocked(t, h, pid)
			before := unusedHere(pid)
			mustTimeOut(t, r, time.Second, fmt.Sprintf("a live holder, PID %d in another PID namespace and unused here", pid))
			after := unusedHere(pid)
			release(t, h, r)
			if before && after {
				t.Logf("holder: %s; PID %d unused here (for certain: %v)", line, pid, sure)
				return
			}
			// The premise failed: a process here took the PID (possible
			// only when all namespaces share one pid_max), so the waiter
			// may have seen a live process. Try another PID.
			msg := fmt.Sprintf("attempt %d: PID %d came into use here while the holder had it (unused before the wait: %v, after: %v; certain: %v)", attempt, pid, before, after, sure)
			if attempt == attempts {
				t.Fatal(msg)
			}
			t.Log(msg + "; again with another PID")
		}
	})
}

// holderLocked waits for holder h to report the lock taken, checks that it
// has PID pid in a PID namespace other than this test's, and returns its
// report.
func holderLocked(t *testing.T, h *proc, pid int) string {
	t.Helper()
	line := h.expect("locked")
	if got := atoi(t, field(t, line, "pid")); got != pid {
		t.Fatalf("holder has PID %d in its namespace, want %d", got, pid)
	}
	if ns := field(t, line, "pidns"); ns == fmt.Sprint(nsInode("self", "pid")) {
		t.Fatalf("holder is in this test's PID namespace (%s)", ns)
	}
	return line
}

// release tells holder h to unlock, then takes the lock here (it must come
// with no ErrOwnerDead), and waits for h to exit.
func release(t *testing.T, h *proc, r *shm.Region) {
	t.Helper()
	h.Send("unlock")
	h.expect("unlocked")
	mustLock(t, r)
	h.Wait()
}

// TestPIDNamespaceWaiterExcluded: this process holds the lock; a waiter in
// a new PID namespace, where this process's PID means nothing, times out
// without taking it over, and gets it once this process releases it.
func TestPIDNamespaceWaiterExcluded(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name string
		opts nsOpts
	}{
		{"pid1", nsPID1},
		{"pid1-host-proc", nsPID1HostProc},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, k := newRegion(t, "waiter")
			l, err := r.Lock()
			if err != nil {
				t.Fatal(err)
			}
			w := start(t, "waiter", "waiter", k, "then-lock", tc.opts)
			t.Logf("waiter: %s", w.expect("timedout"))
			w.expect("waiting")
			if err := l.Unlock(); err != nil {
				t.Fatal(err)
			}
			w.expect("locked")
			w.Wait()
			mustLock(t, r)
		})
	}
}

// TestPIDNamespaceCounter: this process and two processes that are each
// PID 1 of their own PID namespace (so both lock words read 1) do 5,000
// locked increments each; the total must be exact.
func TestPIDNamespaceCounter(t *testing.T) {
	requireRoot(t)
	const n = 5000
	r, k := newRegion(t, "count")
	var ps []*proc
	seen := map[string]bool{fmt.Sprint(nsInode("self", "pid")): true}
	for _, name := range []string{"ns-a", "ns-b"} {
		p := start(t, name, "counter", k, fmt.Sprint(n), nsPID1)
		line := p.expect("attached")
		if pid := field(t, line, "pid"); pid != "1" {
			t.Fatalf("%s has PID %s, want 1", name, pid)
		}
		ns := field(t, line, "pidns")
		if seen[ns] {
			t.Fatalf("%s shares PID namespace %s", name, ns)
		}
		seen[ns] = true
		ps = append(ps, p)
	}
	for _, p := range ps {
		p.Send("go")
	}
	if err := increment(r, n); err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		p.expect("done")
		p.Wait()
	}
	l, err := r.Lock()
	if err != nil {
		t.Fatal(err)
	}
	got := sharedOf(r).Counter
	l.Unlock()
	if got != 3*n {
		t.Fatalf("counter %d after three processes did %d locked increments each, want %d", got, n, 3*n)
	}
}

// TestPIDNamespaceHolderKilled: what becomes of a lock whose holder is
// killed, seen from its own PID namespace and from others.
func TestPIDNamespaceHolderKilled(t *testing.T) {
	requireRoot(t)

	// The holder is PID 1 of a namespace; killing it ends the namespace.
	// A waiter here cannot judge a PID recorded in another namespace, but
	// the kernel marked the holder's slot when it died: the waiter
	// recovers the lock.
	t.Run("waiter-outside", func(t *testing.T) {
		r, k := newRegion(t, "killout")
		h := start(t, "holder", "holder", k, "", nsPID1)
		h.expect("locked")
		mustTimeOut(t, r, time.Second, "a live holder in another PID namespace")
		h.kill()
		if err := h.Err(); !killed(err) {
			t.Fatalf("holder: %v, want killed", err)
		}
		mustRecover(t, r, "a holder killed in another PID namespace")
	})

	// The holder is PID 2 under an init (PID 1) in the namespace; the init
	// kills it and, in the same namespace, recovers the lock with
	// ErrOwnerDead.
	t.Run("waiter-same-namespace", func(t *testing.T) {
		r, k := newRegion(t, "killin")
		h := start(t, "init", "init", k, "inner=holder onusr1=recover", nsPID1)
		line := h.expect("locked")
		if pid := field(t, line, "pid"); pid == "1" {
			t.Fatalf("holder is PID 1, want a child of the namespace's init")
		}
		mustTimeOut(t, r, time.Second, "a live holder in another PID namespace")
		h.Signal(syscall.SIGUSR1)
		t.Logf("init: %s", h.expect("recovered"))
		h.Wait()
		mustLock(t, r) // marked consistent: no ErrOwnerDead
	})

	// The holder is a process of this namespace; a waiter in a new PID
	// namespace, where the holder's PID means nothing, recovers the lock
	// all the same once the holder is killed (the kernel marked it), and
	// marks it consistent for everyone.
	t.Run("holder-outside", func(t *testing.T) {
		r, k := newRegion(t, "killhost")
		h := start(t, "holder", "holder", k, "", nsOpts{})
		h.expect("locked")
		h.kill()
		if err := h.Err(); !killed(err) {
			t.Fatalf("holder: %v, want killed", err)
		}
		w := start(t, "waiter", "waiter", k, "expect-ownerdead", nsPID1)
		t.Logf("waiter in a new PID namespace: %s", w.expect("recovered"))
		w.Wait()
		mustLock(t, r) // marked consistent: no ErrOwnerDead
	})
}

// mustRecover takes a lock whose holder died: it must come with
// ErrOwnerDead; it marks it consistent and releases it.
func mustRecover(t *testing.T, r *shm.Region, holder string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := r.LockContext(ctx)
	if !errors.Is(err, shm.ErrOwnerDead) {
		if err == nil {
			l.Unlock()
		}
		t.Fatalf("Lock after %s: %v, want ErrOwnerDead", holder, err)
	}
	if err := l.MarkConsistent(); err != nil {
		t.Fatal(err)
	}
	l.Unlock()
}

func killed(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// The children's roles.

func openPosix(c *child) (*shm.Region, error) {
	return shm.Open(c.key, time.Minute, shm.WithBackend(posix.New()))
}

// holder takes the lock, says so, and releases it when told "unlock".
func holder(c *child) error {
	r, err := openPosix(c)
	if err != nil {
		return err
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := r.LockContext(ctx)
	if err != nil {
		return err
	}
	c.Say("locked pid=%d tid=%d pidns=%d", os.Getpid(), syscall.Gettid(), nsInode("self", "pid"))
	if cmd := c.Hear(); cmd != "unlock" {
		return fmt.Errorf("told %q, want unlock", cmd)
	}
	if err := l.Unlock(); err != nil {
		return err
	}
	c.Say("unlocked")
	c.Hear() // wait for the parent to close our input
	return nil
}

// waiter tries the lock, held by a process it cannot judge, for 1 s: it
// must time out. With "then-lock", it then waits for the lock (the parent
// releases it) and takes it. With "expect-ownerdead" it waits instead for
// the lock of a dead holder and must get ErrOwnerDead; with "wait" it says
// so and waits (to be killed while waiting).
func waiter(c *child) error {
	r, err := openPosix(c)
	if err != nil {
		return err
	}
	defer r.Close()
	switch c.arg {
	case "expect-ownerdead":
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		l, err := r.LockContext(ctx)
		if !errors.Is(err, shm.ErrOwnerDead) {
			if err == nil {
				l.Unlock()
			}
			return fmt.Errorf("Lock after the holder died: %v, want ErrOwnerDead", err)
		}
		c.Say("recovered pid=%d pidns=%d err=%v", os.Getpid(), nsInode("self", "pid"), err)
		if err := l.MarkConsistent(); err != nil {
			return err
		}
		return l.Unlock()
	case "wait":
		c.Say("waiting pid=%d tid=%d", os.Getpid(), syscall.Gettid())
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		l, err := r.LockContext(ctx)
		if err != nil {
			return err
		}
		c.Say("locked")
		return l.Unlock()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	l, err := r.LockContext(ctx)
	cancel()
	switch {
	case err == nil:
		l.Unlock()
		return errors.New("took the lock over from a holder in another PID namespace")
	case errors.Is(err, shm.ErrOwnerDead):
		l.Unlock()
		return fmt.Errorf("took the lock over, judging a holder in another PID namespace dead: %w", err)
	case !errors.Is(err, shm.ErrTimeout):
		return fmt.Errorf("LockContext: %w, want ErrTimeout", err)
	}
	c.Say("timedout pid=%d pidns=%d err=%v", os.Getpid(), nsInode("self", "pid"), err)
	if c.arg != "then-lock" {
		return nil
	}
	c.Say("waiting")
	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if l, err = r.LockContext(ctx); err != nil {
		return err
	}
	c.Say("locked")
	return l.Unlock()
}

// counterRole does arg locked increments once told "go".
func counterRole(c *child) error {
	n, err := strconv.Atoi(c.arg)
	if err != nil {
		return err
	}
	r, err := openPosix(c)
	if err != nil {
		return err
	}
	defer r.Close()
	c.Say("attached pid=%d pidns=%d", os.Getpid(), nsInode("self", "pid"))
	if cmd := c.Hear(); cmd != "go" {
		return fmt.Errorf("told %q, want go", cmd)
	}
	if err := increment(r, n); err != nil {
		return err
	}
	c.Say("done")
	return nil
}

// nsInit is PID 1 of a new PID namespace. It runs the role "inner=ROLE" as
// its child. On SIGUSR1 it kills that child and, with "onusr1=recover",
// takes the lock over in this namespace. (A Go process cannot choose its
// child's PID: see withpid_test.go.)
func nsInit(c *child) error {
	opts := map[string]string{}
	for _, f := range strings.Fields(c.arg) {
		k, v, _ := strings.Cut(f, "=")
		opts[k] = v
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)

	cmd, err := reexec.Command(opts["inner"], []string{c.key, "", "", ""})
	if err != nil {
		return err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		return err
	case <-usr1:
	}
	cmd.Process.Kill()
	<-exited // reaped: the holder's PID is free in this namespace
	if opts["onusr1"] != "recover" {
		return nil
	}
	r, err := openPosix(c)
	if err != nil {
		return err
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := r.LockContext(ctx)
	if !errors.Is(err, shm.ErrOwnerDead) {
		if err == nil {
			l.Unlock()
		}
		return fmt.Errorf("Lock after killing the holder in this namespace: %v, want ErrOwnerDead", err)
	}
	c.Say("recovered pid=%d err=%v", os.Getpid(), err)
	if err := l.MarkConsistent(); err != nil {
		return err
	}
	return l.Unlock()
}
