package dirobj

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Inspect accepts a regular file with one link, and a second link only when
// it is a temporary name of the same object (a Publish by link(2) half
// done); everything else is foreign and said to be.
func TestInspect(t *testing.T) {
	d := Dir{Path: t.TempDir(), TempPrefix: ".tmp."}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	lstat := func(name string) *unix.Stat_t {
		t.Helper()
		var st unix.Stat_t
		must(unix.Lstat(d.Join(name), &st))
		return &st
	}
	must(os.WriteFile(d.Join("plain"), []byte("x"), 0o600))
	if err := d.Inspect("plain", lstat("plain")); err != nil {
		t.Fatalf("Inspect of a plain file: %v", err)
	}
	must(os.Symlink("plain", d.Join("link")))
	must(unix.Mkfifo(d.Join("fifo"), 0o600))
	must(os.Mkdir(d.Join("dir"), 0o700))
	for name, what := range map[string]string{"link": "a symbolic link", "fifo": "a FIFO", "dir": "a directory"} {
		err := d.Inspect(name, lstat(name))
		var fe *ForeignError
		if !errors.As(err, &fe) || !errors.Is(err, ErrForeign) || !strings.HasPrefix(fe.What, what) {
			t.Errorf("Inspect of %s: %v, want a ForeignError saying %q", name, err, what)
		}
	}

	// A publication by link, between link and unlink.
	must(os.WriteFile(d.Join(".tmp.obj.0123456789abcdef"), []byte("x"), 0o600))
	must(os.Link(d.Join(".tmp.obj.0123456789abcdef"), d.Join("obj")))
	if err := d.Inspect("obj", lstat("obj")); err != nil {
		t.Fatalf("Inspect during a publication by link: %v", err)
	}
	// The temporary name of another key, even one that starts alike, does
	// not count; nor does a third link.
	must(os.WriteFile(d.Join(".tmp.ob.j.0123456789abcdef"), []byte("x"), 0o600))
	must(os.Link(d.Join(".tmp.ob.j.0123456789abcdef"), d.Join("ob")))
	if err := d.Inspect("ob", lstat("ob")); !errors.Is(err, ErrForeign) {
		t.Errorf("Inspect of a file linked to another key's temporary name: %v, want ErrForeign", err)
	}
	must(os.Link(d.Join("obj"), d.Join("third")))
	err := d.Inspect("obj", lstat("obj"))
	if !errors.Is(err, ErrForeign) || !strings.Contains(err.Error(), "3 links") {
		t.Errorf("Inspect of a file with 3 links: %v", err)
	}
}

// Open of something foreign says what it is, in an *fs.PathError naming the
// path, and does not match ErrExist or ErrNotExist.
func TestOpenForeignError(t *testing.T) {
	d := Dir{Path: t.TempDir(), TempPrefix: ".tmp."}
	if err := unix.Mkfifo(d.Join("fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := d.Open("fifo")
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe.Op != "open" || pe.Path != d.Join("fifo") {
		t.Fatalf("Open of a FIFO: %v (%T), want an *fs.PathError for open of the path", err, err)
	}
	if !errors.Is(err, ErrForeign) || errors.Is(err, fs.ErrExist) || errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open of a FIFO: %v matches the wrong sentinels", err)
	}
	if want := "found a FIFO (named pipe), not a region's file"; !strings.HasSuffix(err.Error(), want) {
		t.Fatalf("Open of a FIFO: %q, want it to end with %q", err, want)
	}
	// A regular file opens, blocking (O_NONBLOCK is cleared).
	if err := os.WriteFile(d.Join("file"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	fd, st, err := d.Open("file")
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_ACCMODE != unix.O_RDWR || st.Size != 1 {
		t.Fatalf("flags %#o (%v), size %d", fl, err, st.Size)
	}
}

// Pending reads regular temporary files only: a FIFO under a temporary name
// is skipped, without blocking.
func TestPendingSkipsForeign(t *testing.T) {
	d := Dir{Path: t.TempDir(), TempPrefix: ".tmp."}
	if err := unix.Mkfifo(d.Join(".tmp.k.0000000000000001"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(d.Join(".tmp.k.0000000000000002"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.Join(".tmp.k.0000000000000003"), []byte("head"), 0o600); err != nil {
		t.Fatal(err)
	}
	objs, err := d.Pending("k", 16)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 || objs[0].ID != ".tmp.k.0000000000000003" || string(objs[0].Head) != "head" {
		t.Fatalf("Pending = %+v", objs)
	}
}

// Retry.Wait: nil while there is time, DeadlineExceeded once the deadline
// (ctx's, or the default) has passed, ctx's error when cancelled; it
// sleeps between tries (no busy wait).
func TestRetry(t *testing.T) {
	// The default applies without a deadline in ctx.
	r := NewRetry(context.Background(), 20*time.Millisecond)
	tries := 0
	t0 := time.Now()
	var err error
	for err = r.Wait(); err == nil; err = r.Wait() {
		tries++
	}
	if err != context.DeadlineExceeded || time.Since(t0) < 20*time.Millisecond {
		t.Fatalf("Wait: %v after %v, want DeadlineExceeded after 20ms", err, time.Since(t0))
	}
	// Backoff from 50us doubling: at most about log2(20ms/50us)+1 tries
	// before the 10 ms cap, then 1 or 2 more. A busy loop would make
	// thousands.
	if tries > 20 {
		t.Fatalf("%d tries in 20 ms: not backing off", tries)
	}

	// ctx's deadline wins over the default, both ways.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	r = NewRetry(ctx, time.Hour)
	for err = r.Wait(); err == nil; err = r.Wait() {
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with ctx's deadline: %v", err)
	}

	// Cancellation ends a wait.
	ctx, cancel = context.WithCancel(context.Background())
	r = NewRetry(ctx, time.Hour)
	cancel()
	if err := r.Wait(); err != context.Canceled {
		t.Fatalf("Wait after cancel: %v", err)
	}
}

// BusyError matches os.ErrDeadlineExceeded only when the time ran out, and
// always the system error.
func TestBusyError(t *testing.T) {
	timedOut := &fs.PathError{Op: "open", Path: "/x", Err: &BusyError{Why: "held", Err: syscall.EWOULDBLOCK, Ctx: context.DeadlineExceeded}}
	if !errors.Is(timedOut, os.ErrDeadlineExceeded) || !errors.Is(timedOut, syscall.EWOULDBLOCK) || !errors.Is(timedOut, context.DeadlineExceeded) {
		t.Fatalf("%v does not match os.ErrDeadlineExceeded, EWOULDBLOCK and DeadlineExceeded", timedOut)
	}
	if !os.IsTimeout(timedOut) {
		t.Fatalf("%v is not a timeout", timedOut)
	}
	cancelled := &BusyError{Why: "held", Err: syscall.EWOULDBLOCK, Ctx: context.Canceled}
	if errors.Is(cancelled, os.ErrDeadlineExceeded) || !errors.Is(cancelled, context.Canceled) {
		t.Fatalf("%v: wrong sentinels", cancelled)
	}
	if got := timedOut.Error(); got != "open /x: held (timed out waiting for it)" {
		t.Fatalf("message %q", got)
	}
}

// MapLength: what size asks, or the whole object when it is shorter; head
// holds at most n bytes; errors of size as they are.
func TestMapLength(t *testing.T) {
	p := filepath.Join(t.TempDir(), "obj")
	if err := os.WriteFile(p, []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var seen string
	n, err := MapLength(fd, p, 10, 4, func(h []byte) (int64, error) { seen = string(h); return 6, nil })
	if err != nil || n != 6 || seen != "0123" {
		t.Fatalf("MapLength = %d, %v; head %q", n, err, seen)
	}
	n, err = MapLength(fd, p, 10, 64, func(h []byte) (int64, error) { seen = string(h); return 1 << 50, nil })
	if err != nil || n != 10 || seen != "0123456789" {
		t.Fatalf("MapLength asking for more = %d, %v; head %q", n, err, seen)
	}
	bad := errors.New("bad")
	if _, err := MapLength(fd, p, 10, 4, func([]byte) (int64, error) { return 0, bad }); err != bad {
		t.Fatalf("MapLength with a failing size: %v", err)
	}
	if _, err := MapLength(fd, p, 10, 4, func([]byte) (int64, error) { return 0, nil }); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("MapLength of 0 bytes: %v, want EINVAL", err)
	}
}
