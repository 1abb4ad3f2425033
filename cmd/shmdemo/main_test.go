package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDemo builds the demo and runs it: the controller must see every record
// the application appended, and the key must be gone afterwards.
func TestDemo(t *testing.T) {
	exe := filepath.Join(t.TempDir(), "shmdemo")
	if out, err := exec.Command("go", "build", "-o", exe, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// A key of this run: t.TempDir's base name ("002") was the same in
	// every run, so two copies of the test at once shared one key.
	key := fmt.Sprintf("/t-demo-%d-%08x", os.Getpid(), rand.Uint32())
	// The default -timeout (5 s for the app's region to appear) is tight on
	// a loaded machine.
	out, err := exec.Command(exe, "-key", key, "-events", "300", "-timeout", "1m").CombinedOutput()
	if err != nil {
		t.Fatalf("shmdemo: %v\n%s", err, out)
	}
	for _, want := range []string{"saw 300 records (150 enter, 150 exit)", "app reported 300", "is gone; done"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat("/dev/shm" + key); !os.IsNotExist(err) {
		t.Errorf("/dev/shm%s left behind (stat: %v)", key, err)
	}
}
