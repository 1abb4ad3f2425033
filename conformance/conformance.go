// Package conformance checks that a shared-memory backend gives package shm
// the behaviour it documents, the way testing/fstest.TestFS checks an
// fs.FS and nettest.TestConn checks a net.Conn.
//
// A backend's test calls Run with a constructor:
//
//	func TestConformance(t *testing.T) {
//		conformance.Run(t, func(testing.TB) backend.Backend { return mybackend.New() })
//	}
//
// Run covers data shared within a process and across processes, exclusive
// creation, waiting for a missing or not-yet-ready region, sizes and
// alignment, invalid keys and sizes, Unlink, use after Close, the lock
// (goroutines and processes, TryLock, deadlines, a holder killed with
// SIGKILL), foreign objects under a key, exact modes under a umask, a second
// user, creation races, many regions without leaks, and a 256 MiB region.
//
// Cross-process tests re-execute the test binary: the child runs the same
// test, whose Run call sees an environment variable and plays its part
// instead of running the suite. newBackend is called in the child too, with
// the parent's environment, so a backend configured at run time (a
// directory, say) should pass its configuration through an environment
// variable set with t.Setenv before Run. Tests that need root (another uid)
// skip, saying why, when not run as root.
package conformance

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
)

// Test is one behaviour of the suite.
type Test struct {
	Name string
	Run  func(h *H)
}

// H is what a test of the suite gets: the testing.T, the backend, and
// helpers to make keys and children.
type H struct {
	*harness
}

type harness struct {
	t          *testing.T
	b          backend.Backend
	newBackend func(testing.TB) backend.Backend
	runName    string // t.Name() of the Run call, to re-execute it
}

var keySeq atomic.Int64

// runID tells this run's keys from those of an earlier run that had the
// same PID (PIDs wrap) and left something behind when it was killed. It
// follows the sequence number, which keeps the keys' documented prefix.
var runID = fmt.Sprintf("r%06x", rand.Uint32()&0xffffff)

// Key returns a key unique to this process and test, and arranges for its
// object to be removed when the test ends.
func (h *harness) Key(tag string) string {
	name := fmt.Sprintf("cf-%s-%d-%d%s-%s", h.b.Name(), os.Getpid(), keySeq.Add(1), runID, tag)
	key := "/" + name
	h.t.Cleanup(func() { h.remove(name) })
	return key
}

// remove unlinks name until the backend says it is gone, and removes the
// temporary objects a killed creator may have left for it in the backend's
// directory, if it has one.
func (h *harness) remove(name string) {
	for range 10 {
		if err := h.b.Unlink(name); err != nil {
			break
		}
	}
	if d, ok := h.b.(interface{ Dir() string }); ok {
		tmps, _ := filepath.Glob(filepath.Join(d.Dir(), ".shmgo-*tmp."+name+".*"))
		for _, f := range tmps {
			os.Remove(f)
		}
	}
}

// Opt is the option that selects the backend under test.
func (h *harness) Opt() shm.Option { return shm.WithBackend(h.b) }

// Run runs every conformance test against the backend newBackend returns,
// each as a subtest of t.
func Run(t *testing.T, newBackend func(testing.TB) backend.Backend) {
	if runChild(t, newBackend) {
		return
	}
	for _, tc := range Tests() {
		t.Run(tc.Name, func(t *testing.T) {
			h := &H{&harness{t: t, b: newBackend(t), newBackend: newBackend, runName: parentName(t)}}
			tc.Run(h)
		})
	}
}

// parentName is the name of the Run call's test, from a subtest's t.
func parentName(t *testing.T) string {
	n := t.Name()
	return n[:strings.LastIndexByte(n, '/')]
}

// Tests returns the suite, to run a part of it or to list it.
func Tests() []Test {
	return []Test{
		{"ShareInProcess", testShareInProcess},
		{"ShareAcrossProcesses", testShareAcrossProcesses},
		{"CreateExisting", testCreateExisting},
		{"OpenMissing", testOpenMissing},
		{"OpenBeforeCreate", testOpenBeforeCreate},
		{"OpenWaitsForReady", testOpenWaitsForReady},
		{"SizeAndAlignment", testSizeAndAlignment},
		{"InvalidKeys", testInvalidKeys},
		{"InvalidSizes", testInvalidSizes},
		{"Unlink", testUnlink},
		{"UseAfterClose", testUseAfterClose},
		{"LockGoroutines", testLockGoroutines},
		{"LockProcesses", testLockProcesses},
		{"TryLockBusy", testTryLockBusy},
		{"LockContextDeadline", testLockContextDeadline},
		{"LockHolderKilled", testLockHolderKilled},
		{"LockDeathTrials", testLockDeathTrials},
		{"LockHolderZombie", testLockHolderZombie},
		{"LockHolderPIDReused", testLockHolderPIDReused},
		{"LockTakeoverRace", testLockTakeoverRace},
		{"LockKilledAtRandom", testLockKilledAtRandom},
		{"LockHolderExecs", testLockHolderExecs},
		{"TryLockDeadHolder", testTryLockDeadHolder},
		{"LockLoad", testLockLoad},
		{"LockLoadKilled", testLockLoadKilled},
		{"CloseWhileLocking", testCloseWhileLocking},
		{"FutexAcrossProcesses", testFutexAcrossProcesses},
		{"CondAcrossProcesses", testCondAcrossProcesses},
		{"CondWaiterKilled", testCondWaiterKilled},
		{"ReadOnly", testReadOnly},
		{"ViewChecks", testViewChecks},
		{"Squatter", testSquatter},
		{"InitPanics", testInitPanics},
		{"LockWaitersThreads", testLockWaitersThreads},
		{"ForeignObject", testForeignObject},
		{"Modes", testModes},
		{"CreateRace", testCreateRace},
		{"ManyRegions", testManyRegions},
		{"BigRegion", testBigRegion},
		{"Chown", testChown},
		{"Truncated", testTruncated},
		{"CreatorDiesBeforeReady", testCreatorDiesBeforeReady},
		{"ReplaceStale", testReplaceStale},
		{"BadInputs", testBadInputs},
	}
}

// is fails the test unless errors.Is(err, target) for every target.
func (h *harness) is(err error, targets ...error) {
	h.t.Helper()
	if err == nil {
		h.t.Fatalf("got no error, want %v", targets)
	}
	for _, target := range targets {
		if !errors.Is(err, target) {
			h.t.Fatalf("error %q (%T) does not match %v", err, err, target)
		}
	}
}

// ok fails the test on a non-nil error.
func (h *harness) ok(err error, what string) {
	h.t.Helper()
	if err != nil {
		h.t.Fatalf("%s: %v", what, err)
	}
}

// create makes a region and closes it when the test ends.
func (h *harness) create(key string, size int, opts ...shm.Option) *shm.Region {
	h.t.Helper()
	r, err := shm.Create(key, size, append([]shm.Option{h.Opt()}, opts...)...)
	h.ok(err, "Create "+key)
	h.t.Cleanup(func() { r.Close() })
	return r
}

// open attaches to a region and closes it when the test ends.
func (h *harness) open(key string) *shm.Region {
	h.t.Helper()
	r, err := shm.Open(key, 0, h.Opt())
	h.ok(err, "Open "+key)
	h.t.Cleanup(func() { r.Close() })
	return r
}
