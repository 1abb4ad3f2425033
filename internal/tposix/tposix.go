// Package tposix is a third-party backend for the tests, written as a
// package outside the module would write one: the POSIX backend under
// another name. Importing it registers "tposix", which takes a directory
// as posix does; without one it uses $TPOSIX_DIR, or /dev/shm when that is
// unset.
package tposix

import (
	"os"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/posix"
)

// Backend is the POSIX backend named "tposix".
type Backend struct{ *posix.Backend }

// Name implements backend.Backend.
func (Backend) Name() string { return "tposix" }

func init() {
	backend.Register("tposix", func(arg string) (backend.Backend, error) {
		if arg == "" {
			arg = os.Getenv("TPOSIX_DIR")
		}
		if arg == "" {
			return Backend{posix.New()}, nil
		}
		return Backend{posix.NewDir(arg)}, nil
	})
}
