package conformance_test

import (
	"testing"

	"github.com/shmgo/shm/backend"
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
}
