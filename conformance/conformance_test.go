package conformance_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/file"
	"github.com/shmgo/shm/backend/memfd"
	"github.com/shmgo/shm/backend/posix"
	"github.com/shmgo/shm/backend/sysv"
	"github.com/shmgo/shm/conformance"
)

func TestConformance(t *testing.T) {
	t.Run("posix", func(t *testing.T) {
		conformance.Run(t, func(testing.TB) backend.Backend { return posix.New() })
	})
	t.Run("sysv", func(t *testing.T) {
		conformance.Run(t, func(testing.TB) backend.Backend { return sysv.New() })
	})
	t.Run("memfd", func(t *testing.T) {
		conformance.Run(t, func(testing.TB) backend.Backend { return memfd.New() })
	})
	t.Run("file", func(t *testing.T) {
		// One directory for the parent and its children (which inherit the
		// variable), traversable by the other uid of the Modes test.
		const env = "SHMGO_CONFORMANCE_FILE_DIR"
		dir := os.Getenv(env)
		if dir == "" {
			dir = t.TempDir()
			for _, d := range []string{filepath.Dir(dir), dir} {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			t.Setenv(env, dir)
		}
		conformance.Run(t, func(testing.TB) backend.Backend { return file.New(dir) })
	})
}
