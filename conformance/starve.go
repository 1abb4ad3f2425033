package conformance

import (
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
)

func init() { roles["hog"] = roleHog }

// The data of testLockStarvation: the hog's holdings, which it counts
// (atomically, so that the waiter may read the count before it locks),
// every holding's increment under the lock, and the word that stops the
// hog.
type starveData struct {
	Hog   uint64
	Total uint64
	Stop  uint32
}

// hogBusy is how long the hog holds the lock each time, measured by the
// clock as it spins (it does not sleep).
const hogBusy = 100 * time.Microsecond

// roleHog relocks at once, again and again, holding the lock for hogBusy
// each time, until the parent sets Stop; it then says how many holdings it
// had. It runs on CPU arg 0 alone, unless that is -1.
func roleHog(c *childCtx) error {
	runtime.LockOSThread()
	if cpu := c.arg(0); cpu >= 0 {
		if err := pinThread(cpu); err != nil {
			return err
		}
	}
	r, err := c.openReady()
	if err != nil {
		return err
	}
	defer r.Close()
	d, err := shm.View[starveData](r, 0)
	if err != nil {
		return err
	}
	var n uint64
	for atomic.LoadUint32(&d.Stop) == 0 {
		l, err := r.Lock()
		if err != nil {
			return err
		}
		atomic.AddUint64(&d.Hog, 1)
		d.Total++
		for t := time.Now(); time.Since(t) < hogBusy; {
		}
		if err := l.Unlock(); err != nil {
			return err
		}
		if n++; n == 1 {
			c.say("hogging")
		}
	}
	c.say("done %d", n)
	return nil
}

// starveWaits is how many times the waiter of testLockStarvation takes the
// lock, and starveBound how many of the hog's holdings one of its waits
// may see, besides those that the waiter's own lack of a CPU explains: the
// hand-off lets about ten through (1 ms of 100 us holdings); a machine
// busy with other tests has let through up to 78; without the hand-off a
// wait sees thousands. Waits that see more than starveNote are logged.
const (
	starveWaits = 50
	starveBound = 200
	starveNote  = 32
)

// runDelay is how long the calling OS thread has waited, runnable, for a
// CPU since it started: the second field of /proc/thread-self/schedstat.
// It reports false when the kernel does not say (no CONFIG_SCHED_INFO).
func runDelay() (time.Duration, bool) {
	b, err := os.ReadFile("/proc/thread-self/schedstat")
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, false
	}
	ns, err := strconv.ParseInt(f[1], 10, 64)
	return time.Duration(ns), err == nil
}

// pinThread makes the calling OS thread run on CPU cpu alone.
func pinThread(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	return unix.SchedSetaffinity(0, &set)
}

// testLockStarvation: a process that relocks at once with short critical
// sections (the hog) does not starve a waiter in another process. Each of
// the waiter's Locks, started while the hog holds, sees at most
// starveBound of the hog's holdings: once a waiter has waited about a
// millisecond the lock is handed to waiters (about ten holdings of
// 100 us); without the hand-off a waiter sees hundreds or thousands, and
// the test fails within a few waits.
// The bound counts holdings, not time, so that a slow machine does not
// make it fail; and on a loaded one, where the waiter may be woken and
// then wait for a CPU while the hog goes on, each hogBusy that the
// waiter's thread spent runnable but not running (its run delay, which
// the kernel counts) allows one holding more. It logs the waits at the
// median, the 99th percentile and the longest, the most holdings one wait
// saw, and the run delays; the counter that both processes advance under
// the lock must come out exact.
func testLockStarvation(h *harness) {
	key := h.Key("starve")
	r := h.create(key, 64)
	d, err := shm.View[starveData](r, 0)
	h.ok(err, "View")
	// The hog and the waiter run on two CPUs of their own, as on a machine
	// with CPUs to spare: the waiter, woken by the hog's Unlock, then
	// cannot take the hog's CPU before the hog locks again (which the
	// scheduler might do on a small machine, making the lock look fair
	// without the hand-off).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var cpus unix.CPUSet
	h.ok(unix.SchedGetaffinity(0, &cpus), "sched_getaffinity")
	hogCPU, waiterCPU := -1, -1
	for cpu := 0; cpu < len(cpus)*64 && waiterCPU < 0; cpu++ {
		switch {
		case !cpus.IsSet(cpu):
		case hogCPU < 0:
			hogCPU = cpu
		default:
			waiterCPU = cpu
		}
	}
	if waiterCPU < 0 {
		hogCPU = -1
		h.t.Logf("one CPU: the hog and the waiter share it")
	}
	// Started before this thread is pinned, whose mask it would inherit.
	ch := h.start("hog", key, []string{strconv.Itoa(hogCPU)})
	if waiterCPU >= 0 {
		h.ok(pinThread(waiterCPU), "sched_setaffinity")
		defer unix.SchedSetaffinity(0, &cpus)
	}
	ch.Expect("ready")
	ch.Send("go")
	ch.Expect("hogging")
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			atomic.StoreUint32(&d.Stop, 1)
		}
	}
	defer stop() // on a failure, let the hog end
	// hogAgain waits until the hog has taken the lock again since the
	// count was seen, and is holding it (or about to).
	hogAgain := func(since uint64) {
		for deadline := time.Now().Add(10 * time.Second); atomic.LoadUint64(&d.Hog) < since+2; {
			if time.Now().After(deadline) {
				h.t.Fatalf("the hog took the lock %d times in 10 s since the waiter's Lock, want 2", atomic.LoadUint64(&d.Hog)-since)
			}
			time.Sleep(20 * time.Microsecond)
		}
	}
	// The waits sleep on this thread, whose run delay is read before and
	// after each.
	_, schedstat := runDelay()
	if !schedstat {
		h.t.Logf("the kernel does not report run delays (/proc/thread-self/schedstat): no allowance for a waiter that waits for a CPU")
	}
	waits := make([]time.Duration, 0, starveWaits)
	seen := make([]uint64, 0, starveWaits)
	var delayed int             // waits whose thread waited for a CPU
	var mostDelay time.Duration // the longest such delay in one wait
	last := atomic.LoadUint64(&d.Hog)
	for i := range starveWaits {
		hogAgain(last)
		rd0, _ := runDelay()
		before := atomic.LoadUint64(&d.Hog)
		began := time.Now()
		l, err := r.Lock()
		if err != nil {
			h.t.Fatalf("Lock %d: %v", i, err)
		}
		wait := time.Since(began)
		last = d.Hog // the hog increments it under the lock
		d.Total++
		rd1, _ := runDelay()
		h.ok(l.Unlock(), "Unlock")
		delay := rd1 - rd0
		if delay > 0 {
			delayed++
			mostDelay = max(mostDelay, delay)
		}
		n := last - before
		if bound := starveBound + uint64(delay/hogBusy); n > bound {
			h.t.Fatalf("wait %d (%v) saw %d holdings of the hog, want at most %d (%d, and one for each %v of the %v the waiter waited for a CPU): the waiter starved",
				i, wait, n, bound, starveBound, hogBusy, delay)
		}
		if n > starveNote {
			h.t.Logf("wait %d (%v) saw %d holdings of the hog, more than %d: its thread waited %v for a CPU", i, wait, n, starveNote, delay)
		}
		waits = append(waits, wait)
		seen = append(seen, n)
	}
	stop()
	line := ch.Expect("done")
	ch.Wait()
	l, err := r.Lock()
	h.ok(err, "Lock after the hog ended")
	hog, total := d.Hog, d.Total
	h.ok(l.Unlock(), "Unlock")
	if total != hog+starveWaits {
		h.t.Fatalf("counter %d after %d holdings of the hog and %d of the waiter (%s), want %d", total, hog, starveWaits, line, hog+starveWaits)
	}
	slices.Sort(waits)
	slices.Sort(seen)
	h.t.Logf("%d waits behind a hog in another process (%v critical sections, %d holdings in all): p50 %v, p99 %v, max %v; hog holdings per wait p50 %d, max %d (bound %d); %d waits waited for a CPU, at most %v",
		starveWaits, hogBusy, hog, waits[len(waits)/2], waits[(len(waits)*99+99)/100-1], waits[len(waits)-1],
		seen[len(seen)/2], seen[len(seen)-1], starveBound, delayed, mostDelay)
}
