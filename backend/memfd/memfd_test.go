package memfd_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/memfd"
	"github.com/shmgo/shm/internal/fdtest"
	"github.com/shmgo/shm/internal/reexec"
)

func name(key string) string { return strings.TrimPrefix(key, "/") }

// create makes and publishes a raw object of size bytes.
func create(t *testing.T, b *memfd.Backend, n string, size int64, perm fs.FileMode) backend.Segment {
	t.Helper()
	p, err := b.Create(n, size, perm)
	if err != nil {
		t.Fatalf("Create %q: %v", n, err)
	}
	if err := p.Publish(); err != nil {
		p.Discard()
		t.Fatalf("Publish %q: %v", n, err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestCreateOpenUnlink(t *testing.T) {
	b := memfd.New()
	n := name(testKey("basic"))
	p, err := b.Create(n, 8192, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if len(p.Bytes()) != 8192 {
		t.Fatalf("mapped %d bytes, want 8192", len(p.Bytes()))
	}
	// Not visible before Publish, but already taken.
	if _, err := b.Open(n); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open before Publish: %v, want ErrNotExist", err)
	}
	if _, err := b.Create(n, 10, 0o600); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second Create: %v, want ErrExist", err)
	}
	if err := b.Unlink(n); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Unlink before Publish: %v, want ErrNotExist", err)
	}
	copy(p.Bytes(), "from the owner")
	if err := p.Publish(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Create(n, 10, 0o600); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Create of a published key: %v, want ErrExist", err)
	}
	u, err := b.Open(n)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if !bytes.HasPrefix(u.Bytes(), []byte("from the owner")) || len(u.Bytes()) != 8192 {
		t.Fatalf("user sees %d bytes %q", len(u.Bytes()), u.Bytes()[:14])
	}
	copy(u.Bytes(), "from the user.")
	if !bytes.HasPrefix(p.Bytes(), []byte("from the user.")) {
		t.Fatal("the owner does not see the user's write")
	}
	for _, s := range []backend.Segment{p, u} {
		if sl, ok := s.(backend.Sealed); !ok || !sl.Sealed() {
			t.Fatal("segment is not Sealed")
		}
		fd := int(s.(backend.Fder).Fd())
		// The seals hold: nobody can resize the file.
		if err := unix.Ftruncate(fd, 4096); err != unix.EPERM {
			t.Fatalf("shrinking a sealed memfd: %v, want EPERM", err)
		}
		if err := unix.Ftruncate(fd, 1<<20); err != unix.EPERM {
			t.Fatalf("growing a sealed memfd: %v, want EPERM", err)
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE); err != unix.EPERM {
			t.Fatalf("adding a seal: %v, want EPERM", err)
		}
	}
	if err := b.Unlink(n); err != nil {
		t.Fatalf("Unlink: %v", err)
	}
	if _, err := b.Open(n); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open after Unlink: %v, want ErrNotExist", err)
	}
	if err := b.Unlink(n); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("second Unlink: %v, want ErrNotExist", err)
	}
	// Both mappings still work, and the key is free again.
	copy(p.Bytes()[100:], "still shared")
	if !bytes.Equal(u.Bytes()[100:112], []byte("still shared")) {
		t.Fatal("mappings no longer shared after Unlink")
	}
	p2 := create(t, b, n, 100, 0o600)
	if err := p2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Open(n); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open after the owner's Close: %v, want ErrNotExist", err)
	}
}

func TestModeIsExact(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	b := memfd.New()
	for _, perm := range []fs.FileMode{0o600, 0o640, 0o666} {
		s := create(t, b, name(testKey("mode")), 100, perm)
		var st unix.Stat_t
		if err := unix.Fstat(int(s.(backend.Fder).Fd()), &st); err != nil {
			t.Fatal(err)
		}
		if got := fs.FileMode(st.Mode & 0o777); got != perm {
			t.Fatalf("mode %v, want %v", got, perm)
		}
	}
}

func TestRegionThroughShm(t *testing.T) {
	b := memfd.New()
	key := testKey("shm")
	r, err := shm.Create(key, 1000, shm.WithBackend(b), shm.WithInit(func(d []byte) error {
		copy(d, "initialised")
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	u, err := shm.Open(key, time.Second, shm.WithBackend(memfd.New()))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if u.Size() != 1000 || string(u.Bytes()[:11]) != "initialised" {
		t.Fatalf("user sees size %d, %q", u.Size(), u.Bytes()[:11])
	}
	l, err := u.Lock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.TryLock(); !errors.Is(err, shm.ErrLocked) {
		t.Fatalf("TryLock while the user holds the lock: %v", err)
	}
	l.Unlock()
	if _, err := shm.Create(key, 10, shm.WithBackend(b)); !errors.Is(err, shm.ErrExist) {
		t.Fatalf("Create of a taken key: %v", err)
	}
	if err := u.Unlink(); err != nil {
		t.Fatal(err)
	}
	if _, err := shm.Open(key, 0, shm.WithBackend(b)); !errors.Is(err, shm.ErrNotExist) {
		t.Fatalf("Open after Unlink: %v", err)
	}
}

// TestOddNames covers names too long for a socket address, names that
// /proc/net/unix could not show on one line, and names that look hashed.
func TestOddNames(t *testing.T) {
	b := memfd.New()
	long := name(testKey("long-")) + strings.Repeat("x", 200)
	names := []string{long[:200], name(testKey("new\nline")), "#" + name(testKey("hash")), name(testKey("sp ace "))}
	for _, n := range names {
		s := create(t, b, n, 4096, 0o640)
		copy(s.Bytes(), n)
		u, err := b.Open(n)
		if err != nil {
			t.Fatalf("Open %q: %v", n, err)
		}
		if !bytes.HasPrefix(u.Bytes(), []byte(n)) {
			t.Fatalf("Open %q maps another object", n)
		}
		u.Close()
	}
	infos, err := b.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		found := false
		for _, in := range infos {
			if in.Name == n {
				found = true
				if in.Size != 4096 || in.Mode != 0o640 || in.UID != os.Geteuid() || in.GID != os.Getegid() || in.Attached != -1 {
					t.Fatalf("List says %+v for %q", in, n)
				}
			}
		}
		if !found {
			t.Fatalf("List misses %q: %+v", n, infos)
		}
		if err := b.Unlink(n); err != nil {
			t.Fatalf("Unlink %q: %v", n, err)
		}
		if _, err := b.Open(n); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("Open %q after Unlink: %v", n, err)
		}
	}
	infos, err = b.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range infos {
		for _, n := range names {
			if in.Name == n {
				t.Fatalf("List still shows %q after Unlink", n)
			}
		}
	}
}

func TestIDs(t *testing.T) {
	b := memfd.New()
	n := name(testKey("id")) + strings.Repeat("y", 120)
	s := create(t, b, n, 64, 0o600)
	copy(s.Bytes(), "by id")
	addr := memfd.Addr(n)
	if !strings.HasPrefix(addr, memfd.AddrPrefix+"#") {
		t.Fatalf("a %d-byte name gets address %q", len(n), addr)
	}
	id := strings.TrimPrefix(addr, memfd.AddrPrefix)
	u, err := b.OpenID(id)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if string(u.Bytes()[:5]) != "by id" {
		t.Fatal("OpenID maps another object")
	}
	if _, err := b.OpenID("x"); err == nil {
		t.Fatal("OpenID of a malformed id succeeded")
	}
	if err := b.UnlinkID(id); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Open(n); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open after UnlinkID: %v", err)
	}
}

// TestOwnerGone: when the owner process exits while a user is attached,
// the user keeps its mapping and the data; new Opens fail with ErrNotExist.
func TestOwnerGone(t *testing.T) {
	for _, how := range []string{"exit", "crash", "kill"} {
		t.Run(how, func(t *testing.T) {
			key := testKey("gone")
			owner := startChild(t, "owner", []string{key, "600"})
			if l := owner.Expect(""); l != "ready" {
				t.Fatalf("owner: %q", l)
			}
			b := memfd.New()
			u, err := shm.Open(key, time.Second, shm.WithBackend(b))
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			switch how {
			case "kill":
				owner.Kill()
			default:
				owner.Send(how)
				owner.Wait()
			}
			if string(u.Bytes()[:10]) != "owner data" {
				t.Fatalf("data after the owner left: %q", u.Bytes()[:10])
			}
			copy(u.Bytes(), "user data")
			l, err := u.Lock()
			if err != nil {
				t.Fatal(err)
			}
			l.Unlock()
			if _, err := shm.Open(key, 0, shm.WithBackend(b)); !errors.Is(err, shm.ErrNotExist) {
				t.Fatalf("Open after the owner left: %v", err)
			}
			infos, err := b.List()
			if err != nil {
				t.Fatal(err)
			}
			for _, in := range infos {
				if in.Name == name(key) {
					t.Fatal("List shows a key whose owner is gone")
				}
			}
			// The key is free for a new owner.
			r, err := shm.Create(key, 10, shm.WithBackend(b))
			if err != nil {
				t.Fatalf("Create after the owner left: %v", err)
			}
			r.Close()
		})
	}
}

// TestUnlinkFromUser: a user process asks the owner to stop serving.
func TestUnlinkFromUser(t *testing.T) {
	b := memfd.New()
	key := testKey("unlink")
	r, err := shm.Create(key, 100, shm.WithBackend(b))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	copy(r.Bytes(), "kept")
	c := startChild(t, "unlink", []string{key})
	if l := c.Expect(""); l != "ok" {
		t.Fatalf("child Unlink: %q", l)
	}
	c.Wait()
	if _, err := shm.Open(key, 0, shm.WithBackend(b)); !errors.Is(err, shm.ErrNotExist) {
		t.Fatalf("Open after a user's Unlink: %v", err)
	}
	if string(r.Bytes()[:4]) != "kept" {
		t.Fatal("owner lost its data")
	}
	c = startChild(t, "unlink", []string{key})
	if l := c.Expect(""); !strings.HasPrefix(l, "err false true") {
		t.Fatalf("second Unlink from a user: %q, want ErrNotExist", l)
	}
	c.Wait()
}

// TestAccess checks the owner's checks of other uids, the user's check of
// the server, and that the explicit refusal is told from absence.
func TestAccess(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the access checks need root to run children as other uids")
	}
	b := memfd.New()
	open := func(key string, opts ...reexec.Option) string {
		t.Helper()
		c := startChild(t, "open", []string{key}, opts...)
		l := c.Expect("")
		c.Wait()
		return l
	}
	mk := func(perm fs.FileMode) (*shm.Region, string) {
		key := testKey("access")
		r, err := shm.Create(key, 100, shm.WithBackend(b), shm.WithMode(perm))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		copy(r.Bytes(), "root data")
		return r, key
	}
	nobody := func(groups ...uint32) reexec.Option { return asUser(t, 65534, 65534, groups...) }

	r600, k600 := mk(0o600)
	if l := open(k600, nobody()); !strings.HasPrefix(l, "err true false") {
		t.Fatalf("uid 65534 on a 0600 region: %q, want ErrPermission", l)
	}
	if l := open(k600); l != "ok root data" {
		t.Fatalf("root on a 0600 region: %q", l)
	}
	// Chown takes effect for the next Open.
	if err := r600.Chown(65534, 65534); err != nil {
		t.Fatal(err)
	}
	if l := open(k600, nobody()); l != "ok child data" {
		t.Fatalf("uid 65534 on a 0600 region it owns: %q", l)
	}

	_, k660 := mk(0o660) // group root
	if l := open(k660, nobody()); !strings.HasPrefix(l, "err true false") {
		t.Fatalf("uid 65534 outside the group on a 0660 region: %q", l)
	}
	if l := open(k660, asUser(t, 65534, 0)); l != "ok root data" {
		t.Fatalf("uid 65534 gid 0 on a 0660 region: %q", l)
	}
	if l := open(k660, nobody(0)); l != "ok child data" {
		t.Fatalf("uid 65534 with supplementary group 0 on a 0660 region: %q", l)
	}

	r666, k666 := mk(0o666)
	if l := open(k666, nobody()); l != "ok root data" {
		t.Fatalf("uid 65534 on a 0666 region: %q", l)
	}
	if string(r666.Bytes()[:10]) != "child data" {
		t.Fatal("the other user's write is not visible")
	}
	// Another uid may not remove the key (sticky /dev/shm semantics).
	c := startChild(t, "unlink", []string{k666}, nobody())
	if l := c.Expect(""); !strings.HasPrefix(l, "err true false") {
		t.Fatalf("uid 65534 unlinking root's 0666 region: %q, want ErrPermission", l)
	}
	c.Wait()
	if l := open(k666); l != "ok child data" {
		t.Fatalf("root after the refused Unlink: %q", l)
	}
}

// TestSquatter: a process of another uid that serves a key first cannot
// feed its memory to a user that does not trust it.
func TestSquatter(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a squatter of another uid needs root to run a child as another uid")
	}
	key := testKey("squat")
	sq := startChild(t, "owner", []string{key, "666"}, asUser(t, 65534, 65534))
	if l := sq.Expect(""); l != "ready" {
		t.Fatalf("squatter: %q", l)
	}
	_, err := shm.Open(key, 0, shm.WithBackend(memfd.New()))
	if !errors.Is(err, fs.ErrPermission) || errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open of a key served by an untrusted uid: %v, want ErrPermission only", err)
	}
	if _, err := shm.Create(key, 10, shm.WithBackend(memfd.New())); !errors.Is(err, shm.ErrExist) {
		t.Fatalf("Create of a squatted key: %v, want ErrExist", err)
	}
	u, err := shm.Open(key, 0, shm.WithBackend(memfd.New(memfd.WithTrustedUIDs(65534))))
	if err != nil {
		t.Fatalf("Open trusting uid 65534: %v", err)
	}
	u.Close()
	u, err = shm.Open(key, 0, shm.WithBackend(memfd.New(memfd.WithAnyServer())))
	if err != nil {
		t.Fatalf("Open trusting any uid: %v", err)
	}
	u.Close()
	sq.Send("exit")
	sq.Wait()

	// The other way round: uid 65534 does not take root's memory... it does:
	// root is always trusted. It refuses a server of a third uid unless told.
	key = testKey("squat2")
	sq = startChild(t, "owner", []string{key, "666"}, asUser(t, 65533, 65533))
	if l := sq.Expect(""); l != "ready" {
		t.Fatalf("squatter: %q", l)
	}
	c := startChild(t, "open", []string{key}, asUser(t, 65534, 65534))
	if l := c.Expect(""); !strings.HasPrefix(l, "err true false") {
		t.Fatalf("uid 65534 opening a key served by uid 65533: %q, want ErrPermission", l)
	}
	c.Wait()
	c = startChild(t, "open", []string{key}, asUser(t, 65534, 65534), trusting(65533))
	if l := c.Expect(""); l != "ok owner data" {
		t.Fatalf("uid 65534 trusting uid 65533: %q", l)
	}
	c.Wait()
	sq.Send("exit")
	sq.Wait()
}

// fakeServer listens on the key's socket and runs serve on each connection.
func fakeServer(t *testing.T, n string, serve func(c *net.UnixConn)) {
	t.Helper()
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: "@" + memfd.Addr(n), Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			var req [8]byte
			c.Read(req[:]) // or the close would reset the connection
			serve(c)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
}

// TestHostileServers: a server that does not answer, or that sends a file
// that could shrink, cannot hang or harm the user, nor leak descriptors.
func TestHostileServers(t *testing.T) {
	b := memfd.New(memfd.WithIOTimeout(50 * time.Millisecond))

	// Bound but not listening: nobody serves the key.
	n := name(testKey("bound"))
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: "@" + memfd.Addr(n)}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Open(n); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open of a bound, not listening, name: %v", err)
	}
	unix.Close(fd)

	// Accepts and never answers.
	mute := name(testKey("mute"))
	release := make(chan struct{})
	var releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	fakeServer(t, mute, func(c *net.UnixConn) { <-release })
	t.Cleanup(free) // before the fake server's cleanup, which waits for it
	// Sends a memfd that is not sealed: it could truncate it under us.
	unsealed := name(testKey("unsealed"))
	fakeServer(t, unsealed, func(c *net.UnixConn) {
		m, err := unix.MemfdCreate("unsealed", unix.MFD_CLOEXEC)
		if err != nil {
			return
		}
		unix.Ftruncate(m, 4096)
		c.WriteMsgUnix([]byte{1, 'k'}, unix.UnixRights(m), nil)
		unix.Close(m)
	})
	// Sends several descriptors, or garbage.
	many := name(testKey("many"))
	fakeServer(t, many, func(c *net.UnixConn) {
		c.WriteMsgUnix([]byte{1, 'k'}, unix.UnixRights(0, 1, 2), nil)
	})
	garbage := name(testKey("garbage"))
	fakeServer(t, garbage, func(c *net.UnixConn) { c.Write([]byte("HTTP/1.1 200 OK")) })

	fds := fdtest.Count(t)
	_, err = b.Open(mute)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Open from a mute server: %v, want a deadline error", err)
	}
	if _, err := shm.Open("/"+mute, 0, shm.WithBackend(b)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("shm.Open from a mute server: %v", err)
	}
	// OpenContext ends by the context's deadline, before a long I/O timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	_, err = memfd.New(memfd.WithIOTimeout(time.Hour)).OpenContext(ctx, mute)
	cancel()
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("OpenContext from a mute server: %v, want a deadline error", err)
	}
	if _, err := b.OpenContext(ctx, mute); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("OpenContext with an ended context: %v", err)
	}
	free()
	if _, err := b.Open(unsealed); err == nil || !strings.Contains(err.Error(), "not sealed") {
		t.Fatalf("Open of an unsealed memfd: %v", err)
	}
	if _, err := b.Open(many); err == nil {
		t.Fatal("Open accepted three descriptors")
	}
	if _, err := b.Open(garbage); err == nil {
		t.Fatal("Open accepted garbage")
	}
	if !settle(func() bool { return fdtest.Count(t) == fds }) {
		t.Fatalf("%d descriptors before, %d after", fds, fdtest.Count(t))
	}
}

// TestHostileClients: clients that say nothing, or nonsense, cannot keep
// the owner from serving others or from closing.
func TestHostileClients(t *testing.T) {
	g, fds := runtime.NumGoroutine(), fdtest.Count(t)
	b := memfd.New(memfd.WithIOTimeout(time.Hour)) // the owner drops mute clients after 250 ms, or at Close
	n := name(testKey("clients"))
	p, err := b.Create(n, 4096, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(); err != nil {
		t.Fatal(err)
	}
	addr := &unix.SockaddrUnix{Name: "@" + memfd.Addr(n)}
	var mute []int
	for range 5 {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Connect(fd, addr); err != nil {
			t.Fatal(err)
		}
		mute = append(mute, fd)
	}
	// Nonsense gets an explicit answer.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, addr); err != nil {
		t.Fatal(err)
	}
	unix.Write(fd, []byte{9, 'o'})
	var buf [16]byte
	if k, err := unix.Read(fd, buf[:]); err != nil || k != 2 || buf[1] != 'e' {
		t.Fatalf("answer to a bad version: %q, %v", buf[:max(k, 0)], err)
	}
	unix.Close(fd)
	// Others are still served.
	u, err := b.Open(n)
	if err != nil {
		t.Fatalf("Open with mute clients connected: %v", err)
	}
	u.Close()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for _, fd := range mute {
		unix.Close(fd)
	}
	if !settle(func() bool { return runtime.NumGoroutine() <= g && fdtest.Count(t) == fds }) {
		t.Fatalf("goroutines %d -> %d, descriptors %d -> %d", g, runtime.NumGoroutine(), fds, fdtest.Count(t))
	}
}

// TestNoLeaks: every descriptor, socket and goroutine is released by
// Close and Discard, whatever the path.
func TestNoLeaks(t *testing.T) {
	b := memfd.New()
	cycle := func() {
		// Created, opened, unlinked by a user, closed.
		key := testKey("leak")
		r, err := shm.Create(key, 4096, shm.WithBackend(b))
		if err != nil {
			t.Fatal(err)
		}
		u, err := shm.Open(key, 0, shm.WithBackend(b))
		if err != nil {
			t.Fatal(err)
		}
		if f, err := u.File(); err != nil {
			t.Fatal(err)
		} else {
			f.Close()
		}
		if err := u.Unlink(); err != nil {
			t.Fatal(err)
		}
		u.Close()
		r.Close()
		// Created and discarded.
		p, err := b.Create(name(testKey("discard")), 100, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		p.Discard()
		// Published and discarded.
		p, err = b.Create(name(testKey("discard2")), 100, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		p.Publish()
		p.Discard()
		// Closed while still published, with a failed Create in between.
		key = testKey("closed")
		r, err = shm.Create(key, 100, shm.WithBackend(b))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := shm.Create(key, 100, shm.WithBackend(b)); !errors.Is(err, shm.ErrExist) {
			t.Fatal(err)
		}
		if _, err := b.List(); err != nil {
			t.Fatal(err)
		}
		r.Close()
	}
	cycle() // warm up the runtime's own goroutines and descriptors
	g, fds := runtime.NumGoroutine(), fdtest.Count(t)
	for range 20 {
		cycle()
	}
	if !settle(func() bool { return runtime.NumGoroutine() <= g && fdtest.Count(t) <= fds }) {
		t.Fatalf("goroutines %d -> %d, descriptors %d -> %d", g, runtime.NumGoroutine(), fds, fdtest.Count(t))
	}
}

// TestLateRequests: a request sent a while after connecting (the owner has
// accepted the connection by then, and waits for the request) is answered,
// an unlink sent that way stops the server, and a client that never sends
// is dropped once the I/O timeout has passed.
func TestLateRequests(t *testing.T) {
	b := memfd.New(memfd.WithIOTimeout(200 * time.Millisecond))
	n := name(testKey("late"))
	p := create(t, b, n, 4096, 0o600)
	addr := &unix.SockaddrUnix{Name: "@" + memfd.Addr(n)}
	dial := func() int {
		t.Helper()
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Connect(fd, addr); err != nil {
			unix.Close(fd)
			t.Fatal(err)
		}
		return fd
	}
	// recv reads one answer and closes the descriptors it carries.
	recv := func(fd int) (status byte, nfds int, n int) {
		t.Helper()
		buf := make([]byte, 512)
		oob := make([]byte, unix.CmsgSpace(4*4))
		k, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for i := range msgs {
			fds, _ := unix.ParseUnixRights(&msgs[i])
			for _, f := range fds {
				unix.Close(f)
			}
			nfds += len(fds)
		}
		if k >= 2 {
			status = buf[1]
		}
		return status, nfds, k
	}

	// Mute: connected first, dropped after the timeout while the others
	// are served.
	mute := dial()
	defer unix.Close(mute)

	late := dial()
	time.Sleep(20 * time.Millisecond) // the owner has accepted it by now, with no request
	if _, err := unix.Write(late, []byte{1, 'o'}); err != nil {
		t.Fatal(err)
	}
	if st, nfds, _ := recv(late); st != 'k' || nfds != 1 {
		t.Fatalf("late open: status %q, %d descriptors", st, nfds)
	}
	unix.Close(late)

	if _, _, k := recv(mute); k != 0 {
		t.Fatalf("a mute client got %d bytes, want the connection closed", k)
	}

	late = dial()
	time.Sleep(20 * time.Millisecond)
	if _, err := unix.Write(late, []byte{1, 'u'}); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := recv(late); st != 'k' {
		t.Fatalf("late unlink: status %q", st)
	}
	unix.Close(late)
	if _, err := b.Open(n); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open after a late unlink: %v, want fs.ErrNotExist", err)
	}
	// The name is free again.
	q, err := b.Create(n, 4096, 0o600)
	if err != nil {
		t.Fatalf("Create after a late unlink: %v", err)
	}
	q.Discard()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}
