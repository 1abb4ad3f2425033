// Package testbackend is a backend for package shm written from package
// backend's documentation alone, as a third party would write one, so that
// the conformance suite, which runs on it too, can never again need
// something package backend does not document.
//
// Objects are regular files in a directory given to New, mapped shared. A
// new object is made under a temporary name in a directory of its own,
// sized with fallocate, and published by renaming it under its name
// without replacing anything; names and temporary names never meet.
//
// Of the optional interfaces it implements only these: its segments are a
// backend.Fder (a descriptor for package shm to read the header with and
// Stat with; the suite truncates through it) and a backend.Owned (for
// WithTrustedUIDs); the backend is a backend.Pender (so that an opener
// tells a creator that died half-way from one at work, and cleanup finds
// what it left) and a backend.Lister. It lacks every other on purpose, so
// that the suite's tests for them see a backend without them: no
// ReadOnlyOpener, SizedOpener, ContextOpener, Chowner, Namer, Unlinker,
// Sealed, VisibleBeforePublish, Creator, IDOpener or ContextLister.
package testbackend

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
)

// Name is the backend's name.
const Name = "testbackend"

const (
	objectsDir = "objects" // published objects, by name
	pendingDir = "pending" // objects being created: "<16 hex digits>.<name>"
	tagLen     = 16
)

// Backend keeps its objects under one directory.
type Backend struct {
	dir string
}

// New returns the backend whose objects live under dir, which Prepare has
// set up.
func New(dir string) *Backend { return &Backend{dir: dir} }

// Prepare makes the directories a Backend of dir needs, open to every
// user as /tmp is (mode 01777), so that another uid may create objects.
func Prepare(dir string) error {
	for _, d := range []string{filepath.Join(dir, objectsDir), filepath.Join(dir, pendingDir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := os.Chmod(d, 0o777|fs.ModeSticky); err != nil {
			return err
		}
	}
	return nil
}

// Name implements backend.Backend.
func (b *Backend) Name() string { return Name }

func (b *Backend) path(name string) string { return filepath.Join(b.dir, objectsDir, name) }

func (b *Backend) pendingPath(id string) string { return filepath.Join(b.dir, pendingDir, id) }

func pathError(op, path string, err error) error { return &fs.PathError{Op: op, Path: path, Err: err} }

// foreign reports something under a name that cannot be one of ours.
func foreign(path, what string) error {
	return pathError("open", path, fmt.Errorf("%s: %w", what, backend.ErrForeign))
}

// Create implements backend.Backend. It fails with ErrExist at once when
// name is taken (and again at Publish, when it was taken meanwhile).
func (b *Backend) Create(name string, size int64, perm fs.FileMode) (backend.Pending, error) {
	final := b.path(name)
	if _, err := os.Lstat(final); err == nil {
		return nil, pathError("create", final, unix.EEXIST)
	}
	if size < 1 || size > math.MaxInt {
		return nil, pathError("create", final, unix.EINVAL)
	}
	var tag [tagLen / 2]byte
	if _, err := rand.Read(tag[:]); err != nil {
		return nil, err
	}
	id := hex.EncodeToString(tag[:]) + "." + name
	tmp := b.pendingPath(id)
	fd, err := unix.Open(tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, pathError("create", tmp, err)
	}
	fail := func(op string, err error) (backend.Pending, error) {
		unix.Close(fd)
		unix.Unlink(tmp)
		return nil, pathError(op, tmp, err)
	}
	// Exactly perm, whatever the umask.
	if err := unix.Fchmod(fd, uint32(perm.Perm())); err != nil {
		return fail("fchmod", err)
	}
	// Reserve the pages: touching them never raises SIGBUS for want of
	// space.
	if err := unix.Fallocate(fd, 0, 0, size); err != nil {
		return fail("fallocate", err)
	}
	s, err := mapFile(fd, size)
	if err != nil {
		return fail("mmap", err)
	}
	return &pending{segment: s, tmp: tmp, final: final}, nil
}

// mapFile maps size bytes of fd read-write and shared, and returns the
// segment that owns fd from then on.
func mapFile(fd int, size int64) (*segment, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	mem, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	return &segment{fd: fd, mem: mem, uid: int(st.Uid)}, nil
}

// Open implements backend.Backend.
func (b *Backend) Open(name string) (backend.Segment, error) {
	p := b.path(name)
	// O_NONBLOCK: a FIFO under the name must not block the opener.
	fd, err := unix.Open(p, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	switch err {
	case nil:
	case unix.ELOOP:
		return nil, foreign(p, "a symbolic link")
	case unix.EISDIR:
		return nil, foreign(p, "a directory")
	default:
		return nil, pathError("open", p, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, pathError("fstat", p, err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		unix.Close(fd)
		return nil, foreign(p, fmt.Sprintf("not a regular file (mode %#o)", st.Mode))
	case st.Nlink != 1:
		unix.Close(fd)
		return nil, foreign(p, fmt.Sprintf("a file with %d links", st.Nlink))
	case st.Size < 1 || st.Size > math.MaxInt:
		unix.Close(fd)
		return nil, foreign(p, fmt.Sprintf("a file of %d bytes", st.Size))
	}
	s, err := mapFile(fd, st.Size)
	if err != nil {
		unix.Close(fd)
		return nil, pathError("mmap", p, err)
	}
	return s, nil
}

// Unlink implements backend.Backend.
func (b *Backend) Unlink(name string) error {
	p := b.path(name)
	if err := unix.Unlink(p); err != nil {
		return pathError("unlink", p, err)
	}
	return nil
}

// segment is one mapping, with the descriptor it came from.
type segment struct {
	fd     int
	mem    []byte
	uid    int
	closed bool
}

// Bytes implements backend.Segment.
func (s *segment) Bytes() []byte { return s.mem }

// Close implements backend.Segment.
func (s *segment) Close() error {
	if s.closed {
		return fs.ErrClosed
	}
	s.closed = true
	err := unix.Munmap(s.mem)
	if cerr := unix.Close(s.fd); err == nil {
		err = cerr
	}
	return err
}

// Fd implements backend.Fder.
func (s *segment) Fd() uintptr { return uintptr(s.fd) }

// Owner implements backend.Owned: the file's owner.
func (s *segment) Owner() int { return s.uid }

// pending is a segment not yet published.
type pending struct {
	*segment
	tmp, final string
	published  bool
	gone       bool // the temporary name is removed
}

// Publish implements backend.Pending: the temporary file takes the name,
// unless something has it.
func (p *pending) Publish() error {
	err := unix.Renameat2(unix.AT_FDCWD, p.tmp, unix.AT_FDCWD, p.final, unix.RENAME_NOREPLACE)
	if err == unix.EINVAL || err == unix.ENOSYS {
		// A filesystem without RENAME_NOREPLACE: link, which never
		// replaces either, then drop the temporary name.
		if err = unix.Link(p.tmp, p.final); err == nil {
			unix.Unlink(p.tmp)
		}
	}
	if err != nil {
		unix.Unlink(p.tmp)
		p.gone = true
		return pathError("publish", p.final, err)
	}
	p.published, p.gone = true, true
	return nil
}

// Discard implements backend.Pending.
func (p *pending) Discard() error {
	var err error
	if !p.gone {
		if uerr := unix.Unlink(p.tmp); uerr != nil && uerr != unix.ENOENT {
			err = pathError("unlink", p.tmp, uerr)
		}
		p.gone = true
	}
	if cerr := p.Close(); err == nil {
		err = cerr
	}
	return err
}

// Pending implements backend.Pender.
func (b *Backend) Pending(name string, n int) ([]backend.PendingObject, error) {
	ents, err := os.ReadDir(filepath.Join(b.dir, pendingDir))
	if err != nil {
		return nil, err
	}
	var out []backend.PendingObject
	for _, e := range ents {
		if nameOf(e.Name()) != name {
			continue
		}
		o, err := b.pendingObject(e.Name(), n)
		if errors.Is(err, fs.ErrNotExist) {
			continue // published or discarded meanwhile
		}
		if err != nil {
			return out, err
		}
		out = append(out, o)
	}
	return out, nil
}

// nameOf is the name a temporary file is for, or "" if it is none of ours.
func nameOf(id string) string {
	if len(id) < tagLen+2 || id[tagLen] != '.' {
		return ""
	}
	if _, err := hex.DecodeString(id[:tagLen]); err != nil {
		return ""
	}
	return id[tagLen+1:]
}

func (b *Backend) pendingObject(id string, n int) (backend.PendingObject, error) {
	p := b.pendingPath(id)
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return backend.PendingObject{}, pathError("open", p, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return backend.PendingObject{}, pathError("fstat", p, err)
	}
	o := backend.PendingObject{ID: id, UID: int(st.Uid)}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		o.UID = -1 // not one of ours: nobody's
		return o, nil
	}
	head := make([]byte, max(n, 0))
	got := 0
	for got < len(head) {
		m, err := unix.Pread(fd, head[got:], int64(got))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return backend.PendingObject{}, pathError("read", p, err)
		}
		if m == 0 {
			break
		}
		got += m
	}
	o.Head = head[:got]
	return o, nil
}

// RemovePending implements backend.Pender.
func (b *Backend) RemovePending(id string) error {
	if nameOf(id) == "" || strings.ContainsRune(id, '/') {
		return pathError("remove", id, fmt.Errorf("not an object being created: %w", fs.ErrNotExist))
	}
	p := b.pendingPath(id)
	if err := unix.Unlink(p); err != nil {
		return pathError("unlink", p, err)
	}
	return nil
}

// List implements backend.Lister: the regular files under names. It cannot
// count the processes that map them.
func (b *Backend) List() ([]backend.Info, error) {
	ents, err := os.ReadDir(filepath.Join(b.dir, objectsDir))
	if err != nil {
		return nil, err
	}
	var out []backend.Info
	for _, e := range ents {
		var st unix.Stat_t
		if err := unix.Lstat(b.path(e.Name()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		out = append(out, backend.Info{
			Name: e.Name(), Size: st.Size, Mode: fs.FileMode(st.Mode).Perm(),
			UID: int(st.Uid), GID: int(st.Gid), Attached: -1,
		})
	}
	return out, nil
}
