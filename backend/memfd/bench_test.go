package memfd_test

import (
	"testing"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/memfd"
	"github.com/shmgo/shm/backend/posix"
)

// BenchmarkAttach measures shm.Open plus Close of a 4 KiB region whose
// owner is another process, for memfd (connect, credential checks, the
// descriptor over SCM_RIGHTS, mmap) and for posix (open in /dev/shm, mmap).
//
//	go test -bench Attach -run '^$' -count 5 ./backend/memfd/
func BenchmarkAttach(b *testing.B) {
	for _, bc := range []struct {
		name string
		opt  shm.Option
	}{
		{"memfd", shm.WithBackend(memfd.New())},
		{"posix", shm.WithBackend(posix.New())},
	} {
		b.Run(bc.name, func(b *testing.B) {
			key := testKey("bench")
			owner := startChild(b, "owner", []string{key, "600", bc.name})
			if l := owner.Expect(""); l != "ready" {
				b.Fatalf("owner: %q", l)
			}
			for b.Loop() {
				r, err := shm.Open(key, 0, bc.opt)
				if err != nil {
					b.Fatal(err)
				}
				r.Close()
			}
			owner.Send("unlink")
			owner.Wait()
		})
	}
}
