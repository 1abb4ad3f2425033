package dirobj

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
)

// dirWithObj is a directory that holds the object "obj", 10 bytes long.
func dirWithObj(t *testing.T) Dir {
	t.Helper()
	d := Dir{Path: t.TempDir(), TempPrefix: ".tmp."}
	if err := os.WriteFile(d.Join("obj"), []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	return d
}

// OpenMapped maps the whole object, the part Size asks for, or read-only;
// OpenSized's nil Size is EINVAL; the segment knows its name and owner.
func TestOpenMapped(t *testing.T) {
	d := dirWithObj(t)
	ctx := context.Background()
	s, err := d.OpenMapped(ctx, "obj", time.Second, Want{})
	if err != nil || string(s.Bytes()) != "0123456789" {
		t.Fatalf("OpenMapped whole: %v", err)
	}
	if same, err := s.(backend.Namer).StillNamed(); !same || err != nil {
		t.Fatalf("StillNamed = %v, %v", same, err)
	}
	if uid := s.(backend.Owned).Owner(); uid != os.Getuid() {
		t.Fatalf("Owner = %d, want %d", uid, os.Getuid())
	}
	s.Close()
	s, err = d.OpenMapped(ctx, "obj", time.Second, Want{N: 2, Size: func(h []byte) (int64, error) { return int64(len(h)) + 2, nil }, ReadOnly: true})
	if err != nil || string(s.Bytes()) != "0123" {
		t.Fatalf("OpenMapped of 4 bytes, read-only: %q, %v", s.Bytes(), err)
	}
	s.Close()
	if _, err := d.OpenMapped(ctx, "obj", time.Second, Want{N: 2, Sized: true}); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("OpenMapped Sized without Size: %v, want EINVAL", err)
	}
	if _, err := d.OpenMapped(ctx, "none", time.Second, Want{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("OpenMapped of nothing: %v, want ErrNotExist", err)
	}
}

// A Dir's Lock is taken on every open, retried while it says ESTALE (three
// times), released when a mapping fails, and otherwise at Close, after the
// descriptor is closed.
func TestOpenMappedLock(t *testing.T) {
	d := dirWithObj(t)
	ctx := context.Background()
	var tries, released int
	var lockedFd int
	stale := 0 // how many tries fail with ESTALE
	d.Lock = func(ctx context.Context, path string, fd int, readOnly bool) (*unix.Stat_t, func() error, error) {
		tries++
		if _, ok := ctx.Deadline(); !ok {
			t.Error("Lock called without a deadline")
		}
		if path != d.Join("obj") {
			t.Errorf("Lock of %q", path)
		}
		if tries <= stale {
			return nil, nil, &os.PathError{Op: "flock", Path: path, Err: unix.ESTALE}
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return nil, nil, err
		}
		lockedFd = fd
		return &st, func() error {
			if _, err := unix.FcntlInt(uintptr(lockedFd), unix.F_GETFD, 0); err != unix.EBADF {
				t.Errorf("released with the descriptor still open (%v)", err)
			}
			released++
			return nil
		}, nil
	}

	stale = 3
	s, err := d.OpenMapped(ctx, "obj", time.Second, Want{})
	if err != nil || tries != 4 || released != 0 {
		t.Fatalf("OpenMapped after 3 stale locks: %v, %d tries, %d releases", err, tries, released)
	}
	if err := s.Close(); err != nil || released != 1 {
		t.Fatalf("Close: %v, %d releases", err, released)
	}

	tries, released, stale = 0, 0, 4
	if _, err := d.OpenMapped(ctx, "obj", time.Second, Want{}); !errors.Is(err, unix.ESTALE) || tries != 4 {
		t.Fatalf("OpenMapped with the lock stale 4 times: %v after %d tries, want ESTALE after 4", err, tries)
	}

	tries, released, stale = 0, 0, 0
	bad := errors.New("bad size")
	if _, err := d.OpenMapped(ctx, "obj", time.Second, Want{N: 4, Size: func([]byte) (int64, error) { return 0, bad }}); err != bad || released != 1 {
		t.Fatalf("OpenMapped with a failing Size: %v, %d releases", err, released)
	}
}
