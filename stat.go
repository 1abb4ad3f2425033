package shm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/internal/builtin"
	"github.com/shmgo/shm/internal/sys"
)

// Liveness is what can be said about a process recorded in a region.
type Liveness int

const (
	// LivenessUnknown: the process cannot be judged from here (it was
	// recorded in another PID namespace, or /proc does not show this one).
	LivenessUnknown Liveness = iota
	// LivenessAlive: the same process is still running.
	LivenessAlive
	// LivenessDead: the process is gone, a zombie, or its PID now belongs
	// to another process.
	LivenessDead
)

// String returns "alive", "dead" or "unknown".
func (l Liveness) String() string {
	switch l {
	case LivenessAlive:
		return "alive"
	case LivenessDead:
		return "dead"
	}
	return "unknown"
}

// liveness is l in this package's terms: the same values.
func liveness(l sys.Liveness) Liveness { return Liveness(l) }

// The two packages' values are the same.
var _ = [1]struct{}{}[LivenessUnknown-Liveness(sys.Unknown)]
var _ = [1]struct{}{}[LivenessAlive-Liveness(sys.Alive)]
var _ = [1]struct{}{}[LivenessDead-Liveness(sys.Dead)]

// User is a Region that has a region open, as the region's user table
// records it.
type User struct {
	// PID is the user's process, in the PID namespace where it runs.
	PID int
	// Alive tells whether the process lives, as the lock judges it: the
	// kernel marks the slot of a process that dies.
	Alive Liveness
}

// LockState is the state of a region's lock as seen from outside.
type LockState int

const (
	// LockFree: nobody holds the lock.
	LockFree LockState = iota
	// LockHeld: a process holds the lock (alive, or not judgeable from
	// here).
	LockHeld
	// LockHolderDead: the process that holds the lock is dead; the next
	// Lock takes it over with ErrOwnerDead.
	LockHolderDead
	// LockHolderUnknown: a process holds the lock that cannot be judged
	// from here (its kernel does not mark its death, and it runs in
	// another PID namespace or /proc hides it): Lock never takes it over.
	LockHolderUnknown
)

// String returns the state in words: "free", "held", "holder dead" or
// "held, holder unknown".
func (s LockState) String() string {
	switch s {
	case LockHeld:
		return "held"
	case LockHolderDead:
		return "holder dead"
	case LockHolderUnknown:
		return "held, holder unknown"
	}
	return "free"
}

// LockInfo describes a region's lock.
type LockInfo struct {
	// State is whether the lock is held and what can be said of its
	// holder.
	State LockState
	// PID is the holder's PID, in the PID namespace where it runs; 0 when
	// the lock is free.
	PID int
	// Robust is set when the kernel itself signals the holder's death (its
	// process is armed on a robust futex list), as it does everywhere but
	// where a seccomp filter or the kernel refuses robust lists.
	Robust bool
	// Inconsistent is set when a holder died holding the lock and nobody
	// has called MarkConsistent since: the next Lock returns ErrOwnerDead.
	Inconsistent bool
	// Waiters is set when a process may be waiting for the lock.
	Waiters bool
}

// String describes the lock in a line, as shmctl shows it: "free", "held by
// PID", "held by PID (cannot tell whether it lives)" or "holder PID dead",
// followed by ", inconsistent" when a holder died holding it and nobody has
// called MarkConsistent since.
func (l LockInfo) String() string {
	var s string
	switch l.State {
	case LockHeld:
		s = "held by " + strconv.Itoa(l.PID)
	case LockHolderUnknown:
		s = "held by " + strconv.Itoa(l.PID) + " (cannot tell whether it lives)"
	case LockHolderDead:
		s = "holder " + strconv.Itoa(l.PID) + " dead"
	default:
		s = "free"
	}
	if l.Inconsistent {
		s += ", inconsistent"
	}
	return s
}

// Info describes a region, or an object found where regions live, as List
// and Stat see it.
type Info struct {
	// Key is the region's key, with its leading '/'. For objects that are
	// not regions it is the object's name in its directory (posix, file),
	// or empty (sysv).
	Key string
	// Backend is the name of the backend that holds the object.
	Backend string
	// Path is where the object lives: the file (posix, file) or the
	// abstract socket ("@shmgo/memfd/...", memfd). Empty for sysv.
	Path string
	// ID is the backend's handle for objects found without a name: the
	// shmid for sysv. Empty otherwise.
	ID string

	// Size is the size of the region's data in bytes (for objects that
	// are not regions, the object's size).
	Size int64
	// ObjectSize is the size of the whole object: the header and the data.
	ObjectSize int64
	// HeaderSize is where the data starts in the object: the header and
	// the table of users (0 for objects that are not regions).
	HeaderSize int64
	// Mode holds the permission bits.
	Mode fs.FileMode
	// UID and GID are the object's owner and group (-1 when unknown).
	UID, GID int

	// CreatorPID is the PID of the process that created the region, in
	// the PID namespace it ran in.
	CreatorPID int
	// Creator tells whether the process that created the region still
	// runs.
	Creator Liveness
	// Created is when the region was created.
	Created time.Time
	// Ready is set once the creator has initialised the region.
	Ready bool
	// Lock is the state of the region's lock.
	Lock LockInfo
	// Users are the Regions that have used the lock and are still open, one
	// per slot of its user table (a process that locked through two
	// Regions appears twice; Regions that never locked have no slot; slots
	// of processes known to be dead are left out).
	Users []User
	// MaxUsers is the size of the user table (WithMaxUsers).
	MaxUsers int

	// Attached is how many processes map the region: the kernel's count
	// for sysv, the processes of /proc/*/maps otherwise. It is -1 when the
	// count is unknown.
	Attached int
	// AttachedExact is false when some processes could not be inspected,
	// so that Attached is only a lower bound.
	AttachedExact bool

	// Stale is set when the region's creator is dead and no process uses
	// it: it is safe to remove.
	Stale bool
	// Reason says why the region is stale, or is not.
	Reason string

	// Foreign is set for objects that are not regions of this package
	// (no header of ours); List returns them only with ListForeign.
	Foreign bool
	// Temp is set for a region that was never published: its creator died
	// (or is still working) before the region got its name.
	Temp bool
	// Err is set when the object could not be read (it matches
	// fs.ErrPermission when this process may not): the fields above are
	// then only what the directory or the backend's listing tells.
	Err error
}

// ListOption configures List and RemoveStale.
type ListOption func(*listOptions)

type listOptions struct {
	backends []backend.Backend
	foreign  bool
	// defaults: the backends are the default ones, whose directories may
	// not exist (no region was ever made there).
	defaults bool
}

// ListBackends sets the backends that List and RemoveStale look at, in
// place of the default ones: posix.New() (/dev/shm), sysv.New(),
// memfd.New() and file.New(FileDir()), where Create puts regions when it
// chooses. Give file.New(dir) for every other directory of regions.
func ListBackends(bs ...backend.Backend) ListOption {
	return func(o *listOptions) { o.backends = append(o.backends, bs...) }
}

// ListForeign makes List also return the objects that are not regions of
// this package (no valid header), with Info.Foreign set. RemoveStale never
// removes them.
func ListForeign() ListOption {
	return func(o *listOptions) { o.foreign = true }
}

func buildListOptions(opts []ListOption) listOptions {
	var o listOptions
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	var bs []backend.Backend
	for _, b := range o.backends {
		if b != nil {
			bs = append(bs, b)
		}
	}
	if len(bs) == 0 {
		bs = DefaultBackends()
		o.defaults = true
	}
	o.backends = bs
	return o
}

// tempGrace is how old a never-published object with a blank header must
// be before it counts as left behind: its creator may have just made it.
const tempGrace = time.Minute

// DefaultBackends returns the backends that List and RemoveStale look at
// by default: POSIX in /dev/shm, SysV, memfd, and files in FileDir() and in
// the other users' fallback directories of the same kind
// (os.TempDir()/shmgo-UID), those that exist.
func DefaultBackends() []backend.Backend { return builtin.Listed() }

// object is one object that List or Stat found, with what it takes to
// judge it and remove it again.
type object struct {
	Info
	be     backend.Backend
	bi     backend.Info // as the backend describes it, to ask it again
	hdr    *header      // a copy; nil when unread, foreign or blank
	blank  bool
	fid    sys.FileID // the object's file, when hasFID: for /proc/*/maps
	hasFID bool
	// counted: Attached is the backend's count (SysV's nattch), not to be
	// replaced by a /proc/*/maps count.
	counted bool
}

// List returns every region that this process can see on the backends
// given with ListBackends (default: DefaultBackends()), recognised by the
// header every region starts with, sorted by backend and key. Objects that
// this process may not read are returned with Info.Err set, since they may
// be regions; objects that are not regions (and owners that did not
// answer) only with ListForeign.
//
// List reads each object's header without mapping it where the backend
// can (pread, a read-only attachment), maps the others for a moment, and
// walks /proc/*/maps once to count the processes that map them. The error
// joins what went wrong on each backend; the regions of the others are
// returned anyway.
func List(ctx context.Context, opts ...ListOption) ([]Info, error) {
	objs, err := list(ctx, buildListOptions(opts))
	out := make([]Info, len(objs))
	for i, o := range objs {
		out[i] = o.Info
	}
	return out, err
}

func list(ctx context.Context, lo listOptions) ([]*object, error) {
	var objs []*object
	var errs []error
	for _, be := range lo.backends {
		if ctx.Err() != nil {
			errs = append(errs, &Error{Op: "list", Err: ctxError(ctx)})
			break
		}
		found, err := scan(ctx, be)
		objs = append(objs, found...)
		if err != nil && lo.defaults && errors.Is(err, fs.ErrNotExist) {
			err = nil // a default directory went away: it has no regions
		}
		if err != nil {
			errs = append(errs, &Error{Op: "list", Backend: be.Name(), Err: err})
		}
	}
	judge(objs)
	var keep []*object
	for _, o := range objs {
		if o.Foreign && !lo.foreign {
			continue
		}
		keep = append(keep, o)
	}
	sort.SliceStable(keep, func(i, j int) bool {
		a, b := keep[i], keep[j]
		if a.Backend != b.Backend {
			return a.Backend < b.Backend
		}
		if a.Key != b.Key {
			return a.Key < b.Key
		}
		if a.Path != b.Path {
			return a.Path < b.Path
		}
		return a.ID < b.ID
	})
	return keep, errors.Join(errs...)
}

// scan lists be's objects and reads each one.
func scan(ctx context.Context, be backend.Backend) ([]*object, error) {
	l, ok := be.(backend.Lister)
	if !ok {
		return nil, because("backend cannot list its objects", nil, ErrInvalidOption)
	}
	var infos []backend.Info
	var lerr error
	var objs []*object
	if cl, ok := be.(backend.ContextLister); ok {
		infos, lerr = cl.ListContext(ctx) // what it found, and who did not answer
		// An object that did not answer is listed as one that could not
		// be read; only the end of ctx is an error of the listing.
		var rest []error
		for _, e := range unjoin(lerr) {
			var pe *fs.PathError
			if errors.As(e, &pe) && !errors.Is(e, context.Canceled) && ctx.Err() == nil {
				o := &object{be: be}
				o.Backend, o.Path, o.Attached, o.UID, o.GID = be.Name(), pe.Path, -1, -1, -1
				o.Foreign, o.Reason, o.Err = true, "did not answer", e
				objs = append(objs, o)
				continue
			}
			rest = append(rest, e)
		}
		lerr = errors.Join(rest...)
	} else if infos, lerr = l.List(); lerr != nil {
		return nil, lerr
	}
	// Inspect them a few at a time: an object's owner may take its time
	// to answer (memfd), and one slow owner must not hold up the others.
	found := make([]*object, len(infos))
	sem := make(chan struct{}, inspectParallel)
	var wg sync.WaitGroup
	for i, bi := range infos {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			found[i] = inspectContext(ctx, be, bi)
		}()
	}
	wg.Wait()
	for _, o := range found {
		if o != nil {
			objs = append(objs, o)
		}
	}
	if err := ctx.Err(); err != nil {
		return objs, errors.Join(lerr, ctxError(ctx))
	}
	return objs, lerr
}

// inspectParallel is how many objects a listing inspects at once.
const inspectParallel = 16

// unjoin returns the errors that err joins (err itself when it joins none).
func unjoin(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// inspect reads the object that bi describes: its header and user table,
// through backend.Inspector where the backend has it, else through a
// mapping for a moment. It returns nil when the object is gone.
func inspect(be backend.Backend, bi backend.Info) *object {
	return inspectContext(context.Background(), be, bi)
}

// inspectContext is inspect, whose waits for an owner end with ctx.
func inspectContext(ctx context.Context, be backend.Backend, bi backend.Info) *object {
	o := &object{be: be, bi: bi}
	o.describe(bi)
	if bi.Foreign != "" {
		o.Foreign, o.Reason = true, "not a region: "+bi.Foreign
		return o
	}
	if bi.Size > 0 && bi.Size < headerSize {
		// Too small to be one of ours: not worth reading (for SysV, not
		// worth recording this process as the last to attach it).
		o.Foreign, o.Reason = true, fmt.Sprintf("not a region: %d bytes, smaller than a header", bi.Size)
		return o
	}
	var head []byte
	var read func(b []byte, off int64) bool
	if in, ok := be.(backend.Inspector); ok {
		h, now, err := in.Inspect(bi, headerSize)
		if !o.failed(err) {
			return nil
		}
		if err != nil {
			return o
		}
		o.bi.ID = now.ID
		o.describe(now)
		head = h
		read = func(b []byte, off int64) bool {
			t, _, err := in.Inspect(bi, int(off)+len(b))
			if err != nil || len(t) < int(off)+len(b) {
				return false
			}
			copy(b, t[off:])
			return true
		}
	} else {
		seg, err := openToInspect(ctx, be, bi)
		if !o.failed(err) {
			return nil
		}
		if err != nil {
			return o
		}
		defer seg.Close()
		mem := seg.Bytes()
		o.ObjectSize, o.Size = int64(len(mem)), int64(len(mem))
		if f, ok := seg.(backend.Fder); ok {
			var st unix.Stat_t
			if unix.Fstat(int(f.Fd()), &st) == nil {
				o.Mode, o.UID, o.GID = fs.FileMode(st.Mode&0o777), int(st.Uid), int(st.Gid)
				o.fid, o.hasFID = sys.FileIDOf(&st), true
			}
		}
		n := min(len(mem), headerSize)
		head = make([]byte, n)
		if guard(func() { copy(head, mem) }) != nil {
			o.Foreign, o.Reason = true, "not a region: memory fault reading the header (object truncated?)"
			return o
		}
		read = copyAt(mem)
	}
	want := bi.Name
	if bi.Temp {
		want = "" // the key is in the header; the name is temporary
	}
	o.setHeader(head, want)
	o.setTable(read)
	return o
}

// failed records err, an error reading the object, in o. It reports false
// when the object is gone.
func (o *object) failed(err error) bool {
	switch {
	case err == nil:
	case errors.Is(err, fs.ErrNotExist):
		return false
	case errors.Is(err, backend.ErrForeign):
		o.Foreign, o.Reason = true, "not a region: "+err.Error()
	default:
		o.Err = err
	}
	return true
}

// describe fills o's Info from what the backend says.
func (o *object) describe(bi backend.Info) {
	o.Backend = o.be.Name()
	o.Path, o.ID, o.Temp = bi.Path, bi.ID, bi.Temp
	if bi.Name != "" && !bi.Temp {
		o.Key = "/" + bi.Name
	}
	o.ObjectSize, o.Size = bi.Size, bi.Size
	o.Mode, o.UID, o.GID = bi.Mode, bi.UID, bi.GID
	o.Attached, o.AttachedExact, o.counted = bi.Attached, bi.Attached >= 0, bi.Attached >= 0
	if bi.Ino != 0 {
		o.fid = sys.FileID{Major: unix.Major(bi.Dev), Minor: unix.Minor(bi.Dev), Ino: bi.Ino}
		o.hasFID = true
	}
}

// openToInspect maps the object bi describes, for reading its header:
// read-only where the backend can, by ID where it lists objects by ID.
func openToInspect(ctx context.Context, be backend.Backend, bi backend.Info) (backend.Segment, error) {
	if bi.ID != "" {
		if ido, ok := be.(backend.IDOpener); ok {
			return ido.OpenID(bi.ID)
		}
	}
	if bi.Name == "" {
		return nil, because("listed without a name or an ID", nil, ErrCorrupt)
	}
	if ro, ok := be.(backend.ReadOnlyOpener); ok {
		ctx, cancel := context.WithTimeout(ctx, inspectWait)
		defer cancel()
		return ro.OpenReadOnly(ctx, bi.Name, headerSize, regionLen)
	}
	return be.Open(bi.Name)
}

// inspectWait bounds the wait for an object's owner (memfd) when it is
// inspected.
const inspectWait = time.Second

// setHeader interprets the first bytes of the object, head. name is the
// name the object was found under, "" when unknown (a temporary object).
func (o *object) setHeader(head []byte, name string) {
	h, blank, err := parseHead(head, o.ObjectSize, name)
	o.blank = blank
	if o.blank && !o.Temp {
		err = errors.New("blank header")
	}
	if err != nil {
		o.Foreign = true
		o.Reason = "not a region: " + err.Error()
		return
	}
	if o.blank {
		return
	}
	o.hdr = h
	o.Key = "/" + string(h.Key[:h.KeyLen])
	o.Size = int64(h.DataSize)
	o.CreatorPID = int(h.CreatorPID)
	o.Creator = liveness(sys.Check(h.creator()))
	o.Created = time.Unix(0, h.Created)
	o.Ready = h.State == stateReady
	o.MaxUsers = int(h.Users)
	o.HeaderSize = int64(h.HeaderSize)
	o.Lock = lockInfo(h, nil)
}

// parseHead reads a header from the first bytes of an object of size
// bytes found under name ("" when unknown): a copy, or nil with why when
// they are not a valid one; blank when they are all zeros (or none).
func parseHead(head []byte, size int64, name string) (h *header, blank bool, err error) {
	if len(head) == 0 && size == 0 {
		return nil, true, nil
	}
	h = headerCopy(head)
	switch {
	case h == nil:
		return nil, false, fmt.Errorf("%d bytes, smaller than a header", size)
	case h.Magic == [8]byte{} && h.Version == 0 && h.HeaderSize == 0:
		return nil, true, nil
	}
	if err := validHeader(h, size, name); err != nil {
		return nil, false, err
	}
	return h, false, nil
}

// setTable reads the user table of an object whose header is set, with
// read, and what it tells: the lock's holder and the users.
func (o *object) setTable(read func(b []byte, off int64) bool) {
	if o.hdr == nil {
		return
	}
	t := make([]slot, o.hdr.Users)
	if !read(unsafe.Slice((*byte)(unsafe.Pointer(&t[0])), len(t)*slotSize), headerSize) {
		t = nil
	}
	o.Lock = lockInfo(o.hdr, t)
	if t != nil {
		o.Users = usersOf(t)
	}
}

// lockInfo reads the lock line of a copied header, with a copy of its user
// table (nil when it could not be read).
func lockInfo(h *header, t []slot) LockInfo {
	w := h.Lock.Word
	li := LockInfo{
		Inconsistent: w&lockDied != 0,
		Waiters:      w&lockWaiters != 0,
	}
	owner := w & lockOwner
	if owner == 0 {
		return li
	}
	li.State = LockHolderUnknown
	if int(owner) > len(t) {
		return li
	}
	s := &t[owner-1]
	li.PID = int(s.PID)
	li.Robust = !byPID(s.Live)
	switch slotLiveness(s) {
	case sys.Dead:
		li.State = LockHolderDead
	case sys.Alive:
		li.State = LockHeld
	}
	return li
}

// usersOf lists the users of a copied user table.
func usersOf(t []slot) []User {
	var us []User
	for i := range t {
		s := &t[i]
		if s.Live == slotFree || s.Live == slotClaiming {
			continue
		}
		l := slotLiveness(s)
		if l == sys.Dead {
			continue // a slot its dead user left, free for the next
		}
		us = append(us, User{PID: int(s.PID), Alive: liveness(l)})
	}
	return us
}

// preadAt reads len(b) bytes of fd at off.
func preadAt(fd int) func(b []byte, off int64) bool {
	return func(b []byte, off int64) bool {
		for n := 0; n < len(b); {
			m, err := unix.Pread(fd, b[n:], off+int64(n))
			if err == unix.EINTR {
				continue
			}
			if err != nil || m == 0 {
				return false
			}
			n += m
		}
		return true
	}
}

// copyAt reads from a mapping, under a guard.
func copyAt(mem []byte) func(b []byte, off int64) bool {
	return func(b []byte, off int64) bool {
		if off+int64(len(b)) > int64(len(mem)) {
			return false
		}
		return guard(func() { copy(b, mem[off:]) }) == nil
	}
}

// judge counts the mapping processes of every object and decides which
// are stale.
func judge(objs []*object) {
	want := map[sys.FileID]bool{}
	for _, o := range objs {
		if o.hasFID && !o.counted && o.Err == nil && !o.Foreign {
			want[o.fid] = true
		}
	}
	if len(want) > 0 {
		scan, err := sys.ScanMaps(want)
		for _, o := range objs {
			if !o.hasFID || o.counted || !want[o.fid] {
				continue
			}
			if err != nil {
				o.Attached, o.AttachedExact = -1, false
				continue
			}
			o.Attached, o.AttachedExact = scan.Mappers[o.fid], scan.Exact()
		}
	}
	for _, o := range objs {
		o.judge()
	}
}

// judge decides whether o is stale, and says why or why not.
func (o *object) judge() {
	o.Stale = false
	switch {
	case o.Err != nil:
		o.Reason = "cannot read it: " + o.Err.Error()
		return
	case o.Foreign:
		return
	}
	if why := o.creatorGone(); why != "" {
		o.Reason = why
		return
	}
	if rm, ok := o.be.(backend.Remover); ok {
		if err := rm.Unused(o.bi); err != nil {
			o.Reason = inUseReason(err)
			return
		}
		if !o.AttachedExact || o.Attached != 0 {
			o.Attached, o.AttachedExact = 0, true // proven
		}
	} else {
		switch {
		case o.Attached < 0 || !o.AttachedExact && o.Attached == 0:
			o.Reason = "cannot tell whether a process maps it"
			return
		case o.Attached > 0:
			o.Reason = fmt.Sprintf("%d processes attached", o.Attached)
			return
		}
	}
	o.Stale = true
	if o.hdr == nil {
		o.Reason = "never published, blank, unused"
	} else {
		o.Reason = fmt.Sprintf("creator %d dead, not in use", o.CreatorPID)
	}
}

// inUseReason is what an error of a backend's proof of non-use says,
// without the sentinel's prefix.
func inUseReason(err error) string {
	return strings.TrimPrefix(strings.TrimPrefix(err.Error(), backend.ErrInUse.Error()+": "), "")
}

// creatorGone returns "" when the region's creator is dead (or, for a
// blank never-published file, when it is old enough), else why not.
func (o *object) creatorGone() string {
	if o.hdr == nil {
		if o.blank && o.Temp {
			if time.Since(o.bi.Changed) < tempGrace {
				return "being created"
			}
			return ""
		}
		return "no header"
	}
	switch o.Creator {
	case LivenessAlive:
		return fmt.Sprintf("creator %d is alive", o.CreatorPID)
	case LivenessUnknown:
		return fmt.Sprintf("cannot tell whether creator %d lives (another PID namespace?)", o.CreatorPID)
	}
	return ""
}

// Stat describes the region under key. The backend is chosen as for Open:
// the key's prefix, WithBackend, SHM_BACKEND, or else the first of the
// automatic candidates that holds the key. It fails with ErrNotExist when
// there is no such object, and ErrCorrupt when the object is not a region
// (the Info returned then describes the object); when the object cannot be
// read, the error matches fs.ErrPermission and the Info holds what the
// backend tells without reading it. Unlike Open, Stat needs only read
// permission where the backend can inspect objects without mapping them
// (posix, file, sysv: backend.Inspector).
func Stat(key string, opts ...Option) (Info, error) {
	obj, bname, err := findKey(key, opts)
	if err != nil {
		return Info{}, &Error{Op: "stat", Key: key, Backend: bname, Err: err}
	}
	judge([]*object{obj})
	if obj.Err != nil {
		return obj.Info, &Error{Op: "stat", Key: key, Backend: bname, Err: classify(obj.Err)}
	}
	if obj.Foreign {
		return obj.Info, &Error{Op: "stat", Key: key, Backend: bname, Err: because(obj.Reason, nil, ErrCorrupt)}
	}
	return obj.Info, nil
}

// findKey resolves key and the options to candidate backends, and finds
// the object on the first that has it. It returns the name of the backend
// that gave the answer (or the only candidate), for errors.
func findKey(key string, opts []Option) (*object, string, error) {
	o, err := buildOptions(opts, opStat)
	if err != nil {
		return nil, "", err
	}
	name, bes, err := backendsFor(key, &o, 0)
	if err != nil {
		return nil, "", err
	}
	bname := ""
	if len(bes) == 1 {
		bname = bes[0].Name()
	}
	var last error
	for _, be := range bes {
		obj := inspect(be, backend.Info{Name: name, Attached: -1, UID: -1, GID: -1})
		if obj != nil {
			if obj.Key == "" {
				obj.Key = "/" + name
			}
			return obj, be.Name(), nil
		}
		last = because("", &fs.PathError{Op: "stat", Path: name, Err: unix.ENOENT}, ErrNotExist)
	}
	return nil, bname, last
}
