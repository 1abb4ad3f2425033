package conformance

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/internal/layout"
	"github.com/shmgo/shm/internal/reexec"
)

func init() {
	roles["zombieparent"] = roleZombieParent
	roles["waiter"] = roleWaiter
}

// Trials of testLockDeathTrials: enough for a 99th percentile.
func deathTrials() int {
	if testing.Short() {
		return 20
	}
	return 200
}

// testLockDeathTrials kills the lock's holder again and again while a
// waiter is already waiting, and checks each time that the waiter gets the
// lock with ErrOwnerDead and that, after repair, the counter is exact. It
// logs the recovery time (from the holder's death to the takeover) at the
// median and the 99th percentile.
func testLockDeathTrials(h *harness) {
	key := h.Key("trials")
	r := h.create(key, 64)
	n := deathTrials()
	times := make([]time.Duration, 0, n)
	var good uint64 // increments that completed under the lock
	for i := range n {
		ch := h.start("hold", key, []string{"1000"})
		ch.Expect("locked")
		type res struct {
			l   shm.Lock
			err error
			at  time.Time
		}
		got := make(chan res, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			l, err := r.LockContext(ctx)
			got <- res{l, err, time.Now()}
		}()
		// Let the waiter settle into its sleep (longer and longer probes).
		time.Sleep(time.Duration(i%7) * 7 * time.Millisecond)
		ch.Kill()
		died := time.Now()
		res1 := <-got
		h.is(res1.err, shm.ErrOwnerDead)
		times = append(times, res1.at.Sub(died))
		// Repair: the dead holder's half update is undone.
		p := (*uint64)(unsafe.Pointer(&r.Bytes()[0]))
		if *p != good+1000 {
			h.t.Fatalf("trial %d: counter %d, want %d (good) + 1000 (the dead holder's)", i, *p, good)
		}
		*p = good
		h.ok(res1.l.MarkConsistent(), "MarkConsistent")
		*p++
		good++
		h.ok(res1.l.Unlock(), "Unlock")
	}
	if counter(r.Bytes()) != good || good != uint64(n) {
		h.t.Fatalf("counter %d, want %d", counter(r.Bytes()), n)
	}
	slices.Sort(times)
	p50, p99 := times[len(times)/2], times[(len(times)*99+99)/100-1]
	h.t.Logf("%d holders killed: recovery p50 %v, p99 %v, max %v", n, p50, p99, times[len(times)-1])
}

// roleZombieParent starts a holder as its own child, relays "locked", then
// on "kill" kills it without reaping it, so that it stays a zombie, and says
// "zombie <pid>". It exits when told to.
func roleZombieParent(c *childCtx) error {
	// Not reexec.Start: the holder must stay unreaped when it dies.
	cmd, err := reexec.Command("hold", []string{c.key, "1000"}, reexec.InTest(c.Test()))
	if err != nil {
		return err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	in, err := cmd.StdinPipe() // kept open: the holder holds until killed
	if err != nil {
		return err
	}
	defer in.Close()
	if err := cmd.Start(); err != nil {
		return err
	}
	// The holder's first report, a whole line (a pipe may hand it over in
	// pieces); anything else it prints is not a report.
	lines := bufio.NewReader(out)
	for {
		line, err := lines.ReadString('\n')
		if ev, ok := reexec.CutReport(line); ok {
			if ev != "locked" {
				return errors.New("holder said " + strconv.Quote(ev))
			}
			break
		}
		if err != nil {
			return fmt.Errorf("holder exited before saying locked (%v); its last output: %q", err, line)
		}
	}
	c.say("locked")
	c.hear()
	cmd.Process.Signal(syscall.SIGKILL)
	for { // wait until the kernel has made it a zombie
		b, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/stat")
		if err != nil {
			return err
		}
		if f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:])); len(f) > 0 && f[0] == "Z" {
			break
		}
		time.Sleep(time.Millisecond)
	}
	c.say("zombie %d", cmd.Process.Pid)
	c.hear()
	cmd.Wait()
	return nil
}

// testLockHolderZombie: a holder that died but was not reaped is dead.
func testLockHolderZombie(h *harness) {
	key := h.Key("zombie")
	r := h.create(key, 64)
	zp := h.start("zombieparent", key, nil)
	zp.Expect("locked")
	zp.Send("kill")
	zp.Expect("zombie")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := r.LockContext(ctx)
	h.is(err, shm.ErrOwnerDead)
	h.ok(l.MarkConsistent(), "MarkConsistent")
	h.ok(l.Unlock(), "Unlock")
	zp.Send("exit")
	zp.Wait()
}

// procStart reads a process's start time (field 22 of /proc/PID/stat).
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	return strconv.ParseUint(f[19], 10, 64)
}

func pidNS() uint64 {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/pid", &st); err != nil {
		return 0
	}
	return st.Ino
}

// forgeHolder makes the last slot of r's user table (r has the default
// number of slots) record process pid with start time start, judged by PID
// (its Live field holds a tag, as for a process whose kernel refuses robust
// lists), and makes the lock word name that slot as its holder, as
// internal/layout lays out the header and the table.
func forgeHolder(r *shm.Region, pid int, start uint64) {
	base := unsafe.Add(r.Pointer(), -layout.DataOffset(shm.DefaultUsers))
	users := *(*uint32)(unsafe.Add(base, layout.OffUsers))
	k := users - 1
	sl := unsafe.Add(base, layout.HeaderSize+layout.SlotSize*int(k))
	*(*uint64)(unsafe.Add(sl, layout.SlotStart)) = start
	*(*uint32)(unsafe.Add(sl, layout.SlotPID)) = uint32(pid)
	*(*uint32)(unsafe.Add(sl, layout.SlotNS)) = uint32(pidNS())
	// A tag: not a thread ID (they stay below 1<<22, PID_MAX_LIMIT).
	*(*uint32)(unsafe.Add(sl, layout.SlotLive)) = 1<<22 + 12345
	*(*uint32)(unsafe.Add(base, layout.OffLock)) = (k + 1) | layout.LockWaiters
}

// testLockHolderPIDReused: the word names a live process, but not the one
// that took the lock (its start time differs): the holder is dead and its
// PID reused. With the right start time, the live holder is respected.
func testLockHolderPIDReused(h *harness) {
	key := h.Key("reuse")
	r := h.create(key, 64)
	live := h.start("holdall", key, nil) // a live process that does not hold the lock
	live.Expect("open")
	pid := live.PID()
	start, err := procStart(pid)
	h.ok(err, "reading the child's start time")

	forgeHolder(r, pid, start)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = r.LockContext(ctx)
	h.is(err, shm.ErrTimeout) // alive: never taken over
	_, err = r.TryLock()
	h.is(err, shm.ErrLocked)

	forgeHolder(r, pid, start+12345)
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := r.LockContext(ctx)
	h.is(err, shm.ErrOwnerDead)
	h.ok(l.MarkConsistent(), "MarkConsistent")
	h.ok(l.Unlock(), "Unlock")
	live.Send("go")
	live.Wait()
}

// roleWaiter waits for the lock after "go", saying "waiting" once it waits
// inside LockContext; it says "dead" when it got the lock with ErrOwnerDead
// (and repairs) or "ok", then increments and unlocks.
func roleWaiter(c *childCtx) error {
	r, err := c.openReady()
	if err != nil {
		return err
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go func() {
		// This goroutine's LockContext cannot return before the holder
		// dies, which the parent does only after "waiting".
		if err := awaitLockWaiters("conformance.roleWaiter(", 1, time.Minute); err != nil {
			c.say("error %v", err)
			return
		}
		c.say("waiting")
	}()
	l, err := r.LockContext(ctx)
	what := "ok"
	if errors.Is(err, shm.ErrOwnerDead) {
		what = "dead"
		*(*uint64)(unsafe.Pointer(&r.Bytes()[0])) = 0
		if err := l.MarkConsistent(); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	incr(r.Bytes())
	l.Unlock()
	c.say("%s", what)
	return nil
}

// testLockTakeoverRace: when a holder dies with several waiters in several
// processes and goroutines, exactly one of them gets ErrOwnerDead.
func testLockTakeoverRace(h *harness) {
	key := h.Key("takeover")
	r := h.create(key, 64)
	holder := h.start("hold", key, []string{"1000"})
	holder.Expect("locked")
	var waiters []*reexec.Proc
	for range 3 {
		w := h.start("waiter", key, nil)
		w.Expect("ready")
		waiters = append(waiters, w)
	}
	for _, w := range waiters {
		w.Send("go")
	}
	for _, w := range waiters {
		w.Expect("waiting")
	}
	const G = 4
	var mu sync.Mutex
	dead := 0
	var wg sync.WaitGroup
	for g := range G {
		x := r
		if g%2 == 1 {
			x = h.open(key)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			l, err := x.LockContext(ctx)
			if errors.Is(err, shm.ErrOwnerDead) {
				mu.Lock()
				dead++
				mu.Unlock()
				*(*uint64)(unsafe.Pointer(&x.Bytes()[0])) = 0
				l.MarkConsistent()
			} else if err != nil {
				h.t.Error(err)
				return
			}
			incr(x.Bytes())
			l.Unlock()
		}()
	}
	// Everyone waits before the holder dies, however loaded the machine.
	if err := awaitLockWaiters("conformance.testLockTakeoverRace.func", G, time.Minute); err != nil {
		h.t.Fatal(err)
	}
	holder.Kill()
	wg.Wait()
	for _, w := range waiters {
		if w.Expect("") == "dead" {
			dead++
		}
		w.Wait()
	}
	if dead != 1 {
		h.t.Fatalf("%d waiters got ErrOwnerDead, want exactly 1", dead)
	}
	if got := counter(r.Bytes()); got != G+3 {
		h.t.Fatalf("counter %d, want %d: the repair or an increment was lost", got, G+3)
	}
}

func init() { roles["load"] = roleLoad }

// threads is the number of OS threads of this process.
func threads() int {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// lockFrame is in the traceback of every goroutine inside Region.Lock or
// Region.LockContext.
const lockFrame = "github.com/shmgo/shm.(*Region).Lock"

// Frames of the waits of package shm other than Lock's: every goroutine
// inside Lock.Wait, or inside Futex.Wait, has one in its traceback.
const (
	condWaitFrame  = "github.com/shmgo/shm.Lock.Wait("
	futexWaitFrame = "github.com/shmgo/shm.(*Futex).Wait("
)

// stackWaiters looks at every goroutine of this process whose stack has a
// frame whose name contains frame (the function that called the wait) and
// a frame whose name contains inner (the wait itself: lockFrame,
// condWaitFrame, futexWaitFrame), and returns how many there are and the
// IDs of those blocked there (their status is neither running nor
// runnable: asleep in the waiting room, in a timer, or in a system call).
func stackWaiters(frame, inner string) (in int, blocked []string) {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	for g := range bytes.SplitSeq(buf, []byte("\n\n")) {
		if !bytes.Contains(g, []byte(frame)) || !bytes.Contains(g, []byte(inner)) {
			continue
		}
		in++
		// "goroutine 7 [chan send, 2 minutes]:"
		head, _, _ := bytes.Cut(g, []byte("\n"))
		id, st, _ := bytes.Cut(head, []byte(" ["))
		st, _, _ = bytes.Cut(st, []byte("]"))
		st, _, _ = bytes.Cut(st, []byte(","))
		if s := string(st); s != "running" && s != "runnable" {
			blocked = append(blocked, string(id))
		}
	}
	return in, blocked
}

// awaitLockWaiters waits until each of the n goroutines called from frame
// (see stackWaiters) has been seen blocked inside Lock, for at most timeout.
// A fixed sleep would do on a quiet machine only: under load the goroutines
// may not have got that far. (Each is seen blocked once: waiters that look
// at the holder again every few milliseconds are rarely all asleep at
// once.) The caller makes sure that none can leave Lock meanwhile.
func awaitLockWaiters(frame string, n int, timeout time.Duration) error {
	return awaitWaiters(frame, lockFrame, n, timeout)
}

// awaitWaiters is awaitLockWaiters for the wait whose frame is inner (see
// stackWaiters).
func awaitWaiters(frame, inner string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	seen := map[string]bool{}
	for {
		in, blocked := stackWaiters(frame, inner)
		for _, id := range blocked {
			seen[id] = true
		}
		if in == n && len(seen) == n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v, %d goroutines from %s are in %s, %d of them seen waiting; want %d", timeout, in, frame, strings.TrimSuffix(inner, "("), len(seen), n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// settledThreads polls the number of OS threads until it has not changed for
// a while (200 ms), for at most timeout, and returns the last count and
// the most seen.
func settledThreads(timeout time.Duration) (last, most int) {
	const still = 200 * time.Millisecond
	deadline := time.Now().Add(timeout)
	last = threads()
	most = last
	since := time.Now()
	for time.Now().Before(deadline) && time.Since(since) < still {
		time.Sleep(5 * time.Millisecond)
		if n := threads(); n != last {
			last, since = n, time.Now()
		}
		most = max(most, last)
	}
	return last, most
}

// threadSlack is what the runtime may add to a process's OS threads beyond
// one a P (GOMAXPROCS) while goroutines contend for one lock: sysmon, the
// template thread, the one thread of each Region allowed to sleep in the
// kernel (the waiting room's), a thread in a system call of the test's own
// (reading /proc, a pipe), and one started spinning meanwhile.
const threadSlack = 16

// contenders is how many goroutines the tests that bound OS threads start:
// enough that one thread per waiting goroutine would exceed the bound,
// GOMAXPROCS + threadSlack threads more than before, on any machine.
func contenders() int { return max(64, 2*(runtime.GOMAXPROCS(0)+threadSlack)) }

// roleLoad runs Args[0] goroutines doing Args[1] locked increments each, and
// reports the most OS threads it saw, the threads before the contention, and
// its GOMAXPROCS: "done MOST BEFORE GOMAXPROCS".
func roleLoad(c *childCtx) error {
	r, err := c.open()
	if err != nil {
		return err
	}
	defer r.Close()
	// Count the threads before the contention, after one Lock (what Lock
	// needs in any case, such as a guardian thread, is made by then). The
	// counter is not touched.
	l, err := r.Lock()
	if err != nil {
		return err
	}
	if err := l.Unlock(); err != nil {
		return err
	}
	before := threads()
	c.say("ready")
	c.hear()
	g, n := c.arg(0), c.arg(1)
	stop := make(chan struct{})
	maxThreads := make(chan int)
	go func() {
		m := threads()
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				maxThreads <- max(m, threads())
				return
			case <-t.C:
				m = max(m, threads())
			}
		}
	}()
	// The load starts with every goroutine waiting in Lock, held here
	// meanwhile: however fast the increments (without the race detector a
	// goroutine may do all of its own within its time slice), the process
	// sees g goroutines contending at once at least then.
	hold, err := r.Lock()
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make(chan error, g)
	for range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				l, err := r.Lock()
				if err != nil {
					errs <- err
					return
				}
				incr(r.Bytes())
				l.Unlock()
			}
		}()
	}
	waiting := awaitLockWaiters("conformance.roleLoad.func", g, time.Minute)
	if err := hold.Unlock(); err != nil {
		return err
	}
	if waiting != nil {
		return waiting
	}
	wg.Wait()
	close(stop)
	m := <-maxThreads
	select {
	case err := <-errs:
		return err
	default:
	}
	c.say("done %d %d %d", m, before, runtime.GOMAXPROCS(0))
	return nil
}

// testLockLoad: 4 processes x 64 goroutines (more on a machine with many
// CPUs: see contenders) x 2,000,000/64 locked increments (a tenth under
// -short) give an exact count, and each process keeps a bounded number of OS
// threads: at most GOMAXPROCS + threadSlack more than before the contention
// (goroutines queue in-process instead of each sleeping in the kernel).
func testLockLoad(h *harness) {
	const P = 4
	G := contenders()
	n := 2000000 / G
	if testing.Short() {
		n /= 10
	}
	key := h.Key("load")
	r := h.create(key, 64)
	var ch []*reexec.Proc
	for range P {
		c := h.start("load", key, []string{strconv.Itoa(G), strconv.Itoa(n)})
		c.Expect("ready")
		ch = append(ch, c)
	}
	start := time.Now()
	for _, c := range ch {
		c.Send("go")
	}
	type report struct{ most, before, procs int }
	var reps []report
	for _, c := range ch {
		ev := c.Expect("done")
		var rp report
		if _, err := fmt.Sscanf(ev, "done %d %d %d", &rp.most, &rp.before, &rp.procs); err != nil {
			h.t.Fatalf("child load said %q: %v", ev, err)
		}
		reps = append(reps, rp)
		c.Wait()
	}
	el := time.Since(start)
	if got, want := counter(r.Bytes()), uint64(P*G*n); got != want {
		h.t.Fatalf("counter %d, want %d", got, want)
	}
	for _, rp := range reps {
		if G <= rp.procs+threadSlack {
			h.t.Fatalf("test bug: %d goroutines cannot show a thread each beyond GOMAXPROCS %d + %d", G, rp.procs, threadSlack)
		}
		if rp.most > rp.before+rp.procs+threadSlack {
			h.t.Fatalf("a process grew from %d to %d OS threads with %d goroutines contending (GOMAXPROCS %d; allowed: %d more)",
				rp.before, rp.most, G, rp.procs, rp.procs+threadSlack)
		}
	}
	var grew []string
	for _, rp := range reps {
		grew = append(grew, fmt.Sprintf("%d->%d", rp.before, rp.most))
	}
	h.t.Logf("%d processes x %d goroutines x %d increments in %v (%.0f ns each); OS threads per process, before and most: %s (GOMAXPROCS %d)",
		P, G, n, el.Round(time.Millisecond), float64(el.Nanoseconds())/float64(P*G*n), strings.Join(grew, " "), reps[0].procs)
}

// testLockWaitersThreads: 64 goroutines (more on a machine with many CPUs:
// see contenders) waiting for a lock held by another process must not each
// hold an OS thread asleep in the kernel: the process may grow by
// GOMAXPROCS + threadSlack threads at most.
func testLockWaitersThreads(h *harness) {
	key := h.Key("threads")
	r := h.create(key, 64)
	holder := h.start("hold", key, []string{"0"})
	holder.Expect("locked")
	before := threads()
	G := contenders()
	var entered atomic.Int64
	var wg sync.WaitGroup
	for range G {
		wg.Add(1)
		go func() {
			defer wg.Done()
			entered.Add(1)
			l, err := r.Lock()
			if err != nil {
				h.t.Error(err)
				return
			}
			incr(r.Bytes())
			l.Unlock()
		}()
	}
	// Every goroutine has called Lock and waits in it; then the threads
	// they made (if each took one) have been started: wait until the count
	// stays put. Under load all this takes longer than any fixed sleep.
	for entered.Load() < int64(G) {
		time.Sleep(time.Millisecond)
	}
	err := awaitLockWaiters("conformance.testLockWaitersThreads.func", G, time.Minute)
	during, most := settledThreads(10 * time.Second)
	holder.Send("go")
	holder.Wait()
	wg.Wait()
	if err != nil {
		h.t.Fatal(err)
	}
	procs := runtime.GOMAXPROCS(0)
	h.t.Logf("OS threads: %d before, %d (at most %d) with %d goroutines waiting; GOMAXPROCS %d", before, during, most, G, procs)
	if most > before+procs+threadSlack {
		h.t.Fatalf("%d goroutines waiting took %d OS threads (from %d; allowed: GOMAXPROCS %d + %d more)", G, most, before, procs, threadSlack)
	}
	if counter(r.Bytes()) != uint64(G) {
		h.t.Fatalf("counter %d, want %d", counter(r.Bytes()), G)
	}
}

// testReplaceStale: a key left by a killed owner is taken over by Create
// with WithReplaceStale when nobody maps it, and refused (ErrExist) while
// its creator lives or another process still maps it. A backend that
// proves its objects unused (backend.Remover) must let the region be
// replaced; for one that does not, package shm counts the processes of
// /proc/*/maps, which proves nothing where some of them cannot be read, and
// a refusal is what shm.Remove documents then: the test checks it and says
// so.
func testReplaceStale(h *harness) {
	// A live creator: never replaced.
	key := h.Key("stale-live")
	owner := h.start("umask", key, []string{"600"}) // creates, says "created", waits
	owner.Expect("created")
	_, err := shm.Create(key, 4096, h.Opt(), shm.WithReplaceStale())
	h.is(err, shm.ErrExist)
	owner.Kill()

	// Dead creator, nobody attached: replaced (or already gone, for
	// backends whose keys die with their owner).
	r, err := shm.Create(key, 4096, h.Opt())
	if err != nil {
		h.is(err, shm.ErrExist) // a key that outlives its owner...
		r, err = shm.Create(key, 4096, h.Opt(), shm.WithReplaceStale())
		if _, proves := h.b.(backend.Remover); err != nil && !proves && errors.Is(err, shm.ErrInUse) {
			h.unprovable(key, err)
			r, err = shm.Create(key, 4096, h.Opt())
		}
		h.ok(err, "Create with WithReplaceStale over a dead owner's key")
	}
	r.Close()

	// Dead creator, but a user still maps the region: not replaced.
	key2 := h.Key("stale-used")
	owner = h.start("umask", key2, []string{"600"})
	owner.Expect("created")
	user := h.start("holdall", key2, nil)
	user.Expect("open")
	owner.Kill()
	if _, err := shm.Stat(key2, h.Opt()); errors.Is(err, shm.ErrNotExist) {
		h.t.Logf("%s keys die with their owner: nothing stale to refuse", h.b.Name())
	} else {
		_, err = shm.Create(key2, 4096, h.Opt(), shm.WithReplaceStale())
		h.is(err, shm.ErrExist)
		h.t.Logf("refused while in use: %v", err)
	}
	user.Send("go")
	user.Wait()
}

// unprovable checks a refusal to replace the dead creator's region under
// key, whose creator was killed and which nobody maps, for want of a proof
// of that: it must match ErrExist and ErrInUse, Stat must find the creator
// dead and fail to count the processes that map the region exactly, and
// the region must be intact. Then it removes the region with the backend's
// Unlink.
func (h *harness) unprovable(key string, err error) {
	h.t.Helper()
	h.is(err, shm.ErrExist, shm.ErrInUse)
	in, serr := shm.Stat(key, h.Opt())
	h.ok(serr, "Stat of the dead creator's region")
	switch {
	case in.Creator != shm.LivenessDead:
		h.t.Fatalf("Stat says the killed creator is %v", in.Creator)
	case in.Stale || in.AttachedExact && in.Attached == 0:
		h.t.Fatalf("Stat says the region is unused (stale %v, %d processes attached, exact %v), yet WithReplaceStale refused: %v", in.Stale, in.Attached, in.AttachedExact, err)
	}
	u := h.open(key)
	h.ok(u.Close(), "Close")
	h.t.Logf("package shm cannot prove that no process maps %s's region, nor does package backend document a way for the backend to: "+
		"WithReplaceStale refused, as shm.Remove documents (Stat: %s; %v)", h.b.Name(), in.Reason, err)
	h.ok(h.b.Unlink(strings.TrimPrefix(key, "/")), "backend Unlink")
}
