package builtin

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestForOpenOrder(t *testing.T) {
	var got []string
	for _, be := range ForOpen() {
		got = append(got, be.Name())
	}
	if want := []string{"posix", "memfd", "file"}; len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("ForOpen: %v, want %v", got, want)
	}
}

func TestForCreateHasRoomFirst(t *testing.T) {
	bes, err := ForCreate(4096)
	if err != nil {
		t.Fatal(err)
	}
	if len(bes) == 0 {
		t.Fatal("no candidates")
	}
	if posixHasRoom(4096) && bes[0].Name() != "posix" {
		t.Errorf("/dev/shm has room, yet %s comes first", bes[0].Name())
	}
	// Nothing holds a region larger than the address space: no posix.
	huge, err := ForCreate(1 << 62)
	if err != nil {
		t.Fatal(err)
	}
	for _, be := range huge {
		if be.Name() == "posix" {
			t.Error("posix is a candidate for 4 EiB")
		}
	}
}

func TestCheckKey(t *testing.T) {
	for _, c := range []struct {
		name, rest string
		ok         bool
	}{
		{"file", "/name", true},
		{"file", "/dir/name", true},
		{"file", "name", false},
		{"file", "", false},
		{"posix", "name", true},
		{"sysv", "name", true},
	} {
		if err := CheckKey(c.name, c.rest); (err == nil) != c.ok || err != nil && !errors.Is(err, ErrPathKey) {
			t.Errorf("CheckKey(%q, %q) = %v, want ok %v", c.name, c.rest, err, c.ok)
		}
	}
}

func TestListedFileDirs(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	t.Setenv("XDG_RUNTIME_DIR", "")
	other := filepath.Join(os.TempDir(), "shmgo-4242")
	if err := os.Mkdir(other, 0o700); err != nil {
		t.Fatal(err)
	}
	files := 0
	for _, be := range Listed() {
		if be.Name() == "file" {
			files++
		}
	}
	// The other user's directory; this user's does not exist.
	if files != 1 {
		t.Errorf("Listed has %d file backends, want 1 (shmgo-4242; %s does not exist)", files, FileDir())
	}
	if err := os.Mkdir(FileDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	files = 0
	for _, be := range Listed() {
		if be.Name() == "file" {
			files++
		}
	}
	if files != 2 {
		t.Errorf("Listed has %d file backends, want 2 (with %s)", files, FileDir())
	}
}
