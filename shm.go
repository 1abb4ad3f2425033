// Package shm shares memory between processes on Linux, in pure Go.
//
// An owner creates a region from a key and a size; users attach to it by
// key, waiting up to a timeout for the owner; all of them see the same
// bytes, as typed values if they like (View, Slice). A lock inside the
// region excludes other processes and other goroutines, and survives the
// death of its holder: the next locker gets the lock with ErrOwnerDead and
// can repair the data it guards. A condition on the lock (Lock.Wait,
// Signal, Broadcast) and Futex words let a process sleep until another
// writes, without polling.
//
//	r, err := shm.Create("/app-status", 4096)          // the owner
//	u, err := shm.Open("/app-status", 2*time.Second)   // a user, elsewhere
//	st, err := shm.View[Status](u, 0)
//	l, err := u.Lock()
//	st.Seq++
//	l.Unlock()
//	u.Broadcast()
//
// It re-implements geopm::SharedMemory from the GEOPM HPC runtime and fixes
// what that class lacks:
//
//   - A user never sees a half-made region: every region starts with a
//     header (magic, layout version, sizes, key, creator identity and a
//     ready state) that the owner writes before the region becomes visible
//     or ready. Open checks it and reports anything foreign as ErrCorrupt.
//   - The lock names its holder by a slot of the region's user table, whose
//     liveness the kernel itself marks when a process dies (a robust futex
//     list kept by a guardian thread of each process). A holder killed at
//     any moment, in any PID namespace, is noticed within milliseconds and
//     the lock taken over with ErrOwnerDead. See Region.Lock.
//   - Pages are reserved at Create (fallocate), so a full /dev/shm is an
//     ENOSPC error from Create, never a SIGBUS later.
//   - Blocking calls take a timeout or a context.Context, and keep to it
//     whatever a peer does; Open accepts only regions whose owner it trusts
//     (WithTrustedUIDs).
//
// Backends live in their own packages under backend/: POSIX shared memory
// in /dev/shm (backend/posix, the default), SysV segments (backend/sysv),
// sealed memfds attached through an abstract socket (backend/memfd, for
// containers without /dev/shm) and mapped files (backend/file, for volumes
// shared between containers). WithBackend, a key that names its backend
// ("memfd:/name"), the SHM_BACKEND environment variable or an automatic
// choice pick one (see EnvBackend). Package conformance checks any backend
// against the behaviour documented here.
//
// List, Stat, Remove and RemoveStale inspect regions and clean up those
// whose creator died and that nobody maps (cmd/shmctl is the same as a
// command); WithReplaceStale lets Create take over such a key.
// Region.File, OpenFile, SendRegion and ReceiveRegion pass a region by
// descriptor.
//
// The race detector (go test -race) sees the happens-before edges of this
// package's own primitives: taking and releasing a region's lock (Lock,
// Unlock, and Lock.Wait, which releases and takes it again) and the methods
// of Futex, so that what goroutines share in Go memory under them is
// checked as usual. It cannot see other processes, nor the caller's own
// sync/atomic operations on the shared memory, which order nothing in its
// eyes; and it checks no plain access to the region's memory, which is
// outside the Go heap.
//
// Errors are *Error values wrapping the sentinel errors of this package;
// test them with errors.Is. ErrExist, ErrNotExist, ErrTimeout and ErrClosed
// also match fs.ErrExist, fs.ErrNotExist, os.ErrDeadlineExceeded and
// fs.ErrClosed, and permission failures match fs.ErrPermission.
package shm

import (
	"context"
	"errors"
	"io/fs"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/internal/sys"
)

// MaxSize is the largest data size a region may have: 1 TiB.
const MaxSize = 1 << 40

// DefaultMode is the permission of a new region: read and write for its
// owner only (GEOPM's "secure" owner).
const DefaultMode fs.FileMode = 0o600

// Option configures Create, Open and OpenContext (and, WithBackend alone,
// Stat and Remove). Each option's doc says which calls it applies to; given
// to another, it makes the call fail with ErrInvalidOption.
type Option func(*options) error

type options struct {
	backend  backend.Backend
	mode     fs.FileMode
	init     func([]byte) error
	users    int
	replace  bool
	guard    bool
	readOnly bool
	trusted  map[int]bool // owners Open accepts besides this process's uid and root
	anyOwner bool

	op opKind // what the options are for
}

// opKind is the call that options are given to: an option that means
// nothing to it is an error (ErrInvalidOption), not silently ignored.
type opKind int

const (
	opCreate opKind = 1 << iota
	opOpen
	opStat // Stat and Remove
)

// applies fails unless the options are for one of ops.
func (o *options) applies(name string, ops opKind) error {
	if o.op&ops != 0 {
		return nil
	}
	return because(name+" does not apply to "+o.op.String(), nil, ErrInvalidOption)
}

func (k opKind) String() string {
	switch k {
	case opCreate:
		return "Create"
	case opOpen:
		return "Open"
	}
	return "Stat or Remove"
}

// trusts tells whether Open accepts a region owned by uid.
func (o *options) trusts(uid int) bool {
	return o.anyOwner || uid == 0 || uid == os.Geteuid() || o.trusted[uid]
}

// WithBackend chooses the backend that holds the region. Without it, the
// key's prefix, SHM_BACKEND or the automatic choice decide (see EnvBackend).
// It applies to every call that takes options.
func WithBackend(b backend.Backend) Option {
	return func(o *options) error {
		if b == nil {
			return because("nil backend", nil, ErrInvalidOption)
		}
		o.backend = b
		return nil
	}
}

// WithMode sets the permission bits of a new region (default 0600). They are
// applied exactly, whatever the process umask, and the umask is not touched.
// It applies to Create.
func WithMode(perm fs.FileMode) Option {
	return func(o *options) error {
		if err := o.applies("WithMode", opCreate); err != nil {
			return err
		}
		if perm&^fs.ModePerm != 0 {
			return because("mode "+perm.String()+" has bits beyond 0777", nil, ErrInvalidOption)
		}
		o.mode = perm
		return nil
	}
}

// WithInit runs init on the new region's data before any user can attach:
// Open waits until it has returned. When it returns an error, Create
// removes the region and returns that error; when it panics, Create
// removes the region and the panic goes on. It applies to Create.
func WithInit(init func(data []byte) error) Option {
	return func(o *options) error {
		if err := o.applies("WithInit", opCreate); err != nil {
			return err
		}
		o.init = init
		return nil
	}
}

// WithReplaceStale lets Create take over a key left behind by a crashed
// owner: when the key exists, its creator is dead and no process maps it,
// Create removes it (as Remove would) and creates the region anew. When
// someone still uses it, Create fails with ErrExist as without this option,
// and the error says why. Objects under the key that are not regions of
// ours are never removed. It applies to Create.
func WithReplaceStale() Option {
	return func(o *options) error {
		if err := o.applies("WithReplaceStale", opCreate); err != nil {
			return err
		}
		o.replace = true
		return nil
	}
}

// WithRobustLock does nothing; it is kept so that programs written for
// earlier versions still compile. Every region's lock now recovers from the
// death of its holder in any PID namespace, as this option used to arrange:
// the next Lock returns the lock with ErrOwnerDead (see Region.Lock). It
// applies to Create.
//
// Deprecated: every lock is robust; drop the option and use Create without
// it. Info.Lock.Robust (Stat, List) tells whether the kernel itself marks
// the holder's death.
func WithRobustLock() Option {
	return func(o *options) error { return o.applies("WithRobustLock", opCreate) }
}

// WithFaultGuard makes the lock of the Region that Create or Open returns
// survive a peer that truncates the object (POSIX and file regions can be
// truncated by any process that may write them; memfd and SysV regions
// cannot shrink). Another process's truncation makes a touch of a page past
// the new end raise SIGBUS, which kills a Go program; with this option Lock,
// TryLock, Unlock and MarkConsistent run under debug.SetPanicOnFault and
// return ErrCorrupt instead. Without it, only the lock's waiting path and
// the header checks are guarded, and the uncontended Lock and Unlock cost
// what a C mutex costs. Use Region.Guard for your own accesses to the
// data. It applies to Create and Open.
func WithFaultGuard() Option {
	return func(o *options) error {
		if err := o.applies("WithFaultGuard", opCreate|opOpen); err != nil {
			return err
		}
		o.guard = true
		return nil
	}
}

// WithReadOnly makes Open map the region for reading only: read permission
// on the region suffices, and Bytes is read-only memory (a write to it
// faults, which kills the process). A read-only Region takes no slot of the
// user table and cannot lock: Lock, TryLock, LockContext, Signal and
// Broadcast fail with an error matching fs.ErrPermission. It can Wait on a
// Futex and Wake one. It applies to Open.
func WithReadOnly() Option {
	return func(o *options) error {
		if err := o.applies("WithReadOnly", opOpen); err != nil {
			return err
		}
		o.readOnly = true
		return nil
	}
}

// WithTrustedUIDs makes Open accept regions owned by these uids too. By
// default Open accepts only a region whose object belongs to this
// process's effective uid or to root, on every backend (a file's owner, a
// SysV segment's owner, the uid of the process serving a memfd): anyone
// may create an object under a key first, and a process that attached to
// a squatter's region would trust data and a lock the squatter controls.
// A region owned by another uid fails with an error matching
// ErrUntrustedOwner. A root controller attaching to the regions of a user's
// application (GEOPM's case) names that user here. It applies to Open.
func WithTrustedUIDs(uids ...int) Option {
	return func(o *options) error {
		if err := o.applies("WithTrustedUIDs", opOpen); err != nil {
			return err
		}
		if o.trusted == nil {
			o.trusted = map[int]bool{}
		}
		for _, u := range uids {
			if u < 0 {
				return because("negative uid "+strconv.Itoa(u), nil, ErrInvalidOption)
			}
			o.trusted[u] = true
		}
		return nil
	}
}

// WithAnyOwner makes Open accept a region whoever owns it: for data that
// this process does not trust anyway. It applies to Open.
func WithAnyOwner() Option {
	return func(o *options) error {
		if err := o.applies("WithAnyOwner", opOpen); err != nil {
			return err
		}
		o.anyOwner = true
		return nil
	}
}

// WithMaxUsers sets how many Regions, in all processes together, may use
// the new region's lock at once (DefaultUsers when not given; 1 to
// MaxUsers). A Region takes a slot of the region's user table, 32 bytes of
// its header, at its first Lock, TryLock, LockContext or Wait, and keeps it
// until Close: the slot tells the lock whether the Region's process lives.
// Regions that never lock take none. A first lock that finds every slot
// taken fails with ErrTooManyUsers. It applies to Create.
func WithMaxUsers(n int) Option {
	return func(o *options) error {
		if err := o.applies("WithMaxUsers", opCreate); err != nil {
			return err
		}
		if n < 1 || n > MaxUsers {
			return because("max users "+strconv.Itoa(n)+" is not between 1 and "+strconv.Itoa(MaxUsers), nil, ErrInvalidOption)
		}
		o.users = n
		return nil
	}
}

func buildOptions(opts []Option, op opKind) (options, error) {
	o := options{mode: DefaultMode, users: DefaultUsers, op: op}
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(&o); err != nil {
			return o, err
		}
	}
	return o, nil
}

// Region is one process's mapping of a shared-memory region. Its methods
// may be called from several goroutines, Close included: a Close that runs
// while another goroutine waits for the lock makes that wait end with
// ErrClosed before the memory goes away. (The memory of Bytes is the
// caller's to stop using before Close.)
type Region struct {
	key  string // as given
	name string // without the leading '/'
	size int

	be    backend.Backend
	seg   backend.Segment
	hdr   *header
	word  *uint32 // &hdr.Lock.Word
	slots []slot  // the user table
	data  []byte

	// The user slot of this Region: slots[mine], which the lock word
	// names as me (mine+1); me is 0 for a Region without a slot.
	mine  uint32
	me    atomic.Uint32 // set once, by claim; read by the uncontended lock
	armed sys.Armed

	closed    atomic.Bool
	closing   chan struct{} // closed by Close: waiters leave
	inflight  atomic.Int64  // calls in the lock's code, which Close lets leave before it unmaps
	pinned    atomic.Bool   // the uncontended lock ran: Close waits for its pinned sections
	shrinks   bool          // the object can shrink under us: fault-protect the slow paths
	guardLock bool          // WithFaultGuard: fault-protect every lock path
	readOnly  bool          // WithReadOnly: mapped PROT_READ, no user slot
	mu        sync.Mutex    // Unlink, Chown, Close
	claimMu   sync.Mutex    // the user slot's claim, at the first lock
	unlinked  bool
	created   int64        // header's creation stamp, to recognise our object
	creator   sys.Identity // header's creator, likewise

	lk lockState
}

// enter registers a call that touches the mapping (the lock's), so that
// Close waits for it to leave before it unmaps; it reports false after
// Close.
func (r *Region) enter() bool {
	r.inflight.Add(1)
	if r.closed.Load() {
		r.inflight.Add(-1)
		return false
	}
	return true
}

func (r *Region) leave() { r.inflight.Add(-1) }

// validName tells whether name is a key's name, as parseKey returns it.
func validName(name string) bool {
	return len(name) > 0 && len(name) <= maxKeyLen && name != "." && name != ".." &&
		!strings.ContainsAny(name, "/\x00")
}

// parseKey validates key and returns its name (without the leading '/').
func parseKey(key string) (string, error) {
	name := strings.TrimPrefix(key, "/")
	switch {
	case len(name) == 0:
		return "", because("empty key", nil, ErrInvalidKey)
	case len(name) > maxKeyLen:
		return "", because("key longer than 200 bytes", nil, ErrInvalidKey)
	case name == "." || name == "..":
		return "", because("key may not be . or ..", nil, ErrInvalidKey)
	case strings.ContainsAny(name, "/\x00"):
		return "", because("key may not contain '/' or NUL after its first byte", nil, ErrInvalidKey)
	}
	return name, nil
}

// Create makes a new region of size bytes under key and returns the
// owner's mapping of it, zero-filled, ready for users to attach.
//
// The key is an optional '/' then 1 to 200 bytes without '/' or NUL, and not
// "." or "..". Create fails with ErrExist when the key is taken, and with an
// error matching syscall.ENOSPC when there is no room for the region.
func Create(key string, size int, opts ...Option) (*Region, error) {
	o, err := buildOptions(opts, opCreate)
	if err != nil {
		return nil, &Error{Op: "create", Key: key, Err: err}
	}
	if err := checkSize(size, o.users); err != nil {
		return nil, &Error{Op: "create", Key: key, Err: err}
	}
	off := int64(dataOffset(o.users))
	name, bes, err := backendsFor(key, &o, off+int64(size))
	if err != nil {
		return nil, &Error{Op: "create", Key: key, Err: err}
	}
	r, again, err := create(key, name, bes, size, &o, true)
	if again {
		// A region was published under the key since the backend looked
		// and was removed as stale: once more, from the start (WithInit's
		// function runs again, on the new region).
		r, _, err = create(key, name, bes, size, &o, false)
	}
	return r, err
}

// create is Create on the candidates bes, once. It returns again when the
// backend found the key taken only at Publish and replaceAgain allowed the
// stale region there to be removed: Create starts over.
func create(key, name string, bes []backend.Backend, size int, o *options, replaceAgain bool) (r *Region, again bool, err error) {
	off := int64(dataOffset(o.users))
	be := bes[0]
	fail := func(err error) (*Region, bool, error) {
		return nil, false, &Error{Op: "create", Key: key, Backend: be.Name(), Err: err}
	}
	p, err := be.Create(name, off+int64(size), o.mode)
	for len(bes) > 1 && errors.Is(err, syscall.ENOSPC) {
		// The automatic choice: the first backend filled up since we
		// looked; try the next.
		bes = bes[1:]
		be = bes[0]
		p, err = be.Create(name, off+int64(size), o.mode)
	}
	// taken says why the key is taken, or, with WithReplaceStale, removes
	// the stale region under it (nil: try again).
	taken := func(err error) error {
		if !o.replace {
			return because("key is taken; if its owner died, WithReplaceStale (or shmctl gc) removes a stale region", err, ErrExist)
		}
		if rerr := Remove(key, WithBackend(be)); rerr != nil {
			why := rerr.Error()
			var se *Error
			if errors.As(rerr, &se) {
				why = se.Err.Error()
			}
			sentinels := []error{ErrExist}
			if errors.Is(rerr, ErrInUse) {
				sentinels = append(sentinels, ErrInUse)
			}
			return because("key is taken and not stale ("+why+")", err, sentinels...)
		}
		return nil
	}
	if err != nil && errors.Is(err, fs.ErrExist) {
		if terr := taken(err); terr != nil {
			return fail(terr)
		}
		p, err = be.Create(name, off+int64(size), o.mode)
	}
	if err != nil && errors.Is(err, fs.ErrExist) {
		return fail(because("key is taken", err, ErrExist)) // again, since the removal
	}
	if err != nil {
		return fail(classify(err))
	}
	mem := p.Bytes()
	if int64(len(mem)) < off+int64(size) {
		p.Discard()
		return fail(because("backend mapped fewer bytes than asked", nil, ErrCorrupt))
	}
	r = createFast(key, name, be, p, mem, int64(size), *o)
	if r == nil {
		h := headerOf(mem)
		writeHeader(h, name, int64(size), o.users, time.Now())
		r = newRegionFrom(key, name, be, p, mem, h)
	}
	r.guardLock = o.guard
	discard := func() { p.Discard() }
	if !r.hdr.ready() {
		if o.init != nil {
			if err := runInit(o.init, r.data, discard); err != nil {
				return fail(err)
			}
		}
		atomic.StoreUint32(&r.hdr.State, stateReady)
		sys.FutexWake(&r.hdr.State, 1<<30)
	}
	if err := p.Publish(); err != nil {
		discard()
		if errors.Is(err, fs.ErrExist) {
			// Another region was published under the key since the
			// backend looked (a backend may tell only now): as above.
			if !replaceAgain {
				return fail(because("key is taken", err, ErrExist))
			}
			if terr := taken(err); terr != nil {
				return fail(terr)
			}
			return nil, true, nil
		}
		return fail(classify(err))
	}
	return r, false, nil
}

// runInit runs a WithInit function. When it fails or panics, discard
// removes the half-made region first; a panic then goes on.
func runInit(init func([]byte) error, data []byte, discard func()) (err error) {
	ok := false
	defer func() {
		if !ok {
			discard()
		}
	}()
	err = init(data)
	ok = err == nil
	return err
}

// checkSize validates a data size for a region with users slots.
func checkSize(size, users int) error {
	if size < 1 || int64(size) > MaxSize {
		return because("size must be 1 byte to 1 TiB", nil, ErrInvalidSize)
	}
	if uint64(size) > uint64(math.MaxInt)-uint64(dataOffset(users)) {
		return because("size "+strconv.Itoa(size)+" is more than this process can map (a 32-bit address space)", nil, ErrInvalidSize)
	}
	return nil
}

// createFast writes the header of a new region with pwrite, ready at
// once, where it can: the segment has a descriptor, there is no WithInit,
// and nobody can see the object before Publish (so nobody waits for its
// state either). Create then never touches the mapping: its pages stay
// unmapped in this process until the caller uses them, which saves a page
// fault and, at Close of a region never touched, a TLB shootdown across
// CPUs (the Go runtime's threads keep this process on every CPU). It
// returns nil, having written nothing that counts, when it cannot.
func createFast(key, name string, be backend.Backend, p backend.Pending, mem []byte, size int64, o options) *Region {
	f, ok := p.(backend.Fder)
	if !ok || o.init != nil {
		return nil
	}
	if v, ok := be.(backend.VisibleBeforePublish); ok && v.VisibleBeforePublish() {
		return nil
	}
	h := new(header)
	writeHeader(h, name, size, o.users, time.Now())
	h.State = stateReady
	b := h.bytes()
	for {
		n, err := unix.Pwrite(int(f.Fd()), b, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n != headerSize {
			return nil // the mapping path writes it all again
		}
		return newRegionFrom(key, name, be, p, mem, h)
	}
}

// peekHeader returns a copy of the header of seg, read with pread, when seg
// has a descriptor; open and Unlink then check it without touching the
// mapping (see createFast for why). ok is false when there is no
// descriptor or the object is shorter than a header: the caller then reads
// the mapping, under a guard.
func peekHeader(seg backend.Segment, mem []byte) (h *header, ok bool) {
	f, isFder := seg.(backend.Fder)
	if !isFder || len(mem) < headerSize {
		return nil, false
	}
	h = new(header)
	b := h.bytes()
	for {
		n, err := unix.Pread(int(f.Fd()), b, 0)
		if err == unix.EINTR {
			continue
		}
		return h, err == nil && n == headerSize
	}
}

// newRegionFrom makes the Region of a checked mapping mem, with the
// header's fields read from h, the mapping's header or a copy of it. The
// Region has no user slot yet.
func newRegionFrom(key, name string, be backend.Backend, seg backend.Segment, mem []byte, h *header) *Region {
	off, end := int(h.HeaderSize), int(h.HeaderSize)+int(h.DataSize)
	r := &Region{
		key: key, name: name, size: int(h.DataSize),
		be: be, seg: seg, hdr: headerOf(mem),
		slots:   slotsOf(mem, h),
		data:    mem[off:end:end],
		created: h.Created,
		creator: h.creator(),
		closing: make(chan struct{}),
	}
	// The word's address, computed without touching the mapping (&r.hdr.
	// Lock.Word would load through r.hdr for its nil check: a page fault).
	r.word = (*uint32)(unsafe.Add(unsafe.Pointer(r.hdr), unsafe.Offsetof(header{}.Lock)))
	if s, ok := seg.(backend.Sealed); !ok || !s.Sealed() {
		r.shrinks = true
	}
	r.lk.init()
	return r
}

// Open attaches to the region under key, waiting up to timeout for its
// owner to create it and make it ready. A timeout of 0 means one try.
//
// When the key never appears, the error matches both ErrTimeout and
// ErrNotExist. An object under the key that is not a valid region gives
// ErrCorrupt; a region whose creator died before it was ready gives
// ErrOwnerDead.
func Open(key string, timeout time.Duration, opts ...Option) (*Region, error) {
	if timeout <= 0 {
		return open(context.Background(), key, time.Time{}, true, opts)
	}
	return open(context.Background(), key, time.Now().Add(timeout), false, opts)
}

// OpenContext is Open that waits until ctx is done. When ctx ends before
// the region is there, the error wraps ctx.Err() and matches ErrNotExist
// (and ErrTimeout when the deadline passed). With ctx already done it
// still looks once where a look needs no other process (posix, sysv,
// file), and fails with ctx's error (matching ErrTimeout for a deadline)
// where attaching needs the owner's answer (memfd).
func OpenContext(ctx context.Context, key string, opts ...Option) (*Region, error) {
	return open(ctx, key, time.Time{}, false, opts)
}

// An Open that finds nothing under its key looks again after minBackoff,
// then twice as long each time, up to maxBackoff, for the backends that
// cannot wake it when the key is published (backend.CreateWaiter); in its
// first fastPollFor it looks at least every fastPoll, since most waits are
// short (a user started with its owner) and a look costs a few system
// calls. (Tests change them.)
var (
	minBackoff  = 200 * time.Microsecond
	maxBackoff  = 50 * time.Millisecond
	fastPoll    = time.Millisecond
	fastPollFor = time.Second
)

func open(ctx context.Context, key string, deadline time.Time, once bool, opts []Option) (*Region, error) {
	o, err := buildOptions(opts, opOpen)
	if err != nil {
		return nil, &Error{Op: "open", Key: key, Err: err}
	}
	name, bes, err := backendsFor(key, &o, 0)
	if err != nil {
		return nil, &Error{Op: "open", Key: key, Err: err}
	}
	bname := bes[0].Name()
	if len(bes) > 1 {
		bname = ""
	}
	fail := func(err error) (*Region, error) {
		return nil, &Error{Op: "open", Key: key, Backend: bname, Err: err}
	}
	var timer *time.Timer
	backoff := minBackoff
	var last error // why the last try did not succeed
	var cw backend.CreateWaiter
	polled := false // some backend must be polled
	for _, be := range bes {
		if w, ok := be.(backend.CreateWaiter); ok && cw == nil {
			cw = w // the first that can tell: it wakes us; the others are polled
		} else {
			polled = true
		}
	}
	start := time.Now()
	for {
		last = nil
		for _, be := range bes {
			r, err, retry := tryOpen(ctx, deadline, be, key, name, &o)
			if r != nil {
				r.guardLock = o.guard
				r.readOnly = o.readOnly
				return r, nil
			}
			if !retry {
				bname = be.Name()
				return fail(err)
			}
			if err != nil {
				bname, last = be.Name(), err
			}
		}

		// Wait before the next try.
		wait := backoff
		backoff = min(backoff*2, maxBackoff)
		if (polled || cw == nil) && time.Since(start) < fastPollFor {
			wait = min(wait, fastPoll)
		}
		if once {
			return fail(notThere(last, nil, true))
		}
		if !deadline.IsZero() {
			left := time.Until(deadline)
			if left <= 0 {
				return fail(notThere(last, nil, true))
			}
			wait = min(wait, left)
		}
		if cw != nil && last == nil {
			// Nothing under the key yet: sleep until it is published
			// (or the others' next poll).
			wctx, cancel := context.WithTimeout(ctx, wait)
			werr := cw.WaitCreate(wctx, name)
			cancel()
			if ctx.Err() != nil {
				return fail(notThere(last, ctx.Err(), errors.Is(ctx.Err(), context.DeadlineExceeded)))
			}
			if werr == nil || wctx.Err() != nil {
				continue
			}
			cw = nil // cannot watch here: poll
		}
		if timer == nil {
			timer = time.NewTimer(wait)
			defer timer.Stop()
		} else {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return fail(notThere(last, ctx.Err(), errors.Is(ctx.Err(), context.DeadlineExceeded)))
		case <-timer.C:
		}
	}
}

// tryOpen makes one attempt to attach to name on be. It returns the region,
// or an error and whether waiting may help: retry with a nil error means
// the key is not there; retry with an error means an object is there but
// not (yet) a ready region.
func tryOpen(ctx context.Context, deadline time.Time, be backend.Backend, key, name string, o *options) (r *Region, err error, retry bool) {
	readOnly := o.readOnly
	var seg backend.Segment
	so, sized := be.(backend.SizedOpener)
	co, waits := be.(backend.ContextOpener)
	ro, canRO := be.(backend.ReadOnlyOpener)
	if readOnly && !canRO {
		return nil, because("backend "+be.Name()+" cannot map a region read-only", nil, ErrInvalidOption), false
	}
	if sized || waits || readOnly {
		ctx = backend.WithTrust(ctx, o.trusts)
		if !deadline.IsZero() {
			if !time.Now().Before(deadline) {
				return nil, nil, true // no time left to ask
			}
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, deadline)
			defer cancel()
		}
	}
	// The first bytes the backend reads to size the mapping are the header:
	// keep them, and check them rather than read them again.
	var seen *header
	sizeOf := func(head []byte) (int64, error) {
		seen = headerCopy(head)
		return mappable(regionLenOf(seen, len(head)))
	}
	switch {
	case readOnly:
		seg, err = ro.OpenReadOnly(ctx, name, headerSize, sizeOf)
	case sized:
		seg, err = so.OpenSized(ctx, name, headerSize, sizeOf)
	case waits:
		seg, err = co.OpenContext(ctx, name)
	default:
		seg, err = be.Open(name)
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if p, ok := be.(backend.Pender); ok {
				if why := abandoned(p, name, o); why != "" {
					return nil, because(why, nil, ErrOwnerDead), false
				}
			}
			return nil, nil, true
		}
		return nil, classify(err), false
	}
	if ow, ok := seg.(backend.Owned); ok && !o.trusts(ow.Owner()) {
		seg.Close()
		return nil, because("the region belongs to uid "+strconv.Itoa(ow.Owner())+
			", which this process does not trust (WithTrustedUIDs)", nil, ErrUntrustedOwner), false
	}
	mem := seg.Bytes()
	var st headerState
	var why error
	var creatorDead bool
	h, copied := seen, seen != nil
	if !copied {
		h, copied = peekHeader(seg, mem)
	}
	if copied {
		st, why = checkHeaderOf(h, int64(len(mem)), name)
		creatorDead = st == headerNotReady && sys.Check(h.creator()) == sys.Dead
	} else if ferr := guard(func() {
		if len(mem) < headerSize {
			st, why = checkHeader(mem, name)
			return
		}
		// A copy, checked: a peer may change the mapping's fields
		// after the check.
		h = new(header)
		*h = *headerOf(mem)
		st, why = checkHeaderOf(h, int64(len(mem)), name)
		creatorDead = st == headerNotReady && sys.Check(h.creator()) == sys.Dead
	}); ferr != nil {
		seg.Close()
		return nil, ferr, false
	}
	visibleEarly := false
	if v, ok := be.(backend.VisibleBeforePublish); ok {
		visibleEarly = v.VisibleBeforePublish()
	}
	switch {
	case st == headerOK:
		return newRegionFrom(key, name, be, seg, mem, h), nil, false
	case st == headerBad, st == headerBlank && !visibleEarly:
		seg.Close()
		return nil, because(why.Error(), nil, ErrCorrupt), false
	case creatorDead:
		seg.Close()
		return nil, because("creator died before the region was ready", nil, ErrOwnerDead), false
	case st == headerBlank && creatorGone(seg):
		seg.Close()
		return nil, because("creator died before writing the header", nil, ErrOwnerDead), false
	}
	seg.Close()
	return nil, because(why.Error(), nil, ErrCorrupt), true
}

// regionLen is how much of an object whose first bytes are head Open maps:
// the header, the user table and the data the header claims, so that a peer
// that grows the object cannot make Open map more. A header too damaged to
// say gives the fixed header only (or, when head is shorter, the whole
// object), and the header check then says what is wrong.
func regionLen(head []byte) (int64, error) {
	return mappable(regionLenOf(headerCopy(head), len(head)))
}

// mappable returns n, or ErrInvalidSize when n bytes cannot be mapped in
// this process's address space (a region of 2 GiB or more, made by a 64-bit
// process, opened from a 32-bit one).
func mappable(n int64) (int64, error) {
	if uint64(n) > uint64(math.MaxInt) {
		return 0, because("the region's "+strconv.FormatInt(n, 10)+" bytes do not fit in this process's address space", nil, ErrInvalidSize)
	}
	return n, nil
}

// regionLenOf is regionLen for h, a copy of the n bytes of head (nil when
// they are fewer than a header).
func regionLenOf(h *header, n int) int64 {
	if h == nil {
		return int64(n) + 1
	}
	if h.Users == 0 || h.Users > MaxUsers || h.HeaderSize != uint32(dataOffset(int(h.Users))) ||
		h.DataSize == 0 || h.DataSize > MaxSize {
		return headerSize
	}
	return int64(h.HeaderSize) + int64(h.DataSize)
}

// notThere is the error of an Open that gave up: the key never appeared
// (ErrNotExist), or an object stayed invalid (last).
func notThere(last, ctxErr error, timedOut bool) error {
	var errs []error
	if timedOut {
		errs = append(errs, ErrTimeout)
	}
	if last != nil {
		return because("gave up waiting for a valid region", last, errs...)
	}
	errs = append(errs, ErrNotExist)
	msg := "no such region"
	if timedOut {
		msg = "no such region (timed out waiting for it)"
	}
	return because(msg, ctxErr, errs...)
}

// Bytes returns the region's data: Size() bytes, 64-byte aligned, shared
// with every process that maps the region (read-only memory for a Region
// opened WithReadOnly). It returns nil after Close; a slice obtained before
// must not be used after Close, which unmaps it.
func (r *Region) Bytes() []byte {
	if r.closed.Load() {
		return nil
	}
	return r.data
}

// Pointer returns the address of the first data byte (&Bytes()[0]), or nil
// after Close. It is 64-byte aligned. Prefer View and Slice, which check
// what Pointer leaves to you: never store a Go pointer (or a slice, string,
// map, interface...) in the region, since the garbage collector does not
// see it and other processes' addresses mean nothing here; keep each value
// aligned for its type; stay within Size(); and stop using the memory at
// Close.
func (r *Region) Pointer() unsafe.Pointer {
	if r.closed.Load() {
		return nil
	}
	return unsafe.Pointer(&r.data[0])
}

// Key returns the key as given to Create or Open.
func (r *Region) Key() string { return r.key }

// Size returns the size of the data in bytes, as given to Create.
func (r *Region) Size() int { return r.size }

// Backend returns the name of the backend that holds the region.
func (r *Region) Backend() string { return r.be.Name() }

func (r *Region) err(op string, err error) error {
	return &Error{Op: op, Key: r.key, Backend: r.be.Name(), Err: err}
}

// Unlink removes the region's key: new Opens fail with ErrNotExist, while
// every process that has it mapped keeps working. A second Unlink of the
// same Region does nothing. If the key no longer names this region (someone
// else removed it, or made a new region under it), Unlink leaves it alone
// and returns ErrNotExist.
func (r *Region) Unlink() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed.Load() {
		return r.err("unlink", ErrClosed)
	}
	if r.unlinked {
		return nil
	}
	if u, ok := r.seg.(backend.Unlinker); ok {
		err := u.Unlink()
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			r.unlinked = true
		}
		if errors.Is(err, fs.ErrNotExist) {
			return r.err("unlink", because("key names another region now, or nothing", err, ErrNotExist))
		}
		if err != nil {
			return r.err("unlink", classify(err))
		}
		return nil
	}
	if !r.stillNamed() {
		r.unlinked = true
		return r.err("unlink", because("key names another region now", nil, ErrNotExist))
	}
	if err := r.be.Unlink(r.name); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			r.unlinked = true
		}
		return r.err("unlink", classify(err))
	}
	r.unlinked = true
	return nil
}

// stillNamed tells whether the key still names this region.
func (r *Region) stillNamed() bool {
	if n, ok := r.seg.(backend.Namer); ok {
		same, err := n.StillNamed()
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return same
		}
	}
	seg, err := r.be.Open(r.name)
	if err != nil {
		return !errors.Is(err, fs.ErrNotExist) // let Unlink report other errors
	}
	defer seg.Close()
	mem := seg.Bytes()
	if len(mem) < headerSize {
		return false
	}
	same := false
	if h, ok := peekHeader(seg, mem); ok {
		return h.Magic == magic && h.Created == r.created && h.creator() == r.creator
	}
	guard(func() {
		h := headerOf(mem)
		same = h.Magic == magic && h.Created == r.created && h.creator() == r.creator
	})
	return same
}

// abandoned tells, for a key that does not exist, whether someone began to
// create it and died before publishing it: some objects are being created
// for name, and the creator of each is dead. It returns why, or "".
//
// Only objects of trusted owners count: anyone may create a file under a
// temporary name and die, and that must not make the key's real users give
// up.
func abandoned(p backend.Pender, name string, opt *options) string {
	objs, err := p.Pending(name, headerSize)
	if err != nil || len(objs) == 0 {
		return ""
	}
	why := ""
	for _, o := range objs {
		if o.UID < 0 || !opt.trusts(o.UID) {
			continue
		}
		if len(o.Head) < headerSize {
			return "" // too young to tell
		}
		h := headerOf(o.Head)
		if h.Magic != magic {
			return ""
		}
		c := h.creator()
		if sys.Check(c) != sys.Dead {
			return "" // a live creator will publish it
		}
		why = "creator (PID " + strconv.Itoa(c.PID) + ") died before the region was ready"
	}
	return why
}

// creatorGone tells whether the process that created a blank object (one
// visible before its header is written, as SysV) is known to be dead.
func creatorGone(seg backend.Segment) bool {
	c, ok := seg.(backend.Creator)
	if !ok {
		return false
	}
	pid := c.CreatorPID()
	return pid > 0 && sys.Check(sys.Identity{PID: pid, NS: sys.Self().NS}) == sys.Dead
}

// Chown changes the owner and group of the region's object, as GEOPM's
// chown. It fails after Unlink, and with ErrInvalidOption on backends that
// cannot change owners.
func (r *Region) Chown(uid, gid int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed.Load() {
		return r.err("chown", ErrClosed)
	}
	if r.unlinked {
		return r.err("chown", because("cannot chown a region that has been unlinked", nil, ErrNotExist))
	}
	c, ok := r.seg.(backend.Chowner)
	if !ok {
		return r.err("chown", because("backend cannot change owners", nil, ErrInvalidOption))
	}
	if err := c.Chown(uid, gid); err != nil {
		return r.err("chown", classify(err))
	}
	return nil
}

// Close unmaps the region in this process; it does not unlink it. If this
// Region holds the lock, Close releases it. Goroutines waiting for the lock
// through this Region give up with ErrClosed, and Close returns once they
// have left. Afterwards every method returns ErrClosed (Bytes and Pointer
// return nil), a second Close too.
func (r *Region) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed.Load() {
		return r.err("close", ErrClosed)
	}
	r.closed.Store(true)
	close(r.closing)
	// Wake this Region's waiters (and, spuriously, other processes'),
	// if it has any, and let them leave before the memory goes; the
	// uncontended lock's pinned sections end too (see pin.go).
	if r.inflight.Load() != 0 {
		sys.FutexWake(r.word, 1<<30)
	}
	cancelWatchers(r.seg.Bytes())
	if r.pinned.Load() {
		// A goroutine may be in a pinned section (see pin.go). One that
		// sets pinned after this load sees closed (both are sequentially
		// consistent) and leaves without touching the mapping.
		waitPinned()
	}
	for wait := time.Microsecond; r.inflight.Load() != 0; wait = min(2*wait, time.Millisecond) {
		time.Sleep(wait)
	}
	// A truncated object faults here; the slot goes all the same.
	guard(r.releaseHeld)
	tampered := r.releaseSlot()
	if err := r.seg.Close(); err != nil {
		return r.err("close", err)
	}
	if tampered {
		return r.err("close", because("another process rewrote this process's link in the user table", nil, ErrCorrupt))
	}
	return nil
}
