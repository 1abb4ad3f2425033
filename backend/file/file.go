// Package file is the file-backed backend: a key "/name" is the regular file
// dir/name, mapped read-write and shared, and guarded by flock(2) locks
// (github.com/gofrs/flock) that tell who uses it.
//
// # When to pick it
//
// Pick it to share a region through a directory that several containers, or
// processes in different mount, IPC or PID namespaces, can all see: a volume
// mounted into each of them (an emptyDir, a host path). /dev/shm and SysV
// segments are private to a container by default; a directory is not. On a
// tmpfs volume it behaves like backend/posix; on a disk-backed filesystem
// the kernel also writes the pages back to disk, which costs I/O but does
// not make the region durable (see below). Within one host and namespace,
// backend/posix is faster to create and open (no locks).
//
// # Creation
//
// As backend/posix does: the owner creates the file under a temporary name
// (".shmgo-file-tmp.", then the name and a random suffix) in the same directory with
// O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, takes an exclusive flock on it,
// applies the mode with fchmod (exact, whatever the umask) and reserves its
// pages with fallocate, so that a full filesystem fails at Create with
// ENOSPC rather than with SIGBUS on the first touch. A filesystem without
// fallocate (EOPNOTSUPP: NFS before 4.2, some FUSE filesystems) gets
// ftruncate and the whole file written with zeros instead: slower, and it
// commits the space only where blocks are overwritten in place (not on
// copy-on-write or compressing filesystems such as btrfs or ZFS). Package shm
// then writes its header, and Publish gives the file its name with
// renameat2(RENAME_NOREPLACE) (link(2) where the filesystem lacks it): a
// half-made region is never visible under its name, and of two owners
// racing for one name exactly one wins; the other gets fs.ErrExist.
//
// # Locks
//
// Every segment holds a shared flock on its file for as long as it is open;
// the owner holds an exclusive one from Create until Publish, and downgrades
// it to shared just before the file gets its name. So, seen from outside:
//
//   - a file that can be locked exclusively (LOCK_EX|LOCK_NB) is mapped by
//     no one: InUse reports false;
//   - a file locked exclusively is being initialised (it still has its
//     temporary name), or an InUse probe holds it for a moment;
//   - a file locked shared is mapped by someone.
//
// The kernel drops a process's flocks when it dies, so a crashed user never
// leaves a file "in use". flock is per open file description: it follows the
// file through the rename and stays on the inode after an Unlink. gofrs/flock
// opens the file itself, by path, next to the descriptor that is mapped; the
// backend opens it without O_CREAT (so a lock never recreates a removed
// file) and checks that both descriptors name the same inode. Programs that
// map these files without taking the shared lock (C programs, say) are
// invisible to InUse.
//
// Anyone who may read a file may lock it, so a foreign process can keep a
// region's file locked exclusively, or (its owner) hold a lease on it.
// OpenContext then keeps trying, with backoff, until the caller's deadline,
// shorter or longer than the backend's own 2 seconds, and fails with an
// error matching os.ErrDeadlineExceeded that says what held it up. Open
// opens like backend/posix (O_NOFOLLOW|O_NONBLOCK, fstat): anything but a
// regular file with one link under a name is rejected, saying what it is.
//
// On network filesystems flock may not mean the same thing. NFS clients
// (Linux 2.6.12 and later) emulate it with POSIX byte-range locks, which
// belong to the process rather than the descriptor: two segments of one file
// in one process share one lock, closing either drops it, and InUse called
// by a process that maps the file succeeds and drops that process's lock.
// Such locks also depend on the NFS lock service and on the client keeping
// its lease. Some network and FUSE filesystems keep flocks local to each
// client. Only use InUse-based cleanup where the filesystem's flock is the
// kernel's own (tmpfs, ext4, xfs, overlayfs volumes).
//
// # Persistence is not a goal
//
// A region lives as long as its file: it outlives its processes, and on a
// disk-backed filesystem it outlives a reboot too. But what is on disk then
// is whatever the kernel had written back, in no particular order and
// without msync: not a consistent snapshot, and the header's creator and
// lock holder records (PIDs, start times, PID namespaces) describe processes
// of the previous boot that may even look alive now. Package shm will open
// such a region as if nothing happened. Remove the directory's regions at
// boot (every InUse is false then), or keep them on a tmpfs.
//
// # Cleanup
//
// A region's file is stale when InUse reports false (no process has it open)
// and package shm's header says that its creator is dead; a region whose
// creator lives may merely be waiting for users, because Close does not
// remove a region. A temporary file that is not locked was left
// by a creator that died before Publish, and can be removed (in the
// microseconds between creating its file and locking it, a creator whose
// file is removed fails to lock it, and Create returns an error). List does
// not probe locks: it reports Attached as -1.
//
// # Other limits
//
// Nothing stops another process with write access from truncating a file
// under its mappings (segments are not backend.Sealed): touching the lost
// pages then raises SIGBUS, and the next Open reports the region as
// corrupt because its header claims more bytes than the file holds.
package file

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/gofrs/flock"
	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/internal/dirobj"
)

// tempPrefix starts the names of files still being created (List reports
// them as Temp).
const tempPrefix = ".shmgo-file-tmp."

// lockWait bounds how long Create, Open, and OpenContext with a context
// that has no deadline, keep trying to open the file and take their flock
// while another process holds a lease on it or keeps it locked exclusively
// (an InUse probe holds it for a few microseconds, a cleanup for about a
// millisecond; anything longer is a foreign process). With a deadline,
// OpenContext keeps to it instead, shorter or longer. Tests shorten it.
var lockWait = 2 * time.Second

// Backend is the file-backed backend. The zero value is not usable; call
// New.
type Backend struct {
	dir string
}

// New returns a backend that keeps its regions in the directory dir, which
// must exist.
func New(dir string) *Backend { return &Backend{dir: dir} }

// Name returns "file".
func (b *Backend) Name() string { return "file" }

// Dir returns the directory that holds the regions.
func (b *Backend) Dir() string { return b.dir }

// objs is the directory, whose opens take a shared flock.
func (b *Backend) objs() dirobj.Dir {
	return dirobj.Dir{Path: b.dir, TempPrefix: tempPrefix, Lock: lockShared}
}

func (b *Backend) path(name string) string { return filepath.Join(b.dir, name) }

// The flags gofrs/flock opens its own descriptor with: never O_CREAT (its
// default), which would recreate a file removed in the meantime; never
// following a symbolic link; never blocking on a lease or a FIFO put under
// the name meanwhile (EWOULDBLOCK, and lockFile tries again).
const lockFlags = os.O_RDWR | syscall.O_NOFOLLOW | syscall.O_NONBLOCK | syscall.O_NOCTTY

// Create implements backend.Backend. The file is locked exclusively until
// Publish.
func (b *Backend) Create(name string, size int64, perm fs.FileMode) (backend.Pending, error) {
	// Owner-only until Chmod: the lock below opens the file by path, which
	// mode 0 would forbid to a process without CAP_DAC_OVERRIDE.
	t, err := b.objs().CreateTemp(name, 0o600)
	if err != nil {
		return nil, err
	}
	lk, _, err := lockFile(context.Background(), t.Tmp, t.Fd, true)
	if err != nil {
		return nil, t.Fail("flock", err)
	}
	if err := t.Chmod(perm); err != nil {
		t.Abort()
		lk.Unlock()
		return nil, err
	}
	if err := t.Reserve(size, true); err != nil {
		t.Abort()
		lk.Unlock()
		return nil, err
	}
	s, err := t.Map(size, 0)
	if err != nil {
		lk.Unlock()
		return nil, err
	}
	s.OnClose(unlocker(lk))
	s.OnPublish(func() error { return downgrade(lk, s.Path()) })
	return s, nil
}

// Open implements backend.Backend: OpenContext without a deadline of the
// caller's, which waits for up to 2 seconds for a lease or an exclusive
// lock held by another process.
func (b *Backend) Open(name string) (backend.Segment, error) {
	return b.OpenContext(context.Background(), name)
}

// OpenContext implements backend.ContextOpener. The segment holds a shared
// lock on the file until Close.
//
// The file is opened as backend/posix opens it (O_NOFOLLOW|O_NONBLOCK,
// fstat): anything but a regular file with one link under the name fails at
// once with an error matching dirobj.ErrForeign that says what is there.
// While another process holds a lease on the file or keeps it locked
// exclusively, OpenContext tries again with backoff until ctx is done (or
// for 2 seconds when ctx has no deadline), then fails with an error
// matching os.ErrDeadlineExceeded (or wrapping context.Canceled) and
// syscall.EWOULDBLOCK.
func (b *Backend) OpenContext(ctx context.Context, name string) (backend.Segment, error) {
	return b.objs().OpenMapped(ctx, name, lockWait, dirobj.Want{})
}

// OpenReadOnly implements backend.ReadOnlyOpener: OpenContext (or
// OpenSized, with size) that opens the file O_RDONLY, holds its shared lock
// through a read-only descriptor, and maps it PROT_READ, so that read
// permission on the file suffices.
func (b *Backend) OpenReadOnly(ctx context.Context, name string, n int, size func(head []byte) (int64, error)) (backend.Segment, error) {
	return b.objs().OpenMapped(ctx, name, lockWait, dirobj.Want{N: n, Size: size, ReadOnly: true})
}

// OpenSized is OpenContext that maps only part of the object, as
// backend/posix's OpenSized does: as many bytes as size returns for the
// object's first n bytes, or the whole object when it is shorter.
func (b *Backend) OpenSized(ctx context.Context, name string, n int, size func(head []byte) (int64, error)) (backend.Segment, error) {
	return b.objs().OpenMapped(ctx, name, lockWait, dirobj.Want{N: n, Size: size, Sized: true})
}

// lockShared is the Lock of the directory's opens (dirobj.LockFunc): a
// shared flock, held until the segment closes.
func lockShared(ctx context.Context, path string, fd int, readOnly bool) (*unix.Stat_t, func() error, error) {
	lk, st, err := lockFileAs(ctx, path, fd, false, readOnly)
	if err != nil {
		return nil, nil, &fs.PathError{Op: "flock", Path: path, Err: err}
	}
	return st, unlocker(lk), nil
}

// unlocker releases lk for a segment's Close, which calls it once the
// mapping and its descriptor are gone, so that InUse never reports false
// while the mapping exists.
func unlocker(lk *flock.Flock) func() error {
	return func() error { return unwrapErrno(lk.Unlock()) }
}

// downgrade turns the owner's exclusive lock into a shared one, just before
// Publish gives the file its name. flock(2) does not promise that converting
// a lock is atomic; Linux converts it under one spinlock, and a cleaner also
// checks that the creator is dead. Converting EX to SH cannot conflict:
// nobody else holds a lock. It is flock(LOCK_SH) on gofrs/flock's
// descriptor, which then reports both Locked and RLocked; Unlock releases
// either.
func downgrade(lk *flock.Flock, path string) error {
	if ok, err := lk.TryRLock(); err != nil || !ok {
		if err == nil {
			err = unix.EWOULDBLOCK
		}
		return &fs.PathError{Op: "flock", Path: path, Err: unwrapErrno(err)}
	}
	return nil
}

// lockFile takes a flock (exclusive or shared) on the file at path, which fd
// has open, through gofrs/flock's own descriptor, retrying with backoff
// while another descriptor holds a conflicting lock or another process a
// lease, until ctx is done (or for lockWait when ctx has no deadline), and
// returns fd's status once locked. It fails with ENOENT when path is gone,
// ESTALE when path now names another file than fd, and a
// *dirobj.BusyError (EWOULDBLOCK; os.ErrDeadlineExceeded when the time ran
// out) when it gave up waiting.
func lockFile(ctx context.Context, path string, fd int, exclusive bool) (*flock.Flock, *unix.Stat_t, error) {
	return lockFileAs(ctx, path, fd, exclusive, false)
}

// lockFileAs is lockFile whose own descriptor is read-only when readOnly
// (a shared flock needs read access only).
func lockFileAs(ctx context.Context, path string, fd int, exclusive, readOnly bool) (*flock.Flock, *unix.Stat_t, error) {
	flags := lockFlags
	if readOnly {
		flags = flags&^os.O_RDWR | os.O_RDONLY
	}
	lk := flock.New(path, flock.SetFlag(flags))
	try := lk.TryRLock
	if exclusive {
		try = lk.TryLock
	}
	r := dirobj.NewRetry(ctx, lockWait)
	defer r.Stop()
	for {
		ok, err := try()
		why := "another process keeps the file locked exclusively"
		if err != nil {
			if !errors.Is(err, unix.EWOULDBLOCK) {
				return nil, nil, unwrapErrno(err)
			}
			// gofrs/flock's open met a lease. fd's file cannot be leased
			// while fd is open: is path another file now?
			if same, err := dirobj.SameFile(fd, path); err != nil || !same {
				if err != nil {
					return nil, nil, unwrapErrno(err)
				}
				return nil, nil, unix.ESTALE
			}
			why = "another process holds a lease on the file"
		}
		if ok {
			break
		}
		if werr := r.Wait(); werr != nil {
			return nil, nil, &dirobj.BusyError{Why: why, Err: unix.EWOULDBLOCK, Ctx: werr}
		}
	}
	// gofrs/flock opened path itself: make sure it is the file we have.
	fi, err := lk.Stat()
	if err != nil {
		lk.Unlock()
		return nil, nil, unwrapErrno(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		lk.Unlock()
		return nil, nil, err
	}
	if lst, ok := fi.Sys().(*syscall.Stat_t); !ok || lst.Dev != st.Dev || lst.Ino != st.Ino {
		lk.Unlock()
		return nil, nil, unix.ESTALE
	}
	return lk, &st, nil
}

// unwrapErrno returns the syscall.Errno inside err (gofrs/flock returns
// *fs.PathError from its open), or err.
func unwrapErrno(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return err
}

// InUse tells whether some process has the region name open (mapped, or
// being initialised): it tries to lock the file exclusively without
// waiting, and releases the lock at once when it gets it. Holders are not
// disturbed, but a Create or Open of the same file that runs during those
// microseconds waits for them.
//
// It fails with an error matching fs.ErrNotExist when there is no such file.
// The name may be a temporary one (a file still being created). See the package doc for
// network filesystems, where a process must not probe a file it maps.
func (b *Backend) InUse(name string) (bool, error) {
	p := b.path(name)
	// O_NONBLOCK: a FIFO under the name must not block the open.
	lk := flock.New(p, flock.SetFlag(lockFlags|syscall.O_NONBLOCK))
	ok, err := lk.TryLock()
	if err != nil && (errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS)) {
		// Read access is enough for flock on a local filesystem.
		lk = flock.New(p, flock.SetFlag(os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK))
		ok, err = lk.TryLock()
	}
	if err != nil {
		return false, &fs.PathError{Op: "flock", Path: p, Err: unwrapErrno(err)}
	}
	if !ok {
		return true, nil
	}
	if err := lk.Unlock(); err != nil {
		return false, &fs.PathError{Op: "flock", Path: p, Err: unwrapErrno(err)}
	}
	return false, nil
}

// Unlink implements backend.Backend (unlink(2)). Segments keep their
// mappings and their locks, on the removed file.
func (b *Backend) Unlink(name string) error { return b.objs().Unlink(name) }

// List implements backend.Lister: every regular file in the directory but
// those still being created. Attached is -1: flock tells whether a file is
// mapped (InUse), not by how many processes, and probing every file would
// stall concurrent Opens and, on NFS, drop the caller's own locks.
func (b *Backend) List() ([]backend.Info, error) { return b.objs().List() }

var (
	_ backend.Backend       = (*Backend)(nil)
	_ backend.ContextOpener = (*Backend)(nil)
	_ backend.Lister        = (*Backend)(nil)
	_ backend.Pender        = (*Backend)(nil)
	_ backend.Pending       = (*dirobj.Segment)(nil)
	_ backend.Owned         = (*dirobj.Segment)(nil)
	_ backend.Namer         = (*dirobj.Segment)(nil)
	_ backend.Chowner       = (*dirobj.Segment)(nil)
	_ backend.Fder          = (*dirobj.Segment)(nil)
)

// Pending implements backend.Pender: the objects being created for name.
func (b *Backend) Pending(name string, n int) ([]backend.PendingObject, error) {
	return b.objs().Pending(name, n)
}

// RemovePending implements backend.Pender.
func (b *Backend) RemovePending(id string) error { return b.objs().RemovePending(id) }

// Inspect implements backend.Inspector: the object's first n bytes, read
// with pread from a read-only descriptor (no mapping, no lock; read
// permission suffices), and its Info.
func (b *Backend) Inspect(in backend.Info, n int) ([]byte, backend.Info, error) {
	return b.objs().Head(in.Name, n)
}

// Unused implements backend.Remover: a write lease, or where the
// filesystem or the caller's rights allow none, an exclusive flock (every
// segment holds a shared one), or a complete walk of /proc/*/maps.
func (b *Backend) Unused(in backend.Info) error { return b.removals().Unused(in.Name) }

// RemoveUnused implements backend.Remover, under that proof.
func (b *Backend) RemoveUnused(in backend.Info, n int, check func(head []byte, now backend.Info) error) error {
	return b.removals().RemoveUnused(in.Name, in.Temp, n, check)
}

// removals is the directory as removals see it: with the flock protocol.
func (b *Backend) removals() dirobj.Dir {
	d := b.objs()
	d.Flock = true
	return d
}

// WaitCreate implements backend.CreateWaiter: inotify on the directory.
func (b *Backend) WaitCreate(ctx context.Context, name string) error {
	return b.objs().WaitCreate(ctx, name)
}
