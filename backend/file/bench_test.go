package file_test

import (
	"os"
	"testing"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/file"
	"github.com/shmgo/shm/backend/posix"
)

// benchDirs are the directories the benchmarks compare: the test's temporary
// directory (a disk filesystem, usually) and one on the /dev/shm tmpfs.
func benchDirs(b *testing.B) map[string]string {
	shmDir, err := os.MkdirTemp("/dev/shm", "t-file-bench-")
	if err != nil {
		b.Fatalf("a directory on /dev/shm: %v", err)
	}
	b.Cleanup(func() { os.RemoveAll(shmDir) })
	return map[string]string{"tmpdir": b.TempDir(), "devshm": shmDir}
}

func benchBackends(b *testing.B, run func(b *testing.B, be backend.Backend)) {
	for where, dir := range benchDirs(b) {
		b.Run("file/"+where, func(b *testing.B) { run(b, file.New(dir)) })
		b.Run("posix/"+where, func(b *testing.B) { run(b, posix.NewDir(dir)) })
	}
}

// Create, Publish, Close and Unlink of a 64 KiB object.
func BenchmarkCreate(b *testing.B) {
	benchBackends(b, func(b *testing.B, be backend.Backend) {
		for b.Loop() {
			p, err := be.Create("t-file-bench", 64<<10, 0o600)
			if err != nil {
				b.Fatal(err)
			}
			if err := p.Publish(); err != nil {
				b.Fatal(err)
			}
			p.Close()
			if err := be.Unlink("t-file-bench"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// Open and Close of an existing 64 KiB object.
func BenchmarkOpen(b *testing.B) {
	benchBackends(b, func(b *testing.B, be backend.Backend) {
		p, err := be.Create("t-file-bench", 64<<10, 0o600)
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Publish(); err != nil {
			b.Fatal(err)
		}
		defer be.Unlink("t-file-bench")
		defer p.Close()
		for b.Loop() {
			s, err := be.Open("t-file-bench")
			if err != nil {
				b.Fatal(err)
			}
			s.Close()
		}
	})
}

// InUse on a mapped file.
func BenchmarkInUse(b *testing.B) {
	be := file.New(b.TempDir())
	p, err := be.Create("t-file-bench", 4096, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	if err := p.Publish(); err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	for b.Loop() {
		if inUse, err := be.InUse("t-file-bench"); err != nil || !inUse {
			b.Fatal(inUse, err)
		}
	}
}
