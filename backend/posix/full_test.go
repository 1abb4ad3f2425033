package posix_test

import (
	"errors"
	"os"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/posix"
	"github.com/shmgo/shm/internal/fdtest"
)

// smallTmpfs mounts a 1 MiB tmpfs on a new directory, unmounted when the
// test ends.
func smallTmpfs(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a 1 MiB tmpfs needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m,mode=0700"); err != nil {
		if errors.Is(err, unix.EPERM) {
			t.Skipf("cannot mount a tmpfs here (no CAP_SYS_ADMIN in this namespace?): %v", err)
		}
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// dirHolds fails the test unless dir holds exactly the names in want.
func dirHolds(t *testing.T, dir string, want ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if len(got) != len(want) {
		t.Fatalf("%s holds %q, want %q", dir, got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%s holds %q, want %q", dir, got, want)
		}
	}
}

// fill writes every byte of b, turning a fault (SIGBUS for want of pages)
// into an error instead of killing the test.
func fill(b []byte, v byte) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = errors.New("fault writing the region: " + toString(p))
		}
	}()
	for i := range b {
		b[i] = v
	}
	return nil
}

func toString(p any) string {
	if e, ok := p.(error); ok {
		return e.Error()
	}
	return "panic"
}

// TestFull checks that a full tmpfs makes Create fail with ENOSPC, leaving
// nothing behind, and never raises SIGBUS: not at Create, not when a region
// made while there was room is written after the filesystem filled up.
func TestFull(t *testing.T) {
	dir := smallTmpfs(t)
	be := posix.NewDir(dir)
	opt := shm.WithBackend(be)
	fds := fdtest.Count(t)

	// Bigger than the filesystem.
	_, err := shm.Create("/t-rel-full-big", 4<<20, opt)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Create of 4 MiB on a 1 MiB tmpfs: %v, want ENOSPC", err)
	}
	if errors.Is(err, shm.ErrExist) || errors.Is(err, shm.ErrNotExist) || errors.Is(err, shm.ErrCorrupt) {
		t.Fatalf("ENOSPC error %v matches another sentinel", err)
	}
	t.Logf("4 MiB: %v", err)
	dirHolds(t, dir)
	if n := fdtest.Count(t); n != fds {
		t.Fatalf("%d descriptors after the failed Create, %d before", n, fds)
	}
	_, err = shm.Open("/t-rel-full-big", 0, opt)
	if !errors.Is(err, shm.ErrNotExist) {
		t.Fatalf("Open after the failed Create: %v, want ErrNotExist", err)
	}

	// Half of it works, and can be filled completely, also through a
	// second mapping.
	r, err := shm.Create("/t-rel-full-half", 512<<10, opt)
	if err != nil {
		t.Fatalf("Create of 512 KiB on a 1 MiB tmpfs: %v", err)
	}
	defer r.Close()
	if err := fill(r.Bytes(), 0x5A); err != nil {
		t.Fatal(err)
	}
	u, err := shm.Open("/t-rel-full-half", 0, opt)
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range u.Bytes() {
		if b != 0x5A {
			t.Fatalf("byte %d is %#x through the second mapping, want 0x5a", i, b)
		}
	}
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}

	// Fill what is left with another file.
	filler := filepath.Join(dir, "filler")
	err = os.WriteFile(filler, make([]byte, 1<<20), 0o600)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("writing 1 MiB into the rest of the tmpfs: %v, want ENOSPC", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	t.Logf("tmpfs full: %d free blocks of %d bytes", st.Bavail, st.Bsize)

	// Now even a small region has no room.
	_, err = shm.Create("/t-rel-full-small", 8192, opt)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Create of 8 KiB on a full tmpfs: %v, want ENOSPC", err)
	}
	dirHolds(t, dir, "filler", "t-rel-full-half")

	// The region made while there was room was reserved: writing all of
	// it again on the full filesystem does not fault.
	if err := fill(r.Bytes(), 0xA5); err != nil {
		t.Fatal(err)
	}
	l, err := r.Lock()
	if err != nil {
		t.Fatalf("Lock on a full tmpfs: %v", err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}

	if err := r.Unlink(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	dirHolds(t, dir)
	if n := fdtest.Count(t); n != fds {
		t.Fatalf("%d descriptors at the end, %d before", n, fds)
	}
}
