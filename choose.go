package shm

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/file"
	"github.com/shmgo/shm/backend/memfd"
	"github.com/shmgo/shm/backend/posix"
	"github.com/shmgo/shm/backend/sysv"
)

// EnvBackend names the environment variable that sets the default backend
// of a process: "posix", "sysv", "memfd", "file" (in the default directory),
// "file:/some/dir", or "auto" (the same as unset).
const EnvBackend = "SHM_BACKEND"

// Choosing a backend. In order of precedence:
//
//  1. a key that names its backend: "posix:/name", "sysv:/name",
//     "memfd:/name", "file:/dir/name";
//  2. WithBackend;
//  3. the SHM_BACKEND environment variable;
//  4. automatic: Create takes POSIX when /dev/shm is a writable tmpfs with
//     room for the region, else memfd, else a file in $XDG_RUNTIME_DIR (or
//     the temporary directory); Open looks for the key in the same order.
//
// A key that names a backend and a WithBackend that gives another one is
// ErrInvalidOption.

// FileDir returns the directory the automatic choice and SHM_BACKEND=file
// use for the file backend: $XDG_RUNTIME_DIR when set, else a directory of
// this user's own in the temporary directory (shmgo-UID, mode 0700), so that
// other users cannot plant objects under our keys.
func FileDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "shmgo-"+strconv.Itoa(os.Getuid()))
}

// makeFileDir creates FileDir's per-user directory if needed and checks
// that it is ours and private.
func makeFileDir(dir string) error {
	if dir == os.Getenv("XDG_RUNTIME_DIR") {
		return nil
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return &fs.PathError{Op: "lstat", Path: dir, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || int(st.Uid) != os.Geteuid() || st.Mode&0o077 != 0 {
		return &fs.PathError{Op: "check", Path: dir, Err: errors.New("not a private directory of this user")}
	}
	return nil
}

// splitKey separates a backend prefix from a key. For "file:/dir/name" the
// backend carries the directory and the key part is "/name".
func splitKey(key string) (be backend.Backend, rest string, err error) {
	prefix, after, ok := strings.Cut(key, ":")
	if !ok || strings.Contains(prefix, "/") {
		return nil, key, nil
	}
	be, err = namedBackend(prefix, after, true)
	if err != nil || be == nil {
		return nil, key, err
	}
	if prefix == "file" {
		after = "/" + filepath.Base(after)
	}
	return be, after, nil
}

// namedBackend returns the backend called name. For "file", arg is the
// directory (in a key: the path of the object, whose directory is taken).
// It returns nil, nil for a name that is not a backend's when inKey, since
// "abc:def" is an ordinary key.
func namedBackend(name, arg string, inKey bool) (backend.Backend, error) {
	switch name {
	case "posix":
		return posix.New(), nil
	case "sysv":
		return sysv.New(), nil
	case "memfd":
		return memfd.New(), nil
	case "file":
		dir := arg
		if inKey {
			if !strings.HasPrefix(arg, "/") || strings.HasSuffix(arg, "/") {
				return nil, because("a file key is file:/absolute/dir/name", nil, ErrInvalidKey)
			}
			dir = filepath.Dir(arg)
		}
		if dir == "" {
			dir = FileDir()
			if err := makeFileDir(dir); err != nil {
				return nil, err
			}
		}
		return file.New(dir), nil
	}
	if inKey {
		return nil, nil
	}
	return nil, because("unknown backend "+name, nil, ErrInvalidOption)
}

// backendsFor resolves the backends for key: one, or, when the choice is
// automatic, the candidates in order (size 0 means Open; for Create, only
// those that may hold size bytes now, and Create moves on to the next when
// one turns out full).
func backendsFor(key string, o *options, size int64) (name string, bes []backend.Backend, err error) {
	fromKey, rest, err := splitKey(key)
	if err != nil {
		return "", nil, err
	}
	name, err = parseKey(rest)
	if err != nil {
		return "", nil, err
	}
	switch {
	case fromKey != nil && o.backend != nil && o.backend.Name() != fromKey.Name():
		return "", nil, because("key names backend "+fromKey.Name()+", WithBackend gives "+o.backend.Name(), nil, ErrInvalidOption)
	case fromKey != nil:
		return name, []backend.Backend{fromKey}, nil
	case o.backend != nil:
		return name, []backend.Backend{o.backend}, nil
	}
	if env := os.Getenv(EnvBackend); env != "" && env != "auto" {
		n, arg, _ := strings.Cut(env, ":")
		be, err := namedBackend(n, arg, false)
		if err != nil {
			return "", nil, because(EnvBackend+"="+env, err)
		}
		return name, []backend.Backend{be}, nil
	}
	if size > 0 {
		// Create tries these in order, moving on when one is full.
		var bes []backend.Backend
		if posixHasRoom(size) {
			bes = append(bes, posix.New())
		}
		if memfdWorks() {
			bes = append(bes, memfd.New())
		}
		if len(bes) == 0 {
			if err := makeFileDir(FileDir()); err != nil {
				return "", nil, err
			}
			bes = append(bes, file.New(FileDir()))
		}
		return name, bes, nil
	}
	return name, []backend.Backend{posix.New(), memfd.New(), file.New(FileDir())}, nil
}

// posixHasRoom tells whether /dev/shm is a writable tmpfs with room for
// size bytes.
func posixHasRoom(size int64) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(posix.DefaultDir, &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		return false
	}
	if unix.Access(posix.DefaultDir, unix.W_OK) != nil {
		return false
	}
	return st.Bavail*uint64(st.Bsize) >= uint64(size)
}

// memfdWorks tells whether this kernel has memfd_create. A success is
// remembered (a kernel does not lose the call); a failure (out of
// descriptors, say) is asked again next time.
func memfdWorks() bool {
	if memfdSeen.Load() {
		return true
	}
	fd, err := unix.MemfdCreate("shmgo-probe", unix.MFD_CLOEXEC)
	if err != nil {
		return false
	}
	unix.Close(fd)
	memfdSeen.Store(true)
	return true
}

var memfdSeen atomic.Bool
