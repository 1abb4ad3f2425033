package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
)

var build struct {
	once sync.Once
	exe  string
	err  error
	out  []byte
}

// demo builds the demo once and runs it with args and a fresh key; it
// fails the test unless the controller saw every record the application
// appended and the key is gone afterwards, and returns the output.
func demo(t *testing.T, events int, args ...string) string {
	t.Helper()
	build.once.Do(func() {
		dir, err := os.MkdirTemp("", "t-shmdemo-")
		if err != nil {
			build.err = err
			return
		}
		build.exe = filepath.Join(dir, "shmdemo")
		build.out, build.err = exec.Command("go", "build", "-o", build.exe, ".").CombinedOutput()
	})
	if build.err != nil {
		t.Fatalf("go build: %v\n%s", build.err, build.out)
	}
	// A key of this run, and a -timeout for a loaded machine (the default,
	// 5 s for the app's region to appear, is tight).
	key := fmt.Sprintf("/t-demo-%d-%08x", os.Getpid(), rand.Uint32())
	args = append([]string{"-key", key, "-events", strconv.Itoa(events), "-timeout", "1m"}, args...)
	out, err := exec.Command(build.exe, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("shmdemo %q: %v\n%s", args, err, out)
	}
	// internal/nstest's TestDemoWithoutDevShm matches these two lines to
	// their ends.
	for _, re := range []string{
		`(?m)^app +pid \d+: created ` + regexp.QuoteMeta(key) + ` \(\d+ bytes, backend [a-z]+\)$`,
		`(?m)^controller pid \d+: attached to ` + regexp.QuoteMeta(key) + ` \(\d+ bytes, backend [a-z]+\)$`,
	} {
		if !regexp.MustCompile(re).Match(out) {
			t.Errorf("output does not match %s:\n%s", re, out)
		}
	}
	n := strconv.Itoa(events)
	for _, want := range []string{
		"saw " + n + " records (" + strconv.Itoa(events/2) + " enter, " + strconv.Itoa(events/2) + " exit)",
		"app reported " + n, "wake-ups", "records per drain: min", "is gone; done",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat("/dev/shm" + key); !os.IsNotExist(err) {
		t.Errorf("/dev/shm%s left behind (stat: %v)", key, err)
	}
	return string(out)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if build.exe != "" {
		os.RemoveAll(filepath.Dir(build.exe))
	}
	os.Exit(code)
}

var drainsRE = regexp.MustCompile(`records per drain: min ([0-9]+), median ([0-9]+), max ([0-9]+)`)

// drainSizes returns the min, median and max records per drain the demo
// printed.
func drainSizes(t *testing.T, out string) (lo, mid, hi int) {
	t.Helper()
	m := drainsRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no records per drain in:\n%s", out)
	}
	lo, _ = strconv.Atoi(m[1])
	mid, _ = strconv.Atoi(m[2])
	hi, _ = strconv.Atoi(m[3])
	if lo < 1 || lo > mid || mid > hi {
		t.Errorf("records per drain min %d, median %d, max %d: not in order", lo, mid, hi)
	}
	return lo, mid, hi
}

// TestDemo runs the demo as make demo does: the controller sleeps in
// Lock.Wait and the application broadcasts after each burst.
func TestDemo(t *testing.T) {
	out := demo(t, 300)
	if !strings.Contains(out, "sleeping in Lock.Wait") {
		t.Errorf("output does not say that it waits in Lock.Wait:\n%s", out)
	}
	drainSizes(t, out)
}

// TestDemoFullLog makes the log so small that the application fills it and
// waits for the controller's drains: no drain can take more than the log
// holds, and nothing is lost.
func TestDemoFullLog(t *testing.T) {
	out := demo(t, 300, "-capacity", "8", "-gap", "0")
	if _, _, hi := drainSizes(t, out); hi > 8 {
		t.Errorf("a drain took %d records from a log of 8", hi)
	}
	if !strings.Contains(out, "found the log full") {
		t.Errorf("the application does not report its waits:\n%s", out)
	}
}

// TestDemoPolling runs the demo the way GEOPM does, polling.
func TestDemoPolling(t *testing.T) {
	out := demo(t, 100, "-period", "2ms")
	if !strings.Contains(out, "polling every 2ms") {
		t.Errorf("output does not say that it polls:\n%s", out)
	}
	drainSizes(t, out)
}

func TestBadFlags(t *testing.T) {
	demo(t, 2) // builds
	for _, args := range [][]string{{"-capacity", "0"}, {"-capacity", "1025"}, {"-events", "-1"}, {"-role", "nosuch"}} {
		out, err := exec.Command(build.exe, args...).CombinedOutput()
		if err == nil {
			t.Errorf("shmdemo %q succeeded:\n%s", args, out)
		}
	}
}
