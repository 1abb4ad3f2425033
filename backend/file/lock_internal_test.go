package file

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// lockFile locks through a descriptor of gofrs/flock's own: it must notice
// when the path no longer names the file the caller has open, and must not
// recreate a removed file.
func TestLockFileIdentity(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "t-file-ident")
	if err := os.WriteFile(p, []byte("a"), 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(p, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)

	lk, st, err := lockFile(context.Background(), p, fd, false)
	if err != nil {
		t.Fatalf("lockFile: %v", err)
	}
	if st.Size != 1 {
		t.Fatalf("size %d, want 1", st.Size)
	}
	lk.Unlock()

	// Replace the name with another file.
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if _, _, err := lockFile(context.Background(), p, fd, false); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("lockFile of a removed file: %v, want ENOENT", err)
	}
	if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lockFile recreated the removed file (%v)", err)
	}
	if err := os.WriteFile(p, []byte("bb"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := lockFile(context.Background(), p, fd, true); err != unix.ESTALE {
		t.Fatalf("lockFile of a replaced file: %v, want ESTALE", err)
	}
	// The failed attempt left no lock behind.
	fd2, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd2)
	if err := unix.Flock(fd2, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatalf("a failed lockFile kept a lock: %v", err)
	}
}
