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
// SIGKILL, a waiter not starved by a process that relocks at once), the condition and Futex across processes (Signal, Broadcast to
// every waiter, waiters and notifiers killed, the OS threads of 64
// waiters), read-only users, typed views, foreign objects under a key,
// exact modes under a umask, a second user, creation races, many regions
// without leaks, and a 256 MiB region.
// go test -run selects some of its tests as usual
// (-run 'TestConformance/Lock'); their names are not part of the API.
//
// # What a backend must provide
//
// The suite uses a backend only through what package backend documents. A
// backend.Backend whose segments' Bytes are shared memory, whose Create
// applies the mode exactly and publishes exclusively, and whose errors
// match the fs sentinels and backend.ErrForeign as package backend says
// passes every test that needs nothing more. The optional interfaces add
// these checks; a test whose interface the backend lacks logs so and
// checks what package shm promises without it instead:
//
//   - backend.Owned on segments (or an Open that refuses untrusted owners
//     itself, with backend.ErrUntrusted): needed, not optional, for
//     Squatter: package shm refuses a region of an untrusted owner on every
//     backend, and can do so only thus.
//   - backend.Fder on segments: Truncated shrinks the object through the
//     descriptor and checks that package shm survives it (backend.Sealed
//     segments must refuse instead); Modes and Chown compare what shm.Stat
//     says with what was asked, which Stat can learn only from the
//     descriptor (or from the listing of a backend.Lister that is also a
//     backend.IDOpener); BigRegion checks the room on the descriptor's
//     filesystem.
//   - backend.Chowner on segments: Chown changes the owner; without it,
//     Region.Chown must fail with shm.ErrInvalidOption.
//   - backend.ReadOnlyOpener: ReadOnly opens a region as a user who may only
//     read it; without it, WithReadOnly must fail with
//     shm.ErrInvalidOption.
//   - backend.Pender: CreatorDiesBeforeReady expects an Open to fail at once
//     with shm.ErrOwnerDead for a creator killed before publishing, and
//     removes what it left with RemovePending (as does the cleanup of every
//     test, and the leak checks of InitPanics and BadInputs look for it);
//     so does backend.VisibleBeforePublish, for objects visible from Create
//     on. Without either, Open must simply not find the key.
//   - backend.Lister: ManyRegions and the leak checks of InitPanics and
//     BadInputs look for objects left behind in the listing (by ID, through
//     backend.IDOpener, for objects listed without a name).
//
// ReplaceStale expects WithReplaceStale to replace a killed creator's
// region that nobody maps. Package backend documents no way for a backend
// to prove that nobody maps one of its objects: package shm then counts
// the processes of /proc/*/maps that map the segment's descriptor
// (backend.Fder), which proves nothing where some process cannot be
// inspected. Where package shm has no proof, the test checks that it
// refuses with shm.ErrExist and shm.ErrInUse, as shm.Remove documents,
// and says so.
//
// Cross-process tests re-execute the test binary: the child runs the same
// test, whose Run call sees an environment variable and plays its part
// instead of running the suite. newBackend is called in the child too, with
// the parent's environment, so a backend configured at run time (a
// directory, say) should pass its configuration through an environment
// variable set with t.Setenv before Run. Tests that need root (another uid)
// skip, saying why, when not run as root.
//
// The suite is not exported test by test: its cross-process tests need
// Run's re-execution of the calling test, and go test -run already
// selects a part of it.
package conformance

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
)

// test is one behaviour of the suite.
type test struct {
	name string
	run  func(h *harness)
}

// harness is what a test of the suite gets: the testing.T, the backend, and
// helpers to make keys and children.
type harness struct {
	t          *testing.T
	b          backend.Backend
	newBackend func(testing.TB) backend.Backend
	runName    string // t.Name() of the Run call, to re-execute it

	mu    sync.Mutex
	names []string // of every key the test made, for cleanup and leak checks

	listNoted bool // list logged an error about another program's object
}

var keySeq atomic.Int64

// runID tells this run's keys from those of an earlier run that had the
// same PID (PIDs wrap) and left something behind when it was killed. It
// follows the sequence number, which keeps the keys' documented prefix.
var runID = fmt.Sprintf("r%06x", rand.Uint32()&0xffffff)

// Key returns a key unique to this process and test, and arranges for its
// object to be removed when the test ends.
func (h *harness) Key(tag string) string {
	key := fmt.Sprintf("/cf-%s-%d-%d%s-%s", h.b.Name(), os.Getpid(), keySeq.Add(1), runID, tag)
	h.track(key)
	return key
}

// track arranges for the object under key (made by h.Key, or derived from
// such a key) to be removed when the test ends, and for the leak checks to
// look for what is left of it.
func (h *harness) track(key string) {
	name := strings.TrimPrefix(key, "/")
	h.mu.Lock()
	h.names = append(h.names, name)
	h.mu.Unlock()
	h.t.Cleanup(func() { h.remove(name) })
}

// tracked returns the names of every key the test made.
func (h *harness) tracked() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.names...)
}

// remove unlinks name until the backend says it is gone, and removes the
// objects being created for it (backend.Pender) that a killed creator may
// have left.
func (h *harness) remove(name string) {
	for range 10 {
		if err := h.b.Unlink(name); err != nil {
			break
		}
	}
	if p, ok := h.b.(backend.Pender); ok {
		objs, _ := p.Pending(name, 0)
		for _, o := range objs {
			p.RemovePending(o.ID)
		}
	}
}

// Opt is the option that selects the backend under test.
func (h *harness) Opt() shm.Option { return shm.WithBackend(h.b) }

// Run runs every conformance test against the backend newBackend returns,
// each as a subtest of t (go test -run selects some: -run
// 'TestConformance/Lock'). Test names are not part of the API.
//
// newBackend is called once per test, and again in every child process.
// Children re-execute the test that called Run, selected by its name
// (reexec.InTest): run alone, that test must reach the same Run call.
func Run(t *testing.T, newBackend func(testing.TB) backend.Backend) {
	if runChild(t, newBackend) {
		return
	}
	for _, tc := range tests() {
		t.Run(tc.name, func(t *testing.T) {
			h := &harness{t: t, b: newBackend(t), newBackend: newBackend, runName: parentName(t)}
			tc.run(h)
		})
	}
}

// parentName is the name of the Run call's test, from a subtest's t.
func parentName(t *testing.T) string {
	n := t.Name()
	return n[:strings.LastIndexByte(n, '/')]
}

// tests returns the suite.
func tests() []test {
	return []test{
		{"ShareInProcess", testShareInProcess},
		{"ShareAcrossProcesses", testShareAcrossProcesses},
		{"CreateExisting", testCreateExisting},
		{"OpenMissing", testOpenMissing},
		{"OpenEndedContext", testOpenEndedContext},
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
		{"LockStarvation", testLockStarvation},
		{"CloseWhileLocking", testCloseWhileLocking},
		{"FutexAcrossProcesses", testFutexAcrossProcesses},
		{"CondAcrossProcesses", testCondAcrossProcesses},
		{"CondWaiterKilled", testCondWaiterKilled},
		{"BroadcastAcrossProcesses", testBroadcastAcrossProcesses},
		{"CondHolderDied", testCondHolderDied},
		{"NotifierDies", testNotifierDies},
		{"ReadOnly", testReadOnly},
		{"ViewChecks", testViewChecks},
		{"Squatter", testSquatter},
		{"InitPanics", testInitPanics},
		{"LockWaitersThreads", testLockWaitersThreads},
		{"WaitersThreads", testWaitersThreads},
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
