package shm_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/file"
	"github.com/shmgo/shm/backend/memfd"
	"github.com/shmgo/shm/backend/posix"
	"github.com/shmgo/shm/backend/sysv"
	"github.com/shmgo/shm/internal/reexec"
	"github.com/shmgo/shm/internal/shmtest"
)

// privateDir makes a directory on /dev/shm's tmpfs for one test, so that
// RemoveStale sees only the test's objects.
func privateDir(t *testing.T) string { return shmtest.PrivateDir(t) }

// startChild starts a child playing role (see internal/shmtest) on key of
// the backend spec, and waits until it is ready.
func startChild(t *testing.T, role, key, spec string) *reexec.Proc {
	t.Helper()
	return shmtest.Start(t, role, key, spec)
}

type backendCase struct {
	name string
	spec string
	be   backend.Backend
}

// backendCases are the backends the tests run on: posix and file in private
// directories, sysv and memfd with keys of their own.
func backendCases(t *testing.T) []backendCase {
	pdir, fdir := privateDir(t), privateDir(t)
	return []backendCase{
		{"posix", "posix:" + pdir, posix.NewDir(pdir)},
		{"sysv", "sysv", sysv.New()},
		{"memfd", "memfd", memfd.New()},
		{"file", "file:" + fdir, file.New(fdir)},
	}
}

// opsRun makes the keys of this run its own: the PID keeps two copies of
// the suite running at once apart, and the random part keeps a run that got
// the PID of a killed one (PIDs wrap within minutes on a busy machine) off
// the objects that one left behind.
var opsRun = fmt.Sprintf("%d-%08x", os.Getpid(), rand.Uint32())

// opsKey is this run's key for what.
// ownIPCNamespace re-runs a SysV case in a new IPC namespace, and reports
// whether the caller should do the work (it is that re-run, or the case is
// not SysV). Any process that lists the SysV segments of a namespace
// attaches each one for a moment to read its header (another copy of these
// tests, shmctl ls, the conformance suite): in a namespace shared with them,
// a segment these tests want unattached may be counted attached, and
// Remove refuses it. Alone in a namespace, nobody else sees it.
func ownIPCNamespace(t *testing.T, bc backendCase) bool {
	t.Helper()
	return bc.name != "sysv" || inNewIPCNamespace(t)
}

func opsKey(t *testing.T, what string) string {
	return "/t-ops-" + opsRun + "-" + what
}

// cleanupKey removes key on be at the end of the test, whatever its state.
func cleanupKey(t *testing.T, be backend.Backend, key string) {
	t.Cleanup(func() { be.Unlink(strings.TrimPrefix(key, "/")) })
}

func findInfo(infos []shm.Info, backendName, key string) (shm.Info, bool) {
	for _, in := range infos {
		if in.Backend == backendName && in.Key == key && !in.Temp {
			return in, true
		}
	}
	return shm.Info{}, false
}

func TestStatLiveRegion(t *testing.T) {
	for _, bc := range backendCases(t) {
		t.Run(bc.name, func(t *testing.T) {
			if !ownIPCNamespace(t, bc) {
				return
			}
			key := opsKey(t, "live-"+bc.name)
			cleanupKey(t, bc.be, key)
			r, err := shm.Create(key, 1000, shm.WithBackend(bc.be), shm.WithMode(0o640))
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if err := r.Chown(-1, 65534); err != nil {
				t.Fatal(err)
			}
			l, err := r.Lock()
			if err != nil {
				t.Fatal(err)
			}
			defer l.Unlock()

			in, err := shm.Stat(key, shm.WithBackend(bc.be))
			if err != nil {
				t.Fatal(err)
			}
			if in.Key != key || in.Backend != bc.name || in.Size != 1000 || in.ObjectSize < 1512 {
				t.Errorf("key %q backend %q size %d object %d", in.Key, in.Backend, in.Size, in.ObjectSize)
			}
			if in.Mode != 0o640 || in.UID != os.Geteuid() || in.GID != 65534 {
				t.Errorf("mode %v uid %d gid %d, want 0640 %d 65534", in.Mode, in.UID, in.GID, os.Geteuid())
			}
			if in.CreatorPID != os.Getpid() || in.Creator != shm.LivenessAlive || !in.Ready {
				t.Errorf("creator %d %v ready %v", in.CreatorPID, in.Creator, in.Ready)
			}
			if time.Since(in.Created) > time.Minute || in.Created.After(time.Now()) {
				t.Errorf("created %v", in.Created)
			}
			if in.Lock.State != shm.LockHeld || in.Lock.PID != os.Getpid() || in.Lock.Inconsistent {
				t.Errorf("lock %+v, want held by us", in.Lock)
			}
			if in.Attached < 1 {
				t.Errorf("attached %d, want at least this process", in.Attached)
			}
			if in.Stale || in.Foreign || in.Temp || in.Err != nil {
				t.Errorf("stale %v foreign %v temp %v err %v", in.Stale, in.Foreign, in.Temp, in.Err)
			}

			infos, err := shm.List(context.Background(), shm.ListBackends(bc.be))
			if err != nil {
				t.Fatal(err)
			}
			li, ok := findInfo(infos, bc.name, key)
			if !ok {
				t.Fatalf("List does not show %s", key)
			}
			if li.CreatorPID != in.CreatorPID || li.Size != in.Size || li.Stale {
				t.Errorf("List: %+v", li)
			}

			err = shm.Remove(key, shm.WithBackend(bc.be))
			if !errors.Is(err, shm.ErrInUse) {
				t.Fatalf("Remove of a live region: %v, want ErrInUse", err)
			}
			if _, err := shm.Stat(key, shm.WithBackend(bc.be)); err != nil {
				t.Fatalf("the region is gone after a refused Remove: %v", err)
			}
		})
	}
}

func TestStaleAfterKill(t *testing.T) {
	for _, bc := range backendCases(t) {
		t.Run(bc.name, func(t *testing.T) {
			if !ownIPCNamespace(t, bc) {
				return
			}
			key := opsKey(t, "killed-"+bc.name)
			cleanupKey(t, bc.be, key)
			c := startChild(t, "create-lock", key, bc.spec)
			c.Kill()

			in, err := shm.Stat(key, shm.WithBackend(bc.be))
			if bc.name == "memfd" {
				// Nothing outlives a memfd region's processes.
				if !errors.Is(err, shm.ErrNotExist) {
					t.Fatalf("Stat after the owner died: %+v, %v; want ErrNotExist", in, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if in.CreatorPID != c.PID() || in.Creator != shm.LivenessDead {
				t.Errorf("creator %d %v, want %d dead", in.CreatorPID, in.Creator, c.PID())
			}
			if in.Lock.State != shm.LockHolderDead || in.Lock.PID != c.PID() {
				t.Errorf("lock %+v, want holder %d dead", in.Lock, c.PID())
			}
			if in.Attached != 0 || !in.AttachedExact || !in.Stale {
				t.Errorf("attached %d exact %v stale %v (%s), want 0 true true", in.Attached, in.AttachedExact, in.Stale, in.Reason)
			}
			infos, err := shm.List(context.Background(), shm.ListBackends(bc.be))
			if err != nil {
				t.Fatal(err)
			}
			if li, ok := findInfo(infos, bc.name, key); !ok || !li.Stale {
				t.Errorf("List: %+v (found %v), want stale", li, ok)
			}
			if err := shm.Remove(key, shm.WithBackend(bc.be)); err != nil {
				t.Fatal(err)
			}
			if _, err := shm.Stat(key, shm.WithBackend(bc.be)); !errors.Is(err, shm.ErrNotExist) {
				t.Fatalf("Stat after Remove: %v", err)
			}
			if err := shm.Remove(key, shm.WithBackend(bc.be)); !errors.Is(err, shm.ErrNotExist) {
				t.Fatalf("second Remove: %v", err)
			}
		})
	}
}

// A region whose creator died is still in use while another process maps
// it: neither Remove nor RemoveStale may take it.
func TestInUseNeverRemoved(t *testing.T) {
	for _, bc := range backendCases(t) {
		if bc.name == "memfd" {
			continue // a memfd region cannot be attached once its owner died
		}
		t.Run(bc.name, func(t *testing.T) {
			if !ownIPCNamespace(t, bc) {
				return
			}
			key := opsKey(t, "inuse-"+bc.name)
			cleanupKey(t, bc.be, key)
			creator := startChild(t, "create", key, bc.spec)
			user := startChild(t, "attach", key, bc.spec)
			creator.Kill()

			in, err := shm.Stat(key, shm.WithBackend(bc.be))
			if err != nil {
				t.Fatal(err)
			}
			if in.Creator != shm.LivenessDead || in.Stale || in.Attached < 1 {
				t.Errorf("creator %v stale %v attached %d, want dead, not stale, attached", in.Creator, in.Stale, in.Attached)
			}
			if err := shm.Remove(key, shm.WithBackend(bc.be)); !errors.Is(err, shm.ErrInUse) {
				t.Fatalf("Remove of a mapped region: %v, want ErrInUse", err)
			}
			if bc.name != "sysv" { // RemoveStale on SysV: see TestSysvRemoveStale
				removed, err := shm.RemoveStale(context.Background(), shm.ListBackends(bc.be))
				if err != nil || len(removed) != 0 {
					t.Fatalf("RemoveStale removed %v, %v", removed, err)
				}
			}
			if _, err := shm.Stat(key, shm.WithBackend(bc.be)); err != nil {
				t.Fatalf("the region in use was removed: %v", err)
			}

			user.Kill()
			if bc.name == "sysv" {
				if err := shm.Remove(key, shm.WithBackend(bc.be)); err != nil {
					t.Fatal(err)
				}
				return
			}
			removed, err := shm.RemoveStale(context.Background(), shm.ListBackends(bc.be))
			if err != nil {
				t.Fatal(err)
			}
			if len(removed) != 1 || removed[0].Key != key || removed[0].CreatorPID != creator.PID() {
				t.Fatalf("RemoveStale removed %+v, want %s", removed, key)
			}
			if _, err := shm.Stat(key, shm.WithBackend(bc.be)); !errors.Is(err, shm.ErrNotExist) {
				t.Fatalf("Stat after RemoveStale: %v", err)
			}
		})
	}
}

// RemoveStale on SysV sees every segment of the IPC namespace: run it in a
// namespace of its own.
func TestSysvRemoveStale(t *testing.T) {
	if !inNewIPCNamespace(t) {
		return
	}
	be := sysv.New()
	stale, live := opsKey(t, "sysv-stale"), opsKey(t, "sysv-live")
	startChild(t, "create", stale, "sysv").Kill()
	startChild(t, "create", live, "sysv")
	defer be.Unlink(strings.TrimPrefix(live, "/"))

	removed, err := shm.RemoveStale(context.Background(), shm.ListBackends(be))
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0].Key != stale || removed[0].ID == "" {
		t.Fatalf("RemoveStale removed %+v, want only %s", removed, stale)
	}
	infos, err := shm.List(context.Background(), shm.ListBackends(be))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := findInfo(infos, "sysv", stale); ok {
		t.Error("the stale segment is still listed")
	}
	if in, ok := findInfo(infos, "sysv", live); !ok || in.Stale || in.Creator != shm.LivenessAlive {
		t.Errorf("the live segment: %+v (found %v)", in, ok)
	}
}

// inNewIPCNamespace re-runs the calling test in a new IPC namespace and
// reports whether the caller is that re-run (and should do the work).
func inNewIPCNamespace(t *testing.T) bool {
	t.Helper()
	return shmtest.InNamespaces(t, syscall.CLONE_NEWIPC)
}

func TestForeignObjects(t *testing.T) {
	dir := privateDir(t)
	be := posix.NewDir(dir)
	name := "t-ops-foreign"
	if err := os.WriteFile(filepath.Join(dir, name), []byte(strings.Repeat("not a region ", 100)), 0o600); err != nil {
		t.Fatal(err)
	}
	infos, err := shm.List(context.Background(), shm.ListBackends(be))
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 0 {
		t.Fatalf("List without ListForeign: %+v", infos)
	}
	infos, err = shm.List(context.Background(), shm.ListBackends(be), shm.ListForeign())
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 1 || !infos[0].Foreign || infos[0].Key != "/"+name || infos[0].Stale {
		t.Fatalf("List with ListForeign: %+v", infos)
	}
	if _, err := shm.Stat("/"+name, shm.WithBackend(be)); !errors.Is(err, shm.ErrCorrupt) {
		t.Errorf("Stat of a foreign object: %v, want ErrCorrupt", err)
	}
	if err := shm.Remove("/"+name, shm.WithBackend(be)); !errors.Is(err, shm.ErrCorrupt) {
		t.Errorf("Remove of a foreign object: %v, want ErrCorrupt", err)
	}
	removed, err := shm.RemoveStale(context.Background(), shm.ListBackends(be))
	if err != nil || len(removed) != 0 {
		t.Errorf("RemoveStale: %+v, %v", removed, err)
	}
	if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
		t.Fatalf("the foreign object was removed: %v", err)
	}
}

// A creator that dies inside WithInit leaves its object under a temporary
// name: it is listed as a stale temporary region and removed.
func TestOrphanTempRemoved(t *testing.T) {
	for _, bc := range backendCases(t) {
		if bc.name != "posix" && bc.name != "file" {
			continue
		}
		t.Run(bc.name, func(t *testing.T) {
			key := opsKey(t, "initdie")
			c := startChild(t, "initdie", key, bc.spec)
			infos, err := shm.List(context.Background(), shm.ListBackends(bc.be))
			if err != nil {
				t.Fatal(err)
			}
			if len(infos) != 1 || !infos[0].Temp || infos[0].Stale || infos[0].Ready || infos[0].Creator != shm.LivenessAlive {
				t.Fatalf("while the creator lives: %+v", infos)
			}
			c.Kill()
			infos, err = shm.List(context.Background(), shm.ListBackends(bc.be))
			if err != nil {
				t.Fatal(err)
			}
			if len(infos) != 1 || !infos[0].Temp || !infos[0].Stale || infos[0].Key != key {
				t.Fatalf("after the creator died: %+v", infos)
			}
			removed, err := shm.RemoveStale(context.Background(), shm.ListBackends(bc.be))
			if err != nil || len(removed) != 1 || removed[0].Path != infos[0].Path {
				t.Fatalf("RemoveStale: %+v, %v", removed, err)
			}
			left, _ := os.ReadDir(filepath.Dir(infos[0].Path))
			if len(left) != 0 {
				t.Fatalf("left behind: %v", left)
			}
		})
	}
}

// RemoveStale racing a process that attaches again and again: the region
// goes only when nobody has it, and the attacher never holds a region
// whose key is gone. Several rounds, since each round races differently.
func TestRemoveStaleRacesAttach(t *testing.T) {
	dir := privateDir(t)
	be := posix.NewDir(dir)
	for round := 0; round < 10; round++ {
		tries := 0
		n, att := shmtest.RaceAttach(t, opsKey(t, fmt.Sprintf("race-%d", round)), "posix:"+dir, func(ctx context.Context) (bool, error) {
			time.Sleep(time.Duration(tries%3) * 100 * time.Microsecond)
			tries++
			removed, err := shm.RemoveStale(ctx, shm.ListBackends(be))
			return len(removed) > 0, err
		})
		t.Logf("round %d: removed after %d tries; attacher: %s", round, n, att)
	}
}

func TestListNamesItsBackendErrors(t *testing.T) {
	missing := filepath.Join(privateDir(t), "nonexistent")
	_, err := shm.List(context.Background(), shm.ListBackends(posix.NewDir(missing)))
	var se *shm.Error
	if !errors.As(err, &se) || se.Backend != "posix" || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("List of a missing directory: %v", err)
	}
}

// A lock whose holder died: the kernel marks the holder's slot, and Stat
// says the holder is dead (the next Lock takes over).
func TestStatRobustLockAfterKill(t *testing.T) {
	dir := privateDir(t)
	be := posix.NewDir(dir)
	key := opsKey(t, "robust")
	cleanupKey(t, be, key)
	c := startChild(t, "create-robust-lock", key, "posix:"+dir)
	in, err := shm.Stat(key, shm.WithBackend(be))
	if err != nil {
		t.Fatal(err)
	}
	if !in.Lock.Robust || in.Lock.State != shm.LockHeld || in.Lock.PID != c.PID() || in.Lock.Inconsistent {
		t.Errorf("while the holder lives: %+v", in.Lock)
	}
	c.Kill()
	in, err = shm.Stat(key, shm.WithBackend(be))
	if err != nil {
		t.Fatal(err)
	}
	if !in.Lock.Robust || in.Lock.State != shm.LockHolderDead || in.Lock.PID != c.PID() || !in.Stale {
		t.Errorf("after the holder died: %+v, stale %v", in.Lock, in.Stale)
	}
}

// With the default backends, List looks at /dev/shm among others, and a
// default directory that does not exist is no error.
func TestListDefaults(t *testing.T) {
	// With the default backends, List attaches every SysV segment and asks
	// every memfd owner it can see: in namespaces of its own (IPC, network
	// for the abstract sockets) it disturbs no other test and program.
	if !shmtest.InNamespaces(t, syscall.CLONE_NEWIPC|syscall.CLONE_NEWNET) {
		return
	}
	t.Setenv("XDG_RUNTIME_DIR", filepath.Join(t.TempDir(), "missing"))
	key := opsKey(t, "defaults")
	r, err := shm.Create(key, 64, shm.WithBackend(posix.New()))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer r.Unlink()
	infos, err := shm.List(context.Background())
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if in, ok := findInfo(infos, "posix", key); !ok || in.Path != filepath.Join(posix.DefaultDir, key[1:]) {
		t.Fatalf("List does not show %s in /dev/shm: %+v", key, in)
	}
}

func TestLockStates(t *testing.T) {
	li := shm.LockInfo{State: shm.LockHolderDead, PID: 42, Inconsistent: true}
	if got := li.String(); got != "holder 42 dead, inconsistent" {
		t.Errorf("%q", got)
	}
	if got := (shm.LockInfo{}).String(); got != "free" {
		t.Errorf("%q", got)
	}
	if got := (shm.LockInfo{State: shm.LockHeld, PID: 7}).String(); got != "held by 7" {
		t.Errorf("%q", got)
	}
}

// BenchmarkList measures List over a directory of 200 regions (posix, in a
// private directory), whose creator (this process) lives.
func BenchmarkList(b *testing.B) {
	dir, err := os.MkdirTemp(posix.DefaultDir, "t-ops-dir-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	be := posix.NewDir(dir)
	for i := 0; i < 200; i++ {
		r, err := shm.Create(fmt.Sprintf("/t-ops-bench-%d", i), 4096, shm.WithBackend(be))
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
	}
	for b.Loop() {
		infos, err := shm.List(context.Background(), shm.ListBackends(be))
		if err != nil || len(infos) != 200 {
			b.Fatal(len(infos), err)
		}
	}
}

// Foreign things under a key: Create says the key is taken, and Open, Stat
// and Remove agree that what is there is not a region (ErrCorrupt, saying
// what it is); Remove leaves it in place.
func TestForeignUnderKeyAgrees(t *testing.T) {
	dir := privateDir(t)
	for _, b := range []backend.Backend{posix.NewDir(dir), file.New(dir)} {
		for _, tc := range []struct {
			name, what string
			make       func(p string) error
		}{
			{"symlink", "symbolic link", func(p string) error { return os.Symlink("/etc/passwd", p) }},
			{"fifo", "FIFO", func(p string) error { return syscall.Mkfifo(p, 0o600) }},
			{"dir", "directory", func(p string) error { return os.Mkdir(p, 0o700) }},
			{"empty", "", func(p string) error { return os.WriteFile(p, nil, 0o600) }}, // Open says "empty", Stat and Remove "blank header"
			{"socket", "socket", func(p string) error {
				fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
				if err != nil {
					return err
				}
				defer syscall.Close(fd)
				return syscall.Bind(fd, &syscall.SockaddrUnix{Name: p})
			}},
			{"hardlink", "hard-linked", func(p string) error {
				if err := os.WriteFile(p+".orig", make([]byte, 8192), 0o600); err != nil {
					return err
				}
				return os.Link(p+".orig", p)
			}},
		} {
			t.Run(b.Name()+"/"+tc.name, func(t *testing.T) {
				key := opsKey(t, "foreign-"+b.Name()+"-"+tc.name)
				p := filepath.Join(dir, key[1:])
				if err := tc.make(p); err != nil {
					t.Fatal(err)
				}
				defer os.Remove(p + ".orig")
				defer os.RemoveAll(p)
				if _, err := shm.Create(key, 64, shm.WithBackend(b)); !errors.Is(err, shm.ErrExist) {
					t.Errorf("Create: %v, want ErrExist", err)
				}
				for _, op := range []struct {
					name string
					err  error
				}{
					{"Open", func() error { _, err := shm.Open(key, 0, shm.WithBackend(b)); return err }()},
					{"Stat", func() error { _, err := shm.Stat(key, shm.WithBackend(b)); return err }()},
					{"Remove", shm.Remove(key, shm.WithBackend(b))},
				} {
					if !errors.Is(op.err, shm.ErrCorrupt) || errors.Is(op.err, shm.ErrNotExist) || !strings.Contains(op.err.Error(), tc.what) {
						t.Errorf("%s: %v, want ErrCorrupt saying %q", op.name, op.err, tc.what)
					}
				}
				if _, err := os.Lstat(p); err != nil {
					t.Errorf("Remove removed the %s: %v", tc.what, err)
				}
			})
		}
	}
}

// A temporary object that a creator left when it died makes Open give up
// at once ("creator died before the region was ready") only when its owner
// is trusted: one that another uid planted under the protocol's name (a
// spoofer) is ignored, and Open waits for the real region until its
// timeout.
func TestTempNameSpoofing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to give a file to another uid (CI runs as root)")
	}
	for _, bc := range backendCases(t) {
		if bc.name != "posix" && bc.name != "file" {
			continue
		}
		t.Run(bc.name, func(t *testing.T) {
			key := opsKey(t, "spoof")
			c := startChild(t, "initdie", key, bc.spec)
			c.Kill()
			infos, err := shm.List(context.Background(), shm.ListBackends(bc.be))
			if err != nil || len(infos) != 1 || !infos[0].Temp {
				t.Fatalf("the dead creator's temporary object: %+v, %v", infos, err)
			}
			tmp := infos[0].Path
			defer os.Remove(tmp)
			_, err = shm.Open(key, 200*time.Millisecond, shm.WithBackend(bc.be))
			if !errors.Is(err, shm.ErrOwnerDead) {
				t.Fatalf("Open with a trusted creator's abandoned object: %v, want ErrOwnerDead", err)
			}
			if err := os.Chown(tmp, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			_, err = shm.Open(key, 200*time.Millisecond, shm.WithBackend(bc.be))
			if !errors.Is(err, shm.ErrTimeout) || !errors.Is(err, shm.ErrNotExist) {
				t.Fatalf("Open with a planted object of another uid: %v (after %v), want ErrTimeout and ErrNotExist", err, time.Since(start))
			}
		})
	}
}

// lateTaken is a posix backend on which a stale region appears under the
// key between Create and Publish: a creator killed in that window.
type lateTaken struct {
	*posix.Backend
	t         *testing.T
	key, spec string
	planted   int
}

func (b *lateTaken) Create(name string, size int64, perm fs.FileMode) (backend.Pending, error) {
	p, err := b.Backend.Create(name, size, perm)
	if err == nil && b.planted == 0 {
		b.planted++
		startChild(b.t, "create-lock", b.key, b.spec).Kill()
	}
	return p, err
}

// TestReplaceStaleAtPublish: WithReplaceStale replaces a stale region that
// the backend finds under the key only at Publish, as it does one found at
// Create; without it, Create fails with ErrExist and leaves the stale
// region as it was.
func TestReplaceStaleAtPublish(t *testing.T) {
	dir := privateDir(t)
	for _, replace := range []bool{false, true} {
		key := opsKey(t, fmt.Sprintf("late-%v", replace))
		be := &lateTaken{Backend: posix.NewDir(dir), t: t, key: key, spec: "posix:" + dir}
		cleanupKey(t, be, key)
		opts := []shm.Option{shm.WithBackend(be)}
		if replace {
			opts = append(opts, shm.WithReplaceStale())
		}
		r, err := shm.Create(key, 4096, opts...)
		if !replace {
			if !errors.Is(err, shm.ErrExist) {
				t.Fatalf("Create over a region published meanwhile: %v, want ErrExist", err)
			}
			in, err := shm.Stat(key, shm.WithBackend(be))
			if err != nil || !in.Stale {
				t.Fatalf("the stale region after a refused Create: %+v, %v", in, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("Create with WithReplaceStale over a region found stale at Publish: %v", err)
		}
		if r.Bytes()[0] != 0 {
			t.Error("the new region holds the stale one's data")
		}
		r.Close()
	}
}
