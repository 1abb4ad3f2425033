package conformance

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/internal/fdtest"
	"github.com/shmgo/shm/internal/layout"
)

func init() { roles["badopen"] = roleBadOpen }

// badSentinels are the errors a bad input is classified with. A bad input
// must match the ones it expects and no other, so that, say, a permission
// failure is never reported as a missing region.
var badSentinels = []struct {
	name string
	err  error
}{
	{"ErrExist", shm.ErrExist},
	{"ErrNotExist", shm.ErrNotExist},
	{"ErrTimeout", shm.ErrTimeout},
	{"ErrInvalidKey", shm.ErrInvalidKey},
	{"ErrInvalidSize", shm.ErrInvalidSize},
	{"ErrInvalidOption", shm.ErrInvalidOption},
	{"ErrCorrupt", shm.ErrCorrupt},
	{"ErrClosed", shm.ErrClosed},
	{"ErrLocked", shm.ErrLocked},
	{"ErrNotLocked", shm.ErrNotLocked},
	{"ErrOwnerDead", shm.ErrOwnerDead},
	{"fs.ErrPermission", fs.ErrPermission},
}

func badSentinelName(err error) string {
	for _, s := range badSentinels {
		if s.err == err {
			return s.name
		}
	}
	return fmt.Sprint(err)
}

// rawHeader is a region header made by hand, laid out as internal/layout
// states it (the suite does not import package shm's internals).
type rawHeader struct {
	Magic      string
	Version    uint32
	HeaderSize uint32
	DataSize   uint64
	State      uint32
	PID        uint32
	Start      uint64
	NS         uint64
	Created    int64
	KeyLen     int64 // -1: len(Key)
	Key        string
	Users      uint32
}

// rawHeaderSize is where the data of a hand-made header starts: one user
// slot after the header, rounded up to 64.
var rawHeaderSize = layout.DataOffset(1)

// goodHeader is a valid, ready header for name with dataSize bytes of data,
// created by this process.
func goodHeader(name string, dataSize uint64) rawHeader {
	return rawHeader{
		Magic: layout.Magic, Version: layout.Version, HeaderSize: uint32(rawHeaderSize), Users: 1,
		DataSize: dataSize, State: layout.StateReady,
		PID: uint32(os.Getpid()), Start: 1, NS: ownPIDNS(),
		Created: time.Now().UnixNano(), KeyLen: -1, Key: name,
	}
}

// object returns an object of total bytes (at least the header) that
// starts with the header.
func (r rawHeader) object(total int) []byte {
	b := make([]byte, max(total, rawHeaderSize))
	ne := binary.NativeEndian
	copy(b[layout.OffMagic:layout.OffMagic+len(layout.Magic)], r.Magic)
	ne.PutUint32(b[layout.OffVersion:], r.Version)
	ne.PutUint32(b[layout.OffHeaderSize:], r.HeaderSize)
	ne.PutUint64(b[layout.OffDataSize:], r.DataSize)
	ne.PutUint32(b[layout.OffState:], r.State)
	ne.PutUint32(b[layout.OffCreatorPID:], r.PID)
	kl := r.KeyLen
	if kl < 0 {
		kl = int64(len(r.Key))
	}
	ne.PutUint32(b[layout.OffKeyLen:], uint32(kl))
	ne.PutUint64(b[layout.OffCreatorStart:], r.Start)
	ne.PutUint64(b[layout.OffCreatorNS:], r.NS)
	ne.PutUint64(b[layout.OffCreated:], uint64(r.Created))
	copy(b[layout.OffKey:layout.OffKey+layout.MaxKeyLen], r.Key)
	ne.PutUint32(b[layout.OffUsers:], r.Users)
	return b[:total]
}

// ownPIDNS is the inode of this process's PID namespace, as the header
// records it.
func ownPIDNS() uint64 {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/pid", &st); err != nil {
		return 0
	}
	return st.Ino
}

// badDeadPID returns the PID of a process that has exited and been reaped.
func badDeadPID(h *harness) int {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		h.t.Fatalf("running true to get a dead PID: %v", err)
	}
	return cmd.Process.Pid
}

// badCase is the state of one bad input: a fresh valid key, and what to
// undo when it is done.
type badCase struct {
	h      *harness
	key    string   // "/cf-<backend>-<pid>-<n>-bad"
	name   string   // key without the '/'
	absent []string // more keys (with a backend prefix) that must name nothing afterwards
	undo   []func()
	r      *shm.Region // set by setups that make a region
	l      shm.Lock
}

// plant puts a raw object under the case's key, bypassing package shm. The
// planting Pending stays open until the case ends (memfd serves the object
// through it).
func (c *badCase) plant(content []byte) {
	c.h.t.Helper()
	p, err := c.h.b.Create(c.name, int64(len(content)), 0o600)
	c.h.ok(err, "backend Create")
	copy(p.Bytes(), content)
	if err := p.Publish(); err != nil {
		p.Discard()
		c.h.t.Fatalf("backend Publish: %v", err)
	}
	c.undo = append(c.undo, func() { p.Close() })
}

// region creates a region under the case's key, closed when the case ends.
func (c *badCase) region(opts ...shm.Option) *shm.Region {
	c.h.t.Helper()
	r, err := shm.Create(c.key, 64, append([]shm.Option{c.h.Opt()}, opts...)...)
	c.h.ok(err, "Create "+c.key)
	c.undo = append(c.undo, func() { r.Close() })
	c.r = r
	return r
}

// closedRegion makes a region, takes its lock and closes it.
func (c *badCase) closedRegion() {
	r := c.region()
	l, err := r.Lock()
	c.h.ok(err, "Lock")
	c.l = l
	c.h.ok(r.Close(), "Close")
	if r.Bytes() != nil || r.Pointer() != nil {
		c.h.t.Fatal("Bytes or Pointer not nil after Close")
	}
}

// openPlanted opens a planted object; the short timeout bounds the wait
// where an invalid object may still be being written (SysV).
func (c *badCase) openPlanted() error {
	r, err := shm.Open(c.key, 50*time.Millisecond, c.h.Opt())
	if err == nil {
		r.Close()
	}
	return err
}

type badInput struct {
	name string
	// want: the sentinels the error must match (none: the call must
	// succeed); may: others it is allowed to match too. Any other
	// sentinel is a failure.
	want, may []error
	msg       string // the message must contain this
	needRoot  string // non-empty: the case needs root, for this reason
	setup     func(c *badCase)
	op        func(c *badCase) error
}

// badCreate and badOpen are the operations of the key cases.
func badCreate(key string) func(*badCase) error {
	return func(c *badCase) error {
		r, err := shm.Create(key, 64, c.h.Opt())
		if err == nil {
			r.Unlink()
			r.Close()
		}
		return err
	}
}

func badOpen(key string) func(*badCase) error {
	return func(c *badCase) error {
		r, err := shm.Open(key, 0, c.h.Opt())
		if err == nil {
			r.Close()
		}
		return err
	}
}

// badInputs is the table. Cases that plant or create use the case's key.
func badInputs(h *harness, dead int) []badInput {
	var in []badInput
	add := func(b badInput) { in = append(in, b) }
	corrupt := []error{shm.ErrCorrupt}
	afterWait := []error{shm.ErrTimeout} // SysV waits for a blank object to be written, then gives up

	// Keys, for Create and Open alike.
	for _, key := range []string{"", "/", "//x", "a/b", ".", "..", "/..", "a\x00b", strings.Repeat("k", 201), "/" + strings.Repeat("k", 201), "file:relative"} {
		add(badInput{name: fmt.Sprintf("Create key %.20q", key), want: []error{shm.ErrInvalidKey}, op: badCreate(key)})
		add(badInput{name: fmt.Sprintf("Open key %.20q", key), want: []error{shm.ErrInvalidKey}, op: badOpen(key)})
	}
	// A key naming another backend than WithBackend gives.
	other := "sysv"
	if h.b.Name() == "sysv" {
		other = "posix"
	}
	otherKey := func(c *badCase) string {
		k := other + ":" + c.key
		c.absent = append(c.absent, k)
		return k
	}
	add(badInput{name: "Create key of backend " + other, want: []error{shm.ErrInvalidOption},
		op: func(c *badCase) error { return badCreate(otherKey(c))(c) }})
	add(badInput{name: "Open key of backend " + other, want: []error{shm.ErrInvalidOption},
		op: func(c *badCase) error { return badOpen(otherKey(c))(c) }})

	// Sizes.
	for _, size := range []int{0, -1, tooBig} {
		add(badInput{name: "Create size " + strconv.Itoa(size), want: []error{shm.ErrInvalidSize},
			op: func(c *badCase) error {
				r, err := shm.Create(c.key, size, c.h.Opt())
				if err == nil {
					r.Unlink()
					r.Close()
				}
				return err
			}})
	}

	// Options.
	optCase := func(name string, o shm.Option, create bool) {
		add(badInput{name: name, want: []error{shm.ErrInvalidOption}, op: func(c *badCase) error {
			var r *shm.Region
			var err error
			if create {
				r, err = shm.Create(c.key, 64, c.h.Opt(), o)
			} else {
				r, err = shm.Open(c.key, 0, c.h.Opt(), o)
			}
			if err == nil {
				r.Unlink()
				r.Close()
			}
			return err
		}})
	}
	optCase("Create WithBackend(nil)", shm.WithBackend(nil), true)
	optCase("Open WithBackend(nil)", shm.WithBackend(nil), false)
	optCase("Create WithMode(01777)", shm.WithMode(0o1777), true)
	optCase("Create WithMode(ModeDir|0600)", shm.WithMode(fs.ModeDir|0o600), true)
	optCase("Create WithMode(ModeSetuid|0600)", shm.WithMode(fs.ModeSetuid|0o600), true)

	// Objects under the key that are not regions.
	random := make([]byte, 8192)
	rand.Read(random)
	planted := func(name string, want, may []error, msg string, content func(c *badCase) []byte) {
		add(badInput{name: name, want: want, may: may, msg: msg,
			setup: func(c *badCase) { c.plant(content(c)) },
			op:    (*badCase).openPlanted})
	}
	hdr := func(total int, edit func(*rawHeader)) func(c *badCase) []byte {
		return func(c *badCase) []byte {
			r := goodHeader(c.name, 64)
			if edit != nil {
				edit(&r)
			}
			return r.object(total)
		}
	}
	planted("zeros", corrupt, afterWait, "", func(*badCase) []byte { return make([]byte, 8192) })
	planted("random", corrupt, afterWait, "", func(*badCase) []byte { return random })
	planted("wrong magic", corrupt, nil, "magic", func(c *badCase) []byte {
		return hdr(8192, func(r *rawHeader) { r.Magic = "GEOPMSHM" })(c)
	})
	planted("one byte", corrupt, nil, "smaller than", func(*badCase) []byte { return []byte{0x89} })
	planted("valid header cut to 100 bytes", corrupt, nil, "smaller than", func(c *badCase) []byte {
		return hdr(rawHeaderSize, nil)(c)[:100]
	})
	planted("valid header cut to 511 bytes", corrupt, nil, "smaller than", func(c *badCase) []byte {
		return hdr(rawHeaderSize, nil)(c)[:layout.HeaderSize-1]
	})
	planted("only the header, which claims 64 data bytes more", corrupt, nil, "header claims", hdr(rawHeaderSize, nil))
	planted("header claims 1 byte beyond the end", corrupt, nil, "header claims", hdr(rawHeaderSize+4096, func(r *rawHeader) { r.DataSize = 4097 }))
	planted("header claims more than MaxSize", corrupt, nil, "header claims", hdr(8192, func(r *rawHeader) { r.DataSize = shm.MaxSize + 1 }))
	planted("data size 0", corrupt, nil, "header claims", hdr(8192, func(r *rawHeader) { r.DataSize = 0 }))
	planted("layout version 1", corrupt, nil, "layout version 1, this library reads 2", hdr(8192, func(r *rawHeader) { r.Version = 1 }))
	planted("layout version 3", corrupt, nil, "version", hdr(8192, func(r *rawHeader) { r.Version = 3 }))
	planted("no user slots", corrupt, nil, "user slots", hdr(8192, func(r *rawHeader) { r.Users = 0 }))
	planted("more user slots than the lock can name", corrupt, nil, "user slots", hdr(8192, func(r *rawHeader) { r.Users = shm.MaxUsers + 1 }))
	planted("header size of another table", corrupt, nil, "header size", hdr(8192, func(r *rawHeader) { r.Users = 3 }))
	planted("layout version 0", corrupt, nil, "version", hdr(8192, func(r *rawHeader) { r.Version = 0 }))
	planted("header size 256", corrupt, nil, "header size", hdr(8192, func(r *rawHeader) { r.HeaderSize = 256 }))
	planted("header size 4096", corrupt, nil, "header size", hdr(8192, func(r *rawHeader) { r.HeaderSize = 4096 }))
	planted("header names another key", corrupt, nil, "names key", hdr(8192, func(r *rawHeader) { r.Key += "-other" }))
	planted("header key one byte short", corrupt, nil, "names key", hdr(8192, func(r *rawHeader) { r.KeyLen = int64(len(r.Key)) - 1 }))
	planted("key length 201", corrupt, nil, "key length", hdr(8192, func(r *rawHeader) { r.KeyLen = layout.MaxKeyLen + 1 }))
	planted("key length 2^32-1", corrupt, nil, "key length", hdr(8192, func(r *rawHeader) { r.KeyLen = 1<<32 - 1 }))
	planted("initialising, creator dead", []error{shm.ErrOwnerDead}, nil, "creator died", hdr(8192, func(r *rawHeader) {
		r.State, r.PID, r.Start = layout.StateInit, uint32(dead), 12345
	}))
	add(badInput{name: "Create over a foreign object", want: []error{shm.ErrExist},
		setup: func(c *badCase) { c.plant(random) },
		op:    func(c *badCase) error { return badCreate(c.key)(c) }})

	// Modes that forbid the opener: another uid opens a 0000 region.
	add(badInput{name: "uid 65534 opens a 0000 region", want: []error{fs.ErrPermission},
		needRoot: "opening as another uid (as root, permission bits are bypassed)",
		setup:    func(c *badCase) { c.region(shm.WithMode(0)) },
		op: func(c *badCase) error {
			ch := c.h.start("badopen", c.key, nil, asOther)
			ev := ch.Expect("result ")
			ch.Wait()
			return badParseRemote(c.key, ev)
		}})
	add(badInput{name: "uid 65534 opens a 0600 region of root", want: []error{fs.ErrPermission},
		needRoot: "opening as another uid",
		setup:    func(c *badCase) { c.region() },
		op: func(c *badCase) error {
			ch := c.h.start("badopen", c.key, nil, asOther)
			ev := ch.Expect("result ")
			ch.Wait()
			return badParseRemote(c.key, ev)
		}})

	// A closed Region: every method.
	closed := func(name string, op func(c *badCase) error) {
		add(badInput{name: "closed " + name, want: []error{shm.ErrClosed}, setup: (*badCase).closedRegion, op: op})
	}
	closed("Close", func(c *badCase) error { return c.r.Close() })
	closed("Lock", func(c *badCase) error { _, err := c.r.Lock(); return err })
	closed("TryLock", func(c *badCase) error { _, err := c.r.TryLock(); return err })
	closed("LockContext", func(c *badCase) error { _, err := c.r.LockContext(context.Background()); return err })
	closed("Unlock of the lock held at Close", func(c *badCase) error { return c.l.Unlock() })
	closed("MarkConsistent of the lock held at Close", func(c *badCase) error { return c.l.MarkConsistent() })
	closed("Unlink", func(c *badCase) error { return c.r.Unlink() })
	closed("Chown", func(c *badCase) error { return c.r.Chown(os.Getuid(), os.Getgid()) })

	// Locks used wrongly.
	locked := func(c *badCase) {
		r := c.region()
		l, err := r.Lock()
		c.h.ok(err, "Lock")
		c.l = l
	}
	add(badInput{name: "Unlock twice", want: []error{shm.ErrNotLocked},
		setup: locked,
		op: func(c *badCase) error {
			c.h.ok(c.l.Unlock(), "first Unlock")
			return c.l.Unlock()
		}})
	add(badInput{name: "Unlock of a stale Lock after a new Lock", want: []error{shm.ErrNotLocked},
		setup: locked,
		op: func(c *badCase) error {
			c.h.ok(c.l.Unlock(), "first Unlock")
			l2, err := c.r.Lock()
			c.h.ok(err, "second Lock")
			defer l2.Unlock()
			return c.l.Unlock() // must not release l2
		}})
	add(badInput{name: "Unlock of the zero Lock", want: []error{shm.ErrNotLocked},
		op: func(*badCase) error { return shm.Lock{}.Unlock() }})
	add(badInput{name: "MarkConsistent of an unlocked Lock", want: []error{shm.ErrNotLocked},
		setup: locked,
		op: func(c *badCase) error {
			c.h.ok(c.l.Unlock(), "Unlock")
			return c.l.MarkConsistent()
		}})
	// MarkConsistent on a lock taken normally (not with ErrOwnerDead) is
	// allowed: it does nothing and returns nil.
	add(badInput{name: "MarkConsistent of a lock not taken with ErrOwnerDead (nil)",
		setup: locked,
		op: func(c *badCase) error {
			defer c.l.Unlock()
			return c.l.MarkConsistent()
		}})

	// Regions in the wrong state.
	add(badInput{name: "Chown after Unlink", want: []error{shm.ErrNotExist},
		setup: func(c *badCase) { c.h.ok(c.region().Unlink(), "Unlink") },
		op:    func(c *badCase) error { return c.r.Chown(os.Getuid(), os.Getgid()) }})
	add(badInput{name: "Create on an existing key", want: []error{shm.ErrExist},
		setup: func(c *badCase) { c.region() },
		op:    func(c *badCase) error { return badCreate(c.key)(c) }})
	add(badInput{name: "Open of a missing key", want: []error{shm.ErrNotExist, shm.ErrTimeout},
		op: func(c *badCase) error { return badOpen(c.key)(c) }})
	return in
}

// testBadInputs feeds invalid keys, sizes, options, foreign and damaged
// objects, and misused regions and locks to package shm, and checks that
// each fails with exactly the sentinel the documentation gives, and leaves
// nothing behind: no object under the key, nothing new of ours in the
// backend's listing or directory, no SysV segment, no socket, no descriptor.
func testBadInputs(h *harness) {
	t := h.t
	dead := badDeadPID(h)
	if ownPIDNS() == 0 {
		t.Fatal("cannot read /proc/self/ns/pid: a dead creator cannot be recognised")
	}

	// The control: a hand-made valid header opens, so that the corrupt
	// variants below fail for the field they change and not for the layout.
	c := &badCase{h: h, key: h.Key("control")}
	c.name = c.key[1:]
	c.plant(goodHeader(c.name, 100).object(rawHeaderSize + 100))
	r, err := shm.Open(c.key, 0, h.Opt())
	h.ok(err, "Open of a hand-made valid header")
	if r.Size() != 100 {
		t.Fatalf("hand-made header: Size %d, want 100", r.Size())
	}
	h.ok(r.Close(), "Close")
	h.badFinish(c)
	h.badGone(c.key, h.Opt())

	// Start counting after the runtime has made what it keeps (the
	// poller's descriptors, pidfd probing), which the control and dead
	// PID did.
	p1, p2, err := os.Pipe()
	h.ok(err, "pipe")
	p1.Close()
	p2.Close()
	fds0 := h.fds()
	ours0 := h.badOurs()

	cases := badInputs(h, dead)
	if len(cases) < 25 {
		t.Fatalf("test bug: only %d bad inputs", len(cases))
	}
	root := os.Geteuid() == 0
	for i, bc := range cases {
		if bc.needRoot != "" && !root {
			t.Logf("%s: not run: %s needs root", bc.name, bc.needRoot)
			continue
		}
		c := &badCase{h: h, key: h.Key("bad" + strconv.Itoa(i))}
		c.name = c.key[1:]
		if bc.setup != nil {
			bc.setup(c)
		}
		err := bc.op(c)
		h.badExactly(bc.name, err, bc.want, bc.may)
		if bc.msg != "" && !strings.Contains(err.Error(), bc.msg) {
			t.Fatalf("%s: error %q does not say %q", bc.name, err, bc.msg)
		}
		msg := fmt.Sprint(err)
		if len(msg) > 160 {
			msg = msg[:160] + "..."
		}
		t.Logf("%s: %s", bc.name, msg)
		h.badFinish(c)
		h.badGone(c.key, h.Opt())
		for _, k := range c.absent {
			h.badGone(k)
		}
		h.badNothingLeft(bc.name, fds0, ours0)
	}
	t.Logf("%d bad inputs", len(cases))
}

// badExactly checks that err matches every sentinel of want, possibly those of
// may, and no other; that it is an *shm.Error; and, with an empty want,
// that err is nil.
func (h *harness) badExactly(what string, err error, want, may []error) {
	h.t.Helper()
	if len(want) == 0 {
		if err != nil {
			h.t.Fatalf("%s: %v, want no error", what, err)
		}
		return
	}
	if err == nil {
		h.t.Fatalf("%s: no error, want %s", what, badNames(want))
	}
	var e *shm.Error
	if !errors.As(err, &e) {
		h.t.Fatalf("%s: error %q (%T) is not an *shm.Error", what, err, err)
	}
	for _, s := range badSentinels {
		is := errors.Is(err, s.err)
		switch {
		case slices.Contains(want, s.err) && !is:
			h.t.Fatalf("%s: error %q does not match %s", what, err, s.name)
		case !slices.Contains(want, s.err) && !slices.Contains(may, s.err) && is:
			h.t.Fatalf("%s: error %q matches %s, want only %s", what, err, s.name, badNames(want))
		}
	}
}

func badNames(errs []error) string {
	var s []string
	for _, e := range errs {
		s = append(s, badSentinelName(e))
	}
	return strings.Join(s, "+")
}

// badFinish undoes what the case made and removes the key.
func (h *harness) badFinish(c *badCase) {
	for i := len(c.undo) - 1; i >= 0; i-- {
		c.undo[i]()
	}
	h.remove(c.name)
}

// badNothingLeft fails the test if anything of the case outlived it.
func (h *harness) badNothingLeft(what string, fds0 map[int]string, ours0 map[string]bool) {
	h.t.Helper()
	fds := h.fds()
	if len(fds) != len(fds0) {
		h.t.Fatalf("%s: %d descriptors open, %d before the bad inputs:\n%s", what, len(fds), len(fds0), fdtest.Diff(fds0, fds))
	}
	for o := range h.badOurs() {
		if !ours0[o] {
			h.t.Fatalf("%s: left behind %s", what, o)
		}
	}
}

// badGone fails unless key names nothing.
func (h *harness) badGone(key string, opts ...shm.Option) {
	h.t.Helper()
	r, err := shm.Open(key, 0, opts...)
	if err == nil {
		r.Close()
		h.t.Fatalf("%s still opens after the case", key)
	}
	if !errors.Is(err, shm.ErrNotExist) {
		h.t.Fatalf("Open %s after the case: %v, want ErrNotExist", key, err)
	}
}

// badOurs lists what this process has made with the suite's keys of this
// backend, wherever it shows: the backend's listing (backend.Lister), the
// objects being created for the test's keys (backend.Pender), SysV
// segments created by this process, abstract sockets.
func (h *harness) badOurs() map[string]bool {
	prefix := fmt.Sprintf("cf-%s-%d-", h.b.Name(), os.Getpid())
	out := map[string]bool{}
	if _, ok := h.b.(backend.Lister); ok {
		for _, in := range h.list() {
			if strings.Contains(in.Name, prefix) {
				out["listed "+in.Name] = true
			}
		}
	}
	if p, ok := h.b.(backend.Pender); ok {
		for _, name := range h.tracked() {
			objs, err := p.Pending(name, 0)
			h.ok(err, "Pending")
			for _, o := range objs {
				out["being created for "+name+": "+o.ID] = true
			}
		}
	}
	for _, id := range badSysVCreatedBy(os.Getpid()) {
		out["SysV segment "+id] = true
	}
	for _, s := range badAbstractSockets(prefix) {
		out["socket @"+s] = true
	}
	return out
}

// badSysVCreatedBy returns the shmids of the segments whose creator is pid.
func badSysVCreatedBy(pid int) []string {
	f, err := os.Open("/proc/sysvipc/shm")
	if err != nil {
		return nil
	}
	defer f.Close()
	var ids []string
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		cols := strings.Fields(sc.Text())
		if len(cols) > 4 && cols[4] == strconv.Itoa(pid) {
			ids = append(ids, cols[1])
		}
	}
	return ids
}

// badAbstractSockets returns the abstract unix socket names that contain sub.
func badAbstractSockets(sub string) []string {
	data, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		cols := strings.Fields(line)
		if len(cols) >= 8 && strings.HasPrefix(cols[7], "@") && strings.Contains(cols[7], sub) {
			out = append(out, cols[7][1:])
		}
	}
	return out
}

// fds maps this process's descriptors to what they refer to
// (fdtest.Targets).
func (h *harness) fds() map[int]string {
	h.t.Helper()
	fds, err := fdtest.Targets()
	h.ok(err, "list this process's descriptors")
	return fds
}

// badRemoteErr is an error a child classified: it matches the sentinels the
// child's error matched.
type badRemoteErr struct {
	msg     string
	matches []error
}

func (e *badRemoteErr) Error() string        { return "in the child: " + e.msg }
func (e *badRemoteErr) Is(target error) bool { return slices.Contains(e.matches, target) }

// badParseRemote rebuilds the classification a badopen child reported as
// "result opened" or "result <shm.Error?> <sentinels,...|-> <message>".
func badParseRemote(key, ev string) error {
	f := strings.SplitN(strings.TrimPrefix(ev, "result "), " ", 3)
	if len(f) < 3 {
		return nil // opened
	}
	e := &badRemoteErr{msg: f[2]}
	for _, n := range strings.Split(f[1], ",") {
		for _, s := range badSentinels {
			if s.name == n {
				e.matches = append(e.matches, s.err)
			}
		}
	}
	if f[0] == "true" {
		return &shm.Error{Op: "open", Key: key, Err: e}
	}
	return e
}

// roleBadOpen opens the key once and reports how that failed, with the
// sentinels its error matches.
func roleBadOpen(c *childCtx) error {
	r, err := shm.Open(c.key, 0, c.opt())
	if err == nil {
		c.say("result opened")
		return r.Close()
	}
	var e *shm.Error
	var matched []string
	for _, s := range badSentinels {
		if errors.Is(err, s.err) {
			matched = append(matched, s.name)
		}
	}
	list := strings.Join(matched, ",")
	if list == "" {
		list = "-"
	}
	c.say("result %t %s %s", errors.As(err, &e), list, strings.ReplaceAll(err.Error(), "\n", " "))
	return nil
}
