package file

import (
	"time"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/internal/dirobj"
)

// TempPrefix is tempPrefix.
const TempPrefix = tempPrefix

// TempPath returns the temporary path of a created, unpublished object.
func TempPath(p backend.Pending) string { return p.(*dirobj.Segment).TempPath() }

// SetLockWait sets how long Create and Open wait for a lock and returns a
// function that restores it.
func SetLockWait(d time.Duration) (restore func()) {
	old := lockWait
	lockWait = d
	return func() { lockWait = old }
}
