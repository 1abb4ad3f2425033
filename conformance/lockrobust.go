package conformance

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
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
	"github.com/shmgo/shm/internal/reexec"
)

func init() {
	roles["spin"] = roleSpin
	roles["holdexec"] = roleHoldExec
	roles["loadrepair"] = roleLoadRepair
}

// The data of the kill tests: two counters that the critical section
// advances one after the other, so that a holder killed between the two
// stores leaves them one apart (a half update), and a holder killed outside
// leaves them equal.
type pair struct{ a, b uint64 }

func pairOf(r *shm.Region) *pair { return (*pair)(unsafe.Pointer(&r.Bytes()[0])) }

// roleSpin locks and unlocks in a tight loop until it is killed: the record
// log pattern, a lock for every event.
func roleSpin(c *childCtx) error {
	r, err := c.openReady()
	if err != nil {
		return err
	}
	p := pairOf(r)
	c.say("spinning")
	for {
		l, err := r.Lock()
		if errors.Is(err, shm.ErrOwnerDead) {
			p.b = p.a
			l.MarkConsistent()
		} else if err != nil {
			return err
		}
		p.a++
		p.b++
		l.Unlock()
	}
}

// killTrials is the number of holders testLockKilledAtRandom kills.
func killTrials() int {
	if testing.Short() {
		return 100
	}
	return 1000
}

// testLockKilledAtRandom kills a process at a random moment of a tight
// Lock/Unlock loop, again and again, half the time while this process
// contends for the lock too. After every kill the lock must be taken again
// within the test's patience: free, or with ErrOwnerDead when the kill
// landed in the critical section (then the counters are at most one apart;
// otherwise they are equal). It logs the recovery time, from the kill to
// the next holding, at the median and the 99th percentile.
func testLockKilledAtRandom(h *harness) {
	key := h.Key("random")
	r := h.create(key, 64)
	p := pairOf(r)
	n := killTrials()
	times := make([]time.Duration, 0, n)
	dead := 0
	for i := range n {
		ch := h.start("spin", key, nil)
		ch.Expect("ready")
		ch.Send("go")
		ch.Expect("spinning")
		stop := make(chan struct{})
		var contending sync.WaitGroup
		if i%2 == 1 {
			contending.Add(1)
			go func() {
				defer contending.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					l, err := r.LockContext(ctx)
					cancel()
					if errors.Is(err, shm.ErrOwnerDead) {
						p.b = p.a
						l.MarkConsistent()
					} else if err != nil {
						h.t.Error(err)
						return
					}
					p.a++
					p.b++
					l.Unlock()
				}
			}()
		}
		time.Sleep(time.Duration(rand.Int64N(int64(3 * time.Millisecond))))
		killed := time.Now()
		ch.Kill()
		close(stop)
		contending.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		l, err := r.LockContext(ctx)
		cancel()
		times = append(times, time.Since(killed))
		switch {
		case errors.Is(err, shm.ErrOwnerDead):
			dead++
			if p.a != p.b && p.a != p.b+1 {
				h.t.Fatalf("trial %d: counters %d and %d after a holder died: more than its own half update", i, p.a, p.b)
			}
			p.b = p.a
			h.ok(l.MarkConsistent(), "MarkConsistent")
		case err != nil:
			h.t.Fatalf("trial %d: Lock after the kill: %v (stuck?)", i, err)
		case p.a != p.b:
			h.t.Fatalf("trial %d: counters %d and %d with no ErrOwnerDead: a half update went unreported", i, p.a, p.b)
		}
		h.ok(l.Unlock(), "Unlock")
	}
	slices.Sort(times)
	h.t.Logf("%d processes killed at random in a Lock/Unlock loop: all recovered, %d of them holding; recovery p50 %v, p99 %v, max %v",
		n, dead, times[len(times)/2], times[(len(times)*99+99)/100-1], times[len(times)-1])
}

// The data of testLockLoadKilled: the total, the increments of the killed
// processes, and the update in progress, which a holder that takes over
// from a dead one completes.
type ledger struct {
	total, killed        uint64
	pendTotal, pendKilld uint64
	pending              uint64
}

func ledgerOf(r *shm.Region) *ledger { return (*ledger)(unsafe.Pointer(&r.Bytes()[0])) }

// add updates the ledger under the lock l, which was taken with err.
func (g *ledger) add(l shm.Lock, err error, killed uint64) error {
	if errors.Is(err, shm.ErrOwnerDead) {
		if g.pending != 0 {
			g.total, g.killed = g.pendTotal, g.pendKilld
			g.pending = 0
		}
		if err := l.MarkConsistent(); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	g.pendTotal, g.pendKilld = g.total+1, g.killed+killed
	g.pending = 1
	g.total, g.killed = g.pendTotal, g.pendKilld
	g.pending = 0
	return l.Unlock()
}

// roleLoadRepair runs Args[0] goroutines that update the ledger under the
// lock until told "stop", then says "done N" with the number of updates;
// with Args[1] = 1 it counts its updates as the killed ones and runs until
// it is killed. A goroutine that waits more than stallAfter for the lock
// fails the process.
func roleLoadRepair(c *childCtx) error {
	r, err := c.openReady()
	if err != nil {
		return err
	}
	g, victim := c.arg(0), c.arg(1) == 1
	led := ledgerOf(r)
	var killed uint64
	if victim {
		killed = 1
		c.say("spinning")
	}
	var stop atomic.Bool
	go func() {
		c.hear()
		stop.Store(true)
	}()
	var wg sync.WaitGroup
	var updates atomic.Int64
	errs := make(chan error, g)
	for range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				ctx, cancel := context.WithTimeout(context.Background(), stallAfter)
				l, err := r.LockContext(ctx)
				cancel()
				if err := led.add(l, err, killed); err != nil {
					errs <- err
					return
				}
				updates.Add(1)
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	c.say("done %d", updates.Load())
	return nil
}

// stallAfter is how long a waiter of testLockLoadKilled may wait for the
// lock before the test calls it stuck: orders of magnitude beyond a
// critical section, even on a loaded machine.
const stallAfter = 30 * time.Second

// testLockLoadKilled: 4 processes x 8 goroutines update a ledger under the
// lock while a fifth process, updating it too, is killed and restarted
// again and again (80 times; 20 under -short). Nobody stalls (every update
// takes the lock within stallAfter), and after the last repair the ledger
// is exact: the total is the steady processes' updates plus the ones the
// killed processes completed.
func testLockLoadKilled(h *harness) {
	const P, G = 4, 8
	kills := 80
	if testing.Short() {
		kills = 20
	}
	key := h.Key("loadkill")
	r := h.create(key, 64)
	var steady []*reexec.Proc
	for range P {
		c := h.start("loadrepair", key, []string{strconv.Itoa(G), "0"})
		c.Expect("ready")
		steady = append(steady, c)
	}
	for _, c := range steady {
		c.Send("go")
	}
	for range kills {
		k := h.start("loadrepair", key, []string{strconv.Itoa(G), "1"})
		k.Expect("ready")
		k.Send("go")
		k.Expect("spinning")
		time.Sleep(time.Duration(1+rand.Int64N(4)) * time.Millisecond)
		k.Kill()
	}
	var total uint64
	for _, c := range steady {
		c.Send("stop")
		ev := c.Expect("done")
		n, _ := strconv.ParseUint(strings.TrimPrefix(ev, "done "), 10, 64)
		total += n
		c.Wait()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := r.LockContext(ctx)
	led := ledgerOf(r)
	if errors.Is(err, shm.ErrOwnerDead) && led.pending != 0 {
		led.total, led.killed, led.pending = led.pendTotal, led.pendKilld, 0
	} else if err != nil && !errors.Is(err, shm.ErrOwnerDead) {
		h.t.Fatal(err)
	}
	if want := total + led.killed; led.total != want {
		h.t.Fatalf("total %d, want %d steady updates + %d by killed processes = %d", led.total, total, led.killed, want)
	}
	h.t.Logf("%d x %d goroutines made %d updates while %d processes were killed amid them (%d updates of theirs): exact, nobody stalled",
		P, G, total, kills, led.killed)
	l.MarkConsistent()
	l.Unlock()
}

// roleHoldExec takes the lock, says so, and replaces itself with a program
// that does not map the region (sleep), keeping its PID.
func roleHoldExec(c *childCtx) error {
	r, err := c.openReady()
	if err != nil {
		return err
	}
	if _, err := r.Lock(); err != nil {
		return err
	}
	pairOf(r).a++ // a half update
	c.say("locked")
	c.hear()
	sleep := "/bin/sleep"
	if _, err := os.Stat(sleep); err != nil {
		sleep = "/usr/bin/sleep"
	}
	return syscall.Exec(sleep, []string{"sleep", "600"}, nil)
}

// testLockHolderExecs: a holder that execs no longer maps the region; its
// PID lives on, but the lock is taken over with ErrOwnerDead.
func testLockHolderExecs(h *harness) {
	key := h.Key("exec")
	r := h.create(key, 64)
	ch := h.start("holdexec", key, nil)
	ch.Expect("ready")
	ch.Send("go")
	ch.Expect("locked")
	ch.Send("exec")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := r.LockContext(ctx)
	h.is(err, shm.ErrOwnerDead)
	if err := syscall.Kill(ch.PID(), 0); err != nil {
		h.t.Fatalf("the holder's PID is gone (%v): the test meant it to live on after exec", err)
	}
	p := pairOf(r)
	if p.a != p.b+1 {
		h.t.Fatalf("counters %d and %d, want the holder's half update", p.a, p.b)
	}
	p.b = p.a
	h.ok(l.MarkConsistent(), "MarkConsistent")
	h.ok(l.Unlock(), "Unlock")
	ch.Kill()
}

// testTryLockDeadHolder: TryLock takes a dead holder's lock over at once,
// with ErrOwnerDead, instead of reporting it held.
func testTryLockDeadHolder(h *harness) {
	key := h.Key("trydead")
	r := h.create(key, 64)
	ch := h.start("hold", key, []string{"1000"})
	ch.Expect("locked")
	_, err := r.TryLock()
	h.is(err, shm.ErrLocked)
	ch.Kill()
	l, err := r.TryLock()
	h.is(err, shm.ErrOwnerDead)
	if c := counter(r.Bytes()); c != 1000 {
		h.t.Fatalf("counter %d, want the dead holder's 1000", c)
	}
	h.ok(l.MarkConsistent(), "MarkConsistent")
	h.ok(l.Unlock(), "Unlock")
	l, err = r.TryLock()
	h.ok(err, "TryLock after the repair")
	h.ok(l.Unlock(), "Unlock")
}

// testCloseWhileLocking: Close runs while other goroutines lock, try, wait
// and unlock through the same Region. No crash; every call ends, those
// after Close with ErrClosed; the lock is left free for others.
func testCloseWhileLocking(h *harness) {
	for round := range 20 {
		key := h.Key("closerace")
		r := h.create(key, 64)
		u := h.open(key)
		var wg sync.WaitGroup
		var bad atomic.Value
		check := func(what string, err error) bool {
			switch {
			case err == nil:
				return true
			case errors.Is(err, shm.ErrClosed), errors.Is(err, shm.ErrLocked),
				errors.Is(err, shm.ErrNotLocked), errors.Is(err, shm.ErrOwnerDead):
				return false
			}
			bad.Store(what + ": " + err.Error())
			return false
		}
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					var l shm.Lock
					var err error
					switch g % 3 {
					case 0:
						l, err = u.Lock()
					case 1:
						l, err = u.TryLock()
					default:
						ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
						l, err = u.LockContext(ctx)
						cancel()
					}
					if errors.Is(err, shm.ErrClosed) {
						return
					}
					if check("lock", err) {
						check("unlock", l.Unlock())
					}
				}
			}()
		}
		// Let some of them wait in the kernel behind a holder elsewhere.
		l, err := r.Lock()
		h.ok(err, "Lock")
		time.Sleep(time.Duration(rand.Int64N(int64(2 * time.Millisecond))))
		if round%2 == 0 {
			h.ok(l.Unlock(), "Unlock")
		}
		h.ok(u.Close(), "Close while other goroutines lock")
		wg.Wait()
		if v := bad.Load(); v != nil {
			h.t.Fatalf("round %d: %v", round, v)
		}
		if round%2 == 1 {
			h.ok(l.Unlock(), "Unlock")
		}
		l, err = r.TryLock()
		h.ok(err, "TryLock after the Close")
		h.ok(l.Unlock(), "Unlock")
		h.ok(r.Close(), "Close")
	}
}
