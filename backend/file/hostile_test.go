package file_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/file"
	"github.com/shmgo/shm/internal/dirobj"
	"github.com/shmgo/shm/internal/fdtest"
	"github.com/shmgo/shm/internal/reexec"
)

// anotherUser runs a child as uid 65534 when the tests run as root, and as
// the same user otherwise (another process all the same).
func anotherUser(t *testing.T) reexec.Option {
	if os.Geteuid() != 0 {
		t.Logf("not root: the lock holder runs as this user")
		return reexec.Env() // nothing
	}
	return asNobody(t)
}

// readableDir returns a new directory that uid 65534 can search.
func readableDir(t *testing.T) string {
	dir := t.TempDir()
	ok(t, os.Chmod(filepath.Dir(dir), 0o755), "chmod")
	ok(t, os.Chmod(dir, 0o755), "chmod")
	return dir
}

// TestOpenKeepsDeadlineUnderForeignLock: a user who may only read a
// region's file locks it exclusively and keeps the lock. Open must keep to
// its own timeout both ways: give up at a short one, with an error
// matching os.ErrDeadlineExceeded, however long the backend's default wait
// is; and keep waiting through a long one, however short that default, so
// that it succeeds when the lock is let go.
func TestOpenKeepsDeadlineUnderForeignLock(t *testing.T) {
	as := anotherUser(t)
	dir := readableDir(t)
	b := file.New(dir)
	opt := shm.WithBackend(b)
	const key = "/t-file-exlock"
	r, err := shm.Create(key, 4096, opt, shm.WithMode(0o644))
	ok(t, err, "Create")
	copy(r.Bytes(), "locked region")
	ok(t, r.Close(), "Close") // the owner's shared lock would keep the holder out
	defer b.Unlink(key[1:])

	c := startChild(t, "exlock", dir, key[1:], as)
	if l := c.Expect(""); l != "locked" {
		t.Fatalf("lock holder said %q; stderr:\n%s", l, c.Output())
	}

	// A short timeout, a long default: Open gives up at its timeout.
	restore := file.SetLockWait(time.Minute)
	const short = 100 * time.Millisecond
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
	case res = <-open(short):
	case <-time.After(30 * time.Second):
		t.Fatalf("Open(key, %v) still waiting after 30 s (the default wait is a minute)", short)
	}
	restore()
	if res.err == nil {
		res.r.Close()
		t.Fatal("Open succeeded while the file is locked exclusively")
	}
	t.Logf("Open(key, %v) under a foreign LOCK_EX: %v after %v", short, res.err, res.d.Round(time.Millisecond))
	if !errors.Is(res.err, os.ErrDeadlineExceeded) || !errors.Is(res.err, syscall.EWOULDBLOCK) {
		t.Fatalf("error %v does not match os.ErrDeadlineExceeded and EWOULDBLOCK", res.err)
	}
	if !strings.Contains(res.err.Error(), "locked exclusively") {
		t.Fatalf("error %q does not say what held it up", res.err)
	}
	if res.d < short {
		t.Fatalf("Open gave up after %v, before its timeout", res.d)
	}

	// A long timeout, a short default: Open keeps waiting past the
	// default, and gets the region once the lock is let go.
	const def = 20 * time.Millisecond
	restore = file.SetLockWait(def)
	defer restore()
	ch := open(time.Minute)
	select {
	case res = <-ch:
		t.Fatalf("Open(key, 1m) returned (%v) after %v, while the lock is held", res.err, res.d)
	case <-time.After(25 * def):
	}
	c.Send("unlock")
	if l := c.Expect(""); l != "unlocked" {
		t.Fatalf("lock holder said %q", l)
	}
	res = <-ch
	ok(t, res.err, "Open(key, 1m) after the lock was let go")
	t.Logf("Open(key, 1m): ok after %v (default wait %v)", res.d.Round(time.Millisecond), def)
	if got := string(res.r.Bytes()[:13]); got != "locked region" {
		t.Fatalf("region holds %q", got)
	}
	ok(t, res.r.Close(), "Close")
	c.Wait()
}

// TestOpenContextCancelledUnderForeignLock: a cancelled context ends the
// wait with an error wrapping context.Canceled.
func TestOpenContextCancelledUnderForeignLock(t *testing.T) {
	dir := readableDir(t)
	b := file.New(dir)
	const name = "t-file-exlock-cancel"
	s := create(t, b, name, 4096, 0o644)
	ok(t, s.Close(), "Close")
	c := startChild(t, "exlock", dir, name)
	if l := c.Expect(""); l != "locked" {
		t.Fatalf("lock holder said %q", l)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		s, err := b.OpenContext(ctx, name)
		if err == nil {
			s.Close()
		}
		done <- err
	}()
	cancel()
	var err error
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		t.Fatal("OpenContext still waiting a minute after its context was cancelled")
	}
	if !errors.Is(err, context.Canceled) || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("OpenContext cancelled: %v, want context.Canceled", err)
	}
	c.Send("unlock")
	c.Expect("")
	c.Wait()
}

// TestOpenUnderLease: another process's write lease on a region's file
// does not hold Open past its timeout (open(2) would block for the
// kernel's lease-break-time, 45 s by default).
func TestOpenUnderLease(t *testing.T) {
	dir := readableDir(t)
	b := file.New(dir)
	const key = "/t-file-lease"
	r, err := shm.Create(key, 4096, shm.WithBackend(b))
	ok(t, err, "Create")
	ok(t, r.Close(), "Close") // a write lease needs the file open nowhere else
	defer b.Unlink(key[1:])
	c := startChild(t, "lease", dir, key[1:])
	if l := c.Expect(""); l != "leased" {
		if strings.Contains(l, "F_SETLEASE") {
			t.Skipf("no leases on %s: %s", dir, l)
		}
		t.Fatalf("child said %q; stderr:\n%s", l, c.Output())
	}
	done := make(chan error, 1)
	t0 := time.Now()
	go func() {
		r, err := shm.Open(key, 500*time.Millisecond, shm.WithBackend(b))
		if err == nil {
			r.Close()
		}
		done <- err
	}()
	select {
	case err = <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("Open(key, 500ms) still blocked after 15 s under a lease")
	}
	t.Logf("Open(key, 500ms) under a lease: %v after %v", err, time.Since(t0).Round(time.Millisecond))
	if !errors.Is(err, os.ErrDeadlineExceeded) || !strings.Contains(err.Error(), "lease") {
		t.Fatalf("Open under a lease: %v, want a timeout that names the lease", err)
	}
	c.Wait()
}

// TestOpenForeign: anything but a regular file with one link under a name
// fails Open at once with dirobj.ErrForeign, saying what is there.
func TestOpenForeign(t *testing.T) {
	dir := t.TempDir()
	b := file.New(dir)
	target := filepath.Join(dir, "target")
	ok(t, os.WriteFile(target, make([]byte, 8192), 0o600), "write")
	ok(t, os.Symlink("target", filepath.Join(dir, "symlink")), "symlink")
	ok(t, unix.Mkfifo(filepath.Join(dir, "fifo"), 0o666), "mkfifo")
	ok(t, os.Mkdir(filepath.Join(dir, "dir"), 0o700), "mkdir")
	l, err := net.Listen("unix", filepath.Join(dir, "socket"))
	ok(t, err, "listen")
	defer l.Close()
	ok(t, os.Link(target, filepath.Join(dir, "hardlink")), "link")
	want := map[string]string{
		"symlink": "a symbolic link", "fifo": "a FIFO", "dir": "a directory",
		"socket": "a unix socket", "hardlink": "a hard-linked file (2 links)",
	}
	fds := fdtest.Count(t)
	for name, what := range want {
		done := make(chan error, 1)
		go func() {
			s, err := b.Open(name)
			if err == nil {
				s.Close()
			}
			done <- err
		}()
		select {
		case err = <-done:
		case <-time.After(time.Minute):
			t.Fatalf("Open of %s still blocked after a minute", name)
		}
		if !errors.Is(err, dirobj.ErrForeign) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrExist) {
			t.Errorf("Open of %s: %v, want dirobj.ErrForeign only", name, err)
			continue
		}
		if !strings.Contains(err.Error(), what) {
			t.Errorf("Open of %s: %q does not say %q", name, err, what)
		}
		t.Logf("%s: %v", name, err)
	}
	if n := fdtest.Count(t); n != fds {
		t.Fatalf("%d descriptors after the Opens, %d before", n, fds)
	}
}

// hdrSize is where a region's data starts with the default user table:
// the 512-byte header, then 32 bytes a slot.
const hdrSize = 512 + 32*shm.DefaultUsers

// TestOpenSizedHuge: a region's file grown to 1 PiB by a peer is mapped
// only as far as its header says by OpenSized.
func TestOpenSizedHuge(t *testing.T) {
	var sfs unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &sfs); err != nil || sfs.Type != unix.TMPFS_MAGIC {
		t.Skip("needs a tmpfs at /dev/shm for a sparse 1 PiB file")
	}
	dir, err := os.MkdirTemp("/dev/shm", "t-file-huge-")
	ok(t, err, "MkdirTemp")
	defer os.RemoveAll(dir)
	b := file.New(dir)
	const name = "t-file-huge"
	r, err := shm.Create("/"+name, 4096, shm.WithBackend(b))
	ok(t, err, "Create")
	copy(r.Bytes(), "data")
	ok(t, r.Close(), "Close")
	p := filepath.Join(dir, name)
	ok(t, os.Truncate(p, 1<<50), "truncate to 1 PiB")
	size := func(head []byte) (int64, error) {
		if len(head) < 512 {
			return int64(len(head)) + 1, nil
		}
		return int64(binary.NativeEndian.Uint32(head[12:])) + int64(binary.NativeEndian.Uint64(head[16:])), nil
	}
	s, err := b.OpenSized(context.Background(), name, 512, size)
	ok(t, err, "OpenSized of a file grown to 1 PiB")
	if n := len(s.Bytes()); n != hdrSize+4096 || string(s.Bytes()[hdrSize:hdrSize+4]) != "data" {
		t.Fatalf("OpenSized maps %d bytes, data %q; want %d, \"data\"", n, s.Bytes()[hdrSize:hdrSize+4], hdrSize+4096)
	}
	// It holds the shared lock like any segment, until Close.
	if inUse, err := b.InUse(name); err != nil || !inUse {
		t.Fatalf("InUse = %v, %v with an OpenSized segment", inUse, err)
	}
	ok(t, s.Close(), "Close")
	if inUse, err := b.InUse(name); err != nil || inUse {
		t.Fatalf("InUse = %v, %v after Close", inUse, err)
	}
}
