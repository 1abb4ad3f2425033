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
	"github.com/shmgo/shm/conformance/internal/testbackend"
)

// backendNames are the module's backends, which the suite and the
// benchmarks run, in order.
var backendNames = []string{"posix", "sysv", "memfd", "file"}

// backendFor returns the constructor of the backend called name. The file
// backend and the test backend get one directory for the parent and its
// children (which inherit the variable), traversable by the other uid of the
// Modes test.
func backendFor(tb testing.TB, name string) func(testing.TB) backend.Backend {
	switch name {
	case "posix":
		return func(testing.TB) backend.Backend { return posix.New() }
	case "sysv":
		return func(testing.TB) backend.Backend { return sysv.New() }
	case "memfd":
		return func(testing.TB) backend.Backend { return memfd.New() }
	case "file":
		const env = "SHMGO_CONFORMANCE_FILE_DIR"
		dir := os.Getenv(env)
		if dir == "" {
			dir = tb.TempDir()
			for _, d := range []string{filepath.Dir(dir), dir} {
				if err := os.Chmod(d, 0o755); err != nil {
					tb.Fatal(err)
				}
			}
			tb.Setenv(env, dir)
		}
		return func(testing.TB) backend.Backend { return file.New(dir) }
	case testbackend.Name:
		const env = "SHMGO_CONFORMANCE_TESTBACKEND_DIR"
		dir := os.Getenv(env)
		if dir == "" {
			dir = tb.TempDir()
			for _, d := range []string{filepath.Dir(dir), dir} {
				if err := os.Chmod(d, 0o755); err != nil {
					tb.Fatal(err)
				}
			}
			if err := testbackend.Prepare(dir); err != nil {
				tb.Fatal(err)
			}
			tb.Setenv(env, dir)
			// After the suite, before the directory goes: it left nothing,
			// published or being created.
			tb.Cleanup(func() {
				var left []string
				for _, sub := range []string{"objects", "pending"} {
					ents, _ := os.ReadDir(filepath.Join(dir, sub))
					for _, e := range ents {
						left = append(left, sub+"/"+e.Name())
					}
				}
				if len(left) > 0 {
					tb.Errorf("the suite left behind in %s: %v", dir, left)
				}
			})
		}
		return func(testing.TB) backend.Backend { return testbackend.New(dir) }
	}
	tb.Fatalf("unknown backend %q", name)
	return nil
}

// TestConformance runs the suite on the module's backends, and on a
// backend written from package backend's documentation alone, with Run as
// any other backend's test would.
func TestConformance(t *testing.T) {
	for _, name := range backendNames {
		t.Run(name, func(t *testing.T) {
			conformance.Run(t, backendFor(t, name))
		})
	}
	t.Run(testbackend.Name, func(t *testing.T) {
		conformance.Run(t, backendFor(t, testbackend.Name))
	})
}
