package dirobj

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// Without fallocate, Reserve with zeroFill sets the size and writes the
// zeros, so that the blocks are allocated; without zeroFill it reports the
// EOPNOTSUPP.
func TestReserveFallback(t *testing.T) {
	old := fallocate
	fallocate = func(int, int64) error { return unix.EOPNOTSUPP }
	defer func() { fallocate = old }()

	d := Dir{Path: t.TempDir(), TempPrefix: ".tmp."}
	const size = 3<<20 + 123 // several write chunks and a partial one
	tmp, err := d.CreateTemp("t-file-fallback", 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer tmp.Abort()
	if err := tmp.Reserve(size, true); err != nil {
		t.Fatalf("Reserve with zero fill: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(tmp.Fd, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size || st.Blocks*512 < size {
		t.Fatalf("size %d, %d bytes allocated; want %d of each", st.Size, st.Blocks*512, size)
	}
	data, err := os.ReadFile(tmp.Tmp)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != size || !bytes.Equal(data, make([]byte, size)) {
		t.Fatalf("file holds %d bytes, not all zero", len(data))
	}

	other, err := d.CreateTemp("t-file-nofill", 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Abort()
	err = other.Reserve(size, false)
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe.Op != "fallocate" || !errors.Is(err, unix.EOPNOTSUPP) {
		t.Fatalf("Reserve without zero fill: %v, want fallocate EOPNOTSUPP", err)
	}
}

func TestCreateTempPublishList(t *testing.T) {
	d := Dir{Path: t.TempDir(), TempPrefix: ".tmp."}
	a, err := d.CreateTemp("t-file-a", 0o600)
	if err != nil {
		t.Fatal(err)
	}
	b, err := d.CreateTemp("t-file-a", 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if a.Tmp == b.Tmp || a.Final != b.Final || a.Final != d.Join("t-file-a") {
		t.Fatalf("temp %q and %q for %q", a.Tmp, b.Tmp, a.Final)
	}
	if list, err := d.List(); err != nil || len(list) != 2 || !list[0].Temp || !list[1].Temp {
		t.Fatalf("List = %v, %v before Publish, want two objects with Temp set", list, err)
	}
	if err := Publish(a.Tmp, a.Final); err != nil {
		t.Fatal(err)
	}
	unix.Close(a.Fd)
	if err := Publish(b.Tmp, b.Final); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second Publish: %v, want ErrExist", err)
	}
	unix.Close(b.Fd)
	if _, err := d.CreateTemp("t-file-a", 0o600); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("CreateTemp of a published name: %v, want ErrExist", err)
	}
	names, err := ReadDir(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"t-file-a"}) {
		t.Fatalf("directory holds %v", names)
	}
	fd, st, err := d.Open("t-file-a")
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	if st.Size != 0 {
		t.Fatalf("size %d", st.Size)
	}
	if err := d.Unlink("t-file-a"); err != nil {
		t.Fatal(err)
	}
	if err := d.Unlink("t-file-a"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("second Unlink: %v", err)
	}
	if _, _, err := d.Open("t-file-a"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open after Unlink: %v", err)
	}
}
