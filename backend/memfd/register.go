package memfd

import (
	"fmt"
	"io/fs"

	"github.com/shmgo/shm/backend"
)

// init registers the backend as "memfd". It takes no argument: its objects
// have no directory (their sockets belong to the network namespace).
func init() {
	backend.Register("memfd", func(arg string) (backend.Backend, error) {
		if arg != "" {
			return nil, fmt.Errorf("the memfd backend takes no argument, not %q: %w", arg, fs.ErrInvalid)
		}
		return New(), nil
	})
}
