// Package fdtest tells tests which file descriptors this process has open,
// from /proc/self/fd, so that they can check that an operation leaves none
// behind.
package fdtest

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/shmgo/shm/internal/dirobj"
)

// Count returns how many descriptors this process has open, leaving out the
// one it reads /proc/self/fd with, once the library's inotify instances of
// ended waits are closed (they close in the background). It fails tb when it cannot read them.
func Count(tb testing.TB) int {
	tb.Helper()
	dirobj.WaitClosed()
	names, err := list()
	if err != nil {
		tb.Fatalf("counting descriptors: %v", err)
	}
	return len(names)
}

// Targets maps this process's open descriptors to what each refers to (the
// target of its link in /proc/self/fd), leaving out the one it reads the
// directory with and those closed meanwhile.
func Targets() (map[int]string, error) {
	dirobj.WaitClosed()
	names, err := list()
	if err != nil {
		return nil, err
	}
	out := make(map[int]string, len(names))
	for _, n := range names {
		fd, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		target, err := os.Readlink("/proc/self/fd/" + n)
		if err != nil {
			continue // closed meanwhile
		}
		out[fd] = target
	}
	return out, nil
}

// Diff describes, one line a descriptor and sorted, what changed from
// before to after (two Targets): "  + 7 -> /dev/shm/x" for one opened or
// now referring to something else, "  - 7 -> ..." for one closed or
// replaced. It is "" when nothing changed.
func Diff(before, after map[int]string) string {
	var lines []string
	for fd, t := range after {
		if b, ok := before[fd]; !ok || b != t {
			lines = append(lines, fmt.Sprintf("  + %d -> %s", fd, t))
		}
	}
	for fd, t := range before {
		if a, ok := after[fd]; !ok || a != t {
			lines = append(lines, fmt.Sprintf("  - %d -> %s", fd, t))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// list returns the names in /proc/self/fd but that of the descriptor that
// reads it.
func list() ([]string, error) {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	all, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	self := strconv.Itoa(int(d.Fd()))
	names := all[:0]
	for _, n := range all {
		if n != self {
			names = append(names, n)
		}
	}
	return names, nil
}
