package nstest_test

// Containers without /dev/shm: mount namespaces where /dev/shm is hidden,
// absent or small.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/posix"
)

func init() {
	roles["file-owner"] = fileOwner
	roles["file-user"] = fileUser
	roles["small-shm"] = smallShm
}

// The demo binary, built once for the tests that run it.
var demo struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func demoBinary(t *testing.T) string {
	t.Helper()
	demo.once.Do(func() {
		gobin, err := exec.LookPath("go")
		if err != nil {
			gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		demo.dir, demo.err = os.MkdirTemp("", "nstest-demo-")
		if demo.err != nil {
			return
		}
		demo.path = filepath.Join(demo.dir, "shmdemo")
		out, err := exec.Command(gobin, "build", "-o", demo.path, "github.com/shmgo/shm/cmd/shmdemo").CombinedOutput()
		if err != nil {
			demo.err = fmt.Errorf("go build cmd/shmdemo: %v\n%s", err, out)
		}
	})
	if demo.err != nil {
		t.Fatal(demo.err)
	}
	return demo.path
}

func removeDemo() {
	if demo.dir != "" {
		os.RemoveAll(demo.dir)
	}
}

// TestDemoWithoutDevShm runs cmd/shmdemo (controller and application, two
// processes) in a mount namespace made with unshare(1) where /dev/shm is
// unusable: with no configuration both must pick memfd and share the
// record log and its lock.
func TestDemoWithoutDevShm(t *testing.T) {
	unshare := requireUnshare(t)
	exe := demoBinary(t)
	for _, tc := range []struct {
		name   string
		script string // prepares the namespace; then the demo runs
	}{
		{"hidden", `
			mount -t tmpfs -o ro,nosuid,nodev,size=4k,mode=1777 tmpfs /dev/shm
			if touch /dev/shm/probe 2>/dev/null; then echo "/dev/shm is writable" >&2; exit 9; fi
			[ -z "$(ls -A /dev/shm)" ]`},
		{"absent", `
			mount -t tmpfs -o nosuid,size=64k,mode=755 tmpfs /dev
			mknod -m 666 /dev/null c 1 3
			mknod -m 666 /dev/zero c 1 5
			mknod -m 666 /dev/urandom c 1 9
			if [ -e /dev/shm ]; then echo "/dev/shm is still there" >&2; exit 9; fi`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := key("demo-" + tc.name)
			// -timeout: how long the controller waits for the application
			// (another process) to create the region; its default, 5 s, is
			// short for a loaded machine.
			script := "set -e\n" + tc.script + "\nexec \"$DEMO\" -key \"$KEY\" -events 300 -timeout 1m\n"
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, unshare, "--mount", "--propagation", "private", "sh", "-c", script)
			cmd.Env = append(os.Environ(), shm.EnvBackend+"=", "DEMO="+exe, "KEY="+k)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("shmdemo in a mount namespace without /dev/shm: %v\n%s", err, out)
			}
			q := regexp.QuoteMeta(k)
			for _, re := range []string{
				`(?m)^app +pid \d+: created ` + q + ` \(\d+ bytes, backend memfd\)$`,
				`(?m)^controller pid \d+: attached to ` + q + ` \(\d+ bytes, backend memfd\)$`,
				`saw 300 records \(150 enter, 150 exit\) in \d+ drains; app reported 300`,
				q + ` is gone; done`,
			} {
				if !regexp.MustCompile(re).Match(out) {
					t.Errorf("output does not match %s:\n%s", re, out)
				}
			}
			if _, err := os.Stat("/dev/shm" + k); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("/dev/shm%s exists outside the namespace (stat: %v)", k, err)
			}
		})
	}
}

// shared is the data of the regions the counting tests share.
type shared struct {
	Counter  uint64
	Attached uint32 // the user has attached
	Done     uint32 // the user has finished its increments
}

const sharedSize = 64

var _ [sharedSize - unsafe.Sizeof(shared{})]byte // shared fits in the region

func sharedOf(r *shm.Region) *shared { return (*shared)(r.Pointer()) }

// TestFileBetweenMountNamespaces runs an owner and a user in two mount
// namespaces of their own, each with /dev/shm hidden, that share only a
// directory: through the file backend they share the data and the lock
// (each does 10,000 locked increments; the total must be exact).
func TestFileBetweenMountNamespaces(t *testing.T) {
	requireRoot(t)
	const n = 10000
	for _, tc := range []string{"key", "env"} {
		t.Run(tc, func(t *testing.T) {
			dir := t.TempDir()
			name := key("file")
			k, env := "file:"+dir+name, []string(nil)
			if tc == "env" {
				k, env = name, []string{shm.EnvBackend + "=file:" + dir}
			}
			o := nsOpts{flags: syscall.CLONE_NEWNS, setup: []string{"private", "hideshm"}, env: env}
			// The user starts first and waits for the owner's region.
			user := start(t, "user", "file-user", k, fmt.Sprint(n), o)
			owner := start(t, "owner", "file-owner", k, fmt.Sprint(n), o)

			created := owner.expect("created")
			attached := user.expect("attached")
			for _, line := range []string{created, attached} {
				if b := field(t, line, "backend"); b != "file" {
					t.Errorf("backend %s, want file (%s)", b, line)
				}
				if s := field(t, line, "devshm"); s != "readonly" {
					t.Errorf("/dev/shm in the child is %s, want readonly (hidden)", s)
				}
			}
			ownerNS, userNS := field(t, created, "mntns"), field(t, attached, "mntns")
			if ownerNS == userNS || ownerNS == fmt.Sprint(nsInode("self", "mnt")) {
				t.Errorf("mount namespaces: owner %s, user %s, test %d: want three different ones", ownerNS, userNS, nsInode("self", "mnt"))
			}
			user.expect("done")
			if total := field(t, owner.expect("total"), "counter"); total != fmt.Sprint(2*n) {
				t.Errorf("counter %s after two processes did %d locked increments each, want %d", total, n, 2*n)
			}
			user.Wait()
			owner.Wait()
			if left, _ := os.ReadDir(dir); len(left) > 0 {
				t.Errorf("left in the shared directory: %v", left)
			}
		})
	}
}

// devShmState says what this process sees at /dev/shm.
func devShmState() string {
	var st unix.Statfs_t
	switch err := unix.Statfs("/dev/shm", &st); {
	case errors.Is(err, unix.ENOENT):
		return "absent"
	case err != nil:
		return "error:" + err.Error()
	case st.Flags&unix.ST_RDONLY != 0:
		return "readonly"
	}
	return "writable"
}

// increment adds 1 to the shared counter n times, each under the lock, with
// a read, a yield now and then, and a write, so that a lock that does not
// exclude loses increments.
func increment(r *shm.Region, n int) error {
	s := sharedOf(r)
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		l, err := r.LockContext(ctx)
		cancel()
		if err != nil {
			return fmt.Errorf("increment %d: %w", i, err)
		}
		v := s.Counter
		if i%64 == 0 {
			runtime.Gosched()
		}
		s.Counter = v + 1
		if err := l.Unlock(); err != nil {
			return err
		}
	}
	return nil
}

// waitShared waits, with backoff, until cond holds under the lock.
func waitShared(r *shm.Region, what string, cond func(*shared) bool) error {
	deadline := time.Now().Add(time.Minute)
	var b backoff
	for {
		l, err := r.Lock()
		if err != nil {
			return err
		}
		ok := cond(sharedOf(r))
		l.Unlock()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gave up waiting for %s", what)
		}
		b.sleep()
	}
}

func fileOwner(c *child) error {
	var n int
	fmt.Sscan(c.arg, &n)
	r, err := shm.Create(c.key, sharedSize)
	if err != nil {
		return err
	}
	defer r.Close()
	defer r.Unlink()
	c.Say("created backend=%s devshm=%s mntns=%d", r.Backend(), devShmState(), nsInode("self", "mnt"))
	if err := waitShared(r, "the user to attach", func(s *shared) bool { return s.Attached == 1 }); err != nil {
		return err
	}
	if err := increment(r, n); err != nil {
		return err
	}
	if err := waitShared(r, "the user to finish", func(s *shared) bool { return s.Done == 1 }); err != nil {
		return err
	}
	l, err := r.Lock()
	if err != nil {
		return err
	}
	total := sharedOf(r).Counter
	l.Unlock()
	c.Say("total counter=%d", total)
	return nil
}

func fileUser(c *child) error {
	var n int
	fmt.Sscan(c.arg, &n)
	r, err := shm.Open(c.key, time.Minute)
	if err != nil {
		return err
	}
	defer r.Close()
	l, err := r.Lock()
	if err != nil {
		return err
	}
	sharedOf(r).Attached = 1
	l.Unlock()
	c.Say("attached backend=%s devshm=%s mntns=%d", r.Backend(), devShmState(), nsInode("self", "mnt"))
	if err := increment(r, n); err != nil {
		return err
	}
	if l, err = r.Lock(); err != nil {
		return err
	}
	sharedOf(r).Done = 1
	l.Unlock()
	c.Say("done")
	return nil
}

// TestSmallDevShm mounts a 1 MiB tmpfs as /dev/shm in a mount namespace:
// a 4 MiB Create without a backend falls back to memfd and works; with
// POSIX asked for, it fails with ENOSPC (no SIGBUS), leaving nothing in
// /dev/shm; a small region still goes to POSIX.
func TestSmallDevShm(t *testing.T) {
	requireRoot(t)
	p := start(t, "child", "small-shm", key("small"), "",
		nsOpts{flags: syscall.CLONE_NEWNS, setup: []string{"private", "smallshm"}})
	if size := p.expect("devshm"); size != "size=1048576" {
		t.Errorf("/dev/shm in the namespace: %s, want size=1048576", size)
	}
	if got := p.expect("auto"); got != "backend=memfd reopened=memfd" {
		t.Errorf("4 MiB Create without a backend: %s, want backend=memfd reopened=memfd", got)
	}
	for _, how := range []string{"withbackend", "prefix"} {
		msg := p.expect(how)
		if !strings.Contains(msg, "no space left on device") {
			t.Errorf("4 MiB POSIX Create (%s): %q, want a message saying no space left on device", how, msg)
		}
	}
	if got := p.expect("leftover"); got != "0" {
		t.Errorf("/dev/shm holds %s entries after the failed Creates, want 0", got)
	}
	if got := p.expect("small"); got != "backend=posix reopened=posix" {
		t.Errorf("64 KiB Create without a backend: %s, want backend=posix reopened=posix", got)
	}
	p.Wait() // a SIGBUS would show here as "signal: bus error"
}

func smallShm(c *child) error {
	var st unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &st); err != nil {
		return err
	}
	c.Say("devshm size=%d", st.Blocks*uint64(st.Bsize))

	// Automatic choice: no room in /dev/shm, so memfd.
	const big = 4 << 20
	r, err := shm.Create(c.key+"-auto", big)
	if err != nil {
		return fmt.Errorf("4 MiB Create without a backend: %w", err)
	}
	b := r.Bytes()
	for i := 0; i < len(b); i += 4096 { // touch every page: no SIGBUS
		b[i] = byte(i>>12) | 1
	}
	u, err := shm.Open(c.key+"-auto", 0)
	if err != nil {
		return fmt.Errorf("Open of the fallback region: %w", err)
	}
	for i := 0; i < len(b); i += 4096 {
		if u.Bytes()[i] != byte(i>>12)|1 {
			return fmt.Errorf("byte %d: the user sees %d, the owner wrote %d", i, u.Bytes()[i], byte(i>>12)|1)
		}
	}
	c.Say("auto backend=%s reopened=%s", r.Backend(), u.Backend())
	u.Close()
	r.Unlink()
	r.Close()

	// POSIX asked for: ENOSPC at Create.
	for _, try := range []struct {
		how  string
		key  string
		opts []shm.Option
	}{
		{"withbackend", c.key + "-posix", []shm.Option{shm.WithBackend(posix.New())}},
		{"prefix", "posix:" + c.key + "-prefixed", nil},
	} {
		r, err := shm.Create(try.key, big, try.opts...)
		if err == nil {
			r.Unlink()
			r.Close()
			return fmt.Errorf("4 MiB POSIX Create (%s) in a 1 MiB /dev/shm succeeded", try.how)
		}
		if !errors.Is(err, syscall.ENOSPC) {
			return fmt.Errorf("4 MiB POSIX Create (%s): %v, want an error matching ENOSPC", try.how, err)
		}
		c.Say("%s err=%v", try.how, err)
	}
	left, err := os.ReadDir("/dev/shm")
	if err != nil {
		return err
	}
	c.Say("leftover %d", len(left))

	// A region that fits still goes to POSIX.
	if r, err = shm.Create(c.key+"-small", 64<<10); err != nil {
		return fmt.Errorf("64 KiB Create: %w", err)
	}
	defer r.Close()
	defer r.Unlink()
	if u, err = shm.Open(c.key+"-small", 0); err != nil {
		return err
	}
	defer u.Close()
	c.Say("small backend=%s reopened=%s", r.Backend(), u.Backend())
	return nil
}
