package conformance

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/shmgo/shm"
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
func testLockDeathTrials(h *H) {
	key := h.Key("trials")
	r := h.create(key, 64)
	n := deathTrials()
	times := make([]time.Duration, 0, n)
	var good uint64 // increments that completed under the lock
	for i := range n {
		ch := h.start("hold", key, []string{"1000"})
		ch.expect("locked")
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
		ch.kill()
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
	spec := c.spec
	raw := fmt.Sprintf(`{"Test":%q,"Role":"hold","Key":%q,"Args":["1000"]}`, spec.Test, spec.Key)
	cmd := exec.Command(os.Args[0], "-test.run="+runPattern(spec.Test), "-test.count=1")
	cmd.Env = append(os.Environ(), envChild+"="+raw)
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
	// The holder's first event, a whole line (a pipe may hand it over in
	// pieces); anything else it prints is not an event.
	lines := bufio.NewReader(out)
	for {
		line, err := lines.ReadString('\n')
		if ev, ok := strings.CutPrefix(strings.TrimSpace(line), "SHMCONF "); ok {
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
func testLockHolderZombie(h *H) {
	key := h.Key("zombie")
	r := h.create(key, 64)
	zp := h.start("zombieparent", key, nil)
	zp.expect("locked")
	zp.send("kill")
	zp.expect("zombie")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := r.LockContext(ctx)
	h.is(err, shm.ErrOwnerDead)
	h.ok(l.MarkConsistent(), "MarkConsistent")
	h.ok(l.Unlock(), "Unlock")
	zp.send("exit")
	zp.wait()
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
// number of slots) record process pid with
// start time start, judged by PID (its Live field holds a tag, as for a
// process whose kernel refuses robust lists), and makes the lock word name
// that slot as its holder, as package shm documents the layout: the number
// of slots at offset 264, slot i at 512+32*i (Live at +0, start time at +16,
// PID at +24, PID namespace at +28), the lock word at 384.
func forgeHolder(r *shm.Region, pid int, start uint64) {
	base := unsafe.Add(r.Pointer(), -defaultDataOffset)
	users := *(*uint32)(unsafe.Add(base, 264))
	k := users - 1
	sl := unsafe.Add(base, 512+32*int(k))
	*(*uint64)(unsafe.Add(sl, 16)) = start
	*(*uint32)(unsafe.Add(sl, 24)) = uint32(pid)
	*(*uint32)(unsafe.Add(sl, 28)) = uint32(pidNS())
	*(*uint32)(sl) = 1<<22 + 12345 // a tag: judged by PID
	*(*uint32)(unsafe.Add(base, 384)) = (k + 1) | 1<<31
}

// defaultDataOffset is where the data of a region created with the default
// number of user slots starts: the header (512 bytes), then 32 bytes a slot.
const defaultDataOffset = 512 + 32*shm.DefaultUsers

// testLockHolderPIDReused: the word names a live process, but not the one
// that took the lock (its start time differs): the holder is dead and its
// PID reused. With the right start time, the live holder is respected.
func testLockHolderPIDReused(h *H) {
	key := h.Key("reuse")
	r := h.create(key, 64)
	live := h.start("holdall", key, nil) // a live process that does not hold the lock
	live.expect("open")
	pid := live.cmd.Process.Pid
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
	live.send("go")
	live.wait()
}

// roleWaiter waits for the lock after "go"; it says "dead" when it got it
// with ErrOwnerDead (and repairs) or "ok", then increments and unlocks.
func roleWaiter(c *childCtx) error {
	r, err := c.openReady()
	if err != nil {
		return err
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
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
	c.say(what)
	return nil
}

// testLockTakeoverRace: when a holder dies with several waiters in several
// processes and goroutines, exactly one of them gets ErrOwnerDead.
func testLockTakeoverRace(h *H) {
	key := h.Key("takeover")
	r := h.create(key, 64)
	holder := h.start("hold", key, []string{"1000"})
	holder.expect("locked")
	var waiters []*child
	for range 3 {
		w := h.start("waiter", key, nil)
		w.expect("ready")
		waiters = append(waiters, w)
	}
	for _, w := range waiters {
		w.send("go")
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
	time.Sleep(50 * time.Millisecond) // everyone waits
	holder.kill()
	wg.Wait()
	for _, w := range waiters {
		if w.expect("") == "dead" {
			dead++
		}
		w.wait()
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

// roleLoad runs Args[0] goroutines doing Args[1] locked increments each, and
// reports the most OS threads it saw.
func roleLoad(c *childCtx) error {
	r, err := c.openReady()
	if err != nil {
		return err
	}
	defer r.Close()
	g, n := c.arg(0), c.arg(1)
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
	stop := make(chan struct{})
	maxThreads := make(chan int)
	go func() {
		m := threads()
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				maxThreads <- m
				return
			case <-t.C:
				m = max(m, threads())
			}
		}
	}()
	wg.Wait()
	close(stop)
	m := <-maxThreads
	select {
	case err := <-errs:
		return err
	default:
	}
	c.say("done %d", m)
	return nil
}

// testLockLoad: 4 processes x 8 goroutines x 250,000 locked increments
// (25,000 under -short) give an exact count, and each process keeps a
// bounded number of OS threads (goroutines queue in-process instead of
// each sleeping in the kernel).
func testLockLoad(h *H) {
	const P, G = 4, 8
	n := 250000
	if testing.Short() {
		n = 25000
	}
	key := h.Key("load")
	r := h.create(key, 64)
	var ch []*child
	for range P {
		c := h.start("load", key, []string{strconv.Itoa(G), strconv.Itoa(n)})
		c.expect("ready")
		ch = append(ch, c)
	}
	start := time.Now()
	for _, c := range ch {
		c.send("go")
	}
	var most []int
	for _, c := range ch {
		ev := c.expect("done")
		t, _ := strconv.Atoi(strings.TrimPrefix(ev, "done "))
		most = append(most, t)
		c.wait()
	}
	el := time.Since(start)
	if got, want := counter(r.Bytes()), uint64(P*G*n); got != want {
		h.t.Fatalf("counter %d, want %d", got, want)
	}
	for _, t := range most {
		if t > 4*G {
			h.t.Fatalf("a process grew to %d OS threads with %d goroutines contending", t, G)
		}
	}
	h.t.Logf("%d processes x %d goroutines x %d increments in %v (%.0f ns each); most OS threads per process: %v",
		P, G, n, el.Round(time.Millisecond), float64(el.Nanoseconds())/float64(P*G*n), most)
}

// testLockWaitersThreads: 64 goroutines waiting for a lock held by another
// process must not each hold an OS thread asleep in the kernel.
func testLockWaitersThreads(h *H) {
	key := h.Key("threads")
	r := h.create(key, 64)
	holder := h.start("hold", key, []string{"0"})
	holder.expect("locked")
	before := threads()
	const G = 64
	var wg sync.WaitGroup
	for range G {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := r.Lock()
			if err != nil {
				h.t.Error(err)
				return
			}
			incr(r.Bytes())
			l.Unlock()
		}()
	}
	time.Sleep(200 * time.Millisecond)
	during := threads()
	holder.send("go")
	holder.wait()
	wg.Wait()
	h.t.Logf("OS threads: %d before, %d with %d goroutines waiting", before, during, G)
	if during > before+16 {
		h.t.Fatalf("%d goroutines waiting took %d OS threads (from %d)", G, during, before)
	}
	if counter(r.Bytes()) != G {
		h.t.Fatalf("counter %d, want %d", counter(r.Bytes()), G)
	}
}

// testReplaceStale: a key left by a killed owner is taken over by Create
// with WithReplaceStale when nobody maps it, and refused (ErrExist) while
// its creator lives or another process still maps it.
func testReplaceStale(h *H) {
	// A live creator: never replaced.
	key := h.Key("stale-live")
	owner := h.start("umask", key, []string{"600"}) // creates, says "created", waits
	owner.expect("created")
	_, err := shm.Create(key, 4096, h.Opt(), shm.WithReplaceStale())
	h.is(err, shm.ErrExist)
	owner.kill()

	// Dead creator, nobody attached: replaced (or already gone, for
	// backends whose keys die with their owner).
	r, err := shm.Create(key, 4096, h.Opt())
	if err != nil {
		h.is(err, shm.ErrExist) // a key that outlives its owner...
		r, err = shm.Create(key, 4096, h.Opt(), shm.WithReplaceStale())
		h.ok(err, "Create with WithReplaceStale over a dead owner's key")
	}
	r.Close()

	// Dead creator, but a user still maps the region: not replaced.
	key2 := h.Key("stale-used")
	owner = h.start("umask", key2, []string{"600"})
	owner.expect("created")
	user := h.start("holdall", key2, nil)
	user.expect("open")
	owner.kill()
	if _, err := shm.Stat(key2, h.Opt()); errors.Is(err, shm.ErrNotExist) {
		h.t.Logf("%s keys die with their owner: nothing stale to refuse", h.b.Name())
	} else {
		_, err = shm.Create(key2, 4096, h.Opt(), shm.WithReplaceStale())
		h.is(err, shm.ErrExist)
		h.t.Logf("refused while in use: %v", err)
	}
	user.send("go")
	user.wait()
}
