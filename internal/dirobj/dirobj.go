// Package dirobj holds what the backends that keep each object as a regular
// file in one directory share (backend/posix, backend/file): creating a file
// under a temporary name with an exact mode and reserved pages, publishing
// it under its final name exclusively, opening it with checks and mapping it
// (Segment, OpenMapped), removing and listing.
//
// Every error is an *fs.PathError wrapping the syscall.Errno (or a
// *ForeignError, a *BusyError: see OpenContext), so that errors.Is(err,
// fs.ErrExist) and friends work.
package dirobj

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/internal/sys"
)

// Dir is a directory of objects. Names starting with TempPrefix are objects
// still being created.
type Dir struct {
	Path       string
	TempPrefix string
	// ReadOnly makes Open and OpenContext open objects for reading only
	// (read permission suffices).
	ReadOnly bool
	// Flock says that every user of an object holds a shared flock on it
	// (the file backend's protocol): where a lease cannot be had, an
	// exclusive flock proves that nobody uses it.
	Flock bool
	// Lock, when set, is taken by OpenMapped on every object it opens,
	// and held by the segment until Close.
	Lock LockFunc
}

// Join returns the path of the object name.
func (d Dir) Join(name string) string { return filepath.Join(d.Path, name) }

// Temp is a new, empty file under a temporary name, owned by its creator
// until Publish or Abort.
type Temp struct {
	Fd    int    // read-write, close-on-exec
	Tmp   string // the temporary path
	Final string // the path it will be published under
}

// CreateTemp makes a new file for the object name under a temporary name in
// the same directory (O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, permission bits
// mode before the umask). It fails with EEXIST when name already exists; a
// name taken later is caught by Publish.
func (d Dir) CreateTemp(name string, mode uint32) (*Temp, error) {
	final := d.Join(name)
	var st unix.Stat_t
	if err := unix.Lstat(final, &st); err == nil {
		return nil, &fs.PathError{Op: "create", Path: final, Err: unix.EEXIST}
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := d.Join(d.TempPrefix + name + "." + hex.EncodeToString(rnd[:]))
	fd, err := unix.Open(tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: tmp, Err: err}
	}
	return &Temp{Fd: fd, Tmp: tmp, Final: final}, nil
}

// Abort closes the descriptor and removes the temporary file.
func (t *Temp) Abort() {
	unix.Close(t.Fd)
	unix.Unlink(t.Tmp)
}

// Fail aborts t and returns the error of operation op on the final path.
func (t *Temp) Fail(op string, err error) error {
	t.Abort()
	return &fs.PathError{Op: op, Path: t.Final, Err: err}
}

// Chmod applies perm exactly, whatever the umask (fchmod). On failure the
// error names the final path; t is left alone.
func (t *Temp) Chmod(perm fs.FileMode) error {
	if err := unix.Fchmod(t.Fd, uint32(perm.Perm())); err != nil {
		return &fs.PathError{Op: "fchmod", Path: t.Final, Err: err}
	}
	return nil
}

// fallocate is sys.Reserve; tests replace it.
var fallocate = sys.Reserve

// Reserve makes the file size bytes long with its space committed, so that
// touching the mapping never raises SIGBUS for want of space: fallocate(2).
// When the filesystem has no fallocate (EOPNOTSUPP) and zeroFill is set, it
// sets the size with ftruncate and writes zeros over the whole file instead,
// which commits the space on filesystems that overwrite in place (not on
// copy-on-write or compressing ones). On failure t is left alone.
func (t *Temp) Reserve(size int64, zeroFill bool) error {
	err := fallocate(t.Fd, size)
	if err == unix.EOPNOTSUPP && zeroFill {
		return t.zeroFill(size)
	}
	if err != nil {
		return &fs.PathError{Op: "fallocate", Path: t.Final, Err: err}
	}
	return nil
}

func (t *Temp) zeroFill(size int64) error {
	if err := unix.Ftruncate(t.Fd, size); err != nil {
		return &fs.PathError{Op: "ftruncate", Path: t.Final, Err: err}
	}
	buf := make([]byte, min(size, 1<<20))
	for off := int64(0); off < size; {
		n, err := unix.Pwrite(t.Fd, buf[:min(int64(len(buf)), size-off)], off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &fs.PathError{Op: "write zeros", Path: t.Final, Err: err}
		}
		if n == 0 {
			return &fs.PathError{Op: "write zeros", Path: t.Final, Err: unix.EIO}
		}
		off += int64(n)
	}
	return nil
}

// Publish gives the file at tmp the name final, atomically and only if final
// does not exist (renameat2 RENAME_NOREPLACE, or link where the filesystem
// lacks it). When it fails, tmp is removed and the error, naming final,
// matches fs.ErrExist if the name was taken.
func Publish(tmp, final string) error {
	if err := sys.PublishNoReplace(tmp, final); err != nil {
		unix.Unlink(tmp)
		return &fs.PathError{Op: "publish", Path: final, Err: err}
	}
	return nil
}

// Unlink removes the object name (unlink(2)).
func (d Dir) Unlink(name string) error {
	p := d.Join(name)
	if err := unix.Unlink(p); err != nil {
		return &fs.PathError{Op: "unlink", Path: p, Err: err}
	}
	return nil
}

// List returns the directory's objects: published ones, those under
// temporary names (TempPrefix, or a removal's TombPrefix) with Temp set,
// and anything else found there, with Foreign saying what it is. Attached
// is -1.
func (d Dir) List() ([]backend.Info, error) {
	ents, err := ReadDir(d.Path)
	if err != nil {
		return nil, err
	}
	var out []backend.Info
	for _, name := range ents {
		var st unix.Stat_t
		if err := unix.Lstat(d.Join(name), &st); err != nil {
			continue // gone meanwhile
		}
		in := d.info(name, &st)
		if err := d.Inspect(name, &st); err != nil {
			var fe *ForeignError
			if errors.As(err, &fe) {
				in.Foreign = fe.What
			}
		}
		out = append(out, in)
	}
	return out, nil
}

// info describes the file name whose status is st.
func (d Dir) info(name string, st *unix.Stat_t) backend.Info {
	return backend.Info{
		Name: name, Size: st.Size, Mode: fs.FileMode(st.Mode & 0o777),
		UID: int(st.Uid), GID: int(st.Gid), Attached: -1,
		Path: d.Join(name), Temp: d.isTemp(name),
		Dev: uint64(st.Dev), Ino: uint64(st.Ino),
		Changed: time.Unix(st.Ctim.Unix()),
	}
}

// isTemp tells whether name is a temporary name: an object being created,
// or a removal's tombstone.
func (d Dir) isTemp(name string) bool {
	return strings.HasPrefix(name, d.TempPrefix) || strings.HasPrefix(name, TombPrefix)
}

// ReadDir returns the names in dir (without "." and ".."), unsorted.
func ReadDir(dir string) ([]string, error) {
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

// Pending returns the objects being created for name (temporary files named
// TempPrefix+name+"."+suffix), each with its first n bytes. An object that
// vanishes meanwhile (published or aborted) is skipped.
func (d Dir) Pending(name string, n int) ([]backend.PendingObject, error) {
	names, err := ReadDir(d.Path)
	if err != nil {
		return nil, err
	}
	prefix := d.TempPrefix + name + "."
	var out []backend.PendingObject
	for _, tmp := range names {
		rest, ok := strings.CutPrefix(tmp, prefix)
		if !ok || strings.Contains(rest, ".") {
			continue // another key's (a key may contain dots: the suffix may not)
		}
		// Anyone may put anything under a temporary name: open without
		// following links or blocking (FIFO, lease), and read regular
		// files only.
		fd, err := unix.Open(d.Join(tmp), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			unix.Close(fd)
			continue
		}
		head := make([]byte, n)
		m, err := unix.Pread(fd, head, 0)
		unix.Close(fd)
		if err != nil {
			continue
		}
		out = append(out, backend.PendingObject{ID: tmp, Head: head[:m], UID: int(st.Uid)})
	}
	return out, nil
}

// RemovePending removes the temporary file id that Pending reported.
func (d Dir) RemovePending(id string) error {
	if !strings.HasPrefix(id, d.TempPrefix) || strings.ContainsRune(id, '/') {
		return &fs.PathError{Op: "unlink", Path: d.Join(id), Err: unix.EINVAL}
	}
	if err := unix.Unlink(d.Join(id)); err != nil {
		return &fs.PathError{Op: "unlink", Path: d.Join(id), Err: err}
	}
	return nil
}

// SameFile tells whether path names the file open as fd (same device and
// inode). It fails with an error matching fs.ErrNotExist when nothing has
// the name.
func SameFile(fd int, path string) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Fstat(fd, &a); err != nil {
		return false, &fs.PathError{Op: "fstat", Path: path, Err: err}
	}
	if err := unix.Lstat(path, &b); err != nil {
		return false, &fs.PathError{Op: "lstat", Path: path, Err: err}
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}
