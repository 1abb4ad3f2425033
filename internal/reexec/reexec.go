// Package reexec runs the test binary again as a child process that plays a
// role, for tests that need more than one process: a holder to kill, a
// racing creator, a user of another uid.
//
// The parent starts a child with Start, naming the role and its arguments.
// The child is the same test binary; it finds out what to play in one of two
// ways:
//
//   - Roles registered with Register are played by Main, which a package's
//     TestMain (or an init function) calls before anything else: the child
//     plays its role and exits without running any test. A program that
//     re-executes itself may do the same from its main, starting its
//     children with Command (cmd/shmbench's workers).
//   - A child started with InTest (or InBenchmark) runs that test (or
//     benchmark) instead, whose code calls In to learn that it is the child
//     and plays the role itself, with what the test has at hand (package
//     conformance plays its roles inside Run, where the backend under test
//     is known).
//   - Rerun runs the calling test again in a child (in new namespaces, say),
//     in which it returns true and the test does its work.
//
// Parent and child talk in lines. The child reports with Child.Say, which
// the parent reads with Proc.Expect or Proc.Next; the parent sends lines
// with Proc.Send, which the child reads with Child.Hear. Everything else the
// child writes (stderr, and stdout lines that are not reports) is kept for
// the parent's failure messages (Proc.Output). Every wait of the parent has
// a timeout (two minutes unless Timeout says otherwise), and a child still
// running when its test ends is killed and reaped.
package reexec

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// envSpec holds a child's spec, as JSON.
const envSpec = "SHMGO_REEXEC"

// ReportPrefix starts the lines of a child's stdout that are its reports
// (Child.Say). A command that a child runs through (Prefix) may report
// with such lines itself.
const ReportPrefix = "REEXEC "

// DefaultTimeout is how long the parent waits for a child's report or exit
// unless Timeout says otherwise.
const DefaultTimeout = 2 * time.Minute

type spec struct {
	Role string
	// Args are Go-quoted (strconv.Quote): JSON would replace bytes that
	// are not UTF-8, and an environment variable cannot hold a NUL.
	Args []string `json:",omitempty"`
	Test string   `json:",omitempty"` // the test or benchmark that plays the role; "" for Main
}

var (
	rolesMu sync.Mutex
	roles   = map[string]func(*Child) error{}
)

// Register makes Main play role with play. It panics if role is already
// registered. Call it from an init function or TestMain, before Main.
func Register(role string, play func(*Child) error) {
	rolesMu.Lock()
	defer rolesMu.Unlock()
	if _, dup := roles[role]; dup {
		panic("reexec: role " + role + " registered twice")
	}
	roles[role] = play
}

// Main plays this process's role and exits, if it is a child started
// without InTest or InBenchmark; otherwise it returns at once. An unknown
// role exits with status 3.
func Main() {
	c, ok := self()
	if !ok || c.spec.Test != "" {
		return
	}
	rolesMu.Lock()
	play, ok := roles[c.spec.Role]
	rolesMu.Unlock()
	if !ok {
		fmt.Fprintf(os.Stderr, "reexec: unknown role %q\n", c.spec.Role)
		os.Exit(3)
	}
	c.Exit(play(c))
}

// LockMainThread, called from an init function, makes the roles that Main
// plays in this process run on the main thread, whose thread ID is the PID
// (1 for PID 1 of a new PID namespace): for a role that ends the main
// thread alone, say. It does nothing in a process that is not a child
// started for Main (the tests' process, a child of InTest).
func LockMainThread() {
	if c, ok := self(); ok && c.spec.Test == "" {
		// Calling LockOSThread from an init function keeps the main
		// goroutine, which runs TestMain and so Main, on the main thread.
		runtime.LockOSThread()
	}
}

// IsChild reports whether this process is a child started by Start or
// Command, whatever its role.
func IsChild() bool { return os.Getenv(envSpec) != "" }

// In reports whether this process is a child started with InTest or
// InBenchmark naming tb's test or benchmark, and returns its Child. The
// caller plays c.Role() and ends with c.Exit.
func In(tb testing.TB) (c *Child, ok bool) {
	c, ok = in(tb)
	if !ok || c.spec.Role == rerunRole {
		return nil, false
	}
	return c, true
}

func in(tb testing.TB) (*Child, bool) {
	c, ok := self()
	if !ok || c.spec.Test == "" || c.spec.Test != tb.Name() {
		return nil, false
	}
	return c, true
}

var (
	selfOnce  sync.Once
	selfChild *Child
)

func self() (*Child, bool) {
	selfOnce.Do(func() {
		raw := os.Getenv(envSpec)
		if raw == "" {
			return
		}
		var s spec
		err := json.Unmarshal([]byte(raw), &s)
		for i := 0; err == nil && i < len(s.Args); i++ {
			s.Args[i], err = strconv.Unquote(s.Args[i])
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "reexec: bad %s: %v\n", envSpec, err)
			os.Exit(3)
		}
		selfChild = &Child{spec: s, in: bufio.NewReader(os.Stdin)}
	})
	return selfChild, selfChild != nil
}

// Child is this process seen as a child: its role, its arguments, and the
// lines to its parent.
type Child struct {
	spec spec
	in   *bufio.Reader
	mu   sync.Mutex // one report at a time
}

// Role is the role this child plays.
func (c *Child) Role() string { return c.spec.Role }

// Test is the test or benchmark the child was started in (InTest,
// InBenchmark), or "".
func (c *Child) Test() string { return c.spec.Test }

// Args are the role's arguments, as given to Start.
func (c *Child) Args() []string { return c.spec.Args }

// Arg is Args()[i], or "" when there are fewer arguments.
func (c *Child) Arg(i int) string {
	if i < len(c.spec.Args) {
		return c.spec.Args[i]
	}
	return ""
}

// Say reports a line to the parent (Proc.Expect, Proc.Next). The line must
// not contain a newline.
func (c *Child) Say(format string, args ...any) {
	line := ReportPrefix + fmt.Sprintf(format, args...) + "\n"
	c.mu.Lock()
	defer c.mu.Unlock()
	os.Stdout.WriteString(line)
}

// Hear waits for the parent's next line (Proc.Send) and returns it without
// its newline; "" when the parent closed the child's input.
func (c *Child) Hear() string {
	line, _ := c.in.ReadString('\n')
	return strings.TrimSpace(line)
}

// Exit ends the child: with status 0 when err is nil, else with status 1,
// after writing err to stderr and reporting "error <err>" (which fails the
// parent's Expect of anything else, saying why).
func (c *Child) Exit(err error) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "child %s: %v\n", c.spec.Role, err)
		c.Say("error %s", strings.ReplaceAll(err.Error(), "\n", " "))
		os.Exit(1)
	}
	os.Exit(0)
}

// CutReport returns the report in a line of a child's stdout, for a parent
// that reads it itself (see Command).
func CutReport(line string) (report string, ok bool) {
	return strings.CutPrefix(strings.TrimRight(line, "\r\n"), ReportPrefix)
}

// An Option configures a child.
type Option func(*config)

type config struct {
	test, bench string
	verbose     bool // -test.v, for Rerun
	env         []string
	user        *syscall.Credential
	timeout     time.Duration
	extra       []*os.File
	attr        *syscall.SysProcAttr
	prefix      []string
	name        string
}

// InTest starts the child in the test (or subtest) called name, whose code
// plays the role after In (see the package doc).
func InTest(name string) Option { return func(c *config) { c.test = name } }

// InBenchmark starts the child in the benchmark called name, run once,
// whose code plays the role after In.
func InBenchmark(name string) Option { return func(c *config) { c.bench = name } }

// Env adds "KEY=value" variables to the child's environment, which is
// otherwise the parent's.
func Env(kv ...string) Option { return func(c *config) { c.env = append(c.env, kv...) } }

// AsUser runs the child as uid and gid with the given supplementary groups
// (none by default), from a copy of the test binary in a new directory
// under /tmp that they can reach, removed when the test ends. Start fails
// the test when they cannot reach it.
func AsUser(uid, gid uint32, groups ...uint32) Option {
	return func(c *config) {
		c.user = &syscall.Credential{Uid: uid, Gid: gid, Groups: append([]uint32{}, groups...)}
	}
}

// Timeout sets how long Expect, Next and Wait wait for the child.
func Timeout(d time.Duration) Option { return func(c *config) { c.timeout = d } }

// ExtraFiles passes open files to the child, as descriptors 3, 4 and so on
// (exec.Cmd.ExtraFiles).
func ExtraFiles(f ...*os.File) Option { return func(c *config) { c.extra = append(c.extra, f...) } }

// SysProcAttr sets the child's exec.Cmd.SysProcAttr (namespaces, say). With
// AsUser, the credential is set in it.
func SysProcAttr(a *syscall.SysProcAttr) Option { return func(c *config) { c.attr = a } }

// Name is what the parent's failure messages call the child, besides its
// role: for children of one role that play different parts.
func Name(name string) Option { return func(c *config) { c.name = name } }

// Prefix runs the test binary through the command argv (unshare(1) or
// nsenter(1) with their options, say): the child's command line is argv,
// then the test binary and its flags. Proc.PID, Signal, Kill and the kill
// at the end of the test are then argv[0]'s: a command that forks the child
// and does not pass SIGKILL on leaves the child to be killed by the caller,
// after which Proc.Done waits for it to end.
func Prefix(argv ...string) Option {
	return func(c *config) { c.prefix = append([]string{}, argv...) }
}

// Command returns the child process of role with args, not started, for a
// caller that runs it itself (reading its reports with CutReport): a child
// that starts a grandchild, say. It cannot use AsUser. Its stdin, stdout and
// stderr are the caller's to set.
func Command(role string, args []string, opts ...Option) (*exec.Cmd, error) {
	var cf config
	for _, o := range opts {
		o(&cf)
	}
	if cf.user != nil {
		return nil, errors.New("reexec.Command: AsUser needs Start")
	}
	return command(role, args, &cf, testBinary())
}

// testBinary is the absolute path of the test binary, which a child started
// through a Prefix that changes directory finds as well.
func testBinary() string {
	if exe, err := os.Executable(); err == nil {
		return exe
	}
	return os.Args[0]
}

func command(role string, args []string, cf *config, exe string) (*exec.Cmd, error) {
	s := spec{Role: role, Test: cf.test}
	for _, a := range args {
		s.Args = append(s.Args, strconv.Quote(a))
	}
	flags := []string{"-test.run=^$"}
	switch {
	case cf.test != "" && cf.bench != "":
		return nil, errors.New("reexec: InTest and InBenchmark together")
	case cf.test != "":
		flags = []string{"-test.run=" + Pattern(cf.test), "-test.timeout=5m"}
	case cf.bench != "":
		s.Test = cf.bench
		flags = []string{"-test.run=^$", "-test.bench=" + Pattern(cf.bench), "-test.benchtime=1x"}
	}
	if cf.verbose {
		flags = append(flags, "-test.v")
	}
	raw, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	argv := append(append(append([]string{}, cf.prefix...), exe), append(flags, "-test.count=1")...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), envSpec+"="+string(raw))
	if g := os.Getenv("GORACE"); !strings.Contains(g, "atexit_sleep_ms") {
		// The race detector sleeps a second at exit by default.
		cmd.Env = append(cmd.Env, strings.TrimSpace("GORACE=atexit_sleep_ms=0 "+g))
	}
	cmd.Env = append(cmd.Env, cf.env...)
	cmd.ExtraFiles = cf.extra
	cmd.SysProcAttr = cf.attr
	return cmd, nil
}

// Pattern is a -test.run (or -test.bench) pattern that selects exactly the
// test called name, with its subtest path.
func Pattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

// Proc is a running child, seen from the parent.
type Proc struct {
	t       testing.TB
	role    string // the role, and the Name given
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	reports chan string
	out     syncBuffer // stderr, and stdout lines that are not reports
	done    chan struct{}
	err     error // of cmd.Wait, valid once done is closed
	timeout time.Duration
}

// Start starts a child playing role with args. It fails the test when the
// child cannot be started, and skips it when the kernel refuses the new
// namespaces that SysProcAttr asks for (EPERM, EINVAL). The child is
// killed and reaped when the test ends, if it still runs.
func Start(t testing.TB, role string, args []string, opts ...Option) *Proc {
	t.Helper()
	var cf config
	for _, o := range opts {
		o(&cf)
	}
	p, err := start(t, role, args, &cf)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func start(t testing.TB, role string, args []string, cf *config) (*Proc, error) {
	t.Helper()
	exe := testBinary()
	if cf.user != nil {
		exe = exeFor(t, cf.user.Uid, cf.user.Gid)
	}
	cmd, err := command(role, args, cf, exe)
	if err != nil {
		return nil, err
	}
	if cf.user != nil {
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		cmd.SysProcAttr.Credential = cf.user
		cmd.Dir = "/"
	}
	name := role
	if cf.name != "" {
		name = fmt.Sprintf("%q (%s)", cf.name, role)
	}
	p := &Proc{t: t, role: name, cmd: cmd, reports: make(chan string, 64), done: make(chan struct{}), timeout: cf.timeout}
	if p.timeout <= 0 {
		p.timeout = DefaultTimeout
	}
	cmd.Stderr = &p.out
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		if cf.attr != nil && cf.attr.Cloneflags != 0 && (errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL)) {
			t.Skipf("skipped: cannot create namespaces (clone flags %#x) here, for child %s: %v", cf.attr.Cloneflags, role, err)
		}
		return nil, fmt.Errorf("starting child %s: %w", role, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			if r, ok := CutReport(sc.Text()); ok {
				p.reports <- r
			} else {
				p.out.Write([]byte(sc.Text() + "\n"))
			}
		}
		io.Copy(&p.out, stdout) // a line too long for the scanner
		p.err = cmd.Wait()
		close(p.done)
		close(p.reports)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		// Its input closed too (after the kill: the child must not take
		// the end of its input for a word of the parent's): a process it
		// started that waits for input ends as well, and so lets go of
		// the output.
		p.stdin.Close()
		select {
		case <-p.done:
		case <-time.After(p.timeout):
			t.Errorf("child %s: its output still open %v after it was killed (by a process it started?); its output:\n%s", p.role, p.timeout, p.Output())
		}
	})
	return p, nil
}

// rerunRole is the role of a child of Rerun.
const rerunRole = "rerun"

// Rerun runs the calling test (or subtest) again in a child process started
// with opts (SysProcAttr with Cloneflags for new namespaces, Env, Timeout),
// and reports whether this process is that child, in which the test does
// its work:
//
//	if !reexec.Rerun(t, reexec.SysProcAttr(&syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWIPC})) {
//		return // the child ran the test
//	}
//
// In the parent, Rerun waits for the child and fails t unless the child's
// run of the test passed; like Start, it skips t when the kernel refuses
// the new namespaces (they need CAP_SYS_ADMIN).
func Rerun(t testing.TB, opts ...Option) bool {
	t.Helper()
	if c, ok := in(t); ok && c.Role() == rerunRole {
		return true
	}
	var cf config
	for _, o := range opts {
		o(&cf)
	}
	cf.test, cf.bench, cf.verbose = t.Name(), "", true
	p, err := start(t, rerunRole, nil, &cf)
	if err != nil {
		t.Fatal(err)
	}
	p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(p.timeout):
		t.Fatalf("the child that reruns %s did not exit within %v; its output:\n%s", t.Name(), p.timeout, p.Output())
	}
	if out := p.Output(); p.err != nil || !strings.Contains(out, "--- PASS: "+t.Name()+" ") {
		t.Fatalf("in the child, %s did not pass (%v); its output:\n%s", t.Name(), p.err, out)
	}
	return false
}

// PID is the child's process ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Next waits for the child's next report; ok is false when the child
// exited without one. It fails the test when the child says nothing for
// the timeout.
func (p *Proc) Next() (report string, ok bool) {
	p.t.Helper()
	select {
	case r, ok := <-p.reports:
		if !ok {
			<-p.done
		}
		return r, ok
	case <-time.After(p.timeout):
		p.t.Fatalf("child %s said nothing for %v; its output:\n%s", p.role, p.timeout, p.Output())
	}
	return "", false
}

// Expect waits for the child's next report, fails the test unless it starts
// with prefix (any report does for ""), and returns it.
func (p *Proc) Expect(prefix string) string {
	p.t.Helper()
	r, ok := p.Next()
	if !ok {
		p.t.Fatalf("child %s exited (%v) before %q; its output:\n%s", p.role, p.err, prefix, p.Output())
	}
	if !strings.HasPrefix(r, prefix) {
		p.t.Fatalf("child %s said %q, want %q; its output:\n%s", p.role, r, prefix, p.Output())
	}
	return r
}

// ExpectLine waits for the child's next report and fails the test unless
// it is exactly want.
func (p *Proc) ExpectLine(want string) {
	p.t.Helper()
	if r := p.Expect(""); r != want {
		p.t.Fatalf("child %s said %q, want %q; its output:\n%s", p.role, r, want, p.Output())
	}
}

// Send writes a line to the child (Child.Hear).
func (p *Proc) Send(line string) {
	p.t.Helper()
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		p.t.Fatalf("writing to child %s: %v", p.role, err)
	}
}

// Wait closes the child's input, waits for it to exit, and fails the test
// unless it succeeded.
func (p *Proc) Wait() {
	p.t.Helper()
	p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(p.timeout):
		p.t.Fatalf("child %s did not exit within %v; its output:\n%s", p.role, p.timeout, p.Output())
	}
	if p.err != nil {
		p.t.Fatalf("child %s failed: %v; its output:\n%s", p.role, p.err, p.Output())
	}
}

// Signal sends sig to the child.
func (p *Proc) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Kill sends SIGKILL to the child and reaps it. It fails the test if the
// child's output stays open for the timeout (a process it started holds
// it).
func (p *Proc) Kill() {
	p.t.Helper()
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.WaitDone()
}

// WaitDone waits until the child has exited and been reaped (Done), and
// fails the test if that takes longer than the timeout.
func (p *Proc) WaitDone() {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(p.timeout):
		p.t.Fatalf("child %s did not end within %v; its output:\n%s", p.role, p.timeout, p.Output())
	}
}

// Done is closed once the child has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is how the child exited (exec.Cmd.Wait's error), once Done is
// closed; nil before.
func (p *Proc) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// Output is what the child wrote so far that was not a report: its stderr
// and the other lines of its stdout.
func (p *Proc) Output() string { return p.out.String() }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// exeFor copies the test binary to a new 0755 directory under /tmp,
// removed when the test ends, and checks that uid and gid can reach it. Not
// under TMPDIR: the directories above it need not be open to others
// (TMPDIR=/root/tmp, with /root 0700).
func exeFor(t testing.TB, uid, gid uint32) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "shmgo-exe-")
	if err == nil {
		t.Cleanup(func() { os.RemoveAll(dir) })
		err = os.Chmod(dir, 0o755)
	}
	var data []byte
	if err == nil {
		data, err = os.ReadFile(testBinary())
	}
	exe := filepath.Join(dir, filepath.Base(testBinary()))
	if err == nil {
		err = os.WriteFile(exe, data, 0o755)
	}
	if err == nil {
		err = Reachable(exe, uid, gid)
	}
	if err != nil {
		t.Fatalf("copying the test binary for uid %d: %v", uid, err)
	}
	return exe
}

// Reachable checks, by the permission bits, that uid and gid (with no other
// groups) may search every directory on the way to path, and path itself:
// search a directory, execute a file.
func Reachable(path string, uid, gid uint32) error {
	path, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	for p := path; ; p = filepath.Dir(p) {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			return err
		}
		bits := st.Mode & 0o7
		switch {
		case st.Uid == uid:
			bits = st.Mode >> 6 & 0o7
		case st.Gid == gid:
			bits = st.Mode >> 3 & 0o7
		}
		if bits&0o1 == 0 {
			return fmt.Errorf("uid %d gid %d cannot reach %s: %s is mode %#o, owner %d:%d", uid, gid, path, p, st.Mode&0o7777, st.Uid, st.Gid)
		}
		if p == "/" {
			return nil
		}
	}
}
