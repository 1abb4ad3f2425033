package sys

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseMapsLine(t *testing.T) {
	cases := []struct {
		line string
		id   FileID
		ok   bool
	}{
		{"7f0c1c000000-7f0c1c001000 rw-s 00000000 00:1a 12345                      /dev/shm/x\n", FileID{0, 0x1a, 12345}, true},
		{"7f0c1c000000-7f0c1c001000 rw-s 00000000 fd:01 99 /memfd:shmgo:k (deleted)\n", FileID{0xfd, 1, 99}, true},
		{"7ffd5a1e7000-7ffd5a208000 rw-p 00000000 00:00 0                          [stack]\n", FileID{}, false},
		{"55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0\n", FileID{}, false},
		{"garbage\n", FileID{}, false},
		{"", FileID{}, false},
	}
	for _, c := range cases {
		id, ok := parseMapsLine([]byte(c.line))
		if id != c.id || ok != c.ok {
			t.Errorf("%q: %v %v, want %v %v", c.line, id, ok, c.id, c.ok)
		}
	}
}

// A fake /proc: two processes map the file, one maps another, one cannot be
// read, one has exited.
func TestScanMapsFake(t *testing.T) {
	proc := t.TempDir()
	want := FileID{0, 0x1a, 12345}
	other := FileID{0, 0x1a, 777}
	write := func(pid, maps string) {
		os.MkdirAll(filepath.Join(proc, pid), 0o755)
		if err := os.WriteFile(filepath.Join(proc, pid, "maps"), []byte(maps), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	line := "7f0c1c000000-7f0c1c001000 rw-s 00000000 00:1a 12345 /dev/shm/x\n"
	write("10", line+line) // twice in one process counts once
	write("11", "55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0\n"+line)
	write("12", "7f0c1c000000-7f0c1c001000 rw-s 00000000 00:1a 777 /dev/shm/y\n")
	// Unreadable: maps is a directory (EISDIR on read), as root reads any file.
	os.MkdirAll(filepath.Join(proc, "13", "maps"), 0o755)
	os.MkdirAll(filepath.Join(proc, "self"), 0o755)
	os.WriteFile(filepath.Join(proc, "self", "mountinfo"), []byte("21 26 0:20 / "+proc+" rw - proc proc rw\n"), 0o644)

	res, err := scanMaps(proc, map[FileID]bool{want: true, other: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Mappers[want] != 2 || res.Mappers[other] != 1 {
		t.Errorf("mappers %v, want 2 and 1", res.Mappers)
	}
	if res.Unreadable != 1 || res.Exact() {
		t.Errorf("unreadable %d exact %v, want 1 false", res.Unreadable, res.Exact())
	}

	// Under hidepid, an unprivileged process cannot know how many processes
	// it does not see (-1); root sees them all, so the count stays exact
	// but for the one unreadable process.
	os.WriteFile(filepath.Join(proc, "self", "mountinfo"), []byte("21 26 0:20 / "+proc+" rw - proc proc rw,hidepid=invisible\n"), 0o644)
	res, err = scanMaps(proc, map[FileID]bool{want: true})
	if err != nil {
		t.Fatal(err)
	}
	wantUnreadable, wantExact := -1, false
	if os.Geteuid() == 0 {
		wantUnreadable = 1
	}
	if res.Unreadable != wantUnreadable || res.Exact() != wantExact || res.Mappers[want] != 2 {
		t.Errorf("hidepid, euid %d: unreadable %d exact %v mappers %d; want %d %v 2", os.Geteuid(), res.Unreadable, res.Exact(), res.Mappers[want], wantUnreadable, wantExact)
	}
}

// This process maps a file: the real /proc shows it.
func TestScanMapsSelf(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "mapped")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(4096)
	mem, err := unix.Mmap(int(f.Fd()), 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	unix.Fstat(int(f.Fd()), &st)
	id := FileIDOf(&st)
	res, err := ScanMaps(map[FileID]bool{id: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Mappers[id] != 1 {
		t.Errorf("mapped by this process: count %d, want 1", res.Mappers[id])
	}
	unix.Munmap(mem)
	res, _ = ScanMaps(map[FileID]bool{id: true})
	if res.Mappers[id] != 0 {
		t.Errorf("after munmap: count %d, want 0", res.Mappers[id])
	}
}

// BenchmarkScanMaps measures one walk over every process's maps.
func BenchmarkScanMaps(b *testing.B) {
	want := map[FileID]bool{{Major: 0, Minor: 0x1a, Ino: 1}: true}
	n := 0
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, e := range ents {
			if c := e.Name()[0]; c >= '0' && c <= '9' {
				n++
			}
		}
	}
	b.ReportMetric(float64(n), "procs")
	for b.Loop() {
		if _, err := ScanMaps(want); err != nil {
			b.Fatal(err)
		}
	}
}
