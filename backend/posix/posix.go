// Package posix is the POSIX shared-memory backend: what shm_open(3) does,
// in Go. A key "/name" is the file /dev/shm/name on the tmpfs that glibc's
// shm_open uses, so C and Rust programs can open our regions by name (they
// find package shm's header first).
//
// An owner creates the object under a temporary name in the same directory
// (O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC), applies the mode with fchmod
// (exact, whatever the umask), reserves its pages with fallocate (a full
// tmpfs fails with ENOSPC at Create, never SIGBUS later), maps it, and only
// when package shm has written the header publishes it under its name with
// renameat2(RENAME_NOREPLACE): a half-made region is never visible, and two
// racing owners cannot both win.
package posix

import (
	"crypto/rand"
	"encoding/hex"
	"io/fs"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/internal/sys"
)

// DefaultDir is where Linux's shm_open keeps its objects.
const DefaultDir = "/dev/shm"

// TempPrefix starts the names of objects still being created; listing
// tools skip them, cleanup tools remove them when their creator is dead.
const TempPrefix = ".shmgo-tmp."

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

func (b *Backend) path(name string) string { return filepath.Join(b.dir, name) }

// Create implements backend.Backend.
func (b *Backend) Create(name string, size int64, perm fs.FileMode) (backend.Pending, error) {
	final := b.path(name)
	var st unix.Stat_t
	if err := unix.Lstat(final, &st); err == nil {
		return nil, &fs.PathError{Op: "create", Path: final, Err: unix.EEXIST}
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := b.path(TempPrefix + name + "." + hex.EncodeToString(rnd[:]))
	fd, err := unix.Open(tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: tmp, Err: err}
	}
	fail := func(op string, err error) (backend.Pending, error) {
		unix.Close(fd)
		unix.Unlink(tmp)
		return nil, &fs.PathError{Op: op, Path: final, Err: err}
	}
	if err := unix.Fchmod(fd, uint32(perm.Perm())); err != nil {
		return fail("fchmod", err)
	}
	if err := sys.Reserve(fd, size); err != nil {
		return fail("fallocate", err)
	}
	mem, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail("mmap", err)
	}
	return &segment{fd: fd, mem: mem, tmp: tmp, final: final}, nil
}

// Open implements backend.Backend.
func (b *Backend) Open(name string) (backend.Segment, error) {
	p := b.path(name)
	fd, err := unix.Open(p, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "fstat", Path: p, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "open", Path: p, Err: unix.EINVAL}
	}
	s := &segment{fd: fd, final: p}
	if st.Size > 0 {
		s.mem, err = unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			unix.Close(fd)
			return nil, &fs.PathError{Op: "mmap", Path: p, Err: err}
		}
	}
	return s, nil
}

// Unlink implements backend.Backend.
func (b *Backend) Unlink(name string) error {
	p := b.path(name)
	if err := unix.Unlink(p); err != nil {
		return &fs.PathError{Op: "unlink", Path: p, Err: err}
	}
	return nil
}

// List implements backend.Lister: every object in the directory but
// those still being created.
func (b *Backend) List() ([]backend.Info, error) {
	ents, err := readDir(b.dir)
	if err != nil {
		return nil, err
	}
	var out []backend.Info
	for _, name := range ents {
		if strings.HasPrefix(name, TempPrefix) {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(b.path(name), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		out = append(out, backend.Info{
			Name: name, Size: st.Size, Mode: fs.FileMode(st.Mode & 0o777),
			UID: int(st.Uid), GID: int(st.Gid), Attached: -1,
		})
	}
	return out, nil
}

func readDir(dir string) ([]string, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	var names []string
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.ReadDirent(fd, buf)
		if err != nil {
			return nil, &fs.PathError{Op: "readdirent", Path: dir, Err: err}
		}
		if n <= 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}

type segment struct {
	fd    int
	mem   []byte
	tmp   string // non-empty until published
	final string
}

func (s *segment) Bytes() []byte { return s.mem }
func (s *segment) Fd() uintptr   { return uintptr(s.fd) }

func (s *segment) Publish() error {
	if err := sys.PublishNoReplace(s.tmp, s.final); err != nil {
		unix.Unlink(s.tmp)
		s.tmp = ""
		return &fs.PathError{Op: "publish", Path: s.final, Err: err}
	}
	s.tmp = ""
	return nil
}

func (s *segment) Discard() error {
	if s.tmp != "" {
		unix.Unlink(s.tmp)
		s.tmp = ""
	}
	return s.Close()
}

func (s *segment) Chown(uid, gid int) error {
	if err := unix.Fchown(s.fd, uid, gid); err != nil {
		return &fs.PathError{Op: "fchown", Path: s.final, Err: err}
	}
	return nil
}

func (s *segment) Close() error {
	var err error
	if s.mem != nil {
		err = unix.Munmap(s.mem)
		s.mem = nil
	}
	if s.fd >= 0 {
		if e := unix.Close(s.fd); err == nil {
			err = e
		}
		s.fd = -1
	}
	if err != nil {
		return &fs.PathError{Op: "close", Path: s.final, Err: err}
	}
	return nil
}
