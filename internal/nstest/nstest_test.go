package nstest_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/internal/reexec"
	"github.com/shmgo/shm/internal/sys"
)

// Cross-process tests re-execute this test binary (internal/reexec).
// TestMain plays a child's role instead of running the tests: first the
// mount steps of its setup (the parent started it in new namespaces), then
// the role. A child's arguments are the region's key, a role-specific one,
// the comma-separated mount steps (see setup) and the PID it must have
// (startWithPID), or "".

// envNoRobust makes the child's kernel refuse robust futex lists, so that
// its lock slots are judged by PID. It passes to grandchildren.
const envNoRobust = "SHMGO_LOCK_NOROBUST"

// keyPrefix starts every key these tests use (and every file they leave in
// /dev/shm, were they to leave one).
const keyPrefix = "t-ns-"

func TestMain(m *testing.M) {
	for name, play := range roles {
		reexec.Register(name, func(rc *reexec.Child) error { return runChild(rc, play) })
	}
	reexec.Main()
	code := m.Run()
	removeDemo()
	// Only this process's keys: another copy of the suite may be running,
	// and a copy that was killed may have left its files.
	if left, _ := filepath.Glob("/dev/shm/*" + keyPrefix + strconv.Itoa(os.Getpid()) + "-*"); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "nstest: left behind in /dev/shm: %v\n", left)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// key returns a fresh key for this test process. The PID comes first, so
// that TestMain can tell this process's files from those of another copy
// of the suite.
func key(what string) string {
	return fmt.Sprintf("/%s%d-%s-%d", keyPrefix, os.Getpid(), what, seq.Add(1))
}

var seq atomic.Int64

// requireRoot skips the test when this process cannot create namespaces.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (CAP_SYS_ADMIN) to create mount and PID namespaces and to mount; CI runs as root")
	}
}

// requireUnshare skips the test when util-linux's unshare(1) is missing or
// cannot create a mount namespace here, and returns its path.
func requireUnshare(t *testing.T) string {
	t.Helper()
	requireRoot(t)
	p, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("skipped: unshare(1) from util-linux is not installed (CI installs it)")
	}
	if out, err := exec.Command(p, "--mount", "--propagation", "private", "true").CombinedOutput(); err != nil {
		t.Skipf("skipped: unshare --mount does not work here (a container without CAP_SYS_ADMIN?): %v %s", err, out)
	}
	return p
}

// nsOpts says how a child process is started.
type nsOpts struct {
	flags  uintptr  // clone flags: syscall.CLONE_NEWNS, CLONE_NEWPID
	setup  []string // mount steps the child performs first (see setup)
	env    []string // extra environment
	prefix []string // run the test binary through this command (unshare ...)
}

// proc is a running child process seen from the parent.
type proc struct {
	*reexec.Proc
	t *testing.T
	// kill kills the child and waits for it to end: Proc.Kill, or for a
	// child that the process Start started only forks in a namespace
	// (startWithPID), through its pidfd.
	kill func()
}

// start runs the test binary as role in a child process, in the namespaces
// o asks for; name is what the test calls it. It skips the test when the
// namespaces cannot be created.
func start(t *testing.T, name, role, key, arg string, o nsOpts) *proc {
	t.Helper()
	return startChild(t, name, role, []string{key, arg, strings.Join(o.setup, ","), ""}, o)
}

func startChild(t *testing.T, name, role string, args []string, o nsOpts) *proc {
	t.Helper()
	opts := []reexec.Option{
		reexec.Name(name),
		// The backend is the test's choice, not the environment's.
		reexec.Env(append([]string{shm.EnvBackend + "="}, o.env...)...),
		// Pdeathsig: if this test process dies, so do its children and,
		// with them, their namespaces.
		reexec.SysProcAttr(&syscall.SysProcAttr{Cloneflags: o.flags, Pdeathsig: syscall.SIGKILL}),
		reexec.Prefix(o.prefix...),
	}
	p := &proc{Proc: reexec.Start(t, role, args, opts...), t: t}
	p.kill = p.Kill
	return p
}

// expect waits for the child's next report, fails the test unless it
// starts with want, and returns the rest of it.
func (p *proc) expect(want string) string {
	p.t.Helper()
	return strings.TrimSpace(strings.TrimPrefix(p.Expect(want), want))
}

// The child's side.

// child is the context of a role in a child process.
type child struct {
	*reexec.Child
	key, arg string
}

// roles are filled in by the files that define them.
var roles = map[string]func(*child) error{}

// runChild sets up the child's namespaces as its arguments say, checks its
// PID if it was started by startWithPID, and plays the role.
func runChild(rc *reexec.Child, play func(*child) error) error {
	if os.Getenv(envNoRobust) != "" {
		sys.RefuseRobustLists() // as where a seccomp filter refuses them
	}
	if err := setup(rc.Arg(2)); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	c := &child{Child: rc, key: rc.Arg(0), arg: rc.Arg(1)}
	if want := rc.Arg(3); want != "" {
		// Started by startWithPID, which checks this line.
		if got := strconv.Itoa(os.Getpid()); got != want {
			return fmt.Errorf("started with PID %s, want %s: another process or thread of the namespace took PID %s first", got, want, want)
		}
		c.Say("started pid=%d", os.Getpid())
		// Until the parent holds this process (a pidfd), its PID must
		// stay ours.
		if got := c.Hear(); got != "go" {
			return fmt.Errorf("told %q, want go", got)
		}
	}
	return play(c)
}

// setup performs the comma-separated mount steps in a child that runs in a
// new mount namespace. It runs before package shm reads anything about
// this process.
func setup(steps string) error {
	const nodev = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	for _, step := range strings.Split(steps, ",") {
		var err error
		switch step {
		case "":
		case "private": // let no mount escape to the parent's namespace
			err = unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "")
		case "proc": // /proc for this PID namespace
			err = unix.Mount("proc", "/proc", "proc", nodev, "")
		case "hideshm": // an empty, read-only /dev/shm
			err = unix.Mount("tmpfs", "/dev/shm", "tmpfs", nodev|unix.MS_RDONLY, "size=4k,mode=1777")
		case "smallshm": // a 1 MiB /dev/shm
			err = unix.Mount("tmpfs", "/dev/shm", "tmpfs", nodev, "size=1m,mode=1777")
		case "hidepid1", "hidepid2": // /proc hides other users' processes (noaccess, invisible)
			err = unix.Mount("proc", "/proc", "proc", nodev, "hidepid="+step[len(step)-1:])
		case "nobody": // from now on, another user
			if err = unix.Setgroups(nil); err == nil {
				if err = unix.Setgid(65534); err == nil {
					err = unix.Setuid(65534)
				}
			}
		default:
			err = fmt.Errorf("unknown step %q", step)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", step, err)
		}
	}
	return nil
}

// nsInode returns the inode of this process's namespace of the given kind
// ("mnt", "pid"), or 0.
func nsInode(pid, kind string) uint64 {
	var st unix.Stat_t
	if unix.Stat("/proc/"+pid+"/ns/"+kind, &st) != nil {
		return 0
	}
	return st.Ino
}

// field returns the value of "name=value" in a report line.
func field(t *testing.T, line, name string) string {
	t.Helper()
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, name+"="); ok {
			return v
		}
	}
	t.Fatalf("report %q has no %s=", line, name)
	return ""
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// backoff sleeps a little longer each call, up to 20ms: the waits for a
// flag that another process sets.
type backoff time.Duration

func (b *backoff) sleep() {
	if *b == 0 {
		*b = backoff(time.Millisecond)
	}
	time.Sleep(time.Duration(*b))
	*b = min(*b*2, backoff(20*time.Millisecond))
}
