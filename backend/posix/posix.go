// Package posix is the POSIX shared-memory backend, package shm's first choice:
// a key "/name" is the file /dev/shm/name that shm_open(3) uses, so C and
// Rust programs can open a region by name (package shm's header comes
// first).
//
// Choose it unless another backend fits better: it is the quickest to create
// and open, needs no process to stay alive, and shows regions as files.
// Choose backend/file instead for a directory that several containers share
// (/dev/shm is private to each), backend/memfd where /dev/shm is missing or
// small, or where no peer may truncate the memory under the others.
//
// It registers as "posix" (backend.Register). Its argument is the directory
// of its objects: "" for /dev/shm (New), or another tmpfs (NewDir), as in
// SHM_BACKEND=posix:/run/shm or a key posix:/run/shm/name.
//
// The Backend is a backend.ContextOpener, SizedOpener, ReadOnlyOpener,
// CreateWaiter, Pender, Lister, Inspector and Remover; its segments are
// backend.Fder, Owned, Chowner and Namer, and not Sealed.
//
// How it creates, opens and removes objects so that no half-made region is
// visible and nothing under a name can hold it up: DESIGN.md, next to this
// package's source.
package posix

import (
	"context"
	"io/fs"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/internal/dirobj"
)

// DefaultDir is where Linux's shm_open keeps its objects.
const DefaultDir = "/dev/shm"

// tempPrefix starts the names of objects still being created (List reports
// them as Temp).
const tempPrefix = ".shmgo-tmp."

// Backend is the POSIX backend. The zero value is not usable; call New.
type Backend struct {
	dir string
}

// New returns the backend for /dev/shm.
func New() *Backend { return &Backend{dir: DefaultDir} }

// NewDir returns a backend that keeps its objects in dir instead of
// /dev/shm (another tmpfs, say). Tests use it; so can containers that mount
// a shared tmpfs elsewhere.
func NewDir(dir string) *Backend { return &Backend{dir: dir} }

// Name returns "posix".
func (b *Backend) Name() string { return "posix" }

// Dir returns the directory that holds the objects.
func (b *Backend) Dir() string { return b.dir }

func (b *Backend) objs() dirobj.Dir { return dirobj.Dir{Path: b.dir, TempPrefix: tempPrefix} }

// populateMin is the size from which Create maps the object's pages in at
// once (MAP_POPULATE): the pages are already allocated (fallocate), and
// mapping them in one call costs much less than a page fault on each first
// write (bench/RESULTS.md: a 1 GiB Create plus one full write takes half
// the time). Smaller objects are left alone: a mapping never touched is
// unmapped at Close without interrupting the other CPUs.
const populateMin = 1 << 20

// Create implements backend.Backend.
func (b *Backend) Create(name string, size int64, perm fs.FileMode) (backend.Pending, error) {
	t, err := b.objs().CreateTemp(name, 0)
	if err != nil {
		return nil, err
	}
	if err := t.Chmod(perm); err != nil {
		t.Abort()
		return nil, err
	}
	if err := t.Reserve(size, false); err != nil {
		t.Abort()
		return nil, err
	}
	flags := 0
	if size >= populateMin {
		flags = unix.MAP_POPULATE
	}
	s, err := t.Map(size, flags)
	if err != nil {
		return nil, err // not a nil *dirobj.Segment in a non-nil Pending
	}
	return s, nil
}

// openWait bounds how long Open, and OpenContext with a context that has
// no deadline, keep trying while another process holds a lease on the
// file.
const openWait = 2 * time.Second

// Open implements backend.Backend. It is OpenContext without a deadline of
// the caller's: while another process holds a lease on the file, it keeps
// trying for up to 2 seconds.
func (b *Backend) Open(name string) (backend.Segment, error) {
	return b.OpenContext(context.Background(), name)
}

// OpenContext implements backend.ContextOpener: Open that keeps to ctx.
//
// A name that holds anything but a regular file with one link (a symbolic
// link, FIFO, directory, socket, device, hard link) fails at once with an
// error matching backend.ErrForeign that says what is there. While another
// process holds a lease on the file (a cleanup deciding whether to remove
// it, or a hostile owner), OpenContext tries again with backoff until ctx
// is done (2 seconds when ctx has no deadline), then fails with an error
// matching os.ErrDeadlineExceeded (or wrapping context.Canceled) and
// syscall.EWOULDBLOCK.
func (b *Backend) OpenContext(ctx context.Context, name string) (backend.Segment, error) {
	return b.objs().OpenMapped(ctx, name, openWait, dirobj.Want{})
}

// OpenReadOnly implements backend.ReadOnlyOpener: OpenContext (or
// OpenSized, with size) that opens the file O_RDONLY and maps it
// PROT_READ, so that read permission on the file suffices.
func (b *Backend) OpenReadOnly(ctx context.Context, name string, n int, size func(head []byte) (int64, error)) (backend.Segment, error) {
	return b.objs().OpenMapped(ctx, name, openWait, dirobj.Want{N: n, Size: size, ReadOnly: true})
}

// OpenSized is OpenContext that maps only part of the object: it reads the
// object's first n bytes (fewer when it is shorter) and maps as many bytes
// as size returns for them (at least 1), or the whole object when it is
// shorter than that, so that len(Bytes()) shows it was cut short. An error
// from size is returned as is, after the descriptor is closed; a nil size
// fails with EINVAL.
//
// A peer with write access can grow the file to any size: Open then maps
// all of it, or fails with ENOMEM. Package shm knows from the region's
// header how much it needs; OpenSized lets it map just that.
func (b *Backend) OpenSized(ctx context.Context, name string, n int, size func(head []byte) (int64, error)) (backend.Segment, error) {
	return b.objs().OpenMapped(ctx, name, openWait, dirobj.Want{N: n, Size: size, Sized: true})
}

// Unlink implements backend.Backend.
func (b *Backend) Unlink(name string) error { return b.objs().Unlink(name) }

// List implements backend.Lister: every object in the directory, those
// still being created (or removed) with Temp set, and anything else found
// there with Foreign saying what it is. Attached is -1.
func (b *Backend) List() ([]backend.Info, error) { return b.objs().List() }

// Pending implements backend.Pender: the objects being created for name.
func (b *Backend) Pending(name string, n int) ([]backend.PendingObject, error) {
	return b.objs().Pending(name, n)
}

// RemovePending implements backend.Pender.
func (b *Backend) RemovePending(id string) error { return b.objs().RemovePending(id) }

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

// Inspect implements backend.Inspector: the object's first n bytes, read
// with pread from a read-only descriptor (no mapping; read permission
// suffices), and its Info.
func (b *Backend) Inspect(in backend.Info, n int) ([]byte, backend.Info, error) {
	return b.objs().Head(in.Name, n)
}

// Unused implements backend.Remover: a write lease, which the kernel grants
// only when no other process has the file open or mapped, or else a
// complete walk of /proc/*/maps.
func (b *Backend) Unused(in backend.Info) error { return b.objs().Unused(in.Name) }

// RemoveUnused implements backend.Remover, under the lease (DESIGN.md
// describes the protocol and its remaining windows).
func (b *Backend) RemoveUnused(in backend.Info, n int, check func(head []byte, now backend.Info) error) error {
	return b.objs().RemoveUnused(in.Name, in.Temp, n, check)
}

// WaitCreate implements backend.CreateWaiter: inotify on the directory.
func (b *Backend) WaitCreate(ctx context.Context, name string) error {
	return b.objs().WaitCreate(ctx, name)
}
