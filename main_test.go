package shm_test

import (
	"os"
	"testing"

	"github.com/shmgo/shm/internal/reexec"
	"github.com/shmgo/shm/internal/shmtest"
)

// Cross-process tests re-execute the test binary (internal/reexec):
// TestMain plays a child's role instead of running the tests. The roles are
// internal/shmtest's, fd_test.go's and, in package shm, lock_test.go's.
func TestMain(m *testing.M) {
	shmtest.Register()
	reexec.Main()
	os.Exit(m.Run())
}
