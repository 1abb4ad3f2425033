package nstest_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/internal/sys"
)

// Cross-process tests re-execute this test binary. TestMain sees envRole,
// performs the mount steps listed in envSetup (the parent started the
// process in new namespaces) and plays the role instead of running tests.
const (
	envRole  = "SHMGO_NSTEST_ROLE"  // the child's role, a key of roles
	envSetup = "SHMGO_NSTEST_SETUP" // comma-separated mount steps, see setup
	envKey   = "SHMGO_NSTEST_KEY"   // the region's key
	envArg   = "SHMGO_NSTEST_ARG"   // role-specific
	envPID   = "SHMGO_NSTEST_PID"   // the PID the child must have (startWithPID)
	// envNoRobust makes the child's kernel refuse robust futex lists, so
	// that its lock slots are judged by PID. Unlike the others it passes
	// to grandchildren (childEnv keeps it).
	envNoRobust = "SHMGO_LOCK_NOROBUST"
)

// keyPrefix starts every key these tests use (and every file they leave in
// /dev/shm, were they to leave one).
const keyPrefix = "t-ns-"

// linePrefix starts the lines a child reports to its parent.
const linePrefix = "NSTEST "

func TestMain(m *testing.M) {
	if role := os.Getenv(envRole); role != "" {
		os.Exit(runChild(role))
	}
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
	t     *testing.T
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // the child's report lines, without linePrefix

	// kill kills the child: cmd's process, or for a child that cmd only
	// starts in a namespace (startWithPID), that child.
	kill func() error

	mu     sync.Mutex
	output bytes.Buffer // everything the child wrote, for failure messages
	done   chan struct{}
	err    error // from Wait, once done is closed
}

// childEnv is this process's environment without variables that would
// change the backend choice or the role of the child.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, "SHM_BACKEND="), strings.HasPrefix(kv, "SHMGO_NSTEST_"):
			continue
		}
		env = append(env, kv)
	}
	return env
}

// testBinary returns the absolute path of this test binary, which the
// children run as well (from any working directory or mount namespace).
func testBinary(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("path of the test binary: %v", err)
	}
	return exe
}

// roleEnv is the environment of a child that plays role.
func roleEnv(role, key, arg string, o nsOpts) []string {
	env := append(childEnv(),
		envRole+"="+role, envKey+"="+key, envArg+"="+arg,
		envSetup+"="+strings.Join(o.setup, ","))
	return append(env, o.env...)
}

// start runs the test binary as role in a child process, in the namespaces
// o asks for. It skips the test when the namespaces cannot be created.
func start(t *testing.T, name, role, key, arg string, o nsOpts) *proc {
	t.Helper()
	args := append(append([]string(nil), o.prefix...), testBinary(t), "-test.run=^$")
	return startArgv(t, name, args, roleEnv(role, key, arg, o), o.flags)
}

// startArgv runs argv with the environment env, in new namespaces when
// flags asks for them, and collects its report lines.
func startArgv(t *testing.T, name string, argv, env []string, flags uintptr) *proc {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	// Pdeathsig: if this test process dies, so do its children and, with
	// them, their namespaces.
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: flags, Pdeathsig: syscall.SIGKILL}
	p := &proc{t: t, name: name, cmd: cmd, lines: make(chan string, 64), done: make(chan struct{})}
	p.kill = func() error { return cmd.Process.Kill() }
	var err error
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &lockedWriter{p}
	if err := cmd.Start(); err != nil {
		if flags != 0 && (errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL)) {
			t.Skipf("skipped: cannot create namespaces (clone flags %#x) here: %v", flags, err)
		}
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.output.WriteString(line + "\n")
			p.mu.Unlock()
			if s, ok := strings.CutPrefix(line, linePrefix); ok {
				p.lines <- s
			}
		}
		close(p.lines)
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stdin.Close()
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			p.kill()
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

type lockedWriter struct{ p *proc }

func (w *lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.output.Write(b)
}

// Output returns what the child wrote so far.
func (p *proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.output.String()
}

// expect waits up to d for the child's next report line, fails the test
// unless it starts with want, and returns the rest of the line.
func (p *proc) expect(want string, d time.Duration) string {
	p.t.Helper()
	select {
	case line, ok := <-p.lines:
		if !ok {
			<-p.done
			p.t.Fatalf("%s exited (%v) before saying %q; output:\n%s", p.name, p.err, want, p.Output())
		}
		rest, found := strings.CutPrefix(line, want)
		if !found {
			p.t.Fatalf("%s said %q, want %q...; output:\n%s", p.name, line, want, p.Output())
		}
		return strings.TrimSpace(rest)
	case <-time.After(d):
		p.t.Fatalf("%s did not say %q within %v; output:\n%s", p.name, want, d, p.Output())
	}
	return ""
}

// send writes a line to the child's standard input.
func (p *proc) send(line string) {
	p.t.Helper()
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		p.t.Fatalf("tell %s %q: %v; output:\n%s", p.name, line, err, p.Output())
	}
}

// wait waits up to d for the child to exit and returns its wait error
// (nil: exit status 0). It kills the child if d passes.
func (p *proc) wait(d time.Duration) error {
	p.t.Helper()
	p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(d):
		p.kill()
		p.cmd.Process.Kill()
		<-p.done
		p.t.Errorf("%s did not exit within %v; killed it; output:\n%s", p.name, d, p.Output())
	}
	return p.err
}

// mustSucceed waits for the child and fails the test unless it exited 0.
func (p *proc) mustSucceed(d time.Duration) {
	p.t.Helper()
	if err := p.wait(d); err != nil {
		p.t.Fatalf("%s: %v; output:\n%s", p.name, err, p.Output())
	}
}

// The child's side.

// child is the context of a role in a child process.
type child struct {
	key, arg string
	in       *bufio.Reader
}

func (c *child) say(format string, args ...any) {
	fmt.Printf(linePrefix+format+"\n", args...)
}

// hear returns the next line from the parent ("" at end of input).
func (c *child) hear() string {
	line, _ := c.in.ReadString('\n')
	return strings.TrimSpace(line)
}

// roles are filled in by the files that define them.
var roles = map[string]func(*child) error{}

func runChild(role string) int {
	if os.Getenv(envNoRobust) != "" {
		sys.RefuseRobustLists() // as where a seccomp filter refuses them
	}
	if err := setup(os.Getenv(envSetup)); err != nil {
		fmt.Fprintf(os.Stderr, "nstest child %s: setup: %v\n", role, err)
		return 2
	}
	f, ok := roles[role]
	if !ok {
		fmt.Fprintf(os.Stderr, "nstest child: unknown role %q\n", role)
		return 3
	}
	c := &child{key: os.Getenv(envKey), arg: os.Getenv(envArg), in: bufio.NewReader(os.Stdin)}
	if want := os.Getenv(envPID); want != "" {
		// Started by startWithPID, which checks this line.
		if got := strconv.Itoa(os.Getpid()); got != want {
			c.say("error started with PID %s, want %s: another process or thread of the namespace took PID %s first", got, want, want)
			return 1
		}
		c.say("started pid=%d", os.Getpid())
		// Until the parent holds this process (a pidfd), its PID must
		// stay ours.
		if got := c.hear(); got != "go" {
			fmt.Fprintf(os.Stderr, "nstest child %s: told %q, want go\n", role, got)
			return 1
		}
	}
	if err := f(c); err != nil {
		fmt.Fprintf(os.Stderr, "nstest child %s: %v\n", role, err)
		c.say("error %v", err)
		return 1
	}
	return 0
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
