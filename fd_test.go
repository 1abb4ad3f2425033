package shm_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/memfd"
	"github.com/shmgo/shm/backend/posix"
	"github.com/shmgo/shm/internal/fdtest"
	"github.com/shmgo/shm/internal/reexec"
)

var fdKeySeq atomic.Int64

// runID tells this run's keys from those of an earlier run with the same
// PID that left something behind.
var runID = fmt.Sprintf("%08x", rand.Uint32())

// fdKey returns a fresh key with the prefix of the fd tests.
func fdKey(tag string) string {
	return fmt.Sprintf("/t-memfd-fd-%d-%s-%d-%s", os.Getpid(), runID, fdKeySeq.Add(1), tag)
}

// fdBackends are the backends whose regions have descriptors.
var fdBackends = []struct {
	name string
	be   func() backend.Backend
}{
	{"posix", func() backend.Backend { return posix.New() }},
	{"memfd", func() backend.Backend { return memfd.New() }},
}

// mkRegion creates a region that the test unlinks and closes at its end.
func mkRegion(t *testing.T, be backend.Backend, tag string, size int) *shm.Region {
	t.Helper()
	r, err := shm.Create(fdKey(tag), size, shm.WithBackend(be))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Unlink()
		r.Close()
	})
	return r
}

// checkFDs fails the test unless the process has n descriptors again.
func checkFDs(t *testing.T, n int) {
	t.Helper()
	for wait := time.Millisecond; wait < 5*time.Second; wait *= 2 {
		if fdtest.Count(t) == n {
			return
		}
		time.Sleep(wait)
	}
	t.Fatalf("%d descriptors open, want %d", fdtest.Count(t), n)
}

func TestOpenFile(t *testing.T) {
	for _, bc := range fdBackends {
		t.Run(bc.name, func(t *testing.T) {
			n := fdtest.Count(t)
			r := mkRegion(t, bc.be(), "file", 4096)
			copy(r.Bytes(), "from the owner")
			f, err := r.File()
			if err != nil {
				t.Fatal(err)
			}
			u, err := shm.OpenFile(f)
			f.Close() // the region keeps its own descriptor
			if err != nil {
				t.Fatal(err)
			}
			if u.Key() != r.Key() || u.Backend() != "fd" || u.Size() != 4096 {
				t.Fatalf("key %q backend %q size %d", u.Key(), u.Backend(), u.Size())
			}
			if string(u.Bytes()[:14]) != "from the owner" {
				t.Fatal("OpenFile maps other bytes")
			}
			copy(u.Bytes(), "from the user.")
			if string(r.Bytes()[:14]) != "from the user." {
				t.Fatal("the owner does not see the user's write")
			}
			// One lock, whichever way a process attached.
			l, err := u.Lock()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.TryLock(); !errors.Is(err, shm.ErrLocked) {
				t.Fatalf("TryLock while the fd user holds the lock: %v", err)
			}
			l.Unlock()
			l, err = r.TryLock()
			if err != nil {
				t.Fatal(err)
			}
			l.Unlock()
			// No key to remove through it; the key is still there.
			if err := u.Unlink(); !errors.Is(err, shm.ErrInvalidOption) {
				t.Fatalf("Unlink of a region opened from a descriptor: %v", err)
			}
			if err := u.Chown(os.Getuid(), os.Getgid()); err != nil {
				t.Fatalf("Chown: %v", err)
			}
			g, err := u.File()
			if err != nil {
				t.Fatal(err)
			}
			g.Close()
			if err := u.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := u.File(); !errors.Is(err, shm.ErrClosed) {
				t.Fatalf("File after Close: %v", err)
			}
			v, err := shm.Open(r.Key(), 0, shm.WithBackend(bc.be()))
			if err != nil {
				t.Fatalf("Open by key after the fd user left: %v", err)
			}
			v.Close()
			r.Unlink()
			r.Close()
			checkFDs(t, n)
		})
	}
}

func TestOpenFileRejects(t *testing.T) {
	n := fdtest.Count(t)
	dir := t.TempDir()
	cases := map[string][]byte{
		"empty": nil,
		"tiny":  []byte("x"),
		"zeros": make([]byte, 8192),
		"magic": append([]byte("GEOPMSHM"), make([]byte, 8192)...),
	}
	for what, content := range cases {
		p := dir + "/" + what
		if err := os.WriteFile(p, content, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = shm.OpenFile(f)
		f.Close()
		if !errors.Is(err, shm.ErrCorrupt) {
			t.Fatalf("OpenFile of %s: %v, want ErrCorrupt", what, err)
		}
	}
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := shm.OpenFile(d); !errors.Is(err, shm.ErrCorrupt) {
		t.Fatalf("OpenFile of a directory: %v, want ErrCorrupt", err)
	}
	d.Close()
	if _, err := shm.OpenFile(nil); !errors.Is(err, shm.ErrInvalidOption) {
		t.Fatalf("OpenFile(nil): %v", err)
	}
	checkFDs(t, n)
}

// noFd is a backend whose segments have no descriptor.
type noFd struct{ backend.Backend }
type noFdPending struct{ backend.Pending }

func (b noFd) Create(name string, size int64, perm fs.FileMode) (backend.Pending, error) {
	p, err := b.Backend.Create(name, size, perm)
	if err != nil {
		return nil, err
	}
	return noFdPending{p}, nil
}

func TestFileWithoutDescriptor(t *testing.T) {
	r := mkRegion(t, noFd{posix.New()}, "nofd", 64)
	if _, err := r.File(); !errors.Is(err, shm.ErrInvalidOption) {
		t.Fatalf("File on a backend without descriptors: %v", err)
	}
	a, _ := socketpair(t, unix.SOCK_STREAM)
	if err := shm.SendRegion(context.Background(), a, r); !errors.Is(err, shm.ErrInvalidOption) {
		t.Fatalf("SendRegion on a backend without descriptors: %v", err)
	}
}

// socketpair returns both ends of a connected unix socket pair.
func socketpair(t *testing.T, typ int) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

func TestSendReceive(t *testing.T) {
	n := fdtest.Count(t)
	r := mkRegion(t, memfd.New(), "send", 128)
	copy(r.Bytes(), "sent")
	for _, typ := range []int{unix.SOCK_STREAM, unix.SOCK_SEQPACKET, unix.SOCK_DGRAM} {
		a, b := socketpair(t, typ)
		for range 2 {
			if err := shm.SendRegion(context.Background(), a, r); err != nil {
				t.Fatal(err)
			}
		}
		for range 2 {
			u, err := shm.ReceiveRegion(context.Background(), b)
			if err != nil {
				t.Fatalf("socket type %d: %v", typ, err)
			}
			if u.Key() != r.Key() || string(u.Bytes()[:4]) != "sent" {
				t.Fatalf("received %q with %q", u.Key(), u.Bytes()[:4])
			}
			u.Close()
		}
		a.Close()
		b.Close()
	}
	r.Unlink()
	r.Close()
	checkFDs(t, n)
}

func TestReceiveRegionErrors(t *testing.T) {
	n := fdtest.Count(t)
	r := mkRegion(t, posix.New(), "recv", 64)
	a, b := socketpair(t, unix.SOCK_SEQPACKET)

	// Nothing comes: the context ends the wait.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	_, err := shm.ReceiveRegion(ctx, b)
	cancel()
	if !errors.Is(err, shm.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ReceiveRegion past its deadline: %v", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	_, err = shm.ReceiveRegion(ctx, b)
	if !errors.Is(err, context.Canceled) || errors.Is(err, shm.ErrTimeout) {
		t.Fatalf("ReceiveRegion cancelled: %v", err)
	}
	// The connection is still usable, without a deadline left behind.
	if err := shm.SendRegion(context.Background(), a, r); err != nil {
		t.Fatal(err)
	}
	u, err := shm.ReceiveRegion(context.Background(), b)
	if err != nil {
		t.Fatalf("ReceiveRegion after a timeout: %v", err)
	}
	u.Close()

	// Messages that do not carry a region.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	regionMsg := []byte("SHMGO-R1")
	bad := []struct {
		what string
		data []byte
		fds  []int
	}{
		{"no descriptor", regionMsg, nil},
		{"other payload", []byte("SHMGO-XX"), []int{int(pr.Fd())}},
		{"a pipe", regionMsg, []int{int(pr.Fd())}},
		{"two descriptors", regionMsg, []int{int(pr.Fd()), int(pw.Fd())}},
	}
	for _, c := range bad {
		var oob []byte
		if c.fds != nil {
			oob = unix.UnixRights(c.fds...)
		}
		if _, _, err := a.WriteMsgUnix(c.data, oob, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := shm.ReceiveRegion(context.Background(), b); !errors.Is(err, shm.ErrCorrupt) {
			t.Fatalf("%s: %v, want ErrCorrupt", c.what, err)
		}
	}
	pr.Close()
	pw.Close()
	a.Close()
	if _, err := shm.ReceiveRegion(context.Background(), b); !errors.Is(err, io.EOF) {
		t.Fatalf("ReceiveRegion from a closed peer: %v, want EOF", err)
	}
	b.Close()
	r.Unlink()
	r.Close()
	checkFDs(t, n)
}

const passIncrements = 2000

// The child of TestPassToChild (internal/reexec): its argument says how the
// region comes, "extrafiles" or "socket".
func init() {
	reexec.Register("pass", func(c *reexec.Child) error { return passChild(c, c.Arg(0)) })
}

// TestPassToChild hands a region to a re-executed child, through
// ExtraFiles and over a socketpair; the child sees and changes the data,
// and the lock excludes across the two.
func TestPassToChild(t *testing.T) {
	for _, bc := range fdBackends {
		for _, via := range []string{"extrafiles", "socket"} {
			t.Run(bc.name+"/"+via, func(t *testing.T) { passParent(t, bc.be(), via) })
		}
	}
}

func counter(b []byte) uint64 { return binary.NativeEndian.Uint64(b) }
func incr(b []byte)           { binary.NativeEndian.PutUint64(b, counter(b)+1) }

func passParent(t *testing.T, be backend.Backend, via string) {
	r := mkRegion(t, be, "pass", 4096)
	copy(r.Bytes()[8:], "parent")
	held, err := r.Lock()
	if err != nil {
		t.Fatal(err)
	}
	var passed *os.File
	var conn *net.UnixConn
	switch via {
	case "extrafiles":
		f, err := r.File()
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		passed = f
	case "socket":
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		mine, theirs := os.NewFile(uintptr(fds[0]), "parent end"), os.NewFile(uintptr(fds[1]), "child end")
		defer theirs.Close()
		c, err := net.FileConn(mine)
		mine.Close()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conn = c.(*net.UnixConn)
		passed = theirs
	}
	p := reexec.Start(t, "pass", []string{via}, reexec.ExtraFiles(passed), reexec.Timeout(60*time.Second))
	if conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := shm.SendRegion(ctx, conn, r)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	p.ExpectLine("key " + r.Key() + " fd")
	p.ExpectLine("data parent")
	p.ExpectLine("trylock locked")
	held.Unlock()
	p.Send("go")
	for range passIncrements {
		l, err := r.Lock()
		if err != nil {
			t.Fatal(err)
		}
		incr(r.Bytes())
		l.Unlock()
	}
	p.ExpectLine("done")
	p.Wait()
	if got := counter(r.Bytes()); got != 2*passIncrements {
		t.Fatalf("counter %d, want %d: the lock did not exclude", got, 2*passIncrements)
	}
	if string(r.Bytes()[8:13]) != "child" {
		t.Fatalf("the child's write is not visible: %q", r.Bytes()[8:13])
	}
}

// passChild is the child's side of TestPassToChild: descriptor 3 is the
// region, or a socket that carries it.
func passChild(c *reexec.Child, via string) error {
	say := c.Say
	f := os.NewFile(3, "passed")
	var r *shm.Region
	var err error
	switch via {
	case "extrafiles":
		r, err = shm.OpenFile(f)
	case "socket":
		conn, cerr := net.FileConn(f)
		if cerr != nil {
			return cerr
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		r, err = shm.ReceiveRegion(ctx, conn.(*net.UnixConn))
		cancel()
		conn.Close()
	}
	f.Close()
	if err != nil {
		return err
	}
	defer r.Close()
	say("key %s %s", r.Key(), r.Backend())
	say("data %s", r.Bytes()[8:14])
	if _, err := r.TryLock(); errors.Is(err, shm.ErrLocked) {
		say("trylock locked")
	} else {
		say("trylock %v", err)
	}
	c.Hear()
	l, err := r.Lock()
	if err != nil {
		return err
	}
	copy(r.Bytes()[8:], "child")
	l.Unlock()
	for range passIncrements {
		l, err := r.Lock()
		if err != nil {
			return err
		}
		incr(r.Bytes())
		l.Unlock()
	}
	say("done")
	return nil
}
