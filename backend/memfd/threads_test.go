package memfd_test

// Tests of the threads of an owner of many regions (issue 11, item 14).

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/memfd"
)

// threads returns the number of threads of this process.
func threads(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestThreadsBounded: an owner of many regions uses a few threads, not one
// per region, before and after Close; it lists them quickly and serves them.
func TestThreadsBounded(t *testing.T) {
	n := 10000
	if s := os.Getenv("SHM_MEMFD_TEST_REGIONS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	if raceEnabled {
		n = min(n, 2000) // the race detector's own cost per goroutine
	}
	// Each region has two descriptors (the memfd and its socket).
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	const spare = 300 // for the test's own descriptors
	if want := uint64(2*n + spare); lim.Cur < want {
		old := lim
		lim.Cur, lim.Max = want, max(lim.Max, want)
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			// Without CAP_SYS_RESOURCE, the hard limit stays.
			lim = old
			if lim.Cur < lim.Max {
				lim.Cur = lim.Max
				unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
				t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &old) })
			}
			n = int(lim.Cur-spare) / 2
			t.Logf("cannot raise the descriptor limit to %d (%v): %d regions", want, err, n)
		} else {
			t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &old) })
		}
	}
	base := threads(t)
	b := memfd.New()
	segs := make([]backend.Pending, 0, n)
	names := make(map[string]bool, n)
	defer func() {
		for _, p := range segs {
			p.Close()
		}
	}()
	start := time.Now()
	for i := range n {
		nm := name(testKey("many" + strconv.Itoa(i)))
		p, err := b.Create(nm, 4096, 0o600)
		if err != nil {
			t.Fatalf("Create #%d: %v", i, err)
		}
		segs = append(segs, p)
		if err := p.Publish(); err != nil {
			t.Fatalf("Publish #%d: %v", i, err)
		}
		names[nm] = true
	}
	created := time.Since(start)
	// Let the owner's goroutines reach their wait.
	time.Sleep(100 * time.Millisecond)
	during := threads(t)

	start = time.Now()
	infos, err := b.ListContext(context.Background())
	listed := time.Since(start)
	if err != nil {
		t.Errorf("ListContext: %v", err)
	}
	seen := 0
	for _, in := range infos {
		if names[in.Name] {
			seen++
		}
	}
	if seen != n {
		t.Errorf("ListContext lists %d of the %d regions", seen, n)
	}
	k := 0
	for nm := range names { // a hundred of them, in map order
		if k++; k > 100 {
			break
		}
		u, err := b.Open(nm)
		if err != nil {
			t.Fatalf("Open of one of %d regions: %v", n, err)
		}
		u.Close()
	}
	for _, p := range segs {
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
	}
	segs = nil
	after := threads(t)
	t.Logf("%d regions: %d threads before, %d with them published (created in %v, listed in %v), %d after Close",
		n, base, during, created, listed, after)
	if during > base+64 || after > base+64 {
		t.Errorf("%d threads before, %d with %d regions, %d after Close: want a bounded number", base, during, n, after)
	}
}
