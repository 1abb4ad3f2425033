package shm

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// osThreads is this process's number of OS threads.
func osThreads() int {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

func TestFutex(t *testing.T) {
	r, _ := lockRegion(t, "futex")
	f, err := View[Futex](r, 8)
	if err != nil {
		t.Fatal(err)
	}
	if f.Add(5) != 5 || !f.CompareAndSwap(5, 6) || f.CompareAndSwap(5, 7) || f.Load() != 6 {
		t.Fatal("atomic operations")
	}
	f.Store(0)
	if err := f.Wait(context.Background(), 1); err != nil {
		t.Fatalf("Wait on a word that does not hold old: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := f.Wait(ctx, 0); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Wait past its deadline: %v, want ErrTimeout", err)
	}
	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()
	if err := f.Wait(cctx, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with a cancelled context: %v", err)
	}

	// 64 goroutines wait on the word: one OS thread sleeps for them all.
	before := osThreads()
	var wg sync.WaitGroup
	var woke atomic.Int32
	var entered atomic.Int32
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			entered.Add(1)
			for f.Load() == 0 {
				if err := f.Wait(context.Background(), 0); err != nil {
					t.Error(err)
					return
				}
			}
			woke.Add(1)
		}()
	}
	for entered.Load() < 64 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // let them sleep (fewer would only weaken the bound)
	during := osThreads()
	f.Store(1)
	f.Wake(1 << 30)
	wg.Wait()
	if woke.Load() != 64 {
		t.Fatalf("%d of 64 waiters woke", woke.Load())
	}
	t.Logf("OS threads: %d before, %d while 64 goroutines wait", before, during)
	if during > before+runtime.GOMAXPROCS(0)+8 {
		t.Fatalf("%d OS threads while 64 goroutines wait (%d before): a thread each?", during, before)
	}
}

// A waiter in another process wakes when this one stores and wakes.
func TestFutexAcrossProcesses(t *testing.T) {
	r, key := lockRegion(t, "futexproc")
	f, _ := View[Futex](r, 8)
	for i := range 20 {
		f.Store(0)
		p := startLockChild(t, "futexwait", key)
		p.ExpectLine("waiting")
		time.Sleep(time.Duration(i%3) * time.Millisecond)
		f.Store(uint32(i + 1))
		f.Wake(1)
		p.ExpectLine("woke " + strconv.Itoa(i+1))
		p.Wait()
	}
}

// Close ends a Futex wait with ErrClosed.
func TestFutexWaitClose(t *testing.T) {
	r, key := lockRegion(t, "futexclose")
	u, err := Open(key, 0)
	if err != nil {
		t.Fatal(err)
	}
	f, _ := View[Futex](u, 8)
	got := make(chan error)
	go func() { got <- f.Wait(context.Background(), 0) }()
	time.Sleep(10 * time.Millisecond)
	u.Close()
	if err := <-got; !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait across Close: %v, want ErrClosed", err)
	}
	_ = r
}

// A ping-pong through Lock.Wait and Signal with another process: no
// wake-up is lost in 100 rounds each way.
func TestCondAcrossProcesses(t *testing.T) {
	r, key := lockRegion(t, "cond")
	p := startLockChild(t, "condwait", key)
	p.ExpectLine("waiting")
	c := (*uint64)(r.Pointer())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := r.Lock()
	if err != nil {
		t.Fatal(err)
	}
	var lat []time.Duration
	for round := 0; round < 100; round++ {
		*c++ // odd: the child's turn
		sent := time.Now()
		if err := r.Signal(); err != nil {
			t.Fatal(err)
		}
		for *c%2 == 1 {
			if err := l.Wait(ctx); err != nil {
				t.Fatalf("round %d: Wait: %v", round, err)
			}
		}
		lat = append(lat, time.Since(sent))
	}
	l.Unlock()
	p.ExpectLine("done")
	p.Wait()
	if w := r.hdr.Cond.Waiters; w != 0 {
		t.Fatalf("%d waiters counted after every wait ended", w)
	}
	slices.Sort(lat)
	t.Logf("round trip through Wait/Signal: p50 %v, p99 %v", lat[50], lat[98])
}

// Wait returns holding the lock, also when its context ends, with the same
// Lock value; Broadcast wakes every waiter.
func TestCondWaitSemantics(t *testing.T) {
	r, key := lockRegion(t, "condsem")
	u, err := Open(key, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	l, err := r.Lock()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := l.Wait(ctx); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Wait past its deadline: %v, want ErrTimeout", err)
	}
	if _, err := u.TryLock(); !errors.Is(err, ErrLocked) {
		t.Fatalf("TryLock after a timed-out Wait: %v, want the lock held", err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatalf("Unlock with the Lock value Wait kept: %v", err)
	}
	if err := l.Wait(context.Background()); !errors.Is(err, ErrNotLocked) {
		t.Fatalf("Wait without the lock: %v, want ErrNotLocked", err)
	}

	// Broadcast: 16 waiters through two Regions, all woken.
	var ready, woke atomic.Int32
	var wg sync.WaitGroup
	flag := (*uint64)(r.Pointer())
	*flag = 0
	for g := range 16 {
		x := r
		if g%2 == 1 {
			x = u
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := x.Lock()
			if err != nil {
				t.Error(err)
				return
			}
			ready.Add(1)
			for *flag == 0 {
				if err := l.Wait(context.Background()); err != nil {
					t.Error(err)
					break
				}
			}
			woke.Add(1)
			l.Unlock()
		}()
	}
	for {
		l, _ := r.Lock()
		n := ready.Load()
		if n == 16 && atomic.LoadUint32(&r.hdr.Cond.Waiters) == 16 {
			*flag = 1
			r.Broadcast()
			l.Unlock()
			break
		}
		l.Unlock()
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	if woke.Load() != 16 {
		t.Fatalf("%d of 16 waiters woke", woke.Load())
	}
}

// waitReleasedInWait waits until the only other user of r, which called
// Lock.Wait, sleeps there: it is counted among the waiters and has released
// the lock (Wait counts itself before it unlocks: killed in between, it
// would die holding the lock).
func waitReleasedInWait(t *testing.T, r *Region) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for atomic.LoadUint32(&r.hdr.Cond.Waiters) == 0 || atomic.LoadUint32(r.word)&lockOwner != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the child did not wait, the lock released, within a minute (waiters %d, lock word %#x)", atomic.LoadUint32(&r.hdr.Cond.Waiters), atomic.LoadUint32(r.word))
		}
		time.Sleep(time.Millisecond)
	}
}

// A waiter killed in Wait blocks nobody. (A waiter woken while the lock's
// holder died gets the lock with ErrOwnerDead: conformance's
// CondHolderDied, on every backend.)
func TestCondWaiterKilled(t *testing.T) {
	r, key := lockRegion(t, "condkill")
	p := startLockChild(t, "condsleep", key)
	p.ExpectLine("waiting")
	waitReleasedInWait(t, r)
	p.Kill()
	l, err := r.Lock()
	if err != nil {
		t.Fatalf("Lock after a waiter was killed in Wait: %v", err)
	}
	if err := r.Signal(); err != nil {
		t.Fatal(err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
}

// A read-only Region may neither Signal nor Broadcast.
func TestCondReadOnly(t *testing.T) {
	_, key := lockRegion(t, "condro")
	u, err := Open(key, 0, WithReadOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if err := u.Signal(); !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("Signal on a read-only Region: %v, want fs.ErrPermission", err)
	}
	if err := u.Broadcast(); !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("Broadcast on a read-only Region: %v, want fs.ErrPermission", err)
	}
}

// Signal and Broadcast with nobody waiting do not allocate (nor, as the
// header's count of waiters is 0, enter the kernel).
func TestNotifyNoWaitersAllocs(t *testing.T) {
	r, key := lockRegion(t, "condallocs")
	u, err := Open(key, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	l, err := u.Lock() // another user, which has locked, and a holder
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	for _, c := range []struct {
		name   string
		notify func() error
	}{{"Signal", r.Signal}, {"Broadcast", r.Broadcast}} {
		// The sequence word moves just before the kernel is asked to
		// wake: unmoved, no wake-up was asked for.
		seq := atomic.LoadUint32(&r.hdr.Cond.Seq)
		if n := testing.AllocsPerRun(100, func() {
			if err := c.notify(); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("%s with nobody waiting: %v allocations, want 0", c.name, n)
		}
		if now := atomic.LoadUint32(&r.hdr.Cond.Seq); now != seq {
			t.Errorf("%s with nobody waiting moved the sequence word from %d to %d (and so asked the kernel to wake)", c.name, seq, now)
		}
	}
}

func BenchmarkSignalNoWaiters(b *testing.B) {
	r, err := Create("/t-cond-bench-"+strconv.Itoa(os.Getpid())+"-"+runID, 64)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	defer r.Unlink()
	for b.Loop() {
		r.Signal()
	}
}

// A holding that went through Wait keeps its Lock value, but the lock's
// generation goes on: a Lock value of a holding from meanwhile never
// becomes valid again.
func TestCondWaitKeepsGenerationsUnique(t *testing.T) {
	r, _ := lockRegion(t, "condgen")
	l1, err := r.Lock()
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan error)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		waited <- l1.Wait(ctx)
	}()
	var lB Lock
	for {
		if lB, err = r.TryLock(); err == nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	r.Signal()
	if err := lB.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	if err := l1.Unlock(); err != nil {
		t.Fatalf("Unlock of the holding Wait took back: %v", err)
	}
	lC, err := r.Lock()
	if err != nil {
		t.Fatal(err)
	}
	if err := lB.Unlock(); !errors.Is(err, ErrNotLocked) {
		t.Fatalf("a stale Lock from during the Wait: %v, want ErrNotLocked", err)
	}
	if err := l1.Unlock(); !errors.Is(err, ErrNotLocked) {
		t.Fatalf("a second Unlock of the waited holding: %v, want ErrNotLocked", err)
	}
	if _, err := r.TryLock(); !errors.Is(err, ErrLocked) {
		t.Fatalf("TryLock while lC holds: %v", err)
	}
	lC.Unlock()
}

// A waiter killed in Wait stays counted only until its slot is reused:
// then Signal with nobody waiting stops entering the kernel.
func TestCondKilledWaiterUncounted(t *testing.T) {
	r, key := lockRegion(t, "condcount")
	p := startLockChild(t, "condsleep", key)
	p.ExpectLine("waiting")
	waitReleasedInWait(t, r)
	p.Kill()
	if w := atomic.LoadUint32(&r.hdr.Cond.Waiters); w != 1 {
		t.Fatalf("%d waiters counted after the waiter died, want its 1 until its slot is reused", w)
	}
	u, err := Open(key, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	l, err := u.Lock() // takes the dead waiter's slot
	if err != nil {
		t.Fatal(err)
	}
	l.Unlock()
	if w := atomic.LoadUint32(&r.hdr.Cond.Waiters); w != 0 {
		t.Fatalf("%d waiters counted after the dead waiter's slot was reused, want 0", w)
	}
}
