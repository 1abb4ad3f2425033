package conformance_test

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shmgo/shm/internal/fdtest"
	"github.com/shmgo/shm/internal/reexec"
)

// TestMain runs the tests, then, in the parent process only, checks that the
// suite left nothing behind: no object or temporary file in /dev/shm named
// with this process's keys ("cf-<backend>-<pid>-..."), no SysV segment this
// process created, no abstract unix socket named with its keys, and no more
// open descriptors than before. On a leak it says what leaked and fails.
func TestMain(m *testing.M) {
	// The suite's SysV segments live in an IPC namespace of its own (as
	// root): a binary killed before its cleanups leaves none behind.
	reexec.OwnNamespaces(syscall.CLONE_NEWIPC)
	if reexec.IsChild() {
		os.Exit(m.Run()) // a child plays its role and exits inside m.Run
	}
	// Let the runtime make what it keeps for the life of the process (the
	// poller's epoll descriptor and its wake-up eventfd) before counting.
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	before := snapshot()
	code := m.Run()

	// Descriptors and sockets are closed by goroutines that may still be
	// finishing (an owner's server): look again for a short while.
	var leaks []string
	for wait := 10 * time.Millisecond; ; wait *= 2 {
		leaks = leaks[:0]
		for _, x := range snapshot() {
			if !slices.Contains(before, x) {
				leaks = append(leaks, x)
			}
		}
		if len(leaks) == 0 || wait > 2*time.Second {
			break
		}
		time.Sleep(wait)
	}
	if len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "conformance: the tests left behind:\n  %s\n", strings.Join(leaks, "\n  "))
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// snapshot lists what this process has made that the suite must remove:
// objects and sockets named with its keys, SysV segments it created, its open
// descriptors. Things already there before the tests (left by an earlier
// process with the same PID, or the descriptors the process started with)
// are not leaks.
func snapshot() []string {
	pid := os.Getpid()
	// The suite's keys are "cf-<backend>-<pid>-<n>-<tag>"; temporary files
	// carry the key after their prefix (".shmgo-tmp.cf-...").
	ours := regexp.MustCompile(`(^|[^0-9A-Za-z])cf-[a-z0-9]+-` + strconv.Itoa(pid) + `-`)
	var leaks []string

	if ents, err := os.ReadDir("/dev/shm"); err == nil {
		for _, e := range ents {
			if ours.MatchString(e.Name()) {
				leaks = append(leaks, "/dev/shm/"+e.Name())
			}
		}
	}

	if f, err := os.Open("/proc/sysvipc/shm"); err == nil {
		sc := bufio.NewScanner(f)
		sc.Scan() // key shmid perms size cpid lpid nattch ...
		for sc.Scan() {
			cols := strings.Fields(sc.Text())
			if len(cols) > 4 && cols[4] == strconv.Itoa(pid) {
				leaks = append(leaks, fmt.Sprintf("SysV segment shmid %s (key %s, %s bytes)", cols[1], cols[0], cols[3]))
			}
		}
		f.Close()
	}

	if data, err := os.ReadFile("/proc/net/unix"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			cols := strings.Fields(line)
			if len(cols) >= 8 && strings.HasPrefix(cols[7], "@") && ours.MatchString(cols[7]) {
				leaks = append(leaks, "abstract socket "+cols[7])
			}
		}
	}

	var fds []string
	targets, _ := fdtest.Targets() // none when /proc cannot tell
	for fd, target := range targets {
		fds = append(fds, fmt.Sprintf("descriptor %d -> %s", fd, target))
	}
	sort.Strings(fds)
	return append(leaks, fds...)
}
