package memfd_test

// Tests of Create's check that a region fits in the memory (issue 11,
// item 13).

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/memfd"
)

// growUntilRefused plays a process that, once told "go", asks for a region
// bigger than any memory cgroup of the test, then makes regions of size
// bytes until one is refused.
func growUntilRefused(size string, hear func() string, say func(string, ...any)) int {
	n, err := strconv.ParseInt(size, 10, 64)
	if err != nil {
		say("error %v", err)
		return 1
	}
	if hear() != "go" {
		return 1
	}
	b := memfd.New()
	_, err = b.Create(name(testKey("huge")), 1<<40, 0o600)
	say("huge %v %v", errors.Is(err, syscall.ENOMEM) || errors.Is(err, syscall.ENOSPC), err)
	var made []backend.Pending
	for i := 0; ; i++ {
		p, err := b.Create(name(testKey("grow")), n, 0o600)
		if err != nil {
			say("refused %d %v %v", i, errors.Is(err, syscall.ENOMEM) || errors.Is(err, syscall.ENOSPC), err)
			break
		}
		made = append(made, p)
	}
	for _, p := range made {
		p.Discard()
	}
	return 0
}

// meminfo returns the fields of /proc/meminfo, in bytes.
func meminfo(t *testing.T) map[string]int64 {
	t.Helper()
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]int64{}
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			m[strings.TrimSuffix(f[0], ":")] = v << 10
		}
	}
	return m
}

// TestHugeRegionRefused: a region bigger than the memory and swap is refused
// with ENOMEM before any of it is reserved (reserving it would get this
// process, or another, killed by the OOM killer).
func TestHugeRegionRefused(t *testing.T) {
	m := meminfo(t)
	size := 2*(m["MemTotal"]+m["SwapTotal"]) + 1<<30
	if int64(int(size)) != size {
		t.Skipf("a %d-bit process cannot map %d bytes: Create refuses it before looking at the memory", strconv.IntSize, size)
	}
	b := memfd.New()
	p, err := b.Create(name(testKey("huge")), size, 0o600)
	if err == nil {
		p.Discard()
		t.Fatalf("Create of %d bytes with %d of memory and %d of swap succeeded", size, m["MemTotal"], m["SwapTotal"])
	}
	if !errors.Is(err, syscall.ENOMEM) {
		t.Fatalf("Create of %d bytes: %v, want ENOMEM", size, err)
	}
	t.Logf("Create(%d GiB): %v", size>>30, err)
	_, err = shm.Create(testKey("huge"), int(size), shm.WithBackend(b))
	if !errors.Is(err, syscall.ENOMEM) {
		t.Fatalf("shm.Create of %d bytes: %v, want ENOMEM", size, err)
	}
	// The key is free again: nothing of the refused Create is left.
	k := testKey("after")
	r, err := shm.Create(k, 1<<20, shm.WithBackend(b))
	if err != nil {
		t.Fatalf("Create after the refusals: %v", err)
	}
	r.Close()
}

// memoryCgroup returns the directory of this process's memory cgroup and
// whether it is cgroup v2.
func memoryCgroup(t *testing.T) (string, bool) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Skipf("no /proc/self/cgroup: %v", err)
	}
	var v1, v2 string
	haveV2 := false
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[0] == "0" && f[1] == "" {
			v2, haveV2 = f[2], true
		}
		if slices.Contains(strings.Split(f[1], ","), "memory") {
			v1 = f[2]
		}
	}
	mounts, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Skipf("no /proc/self/mountinfo: %v", err)
	}
	defer mounts.Close()
	var v1dir, v2dir string
	sc := bufio.NewScanner(mounts)
	for sc.Scan() {
		// ID parent major:minor root mountpoint options ... - fstype source superoptions
		l := sc.Text()
		i := strings.Index(l, " - ")
		if i < 0 {
			continue
		}
		pre, post := strings.Fields(l[:i]), strings.Fields(l[i+3:])
		if len(pre) < 5 || len(post) < 3 {
			continue
		}
		root, mnt := pre[3], pre[4]
		rel := func(p string) string {
			if root == "/" {
				return filepath.Join(mnt, p)
			}
			return filepath.Join(mnt, strings.TrimPrefix(p, root))
		}
		switch {
		case post[0] == "cgroup" && v1 != "" && slices.Contains(strings.Split(post[2], ","), "memory"):
			v1dir = rel(v1)
		case post[0] == "cgroup2" && haveV2:
			v2dir = rel(v2)
		}
	}
	if v1dir != "" {
		return v1dir, false
	}
	if v2dir != "" {
		if ctl, err := os.ReadFile(filepath.Join(v2dir, "cgroup.controllers")); err == nil && slices.Contains(strings.Fields(string(ctl)), "memory") {
			return v2dir, true
		}
	}
	t.Skip("no memory cgroup controller is mounted")
	return "", false
}

// TestHugeRegionInMemoryCgroup: in a memory cgroup of 64 MiB, a child asks
// for 1 TiB, then for 16 MiB regions until one does not fit: each refusal
// is an error matching ENOMEM, and nothing is killed.
func TestHugeRegionInMemoryCgroup(t *testing.T) {
	if strconv.IntSize == 32 {
		t.Skip("a 32-bit process cannot ask for 1 TiB: Create refuses it before looking at the memory")
	}
	if os.Geteuid() != 0 {
		t.Skip("making a memory cgroup needs root")
	}
	parent, v2 := memoryCgroup(t)
	dir := filepath.Join(parent, fmt.Sprintf("shmgo-memfd-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot make a memory cgroup under %s: %v", parent, err)
	}
	t.Cleanup(func() {
		// The child is gone by now (its cleanup ran first); its memory is
		// freed with its last descriptor.
		for range 100 {
			if err := os.Remove(dir); err == nil || errors.Is(err, fs.ErrNotExist) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Errorf("could not remove the memory cgroup %s", dir)
	})
	write := func(file, v string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, file), []byte(v), 0); err != nil {
			t.Fatalf("writing %s to %s: %v", v, file, err)
		}
	}
	const limit = 64 << 20
	if v2 {
		write("memory.max", strconv.Itoa(limit))
		if _, err := os.Stat(filepath.Join(dir, "memory.swap.max")); err == nil {
			write("memory.swap.max", "0")
		}
	} else {
		write("memory.limit_in_bytes", strconv.Itoa(limit))
		if _, err := os.Stat(filepath.Join(dir, "memory.memsw.limit_in_bytes")); err == nil {
			write("memory.memsw.limit_in_bytes", strconv.Itoa(limit))
		}
	}
	c := startChild(t, "grow", []string{strconv.Itoa(16 << 20)})
	write("cgroup.procs", strconv.Itoa(c.PID()))
	c.Send("go")
	if l := c.Expect(""); !strings.HasPrefix(l, "huge true ") {
		t.Fatalf("1 TiB in a 64 MiB cgroup: %q, want ENOMEM", l)
	}
	l := c.Expect("")
	t.Logf("child in a 64 MiB cgroup: %s", l)
	f := strings.Fields(l)
	if len(f) < 3 || f[0] != "refused" || f[2] != "true" {
		t.Fatalf("16 MiB regions until refused: %q, want a refusal matching ENOMEM", l)
	}
	if n, _ := strconv.Atoi(f[1]); n < 1 || n > limit/(16<<20) {
		t.Errorf("%d regions of 16 MiB fitted in a 64 MiB cgroup", n)
	}
	c.Wait()
	// Nothing was killed in the cgroup.
	if v2 {
		if data, err := os.ReadFile(filepath.Join(dir, "memory.events")); err == nil && !strings.Contains(string(data), "oom_kill 0") {
			t.Errorf("memory.events: %s", data)
		}
	} else if data, err := os.ReadFile(filepath.Join(dir, "memory.oom_control")); err == nil && strings.Contains(string(data), "oom_kill ") && !strings.Contains(string(data), "oom_kill 0") {
		t.Errorf("memory.oom_control: %s", data)
	}
}
