package conformance_test

import (
	"testing"

	"github.com/shmgo/shm/conformance"
)

// BenchmarkBackend runs conformance.Bench for every backend:
//
//	go test -run '^$' -bench Backend -count 10 ./conformance | tee new.txt
//	benchstat old.txt new.txt
func BenchmarkBackend(b *testing.B) {
	for _, name := range backendNames {
		b.Run(name, func(b *testing.B) {
			conformance.Bench(b, backendFor(b, name))
		})
	}
}
