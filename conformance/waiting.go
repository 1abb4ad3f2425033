package conformance

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
)

func init() {
	roles["futexwait"] = roleFutexWait
	roles["condpong"] = roleCondPong
	roles["condsleep"] = roleCondSleep
	roles["readonly"] = roleReadOnly
}

// The data of the waiting tests: a counter the lock guards, and a Futex.
type waitData struct {
	N    uint64
	Word shm.Futex
}

func waitDataOf(t testing.TB, r *shm.Region) *waitData {
	d, err := shm.View[waitData](r, 0)
	if err != nil {
		t.Fatalf("View: %v", err)
	}
	return d
}

// roleFutexWait waits on the Futex until it leaves 0, then says so.
func roleFutexWait(c *childCtx) error {
	r, err := c.openReady()
	if err != nil {
		return err
	}
	defer r.Close()
	d, err := shm.View[waitData](r, 0)
	if err != nil {
		return err
	}
	c.say("waiting")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for d.Word.Load() == 0 {
		if err := d.Word.Wait(ctx, 0); err != nil {
			return err
		}
	}
	c.say("woke %d", d.Word.Load())
	return nil
}

// testFutexAcrossProcesses: a Futex.Wait in another process ends when this
// one stores and wakes, and a Wait in this process ends at its deadline.
func testFutexAcrossProcesses(h *harness) {
	key := h.Key("futex")
	r := h.create(key, 64)
	d := waitDataOf(h.t, r)
	ch := h.start("futexwait", key, nil)
	ch.Expect("ready")
	ch.Send("go")
	ch.Expect("waiting")
	time.Sleep(time.Millisecond)
	d.Word.Store(7)
	d.Word.Wake(1)
	if ev := ch.Expect("woke"); ev != "woke 7" {
		h.t.Fatalf("waiter said %q, want woke 7", ev)
	}
	ch.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	h.is(d.Word.Wait(ctx, 7), shm.ErrTimeout)
	h.ok(d.Word.Wait(context.Background(), 8), "Wait on a word that does not hold old")
}

// roleCondPong: under the lock, 50 times, waits until the counter is odd,
// makes it even and signals.
func roleCondPong(c *childCtx) error {
	r, err := c.openReady()
	if err != nil {
		return err
	}
	defer r.Close()
	d, err := shm.View[waitData](r, 0)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := r.Lock()
	if err != nil {
		return err
	}
	c.say("waiting")
	for range 50 {
		for d.N%2 == 0 {
			if err := l.Wait(ctx); err != nil {
				return err
			}
		}
		d.N++
		if err := r.Signal(); err != nil {
			return err
		}
	}
	if err := l.Unlock(); err != nil {
		return err
	}
	c.say("done")
	return nil
}

// testCondAcrossProcesses: a ping-pong through Lock.Wait and Signal with
// another process loses no wake-up in 50 rounds each way.
func testCondAcrossProcesses(h *harness) {
	key := h.Key("cond")
	r := h.create(key, 64)
	d := waitDataOf(h.t, r)
	ch := h.start("condpong", key, nil)
	ch.Expect("ready")
	ch.Send("go")
	ch.Expect("waiting")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := r.Lock()
	h.ok(err, "Lock")
	for round := range 50 {
		d.N++
		h.ok(r.Signal(), "Signal")
		for d.N%2 == 1 {
			if err := l.Wait(ctx); err != nil {
				h.t.Fatalf("round %d: Wait: %v", round, err)
			}
		}
	}
	h.ok(l.Unlock(), "Unlock")
	ch.Expect("done")
	ch.Wait()
}

// roleCondSleep waits on the condition until it is killed.
func roleCondSleep(c *childCtx) error {
	r, err := c.openReady()
	if err != nil {
		return err
	}
	l, err := r.Lock()
	if err != nil {
		return err
	}
	go func() {
		for {
			l.Wait(context.Background())
		}
	}()
	// Wait releases the lock after it counted itself: say "waiting" only
	// once another Region of this process could take the lock, so that a
	// kill cannot find the waiter between the two.
	r2, err := shm.Open(c.key, 0, c.opt())
	if err != nil {
		return err
	}
	for wait := 100 * time.Microsecond; ; wait = min(2*wait, 10*time.Millisecond) {
		l2, err := r2.TryLock()
		if err == nil {
			if err := l2.Unlock(); err != nil {
				return err
			}
			break
		}
		if !errors.Is(err, shm.ErrLocked) {
			return err
		}
		time.Sleep(wait)
	}
	c.say("waiting")
	select {}
}

// testCondWaiterKilled: a process killed in Lock.Wait blocks nobody: the
// lock is free, and Signal and Broadcast return.
func testCondWaiterKilled(h *harness) {
	key := h.Key("condkill")
	r := h.create(key, 64)
	ch := h.start("condsleep", key, nil)
	ch.Expect("ready")
	ch.Send("go")
	ch.Expect("waiting")
	ch.Kill()
	l, err := r.TryLock()
	h.ok(err, "TryLock after a waiter was killed in Wait")
	h.ok(r.Signal(), "Signal")
	h.ok(r.Broadcast(), "Broadcast")
	h.ok(l.Unlock(), "Unlock")
}

// roleReadOnly opens the region read-only, as a user who may only read
// it: reads it, cannot lock, and waits on the Futex.
func roleReadOnly(c *childCtx) error {
	if _, err := shm.Open(c.key, 0, c.opt()); !errors.Is(err, fs.ErrPermission) {
		return errors.New("read-write Open by a user who may only read: " + errString(err) + ", want fs.ErrPermission")
	}
	r, err := shm.Open(c.key, 10*time.Second, c.opt(), shm.WithReadOnly())
	if err != nil {
		return err
	}
	defer r.Close()
	d, err := shm.View[waitData](r, 0)
	if err != nil {
		return err
	}
	if got := string(r.Bytes()[16:21]); got != "hello" {
		return errors.New("read " + got)
	}
	if _, err := r.Lock(); !errors.Is(err, fs.ErrPermission) {
		return errors.New("Lock: " + errString(err) + ", want fs.ErrPermission")
	}
	if err := r.Signal(); !errors.Is(err, fs.ErrPermission) {
		return errors.New("Signal: " + errString(err) + ", want fs.ErrPermission")
	}
	if err := r.Broadcast(); !errors.Is(err, fs.ErrPermission) {
		return errors.New("Broadcast: " + errString(err) + ", want fs.ErrPermission")
	}
	c.say("waiting")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for d.Word.Load() == 0 {
		if err := d.Word.Wait(ctx, 0); err != nil {
			return err
		}
	}
	c.say("woke")
	return nil
}

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}

// testReadOnly: a user who may only read a 0644 region opens it
// WithReadOnly, reads it, waits on a Futex in it, and may not lock, Signal
// or Broadcast (fs.ErrPermission). A
// backend without backend.ReadOnlyOpener refuses WithReadOnly with
// ErrInvalidOption.
func testReadOnly(h *harness) {
	key := h.Key("readonly")
	r := h.create(key, 64, shm.WithMode(0o644))
	if _, ok := h.b.(backend.ReadOnlyOpener); !ok {
		_, err := shm.Open(key, 0, h.Opt(), shm.WithReadOnly())
		h.is(err, shm.ErrInvalidOption)
		h.t.Logf("%s has no backend.ReadOnlyOpener", h.b.Name())
		return
	}
	u, err := shm.Open(key, 0, h.Opt(), shm.WithReadOnly())
	h.ok(err, "Open WithReadOnly")
	_, err = u.TryLock()
	h.is(err, fs.ErrPermission)
	h.is(u.Signal(), fs.ErrPermission)
	h.is(u.Broadcast(), fs.ErrPermission)
	h.ok(u.Close(), "Close of a read-only Region")
	if os.Geteuid() != 0 {
		h.t.Skip("skipped: the rest runs a child as another user, which needs root (CI runs as root)")
	}
	copy(r.Bytes()[16:], "hello")
	d := waitDataOf(h.t, r)
	ch := h.start("readonly", key, nil, asOther)
	ch.Expect("waiting")
	d.Word.Store(1)
	d.Word.Wake(1)
	ch.Expect("woke")
	ch.Wait()
}

// testViewChecks: View and Slice refuse what cannot be shared or does not
// fit, with ErrInvalidView saying why, on every backend's memory.
func testViewChecks(h *harness) {
	r := h.create(h.Key("view"), 4096)
	type withString struct{ S string }
	type withSlice struct{ B []byte }
	type withIface struct{ E any }
	for _, c := range []struct {
		name string
		err  error
		msg  string
	}{
		{"a struct with a string", func() error { _, err := shm.View[withString](r, 0); return err }(), "string"},
		{"a struct with a slice", func() error { _, err := shm.View[withSlice](r, 0); return err }(), "slice"},
		{"a struct with an interface", func() error { _, err := shm.View[withIface](r, 0); return err }(), "interface"},
		{"a misaligned offset", func() error { _, err := shm.View[uint64](r, 3); return err }(), "alignment"},
		{"out of range", func() error { _, err := shm.Slice[uint64](r, 0, 513); return err }(), "do not fit"},
		{"a zero-size type", func() error { _, err := shm.View[struct{}](r, 0); return err }(), "size 0"},
	} {
		if !errors.Is(c.err, shm.ErrInvalidView) || !strings.Contains(c.err.Error(), c.msg) {
			h.t.Errorf("View of %s: %v, want ErrInvalidView saying %q", c.name, c.err, c.msg)
		}
	}
	s, err := shm.Slice[uint64](r, 0, 512)
	h.ok(err, "Slice of the whole data")
	if uintptr(unsafe.Pointer(&s[0])) != uintptr(r.Pointer()) {
		h.t.Fatal("Slice does not start at the data")
	}
}
