// Package builtin is the module's policy about its own backends: which of
// them the automatic choice takes, in what order, and where List looks by
// default. Package shm asks it, and otherwise knows backends only through
// package backend and its registry; the backends' packages register
// themselves when this package imports them.
package builtin

import (
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/file"
	"github.com/shmgo/shm/backend/memfd"
	"github.com/shmgo/shm/backend/posix"
	"github.com/shmgo/shm/backend/sysv"
)

// FileDir is the directory of the file backend's regions when nothing else
// is said (file.DefaultDir).
func FileDir() string { return file.DefaultDir() }

// ForCreate returns the backends a Create of size bytes (header included)
// tries, in order, moving on to the next when one is full: POSIX when
// /dev/shm is a writable tmpfs with room for it, then memfd where the
// kernel has memfd_create, and only when neither can, a file in FileDir
// (created if missing, and checked).
func ForCreate(size int64) ([]backend.Backend, error) {
	var bes []backend.Backend
	if posixHasRoom(size) {
		bes = append(bes, posix.New())
	}
	if memfdWorks() {
		bes = append(bes, memfd.New())
	}
	if len(bes) == 0 {
		be, err := lookup("file", "")
		if err != nil {
			return nil, err
		}
		bes = append(bes, be)
	}
	return bes, nil
}

// ForOpen returns the backends an Open looks in, in ForCreate's order;
// FileDir is taken as it is, neither created nor checked.
func ForOpen() []backend.Backend {
	return []backend.Backend{posix.New(), memfd.New(), file.New(FileDir())}
}

// Listed returns the backends List looks at by default: POSIX in /dev/shm,
// SysV, memfd, and files in FileDir and in the other users' fallback
// directories of the same kind (os.TempDir()/shmgo-UID), those that exist.
func Listed() []backend.Backend {
	bs := []backend.Backend{posix.New(), sysv.New(), memfd.New()}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "shmgo-[0-9]*"))
	if own := FileDir(); !contains(dirs, own) {
		if _, err := os.Lstat(own); err == nil {
			dirs = append([]string{own}, dirs...)
		}
	}
	for _, d := range dirs {
		bs = append(bs, file.New(d))
	}
	return bs
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// ErrPathKey is CheckKey's reason for a file key that is not a path.
var ErrPathKey = errors.New("a file key is file:/absolute/dir/name")

// CheckKey checks the rest of a key whose prefix names the registered
// backend name, for what a backend's factory cannot see: a file key is a
// path (file:/name, file:/dir/name), never file:name.
func CheckKey(name, rest string) error {
	if name == "file" && (rest == "" || rest[0] != '/') {
		return ErrPathKey
	}
	return nil
}

// lookup makes the registered backend name from arg.
func lookup(name, arg string) (backend.Backend, error) {
	f, ok := backend.Lookup(name)
	if !ok {
		panic("shm: built-in backend " + name + " is not registered")
	}
	return f(arg)
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
