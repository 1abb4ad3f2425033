package file

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
)

// init registers the backend as "file". Its argument is the directory of
// its regions, used as it is (New); "" is DefaultDir, which the factory
// creates (mode 0700) when it is missing and refuses unless it is a
// directory of this user's that no one else may enter. So SHM_BACKEND=file
// and a key file:/name use DefaultDir, and SHM_BACKEND=file:/srv/regions or
// a key file:/srv/regions/name the directory /srv/regions.
func init() {
	backend.Register("file", func(arg string) (backend.Backend, error) {
		if arg != "" {
			return New(arg), nil
		}
		dir := DefaultDir()
		if err := makeDefaultDir(dir); err != nil {
			return nil, err
		}
		return New(dir), nil
	})
}

// DefaultDir returns the file backend's default directory (shm.FileDir):
// $XDG_RUNTIME_DIR when set, else a directory of this user's own in the
// temporary directory (shmgo-UID, mode 0700), so that other users cannot
// plant objects under our keys.
func DefaultDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "shmgo-"+strconv.Itoa(os.Getuid()))
}

// makeDefaultDir creates DefaultDir's per-user directory if needed and
// checks that it is ours and private. $XDG_RUNTIME_DIR is taken as it is.
func makeDefaultDir(dir string) error {
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
