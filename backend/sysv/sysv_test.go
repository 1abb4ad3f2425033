package sysv_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/posix"
	"github.com/shmgo/shm/backend/sysv"
	"github.com/shmgo/shm/internal/reexec"
)

// usedKeys records the key_t of every name the tests make, for the leak
// check in TestMain.
var (
	usedMu   sync.Mutex
	usedKeys = map[int]string{}
	seq      atomic.Int64
)

// testName returns a fresh key with this package's prefix; its key_t is
// checked for leaks when the tests end.
func testName(t testing.TB, tag string) string {
	t.Helper()
	key := fmt.Sprintf("/t-sysv-%d-%d-%s", os.Getpid(), seq.Add(1), tag)
	usedMu.Lock()
	usedKeys[sysv.Key(key)] = key
	usedMu.Unlock()
	return key
}

func TestMain(m *testing.M) {
	// In an IPC namespace of its own (as root), so that the segments of a
	// test binary killed before its cleanups go with it: a blank segment,
	// say, is foreign, and nothing would ever remove it.
	reexec.OwnNamespaces(syscall.CLONE_NEWIPC)
	// Children (internal/reexec) play their role and exit; their arguments
	// are the key and, for some roles, one more.
	for _, role := range []string{"flip", "foreign", "rmid", "denied", "create-readonly", "allowed"} {
		reexec.Register(role, func(c *reexec.Child) error {
			os.Exit(runChild(role, c.Arg(0), c.Arg(1)))
			return nil
		})
	}
	reexec.Main()
	before, err := segments()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot read", sysv.ProcFile, err)
		os.Exit(2)
	}
	code := m.Run()
	after, err := segments()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot read", sysv.ProcFile, err)
		os.Exit(2)
	}
	// A segment left behind is one of ours when we created it, or when it
	// sits under a key_t our names use; segments of other programs that
	// come and go meanwhile are not our business.
	me := os.Getpid()
	usedMu.Lock()
	defer usedMu.Unlock()
	for id, s := range after {
		if _, old := before[id]; old {
			continue
		}
		if _, ours := usedKeys[s.Key]; ours || s.CPID == me {
			fmt.Fprintf(os.Stderr, "leaked SysV segment shmid %d key %#08x (%s) cpid %d nattch %d\n",
				id, uint32(int32(s.Key)), usedKeys[s.Key], s.CPID, s.Attached)
			unix.SysvShmCtl(id, unix.IPC_RMID, nil)
			code = 1
		}
	}
	os.Exit(code)
}

// segments reads every segment of the IPC namespace, removed ones too.
func segments() (map[int]sysv.Stat, error) {
	b, err := os.ReadFile(sysv.ProcFile)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	col := map[string]int{}
	for i, f := range strings.Fields(lines[0]) {
		col[f] = i
	}
	out := map[int]sysv.Stat{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		key, _ := strconv.Atoi(f[col["key"]])
		id, _ := strconv.Atoi(f[col["shmid"]])
		cpid, _ := strconv.Atoi(f[col["cpid"]])
		nattch, _ := strconv.Atoi(f[col["nattch"]])
		out[id] = sysv.Stat{ID: id, Key: key, CPID: cpid, Attached: nattch}
	}
	return out, nil
}

// ipcsCount counts the lines of `ipcs -m` that show a segment.
func ipcsCount(t *testing.T) (int, string) {
	t.Helper()
	out, err := exec.Command("ipcs", "-m").CombinedOutput()
	if err != nil {
		t.Fatalf("ipcs -m: %v\n%s", err, out)
	}
	n := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "0x") {
			n++
		}
	}
	return n, string(out)
}

func opt() shm.Option { return shm.WithBackend(sysv.New()) }

func mustStat(t *testing.T, b *sysv.Backend, name string) sysv.Stat {
	t.Helper()
	st, err := b.Stat(name)
	if err != nil {
		t.Fatalf("Stat(%s): %v", name, err)
	}
	return st
}

func TestKey(t *testing.T) {
	// FNV-1a 32 written out, as a C program would compute it.
	ref := func(s string) int {
		h := uint32(2166136261)
		for _, c := range []byte("shmgo:" + s) {
			h ^= uint32(c)
			h *= 16777619
		}
		return int(int32(h))
	}
	for _, name := range []string{"a", "app-status", "t-sysv-x", strings.Repeat("z", 200)} {
		if got, want := sysv.Key(name), ref(name); got != want {
			t.Errorf("sysv.Key(%q) = %#x, want %#x", name, got, want)
		}
		if sysv.Key("/"+name) != sysv.Key(name) {
			t.Errorf("sysv.Key(/%s) differs from sysv.Key(%s)", name, name)
		}
		if k := sysv.Key(name); k == 0 || k == -1 {
			t.Errorf("sysv.Key(%q) = %d", name, k)
		}
	}
	if sysv.Key("a") == sysv.Key("b") {
		t.Error("sysv.Key(a) == sysv.Key(b)")
	}
}

func TestBackendCreateOpenUnlink(t *testing.T) {
	b := sysv.New()
	if b.Name() != "sysv" || !b.VisibleBeforePublish() {
		t.Fatalf("Name %q VisibleBeforePublish %v", b.Name(), b.VisibleBeforePublish())
	}
	name := strings.TrimPrefix(testName(t, "basic"), "/")
	const size = 10000 // not a multiple of the page size
	p, err := b.Create(name, size, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if len(p.Bytes()) != size {
		t.Fatalf("len(Bytes()) = %d, want %d", len(p.Bytes()), size)
	}
	if s, ok := p.(backend.Sealed); !ok || !s.Sealed() {
		t.Error("segment is not Sealed")
	}
	if err := p.Publish(); err != nil {
		t.Fatal(err)
	}
	copy(p.Bytes()[size-5:], "hello")

	s, err := b.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Bytes()) != size || string(s.Bytes()[size-5:]) != "hello" {
		t.Fatalf("opened %d bytes ending %q", len(s.Bytes()), s.Bytes()[size-5:])
	}
	st := mustStat(t, b, name)
	if st.Key != sysv.Key(name) || st.Size != size || st.Attached != 2 || st.CPID != os.Getpid() || st.Removed {
		t.Errorf("Stat = %+v", st)
	}

	if err := b.Unlink(name); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Open(name); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open after Unlink: %v, want ErrNotExist", err)
	}
	if err := b.Unlink(name); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("second Unlink: %v, want ErrNotExist", err)
	}
	if _, err := b.Stat(name); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Stat after Unlink: %v, want ErrNotExist", err)
	}
	// Both attachments still share the (removed) segment.
	copy(s.Bytes(), "after")
	if string(p.Bytes()[:5]) != "after" {
		t.Fatalf("after IPC_RMID the attachments no longer share: %q", p.Bytes()[:5])
	}
	// The key is free again while the old segment lives on.
	p2, err := b.Create(name, 100, 0o600)
	if err != nil {
		t.Fatalf("Create after Unlink while attached: %v", err)
	}
	if string(p2.Bytes()[:5]) == "after" {
		t.Fatal("new segment shows the old one's bytes")
	}
	if err := p2.Discard(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Open(name); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open after Discard: %v, want ErrNotExist", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestOpenMissing(t *testing.T) {
	b := sysv.New()
	name := strings.TrimPrefix(testName(t, "missing"), "/")
	if _, err := b.Open(name); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open: %v, want ErrNotExist", err)
	}
	if err := b.Unlink(name); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Unlink: %v, want ErrNotExist", err)
	}
	_, err := shm.Open("/"+name, 0, opt())
	if !errors.Is(err, shm.ErrNotExist) {
		t.Fatalf("shm.Open: %v, want ErrNotExist", err)
	}
}

// hdrSize is the size of a region's header with the default user table.
const hdrSize = 512 + 32*shm.DefaultUsers

func TestCreateExclusive(t *testing.T) {
	key := testName(t, "excl")
	r, err := shm.Create(key, 64, opt())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer r.Unlink()
	_, err = shm.Create(key, 64, opt())
	if !errors.Is(err, shm.ErrExist) || !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("second Create: %v, want ErrExist (EEXIST)", err)
	}
	_, err = sysv.New().Create(strings.TrimPrefix(key, "/"), 1024, 0o600)
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("backend Create: %v, want fs.ErrExist", err)
	}
	if st := mustStat(t, sysv.New(), key); st.Attached != 1 || st.Size != hdrSize+64 {
		t.Fatalf("the failed Creates touched the segment: %+v", st)
	}
}

func TestModeExactUnderUmask(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	b := sysv.New()
	for _, perm := range []fs.FileMode{0o600, 0o666, 0o640, 0o604, 0o400, 0} {
		key := testName(t, "mode")
		r, err := shm.Create(key, 64, opt(), shm.WithMode(perm))
		if err != nil {
			t.Fatalf("Create %v: %v", perm, err)
		}
		if st := mustStat(t, b, key); st.Mode != perm {
			t.Errorf("Create with %v under umask 022: mode %v", perm, st.Mode)
		}
		if err := b.Chmod(key, 0o660); err != nil {
			t.Error(err)
		} else if st := mustStat(t, b, key); st.Mode != 0o660 {
			t.Errorf("after Chmod 0660: mode %v", st.Mode)
		}
		if err := r.Unlink(); err != nil {
			t.Error(err)
		}
		r.Close()
	}
	if err := b.Chmod(testName(t, "nomode"), 0o600); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Chmod of a missing key: %v, want ErrNotExist", err)
	}
}

func TestChown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changing a segment's owner to another uid needs root")
	}
	key := testName(t, "chown")
	r, err := shm.Create(key, 64, opt(), shm.WithMode(0o640))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer r.Unlink()
	b := sysv.New()
	before := mustStat(t, b, key)
	if err := r.Chown(12345, 23456); err != nil {
		t.Fatal(err)
	}
	st := mustStat(t, b, key)
	if st.UID != 12345 || st.GID != 23456 || st.Mode != 0o640 {
		t.Fatalf("after Chown(12345, 23456): %+v", st)
	}
	if err := r.Chown(-1, before.GID); err != nil {
		t.Fatal(err)
	}
	st = mustStat(t, b, key)
	if st.UID != 12345 || st.GID != before.GID || st.Mode != 0o640 {
		t.Fatalf("after Chown(-1, %d): %+v", before.GID, st)
	}
}

// rawSegment makes a segment under key's key_t the way a foreign program
// would, filled with content.
func rawSegment(t *testing.T, key string, size int, content []byte) {
	t.Helper()
	id, err := unix.SysvShmGet(sysv.Key(key), size, unix.IPC_CREAT|unix.IPC_EXCL|0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.SysvShmCtl(id, unix.IPC_RMID, nil) })
	mem, err := unix.SysvShmAttach(id, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	copy(mem, content)
	unix.SysvShmDetach(mem)
}

func TestForeignSegment(t *testing.T) {
	cases := []struct {
		name    string
		size    int
		content []byte
		why     string
	}{
		{"blank", 4096, nil, "no header (blank magic)"},
		{"garbage", 4096, bytes.Repeat([]byte("junk"), 200), "bad magic"},
		{"tiny", 100, []byte("x"), "smaller than"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			key := testName(t, "foreign-"+c.name)
			rawSegment(t, key, c.size, c.content)
			_, err := shm.Open(key, 50*time.Millisecond, opt())
			if !errors.Is(err, shm.ErrCorrupt) || errors.Is(err, shm.ErrNotExist) {
				t.Fatalf("Open of a foreign segment: %v, want ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), c.why) {
				t.Errorf("error %q does not say %q", err, c.why)
			}
			// The foreign segment is left alone.
			if st := mustStat(t, sysv.New(), key); st.Size != int64(c.size) || st.Attached != 0 {
				t.Errorf("foreign segment changed: %+v", st)
			}
			if _, err := shm.Create(key, 64, opt()); !errors.Is(err, shm.ErrExist) {
				t.Errorf("Create over a foreign segment: %v, want ErrExist", err)
			}
		})
	}
}

func TestKeyCollision(t *testing.T) {
	a, bkey := testName(t, "coll-a"), testName(t, "coll-b")
	forced := sysv.Key(a)
	b := sysv.NewWithKeyFunc(func(string) int { return forced })
	r, err := shm.Create(a, 64, shm.WithBackend(b))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer r.Unlink()
	copy(r.Bytes(), "region a")

	_, err = shm.Open(bkey, 0, shm.WithBackend(b))
	if !errors.Is(err, shm.ErrCorrupt) {
		t.Fatalf("Open of a colliding key: %v, want ErrCorrupt", err)
	}
	want := fmt.Sprintf("header names key %q, not %q", a[1:], bkey[1:])
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
	if _, err := shm.Create(bkey, 64, shm.WithBackend(b)); !errors.Is(err, shm.ErrExist) {
		t.Fatalf("Create of a colliding key: %v, want ErrExist", err)
	}
	// The first region is untouched and still opens under its own key.
	u, err := shm.Open(a, 0, shm.WithBackend(b))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if string(u.Bytes()[:8]) != "region a" {
		t.Fatalf("region a reads %q", u.Bytes()[:8])
	}
}

func TestUnlinkWhileAttached(t *testing.T) {
	key := testName(t, "rmid")
	r, err := shm.Create(key, 4096, opt())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	u, err := shm.Open(key, 0, opt())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if err := r.Unlink(); err != nil {
		t.Fatal(err)
	}
	copy(r.Bytes(), "still shared")
	if got := string(u.Bytes()[:12]); got != "still shared" {
		t.Fatalf("user reads %q after Unlink", got)
	}
	l, err := u.Lock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.TryLock(); !errors.Is(err, shm.ErrLocked) {
		t.Errorf("TryLock while the user holds the lock: %v, want ErrLocked", err)
	}
	l.Unlock()
	if _, err := shm.Open(key, 0, opt()); !errors.Is(err, shm.ErrNotExist) {
		t.Fatalf("Open after Unlink: %v, want ErrNotExist", err)
	}
}

// TestUnlinkWhileAttachedAcrossProcesses: a child attaches, the owner
// removes the segment, and the two keep talking through it.
func TestUnlinkWhileAttachedAcrossProcesses(t *testing.T) {
	key := testName(t, "rmid-proc")
	r, err := shm.Create(key, 4096, opt())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer r.Unlink()
	cmd := child(t, "rmid", key)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var werr error
	go func() { werr = cmd.Wait(); close(done) }()
	// fatal stops the child before reading its output.
	fatal := func(format string) {
		t.Helper()
		cmd.Process.Kill()
		<-done
		t.Fatalf(format, out.String())
	}
	if !waitFor(r.Bytes(), "attached", done) {
		fatal("child did not attach:\n%s")
	}
	if st := mustStat(t, sysv.New(), key); st.Attached != 2 {
		t.Errorf("nattch %d with the child attached, want 2", st.Attached)
	}
	if err := r.Unlink(); err != nil {
		t.Fatal(err)
	}
	copy(r.Bytes(), "unlinked")
	if !waitFor(r.Bytes(), "done", done) {
		fatal("child did not see the segment after IPC_RMID:\n%s")
	}
	<-done
	if werr != nil {
		t.Fatalf("child: %v\n%s", werr, out.String())
	}
}

// waitFor polls mem for word at its start, with backoff, until done is
// closed (the other process ended) or 20 s pass.
func waitFor(mem []byte, word string, done <-chan struct{}) bool {
	deadline := time.Now().Add(20 * time.Second)
	d := time.Millisecond
	for time.Now().Before(deadline) {
		if string(mem[:len(word)]) == word {
			return true
		}
		select {
		case <-done:
			// Look once more: the child may have written and exited.
			return string(mem[:len(word)]) == word
		case <-time.After(d):
		}
		d = min(2*d, 20*time.Millisecond)
	}
	return false
}

// child returns the test binary re-executed in a role, with the key and the
// role's other arguments, not started.
func child(t *testing.T, role, key string, args ...string) *exec.Cmd {
	t.Helper()
	cmd, err := reexec.Command(role, append([]string{key}, args...))
	if err != nil {
		t.Fatal(err)
	}
	return cmd
}

// runChild plays a role in a re-executed test binary; it returns the exit
// code and reports on stderr.
func runChild(role, key, arg string) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "child %s: "+format+"\n", append([]any{role}, args...)...)
		return 1
	}
	switch role {
	case "flip":
		// A peer that may write the segment changes one byte of its
		// header (at offset arg) and leaves.
		off, err := strconv.Atoi(arg)
		if err != nil {
			return fail("offset: %v", err)
		}
		id, err := unix.SysvShmGet(sysv.Key(key), 0, 0)
		if err != nil {
			return fail("shmget: %v", err)
		}
		mem, err := unix.SysvShmAttach(id, 0, 0)
		if err != nil {
			return fail("shmat: %v", err)
		}
		mem[off] ^= 0x01
		if err := unix.SysvShmDetach(mem); err != nil {
			return fail("shmdt: %v", err)
		}
		return 0
	case "foreign":
		// Another program's segment under key's key_t, arg bytes of
		// random content, attached and detached once by this process.
		size, err := strconv.Atoi(arg)
		if err != nil {
			return fail("size: %v", err)
		}
		id, err := unix.SysvShmGet(sysv.Key(key), size, unix.IPC_CREAT|unix.IPC_EXCL|0o644)
		if err != nil {
			return fail("shmget: %v", err)
		}
		mem, err := unix.SysvShmAttach(id, 0, 0)
		if err != nil {
			return fail("shmat: %v", err)
		}
		for i := range mem {
			mem[i] = byte(i*7 + 3)
		}
		if err := unix.SysvShmDetach(mem); err != nil {
			return fail("shmdt: %v", err)
		}
		fmt.Println(id)
		return 0
	case "rmid":
		u, err := shm.Open(key, 10*time.Second, opt())
		if err != nil {
			return fail("%v", err)
		}
		defer u.Close()
		copy(u.Bytes(), "attached")
		if !waitFor(u.Bytes(), "unlinked", nil) {
			return fail("never saw \"unlinked\"")
		}
		if _, err := sysv.New().Open(key[1:]); !errors.Is(err, fs.ErrNotExist) {
			return fail("backend Open after IPC_RMID: %v, want ErrNotExist", err)
		}
		copy(u.Bytes(), "done\x00\x00\x00\x00")
		return 0
	case "denied":
		// Runs as another user; the segment is root's, mode 0600.
		_, err := shm.Open(key, 0, opt())
		if !errors.Is(err, fs.ErrPermission) {
			return fail("Open: %v, want ErrPermission", err)
		}
		if err := sysv.New().Unlink(key[1:]); !errors.Is(err, fs.ErrPermission) {
			return fail("Unlink: %v, want ErrPermission", err)
		}
		return 0
	case "create-readonly":
		// Runs as another user, without CAP_IPC_OWNER: the creator must
		// still be able to attach read-write to a mode without owner
		// write, and the mode must stay exact.
		r, err := shm.Create(key, 64, opt(), shm.WithMode(0o400))
		if err != nil {
			return fail("Create 0400: %v", err)
		}
		defer r.Close()
		defer r.Unlink()
		copy(r.Bytes(), "written")
		st, err := sysv.New().Stat(key)
		if err != nil {
			return fail("Stat: %v", err)
		}
		if st.Mode != 0o400 || st.UID != os.Getuid() {
			return fail("mode %v uid %d, want 0400 and %d", st.Mode, st.UID, os.Getuid())
		}
		if _, err := shm.Open(key, 0, opt()); !errors.Is(err, fs.ErrPermission) {
			return fail("Open of our own 0400 region: %v, want ErrPermission", err)
		}
		return 0
	case "allowed":
		u, err := shm.Open(key, 0, opt())
		if err != nil {
			return fail("Open: %v", err)
		}
		defer u.Close()
		if string(u.Bytes()[:5]) != "owned" {
			return fail("reads %q", u.Bytes()[:5])
		}
		copy(u.Bytes(), "wrote")
		return 0
	}
	return fail("unknown role")
}

func TestPermissionAndChownAcrossUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child as another user")
	}
	const nobody = 65534
	key := testName(t, "perm")
	r, err := shm.Create(key, 64, opt(), shm.WithMode(0o600))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer r.Unlink()
	copy(r.Bytes(), "owned")
	run := func(role, key string) {
		t.Helper()
		reexec.Start(t, role, []string{key}, reexec.AsUser(nobody, nobody)).Wait()
	}
	run("denied", key)
	key2 := testName(t, "perm-creator")
	run("create-readonly", key2)
	if _, err := sysv.New().Stat(key2); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the other user's region is left: %v", err)
	}
	if err := r.Chown(nobody, nobody); err != nil {
		t.Fatal(err)
	}
	run("allowed", key)
	if string(r.Bytes()[:5]) != "wrote" {
		t.Fatalf("the other user's write is not visible: %q", r.Bytes()[:5])
	}
}

func TestListOpenIDUnlinkID(t *testing.T) {
	b := sysv.New()
	key := testName(t, "list")
	r, err := shm.Create(key, 3000, opt(), shm.WithMode(0o640))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer r.Unlink()
	copy(r.Bytes(), "listed")
	st := mustStat(t, b, key)

	find := func() (backend.Info, bool) {
		infos, err := b.List()
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range infos {
			if in.ID == strconv.Itoa(st.ID) {
				return in, true
			}
		}
		return backend.Info{}, false
	}
	in, ok := find()
	if !ok {
		t.Fatalf("List does not show shmid %d", st.ID)
	}
	want := backend.Info{Size: hdrSize + 3000, Mode: 0o640, UID: os.Getuid(), GID: os.Getgid(), Attached: 1, ID: strconv.Itoa(st.ID)}
	if in != want {
		t.Fatalf("List entry %+v, want %+v", in, want)
	}

	s, err := b.OpenID(in.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Bytes()) != hdrSize+3000 || string(s.Bytes()[hdrSize:hdrSize+6]) != "listed" {
		t.Fatalf("OpenID maps %d bytes, data %q", len(s.Bytes()), s.Bytes()[hdrSize:hdrSize+6])
	}
	if in, _ := find(); in.Attached != 2 {
		t.Errorf("Attached %d with two attachments", in.Attached)
	}
	if st, err := b.StatID(in.ID); err != nil || st.Attached != 2 || st.Key != sysv.Key(key) {
		t.Errorf("StatID: %+v, %v", st, err)
	}
	if err := b.UnlinkID(in.ID); err != nil {
		t.Fatal(err)
	}
	if _, ok := find(); ok {
		t.Error("List shows a removed segment")
	}
	if _, err := shm.Open(key, 0, opt()); !errors.Is(err, shm.ErrNotExist) {
		t.Errorf("Open after UnlinkID: %v, want ErrNotExist", err)
	}
	if err := r.Unlink(); !errors.Is(err, shm.ErrNotExist) {
		t.Errorf("Region.Unlink after UnlinkID: %v, want ErrNotExist", err)
	}
	// Still attached twice, and shared (OpenID's attachment is read-only).
	copy(r.Bytes(), "shared")
	if string(s.Bytes()[hdrSize:hdrSize+6]) != "shared" {
		t.Errorf("after UnlinkID: %q", s.Bytes()[hdrSize:hdrSize+6])
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	// Freed at the last detach.
	if _, err := b.StatID(in.ID); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("StatID after the last detach: %v, want ErrNotExist", err)
	}
	if _, err := b.OpenID(in.ID); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("OpenID of a freed segment: %v, want ErrNotExist", err)
	}
	if err := b.UnlinkID(in.ID); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("UnlinkID of a freed segment: %v, want ErrNotExist", err)
	}
	for _, bad := range []string{"", "x", "-1"} {
		if _, err := b.OpenID(bad); err == nil {
			t.Errorf("OpenID(%q) succeeded", bad)
		}
	}
}

func TestParseList(t *testing.T) {
	const text = `       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap
-1098763795         12   640                  3512  4242  4242      1     0     0     0     0 1700000000          0 1700000000                  4096                     0
         0         13   600                  4096  4242  4242      1     0     0     0     0 1700000000          0 1700000000                  4096                     0
  12345678         14  1666                  4096  4242  4242      1  1000  1001     0     0 1700000000          0 1700000000                  4096                     0
  87654321         15   666                     1  4242  4242      0  1000  1001     0     0 1700000000          0 1700000000                  4096                     0
`
	got, err := sysv.ParseList(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	want := []backend.Info{
		{Size: 3512, Mode: 0o640, UID: 0, GID: 0, Attached: 1, ID: "12"},
		{Size: 1, Mode: 0o666, UID: 1000, GID: 1001, Attached: 0, ID: "15"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("parseList:\n got %+v\nwant %+v", got, want)
	}
	if _, err := sysv.ParseList(strings.NewReader("key shmid\n1 2\n")); err == nil {
		t.Error("parseList accepted a header without perms/size")
	}
	if _, err := sysv.ParseList(strings.NewReader(text[:strings.Index(text, "\n")+1] + "x 1 600 1 1 1 1 0 0 0 0 0 0 0 0 0\n")); err == nil {
		t.Error("parseList accepted a bad key")
	}
}

func TestPopulate(t *testing.T) {
	b := sysv.New()
	t.Run("fallback", func(t *testing.T) {
		defer sysv.SetMadvise(func([]byte, int) error { return unix.EINVAL })()
		name := strings.TrimPrefix(testName(t, "pop-fallback"), "/")
		p, err := b.Create(name, 3*4096+1, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Discard(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("failure", func(t *testing.T) {
		defer sysv.SetMadvise(func([]byte, int) error { return unix.ENOMEM })()
		key := testName(t, "pop-fail")
		_, err := shm.Create(key, 4096, opt())
		if !errors.Is(err, syscall.ENOMEM) {
			t.Fatalf("Create when populating fails: %v, want ENOMEM", err)
		}
		if _, err := b.Stat(key); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("segment left after a failed Create: %v", err)
		}
	})
	t.Run("real", func(t *testing.T) {
		// MADV_POPULATE_WRITE on a real segment: the pages are resident
		// after Create (rss in /proc/sysvipc/shm counts them).
		name := strings.TrimPrefix(testName(t, "pop-real"), "/")
		const size = 64 << 10
		p, err := b.Create(name, size, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Discard()
		rss := segmentRSS(t, sysv.Key(name))
		if rss < size {
			t.Fatalf("rss %d after Create of %d bytes: pages not populated", rss, size)
		}
	})
}

// segmentRSS reads the rss column of the segment under key_t k.
func segmentRSS(t *testing.T, k int) int64 {
	b, err := os.ReadFile(sysv.ProcFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	col := map[string]int{}
	for i, f := range strings.Fields(lines[0]) {
		col[f] = i
	}
	ri, ok := col["rss"]
	if !ok {
		t.Skip(sysv.ProcFile + " has no rss column on this kernel")
	}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if f[col["key"]] == strconv.Itoa(k) {
			n, err := strconv.ParseInt(f[ri], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no segment with key %d", k)
	return 0
}

func TestIpcsShowsRegions(t *testing.T) {
	if _, err := exec.LookPath("ipcs"); err != nil {
		t.Skip("ipcs (util-linux) is not installed")
	}
	key := testName(t, "ipcs")
	hex := fmt.Sprintf("0x%08x", uint32(int32(sysv.Key(key))))
	n0, _ := ipcsCount(t)
	r, err := shm.Create(key, 64, opt())
	if err != nil {
		t.Fatal(err)
	}
	n1, out := ipcsCount(t)
	if !strings.Contains(out, hex) {
		t.Errorf("ipcs -m does not show key %s:\n%s", hex, out)
	}
	if err := r.Unlink(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	n2, out := ipcsCount(t)
	if strings.Contains(out, hex) {
		t.Errorf("ipcs -m still shows key %s after Unlink and Close:\n%s", hex, out)
	}
	// Other programs may add or remove segments meanwhile; report the
	// counts, and fail only on what is certainly ours (the key above).
	t.Logf("ipcs -m segments: %d before, %d with the region, %d after", n0, n1, n2)
}

// Benchmarks of the operations that differ between backends: attaching
// and creating. The POSIX backend is measured alongside for comparison.
func benchBackends() []backend.Backend { return []backend.Backend{sysv.New(), posix.New()} }

func BenchmarkOpenClose(b *testing.B) {
	for _, be := range benchBackends() {
		b.Run(be.Name(), func(b *testing.B) {
			key := testName(b, "bench-open")
			r, err := shm.Create(key, 4096, shm.WithBackend(be))
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			defer r.Unlink()
			for b.Loop() {
				u, err := shm.Open(key, 0, shm.WithBackend(be))
				if err != nil {
					b.Fatal(err)
				}
				u.Close()
			}
		})
	}
}

func BenchmarkCreateUnlink(b *testing.B) {
	for _, size := range []int{4 << 10, 1 << 20} {
		for _, be := range benchBackends() {
			b.Run(fmt.Sprintf("%s/%dKiB", be.Name(), size>>10), func(b *testing.B) {
				key := testName(b, "bench-create")
				for b.Loop() {
					r, err := shm.Create(key, size, shm.WithBackend(be))
					if err != nil {
						b.Fatal(err)
					}
					if err := r.Unlink(); err != nil {
						b.Fatal(err)
					}
					r.Close()
				}
			})
		}
	}
}

// A blank segment (no header) whose creator has died is reported as such at
// once, not after the whole timeout.
func TestBlankSegmentDeadCreator(t *testing.T) {
	if c, ok := reexec.In(t); ok {
		// Create a segment without a header and exit.
		_, err := unix.SysvShmGet(sysv.Key(c.Arg(0)), 4096, unix.IPC_CREAT|unix.IPC_EXCL|0o600)
		c.Exit(err)
	}
	name := fmt.Sprintf("t-sysv-blank-%d", os.Getpid())
	reexec.Start(t, "blank", []string{name}, reexec.InTest(t.Name())).Wait()
	b := sysv.New()
	defer b.Unlink(name)
	_, err := shm.Open("/"+name, time.Minute, shm.WithBackend(b))
	if !errors.Is(err, shm.ErrOwnerDead) {
		t.Fatalf("Open of a blank segment whose creator exited: %v, want ErrOwnerDead", err)
	}
}
