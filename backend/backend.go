// Package backend defines the narrow interface between package shm and the
// mechanisms that provide named shared memory (POSIX shm_open, SysV shmget,
// mapped files, memfd).
//
// Users of shm never need this package except to pass a backend to
// shm.WithBackend. It exists for backend implementers, in the way
// database/sql/driver exists for database drivers: package shm owns the
// region header, the ready handshake and the lock; a backend only creates,
// opens, maps and removes raw objects.
//
// A backend package makes its backend available by name with Register, in
// an init function, as a database/sql driver does with sql.Register; a
// program imports it (import _ "example.com/tmpf") and then names it in a
// key ("tmpf:/name") or in SHM_BACKEND=tmpf[:ARG]; tools built with it
// (shmctl --backend, shmbench -backend) find it with Lookup and Names. The built-in
// backends, posix, sysv, memfd and file, register themselves; package shm
// imports them.
//
// A backend reports failures with errors that match fs.ErrExist,
// fs.ErrNotExist and fs.ErrPermission where they mean the same (a
// syscall.Errno such as EEXIST does), os.ErrDeadlineExceeded when a wait
// for another process ran out of time, syscall.EOVERFLOW when an object is
// too large to map in this process (a 32-bit one), and ErrForeign when
// something that cannot be one of its objects sits under a name. Package
// shm adds the key and the operation.
//
// Capabilities that not every backend has are optional interfaces, which
// package shm detects with a type assertion. What each one gives, and the
// tests of package conformance that look for it (a test whose interface a
// backend lacks says so and checks what package shm does without it):
//
//   - Segment Owned: Open refuses a region of an owner it does not trust
//     (shm.WithTrustedUIDs). Not optional in effect: a backend whose
//     segments lack it must refuse such owners in Open itself (Trusts,
//     ErrUntrusted), or conformance's Squatter test fails.
//   - Segment Fder: package shm reads and writes the header through the
//     descriptor, and shm.Stat and shm.List learn the object's mode, owner
//     and file from it (fstat); Region.File. Conformance: Truncated
//     (ftruncate through it), the Stat checks of Modes and Chown (unless
//     the backend is a Lister and IDOpener), BigRegion's room check.
//   - Segment Sealed: Truncated expects the object to refuse to shrink.
//   - Segment Chowner: Region.Chown (else shm.ErrInvalidOption).
//     Conformance: Chown.
//   - Segment Unlinker, Namer: Region.Unlink without opening the name again
//     to check that it still names this region.
//   - Backend ContextOpener, SizedOpener: Open keeps to its timeout, and
//     maps only what the region needs.
//   - Backend CreateWaiter: an Open waiting for a key wakes when it is
//     published instead of polling for it.
//   - Backend ReadOnlyOpener: shm.WithReadOnly (else shm.ErrInvalidOption).
//     Conformance: ReadOnly.
//   - Backend Pender, or VisibleBeforePublish with Segment Creator: Open
//     fails at once with shm.ErrOwnerDead when a creator died before
//     publishing, and cleanup finds what it left. Conformance:
//     CreatorDiesBeforeReady, and the cleanup after every test.
//   - Backend Lister (ContextLister, IDOpener): shm.List, shm.RemoveStale
//     and cmd/shmctl see the backend's objects. Conformance: ManyRegions
//     and the leak checks of InitPanics and BadInputs.
//   - Backend Inspector: shm.List and shm.Stat read headers with read
//     permission alone, without mapping the object.
//   - Backend Remover: shm.Remove, shm.RemoveStale, shm.WithReplaceStale
//     and shmctl gc remove stale regions under the backend's own proof
//     that nobody uses them. Conformance: ReplaceStale.
//
// Package shm removes an object as stale only when it can prove that no
// process uses it: through Remover, or, for a backend without it, by
// counting the processes of /proc/*/maps that map the file of an Fder
// segment, which proves nothing where some process cannot be inspected (a
// PID 1 whose maps even root may not read), and then it refuses with
// shm.ErrInUse. Conformance's ReplaceStale test checks that refusal then.
package backend

import (
	"context"
	"errors"
	"io/fs"
	"time"
)

// ErrForeign is matched by a backend's errors when the name holds something
// that cannot be one of its objects (a symbolic link, a FIFO, a directory,
// a file with more than one link...): package shm reports it as
// shm.ErrCorrupt, with the backend's message saying what was found.
var ErrForeign = errors.New("not a backend object")

// ErrUntrusted is matched by a backend's errors when it refused an object
// because of who owns or serves it (see WithTrust): package shm reports it
// as shm.ErrUntrustedOwner.
var ErrUntrusted = errors.New("owner not trusted")

// Backend creates, opens and removes named shared-memory objects.
//
// Names passed to a Backend are already validated by package shm: 1 to 200
// bytes, no '/' and no NUL, not "." or "..". Sizes are the whole object
// (package shm's header plus the user's data), at least 1 byte.
type Backend interface {
	// Name is a short lower-case name such as "posix": the name its
	// package registers it under (see Register), which is also the prefix
	// a key may carry ("posix:/name").
	Name() string

	// Create makes a new object of exactly size bytes, with permission
	// bits perm applied exactly (whatever the umask), its pages reserved so
	// that touching them never raises SIGBUS for want of space, and maps
	// it read-write and shared. Where the backend can, the object is not
	// yet visible under name: Publish makes it so.
	//
	// Create fails with an error matching fs.ErrExist when name is
	// already taken (it may also find out only at Publish).
	Create(name string, size int64, perm fs.FileMode) (Pending, error)

	// Open maps an existing, published object read-write and shared. It
	// fails with an error matching fs.ErrNotExist when there is none.
	Open(name string) (Segment, error)

	// Unlink removes name. Mappings keep working; new Opens fail with
	// fs.ErrNotExist. It fails with an error matching fs.ErrNotExist when
	// there is no such name.
	Unlink(name string) error
}

// Segment is one mapping of an object.
type Segment interface {
	// Bytes is the whole mapping: len(Bytes()) is the object's size when
	// it was mapped, or what OpenSized asked for. It stays valid until
	// Close.
	Bytes() []byte

	// Close unmaps the segment and releases what the mapping held (the
	// descriptor, a socket, a lock). It does not remove the name.
	Close() error
}

// Pending is a created object that is mapped but possibly not yet visible
// under its name.
type Pending interface {
	Segment

	// Publish makes the object visible under its name, exclusively: it
	// fails with an error matching fs.ErrExist when the name was taken in
	// the meantime, in which case the object is discarded (the mapping
	// stays valid until Close). After Publish, the Pending is a Segment
	// like any other.
	Publish() error

	// Discard removes an object that was not published (or whose Publish
	// failed) and closes the mapping.
	Discard() error
}

// ContextOpener is implemented by backends whose Open may wait on another
// process (memfd asks the owner for the descriptor): OpenContext is Open
// that gives up when ctx is done, so that shm.Open keeps to its timeout.
type ContextOpener interface {
	OpenContext(ctx context.Context, name string) (Segment, error)
}

// CreateWaiter is implemented by backends that can tell when an object may
// have been published, so that an Open waiting for a key wakes at once
// instead of polling (POSIX and file: inotify on the directory).
type CreateWaiter interface {
	// WaitCreate returns when an object named name may have appeared
	// (spuriously too), or when ctx is done. It is called after a look
	// found no such object: an object published since must end the wait.
	WaitCreate(ctx context.Context, name string) error
}

// SizedOpener is implemented by backends whose objects a peer may resize
// (POSIX, file), so that Open maps what the region needs rather than the
// whole object, however large a peer made it.
type SizedOpener interface {
	// OpenSized is OpenContext that reads the object's first n bytes
	// (fewer when it is shorter), then maps as many bytes as size returns
	// for them (at least 1), or the whole object when it is shorter. An
	// error from size is returned as is.
	OpenSized(ctx context.Context, name string, n int, size func(head []byte) (int64, error)) (Segment, error)
}

// ReadOnlyOpener is implemented by backends that can map an object for
// reading only, for users that may only read it (shm.WithReadOnly). The
// segment's Bytes is then read-only memory: writing it faults.
type ReadOnlyOpener interface {
	// OpenReadOnly is OpenContext for reading only: read permission on
	// the object suffices. With size not nil it maps as OpenSized does.
	OpenReadOnly(ctx context.Context, name string, n int, size func(head []byte) (int64, error)) (Segment, error)
}

// Unlinker is implemented by segments that can remove their own object's
// name and never a successor's (SysV: IPC_RMID by shmid). It fails with an
// error matching fs.ErrNotExist when the name no longer leads to the
// segment's object. Package shm prefers it to Namer and Backend.Unlink.
type Unlinker interface {
	Unlink() error
}

// Namer is implemented by segments that can tell cheaply whether their
// object still has the name it was published or opened under (the same
// inode), so that an Unlink never removes a successor under the same name.
// It fails with an error matching fs.ErrNotExist when nothing has the name.
type Namer interface {
	StillNamed() (bool, error)
}

// Owned is implemented by segments that know who owns their object: the
// file's owner (POSIX, file), the SysV segment's owner (shm_perm.uid), the
// uid of the process that serves a memfd. Package shm uses it to refuse a
// region that someone it does not trust put under a key (a squatter); see
// shm.WithTrustedUIDs, which holds on every backend: a backend whose
// segments do not implement Owned must refuse such owners in Open itself.
type Owned interface {
	Owner() int
}

// Chowner is implemented by segments whose object can change owner.
type Chowner interface {
	Chown(uid, gid int) error
}

// Fder is implemented by segments backed by a file descriptor. The
// descriptor belongs to the segment and is valid until Close. Package shm
// reads and writes the header through it (pread, pwrite), and learns the
// object's mode, owner and file from it (fstat) for Stat, List and the
// count of the processes that map the object.
type Fder interface {
	Fd() uintptr
}

// Sealed is implemented by segments whose object cannot shrink while mapped
// (memfd seals, SysV segments), so that touching any byte of Bytes never
// faults. Package shm may skip fault protection for them.
type Sealed interface {
	Sealed() bool
}

// VisibleBeforePublish is implemented by backends whose objects are visible
// under their name from Create on (SysV), so that an opener can meet an
// object whose header is still being written.
type VisibleBeforePublish interface {
	VisibleBeforePublish() bool
}

// Creator is implemented by segments that know the PID of the process that
// created their object, in the caller's PID namespace (0 when unknown), so
// that an opener can tell a blank object whose creator died from one still
// being written. Backends with VisibleBeforePublish should implement it.
type Creator interface {
	CreatorPID() int
}

// Pender is implemented by backends that build an object under a temporary
// name and publish it under its own when it is ready (POSIX, file). An
// opener that does not find a name asks for the objects being made for it,
// so that it can tell a creator that died half-way (and fail at once) from
// one still at work (and wait). Cleanup tools remove the dead ones.
type Pender interface {
	// Pending returns the objects now being created for name, each with
	// its first n bytes (fewer when it is shorter).
	Pending(name string, n int) ([]PendingObject, error)
	// RemovePending removes the object being created that id names.
	RemovePending(id string) error
}

// PendingObject is an object being created, as Pender reports it.
type PendingObject struct {
	ID   string // for RemovePending: the temporary name
	Head []byte // the object's first bytes
	UID  int    // the object's owner, -1 when unknown
}

// Info describes a named object as a Lister sees it, before package shm
// reads its header.
type Info struct {
	Name string      // the name, without a leading '/' (a temporary name when Temp)
	Size int64       // the object's size in bytes
	Mode fs.FileMode // permission bits
	UID  int         // owner, or -1 when unknown
	GID  int         // group, or -1 when unknown
	// Attached is the number of processes that map the object, or -1 when
	// the backend cannot tell (package shm then counts them in
	// /proc/*/maps, by Dev and Ino).
	Attached int
	// ID is a backend-specific handle for backends whose objects cannot be
	// found by name alone (SysV: the shmid); see IDOpener. Empty otherwise.
	ID string
	// Path is where the object lives, for people: a file's path, an
	// abstract socket's name ("@..."); empty when it has none (SysV).
	Path string
	// Temp is set for an object under a temporary name: being created and
	// not yet published, or left by a creator that died before it
	// published it (see Pender), or a removal's leftover. Its header names
	// its key.
	Temp bool
	// Dev and Ino identify the object's file as /proc/PID/maps shows it
	// (the device as unix.Mkdev encodes it), or are 0 when there is none.
	Dev, Ino uint64
	// Changed is when the object's status last changed (ctime), or zero.
	Changed time.Time
	// Foreign is set for something under the backend's names that cannot
	// be one of its objects (a symbolic link, a FIFO, a hard-linked file),
	// and says what it is. The other fields are what the backend saw.
	Foreign string
}

// Lister is implemented by backends that can enumerate their objects:
// published ones, and those under temporary names with Temp set. Name is
// empty when the backend cannot know it without mapping the object (SysV);
// ID is then set.
type Lister interface {
	List() ([]Info, error)
}

// Inspector is implemented by backends that can read an object's first
// bytes without mapping it for writing (POSIX and file: pread on a
// read-only descriptor; SysV: a read-only attachment), so that listing and
// Stat need only read permission and leave the object as it is.
type Inspector interface {
	// Inspect returns the first n bytes of the object that in names (by
	// ID when set, else by Name) and its Info as of now. It fails with an
	// error matching fs.ErrNotExist when the object is gone, and
	// ErrForeign when it cannot be one of the backend's objects.
	Inspect(in Info, n int) ([]byte, Info, error)
}

// ErrInUse is matched by a Remover's errors when the object is, or may be,
// in use: package shm reports it as shm.ErrInUse.
var ErrInUse = errors.New("in use")

// Remover is implemented by backends that can prove that no process uses
// an object, each with a proof of its own (a write lease on a file, which
// the kernel grants only when no other descriptor or mapping exists; the
// file backend's flock protocol; SysV's attach count), and remove it under
// that proof. Package shm removes stale regions only through it: objects of
// a backend without it are never stale unless a complete /proc walk proves
// them unmapped.
type Remover interface {
	// Unused returns nil when the backend can prove now that no process
	// uses the object in, and otherwise an error matching ErrInUse that
	// says why (or why it cannot tell). It removes nothing.
	Unused(in Info) error
	// RemoveUnused removes the object in when no process uses it, proved
	// as Unused proves it and held while it calls check with the object's
	// first n bytes and its Info as of now. check's error stops the removal
	// and is returned as is. An object with Temp set goes under its
	// temporary name.
	RemoveUnused(in Info, n int, check func(head []byte, now Info) error) error
}

// WithTrust returns a context that carries the caller's policy on whose
// objects it accepts (package shm's WithTrustedUIDs). Package shm passes it
// to ContextOpener.OpenContext and refuses a Segment whose Owner it does
// not trust; a backend that judges its peers before it has a segment (memfd
// checks who serves a key) applies the policy itself, with Trusts.
func WithTrust(ctx context.Context, trusts func(uid int) bool) context.Context {
	return context.WithValue(ctx, trustKey{}, trusts)
}

// Trusts returns the policy that WithTrust put in ctx, if any.
func Trusts(ctx context.Context) (trusts func(uid int) bool, ok bool) {
	trusts, ok = ctx.Value(trustKey{}).(func(uid int) bool)
	return trusts, ok
}

type trustKey struct{}

// ContextLister is implemented by Listers whose listing may wait on other
// processes (memfd asks each owner): ListContext is List that gives up
// when ctx is done. It returns what it found even with an error, which
// joins one error per object that did not answer (matching
// os.ErrDeadlineExceeded) and ctx's.
type ContextLister interface {
	ListContext(ctx context.Context) ([]Info, error)
}

// IDOpener is implemented by backends whose listed objects may lack a name
// (SysV): it maps, or removes, an object by the ID a Lister gave. OpenID
// maps the object only to read its header: the mapping may be read-only
// (SysV: SHM_RDONLY).
type IDOpener interface {
	OpenID(id string) (Segment, error)
	UnlinkID(id string) error
}
