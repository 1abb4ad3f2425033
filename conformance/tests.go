package conformance

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/internal/fdtest"
	"github.com/shmgo/shm/internal/layout"
	"github.com/shmgo/shm/internal/reexec"
)

// roles are the parts children play, by name.
var roles = map[string]role{
	"share":   roleShare,
	"count":   roleCount,
	"hold":    roleHold,
	"create":  roleCreate,
	"verify":  roleVerify,
	"attach":  roleAttach,
	"umask":   roleUmaskCreate,
	"holdall": roleHoldAll,
	"initdie": roleInitDie,
}

func (c *childCtx) opt() shm.Option { return shm.WithBackend(c.b) }

func (c *childCtx) open() (*shm.Region, error) {
	return shm.Open(c.key, 30*time.Second, c.opt())
}

// openReady opens the region, says "ready" and waits for the parent's
// go-ahead, so that the parent can start several children at once.
func (c *childCtx) openReady() (*shm.Region, error) {
	r, err := c.open()
	if err == nil {
		c.say("ready")
		c.hear()
	}
	return r, err
}

func testShareInProcess(h *harness) {
	key := h.Key("share")
	owner := h.create(key, 8192)
	user := h.open(key)
	copy(owner.Bytes(), "from owner")
	copy(user.Bytes()[4096:], "from user")
	if got := string(user.Bytes()[:10]); got != "from owner" {
		h.t.Fatalf("user sees %q, want the owner's write", got)
	}
	if got := string(owner.Bytes()[4096:4105]); got != "from user" {
		h.t.Fatalf("owner sees %q, want the user's write", got)
	}
	if user.Size() != 8192 || owner.Size() != 8192 {
		h.t.Fatalf("sizes %d and %d, want 8192", owner.Size(), user.Size())
	}
	if user.Key() != key || owner.Key() != key {
		h.t.Fatalf("keys %q and %q, want %q", owner.Key(), user.Key(), key)
	}
}

// roleShare checks the parent's bytes at 0 and writes its own at 4096.
func roleShare(c *childCtx) error {
	r, err := c.open()
	if err != nil {
		return err
	}
	defer r.Close()
	if got := string(r.Bytes()[:11]); got != "from parent" {
		return errors.New("child sees " + strconv.Quote(got))
	}
	copy(r.Bytes()[4096:], "from child")
	c.say("done")
	return nil
}

func testShareAcrossProcesses(h *harness) {
	key := h.Key("xshare")
	r := h.create(key, 8192)
	copy(r.Bytes(), "from parent")
	ch := h.start("share", key, nil)
	ch.Expect("done")
	ch.Wait()
	if got := string(r.Bytes()[4096:4106]); got != "from child" {
		h.t.Fatalf("parent sees %q, want the child's write", got)
	}
}

func testCreateExisting(h *harness) {
	key := h.Key("exist")
	r := h.create(key, 64)
	copy(r.Bytes(), "first")
	_, err := shm.Create(key, 64, h.Opt())
	h.is(err, shm.ErrExist, fs.ErrExist)
	var e *shm.Error
	if !errors.As(err, &e) || e.Op != "create" || e.Key != key {
		h.t.Fatalf("error %v is not an *shm.Error naming create and %s", err, key)
	}
	u := h.open(key)
	if string(u.Bytes()[:5]) != "first" {
		h.t.Fatal("the failed Create disturbed the existing region")
	}
}

func testOpenMissing(h *harness) {
	key := h.Key("missing")
	_, err := shm.Open(key, 0, h.Opt())
	h.is(err, shm.ErrNotExist, shm.ErrTimeout, fs.ErrNotExist, os.ErrDeadlineExceeded)
	_, err = shm.Open(key, 30*time.Millisecond, h.Opt())
	h.is(err, shm.ErrNotExist, shm.ErrTimeout)

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	_, err = shm.OpenContext(ctx, key, h.Opt())
	h.is(err, shm.ErrNotExist, context.Canceled)

	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err = shm.OpenContext(ctx, key, h.Opt())
	h.is(err, shm.ErrNotExist, shm.ErrTimeout, context.DeadlineExceeded)
}

// testOpenEndedContext: OpenContext with a context that has already ended,
// on a key that exists, looks once or not at all: it returns the region
// (where a look needs no other process) or ctx's error (where attaching
// needs the owner's answer), at once, and nothing else.
func testOpenEndedContext(h *harness) {
	key := h.Key("ended")
	owner := h.create(key, 64)
	copy(owner.Bytes(), "here")
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	for _, c := range []struct {
		name string
		ctx  context.Context
		want []error
	}{
		{"cancelled", cancelled, []error{context.Canceled}},
		{"past its deadline", expired, []error{shm.ErrTimeout, context.DeadlineExceeded}},
	} {
		start := time.Now()
		r, err := shm.OpenContext(c.ctx, key, h.Opt())
		if took := time.Since(start); took > 10*time.Second {
			h.t.Fatalf("OpenContext with a context %s took %v", c.name, took)
		}
		if err != nil {
			for _, w := range c.want {
				if !errors.Is(err, w) {
					h.t.Fatalf("OpenContext of an existing key with a context %s: %v, want a region or an error matching %v", c.name, err, c.want)
				}
			}
			h.t.Logf("OpenContext with a context %s: %v", c.name, err)
			continue
		}
		if string(r.Bytes()[:4]) != "here" {
			h.t.Fatalf("OpenContext with a context %s: data %q", c.name, r.Bytes()[:4])
		}
		h.ok(r.Close(), "Close")
	}
}

func testOpenBeforeCreate(h *harness) {
	key := h.Key("later")
	type result struct {
		r   *shm.Region
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := shm.Open(key, 30*time.Second, h.Opt())
		done <- result{r, err}
	}()
	time.Sleep(30 * time.Millisecond)
	select {
	case res := <-done:
		h.t.Fatalf("Open returned before Create: %v", res.err)
	default:
	}
	owner := h.create(key, 100)
	copy(owner.Bytes(), "made later")
	res := <-done
	h.ok(res.err, "Open started before Create")
	defer res.r.Close()
	if res.r.Size() != 100 || string(res.r.Bytes()[:10]) != "made later" {
		h.t.Fatalf("Open got size %d data %q", res.r.Size(), res.r.Bytes()[:10])
	}
}

func testOpenWaitsForReady(h *harness) {
	key := h.Key("ready")
	release := make(chan struct{})
	inInit := make(chan struct{})
	var released atomic.Bool
	created := make(chan error, 1)
	go func() {
		r, err := shm.Create(key, 4096, h.Opt(), shm.WithInit(func(b []byte) error {
			copy(b, "initialised")
			close(inInit)
			<-release
			return nil
		}))
		if err == nil {
			h.t.Cleanup(func() { r.Close() })
		}
		created <- err
	}()
	<-inInit
	// While the owner initialises, a user must not get the region.
	_, err := shm.Open(key, 0, h.Opt())
	if err == nil {
		h.t.Fatal("Open(timeout 0) returned a region whose owner is still initialising")
	}
	_, err = shm.Open(key, 50*time.Millisecond, h.Opt())
	h.is(err, shm.ErrTimeout)

	opened := make(chan error, 1)
	go func() {
		u, err := shm.Open(key, 30*time.Second, h.Opt())
		if err == nil {
			if !released.Load() {
				err = errors.New("Open returned before the owner was ready")
			} else if string(u.Bytes()[:11]) != "initialised" {
				err = errors.New("user does not see the owner's initialisation")
			}
			u.Close()
		}
		opened <- err
	}()
	time.Sleep(30 * time.Millisecond)
	released.Store(true)
	close(release)
	h.ok(<-created, "Create")
	h.ok(<-opened, "Open waiting for ready")

	// An init that fails leaves nothing behind.
	key2 := h.Key("initfail")
	boom := errors.New("boom")
	_, err = shm.Create(key2, 64, h.Opt(), shm.WithInit(func([]byte) error { return boom }))
	h.is(err, boom)
	_, err = shm.Open(key2, 0, h.Opt())
	h.is(err, shm.ErrNotExist)
}

func testSizeAndAlignment(h *harness) {
	for _, size := range []int{1, 63, 64, 4095, 4096, 4097, 1 << 20} {
		key := h.Key("size" + strconv.Itoa(size))
		r := h.create(key, size)
		u := h.open(key)
		for _, x := range []*shm.Region{r, u} {
			if x.Size() != size || len(x.Bytes()) != size || cap(x.Bytes()) != size {
				h.t.Fatalf("size %d: Size %d, len %d, cap %d", size, x.Size(), len(x.Bytes()), cap(x.Bytes()))
			}
			if uintptr(x.Pointer())%64 != 0 || x.Pointer() != unsafe.Pointer(&x.Bytes()[0]) {
				h.t.Fatalf("size %d: data at %p is not 64-byte aligned or not Bytes()", size, x.Pointer())
			}
			if x.Backend() != h.b.Name() {
				h.t.Fatalf("Backend() = %q, want %q", x.Backend(), h.b.Name())
			}
		}
		if !bytes.Equal(r.Bytes(), make([]byte, size)) {
			h.t.Fatalf("size %d: new region is not zero-filled", size)
		}
		r.Bytes()[size-1] = 0xAB
		if u.Bytes()[size-1] != 0xAB {
			h.t.Fatalf("size %d: last byte not shared", size)
		}
	}
}

func testInvalidKeys(h *harness) {
	bad := []string{"", "/", "//a", "a/b", "/a/b", ".", "..", "/.", "/..", "a\x00b", strings.Repeat("k", 201), "/" + strings.Repeat("k", 201)}
	for _, key := range bad {
		_, err := shm.Create(key, 64, h.Opt())
		h.is(err, shm.ErrInvalidKey)
		_, err = shm.Open(key, 0, h.Opt())
		h.is(err, shm.ErrInvalidKey)
	}
	// The longest key, with and without the slash, works. Keys differ in
	// length as their sequence numbers grow a digit: try until one fits.
	var long string
	for n, try := 1, 0; len(long) != 201; try++ {
		if try == 3 || n < 1 {
			h.t.Fatalf("test bug: cannot make a key of 201 bytes (last: %d)", len(long))
		}
		long = h.Key(strings.Repeat("k", n))
		n += 201 - len(long)
	}
	r := h.create(long, 64)
	u := h.open(long[1:])
	r.Bytes()[0] = 7
	if u.Bytes()[0] != 7 {
		h.t.Fatal("a 200-byte key does not share data")
	}
}

// tooBig is a size beyond shm.MaxSize, or the largest int where an int
// cannot hold that (a 32-bit process cannot map such a region either).
const tooBig = int(min(int64(shm.MaxSize)+1, math.MaxInt))

func testInvalidSizes(h *harness) {
	for _, size := range []int{0, -1, -4096, tooBig} {
		key := h.Key("badsize")
		_, err := shm.Create(key, size, h.Opt())
		h.is(err, shm.ErrInvalidSize)
		_, err = shm.Open(key, 0, h.Opt())
		h.is(err, shm.ErrNotExist)
	}
}

func testUnlink(h *harness) {
	key := h.Key("unlink")
	owner := h.create(key, 4096)
	user := h.open(key)
	late := h.open(key) // unlinks only after a new region took the key
	h.ok(owner.Unlink(), "Unlink")
	h.ok(owner.Unlink(), "second Unlink of the same Region")
	_, err := shm.Open(key, 0, h.Opt())
	h.is(err, shm.ErrNotExist)
	// Mappings keep working, both ways.
	copy(owner.Bytes(), "after unlink")
	copy(user.Bytes()[100:], "user too")
	if string(user.Bytes()[:12]) != "after unlink" || string(owner.Bytes()[100:108]) != "user too" {
		h.t.Fatal("mappings stopped sharing data after Unlink")
	}
	l, err := user.Lock()
	h.ok(err, "Lock after Unlink")
	h.ok(l.Unlock(), "Unlock")
	// The user's Unlink finds the key gone.
	h.is(user.Unlink(), shm.ErrNotExist)
	// The key can be created again, as a new region.
	again := h.create(key, 64)
	if again.Bytes()[0] != 0 {
		h.t.Fatal("a new region under an unlinked key shows old data")
	}
	// The old owner's Unlink does not remove the new region, nor does the
	// Unlink of a user of the old region that had not unlinked yet.
	h.ok(owner.Unlink(), "Unlink again")
	h.is(late.Unlink(), shm.ErrNotExist)
	u2 := h.open(key)
	u2.Bytes()[0] = 1
	if again.Bytes()[0] != 1 {
		h.t.Fatal("Open after re-Create did not find the new region")
	}
}

func testUseAfterClose(h *harness) {
	key := h.Key("closed")
	r := h.create(key, 64)
	u := h.open(key) // before Close: a memfd key lives only while its owner serves it
	l, err := r.Lock()
	h.ok(err, "Lock")
	h.ok(r.Close(), "Close")
	h.is(r.Close(), shm.ErrClosed, fs.ErrClosed)
	if r.Bytes() != nil || r.Pointer() != nil {
		h.t.Fatal("Bytes or Pointer not nil after Close")
	}
	h.is(l.Unlock(), shm.ErrClosed)
	_, err = r.Lock()
	h.is(err, shm.ErrClosed)
	_, err = r.TryLock()
	h.is(err, shm.ErrClosed)
	_, err = r.LockContext(context.Background())
	h.is(err, shm.ErrClosed)
	h.is(r.Unlink(), shm.ErrClosed)
	h.is(r.Chown(os.Getuid(), os.Getgid()), shm.ErrClosed)
	if r.Key() != key || r.Size() != 64 {
		h.t.Fatal("Key or Size changed after Close")
	}
	// Close released the lock it held.
	l2, err := u.TryLock()
	h.ok(err, "TryLock after the holder closed")
	h.ok(l2.Unlock(), "Unlock")
	h.is(l2.Unlock(), shm.ErrNotLocked)
}

// incr adds one to the counter at the start of b, non-atomically, so that a
// lock that does not exclude loses updates.
func incr(b []byte) {
	p := (*uint64)(unsafe.Pointer(&b[0]))
	v := *p
	*p = v + 1
}

func counter(b []byte) uint64 { return *(*uint64)(unsafe.Pointer(&b[0])) }

func testLockGoroutines(h *harness) {
	key := h.Key("lockg")
	r := h.create(key, 64)
	u := h.open(key) // a second mapping in this process
	const G, N = 8, 5000
	var wg sync.WaitGroup
	for g := range G {
		x := r
		if g%2 == 1 {
			x = u
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range N {
				l, err := x.Lock()
				if err != nil {
					h.t.Error(err)
					return
				}
				incr(x.Bytes())
				l.Unlock()
			}
		}()
	}
	wg.Wait()
	if got := counter(r.Bytes()); got != G*N {
		h.t.Fatalf("counter %d, want %d", got, G*N)
	}
}

// roleCount does Args[0] locked increments.
func roleCount(c *childCtx) error {
	r, err := c.openReady()
	if err != nil {
		return err
	}
	defer r.Close()
	for range c.arg(0) {
		l, err := r.Lock()
		if err != nil {
			return err
		}
		incr(r.Bytes())
		if err := l.Unlock(); err != nil {
			return err
		}
	}
	c.say("done")
	return nil
}

func testLockProcesses(h *harness) {
	key := h.Key("lockp")
	r := h.create(key, 64)
	const N = 100000
	a := h.start("count", key, []string{strconv.Itoa(N)})
	b := h.start("count", key, []string{strconv.Itoa(N)})
	a.Expect("ready")
	b.Expect("ready")
	a.Send("go")
	b.Send("go")
	a.Expect("done")
	b.Expect("done")
	a.Wait()
	b.Wait()
	if got := counter(r.Bytes()); got != 2*N {
		h.t.Fatalf("counter %d after 2 processes x %d locked increments", got, N)
	}
}

func testTryLockBusy(h *harness) {
	key := h.Key("try")
	r := h.create(key, 64)
	u := h.open(key)
	l, err := r.TryLock()
	h.ok(err, "TryLock on a free lock")
	_, err = r.TryLock()
	h.is(err, shm.ErrLocked)
	_, err = u.TryLock()
	h.is(err, shm.ErrLocked)
	errc := make(chan error, 1)
	go func() { _, err := u.TryLock(); errc <- err }()
	h.is(<-errc, shm.ErrLocked)
	h.ok(l.Unlock(), "Unlock")
	l, err = u.TryLock()
	h.ok(err, "TryLock after Unlock")
	h.ok(l.Unlock(), "Unlock")
}

func testLockContextDeadline(h *harness) {
	key := h.Key("deadline")
	r := h.create(key, 64)
	u := h.open(key)
	l, err := r.Lock()
	h.ok(err, "Lock")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	_, err = u.LockContext(ctx)
	h.is(err, shm.ErrTimeout, context.DeadlineExceeded)
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	_, err = r.LockContext(ctx) // a goroutine of the holder's own Region waits too
	h.is(err, context.Canceled)
	h.ok(l.Unlock(), "Unlock")
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err = u.LockContext(ctx)
	h.ok(err, "LockContext on a free lock")
	h.ok(l.Unlock(), "Unlock")
}

// roleHold takes the lock, adds Args[0] to the counter, says so and waits
// to be killed (or told to go).
func roleHold(c *childCtx) error {
	r, err := c.open()
	if err != nil {
		return err
	}
	l, err := r.Lock()
	if err != nil && !errors.Is(err, shm.ErrOwnerDead) {
		return err
	}
	p := (*uint64)(unsafe.Pointer(&r.Bytes()[0]))
	*p += uint64(c.arg(0)) // half of an update: the parent repairs it
	c.say("locked")
	c.hear()
	l.Unlock()
	return r.Close()
}

func testLockHolderKilled(h *harness) {
	key := h.Key("dead")
	r := h.create(key, 64)
	ch := h.start("hold", key, []string{"1000"})
	ch.Expect("locked")
	_, err := r.TryLock()
	h.is(err, shm.ErrLocked)
	ch.Kill()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := r.LockContext(ctx)
	h.is(err, shm.ErrOwnerDead)
	h.t.Logf("took over the lock of a killed holder in %v", time.Since(start))
	if counter(r.Bytes()) != 1000 {
		h.t.Fatalf("counter %d, want the dead holder's 1000", counter(r.Bytes()))
	}
	// Without MarkConsistent, the next Lock reports the death again.
	h.ok(l.Unlock(), "Unlock")
	l, err = r.Lock()
	h.is(err, shm.ErrOwnerDead)
	*(*uint64)(unsafe.Pointer(&r.Bytes()[0])) = 0 // repair
	h.ok(l.MarkConsistent(), "MarkConsistent")
	h.ok(l.Unlock(), "Unlock")
	l, err = r.Lock()
	h.ok(err, "Lock after MarkConsistent")
	incr(r.Bytes())
	h.ok(l.Unlock(), "Unlock")
	if counter(r.Bytes()) != 1 {
		h.t.Fatalf("counter %d after repair and one increment", counter(r.Bytes()))
	}
}

// plant puts a raw object with the given content under key, bypassing
// package shm, and returns the name to remove.
func (h *harness) plant(key string, content []byte) {
	h.t.Helper()
	name := strings.TrimPrefix(key, "/")
	p, err := h.b.Create(name, int64(len(content)), 0o600)
	h.ok(err, "backend Create")
	copy(p.Bytes(), content)
	if err := p.Publish(); err != nil {
		p.Discard()
		h.t.Fatalf("backend Publish: %v", err)
	}
	// Keep the mapping until the test ends: backends that serve objects
	// through their creator (memfd) need it.
	h.t.Cleanup(func() { p.Close() })
}

func testForeignObject(h *harness) {
	random := make([]byte, 8192)
	rand.Read(random)
	wrongMagic := make([]byte, 8192)
	copy(wrongMagic, "GEOPMSHM")
	cases := []struct {
		name    string
		content []byte
	}{
		{"zeros", make([]byte, 8192)},
		{"random", random},
		{"wrongmagic", wrongMagic},
		{"tiny", []byte("x")},
	}
	for _, c := range cases {
		key := h.Key("foreign-" + c.name)
		h.plant(key, c.content)
		_, err := shm.Open(key, 50*time.Millisecond, h.Opt())
		h.is(err, shm.ErrCorrupt)
		_, err = shm.Create(key, 64, h.Opt())
		h.is(err, shm.ErrExist)
	}
}

// roleUmaskCreate creates a region with mode Args[0] (octal) under umask 022
// and waits to be told to go.
func roleUmaskCreate(c *childCtx) error {
	syscall.Umask(0o022)
	mode, _ := strconv.ParseUint(c.args[0], 8, 32)
	r, err := shm.Create(c.key, 4096, c.opt(), shm.WithMode(fs.FileMode(mode)))
	if err != nil {
		return err
	}
	c.say("created")
	c.hear()
	return r.Close()
}

// roleAttach opens the region read-write, writes to it, and reports the
// outcome as "attached" or "denied <permission?>".
func roleAttach(c *childCtx) error {
	r, err := shm.Open(c.key, 0, c.opt())
	if err != nil {
		c.say("denied %v %v", errors.Is(err, fs.ErrPermission), err)
		return nil
	}
	copy(r.Bytes(), "written by "+strconv.Itoa(os.Getuid()))
	l, err := r.Lock()
	if err != nil {
		return err
	}
	l.Unlock()
	c.say("attached")
	return r.Close()
}

func testModes(h *harness) {
	for _, mode := range []fs.FileMode{0o600, 0o666} {
		key := h.Key("mode" + strconv.FormatUint(uint64(mode), 8))
		owner := h.start("umask", key, []string{strconv.FormatUint(uint64(mode), 8)})
		owner.Expect("created")
		in, err := shm.Stat(key, h.Opt())
		h.ok(err, "Stat")
		if why := h.statBlind(key); why != "" {
			// The access checks below still tell whether the mode was
			// applied exactly.
			h.t.Logf("Stat cannot learn the mode (it says %v): %s", in.Mode, why)
		} else if in.Mode != mode {
			h.t.Fatalf("Stat says mode %v, want %v exactly under umask 022", in.Mode, mode)
		}
		if os.Geteuid() != 0 {
			h.t.Logf("not root: cannot check access by another uid")
		} else {
			// Else uid 65534 is denied for another reason than the
			// region's mode. Only where Stat says where the object lives
			// (a file); elsewhere a denial of the 0666 region says so.
			if filepath.IsAbs(in.Path) {
				if err := reexec.Reachable(filepath.Dir(in.Path), 65534, 65534); err != nil {
					h.t.Fatalf("the backend's directory is closed to the other user, so its access cannot be checked: %v", err)
				}
			}
			other := h.start("attach", key, nil, asOther)
			ev := other.Expect("")
			other.Wait()
			switch {
			case mode == 0o600 && !strings.HasPrefix(ev, "denied true"):
				h.t.Fatalf("uid 65534 on a 0600 region: %q, want a permission error", ev)
			case mode == 0o666 && ev != "attached":
				h.t.Fatalf("uid 65534 on a 0666 region: %q, want attached (can uid 65534 reach where the backend keeps its objects?)", ev)
			}
			if mode == 0o666 {
				u := h.open(key)
				if !strings.HasPrefix(string(u.Bytes()), "written by 65534") {
					h.t.Fatal("the other user's write is not visible")
				}
			}
		}
		owner.Send("go")
		owner.Wait()
	}
	if os.Geteuid() != 0 {
		h.t.Skip("the access checks by another uid need root")
	}
}

// raw maps the object under key through the backend itself, bypassing
// package shm, so that the test can see which optional interfaces its
// segments implement. The mapping is closed when the test ends.
func (h *harness) raw(key string) backend.Segment {
	h.t.Helper()
	seg, err := h.b.Open(strings.TrimPrefix(key, "/"))
	h.ok(err, "backend Open")
	h.t.Cleanup(func() { seg.Close() })
	return seg
}

// statBlind says why shm.Stat cannot learn the mode and owner of the object
// under key, or returns "" when it can: from the descriptor of a
// backend.Fder segment, or from the listing of a backend.Lister that is
// also a backend.IDOpener (see package backend).
func (h *harness) statBlind(key string) string {
	if _, ok := h.raw(key).(backend.Fder); ok {
		return ""
	}
	_, lister := h.b.(backend.Lister)
	_, ider := h.b.(backend.IDOpener)
	if lister && ider {
		return ""
	}
	return h.b.Name() + "'s segments are no backend.Fder, and it is not a backend.Lister and backend.IDOpener"
}

// roleCreate races to create the key after "go", says "won" or "exist",
// and keeps the region until told to go.
func roleCreate(c *childCtx) error {
	c.say("ready")
	c.hear()
	r, err := shm.Create(c.key, 4096, c.opt())
	switch {
	case err == nil:
		c.say("won")
		c.hear()
		r.Unlink()
		return r.Close()
	case errors.Is(err, shm.ErrExist):
		c.say("exist")
		return nil
	default:
		return err
	}
}

func testCreateRace(h *harness) {
	for range 5 {
		key := h.Key("race")
		a := h.start("create", key, nil)
		b := h.start("create", key, nil)
		a.Expect("ready")
		b.Expect("ready")
		a.Send("go")
		b.Send("go")
		ea, eb := a.Expect(""), b.Expect("")
		if !(ea == "won" && eb == "exist" || ea == "exist" && eb == "won") {
			h.t.Fatalf("racing creators said %q and %q, want one winner", ea, eb)
		}
		// The loser has exited; the winner waits to be told to go.
		if ea == "won" {
			a.Send("go")
		} else {
			b.Send("go")
		}
		a.Wait()
		b.Wait()
	}
}

func testManyRegions(h *harness) {
	before := fdtest.Count(h.t)
	const N = 1000
	keys := make([]string, N)
	var objSize int64 // of each region's object
	for i := range keys {
		keys[i] = h.Key("many")
		r, err := shm.Create(keys[i], 128, h.Opt())
		h.ok(err, "Create")
		if i == 0 {
			in, err := shm.Stat(keys[i], h.Opt())
			h.ok(err, "Stat")
			objSize = in.ObjectSize
		}
		u, err := shm.Open(keys[i], 0, h.Opt())
		h.ok(err, "Open")
		h.ok(r.Unlink(), "Unlink")
		h.ok(u.Close(), "Close user")
		h.ok(r.Close(), "Close owner")
	}
	if after := fdtest.Count(h.t); after > before {
		h.t.Fatalf("%d descriptors before, %d after %d regions", before, after, N)
	}
	for _, key := range keys {
		if _, err := shm.Open(key, 0, h.Opt()); !errors.Is(err, shm.ErrNotExist) {
			h.t.Fatalf("Open %s after Unlink: %v", key, err)
		}
	}
	if _, ok := h.b.(backend.Lister); ok {
		infos := h.list()
		// Only this test's keys: an earlier run with this PID may have
		// been killed and left its own.
		ours := map[string]bool{}
		for _, key := range keys {
			ours[key[1:]] = true
		}
		for _, in := range infos {
			if in.Name == "" && in.Size != objSize {
				// Not one of ours, and reading its name would map it
				// (SysV): leave other programs' objects alone.
				continue
			}
			if n := h.listedName(in); ours[n] {
				h.t.Fatalf("%s still listed after Unlink", n)
			}
		}
	}
}

const bigSize = 256 << 20

func fillPattern(b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], uint64(i)*0x9E3779B97F4A7C15)
	}
}

// roleVerify checks the pattern fillPattern wrote.
func roleVerify(c *childCtx) error {
	r, err := c.open()
	if err != nil {
		return err
	}
	defer r.Close()
	b := r.Bytes()
	if len(b) != c.arg(0) {
		return errors.New("size " + strconv.Itoa(len(b)))
	}
	for i := 0; i+8 <= len(b); i += 8 {
		if binary.LittleEndian.Uint64(b[i:]) != uint64(i)*0x9E3779B97F4A7C15 {
			return errors.New("mismatch at byte " + strconv.Itoa(i))
		}
	}
	c.say("ok")
	return nil
}

func testBigRegion(h *harness) {
	// A machine without room fails here, saying so, rather than with an
	// error (or the OOM killer) in the middle of the test.
	if short := bigRoomShort(h, 2*bigSize); len(short) > 0 {
		h.t.Fatalf("no room for a %d MiB region (this test wants twice that free where the %s backend keeps its objects): %s; "+
			"make room, or leave the test out (-skip 'BigRegion')", bigSize>>20, h.b.Name(), strings.Join(short, "; "))
	}
	key := h.Key("big")
	r := h.create(key, bigSize)
	fillPattern(r.Bytes())
	ch := h.start("verify", key, []string{strconv.Itoa(bigSize)})
	ch.Expect("ok")
	ch.Wait()
	h.ok(r.Unlink(), "Unlink")
}

// bigRoomShort says where there are fewer than need bytes free for the
// backend's objects, as a small region of its own shows: the filesystem of
// the region's descriptor (backend.Fder), if it has one; memory, for a
// filesystem in memory (tmpfs, ramfs, memfds) and for objects without a
// descriptor: the kernel's MemAvailable and what this process's memory
// cgroups allow; and, for a SysV segment (as /proc/self/maps names the
// mapping), the kernel's segment limits. It returns nothing when there is
// room.
func bigRoomShort(h *harness, need uint64) []string {
	var short []string
	mib := func(n uint64) string { return strconv.FormatUint(n>>20, 10) + " MiB" }
	key := h.Key("room")
	probe := h.create(key, 64)
	inMemory := true
	if f, ok := h.raw(key).(backend.Fder); ok {
		var st syscall.Statfs_t
		if err := syscall.Fstatfs(int(f.Fd()), &st); err != nil {
			short = append(short, "fstatfs of a region's descriptor: "+err.Error())
		} else {
			const tmpfsMagic, ramfsMagic = 0x01021994, 0x858458f6
			inMemory = uint32(st.Type) == tmpfsMagic || uint32(st.Type) == ramfsMagic // int32 on 32-bit
			// A tmpfs without a size limit (the kernel's own, of memfds)
			// counts no blocks: memory is the limit.
			if free := st.Bavail * uint64(st.Bsize); st.Blocks > 0 && free < need {
				short = append(short, "the filesystem of the backend's objects has "+mib(free)+" free of "+mib(st.Blocks*uint64(st.Bsize))+", want "+mib(need))
			}
		}
	}
	if inMemory {
		if avail, ok := memAvailable(); ok && avail < need {
			short = append(short, "MemAvailable is "+mib(avail)+", want "+mib(need))
		}
		if room, where, ok := cgroupMemRoom(); ok && room < need {
			short = append(short, "memory cgroup "+where+" allows "+mib(room)+" more, want "+mib(need))
		}
	}
	if mappedSysV(uintptr(probe.Pointer())) {
		if max, ok := procUint("/proc/sys/kernel/shmmax"); ok && max < bigSize+1<<20 {
			short = append(short, "kernel.shmmax is "+strconv.FormatUint(max, 10)+" bytes, want "+mib(bigSize+1<<20))
		}
		if all, ok := procUint("/proc/sys/kernel/shmall"); ok && all < need/uint64(os.Getpagesize()) {
			short = append(short, "kernel.shmall is "+strconv.FormatUint(all, 10)+" pages, want "+strconv.FormatUint(need/uint64(os.Getpagesize()), 10))
		}
	}
	return short
}

// mappedSysV tells whether the mapping at addr is a SysV segment, which
// /proc/self/maps names "/SYSV<key> (deleted)".
func mappedSysV(addr uintptr) bool {
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		// start-end perms offset dev inode path
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 == nil && err2 == nil && uint64(addr) >= start && uint64(addr) < end {
			return strings.HasPrefix(f[5], "/SYSV")
		}
	}
	return false
}

// procUint reads a file holding one unsigned number, such as a sysctl.
func procUint(path string) (uint64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return n, err == nil
}

// memAvailable is MemAvailable of /proc/meminfo, in bytes.
func memAvailable() (uint64, bool) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err == nil
		}
	}
	return 0, false
}

// cgroupMemRoom is how much more memory this process's memory cgroups
// allow, the least over its cgroup and their ancestors (cgroup v2's
// memory.max - memory.current, or v1's limit_in_bytes - usage_in_bytes),
// and the cgroup that allows the least; ok is false when no limit is found.
func cgroupMemRoom() (room uint64, where string, ok bool) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return 0, "", false
	}
	for line := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
		// "0::/path" (v2) or "4:memory:/path" (v1)
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		var base, limit, usage string
		switch {
		case f[0] == "0" && f[1] == "":
			base, limit, usage = "/sys/fs/cgroup", "memory.max", "memory.current"
		case slices.Contains(strings.Split(f[1], ","), "memory"):
			base, limit, usage = "/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
		default:
			continue
		}
		for dir := filepath.Join(base, f[2]); ; dir = filepath.Dir(dir) {
			max, ok1 := procUint(filepath.Join(dir, limit)) // "max" (no limit) does not parse
			cur, ok2 := procUint(filepath.Join(dir, usage))
			if ok1 && ok2 {
				r := uint64(0)
				if max > cur {
					r = max - cur
				}
				if !ok || r < room {
					room, where, ok = r, dir, true
				}
			}
			if len(dir) <= len(base) {
				break
			}
		}
	}
	return room, where, ok
}

// roleHoldAll opens the region and waits to be told to go.
func roleHoldAll(c *childCtx) error {
	r, err := c.open()
	if err != nil {
		return err
	}
	c.say("open")
	c.hear()
	return r.Close()
}

func testChown(h *harness) {
	key := h.Key("chown")
	r := h.create(key, 64)
	err := r.Chown(os.Getuid(), os.Getgid())
	if _, ok := h.raw(key).(backend.Chowner); !ok {
		// What shm.Region.Chown documents for such a backend.
		h.t.Logf("%s's segments are no backend.Chowner: Chown must fail with ErrInvalidOption (%v)", h.b.Name(), err)
		h.is(err, shm.ErrInvalidOption)
		h.ok(r.Unlink(), "Unlink")
		h.is(r.Chown(os.Getuid(), os.Getgid()), shm.ErrNotExist)
		return
	}
	h.ok(err, "Chown to ourselves")
	if os.Geteuid() == 0 {
		h.ok(r.Chown(65534, 65534), "Chown to 65534")
		in, err := shm.Stat(key, h.Opt())
		h.ok(err, "Stat")
		if why := h.statBlind(key); why != "" {
			h.t.Logf("Stat cannot learn the owner (it says %d:%d): %s", in.UID, in.GID, why)
		} else if in.UID != 65534 || in.GID != 65534 {
			h.t.Fatalf("Stat says owner %d:%d after Chown(65534, 65534)", in.UID, in.GID)
		}
	}
	h.ok(r.Unlink(), "Unlink")
	h.is(r.Chown(os.Getuid(), os.Getgid()), shm.ErrNotExist)
}

// list returns the listing of a backend.Lister. Of a backend.ContextLister,
// whose error joins one *fs.PathError for each object that did not answer,
// the errors about objects that are not the suite's (another program's) are
// logged, once, rather than failing the test: the listing is what it found.
// Any other error fails the test.
func (h *harness) list() []backend.Info {
	h.t.Helper()
	cl, ok := h.b.(backend.ContextLister)
	if !ok {
		infos, err := h.b.(backend.Lister).List()
		h.ok(err, "List")
		return infos
	}
	infos, err := cl.ListContext(context.Background())
	ours := fmt.Sprintf("cf-%s-%d-", h.b.Name(), os.Getpid())
	var bad []error
	for _, e := range unjoin(err) {
		var pe *fs.PathError
		if errors.As(e, &pe) && !strings.Contains(pe.Path, ours) {
			if !h.listNoted {
				h.listNoted = true
				h.t.Logf("List: not one of the suite's objects, left out: %v", e)
			}
			continue
		}
		bad = append(bad, e)
	}
	h.ok(errors.Join(bad...), "List")
	return infos
}

// unjoin returns the errors that err joins (err itself when it joins none).
func unjoin(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// listedName is the name of a listed object: Info.Name, or for backends
// that list objects by ID (SysV), the key in the object's header.
func (h *harness) listedName(in backend.Info) string {
	if in.Name != "" || in.ID == "" {
		return in.Name
	}
	o, ok := h.b.(backend.IDOpener)
	if !ok {
		return ""
	}
	s, err := o.OpenID(in.ID)
	if err != nil {
		return ""
	}
	defer s.Close()
	m := s.Bytes()
	if len(m) < layout.HeaderSize {
		return ""
	}
	n := *(*uint32)(unsafe.Pointer(&m[layout.OffKeyLen]))
	if n > layout.MaxKeyLen {
		return ""
	}
	return string(m[layout.OffKey : layout.OffKey+n])
}

// testTruncated shrinks the object under attached mappings where the
// backend allows it. Regions opened WithFaultGuard must fail with
// ErrCorrupt, not crash the process, on every lock path; so must Open.
// Backends whose segments say Sealed must refuse.
func testTruncated(h *harness) {
	key := h.Key("shrink")
	r := h.create(key, 8192, shm.WithFaultGuard())
	u, err := shm.Open(key, 0, h.Opt(), shm.WithFaultGuard())
	h.ok(err, "Open WithFaultGuard")
	defer u.Close()
	raw := h.raw(key)
	sealed := false
	if s, ok := raw.(backend.Sealed); ok {
		sealed = s.Sealed()
	}
	f, ok := raw.(backend.Fder)
	if !ok {
		if sealed {
			h.t.Logf("%s segments have no descriptor and cannot shrink", h.b.Name())
		} else {
			// Package shm guards the lock against faults then, but the
			// suite has no way to shrink the object under it.
			h.t.Logf("%s segments are neither a backend.Fder nor backend.Sealed: the suite cannot shrink the object, so only the guarded lock is checked", h.b.Name())
		}
		l, err := u.Lock()
		h.ok(err, "Lock of a region opened WithFaultGuard")
		h.ok(l.Unlock(), "Unlock")
		return
	}
	l, err := r.Lock()
	h.ok(err, "Lock before the truncation")
	err = syscall.Ftruncate(int(f.Fd()), 0)
	if sealed {
		if err == nil {
			h.t.Fatalf("%s says Sealed, but ftruncate succeeded", h.b.Name())
		}
		h.ok(l.Unlock(), "Unlock after a refused truncation")
		l, err := u.Lock()
		h.ok(err, "Lock after a refused truncation")
		l.Unlock()
		return
	}
	h.ok(err, "ftruncate")
	h.is(l.Unlock(), shm.ErrCorrupt)
	_, err = u.Lock()
	h.is(err, shm.ErrCorrupt)
	_, err = r.TryLock()
	h.is(err, shm.ErrCorrupt)
	_, err = shm.Open(key, 0, h.Opt())
	h.is(err, shm.ErrCorrupt)
	h.ok(u.Close(), "Close after truncation")
}

// roleInitDie creates the region with an init that never returns, after
// saying so; the parent kills it there.
func roleInitDie(c *childCtx) error {
	_, err := shm.Create(c.key, 4096, c.opt(), shm.WithInit(func([]byte) error {
		c.say("initialising")
		select {}
	}))
	return err
}

// testCreatorDiesBeforeReady kills an owner between create and ready. A
// user must not get the half-made region: where the backend makes objects
// visible only when ready, the key is simply not there; where it is visible
// early, Open reports ErrOwnerDead. Either way a new owner can take the key.
func testCreatorDiesBeforeReady(h *harness) {
	key := h.Key("initdie")
	name := strings.TrimPrefix(key, "/")
	ch := h.start("initdie", key, nil)
	ch.Expect("initialising")
	ch.Kill()
	// Backends that can see a half-made object (SysV, or POSIX and file
	// through their temporary names) must fail at once; others never show
	// it, so the key is simply not there.
	_, pender := h.b.(backend.Pender)
	ve, early := h.b.(backend.VisibleBeforePublish)
	failFast := pender || early && ve.VisibleBeforePublish()
	timeout := 200 * time.Millisecond
	if failFast {
		timeout = time.Minute // it must not wait for it
	}
	_, err := shm.Open(key, timeout, h.Opt())
	h.t.Logf("Open: %v", err)
	if failFast {
		h.is(err, shm.ErrOwnerDead)
		if !strings.Contains(err.Error(), "died before the region was ready") {
			h.t.Fatalf("error %q does not say the creator died before the region was ready", err)
		}
	} else {
		h.is(err, shm.ErrNotExist)
	}
	// Remove what the dead creator left (shmctl gc does this in production).
	if p, ok := h.b.(backend.Pender); ok {
		objs, err := p.Pending(name, 0)
		h.ok(err, "Pending")
		for _, o := range objs {
			h.ok(p.RemovePending(o.ID), "RemovePending")
		}
	} else if failFast {
		h.ok(h.b.Unlink(name), "removing the half-made object")
	}
	r := h.create(key, 4096)
	u := h.open(key)
	r.Bytes()[0] = 9
	if u.Bytes()[0] != 9 {
		h.t.Fatal("the new region does not share data")
	}
}
