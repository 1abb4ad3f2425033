package conformance_test

import (
	"os"
	"testing"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/file"
	"github.com/shmgo/shm/backend/memfd"
	"github.com/shmgo/shm/backend/posix"
	"github.com/shmgo/shm/backend/sysv"
	"github.com/shmgo/shm/conformance"
)

// BenchmarkBackend runs conformance.Bench for every backend:
//
//	go test -run '^$' -bench Backend -count 10 ./conformance | tee new.txt
//	benchstat old.txt new.txt
func BenchmarkBackend(b *testing.B) {
	b.Run("posix", func(b *testing.B) {
		conformance.Bench(b, func(testing.TB) backend.Backend { return posix.New() })
	})
	b.Run("sysv", func(b *testing.B) {
		conformance.Bench(b, func(testing.TB) backend.Backend { return sysv.New() })
	})
	b.Run("memfd", func(b *testing.B) {
		conformance.Bench(b, func(testing.TB) backend.Backend { return memfd.New() })
	})
	b.Run("file", func(b *testing.B) {
		// One directory for the parent and its workers, which inherit
		// the variable.
		const env = "SHMGO_BENCH_FILE_DIR"
		dir := os.Getenv(env)
		if dir == "" {
			dir = b.TempDir()
			b.Setenv(env, dir)
		}
		conformance.Bench(b, func(testing.TB) backend.Backend { return file.New(dir) })
	})
}
