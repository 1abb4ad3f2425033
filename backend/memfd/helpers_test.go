package memfd_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/memfd"
	"github.com/shmgo/shm/backend/posix"
)

// Child processes: the test binary re-executed with roleEnv naming a role
// and argsEnv its arguments (tab-separated). A child talks over stdin and
// stdout, one line at a time.
const (
	roleEnv  = "SHM_MEMFD_TEST_ROLE"
	argsEnv  = "SHM_MEMFD_TEST_ARGS"
	trustEnv = "SHM_MEMFD_TEST_TRUST" // uid the child's backend trusts
)

func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(runRole(role, strings.Split(os.Getenv(argsEnv), "\t")))
	}
	code := m.Run()
	cleanupExe()
	os.Exit(code)
}

var keySeq atomic.Int64

// testKey returns a fresh key with this package's prefix.
func testKey(tag string) string {
	return fmt.Sprintf("/t-memfd-%d-%d-%s", os.Getpid(), keySeq.Add(1), tag)
}

// child is a running child process.
type child struct {
	t     testing.TB
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
	done  chan struct{}
	err   error
}

type childOpt func(*exec.Cmd)

// asUser runs the child as uid:gid with the given supplementary groups,
// from a copy of the test binary that every user may execute.
func asUser(t testing.TB, uid, gid uint32, groups ...uint32) childOpt {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("running a child as another uid needs root")
	}
	exe := exeForOthers(t)
	return func(cmd *exec.Cmd) {
		cmd.Path = exe
		cmd.Args[0] = exe
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: append([]uint32{}, groups...)}}
	}
}

func trusting(uid int) childOpt {
	return func(cmd *exec.Cmd) { cmd.Env = append(cmd.Env, trustEnv+"="+strconv.Itoa(uid)) }
}

var (
	exeOnce sync.Once
	exePath string
	exeErr  error
)

func exeForOthers(t testing.TB) string {
	exeOnce.Do(func() {
		dir, err := os.MkdirTemp("", "t-memfd-exe-")
		if err != nil {
			exeErr = err
			return
		}
		os.Chmod(dir, 0o755)
		data, err := os.ReadFile(os.Args[0])
		if err != nil {
			exeErr = err
			return
		}
		exePath = filepath.Join(dir, filepath.Base(os.Args[0]))
		exeErr = os.WriteFile(exePath, data, 0o755)
	})
	if exeErr != nil {
		t.Fatalf("copying the test binary for another user: %v", exeErr)
	}
	return exePath
}

// cleanupExe removes the copy of the test binary made for other users.
func cleanupExe() {
	if exePath != "" {
		os.RemoveAll(filepath.Dir(exePath))
	}
}

func startChild(t testing.TB, role string, args []string, opts ...childOpt) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"="+role, argsEnv+"="+strings.Join(args, "\t"))
	cmd.Stderr = os.Stderr
	for _, o := range opts {
		o(cmd)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting child %s: %v", role, err)
	}
	c := &child{t: t, cmd: cmd, in: in, lines: make(chan string, 256), done: make(chan struct{})}
	go func() {
		// Wait only after the last read: Wait closes the pipe.
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		c.err = cmd.Wait()
		close(c.done)
		close(c.lines)
	}()
	t.Cleanup(func() {
		c.in.Close()
		cmd.Process.Kill()
		<-c.done
	})
	return c
}

// expect returns the child's next line; it fails the test if the child
// ends first or says nothing for a long time.
func (c *child) expect() string {
	c.t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			<-c.done
			c.t.Fatalf("child ended without a word: %v", c.err)
		}
		return l
	case <-time.After(60 * time.Second):
		c.t.Fatal("child silent for 60s")
	}
	return ""
}

func (c *child) send(line string) {
	fmt.Fprintln(c.in, line)
}

// wait waits for the child to exit and fails the test if it failed.
func (c *child) wait() {
	c.t.Helper()
	c.in.Close()
	select {
	case <-c.done:
	case <-time.After(60 * time.Second):
		c.t.Fatal("child did not exit within 60s")
	}
	if c.err != nil {
		c.t.Fatalf("child: %v", c.err)
	}
}

func childBackend() *memfd.Backend {
	if u := os.Getenv(trustEnv); u != "" {
		uid, _ := strconv.Atoi(u)
		return memfd.New(memfd.WithTrustedUIDs(uid))
	}
	return memfd.New()
}

// runRole plays a child's part and returns its exit code.
func runRole(role string, args []string) int {
	in := bufio.NewScanner(os.Stdin)
	say := func(format string, a ...any) { fmt.Printf(format+"\n", a...) }
	hear := func() string {
		if in.Scan() {
			return in.Text()
		}
		return ""
	}
	b := childBackend()
	opt := shm.WithBackend(b)
	switch role {
	case "owner": // args: key mode [posix]; writes "owner data"; then on "exit" closes, on "unlink" unlinks and closes, on "crash" exits at once
		mode, _ := strconv.ParseUint(args[1], 8, 32)
		if len(args) > 2 && args[2] == "posix" {
			opt = shm.WithBackend(posix.New())
		}
		r, err := shm.Create(args[0], 4096, opt, shm.WithMode(os.FileMode(mode)))
		if err != nil {
			say("error %v", err)
			return 1
		}
		copy(r.Bytes(), "owner data")
		say("ready")
		switch hear() {
		case "crash":
			os.Exit(0) // no Close, no Unlink
		case "unlink":
			r.Unlink()
		}
		r.Close()
		return 0
	case "open": // args: key; reports "ok <data>" or "err <perm> <notexist> <msg>", then writes
		r, err := shm.Open(args[0], 0, opt)
		if err != nil {
			say("err %v %v %v", errors.Is(err, os.ErrPermission), errors.Is(err, os.ErrNotExist), err)
			return 0
		}
		say("ok %s", strings.TrimRight(string(r.Bytes()[:16]), "\x00"))
		copy(r.Bytes(), "child data")
		r.Close()
		return 0
	case "idle": // args: key count [refill]; opens count connections that send nothing, says "connected N", holds them (with refill, connecting again each one the owner closes) until stdin closes
		return idleClient(args[0], args[1], len(args) > 2 && args[2] == "refill", hear, say)
	case "grow": // args: size; on "go", creates memfd regions of size bytes until one fails, then says "refused N <enomem> <msg>"
		return growUntilRefused(args[0], hear, say)
	case "unlink": // args: key
		err := b.Unlink(strings.TrimPrefix(args[0], "/"))
		if err != nil {
			say("err %v %v %v", errors.Is(err, os.ErrPermission), errors.Is(err, os.ErrNotExist), err)
			return 0
		}
		say("ok")
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown role", role)
	return 2
}

// settle polls f until it returns true, with backoff, up to a minute.
func settle(f func() bool) bool {
	wait := time.Millisecond
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		if f() {
			return true
		}
		time.Sleep(wait)
		wait = min(2*wait, 100*time.Millisecond)
		runtime.GC()
	}
	return f()
}
