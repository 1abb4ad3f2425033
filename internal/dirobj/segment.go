package dirobj

import (
	"context"
	"errors"
	"io/fs"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/internal/fdseg"
)

// Segment is a mapped file of the directory: the backend.Segment, and until
// Publish the backend.Pending, of backend/posix and backend/file. Besides
// fdseg.Segment's methods it implements backend.Owned, backend.Namer and
// backend.Pending.
type Segment struct {
	*fdseg.Segment
	tmp       string // the temporary path until Publish, else ""
	uid       int    // the file's owner when opened (0 for a created one)
	onPublish func() error
}

// Map maps the temporary file's first size bytes read-write (MAP_SHARED
// with the extra flags) into a Segment that owns its descriptor and, until
// Publish, its temporary name. When the mapping fails, Map closes the
// descriptor, removes the temporary file and returns an *fs.PathError of op
// "mmap" that names the final path.
func (t *Temp) Map(size int64, flags int) (*Segment, error) {
	s, err := fdseg.Map(t.Fd, t.Final, size, unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		unix.Unlink(t.Tmp)
		return nil, err
	}
	return &Segment{Segment: s, tmp: t.Tmp}, nil
}

// Want says how OpenMapped maps an object.
type Want struct {
	// N and Size, when Size is not nil, map only part of the object: as
	// many bytes as Size returns for its first N bytes, or the whole
	// object when it is shorter (see MapLength). A nil Size maps the
	// whole object.
	N    int
	Size func(head []byte) (int64, error)
	// Sized makes a nil Size an error (EINVAL), as OpenSized wants.
	Sized bool
	// ReadOnly opens the object O_RDONLY and maps it PROT_READ.
	ReadOnly bool
}

// LockFunc takes the lock that says, for as long as a segment is open,
// that a process uses the object (backend/file's shared flock). It is
// called with the object just opened as fd at path (read-only when
// readOnly), waits for the lock until ctx is done, and returns the
// object's status once locked and the function that releases the lock.
// An error matching ESTALE says that path names another file than fd now.
type LockFunc func(ctx context.Context, path string, fd int, readOnly bool) (st *unix.Stat_t, release func() error, err error)

// OpenMapped opens the object name as OpenContext does (waiting up to def
// when ctx has no deadline), takes d.Lock on it when it is set, and maps
// it as w says: the segment of backend/posix's and backend/file's Open,
// OpenContext, OpenReadOnly and OpenSized. The segment holds the lock
// until it is closed, after its mapping and descriptor. When the name is
// replaced between the open and the lock, OpenMapped opens it again
// (three times at most).
func (d Dir) OpenMapped(ctx context.Context, name string, def time.Duration, w Want) (backend.Segment, error) {
	p := d.Join(name)
	if w.Sized && w.Size == nil {
		return nil, &fs.PathError{Op: "open", Path: p, Err: unix.EINVAL}
	}
	d.ReadOnly = w.ReadOnly
	if _, ok := ctx.Deadline(); !ok && d.Lock != nil {
		// One deadline for the open and the lock.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, def)
		defer cancel()
	}
	for try := 0; ; try++ {
		fd, st, err := d.OpenContext(ctx, name, def)
		if err != nil {
			return nil, err
		}
		var release func() error
		if d.Lock != nil {
			// The size is read once the lock is held: no owner changes
			// it after Publish.
			st, release, err = d.Lock(ctx, p, fd, w.ReadOnly)
			if errors.Is(err, unix.ESTALE) && try < 3 {
				unix.Close(fd) // the name was replaced between two opens
				continue
			}
			if err != nil {
				unix.Close(fd)
				return nil, err
			}
		}
		s, err := mapOpened(fd, p, st, w)
		if err != nil {
			if release != nil {
				release()
			}
			return nil, err
		}
		if release != nil {
			s.OnClose(release)
		}
		return s, nil
	}
}

// mapOpened maps fd, opened at path with status st, as w says, into a
// Segment that owns fd. On failure it closes fd.
func mapOpened(fd int, path string, st *unix.Stat_t, w Want) (*Segment, error) {
	length := st.Size
	if w.Size != nil {
		var err error
		if length, err = MapLength(fd, path, st.Size, w.N, w.Size); err != nil {
			unix.Close(fd)
			return nil, err
		}
	}
	prot := unix.PROT_READ | unix.PROT_WRITE
	if w.ReadOnly {
		prot = unix.PROT_READ
	}
	s, err := fdseg.Map(fd, path, length, prot, 0)
	if err != nil {
		return nil, err
	}
	return &Segment{Segment: s, uid: int(st.Uid)}, nil
}

// OnPublish makes Publish call f first, and fail with its error, if any,
// without publishing (backend/file downgrades its lock there).
func (s *Segment) OnPublish(f func() error) { s.onPublish = f }

// TempPath is the temporary path of a created segment until Publish or
// Discard, else "".
func (s *Segment) TempPath() string { return s.tmp }

// Owner implements backend.Owned: the file's owner when it was opened.
func (s *Segment) Owner() int { return s.uid }

// Publish implements backend.Pending: the temporary file gets its final
// name exclusively (see the function Publish).
func (s *Segment) Publish() error {
	if s.onPublish != nil {
		if err := s.onPublish(); err != nil {
			return err
		}
	}
	err := Publish(s.tmp, s.Path())
	s.tmp = ""
	return err
}

// Discard implements backend.Pending: it removes the temporary file, if it
// is still there, and closes the segment.
func (s *Segment) Discard() error {
	if s.tmp != "" {
		unix.Unlink(s.tmp)
		s.tmp = ""
	}
	return s.Close()
}

// StillNamed implements backend.Namer: whether the segment's path still
// leads to the mapped file (same device and inode).
func (s *Segment) StillNamed() (bool, error) {
	return SameFile(int(s.Fd()), s.Path())
}
