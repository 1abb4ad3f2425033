package sysv

import (
	"fmt"
	"io/fs"

	"github.com/shmgo/shm/backend"
)

// init registers the backend as "sysv". It takes no argument: SysV
// segments have no directory (they belong to the IPC namespace).
func init() {
	backend.Register("sysv", func(arg string) (backend.Backend, error) {
		if arg != "" {
			return nil, fmt.Errorf("the sysv backend takes no argument, not %q: %w", arg, fs.ErrInvalid)
		}
		return New(), nil
	})
}
