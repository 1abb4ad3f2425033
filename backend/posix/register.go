package posix

import "github.com/shmgo/shm/backend"

// init registers the backend as "posix". Its argument is the directory of
// its objects (NewDir): "" for /dev/shm (New), so that SHM_BACKEND=posix and
// a key posix:/name use /dev/shm, and SHM_BACKEND=posix:/run/shm or a key
// posix:/run/shm/name another tmpfs.
func init() {
	backend.Register("posix", func(arg string) (backend.Backend, error) {
		if arg == "" {
			return New(), nil
		}
		return NewDir(arg), nil
	})
}
