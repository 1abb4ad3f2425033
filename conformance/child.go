package conformance

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shmgo/shm/backend"
)

// Cross-process tests re-execute the test binary. The child runs the same
// top-level test (selected with -test.run), whose call to Run sees envChild
// and plays the role it names instead of running the suite.
const envChild = "SHMGO_CONFORMANCE_CHILD"

type childSpec struct {
	Test string   // t.Name() of the Run call that started the child
	Role string   // key of roles
	Key  string   // the region's key
	Args []string // role-specific
}

// A role is what a child process does; it reports with c.say and listens
// with c.hear. Returning an error fails the child (exit status 1).
type role func(c *childCtx) error

type childCtx struct {
	spec childSpec
	b    backend.Backend
	in   *bufio.Reader
}

func (c *childCtx) say(format string, args ...any) {
	fmt.Printf("SHMCONF "+format+"\n", args...)
}

// hear waits for the next line from the parent.
func (c *childCtx) hear() string {
	line, _ := c.in.ReadString('\n')
	return strings.TrimSpace(line)
}

// runChild plays the role named in the environment, if any, and exits the
// process; it returns false when this process is not a child of Run.
func runChild(t *testing.T, newBackend func(testing.TB) backend.Backend) bool {
	raw := os.Getenv(envChild)
	if raw == "" {
		return false
	}
	var spec childSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil || spec.Test != t.Name() {
		return false
	}
	r, ok := roles[spec.Role]
	if !ok {
		fmt.Fprintf(os.Stderr, "conformance child: unknown role %q\n", spec.Role)
		os.Exit(3)
	}
	c := &childCtx{spec: spec, b: newBackend(t), in: bufio.NewReader(os.Stdin)}
	if err := r(c); err != nil {
		fmt.Fprintf(os.Stderr, "conformance child %s: %v\n", spec.Role, err)
		c.say("error %v", err)
		os.Exit(1)
	}
	os.Exit(0)
	return true
}

// child is a running child process seen from the parent.
type child struct {
	t      *testing.T
	name   string // the role
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	events chan string
	stderr *syncBuffer
	done   chan struct{}
	err    error // of Wait, valid after done is closed
}

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

// runPattern selects exactly the test named name (with its subtest path).
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

type childOpt func(*exec.Cmd)

// asUser runs the child as another uid and gid, from a copy of the test
// binary that the user can execute.
func asUser(t *testing.T, uid, gid uint32) childOpt {
	exe := exeForOthers(t, uid, gid)
	return func(cmd *exec.Cmd) {
		cmd.Path = exe
		cmd.Args[0] = exe
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
		cmd.Dir = "/"
	}
}

// withEnv adds environment variables to the child's.
func withEnv(kv ...string) childOpt {
	return func(cmd *exec.Cmd) { cmd.Env = append(cmd.Env, kv...) }
}

// exeForOthers copies the test binary to a new 0755 directory under /tmp,
// removed when the test ends, and checks that uid and gid can reach it. Not
// under TMPDIR: the directories above it need not be open to others
// (TMPDIR=/root/tmp, with /root 0700).
func exeForOthers(t *testing.T, uid, gid uint32) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "shmconf-exe-")
	if err == nil {
		t.Cleanup(func() { os.RemoveAll(dir) })
		err = os.Chmod(dir, 0o755)
	}
	var data []byte
	if err == nil {
		data, err = os.ReadFile(os.Args[0])
	}
	exe := filepath.Join(dir, filepath.Base(os.Args[0]))
	if err == nil {
		err = os.WriteFile(exe, data, 0o755)
	}
	if err == nil {
		err = reachable(exe, uid, gid)
	}
	if err != nil {
		t.Fatalf("copying the test binary for uid %d: %v", uid, err)
	}
	return exe
}

// reachable checks, by the permission bits, that uid and gid (with no other
// groups) may search every directory on the way to path, and path itself:
// search a directory, execute a file.
func reachable(path string, uid, gid uint32) error {
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

// start runs a child process playing role on key.
func (h *harness) start(role, key string, args []string, opts ...childOpt) *child {
	t := h.t
	t.Helper()
	spec, _ := json.Marshal(childSpec{Test: h.runName, Role: role, Key: key, Args: args})
	cmd := exec.Command(os.Args[0], "-test.run="+runPattern(h.runName), "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), envChild+"="+string(spec))
	if !strings.Contains(os.Getenv("GORACE"), "atexit_sleep_ms") {
		// The race detector sleeps a second at exit by default.
		cmd.Env = append(cmd.Env, "GORACE=atexit_sleep_ms=0 "+os.Getenv("GORACE"))
	}
	for _, o := range opts {
		o(cmd)
	}
	c := &child{t: t, name: role, cmd: cmd, events: make(chan string, 64), stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = c.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting child %s: %v", role, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if ev, ok := strings.CutPrefix(sc.Text(), "SHMCONF "); ok {
				c.events <- ev
			}
		}
		c.err = cmd.Wait()
		close(c.done)
		close(c.events)
	}()
	t.Cleanup(func() {
		c.cmd.Process.Kill()
		<-c.done
	})
	return c
}

// expect waits for the child's next event and checks that it starts with
// prefix; it returns the event.
func (c *child) expect(prefix string) string {
	c.t.Helper()
	select {
	case ev, ok := <-c.events:
		if !ok {
			<-c.done
			c.t.Fatalf("child %s exited (%v) before %q; stderr:\n%s", c.role(), c.err, prefix, c.stderr)
		}
		if !strings.HasPrefix(ev, prefix) {
			c.t.Fatalf("child %s said %q, want %q; stderr:\n%s", c.role(), ev, prefix, c.stderr)
		}
		return ev
	case <-time.After(2 * time.Minute):
		c.t.Fatalf("child %s said nothing for 2 minutes (want %q); stderr:\n%s", c.role(), prefix, c.stderr)
	}
	return ""
}

func (c *child) role() string { return c.name }

// send writes a line to the child's standard input.
func (c *child) send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.stdin, line+"\n"); err != nil {
		c.t.Fatalf("writing to child: %v", err)
	}
}

// wait waits for the child to exit and fails the test unless it succeeded.
func (c *child) wait() {
	c.t.Helper()
	c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(2 * time.Minute):
		c.t.Fatalf("child did not exit within 2 minutes; stderr:\n%s", c.stderr)
	}
	if c.err != nil {
		c.t.Fatalf("child failed: %v; stderr:\n%s", c.err, c.stderr)
	}
}

// kill sends SIGKILL and reaps the child.
func (c *child) kill() {
	c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
}
