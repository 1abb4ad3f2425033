package conformance

import (
	"testing"

	"github.com/shmgo/shm/backend"
)

// RunOwnBackend is Run for the module's own backends, with what the suite
// expects of them beyond what package backend documents: package shm
// proves by itself that nobody uses one of their regions (leases, flock,
// the kernel's attach count; memfd keys die with their owner), so
// ReplaceStale must replace a dead creator's unused region wherever it
// runs, as it did before the suite stopped relying on their undocumented
// methods. (Once package backend documents a way for any backend to give
// that proof, the suite checks for it instead.)
func RunOwnBackend(t *testing.T, newBackend func(testing.TB) backend.Backend) {
	run(t, newBackend, config{staleProof: true})
}
