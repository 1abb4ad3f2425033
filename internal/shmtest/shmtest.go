// Package shmtest holds what the tests of package shm and of cmd/shmctl
// share: child processes (internal/reexec roles) that create, lock and
// attach regions on a backend named by a spec, NAME[:ARG] as in
// SHM_BACKEND ("posix:DIR", "sysv", "memfd", "file:DIR"), to be killed so
// that their regions go stale; and the tests' private directories and
// namespaces.
package shmtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/posix"
	"github.com/shmgo/shm/internal/reexec"
)

// Register registers the roles below with internal/reexec. Call it from
// TestMain, before reexec.Main. A child's arguments are the key and the
// backend's spec.
//
//   - create: creates the region (4096 bytes, mode 0640), writes into it,
//     says "ready" and waits (to be killed).
//   - create-lock, create-robust-lock: the same, holding the lock.
//   - attach: opens the region (waiting up to 30 s), says "ready", waits.
//   - initdie: creates the region with a WithInit that says "ready" and
//     waits: the object stays under its temporary name.
//   - attach-loop: see RaceAttach.
func Register() {
	for _, role := range []string{"create", "create-lock", "create-robust-lock", "attach", "initdie", "attach-loop"} {
		reexec.Register(role, func(c *reexec.Child) error {
			be, err := BackendOf(c.Arg(1))
			if err != nil {
				return err
			}
			return play(c, c.Arg(0), be)
		})
	}
}

func play(c *reexec.Child, key string, be backend.Backend) error {
	var r *shm.Region
	var err error
	switch c.Role() {
	case "create", "create-lock", "create-robust-lock":
		if r, err = shm.Create(key, 4096, shm.WithBackend(be), shm.WithMode(0o640)); err != nil {
			return err
		}
		copy(r.Bytes(), "written by the creator")
		if c.Role() != "create" {
			if _, err := r.Lock(); err != nil {
				return err
			}
		}
	case "attach":
		if r, err = shm.Open(key, 30*time.Second, shm.WithBackend(be)); err != nil {
			return err
		}
	case "initdie":
		_, err := shm.Create(key, 4096, shm.WithBackend(be), shm.WithInit(func([]byte) error {
			c.Say("ready")
			c.Hear()
			return errors.New("the parent went away")
		}))
		return err
	case "attach-loop":
		return attachLoop(c, key, be)
	}
	c.Say("ready")
	c.Hear() // until the parent kills this process, or goes away
	runtime.KeepAlive(r)
	return nil
}

// BackendOf makes the backend of a spec, NAME[:ARG] as in SHM_BACKEND.
func BackendOf(spec string) (backend.Backend, error) {
	name, arg, _ := strings.Cut(spec, ":")
	f, ok := backend.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("unknown backend spec %q", spec)
	}
	return f(arg)
}

// Start starts a child playing role on key of the backend spec and waits
// until it says it is ready.
func Start(t testing.TB, role, key, spec string) *reexec.Proc {
	t.Helper()
	p := reexec.Start(t, role, []string{key, spec})
	p.ExpectLine("ready")
	return p
}

// PrivateDir makes a directory on /dev/shm's tmpfs for one test (mode
// 0755, removed when the test ends), so that a listing or a removal of
// stale regions sees only the test's objects.
func PrivateDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp(posix.DefaultDir, "t-ops-dir-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// InNamespaces reruns the calling test in new namespaces of the kinds in
// flags (syscall.CLONE_NEW*), with the other options opts, and reports
// whether the caller is that rerun (and should do the work); see
// reexec.Rerun.
func InNamespaces(t testing.TB, flags uintptr, opts ...reexec.Option) bool {
	t.Helper()
	return reexec.Rerun(t, append(opts, reexec.SysProcAttr(&syscall.SysProcAttr{Cloneflags: flags}))...)
}

// RaceAttach races a removal with a process that attaches again and again,
// on key of the backend spec (posix or file, whose objects have a path): a
// creator makes the region and is killed, then an attach-loop child
// attaches until the key is gone, checking while attached that the key
// still names the very object it maps (a removal must never take a region
// from under a process that attached), while remove tries to remove the
// region, again and again until it reports that it did (for a minute at
// most). It fails the test unless the region was removed and the attacher
// saw it gone, never held a removed region, and exited; it returns how
// many tries remove took and what the attacher said.
func RaceAttach(t testing.TB, key, spec string, remove func(ctx context.Context) (removed bool, err error)) (tries int, attacher string) {
	t.Helper()
	be, err := BackendOf(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Unlink(strings.TrimPrefix(key, "/")) })
	Start(t, "create", key, spec).Kill()
	att := Start(t, "attach-loop", key, spec)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for removed := false; !removed; {
		if ctx.Err() != nil {
			t.Fatalf("the region was not removed in %d tries within a minute", tries)
		}
		tries++
		if removed, err = remove(ctx); err != nil {
			t.Fatal(err)
		}
	}
	attacher = att.Expect("gone after ")
	att.Wait()
	return tries, attacher
}

// attachLoop is the attach-loop role: it attaches to key again and again
// until it is gone, saying "ready" after the first attach and "gone after
// N attaches" at the end, and fails if the key names another object than
// the one it maps while attached.
func attachLoop(c *reexec.Child, key string, be backend.Backend) error {
	dir, ok := be.(interface{ Dir() string })
	if !ok {
		return fmt.Errorf("backend %s has no directory", be.Name())
	}
	path := filepath.Join(dir.Dir(), strings.TrimPrefix(key, "/"))
	for i := 0; ; i++ {
		r, err := shm.Open(key, 0, shm.WithBackend(be))
		if errors.Is(err, shm.ErrNotExist) {
			c.Say("gone after %d attaches", i)
			return nil
		}
		if err != nil {
			return err
		}
		if i == 0 {
			c.Say("ready")
		}
		f, err := r.File()
		if err != nil {
			return err
		}
		var mine, named unix.Stat_t
		unix.Fstat(int(f.Fd()), &mine)
		f.Close()
		time.Sleep(time.Duration(i%7) * 50 * time.Microsecond)
		if err := unix.Stat(path, &named); err != nil || named.Ino != mine.Ino || mine.Nlink == 0 {
			return fmt.Errorf("VIOLATION: attached to inode %d (links %d), but %s: ino %d, %v", mine.Ino, mine.Nlink, path, named.Ino, err)
		}
		r.Close()
		time.Sleep(time.Duration(i%5) * 100 * time.Microsecond)
	}
}
