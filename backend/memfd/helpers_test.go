package memfd_test

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/memfd"
	"github.com/shmgo/shm/backend/posix"
	"github.com/shmgo/shm/internal/reexec"
)

// Child processes: the test binary re-executed (internal/reexec) in a role,
// with its arguments. A child talks over stdin and stdout, one line at a
// time.
const trustEnv = "SHM_MEMFD_TEST_TRUST" // uid the child's backend trusts

func TestMain(m *testing.M) {
	for _, role := range []string{"owner", "open", "idle", "grow", "unlink"} {
		reexec.Register(role, func(c *reexec.Child) error {
			os.Exit(runRole(c, role, c.Args()))
			return nil
		})
	}
	reexec.Main()
	os.Exit(m.Run())
}

var keySeq atomic.Int64

// testKey returns a fresh key with this package's prefix.
func testKey(tag string) string {
	return fmt.Sprintf("/t-memfd-%d-%d-%s", os.Getpid(), keySeq.Add(1), tag)
}

// asUser runs the child as uid:gid with the given supplementary groups
// (reexec.AsUser); it skips the test when not run as root.
func asUser(t testing.TB, uid, gid uint32, groups ...uint32) reexec.Option {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("running a child as another uid needs root")
	}
	return reexec.AsUser(uid, gid, groups...)
}

func trusting(uid int) reexec.Option { return reexec.Env(trustEnv + "=" + strconv.Itoa(uid)) }

// startChild starts a child playing role with args; its reports, and its
// exit, are waited for 60 seconds at most.
func startChild(t testing.TB, role string, args []string, opts ...reexec.Option) *reexec.Proc {
	t.Helper()
	return reexec.Start(t, role, args, append([]reexec.Option{reexec.Timeout(60 * time.Second)}, opts...)...)
}

func childBackend() *memfd.Backend {
	if u := os.Getenv(trustEnv); u != "" {
		uid, _ := strconv.Atoi(u)
		return memfd.New(memfd.WithTrustedUIDs(uid))
	}
	return memfd.New()
}

// runRole plays a child's part and returns its exit code.
func runRole(c *reexec.Child, role string, args []string) int {
	say, hear := c.Say, c.Hear
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
