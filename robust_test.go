package shm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Children of the robust-lock tests: SHMGO_ROBUST_CHILD=<role>:<key>.
func init() {
	spec := os.Getenv("SHMGO_ROBUST_CHILD")
	if spec == "" {
		return
	}
	role, key, _ := strings.Cut(spec, ":")
	if err := robustChild(role, key); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// robustChild opens key, and for "hold" takes the lock, adds 1000 to the
// counter, says "locked" and waits to be killed; for "count" does 50,000
// locked increments.
func robustChild(role, key string) error {
	r, err := Open(key, 10*time.Second)
	if err != nil {
		return err
	}
	if !r.robust {
		return errors.New("opened region is not in robust mode")
	}
	switch role {
	case "hold":
		_, err := r.Lock()
		if err != nil {
			return err
		}
		*(*uint64)(r.Pointer()) += 1000
		fmt.Println("locked", os.Getpid())
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

func robustRegion(t *testing.T, tag string) (*Region, string) {
	t.Helper()
	key := fmt.Sprintf("/t-robust-%d-%s", os.Getpid(), tag)
	r, err := Create(key, 64, WithRobustLock())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Unlink(); r.Close() })
	return r, key
}

func startRobustChild(t *testing.T, role, key string, attr *syscall.SysProcAttr) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SHMGO_ROBUST_CHILD="+role+":"+key, "GORACE=atexit_sleep_ms=0")
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

func TestRobustLockBasics(t *testing.T) {
	r, key := robustRegion(t, "basic")
	u, err := Open(key, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if !r.robust || !u.robust {
		t.Fatal("robust mode not recorded in the header")
	}
	l, err := r.Lock()
	if err != nil {
		t.Fatal(err)
	}
	if w := r.hdr.Lock.Word & lockPIDMask; w == uint32(os.Getpid()) && runtime.GOMAXPROCS(0) > 1 {
		t.Logf("word %d (a thread ID; the main thread's equals the PID)", w)
	}
	if _, err := u.TryLock(); !errors.Is(err, ErrLocked) {
		t.Fatalf("TryLock while held: %v", err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	// Goroutines exclude each other; each locks and unlocks on its thread.
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

func TestRobustLockProcesses(t *testing.T) {
	r, key := robustRegion(t, "procs")
	var cmds []*exec.Cmd
	var outs []*bufio.Scanner
	for range 2 {
		c, o := startRobustChild(t, "count", key, nil)
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

// The kernel marks the lock of a holder killed with SIGKILL.
func TestRobustLockHolderKilled(t *testing.T) {
	testRobustHolderKilled(t, nil)
}

// A holder in another PID namespace: its PID means nothing here, but the
// kernel still marks its lock when it dies.
func TestRobustLockHolderInOtherPIDNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a new PID namespace needs root")
	}
	testRobustHolderKilled(t, &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID})
}

func testRobustHolderKilled(t *testing.T, attr *syscall.SysProcAttr) {
	r, key := robustRegion(t, "killed")
	cmd, out := startRobustChild(t, "hold", key, attr)
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

// A goroutine that exits while holding a robust lock takes its thread with
// it (it is locked to it); the kernel marks the lock.
func TestRobustLockHolderThreadExits(t *testing.T) {
	r, _ := robustRegion(t, "thread")
	held := make(chan bool)
	release := make(chan struct{})
	defer close(release)
	for attempt := 0; ; attempt++ {
		go func() {
			runtime.LockOSThread()
			if syscall.Gettid() == os.Getpid() {
				// Go never ends the main thread (it would wedge it
				// instead): keep this goroutine on it until the test
				// ends, and try again on another thread.
				held <- false
				<-release
				runtime.UnlockOSThread()
				return
			}
			if _, err := r.Lock(); err != nil {
				t.Error(err)
			}
			held <- true
			// Exit still locked to the thread: the runtime ends the thread.
		}()
		if <-held {
			break
		}
		if attempt == 2 {
			t.Fatal("every goroutine ran on the main thread")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The in-process holder state says "held" (the holder goroutine is
	// gone); reset it as another process would see it.
	r.lk.held = false
	l, err := r.LockContext(ctx)
	if !errors.Is(err, ErrOwnerDead) {
		t.Fatalf("Lock after the holding thread exited: %v, want ErrOwnerDead", err)
	}
	l.MarkConsistent()
	l.Unlock()
}

func BenchmarkLockUnlock(b *testing.B) {
	for _, mode := range []struct {
		name string
		opts []Option
	}{{"pid", nil}, {"unguarded", []Option{WithoutFaultGuard()}}, {"robust", []Option{WithRobustLock()}}} {
		b.Run(mode.name, func(b *testing.B) {
			key := fmt.Sprintf("/t-robust-bench-%d-%s", os.Getpid(), mode.name)
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

func TestWithoutFaultGuard(t *testing.T) {
	key := fmt.Sprintf("/t-guard-%d", os.Getpid())
	r, err := Create(key, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer r.Unlink()
	u, err := Open(key, 0, WithoutFaultGuard())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if !r.guard || u.guard {
		t.Fatalf("guard: default %v, WithoutFaultGuard %v; want true, false", r.guard, u.guard)
	}
	l, err := u.Lock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.TryLock(); !errors.Is(err, ErrLocked) {
		t.Fatalf("TryLock through the guarded mapping: %v", err)
	}
	l.Unlock()
	// Regions that cannot shrink are never guarded.
	m, err := Create("memfd:"+key, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.guard {
		t.Fatal("a memfd region is guarded")
	}
}
