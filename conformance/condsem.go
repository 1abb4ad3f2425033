package conformance

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/internal/layout"
	"github.com/shmgo/shm/internal/reexec"
)

// The semantics of the condition (Lock.Wait, Signal, Broadcast) and of
// Futex that users test: a Broadcast wakes every waiter, in every process;
// a waiter woken while the notifier dies holding the lock gets it with
// ErrOwnerDead; a notifier that dies simply stops notifying; and waiting
// goroutines share OS threads.

func init() {
	roles["broadcastwait"] = roleBroadcastWait
	roles["condsignaldie"] = roleCondSignalDie
	roles["notifier"] = roleNotifier
}

// The data of these tests, which the lock guards (but Word).
type condData struct {
	Arrived uint64 // waiters come to wait, counted under the lock before Wait
	Woke    uint64 // waiters that saw Gen move
	Gen     uint64 // the generation, moved on before each notification
	N       uint64 // a counter, for the tests' own use
	Word    shm.Futex
}

func condDataOf(r *shm.Region) (*condData, error) { return shm.View[condData](r, 0) }

func (h *harness) condData(r *shm.Region) *condData {
	h.t.Helper()
	d, err := condDataOf(r)
	h.ok(err, "View")
	return d
}

// condWaiters is the header's count of the goroutines in Lock.Wait, in
// every process (a Region with the default number of user slots, as
// internal/layout lays out the header).
func condWaiters(r *shm.Region) uint32 {
	base := unsafe.Add(r.Pointer(), -layout.DataOffset(shm.DefaultUsers))
	return atomic.LoadUint32((*uint32)(unsafe.Add(base, layout.OffCondWaiters)))
}

// lockWhen takes r's lock once cond holds under it, looking every
// millisecond (the lock released between looks) for at most a minute, and
// returns holding it.
func (h *harness) lockWhen(r *shm.Region, what string, cond func() bool) shm.Lock {
	h.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		l, err := r.Lock()
		h.ok(err, "Lock")
		if cond() {
			return l
		}
		h.ok(l.Unlock(), "Unlock")
		if time.Now().After(deadline) {
			h.t.Fatalf("after a minute, still not %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// recv receives from ch, failing the test after a minute.
func recv[T any](h *harness, ch <-chan T, what string) T {
	h.t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(time.Minute):
		h.t.Fatalf("%s: nothing after a minute", what)
		panic("unreachable")
	}
}

// broadcastWaiter waits in Lock.Wait rounds times, each time until the
// generation moves on, counting itself in Arrived before it waits and in
// Woke after.
func broadcastWaiter(r *shm.Region, rounds int) error {
	d, err := condDataOf(r)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for range rounds {
		l, err := r.LockContext(ctx)
		if err != nil {
			return err
		}
		d.Arrived++
		gen := d.Gen
		for d.Gen == gen {
			if err := l.Wait(ctx); err != nil {
				l.Unlock() // Wait returns holding the lock
				return fmt.Errorf("Wait for generation %d: %w", gen+1, err)
			}
		}
		d.Woke++
		if err := l.Unlock(); err != nil {
			return err
		}
	}
	return nil
}

// roleBroadcastWait runs Args[0] goroutines, each a broadcastWaiter of
// Args[1] rounds, after the parent's go-ahead, and says "done".
func roleBroadcastWait(c *childCtx) error {
	r, err := c.openReady()
	if err != nil {
		return err
	}
	defer r.Close()
	g, rounds := c.arg(0), c.arg(1)
	errs := make(chan error, g)
	for range g {
		go func() { errs <- broadcastWaiter(r, rounds) }()
	}
	for range g {
		if err := <-errs; err != nil {
			return err
		}
	}
	c.say("done")
	return nil
}

// testBroadcastAcrossProcesses: waiters in Lock.Wait in two other processes
// (three goroutines each) and in this one (four goroutines, through two
// Regions) are all woken by one Broadcast, five times over. Each round, the
// Broadcast comes once every waiter has counted itself under the lock
// before Wait and the lock is held here: every one then waits (Wait
// released the lock), and must see the generation move. Odd rounds
// broadcast after unlocking, even rounds while holding the lock. A waiter
// sleeps until woken (no periodic look at the sequence word), so a
// Broadcast that wakes too few fails the round after a minute; the slowest
// round is logged.
func testBroadcastAcrossProcesses(h *harness) {
	const procs, perProc, local, rounds = 2, 3, 4, 5
	const total = procs*perProc + local
	key := h.Key("bcast")
	r := h.create(key, 64)
	u := h.open(key)
	d := h.condData(r)
	var chs []*reexec.Proc
	for range procs {
		ch := h.start("broadcastwait", key, []string{strconv.Itoa(perProc), strconv.Itoa(rounds)})
		ch.Expect("ready")
		chs = append(chs, ch)
	}
	for _, ch := range chs {
		ch.Send("go")
	}
	errs := make(chan error, local)
	for i := range local {
		x := r
		if i%2 == 1 {
			x = u
		}
		go func() { errs <- broadcastWaiter(x, rounds) }()
	}
	var slowest time.Duration
	for round := range rounds {
		want := uint64((round + 1) * total)
		l := h.lockWhen(r, fmt.Sprintf("%d waiters come to wait in round %d", want, round), func() bool {
			if d.Arrived > want || d.Woke != want-total {
				h.t.Fatalf("round %d: %d waiters arrived and %d woke, want at most %d and %d", round, d.Arrived, d.Woke, want, want-total)
			}
			return d.Arrived == want
		})
		d.Gen++
		sent := time.Now()
		if round%2 == 0 {
			h.ok(r.Broadcast(), "Broadcast")
			h.ok(l.Unlock(), "Unlock")
		} else {
			h.ok(l.Unlock(), "Unlock")
			h.ok(r.Broadcast(), "Broadcast")
		}
		l = h.lockWhen(r, fmt.Sprintf("%d waiters woken in round %d", want, round), func() bool { return d.Woke == want })
		slowest = max(slowest, time.Since(sent))
		h.ok(l.Unlock(), "Unlock")
	}
	for range local {
		h.ok(recv(h, errs, "a waiter of this process"), "a waiter of this process")
	}
	for _, ch := range chs {
		ch.Expect("done")
		ch.Wait()
	}
	if n := condWaiters(r); n != 0 {
		h.t.Fatalf("the header counts %d waiters after every wait ended", n)
	}
	h.t.Logf("%d rounds of one Broadcast to %d waiters in %d processes: the slowest woke them all in %v", rounds, total, procs+1, slowest)
}

// roleCondSignalDie takes the lock (once the parent's waiter waits: it
// holds the lock until then), checks that N is 1, makes it 2, notifies
// (Args[0]: "signal" or "broadcast"), says "signalled" and waits, holding
// the lock, to be killed.
func roleCondSignalDie(c *childCtx) error {
	r, err := c.open()
	if err != nil {
		return err
	}
	d, err := condDataOf(r)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := r.LockContext(ctx); err != nil {
		return err
	}
	if d.N != 1 {
		return fmt.Errorf("N is %d under the lock, want the waiter's 1", d.N)
	}
	d.N = 2
	notify := r.Signal
	if c.args[0] == "broadcast" {
		notify = r.Broadcast
	}
	if err := notify(); err != nil {
		return err
	}
	c.say("signalled")
	c.hear()
	return errors.New("not killed")
}

// testCondHolderDied: a waiter in Lock.Wait woken by a process that then
// dies holding the lock (killed with SIGKILL after it signalled) returns
// holding the lock with ErrOwnerDead, as Lock does, and sees what the dead
// holder wrote; after repair the lock works as before. Once woken by
// Signal, once by Broadcast.
func testCondHolderDied(h *harness) {
	key := h.Key("condholder")
	r := h.create(key, 64)
	u := h.open(key)
	d := h.condData(r)
	for _, how := range []string{"signal", "broadcast"} {
		type result struct {
			l   shm.Lock
			err error
		}
		locked := make(chan struct{})
		got := make(chan result, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			l, err := r.LockContext(ctx)
			if err != nil {
				got <- result{l, err}
				close(locked)
				return
			}
			d.N = 1
			close(locked)
			// The signaller takes the lock only once Wait has released
			// it; a spurious wake-up before that finds N still 1.
			for d.N == 1 && err == nil {
				err = l.Wait(ctx)
			}
			got <- result{l, err}
		}()
		<-locked
		select {
		case res := <-got:
			h.t.Fatalf("%s: the waiter could not lock: %v", how, res.err)
		default:
		}
		ch := h.start("condsignaldie", key, []string{how})
		ch.Expect("signalled")
		select {
		case res := <-got:
			h.t.Fatalf("%s: the waiter's Wait returned (%v) while the process that signalled holds the lock", how, res.err)
		default:
		}
		ch.Kill()
		res := recv(h, got, how+": the waiter's Wait after the holder died")
		h.is(res.err, shm.ErrOwnerDead)
		if d.N != 2 {
			h.t.Fatalf("%s: N is %d after the takeover, want the dead holder's 2", how, d.N)
		}
		_, err := u.TryLock()
		h.is(err, shm.ErrLocked) // Wait returned holding the lock
		d.N = 0                  // repair
		h.ok(res.l.MarkConsistent(), "MarkConsistent")
		h.ok(res.l.Unlock(), "Unlock of the holding Wait took over")
		l, err := u.Lock()
		h.ok(err, "Lock after repair")
		h.ok(l.Unlock(), "Unlock")
		if n := condWaiters(r); n != 0 {
			h.t.Fatalf("%s: the header counts %d waiters after the wait ended", how, n)
		}
	}
}

// roleNotifier, told "notify", moves the generation on under the lock and
// broadcasts, then adds 1 to the Futex and wakes its waiters, and says
// "notified"; then it waits to be killed.
func roleNotifier(c *childCtx) error {
	r, err := c.openReady()
	if err != nil {
		return err
	}
	d, err := condDataOf(r)
	if err != nil {
		return err
	}
	if ev := c.hear(); ev != "notify" {
		return errors.New("told " + strconv.Quote(ev))
	}
	l, err := r.Lock()
	if err != nil {
		return err
	}
	d.Gen++
	if err := r.Broadcast(); err != nil {
		return err
	}
	if err := l.Unlock(); err != nil {
		return err
	}
	d.Word.Add(1)
	d.Word.Wake(1 << 30)
	c.say("notified")
	c.hear()
	return errors.New("not killed")
}

// notifierGone is how long the waits of testNotifierDies last once the
// notifier may be dead. Spent a few times over, by all the waiters at once.
const notifierGone = 100 * time.Millisecond

// testNotifierDies: waiters in Lock.Wait and Futex.Wait of a notifier in
// another process (which notifies them once: they wake) wait again, with
// deadlines, and the notifier is killed while they wait. Every wait ends
// by its deadline (an error matching ErrTimeout and
// context.DeadlineExceeded; a spurious wake-up meanwhile is allowed), each
// waiter's last one started after the kill; Lock.Wait returns holding the
// lock. Nothing is left stuck: a Region opened afterwards locks without
// ErrOwnerDead, and the condition and the Futex wake their waiters as
// before.
func testNotifierDies(h *harness) {
	const lockWaiters, futexWaiters = 4, 4
	key := h.Key("notifier")
	r := h.create(key, 64)
	u := h.open(key)
	probe := h.open(key) // TryLocks while a waiter holds the lock
	d := h.condData(r)
	ch := h.start("notifier", key, nil)
	ch.Expect("ready")
	ch.Send("go")

	var nw notifierWaiters
	nw.woken.Add(lockWaiters + futexWaiters)
	errs := make(chan error, lockWaiters+futexWaiters)
	for i := range lockWaiters {
		x := r
		if i%2 == 1 {
			x = u
		}
		go func() { errs <- nw.lockWaiter(x, probe) }()
	}
	for range futexWaiters {
		go func() { errs <- nw.futexWaiter(d) }()
	}

	// Step 1: the notifier wakes them all, once every Lock waiter waits.
	l := h.lockWhen(r, "every Lock waiter waiting", func() bool { return d.Arrived == lockWaiters })
	h.ok(l.Unlock(), "Unlock")
	ch.Send("notify")
	ch.Expect("notified")
	woken := make(chan struct{})
	go func() { nw.woken.Wait(); close(woken) }()
	recv(h, woken, "the notifier's waiters")

	// Step 2: once they wait again, the notifier dies.
	l = h.lockWhen(r, "every waiter waiting again", func() bool {
		return d.Arrived == 2*lockWaiters && nw.inFutex.Load() == futexWaiters
	})
	h.ok(l.Unlock(), "Unlock")
	ch.Kill()
	nw.killed.Store(true)
	for range lockWaiters + futexWaiters {
		if err := recv(h, errs, "a waiter after the notifier died"); err != nil {
			h.t.Error(err)
		}
	}
	if h.t.Failed() {
		return
	}
	h.t.Logf("after the notifier died, %d waits ended by their deadline and %d woke spuriously", nw.timedOut.Load(), nw.spurious.Load())

	// Nothing is stuck: a new Region's Lock, then a round of each kind of
	// wait with this process as the notifier.
	v, err := shm.Open(key, 0, h.Opt())
	h.ok(err, "Open after the notifier died")
	defer v.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err = v.LockContext(ctx)
	h.ok(err, "Lock of a new Region after the notifier died")
	h.ok(l.Unlock(), "Unlock")
	if n := condWaiters(r); n != 0 {
		h.t.Fatalf("the header counts %d waiters after every wait ended", n)
	}
	go func() { errs <- broadcastWaiter(v, 1) }()
	l = h.lockWhen(r, "a new waiter waiting", func() bool { return d.Arrived == 2*lockWaiters+1 })
	d.Gen++
	h.ok(r.Signal(), "Signal")
	h.ok(l.Unlock(), "Unlock")
	h.ok(recv(h, errs, "Lock.Wait after the notifier died"), "Lock.Wait after the notifier died")
	w := d.Word.Load()
	go func() {
		vd, err := condDataOf(v)
		for err == nil && vd.Word.Load() == w {
			err = vd.Word.Wait(ctx, w)
		}
		errs <- err
	}()
	d.Word.Add(1)
	d.Word.Wake(1)
	h.ok(recv(h, errs, "Futex.Wait after the notifier died"), "Futex.Wait after the notifier died")
}

// notifierWaiters is what the waiters of testNotifierDies share.
type notifierWaiters struct {
	killed   atomic.Bool    // the notifier is dead (reaped)
	woken    sync.WaitGroup // each waiter woke from step 1
	inFutex  atomic.Int32   // Futex waiters come to step 2
	timedOut atomic.Int32   // waits of step 2 ended by their deadline
	spurious atomic.Int32   // waits of step 2 that returned nil
}

// deadline checks how a wait of step 2 ended, err, and reports whether it
// was the last: a wait that started after the kill and ended by its
// deadline.
func (nw *notifierWaiters) deadline(what string, err error, started bool) (last bool, _ error) {
	switch {
	case err == nil:
		nw.spurious.Add(1) // allowed: wait again
		return false, nil
	case !errors.Is(err, shm.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded):
		return false, fmt.Errorf("%s: %v, want its deadline (ErrTimeout, context.DeadlineExceeded)", what, err)
	}
	nw.timedOut.Add(1)
	return started, nil
}

// lockWaiter waits in Lock.Wait through r, woken in step 1, then waits
// again, with deadlines, until a wait that started after the kill ended.
// It checks through probe that each Wait returns holding the lock.
func (nw *notifierWaiters) lockWaiter(r, probe *shm.Region) error {
	err := broadcastWaiter(r, 1) // step 1
	nw.woken.Done()
	if err != nil {
		return err
	}
	d, err := condDataOf(r)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := r.LockContext(ctx)
	if err != nil {
		return err
	}
	d.Arrived++
	gen := d.Gen
	for {
		after := nw.killed.Load()
		wctx, cancel := context.WithTimeout(context.Background(), notifierGone)
		err := l.Wait(wctx)
		cancel()
		if p, terr := probe.TryLock(); !errors.Is(terr, shm.ErrLocked) {
			if terr == nil {
				p.Unlock()
			}
			l.Unlock()
			return fmt.Errorf("TryLock while a Lock.Wait that returned (%v) holds the lock: %v, want ErrLocked", err, terr)
		}
		if d.Gen != gen {
			l.Unlock()
			return fmt.Errorf("the generation moved on to %d with no notifier", d.Gen)
		}
		last, err := nw.deadline("Lock.Wait", err, after)
		if err != nil || last {
			if uerr := l.Unlock(); err == nil {
				err = uerr
			}
			return err
		}
	}
}

// futexWaiter waits in Futex.Wait on d's Word, woken in step 1, then waits
// again, with deadlines, until a wait that started after the kill ended.
func (nw *notifierWaiters) futexWaiter(d *condData) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var err error
	for err == nil && d.Word.Load() == 0 { // step 1
		err = d.Word.Wait(ctx, 0)
	}
	nw.woken.Done()
	if err != nil {
		return err
	}
	nw.inFutex.Add(1)
	for {
		after := nw.killed.Load()
		wctx, cancel := context.WithTimeout(context.Background(), notifierGone)
		err := d.Word.Wait(wctx, 1)
		cancel()
		if w := d.Word.Load(); w != 1 {
			return fmt.Errorf("the Futex became %d with no notifier", w)
		}
		if last, err := nw.deadline("Futex.Wait", err, after); err != nil || last {
			return err
		}
	}
}

// waitInCond waits in Lock.Wait until the generation moves on; the
// goroutines of testWaitersThreads run it, so that their stacks name it.
func waitInCond(r *shm.Region) error {
	d, err := condDataOf(r)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := r.LockContext(ctx)
	if err != nil {
		return err
	}
	d.Arrived++
	gen := d.Gen
	for d.Gen == gen {
		if err := l.Wait(ctx); err != nil {
			l.Unlock()
			return err
		}
	}
	d.Woke++
	return l.Unlock()
}

// waitOnFutex waits in Futex.Wait while the word is 0.
func waitOnFutex(d *condData) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for d.Word.Load() == 0 {
		if err := d.Word.Wait(ctx, 0); err != nil {
			return err
		}
	}
	return nil
}

// testWaitersThreads: 64 goroutines (more on a machine with many CPUs: see
// contenders) waiting in Lock.Wait, through two Regions, then as many in
// Futex.Wait, must not each hold an OS thread asleep in the kernel: as for
// Lock (testLockWaitersThreads), the process may grow by GOMAXPROCS +
// threadSlack threads at most, counted from before the first wait. All
// wake, on one Broadcast and one Futex.Wake.
func testWaitersThreads(h *harness) {
	key := h.Key("waitthreads")
	r := h.create(key, 64)
	u := h.open(key)
	d := h.condData(r)
	for _, x := range []*shm.Region{r, u} { // what Lock needs in any case
		l, err := x.Lock()
		h.ok(err, "Lock")
		h.ok(l.Unlock(), "Unlock")
	}
	G := contenders()
	procs := runtime.GOMAXPROCS(0)
	before := threads()
	check := func(what string, err error, during, most int) {
		h.t.Helper()
		h.t.Logf("OS threads: %d before, %d (at most %d) with %d goroutines in %s; GOMAXPROCS %d", before, during, most, G, what, procs)
		h.ok(err, what)
		if most > before+procs+threadSlack {
			h.t.Fatalf("%d goroutines in %s took %d OS threads (from %d; allowed: GOMAXPROCS %d + %d more)", G, what, most, before, procs, threadSlack)
		}
	}

	errs := make(chan error, G)
	for i := range G {
		x := r
		if i%2 == 1 {
			x = u
		}
		go func() { errs <- waitInCond(x) }()
	}
	l := h.lockWhen(r, fmt.Sprintf("%d goroutines in Lock.Wait", G), func() bool { return d.Arrived == uint64(G) })
	h.ok(l.Unlock(), "Unlock")
	err := awaitWaiters("conformance.waitInCond(", condWaitFrame, G, time.Minute)
	during, most := settledThreads(10 * time.Second)
	l, lerr := r.Lock()
	h.ok(lerr, "Lock")
	d.Gen++
	h.ok(r.Broadcast(), "Broadcast")
	h.ok(l.Unlock(), "Unlock")
	for range G {
		h.ok(recv(h, errs, "Lock.Wait"), "Lock.Wait")
	}
	check("Lock.Wait", err, during, most)
	if d.Woke != uint64(G) {
		h.t.Fatalf("%d of %d waiters woke", d.Woke, G)
	}

	for range G {
		go func() { errs <- waitOnFutex(d) }()
	}
	err = awaitWaiters("conformance.waitOnFutex(", futexWaitFrame, G, time.Minute)
	during, most = settledThreads(10 * time.Second)
	d.Word.Store(1)
	d.Word.Wake(1 << 30)
	for range G {
		h.ok(recv(h, errs, "Futex.Wait"), "Futex.Wait")
	}
	check("Futex.Wait", err, during, most)
}
