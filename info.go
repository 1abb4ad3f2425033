package shm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/file"
	"github.com/shmgo/shm/backend/memfd"
	"github.com/shmgo/shm/backend/posix"
	"github.com/shmgo/shm/backend/sysv"
	"github.com/shmgo/shm/internal/dirobj"
	"github.com/shmgo/shm/internal/sys"
)

// Operations: finding regions, telling live ones from stale ones, and
// removing the stale ones.
//
// A region is stale when its creator is dead and no process uses it: no
// mapping, and (for the backends whose objects are files) no open
// descriptor either. Only such regions are removed, and the proof that
// nobody uses one comes from the kernel, never from a walk over /proc alone:
//
//   - posix and file: a write lease (fcntl F_SETLEASE F_WRLCK), which the
//     kernel grants only when no other open file description of the file
//     exists, mappings included, whatever PID namespace their processes are
//     in. The lease is held until the name is gone, so a process that opens
//     the file meanwhile waits in open(2): the removal gives the name back
//     when it sees such a waiter, and otherwise the waiter finds the file
//     unlinked. The
//     file backend's flock protocol is the fallback where leases are not
//     available (a filesystem without them, or a caller that neither owns
//     the file nor has CAP_LEASE).
//   - sysv: the kernel's attach count (nattch).
//   - memfd: a memfd region has no name once its owner is gone, so it is
//     never stale; nothing outlives its processes.
//
// The counts of mapping processes that List and Stat report for posix,
// file and memfd come from /proc/*/maps and are exact only when every
// process could be read (see Info.AttachedExact).

// ErrInUse is returned by Remove when the region is in use, or may be: its
// creator lives or cannot be judged from here, or a process has it open or
// mapped, or that could not be proven otherwise.
var ErrInUse = errors.New("region is in use")

// Liveness is what can be said about a process recorded in a region.
type Liveness int

const (
	// LivenessUnknown: the process cannot be judged from here (it was
	// recorded in another PID namespace, or /proc does not show this one).
	LivenessUnknown Liveness = iota
	// Alive: the same process is still running.
	Alive
	// Dead: the process is gone, a zombie, or its PID now belongs to
	// another process.
	Dead
)

func (l Liveness) String() string {
	switch l {
	case Alive:
		return "alive"
	case Dead:
		return "dead"
	}
	return "unknown"
}

func liveness(l sys.Liveness) Liveness {
	switch l {
	case sys.Alive:
		return Alive
	case sys.Dead:
		return Dead
	}
	return LivenessUnknown
}

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
	// Mode holds the permission bits; UID and GID the owner (-1 when
	// unknown).
	Mode     fs.FileMode
	UID, GID int

	// CreatorPID is the PID of the process that created the region, in
	// the PID namespace it ran in; Creator tells whether it still runs.
	CreatorPID int
	Creator    Liveness
	// Created is when the region was created.
	Created time.Time
	// Ready is set once the creator has initialised the region.
	Ready bool
	// Lock is the state of the region's lock.
	Lock LockInfo
	// Users are the Regions that have the region open, one per slot of its
	// user table (a process that opened it twice appears twice; slots of
	// processes known to be dead are left out), and
	// MaxUsers is the size of that table (WithMaxUsers).
	Users    []User
	MaxUsers int

	// Attached is how many processes map the region: the kernel's count
	// for sysv, the processes of /proc/*/maps otherwise. It is -1 when the
	// count is unknown. AttachedExact is false when some processes could
	// not be inspected, so that Attached is only a lower bound.
	Attached      int
	AttachedExact bool

	// Stale is set when the region's creator is dead and no process uses
	// it: it is safe to remove. Reason says why it is, or is not.
	Stale  bool
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
// (os.TempDir()/shmgo-UID) that exist.
func DefaultBackends() []backend.Backend {
	bs := []backend.Backend{posix.New(), sysv.New(), memfd.New(), file.New(FileDir())}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "shmgo-[0-9]*"))
	for _, d := range dirs {
		if d != FileDir() {
			bs = append(bs, file.New(d))
		}
	}
	return bs
}

// isTempName tells whether a file name is one under which a backend
// creates an object before publishing it, or the tombstone of a removal in
// progress.
func isTempName(name string) bool {
	return strings.HasPrefix(name, posix.TempPrefix) || strings.HasPrefix(name, file.TempPrefix) ||
		strings.HasPrefix(name, tombPrefix)
}

// settle is how long a removal waits, with the name gone and the lease
// held, for processes that looked the name up just before.
const settle = time.Millisecond

// tombPrefix names the tombstone of a removal in progress (a temporary
// name, so that an interrupted removal is finished by the next one).
const tombPrefix = ".shmgo-gc-tmp.tomb."

// object is one object that List found, with what it takes to judge it and
// remove it again.
type object struct {
	Info
	be   backend.Backend
	kind objKind
	dir  string // dirObj: the directory
	file string // dirObj: the file's name in it

	fd     int // dirObj: open O_RDONLY from probe to close, or -1
	st     unix.Stat_t
	fid    sys.FileID // the file, when hasFID: for /proc/*/maps
	hasFID bool
	hdr    *header // a copy; nil when unread or blank
	blank  bool
	// counted: Attached is the kernel's count (sysv nattch), not to be
	// replaced by a /proc/*/maps count.
	counted bool
}

type objKind int

const (
	dirObj   objKind = iota // a file in a directory (posix, file)
	idObj                   // found by ID (sysv)
	namedObj                // found by name (memfd and other listers)
)

func (o *object) close() {
	if o.fd >= 0 {
		unix.Close(o.fd)
		o.fd = -1
	}
}

// dirBackend is implemented by the backends whose objects are the files of
// one directory (posix, file).
type dirBackend interface {
	backend.Backend
	Dir() string
}

// inUser is implemented by backends that can tell, without /proc, whether
// an object is in use (file: flock).
type inUser interface {
	InUse(name string) (bool, error)
}

// List returns every region that this process can see on the backends
// given with ListBackends (default: DefaultBackends()), recognised by the
// header every region starts with, sorted by backend and key. Objects that
// this process may not read are returned with Info.Err set, since they may
// be regions; objects that are not regions only with ListForeign.
//
// List reads each object's header without mapping it where it can
// (pread), maps the others for a moment (sysv, memfd), and walks
// /proc/*/maps once to count the processes that map them. The error joins
// what went wrong on each backend; the regions of the others are returned
// anyway.
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
		if err != nil && lo.defaults && be.Name() == "file" && errors.Is(err, fs.ErrNotExist) {
			err = nil // no region was ever made in the default directory
		}
		if err != nil {
			errs = append(errs, &Error{Op: "list", Backend: be.Name(), Err: err})
		}
	}
	defer func() {
		for _, o := range objs {
			o.close()
		}
	}()
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

// scan finds the objects of one backend and reads their headers.
func scan(ctx context.Context, be backend.Backend) ([]*object, error) {
	if db, ok := be.(dirBackend); ok {
		return scanDir(ctx, be, db.Dir())
	}
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
				o := &object{be: be, kind: namedObj, fd: -1}
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
	for _, bi := range infos {
		if err := ctx.Err(); err != nil {
			return objs, errors.Join(lerr, err)
		}
		o := probeListed(be, bi)
		if o != nil {
			objs = append(objs, o)
		}
	}
	return objs, lerr
}

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

func scanDir(ctx context.Context, be backend.Backend, dir string) ([]*object, error) {
	d, err := dirobj.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var objs []*object
	for _, name := range d {
		if err := ctx.Err(); err != nil {
			return objs, err
		}
		if o := probeFile(be, dir, name); o != nil {
			objs = append(objs, o)
		}
	}
	return objs, nil
}

// foreignFile tells whether the file st under name in dir cannot be a
// region's (a symbolic link, a FIFO, a directory, a hard-linked file...),
// and marks o foreign, saying what it is.
func foreignFile(dir, name string, st *unix.Stat_t, o *object) bool {
	tp := posix.TempPrefix
	if o.Backend == "file" {
		tp = file.TempPrefix
	}
	err := dirobj.Dir{Path: dir, TempPrefix: tp}.Inspect(name, st)
	var fe *dirobj.ForeignError
	if !errors.As(err, &fe) {
		return false
	}
	o.Foreign = true
	o.Reason = "not a region: " + fe.What
	return true
}

// probeFile reads the header of the file name in dir, without mapping it.
// It returns nil for what is gone. Anything but a regular file with one link
// (what Create would find in the way, and Open report as ErrCorrupt) is a
// foreign object that says what it is.
func probeFile(be backend.Backend, dir, name string) *object {
	p := filepath.Join(dir, name)
	o := &object{be: be, kind: dirObj, dir: dir, file: name, fd: -1}
	o.Backend = be.Name()
	o.Path = p
	o.Key = "/" + name
	o.Temp = isTempName(name)
	o.Attached = -1
	if err := unix.Lstat(p, &o.st); err != nil {
		return nil
	}
	o.fillStat()
	if foreignFile(dir, name, &o.st, o) {
		return o
	}
	// O_NONBLOCK: a removal in progress holds a lease; do not wait for it.
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		switch err {
		case unix.ENOENT:
			return nil
		case unix.EWOULDBLOCK:
			o.Err = &fs.PathError{Op: "open", Path: p, Err: errors.New("being removed by another process")}
		default:
			o.Err = &fs.PathError{Op: "open", Path: p, Err: err}
		}
		return o
	}
	o.fd = fd
	if err := unix.Fstat(fd, &o.st); err != nil {
		o.close()
		return nil
	}
	o.fillStat()
	if foreignFile(dir, name, &o.st, o) {
		o.close()
		return o
	}
	o.fid, o.hasFID = sys.FileIDOf(&o.st), true
	h, n, err := preadHeader(fd)
	if err != nil {
		o.Err = &fs.PathError{Op: "read", Path: p, Err: err}
		return o
	}
	want := name
	if o.Temp {
		want = "" // the key is in the header; the file name is temporary
	}
	o.setHeader(h, n, want)
	o.setTable(preadAt(fd))
	return o
}

func (o *object) fillStat() {
	o.ObjectSize = o.st.Size
	o.Size = o.st.Size
	o.Mode = fs.FileMode(o.st.Mode & 0o777)
	o.UID, o.GID = int(o.st.Uid), int(o.st.Gid)
}

// preadHeader reads the first headerSize bytes of fd into a header, and
// how many there were.
func preadHeader(fd int) (*header, int, error) {
	h := new(header)
	buf := unsafe.Slice((*byte)(unsafe.Pointer(h)), headerSize)
	n := 0
	for n < len(buf) {
		m, err := unix.Pread(fd, buf[n:], int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		if m == 0 {
			break
		}
		n += m
	}
	return h, n, nil
}

// copyHeader copies the header at the start of a mapping. A mapping whose
// object was truncated under it gives n = -1.
func copyHeader(mem []byte) (h *header, n int) {
	h = new(header)
	if guard(func() { n = copy(unsafe.Slice((*byte)(unsafe.Pointer(h)), headerSize), mem) }) != nil {
		*h = header{}
		return h, -1
	}
	return h, n
}

// probeListed reads the header of an object a Lister returned, by mapping
// it for a moment. It returns nil when the object is gone.
func probeListed(be backend.Backend, bi backend.Info) *object {
	o := &object{be: be, kind: namedObj, fd: -1}
	o.Backend = be.Name()
	o.ObjectSize, o.Size = bi.Size, bi.Size
	o.Mode, o.UID, o.GID = bi.Mode, bi.UID, bi.GID
	o.Attached = bi.Attached
	o.AttachedExact = bi.Attached >= 0
	o.counted = bi.Attached >= 0
	o.ID = bi.ID
	if bi.Name != "" {
		o.Key = "/" + bi.Name
	}
	var seg backend.Segment
	var err error
	if bi.Name == "" || bi.ID != "" {
		ido, ok := be.(backend.IDOpener)
		if !ok || bi.ID == "" {
			o.Err = because("listed without a name or an ID", nil, ErrCorrupt)
			return o
		}
		o.kind = idObj
		if bi.Size > 0 && bi.Size < headerSize {
			o.setHeader(nil, 0, "") // too small to be ours: foreign
			return o
		}
		seg, err = ido.OpenID(bi.ID)
	} else {
		seg, err = be.Open(bi.Name)
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		o.Err = err
		return o
	}
	defer seg.Close()
	mem := seg.Bytes()
	if o.kind == namedObj {
		o.ObjectSize, o.Size = int64(len(mem)), int64(len(mem))
	}
	if f, ok := seg.(backend.Fder); ok {
		var st unix.Stat_t
		if unix.Fstat(int(f.Fd()), &st) == nil {
			o.fid, o.hasFID = sys.FileIDOf(&st), true
			o.st = st
			o.fillStat()
		}
	}
	o.setPath(bi.Name)
	h, n := copyHeader(mem)
	o.setHeader(h, n, bi.Name)
	o.setTable(copyAt(mem))
	return o
}

// setPath names where a listed object lives, when that says more than its
// key.
func (o *object) setPath(name string) {
	if o.Path == "" && name != "" && o.Backend == "memfd" {
		o.Path = "@" + memfd.Addr(name)
	}
}

// setHeader interprets the n bytes of header h read from the object.
// name is the name the object was found under, "" when unknown (a temporary
// file, a SysV segment).
func (o *object) setHeader(h *header, n int, name string) {
	var err error
	switch {
	case h != nil && n == 0 && o.ObjectSize == 0:
		o.blank = true
	case n < 0:
		err = errors.New("memory fault reading the header (object truncated?)")
	case h == nil || n < headerSize:
		err = fmt.Errorf("%d bytes, smaller than a header", o.ObjectSize)
	case h.Magic == [8]byte{} && h.Version == 0 && h.HeaderSize == 0:
		o.blank = true
	default:
		err = validHeader(h, o.ObjectSize, name)
	}
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

// validHeader checks a copied header against the object it came from.
func validHeader(h *header, objSize int64, name string) error {
	if err := validFields(h, objSize); err != nil {
		return err
	}
	if h.KeyLen == 0 {
		return fmt.Errorf("key length 0")
	}
	key := string(h.Key[:h.KeyLen])
	if _, err := parseKey(key); err != nil {
		return fmt.Errorf("header holds an invalid key %q", key)
	}
	if name != "" && key != name {
		return fmt.Errorf("header names key %q, not %q", key, name)
	}
	return nil
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

// setTable reads the user table of an object whose header is set, with
// read (pread, or a guarded copy from a mapping), and what it tells: the
// lock's holder and the users.
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
		if o.hasFID && !o.counted {
			want[o.fid] = true
		}
	}
	scan, err := sys.ScanMaps(want)
	for _, o := range objs {
		if o.hasFID && !o.counted {
			if err != nil {
				o.Attached, o.AttachedExact = -1, false
			} else {
				o.Attached = scan.Mappers[o.fid]
				o.AttachedExact = scan.Exact()
			}
		}
		o.judge()
	}
}

// judge decides whether o is stale; for files it probes with a lease.
func (o *object) judge() {
	o.Stale = false
	switch {
	case o.Err != nil:
		o.Reason = "cannot read it: " + o.Err.Error()
		return
	case o.Foreign:
		return
	}
	if o.kind == dirObj && o.fd >= 0 && o.Attached == 0 && !o.AttachedExact {
		// Some processes could not be inspected: a lease tells whether
		// any process at all has the file open.
		switch takeLease(o.fd) {
		case nil:
			dropLease(o.fd)
			o.AttachedExact = true
		case unix.EAGAIN:
			o.Attached = -1
		}
	}
	if why := o.creatorGone(); why != "" {
		o.Reason = why
		return
	}
	switch o.kind {
	case dirObj:
		if o.fd < 0 {
			o.Reason = "cannot open it"
			return
		}
		proof, err := dirUnused(o.be, o.file, o.fd, o.Attached, o.AttachedExact)
		if err != nil {
			o.Reason = strings.TrimPrefix(err.Error(), inUsePrefix)
			return
		}
		if proof == proofLease {
			o.Attached, o.AttachedExact = 0, true
		}
	default:
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

// creatorGone returns "" when the region's creator is dead (or, for a
// blank never-published file, when it is old enough), else why not.
func (o *object) creatorGone() string {
	if o.hdr == nil {
		if o.blank && o.Temp && o.kind == dirObj {
			ct := time.Unix(o.st.Ctim.Unix())
			if time.Since(ct) < tempGrace {
				return "being created"
			}
			return ""
		}
		return "no header"
	}
	switch o.Creator {
	case Alive:
		return fmt.Sprintf("creator %d is alive", o.CreatorPID)
	case LivenessUnknown:
		return fmt.Sprintf("cannot tell whether creator %d lives (another PID namespace?)", o.CreatorPID)
	}
	return ""
}

type proof int

const (
	proofLease proof = iota + 1 // a write lease: no other open file description
	proofFlock                  // the file backend's flock protocol
	proofMaps                   // /proc/*/maps, every process read
)

// dirUnused proves that nobody else has the file open (fd is ours,
// O_RDONLY), with a lease taken and dropped at once, or says why it
// cannot. attached/exact are the /proc/*/maps count.
func dirUnused(be backend.Backend, name string, fd int, attached int, exact bool) (proof, error) {
	err := takeLease(fd)
	if err == nil {
		dropLease(fd)
		return proofLease, nil
	}
	if err == unix.EAGAIN {
		return 0, inUse("open or mapped by another process")
	}
	return fallbackUnused(be, name, fd, attached, exact, err)
}

// fallbackUnused proves non-use without a lease (leaseErr says why there is
// none): the file backend's flock, or a complete /proc walk.
func fallbackUnused(be backend.Backend, name string, fd int, attached int, exact bool, leaseErr error) (proof, error) {
	if _, ok := be.(inUser); ok {
		// Every segment of the file backend holds a shared flock.
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			unix.Flock(fd, unix.LOCK_UN)
			return proofFlock, nil
		}
		if err == unix.EWOULDBLOCK {
			return 0, inUse("locked by another process")
		}
	}
	if attached == 0 && exact {
		return proofMaps, nil
	}
	if attached > 0 {
		return 0, inUse(fmt.Sprintf("mapped by %d processes", attached))
	}
	return 0, inUse("cannot prove that no process uses it (lease: " + leaseErr.Error() + "; some processes could not be inspected)")
}

// inUse is the error of a removal refused because the region is, or may
// be, in use.
func inUse(detail string) error { return because(inUsePrefix+detail, nil, ErrInUse) }

const inUsePrefix = "in use: "

func takeLease(fd int) error {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_WRLCK)
	return err
}

func dropLease(fd int) { unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_UNLCK) }

// leaseBreaking tells whether another process is opening the file and
// waits for our lease.
func leaseBreaking(fd int) bool {
	v, err := unix.FcntlInt(uintptr(fd), unix.F_GETLEASE, 0)
	return err != nil || v != unix.F_WRLCK
}

// Stat describes the region under key. The backend is chosen as for Open:
// the key's prefix, WithBackend, SHM_BACKEND, or else the first of the
// automatic candidates that holds the key. It fails with ErrNotExist when
// there is no such object, and ErrCorrupt when the object is not a region
// (the Info returned then describes the object); when the object cannot be
// read, the error matches fs.ErrPermission and the Info holds what the
// backend tells without reading it. Unlike Open, Stat needs only read
// permission for posix and file regions: it reads their headers without
// mapping them.
func Stat(key string, opts ...Option) (Info, error) {
	obj, bname, err := findKey(key, opts)
	if err != nil {
		return Info{}, &Error{Op: "stat", Key: key, Backend: bname, Err: err}
	}
	defer obj.close()
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
	o, err := buildOptions(opts)
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
		obj, err := find(be, name)
		if err == nil {
			return obj, be.Name(), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, be.Name(), err
		}
		last = err
	}
	return nil, bname, last
}

// find locates the object under name on be and reads its header.
func find(be backend.Backend, name string) (*object, error) {
	if db, ok := be.(dirBackend); ok {
		o := probeFile(be, db.Dir(), name)
		if o == nil {
			return nil, because("", &fs.PathError{Op: "stat", Path: filepath.Join(db.Dir(), name), Err: unix.ENOENT}, ErrNotExist)
		}
		return o, nil
	}
	if _, ok := be.(backend.IDOpener); ok {
		if l, ok := be.(backend.Lister); ok {
			return findListed(be, l, name)
		}
	}
	o := &object{be: be, kind: namedObj, fd: -1, Info: Info{Backend: be.Name(), Key: "/" + name}}
	seg, err := be.Open(name)
	if err != nil {
		return nil, classify(err)
	}
	o = probeSegment(o, seg, name)
	return o, nil
}

// probeSegment fills o from a mapping of the object, and closes it.
func probeSegment(o *object, seg backend.Segment, name string) *object {
	defer seg.Close()
	mem := seg.Bytes()
	o.ObjectSize, o.Size = int64(len(mem)), int64(len(mem))
	o.UID, o.GID, o.Attached = -1, -1, -1
	if f, ok := seg.(backend.Fder); ok {
		if unix.Fstat(int(f.Fd()), &o.st) == nil {
			o.fid, o.hasFID = sys.FileIDOf(&o.st), true
			o.fillStat()
		}
	}
	o.setPath(name)
	h, n := copyHeader(mem)
	o.setHeader(h, n, name)
	o.setTable(copyAt(mem))
	return o
}

// findListed finds the object under name on a backend whose Lister
// returns objects without their names (sysv): it opens name to read its
// header, then looks for the listed object with that header, among those of
// the same size.
func findListed(be backend.Backend, l backend.Lister, name string) (*object, error) {
	seg, err := be.Open(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, classify(err)
		}
		o := &object{be: be, kind: idObj, fd: -1, Info: Info{Backend: be.Name(), Key: "/" + name, Attached: -1, UID: -1, GID: -1}}
		o.Err = err
		return o, nil
	}
	size := int64(len(seg.Bytes()))
	want, n := copyHeader(seg.Bytes())
	seg.Close()
	if n < headerSize || validHeader(want, size, name) != nil {
		// Not a region: describe it, without an ID.
		o := &object{be: be, kind: idObj, fd: -1, Info: Info{Backend: be.Name(), Key: "/" + name, Attached: -1, UID: -1, GID: -1}}
		o.ObjectSize, o.Size = size, size
		o.setHeader(want, n, name)
		if !o.Foreign {
			o.Foreign, o.Reason = true, "not a region: header not ready"
		}
		return o, nil
	}
	infos, err := l.List()
	if err != nil {
		return nil, err
	}
	for _, bi := range infos {
		if bi.Name != "" && bi.Name != name || bi.Name == "" && bi.Size != size {
			continue
		}
		o := probeListed(be, bi)
		if o == nil || o.hdr == nil || o.Key != "/"+name {
			continue
		}
		if o.hdr.Created == want.Created && o.hdr.creator() == want.creator() {
			return o, nil
		}
	}
	return nil, because("no such region (removed meanwhile)", nil, ErrNotExist)
}

// Remove removes the region under key (its backend chosen as for Stat) if
// it is stale: its creator is dead and no
// process uses it. It never removes a region in use: it fails with ErrInUse
// when the creator lives (or cannot be judged from here) or a process has
// the region open or mapped, or when that cannot be proven. It fails with
// ErrNotExist when there is no such region, and ErrCorrupt when the object
// under the key is not a region.
//
// To remove a region whose creator lives, Open it and Unlink it.
func Remove(key string, opts ...Option) error {
	obj, bname, err := findKey(key, opts)
	if err == nil {
		obj.close()
		switch {
		case obj.Err != nil:
			err = classify(obj.Err)
		case obj.Foreign:
			err = because(obj.Reason, nil, ErrCorrupt)
		default:
			err = remove(obj, nil)
		}
	}
	if err != nil {
		return &Error{Op: "remove", Key: key, Backend: bname, Err: err}
	}
	return nil
}

// RemoveStale removes every stale region that List (with the same options)
// finds, and returns those it removed. Each one is checked again just before
// its removal, so that a region that came into use since it was listed is
// left alone. The error joins what went wrong, region by region.
func RemoveStale(ctx context.Context, opts ...ListOption) ([]Info, error) {
	lo := buildListOptions(opts)
	lo.foreign = false
	objs, err := list(ctx, lo)
	errs := []error{err}
	var removed []Info
	for _, o := range objs {
		if !o.Stale {
			continue
		}
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		if err := remove(o, o); err != nil {
			if !errors.Is(err, ErrNotExist) && !errors.Is(err, ErrInUse) {
				errs = append(errs, &Error{Op: "remove", Key: o.Key, Backend: o.Backend, Err: err})
			}
			continue
		}
		removed = append(removed, o.Info)
	}
	return removed, errors.Join(errs...)
}

// remove removes the object o describes after checking again, on what it
// finds now, that it is stale. With expect set, the region must also still
// be the one expect describes (same creator and creation time).
func remove(o *object, expect *object) error {
	check := func(h *header, blank bool, st *unix.Stat_t) error {
		return checkStale(o, expect, h, blank, st)
	}
	switch o.kind {
	case dirObj:
		return removeFile(o.be, o.dir, o.file, o.Temp, check)
	case idObj:
		return removeID(o.be, o.ID, check)
	default:
		return removeNamed(o.be, o.Key[1:], check)
	}
}

// checkStale checks, on a fresh copy of the header, that the object is a
// stale region (and the one expect describes).
func checkStale(o, expect *object, h *header, blank bool, st *unix.Stat_t) error {
	if h == nil {
		if !(blank && o.Temp && st != nil) {
			return because("not a region", nil, ErrCorrupt)
		}
		if expect != nil && !expect.blank {
			return inUse("header changed since it was listed")
		}
		if time.Since(time.Unix(st.Ctim.Unix())) < tempGrace {
			return inUse("being created")
		}
		return nil
	}
	if expect != nil && (expect.hdr == nil || h.Created != expect.hdr.Created || h.creator() != expect.hdr.creator()) {
		return inUse("another region took its place since it was listed")
	}
	switch sys.Check(h.creator()) {
	case sys.Alive:
		return inUse(fmt.Sprintf("creator %d is alive", h.CreatorPID))
	case sys.Unknown:
		return because(fmt.Sprintf("cannot tell whether creator %d lives (another PID namespace?)", h.CreatorPID), nil, ErrInUse)
	}
	return nil
}

// removeFile removes the file name in dir if check accepts its header and
// nobody else has it open. It holds a write lease from before it reads the
// header until the name is gone: a process that opens the file in the
// meantime waits in open(2) and then gets the removed file (with no link
// left, st_nlink 0). A published name is first renamed to a tombstone, and
// the tombstone removed only if it is the very file that was checked; a
// file that took the name in the meantime is put back.
func removeFile(be backend.Backend, dir, name string, temp bool, check func(*header, bool, *unix.Stat_t) error) error {
	p := filepath.Join(dir, name)
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.EWOULDBLOCK {
			return inUse("another process is removing or opening it")
		}
		return classify(&fs.PathError{Op: "open", Path: p, Err: err})
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &fs.PathError{Op: "fstat", Path: p, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return because("not a regular file", nil, ErrCorrupt)
	}
	verify := func() error {
		h, n, err := preadHeader(fd)
		if err != nil {
			return &fs.PathError{Op: "read", Path: p, Err: err}
		}
		var hp *header
		blank := n == 0 && st.Size == 0
		if n == headerSize && validHeader(h, st.Size, "") == nil {
			hp = h
			if !temp && string(h.Key[:h.KeyLen]) != name {
				return because(fmt.Sprintf("header names key %q", h.Key[:h.KeyLen]), nil, ErrCorrupt)
			}
		} else if n == headerSize && h.Magic == [8]byte{} && h.Version == 0 && h.HeaderSize == 0 {
			blank = true
		}
		return check(hp, blank, &st)
	}
	// Once without the lease, for a precise reason when the creator lives;
	// again under the lease, which freezes who has the file open.
	if err := verify(); err != nil {
		return err
	}
	leased := false
	switch err := takeLease(fd); err {
	case nil:
		leased = true
		defer dropLease(fd)
	case unix.EAGAIN:
		return inUse("open or mapped by another process")
	default:
		if _, ok := be.(inUser); ok {
			// The file backend: hold its exclusive flock instead, which
			// makes its Opens wait.
			if ferr := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); ferr != nil {
				if ferr == unix.EWOULDBLOCK {
					return inUse("locked by another process")
				}
				return because("in use: cannot prove that no process uses it", &fs.PathError{Op: "fcntl F_SETLEASE", Path: p, Err: err}, ErrInUse)
			}
			defer unix.Flock(fd, unix.LOCK_UN)
		} else {
			fid := sys.FileIDOf(&st)
			scan, serr := sys.ScanMaps(map[sys.FileID]bool{fid: true})
			if serr != nil || !scan.Exact() || scan.Mappers[fid] != 0 {
				return because("in use: cannot prove that no process uses it", &fs.PathError{Op: "fcntl F_SETLEASE", Path: p, Err: err}, ErrInUse)
			}
		}
	}
	if err := verify(); err != nil {
		return err
	}
	if leased && leaseBreaking(fd) {
		return inUse("another process is opening it")
	}
	if temp {
		// A temporary name is never opened by users and never reused.
		if err := unix.Unlink(p); err != nil {
			return classify(&fs.PathError{Op: "unlink", Path: p, Err: err})
		}
		return nil
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tomb := filepath.Join(dir, tombPrefix+hex.EncodeToString(rnd[:]))
	if err := unix.Renameat2(unix.AT_FDCWD, p, unix.AT_FDCWD, tomb, unix.RENAME_NOREPLACE); err != nil {
		if err != unix.EINVAL && err != unix.ENOSYS {
			return classify(&fs.PathError{Op: "rename", Path: p, Err: err})
		}
		// No RENAME_NOREPLACE here: check the name, then unlink it.
		var now unix.Stat_t
		if err := unix.Lstat(p, &now); err != nil || now.Dev != st.Dev || now.Ino != st.Ino {
			return inUse("another file took its name")
		}
		if err := unix.Unlink(p); err != nil {
			return classify(&fs.PathError{Op: "unlink", Path: p, Err: err})
		}
		return nil
	}
	putBack := func(why string) error {
		if err := unix.Renameat2(unix.AT_FDCWD, tomb, unix.AT_FDCWD, p, unix.RENAME_NOREPLACE); err != nil {
			return fmt.Errorf("%s, and it could not be given its name back (left at %s): %w", why, tomb, err)
		}
		return inUse(why)
	}
	var now unix.Stat_t
	if err := unix.Lstat(tomb, &now); err != nil || now.Dev != st.Dev || now.Ino != st.Ino {
		// Between our open and the rename, someone removed the file and
		// another took its name: give it back.
		return putBack("another file took its name")
	}
	if leased {
		// A process that looked the name up before the rename reaches our
		// lease within microseconds, unless it is descheduled: give it a
		// moment, and give the name back if it shows up. (Package shm's
		// Open also rejects an object without links.)
		time.Sleep(settle)
		if leaseBreaking(fd) {
			return putBack("another process is opening it")
		}
	}
	if err := unix.Unlink(tomb); err != nil {
		return &fs.PathError{Op: "unlink", Path: tomb, Err: err}
	}
	return nil
}

// removeID removes the object with the given ID (sysv) if check accepts its
// header and the kernel counts no attachment.
//
// There is a window: a process that attaches between the attach count
// read here and the removal keeps a region whose key is gone (see the
// report in cmd/shmctl/README.md).
func removeID(be backend.Backend, id string, check func(*header, bool, *unix.Stat_t) error) error {
	ido, ok1 := be.(backend.IDOpener)
	l, ok2 := be.(backend.Lister)
	if !ok1 || !ok2 {
		return because("backend cannot remove by ID", nil, ErrInvalidOption)
	}
	seg, err := ido.OpenID(id)
	if err != nil {
		return classify(err)
	}
	h, n := copyHeader(seg.Bytes())
	size := int64(len(seg.Bytes()))
	seg.Close()
	if n < headerSize || validHeader(h, size, "") != nil {
		return because("not a region", nil, ErrCorrupt)
	}
	if err := check(h, false, nil); err != nil {
		return err
	}
	infos, err := l.List()
	if err != nil {
		return err
	}
	for _, bi := range infos {
		if bi.ID != id {
			continue
		}
		switch {
		case bi.Attached < 0:
			return inUse("cannot tell whether a process attaches it")
		case bi.Attached > 0:
			return inUse(fmt.Sprintf("%d processes attached", bi.Attached))
		}
		return classify(ido.UnlinkID(id))
	}
	return because("gone", nil, ErrNotExist)
}

// removeNamed removes the object name of a backend that finds objects by
// name only (memfd and others) if check accepts its header and no process
// maps it, by /proc/*/maps. A memfd region's creator is its server, alive
// by construction, so memfd regions are never removed here.
func removeNamed(be backend.Backend, name string, check func(*header, bool, *unix.Stat_t) error) error {
	seg, err := be.Open(name)
	if err != nil {
		return classify(err)
	}
	o := probeSegment(&object{be: be, kind: namedObj, fd: -1, Info: Info{Backend: be.Name()}}, seg, name)
	if o.hdr == nil {
		return because("not a region", nil, ErrCorrupt)
	}
	if err := check(o.hdr, false, nil); err != nil {
		return err
	}
	if !o.hasFID {
		return inUse("cannot tell whether a process maps it")
	}
	scan, err := sys.ScanMaps(map[sys.FileID]bool{o.fid: true})
	if err != nil || !scan.Exact() || scan.Mappers[o.fid] != 0 {
		return inUse("cannot prove that no process maps it")
	}
	return classify(be.Unlink(name))
}
