package fdseg

import (
	"errors"
	"io/fs"
	"os"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

func memfd(t *testing.T, size int64) int {
	t.Helper()
	fd, err := unix.MemfdCreate("fdseg-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	return fd
}

// A segment maps, closes once, and runs OnClose's release after the
// descriptor is closed.
func TestSegment(t *testing.T) {
	fd := memfd(t, 4096)
	s, err := Map(fd, "test", 4096, unix.PROT_READ|unix.PROT_WRITE, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Bytes()) != 4096 || s.Fd() != uintptr(fd) || s.Path() != "test" {
		t.Fatalf("Bytes %d, Fd %d, Path %q", len(s.Bytes()), s.Fd(), s.Path())
	}
	s.Bytes()[0] = 1
	if err := s.Chown(os.Getuid(), os.Getgid()); err != nil {
		t.Fatalf("Chown: %v", err)
	}
	released := 0
	s.OnClose(func() error {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
			t.Errorf("release ran with the descriptor still open (%v)", err)
		}
		released++
		return nil
	})
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil || released != 1 {
		t.Fatalf("second Close: %v, released %d times", err, released)
	}
	if s.Bytes() != nil || s.Fd() != ^uintptr(0) {
		t.Fatalf("after Close: Bytes %v, Fd %d", s.Bytes(), s.Fd())
	}
	if err := s.Chown(os.Getuid(), os.Getgid()); !errors.Is(err, fs.ErrClosed) {
		t.Fatalf("Chown after Close: %v, want fs.ErrClosed", err)
	}
}

// Map of nothing maps nothing; a failed Map closes the descriptor; an error
// of release is Close's.
func TestMapEdges(t *testing.T) {
	fd := memfd(t, 0)
	s, err := Map(fd, "empty", 0, unix.PROT_READ, 0)
	if err != nil || s.Bytes() != nil {
		t.Fatalf("Map of 0 bytes: %v, %v", s, err)
	}
	s.OnClose(func() error { return unix.EIO })
	var pe *fs.PathError
	if err := s.Close(); !errors.As(err, &pe) || pe.Op != "close" || pe.Err != unix.EIO {
		t.Fatalf("Close with a failing release: %v", err)
	}

	rw := memfd(t, 4096)
	defer unix.Close(rw)
	fd, err = unix.Open("/proc/self/fd/"+strconv.Itoa(rw), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Map(fd, "read-only", 4096, unix.PROT_READ|unix.PROT_WRITE, 0); !errors.As(err, &pe) || pe.Op != "mmap" || pe.Err != unix.EACCES {
		t.Fatalf("Map read-write of a read-only descriptor: %v, want an mmap error (EACCES)", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
		t.Fatalf("a failed Map left the descriptor open (%v)", err)
	}
}
