package reexec_test

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shmgo/shm/internal/reexec"
)

func init() { reexec.LockMainThread() }

func TestMain(m *testing.M) {
	reexec.Register("mainthread", func(c *reexec.Child) error {
		// Busy goroutines, and system calls long enough for the runtime
		// to hand this goroutine's P to another thread: an unlocked
		// goroutine moves to other threads.
		stop := make(chan struct{})
		defer close(stop)
		for range 4 {
			go func() {
				for {
					select {
					case <-stop:
						return
					default:
						runtime.Gosched()
					}
				}
			}()
		}
		moved := 0
		for range 200 {
			syscall.Nanosleep(&syscall.Timespec{Nsec: 500_000}, nil)
			if syscall.Gettid() != os.Getpid() {
				moved++
			}
		}
		c.Say("off the main thread %d times", moved)
		return nil
	})
	reexec.Register("echo", func(c *reexec.Child) error {
		c.Say("args %s", strings.Join(c.Args(), ","))
		for {
			line := c.Hear()
			if line == "" {
				return nil
			}
			c.Say("heard %s", line)
		}
	})
	reexec.Register("quote", func(c *reexec.Child) error {
		c.Say("%q", c.Args())
		return nil
	})
	reexec.Register("reader", func(c *reexec.Child) error {
		c.Hear()
		return nil
	})
	reexec.Register("parent-of-reader", func(c *reexec.Child) error {
		cmd, err := reexec.Command("reader", nil)
		if err != nil {
			return err
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := cmd.Start(); err != nil {
			return err
		}
		c.Say("started %d", cmd.Process.Pid)
		time.Sleep(time.Hour) // until killed
		return nil
	})
	reexec.Register("fail", func(c *reexec.Child) error {
		os.Stdout.WriteString("not a report\n")
		return errors.New("failed on purpose")
	})
	reexec.Register("sleep", func(c *reexec.Child) error {
		c.Say("sleeping")
		select {}
	})
	reexec.Register("env", func(c *reexec.Child) error {
		c.Say("%s", os.Getenv("REEXEC_TEST_VAR"))
		return nil
	})
	reexec.Main() // a child of InTest returns: its test plays the role
	os.Exit(m.Run())
}

func TestReportsAndLines(t *testing.T) {
	p := reexec.Start(t, "echo", []string{"a", "b c"})
	if r := p.Expect("args"); r != "args a,b c" {
		t.Fatalf("report %q", r)
	}
	p.Send("one")
	if r := p.Expect("heard"); r != "heard one" {
		t.Fatalf("report %q", r)
	}
	p.Send("two")
	p.ExpectLine("heard two")
	p.Wait()
	if _, ok := p.Next(); ok {
		t.Fatal("a report after the child exited")
	}
}

func TestFailure(t *testing.T) {
	p := reexec.Start(t, "fail", nil)
	r, ok := p.Next()
	if !ok || r != "error failed on purpose" {
		t.Fatalf("report %q %v", r, ok)
	}
	<-p.Done()
	if p.Err() == nil {
		t.Fatal("the failed child exited 0")
	}
	if out := p.Output(); !strings.Contains(out, "not a report") || !strings.Contains(out, "child fail: failed on purpose") {
		t.Fatalf("output %q lacks the child's other lines or its error", out)
	}

}

func TestKill(t *testing.T) {
	p := reexec.Start(t, "sleep", nil)
	p.Expect("sleeping")
	start := time.Now()
	p.Kill()
	if p.Err() == nil {
		t.Fatal("a killed child exited 0")
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("Kill took too long")
	}
}

func TestEnv(t *testing.T) {
	p := reexec.Start(t, "env", nil, reexec.Env("REEXEC_TEST_VAR=set"))
	if r := p.Expect(""); r != "set" {
		t.Fatalf("child sees %q", r)
	}
	p.Wait()
}

func TestInTest(t *testing.T) {
	t.Run("sub", func(t *testing.T) {
		if c, ok := reexec.In(t); ok {
			if c.Role() != "intest" || c.Test() != t.Name() || c.Arg(0) != "x" || c.Arg(1) != "" {
				c.Exit(errors.New("wrong spec: " + c.Role() + " " + c.Test() + " " + c.Arg(0)))
			}
			c.Say("in %s", t.Name())
			c.Exit(nil)
		}
		p := reexec.Start(t, "intest", []string{"x"}, reexec.InTest(t.Name()))
		if r := p.Expect("in"); r != "in "+t.Name() {
			t.Fatalf("report %q", r)
		}
		p.Wait()
	})
}

func TestAsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: running a child as another uid needs root (CI runs as root)")
	}
	p := reexec.Start(t, "echo", nil, reexec.AsUser(65534, 65534))
	p.Expect("args")
	p.Wait()
}

func TestPattern(t *testing.T) {
	if got := reexec.Pattern("TestA/b.c"); got != `^TestA$/^b\.c$` {
		t.Fatalf("Pattern: %q", got)
	}
}

func TestPrefix(t *testing.T) {
	p := reexec.Start(t, "env", nil, reexec.Prefix("env", "REEXEC_TEST_VAR=through env(1)"))
	if r := p.Expect(""); r != "through env(1)" {
		t.Fatalf("child sees %q", r)
	}
	p.Wait()
}

func TestRerun(t *testing.T) {
	t.Run("sub", func(t *testing.T) {
		if !reexec.Rerun(t, reexec.Env("REEXEC_TEST_VAR=rerun")) {
			return // the child passed
		}
		// The child: the same subtest, with the options.
		if !reexec.IsChild() || os.Getenv("REEXEC_TEST_VAR") != "rerun" {
			t.Fatalf("rerun: child %v, REEXEC_TEST_VAR=%q", reexec.IsChild(), os.Getenv("REEXEC_TEST_VAR"))
		}
		if _, ok := reexec.In(t); ok {
			t.Fatal("In reports a rerun as a role to play")
		}
	})
}

// failTB records a Fatal instead of failing the test.
type failTB struct {
	testing.TB
	failed string
}

func (f *failTB) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (f *failTB) Fatal(args ...any) { f.Fatalf("%s", fmt.Sprint(args...)) }

// A test that fails in the child fails the parent's Rerun, saying why.
func TestRerunFailure(t *testing.T) {
	t.Run("sub", func(t *testing.T) {
		if reexec.IsChild() {
			t.Fatal("failing on purpose, in the child")
		}
		f := &failTB{TB: t}
		done := make(chan bool)
		go func() {
			defer close(done)
			reexec.Rerun(f)
		}()
		<-done
		if !strings.Contains(f.failed, "did not pass") || !strings.Contains(f.failed, "failing on purpose") {
			t.Fatalf("Rerun of a failing test: %q", f.failed)
		}
	})
}

// With LockMainThread, Main plays its roles on the main thread.
func TestLockMainThread(t *testing.T) {
	p := reexec.Start(t, "mainthread", nil)
	p.ExpectLine("off the main thread 0 times")
	p.Wait()
}

// Arguments reach the child byte for byte, whatever they hold.
func TestArgsExact(t *testing.T) {
	args := []string{"", "\xff\xfe not UTF-8", "a\nnewline", "a NUL\x00", `"quoted" \ esc\x1b[2J`}
	p := reexec.Start(t, "quote", args)
	p.ExpectLine(fmt.Sprintf("%q", args))
	p.Wait()
}

// The end of a test closes the child's input as it kills it: a process
// the child started, which holds the child's output and waits for input,
// ends too, so that the test ends at once.
func TestCleanupEndsGrandchild(t *testing.T) {
	start := time.Now()
	t.Run("sub", func(t *testing.T) {
		p := reexec.Start(t, "parent-of-reader", nil, reexec.Timeout(20*time.Second))
		p.Expect("started")
	})
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("the test took %v to end", d)
	}
}

// Failure messages call a child by its Name and role.
func TestName(t *testing.T) {
	f := &failTB{TB: t}
	done := make(chan bool)
	go func() {
		defer close(done)
		reexec.Start(f, "fail", nil, reexec.Name("the failing one")).Expect("never")
	}()
	<-done
	if !strings.Contains(f.failed, `child "the failing one" (fail) said "error failed on purpose", want "never"`) {
		t.Fatalf("failure message %q", f.failed)
	}
}
