package posix_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/posix"
	"github.com/shmgo/shm/internal/dirobj"
	"github.com/shmgo/shm/internal/fdtest"
	"github.com/shmgo/shm/internal/reexec"
)

// Cross-process tests re-execute the test binary (internal/reexec); TestMain
// plays the child's role instead of running the tests.
func TestMain(m *testing.M) {
	reexec.Register("lease", func(c *reexec.Child) error { return runRole(c, "lease", c.Arg(0)) })
	reexec.Main()
	os.Exit(m.Run())
}

// runRole is what a child does; it talks to the parent with lines on stdout
// and stdin.
func runRole(c *reexec.Child, role, path string) error {
	hear := c.Hear
	switch role {
	case "lease":
		// The hostile owner: take a write lease on the file and keep it,
		// ignoring the kernel's request to give it up, until told to let
		// go. Then take a new lease and give it up only when an opener
		// asks for it (SIGIO), as package shm's cleanup does.
		sigio := make(chan os.Signal, 1)
		signal.Notify(sigio, syscall.SIGIO)
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_WRLCK); err != nil {
			return fmt.Errorf("F_SETLEASE F_WRLCK: %w", err)
		}
		c.Say("leased")
		if l := hear(); l != "release" {
			return fmt.Errorf("heard %q", l)
		}
		lease, _ := unix.FcntlInt(uintptr(fd), unix.F_GETLEASE, 0)
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_UNLCK); err != nil {
			return err
		}
		// A lease being broken reads as the type it is to become.
		c.Say("released, was breaking=%v", lease != unix.F_WRLCK)
		for len(sigio) > 0 {
			<-sigio
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_WRLCK); err != nil {
			return fmt.Errorf("F_SETLEASE F_WRLCK again: %w", err)
		}
		c.Say("leased again")
		<-sigio
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_UNLCK); err != nil {
			return err
		}
		c.Say("yielded")
		hear()
		return nil
	}
	return fmt.Errorf("unknown role %q", role)
}

func startChild(t *testing.T, role, path string) *reexec.Proc {
	t.Helper()
	return reexec.Start(t, role, []string{path})
}

// leaseBreakTime is the kernel's lease-break-time: how long an open(2) may
// block on a lease that its holder does not give up.
func leaseBreakTime(t *testing.T) time.Duration {
	b, err := os.ReadFile("/proc/sys/fs/lease-break-time")
	if err != nil {
		t.Skipf("cannot read the lease break time: %v", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return time.Duration(n) * time.Second
}

// TestOpenUnderLease: another process takes a write lease on a region's
// file and never gives it up. Open(key, 1s) must give up at its timeout
// with an error matching os.ErrDeadlineExceeded, not block in open(2) until
// the kernel breaks the lease (lease-break-time, 45 s by default); and an
// Open that waits while the holder lets go must succeed.
func TestOpenUnderLease(t *testing.T) {
	// The bound below tells an Open that kept to its timeout from one that
	// blocked in open(2): it is far above the timeout and below the time
	// the kernel lets a lease holder keep an opener waiting.
	const timeout = time.Second
	bound := 15 * time.Second
	if lbt := leaseBreakTime(t); lbt <= bound+timeout {
		t.Skipf("lease-break-time is %v: too short to tell a blocked Open from one that keeps to its timeout", lbt)
	}
	dir := t.TempDir()
	be := posix.NewDir(dir)
	opt := shm.WithBackend(be)
	const key = "/t-posix-lease"
	r, err := shm.Create(key, 4096, opt)
	if err != nil {
		t.Fatal(err)
	}
	copy(r.Bytes(), "leased region")
	// A write lease needs the file open nowhere else.
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	defer be.Unlink(key[1:])

	c := startChild(t, "lease", filepath.Join(dir, key[1:]))
	if l := c.Expect(""); l != "leased" {
		if strings.Contains(l, "F_SETLEASE") {
			t.Skipf("no leases on %s: %s", dir, l)
		}
		t.Fatalf("child said %q; its output:\n%s", l, c.Output())
	}

	type result struct {
		r   *shm.Region
		err error
		d   time.Duration
	}
	open := func(timeout time.Duration) <-chan result {
		ch := make(chan result, 1)
		go func() {
			t0 := time.Now()
			r, err := shm.Open(key, timeout, opt)
			ch <- result{r, err, time.Since(t0)}
		}()
		return ch
	}
	var res result
	select {
	case res = <-open(timeout):
	case <-time.After(bound):
		t.Fatalf("Open(key, %v) still blocked after %v under another process's lease", timeout, bound)
	}
	if res.err == nil {
		res.r.Close()
		t.Fatalf("Open under a lease that is never given up succeeded after %v", res.d)
	}
	t.Logf("Open(key, %v) under a lease: %v after %v", timeout, res.err, res.d.Round(time.Millisecond))
	if !errors.Is(res.err, os.ErrDeadlineExceeded) || !errors.Is(res.err, syscall.EWOULDBLOCK) {
		t.Fatalf("error %v does not match os.ErrDeadlineExceeded and EWOULDBLOCK", res.err)
	}
	if errors.Is(res.err, shm.ErrNotExist) || errors.Is(res.err, shm.ErrCorrupt) {
		t.Fatalf("error %v matches another sentinel", res.err)
	}
	if !strings.Contains(res.err.Error(), "lease") {
		t.Fatalf("error %q does not say that a lease held it up", res.err)
	}
	if res.d < timeout {
		t.Fatalf("Open gave up after %v, before its timeout of %v", res.d, timeout)
	}

	// The holder lets go (the kernel had asked it to): Open works.
	c.Send("release")
	c.ExpectLine("released, was breaking=true")
	c.ExpectLine("leased again")
	// A new lease, given up only when an opener asks: the Open below is
	// what asks, and it keeps trying until the holder yields.
	ch := open(time.Minute)
	c.ExpectLine("yielded")
	res = <-ch
	if res.err != nil {
		t.Fatalf("Open while the lease holder yields: %v", res.err)
	}
	t.Logf("Open(key, 1m) while the lease holder yields: ok after %v", res.d.Round(time.Millisecond))
	if got := string(res.r.Bytes()[:13]); got != "leased region" {
		t.Fatalf("region holds %q", got)
	}
	res.r.Close()
	c.Send("bye")
	c.Wait()
}

// TestOpenContextCancelledUnderLease: OpenContext ends when its context is
// cancelled, with an error wrapping context.Canceled (not a timeout).
func TestOpenContextCancelledUnderLease(t *testing.T) {
	dir := t.TempDir()
	be := posix.NewDir(dir)
	const name = "t-posix-lease-cancel"
	p, err := be.Create(name, 4096, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(); err != nil {
		t.Fatal(err)
	}
	p.Close()
	defer be.Unlink(name)
	c := startChild(t, "lease", filepath.Join(dir, name))
	if l := c.Expect(""); l != "leased" {
		if strings.Contains(l, "F_SETLEASE") {
			t.Skipf("no leases on %s: %s", dir, l)
		}
		t.Fatalf("child said %q; its output:\n%s", l, c.Output())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		s, err := be.OpenContext(ctx, name)
		if err == nil {
			s.Close()
		}
		done <- err
	}()
	cancel()
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		t.Fatal("OpenContext still blocked a minute after its context was cancelled")
	}
	if !errors.Is(err, context.Canceled) || errors.Is(err, os.ErrDeadlineExceeded) || !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Fatalf("OpenContext cancelled under a lease: %v, want context.Canceled and EWOULDBLOCK", err)
	}
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe.Path != filepath.Join(dir, name) {
		t.Fatalf("error %v does not name the file", err)
	}
}

// plantForeign puts something under each name that is not a region's file.
// It returns the names with what Open must say about each.
func plantForeign(t *testing.T, dir string) map[string]string {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]string{}
	must(os.WriteFile(filepath.Join(dir, "target"), make([]byte, 8192), 0o600))
	must(os.Symlink("target", filepath.Join(dir, "symlink")))
	want["symlink"] = "a symbolic link"
	must(os.Symlink("nowhere", filepath.Join(dir, "dangling")))
	want["dangling"] = "a symbolic link"
	must(unix.Mkfifo(filepath.Join(dir, "fifo"), 0o666))
	want["fifo"] = "a FIFO"
	must(os.Mkdir(filepath.Join(dir, "dir"), 0o700))
	want["dir"] = "a directory"
	l, err := net.Listen("unix", filepath.Join(dir, "socket"))
	must(err)
	t.Cleanup(func() { l.Close() })
	want["socket"] = "a unix socket"
	must(os.Link(filepath.Join(dir, "target"), filepath.Join(dir, "hardlink")))
	want["hardlink"] = "a hard-linked file (2 links)"
	want["target"] = "a hard-linked file (2 links)"
	if os.Geteuid() == 0 {
		// /dev/null: harmless to open.
		if err := unix.Mknod(filepath.Join(dir, "device"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err == nil {
			want["device"] = "a character device"
		} else {
			t.Logf("no device node (%v)", err)
		}
	}
	return want
}

// TestOpenForeign: whatever is under a name that is not a regular file with
// one link fails Open at once, without blocking (a FIFO), with an error
// matching dirobj.ErrForeign that says what is there, and leaves no
// descriptor open.
func TestOpenForeign(t *testing.T) {
	dir := t.TempDir()
	be := posix.NewDir(dir)
	want := plantForeign(t, dir)
	fds := fdtest.Count(t)
	for name, what := range want {
		done := make(chan error, 1)
		go func() {
			s, err := be.Open(name)
			if err == nil {
				s.Close()
			}
			done <- err
		}()
		var err error
		select {
		case err = <-done:
		case <-time.After(time.Minute):
			t.Fatalf("Open of %s still blocked after a minute", name)
		}
		if !errors.Is(err, dirobj.ErrForeign) {
			t.Errorf("Open of %s: %v, want dirobj.ErrForeign", name, err)
			continue
		}
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrExist) {
			t.Errorf("Open of %s: %v matches ErrNotExist or ErrExist", name, err)
		}
		if !strings.Contains(err.Error(), what) || !strings.Contains(err.Error(), filepath.Join(dir, name)) {
			t.Errorf("Open of %s: %q does not say %q and the path", name, err, what)
		}
		t.Logf("%s: %v", name, err)
		// Package shm: an error, at once, that names the key.
		_, err = shm.Open("/"+name, 0, shm.WithBackend(be))
		if err == nil || !strings.Contains(err.Error(), what) {
			t.Errorf("shm.Open of %s: %v", name, err)
		}
	}
	if n := fdtest.Count(t); n != fds {
		t.Fatalf("%d descriptors after the Opens, %d before", n, fds)
	}
	// Nothing was changed or removed.
	for name := range want {
		if _, err := os.Lstat(filepath.Join(dir, name)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestOpenDuringLinkPublish: where Publish falls back to link(2) and then
// removes the temporary name, an Open in between sees two links; it must
// not take the object for a foreign hard link.
func TestOpenDuringLinkPublish(t *testing.T) {
	dir := t.TempDir()
	be := posix.NewDir(dir)
	const name = "t-posix-linkpub"
	p, err := be.Create(name, 4096, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	tmp := ""
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), posix.TempPrefix+name+".") {
			tmp = filepath.Join(dir, e.Name())
		}
	}
	if tmp == "" {
		t.Fatal("no temporary file")
	}
	// Publish's fallback, stopped between its link and its unlink.
	if err := os.Link(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(tmp)
	defer be.Unlink(name)
	s, err := be.Open(name)
	if err != nil {
		t.Fatalf("Open during a publication by link: %v", err)
	}
	s.Close()
	// Another link is foreign.
	other := filepath.Join(dir, "elsewhere")
	if err := os.Rename(tmp, other); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(other)
	if _, err := be.Open(name); !errors.Is(err, dirobj.ErrForeign) {
		t.Fatalf("Open of a file hard-linked elsewhere: %v, want ErrForeign", err)
	}
}

// headerLen is what package shm would map of a region whose header is
// head: the header size the header records at offset 12 (where the data
// starts) and the data size at offset 16.
func headerLen(head []byte) (int64, error) {
	if len(head) < 512 {
		return int64(len(head)) + 1, nil // more than there is: map it all
	}
	return int64(binary.NativeEndian.Uint32(head[12:])) + int64(binary.NativeEndian.Uint64(head[16:])), nil
}

// hdrSize is where a region's data starts with the default user table:
// the 512-byte header, then 32 bytes a slot.
const hdrSize = 512 + 32*shm.DefaultUsers

// TestOpenSizedHuge: a peer grows a region's file to 1 PiB (sparse, so it
// costs nothing). Open maps the whole object and fails (ENOMEM: more than
// the address space); OpenSized maps what the header says, and sees a file
// that is shorter than its header claims as it is.
func TestOpenSizedHuge(t *testing.T) {
	dir := smallTmpfs(t) // tmpfs: sparse files of any size
	be := posix.NewDir(dir)
	const key = "/t-posix-huge"
	r, err := shm.Create(key, 4096, shm.WithBackend(be))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer r.Unlink()
	copy(r.Bytes(), "data")
	p := filepath.Join(dir, key[1:])
	const huge = 1 << 50
	if err := os.Truncate(p, huge); err != nil {
		t.Fatal(err)
	}
	fds := fdtest.Count(t)

	if s, err := be.Open(key[1:]); err == nil {
		t.Logf("Open of a 1 PiB object mapped %d bytes", len(s.Bytes()))
		s.Close()
	} else {
		t.Logf("Open of a 1 PiB object: %v", err)
	}
	s, err := be.OpenSized(context.Background(), key[1:], 512, headerLen)
	if err != nil {
		t.Fatalf("OpenSized of a region whose file was grown to 1 PiB: %v", err)
	}
	if n := len(s.Bytes()); n != hdrSize+4096 {
		t.Fatalf("OpenSized maps %d bytes, want %d", n, hdrSize+4096)
	}
	if string(s.Bytes()[hdrSize:hdrSize+4]) != "data" {
		t.Fatalf("OpenSized maps %q", s.Bytes()[hdrSize:hdrSize+4])
	}
	s.Close()
	// And so does package shm's Open, which a user calls.
	u, err := shm.Open(key, 0, shm.WithBackend(be))
	if err != nil {
		t.Fatalf("shm.Open of a region whose file was grown to 1 PiB: %v", err)
	}
	if u.Size() != 4096 || string(u.Bytes()[:4]) != "data" {
		t.Fatalf("shm.Open of the grown region: size %d, data %q", u.Size(), u.Bytes()[:4])
	}
	u.Close()

	// Shorter than the header says: the whole object, so that the caller
	// sees it was cut short.
	if err := os.Truncate(p, 1000); err != nil {
		t.Fatal(err)
	}
	s, err = be.OpenSized(context.Background(), key[1:], 512, headerLen)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(s.Bytes()); n != 1000 {
		t.Fatalf("OpenSized of a 1000-byte object maps %d bytes, want 1000", n)
	}
	s.Close()

	// An error from size is returned as is, with nothing left open.
	bad := errors.New("bad header")
	_, err = be.OpenSized(context.Background(), key[1:], 512, func([]byte) (int64, error) { return 0, bad })
	if err != bad {
		t.Fatalf("OpenSized with a failing size: %v, want %v", err, bad)
	}
	if n := fdtest.Count(t); n != fds {
		t.Fatalf("%d descriptors after OpenSized, %d before", n, fds)
	}
	if err := os.Truncate(p, 512+4096); err != nil { // for r.Close
		t.Fatal(err)
	}
}
