// Package file is the file-backed backend: a key "/name" is the regular file
// dir/name, mapped shared, and every process that maps it holds a shared
// flock(2) on it (github.com/gofrs/flock), which tells whether it is in use.
//
// Choose it to share a region through a directory that several containers,
// or processes in different mount, IPC or PID namespaces, all see (a volume
// mounted into each), where /dev/shm and SysV segments are private to each;
// elsewhere backend/posix is quicker. Keep the directory on a tmpfs, or at
// least on a filesystem whose flock is the kernel's own (ext4, xfs,
// overlayfs; not NFS or FUSE): on a disk a region is not durable, and after
// a reboot package shm opens whatever was written back as if nothing
// happened (remove such regions at boot). A peer with write access can
// truncate a region's file under its mappings (segments are not Sealed).
//
// It registers as "file" (backend.Register). Its argument is the directory
// of its regions, used as it is (New); "" is DefaultDir, which the factory
// creates, private to this user, when it is missing. So SHM_BACKEND=file
// and a key file:/name use DefaultDir, SHM_BACKEND=file:/srv/regions and a
// key file:/srv/regions/name the directory /srv/regions.
//
// The Backend is a backend.ContextOpener, SizedOpener, ReadOnlyOpener,
// CreateWaiter, Pender, Lister, Inspector and Remover; its segments are
// backend.Fder, Owned, Chowner and Namer, as backend/posix's are.
//
// The lock protocol, what it tells and where it fails, persistence and
// cleanup: DESIGN.md, next to this package's source.
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
// The file is opened as backend/posix opens it: anything but a regular file
// with one link under the name fails at once with an error matching
// backend.ErrForeign that says what is there.
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
// The name may be a temporary one (a file still being created). On NFS a
// process must not probe a file it maps (DESIGN.md says why).
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

// List implements backend.Lister: every file in the directory, those still
// being created (or removed) with Temp set, and anything but a regular file
// with one link with Foreign saying what it is. Attached is -1: flock tells
// whether a file is mapped (InUse), not by how many processes, and probing
// every file would stall concurrent Opens and, on NFS, drop the caller's own
// locks.
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
