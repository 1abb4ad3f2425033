package conformance

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/internal/reexec"
)

// Cross-process tests re-execute the test binary (package internal/reexec).
// The child runs the same top-level test (reexec.InTest), whose call to Run
// sees that it is the child and plays the role it names instead of running
// the suite: the role needs the backend, which only Run's caller can make.
// The child's arguments are the region's key, then the role's own.

// A role is what a child process does; it reports with c.say and listens
// with c.hear. Returning an error fails the child (exit status 1).
type role func(c *childCtx) error

type childCtx struct {
	*reexec.Child
	key  string   // the region's key
	args []string // role-specific
	b    backend.Backend
}

func (c *childCtx) say(format string, args ...any) { c.Say(format, args...) }

// hear waits for the next line from the parent.
func (c *childCtx) hear() string { return c.Hear() }

// arg is the role's i'th argument, as a number.
func (c *childCtx) arg(i int) int {
	n, _ := strconv.Atoi(c.args[i])
	return n
}

// runChild plays the role this process was started for, if it is a child
// of the Run call t, and exits; it returns false when it is not.
func runChild(t *testing.T, newBackend func(testing.TB) backend.Backend) bool {
	rc, ok := reexec.In(t)
	if !ok {
		return false
	}
	r, ok := roles[rc.Role()]
	if !ok || len(rc.Args()) == 0 {
		rc.Exit(fmt.Errorf("unknown role %q or no key", rc.Role()))
	}
	c := &childCtx{Child: rc, key: rc.Arg(0), args: rc.Args()[1:], b: newBackend(t)}
	rc.Exit(r(c))
	return true
}

// start runs a child process playing role on key.
func (h *harness) start(role, key string, args []string, opts ...reexec.Option) *reexec.Proc {
	h.t.Helper()
	opts = append([]reexec.Option{reexec.InTest(h.runName)}, opts...)
	return reexec.Start(h.t, role, append([]string{key}, args...), opts...)
}

// asOther runs a child as uid 65534, the other user of the suite.
var asOther = reexec.AsUser(65534, 65534)
