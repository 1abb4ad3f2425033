package conformance_test

import (
	"testing"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/posix"
	"github.com/shmgo/shm/conformance"
)

// A backend's test runs the whole suite against it. For cross-process tests
// the suite re-executes the test binary, which runs this same test again;
// Run recognises the child and plays its part.
func ExampleRun() {
	_ = func(t *testing.T) { // func TestConformance(t *testing.T)
		conformance.Run(t, func(testing.TB) backend.Backend { return posix.New() })
	}
}
