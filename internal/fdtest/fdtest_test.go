package fdtest

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// Count and Targets see a descriptor opened and closed, and Diff says which.
func TestCountTargetsDiff(t *testing.T) {
	n0 := Count(t)
	t0, err := Targets()
	if err != nil {
		t.Fatal(err)
	}
	if len(t0) != n0 {
		t.Fatalf("Count %d, Targets %d: %v", n0, len(t0), t0)
	}
	f, err := os.CreateTemp(t.TempDir(), "fdtest")
	if err != nil {
		t.Fatal(err)
	}
	if n := Count(t); n != n0+1 {
		t.Fatalf("Count with a file open = %d, want %d", n, n0+1)
	}
	t1, err := Targets()
	if err != nil {
		t.Fatal(err)
	}
	fd := int(f.Fd())
	if t1[fd] != f.Name() {
		t.Fatalf("Targets[%d] = %q, want %q", fd, t1[fd], f.Name())
	}
	want := "  + " + strconv.Itoa(fd) + " -> " + f.Name()
	if d := Diff(t0, t1); d != want {
		t.Fatalf("Diff = %q, want %q", d, want)
	}
	if d := Diff(t1, t0); !strings.HasPrefix(d, "  - "+strconv.Itoa(fd)+" -> ") {
		t.Fatalf("Diff the other way = %q", d)
	}
	f.Close()
	if n := Count(t); n != n0 {
		t.Fatalf("Count after Close = %d, want %d", n, n0)
	}
	if d := Diff(t0, t0); d != "" {
		t.Fatalf("Diff of the same = %q", d)
	}
}
