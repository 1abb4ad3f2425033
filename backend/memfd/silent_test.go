package memfd_test

// Tests of users facing sockets and owners that do not answer, and
// contexts that end first (issue 11, items 2 and 3).

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/memfd"
)

// TestSilentListeners: sockets under the backend's prefix that listen and
// never accept cannot stall a listing: every one is asked at once, each is
// reported as not answering, and the real regions are listed.
func TestSilentListeners(t *testing.T) {
	const n = 100
	b := memfd.New()
	legit := name(testKey("legit"))
	create(t, b, legit, 4096, 0o640)
	silent := map[string]int{} // address -> listening socket
	for i := range n {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		addr := memfd.Addr(name(testKey("silent" + strconv.Itoa(i))))
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: "@" + addr}); err != nil {
			t.Fatal(err)
		}
		if err := unix.Listen(fd, 4); err != nil {
			t.Fatal(err)
		}
		silent[addr] = fd
	}
	// Asking one after the other, with the listing's deadline for each,
	// would not be done by then.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	infos, err := b.ListContext(ctx)
	elapsed := time.Since(start)
	t.Logf("ListContext with %d silent sockets: %v", n, elapsed)
	if ctx.Err() != nil {
		t.Fatalf("ListContext outlived its context: %v", err)
	}
	found := false
	for _, in := range infos {
		if in.Name == legit {
			found = true
			if in.Size != 4096 || in.Mode != 0o640 || in.UID != os.Geteuid() {
				t.Errorf("ListContext says %+v for the real region", in)
			}
		}
		if _, ok := silent[memfd.Addr(in.Name)]; ok && in.Name != "" {
			t.Errorf("ListContext lists silent socket %q as a region: %+v", in.Name, in)
		}
	}
	if !found {
		t.Errorf("ListContext misses the real region %q", legit)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("ListContext's error %v does not say that owners did not answer", err)
	}
	for addr, fd := range silent {
		if err == nil || !strings.Contains(err.Error(), "@"+addr+":") {
			t.Errorf("ListContext does not report %q as not answering", addr)
		}
		// It was asked: its backlog holds the connection.
		c, _, aerr := unix.Accept4(fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if aerr != nil {
			t.Errorf("silent socket %q was never asked: %v", addr, aerr)
			continue
		}
		unix.Close(c)
	}

	// List, for package shm, is as quick and lists the real regions only.
	start = time.Now()
	infos, err = b.List()
	t.Logf("List with %d silent sockets: %v", n, time.Since(start))
	if err != nil {
		t.Fatal(err)
	}
	found = false
	for _, in := range infos {
		if in.Name == legit {
			found = true
		} else if _, ok := silent[memfd.Addr(in.Name)]; ok {
			t.Errorf("List lists silent socket %q", in.Name)
		}
	}
	if !found {
		t.Errorf("List misses the real region %q", legit)
	}

	// A context that ends first ends the listing, and says so.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if _, err := b.ListContext(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("ListContext with a cancelled context: %v", err)
	}
}

// TestStoppedOwner: an owner stopped (SIGSTOP) for longer than the I/O
// timeout is waited for within Open's own timeout; one stopped for all of
// it makes Open fail at that timeout, not before, saying that the owner did
// not answer.
func TestStoppedOwner(t *testing.T) {
	key := testKey("stopped")
	owner := startChild(t, "owner", []string{key, "600"})
	if l := owner.Expect(""); l != "ready" {
		t.Fatalf("owner: %q", l)
	}
	pid := owner.PID()
	stop := func() {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		// The signal is delivered asynchronously: wait until it is.
		if !settle(func() bool {
			data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
			i := strings.LastIndexByte(string(data), ')')
			return err == nil && i > 0 && i+2 < len(data) && data[i+2] == 'T'
		}) {
			t.Fatal("the owner did not stop")
		}
	}
	cont := func() { syscall.Kill(pid, syscall.SIGCONT) }
	t.Cleanup(cont)
	const io = 100 * time.Millisecond
	b := memfd.New(memfd.WithIOTimeout(io))
	opt := shm.WithBackend(b)

	stop()
	done := make(chan error, 1)
	go func() {
		u, err := shm.Open(key, time.Minute, opt)
		if err == nil {
			if string(u.Bytes()[:10]) != "owner data" {
				err = fmt.Errorf("maps %q", u.Bytes()[:10])
			}
			u.Close()
		}
		done <- err
	}()
	time.Sleep(10 * io)
	cont()
	if err := <-done; err != nil {
		t.Fatalf("Open(key, 1m) of an owner stopped for 10 I/O timeouts: %v", err)
	}

	stop()
	const timeout = 500 * time.Millisecond
	start := time.Now()
	_, err := shm.Open(key, timeout, opt)
	elapsed := time.Since(start)
	if err == nil {
		t.Fatal("Open of a stopped owner succeeded")
	}
	if elapsed < timeout {
		t.Errorf("Open(key, %v) of a stopped owner gave up after %v: %v", timeout, elapsed, err)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) || !strings.Contains(err.Error(), "did not answer") {
		t.Errorf("Open of a stopped owner: %v, want a deadline error saying the owner did not answer", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*io)
	_, err = b.OpenContext(ctx, name(key))
	if d, _ := ctx.Deadline(); time.Now().Before(d) {
		t.Errorf("OpenContext of a stopped owner returned before its deadline: %v", err)
	}
	cancel()
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("OpenContext of a stopped owner: %v, want os.ErrDeadlineExceeded and context.DeadlineExceeded", err)
	}

	// Cancelled while waiting, with no deadline.
	ctx, cancel = context.WithCancel(context.Background())
	go func() { time.Sleep(5 * io); cancel() }()
	_, err = b.OpenContext(ctx, name(key))
	if ctx.Err() == nil || !errors.Is(err, context.Canceled) {
		t.Errorf("OpenContext of a stopped owner, cancelled: %v (context %v), want context.Canceled", err, ctx.Err())
	}
	cont()
	owner.Send("exit")
	owner.Wait()
}

// TestContextEndedFirst: an Open whose context has ended before it could ask
// still tells a key that nobody serves (ErrNotExist), and otherwise gives a
// deadline or cancellation error, never a bare context error.
func TestContextEndedFirst(t *testing.T) {
	b := memfd.New()
	opt := shm.WithBackend(b)
	missing := testKey("missing")
	present := testKey("present")
	r, err := shm.Create(present, 100, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	cancelled, cancel2 := context.WithCancel(context.Background())
	cancel2()

	if _, err := b.OpenContext(expired, name(missing)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("OpenContext(expired) of a missing key: %v, want fs.ErrNotExist", err)
	}
	if _, err := b.OpenContext(cancelled, name(missing)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("OpenContext(cancelled) of a missing key: %v, want fs.ErrNotExist", err)
	}
	if _, err := b.OpenContext(expired, name(present)); !errors.Is(err, os.ErrDeadlineExceeded) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("OpenContext(expired) of a served key: %v, want a deadline error", err)
	}
	if _, err := b.OpenContext(cancelled, name(present)); !errors.Is(err, context.Canceled) || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("OpenContext(cancelled) of a served key: %v, want context.Canceled", err)
	}

	for range 20 {
		_, err := shm.Open(missing, time.Microsecond, opt)
		if !errors.Is(err, shm.ErrTimeout) || !errors.Is(err, shm.ErrNotExist) {
			t.Fatalf("shm.Open(missing, 1us): %v, want ErrTimeout and ErrNotExist", err)
		}
	}
	if _, err := shm.OpenContext(expired, missing, opt); !errors.Is(err, shm.ErrTimeout) || !errors.Is(err, shm.ErrNotExist) {
		t.Errorf("shm.OpenContext(expired, missing): %v, want ErrTimeout and ErrNotExist", err)
	}
	if _, err := shm.OpenContext(cancelled, missing, opt); !errors.Is(err, context.Canceled) || !errors.Is(err, shm.ErrNotExist) {
		t.Errorf("shm.OpenContext(cancelled, missing): %v, want context.Canceled and ErrNotExist", err)
	}
}

// TestOwnerDropsConnections: a server that closes connections without
// answering (as an owner does with the silent peers over its limits) makes
// Open ask again within its own timeout, not fail with ErrNotExist.
func TestOwnerDropsConnections(t *testing.T) {
	n := name(testKey("drops"))
	m, err := unix.MemfdCreate("drops", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(m)
	if err := unix.Ftruncate(m, 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(m), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
		t.Fatal(err)
	}
	var served int
	fakeServer(t, n, func(c *net.UnixConn) {
		if served++; served > 3 { // the first three are closed unanswered
			c.WriteMsgUnix([]byte{1, 'k'}, unix.UnixRights(m), nil)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	u, err := memfd.New().OpenContext(ctx, n)
	if err != nil {
		t.Fatalf("OpenContext of an owner that drops the first connections: %v", err)
	}
	u.Close()
}

// TestListOnlySilent: List leaves out owners that do not answer, as it
// says, even when no owner answers at all (it once returned their errors
// then, and every listing of package shm failed).
func TestListOnlySilent(t *testing.T) {
	b := memfd.New()
	silent := map[string]bool{}
	for i := range 3 {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		addr := memfd.Addr(name(testKey("alone" + strconv.Itoa(i))))
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: "@" + addr}); err != nil {
			t.Fatal(err)
		}
		if err := unix.Listen(fd, 4); err != nil {
			t.Fatal(err)
		}
		silent[addr] = true
	}
	infos, err := b.List()
	if err != nil {
		t.Fatalf("List with silent owners: %v", err)
	}
	for _, in := range infos {
		if silent[memfd.Addr(in.Name)] {
			t.Errorf("List lists silent socket %q", in.Name)
		}
	}
	if _, err := b.ListContext(context.Background()); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("ListContext does not report the silent owners: %v", err)
	}
}
