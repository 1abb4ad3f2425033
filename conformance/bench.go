package conformance

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/internal/benchproc"
	"github.com/shmgo/shm/internal/reexec"
)

const benchChunk = 1 << 20

var benchSeq atomic.Int64

// Bench measures package shm's operations on the backend that newBackend
// returns, each as a sub-benchmark of b, so that benchstat can compare
// backends and commits:
//
//   - Create/4KiB: Create, Unlink and Close of a 4 KiB region.
//   - Attach/4KiB: Open (timeout 0) and Close of an existing region.
//   - Lock: an uncontended Lock and Unlock.
//   - LockParallel: Lock and Unlock from GOMAXPROCS goroutines of one
//     process, through one Region.
//   - Contend/procs=2: locked increments of one counter in the region by
//     two worker processes; ns per increment.
//   - Fill/64MiB: one pass over a 64 MiB region in 1 MiB copies (reported
//     in MB/s).
//   - PingPong: a turn handed to another process and back through a futex
//     word in the region; ns per round trip.
//
// The cross-process benchmarks re-execute the test binary, as Run does:
// the worker runs the same benchmark, whose Bench call sees an environment
// variable and plays its part. newBackend is called in the worker too, with
// the parent's environment. Keys start with /t-bench-; Bench removes every
// region it makes.
func Bench(b *testing.B, newBackend func(testing.TB) backend.Backend) {
	if benchChild(b, newBackend) {
		return
	}
	parent := b.Name()
	be := newBackend(b)
	opt := shm.WithBackend(be)
	key := func(tag string) string {
		k := fmt.Sprintf("/t-bench-%s-%d-%d-%s", be.Name(), os.Getpid(), benchSeq.Add(1), tag)
		b.Cleanup(func() { be.Unlink(k[1:]) })
		return k
	}
	create := func(b *testing.B, key string, size int) *shm.Region {
		r, err := shm.Create(key, size, opt)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { r.Close() })
		return r
	}

	b.Run("Create/4KiB", func(b *testing.B) {
		k := key("create")
		for b.Loop() {
			r, err := shm.Create(k, 4096, opt)
			if err != nil {
				b.Fatal(err)
			}
			if err := r.Unlink(); err != nil {
				b.Fatal(err)
			}
			if err := r.Close(); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("Attach/4KiB", func(b *testing.B) {
		k := key("attach")
		create(b, k, 4096)
		for b.Loop() {
			r, err := shm.Open(k, 0, opt)
			if err != nil {
				b.Fatal(err)
			}
			if err := r.Close(); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("Lock", func(b *testing.B) {
		r := create(b, key("lock"), 4096)
		for b.Loop() {
			l, err := r.Lock()
			if err != nil {
				b.Fatal(err)
			}
			if err := l.Unlock(); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("LockParallel", func(b *testing.B) {
		r := create(b, key("lockpar"), 4096)
		counter := (*uint64)(unsafe.Pointer(&r.Bytes()[0]))
		var n atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				l, err := r.Lock()
				if err != nil {
					b.Error(err)
					return
				}
				*counter++
				if err := l.Unlock(); err != nil {
					b.Error(err)
					return
				}
				n.Add(1)
			}
		})
		if got := atomic.LoadUint64(counter); got != uint64(n.Load()) {
			b.Fatalf("counter is %d after %d locked increments: the lock did not exclude", got, n.Load())
		}
	})

	b.Run("Contend/procs=2", func(b *testing.B) {
		const procs = 2
		k := key("contend")
		r := create(b, k, benchproc.CtlSize)
		data := r.Bytes()
		ns := []int{b.N / procs, b.N - b.N/procs}
		ws := startBenchWorkers(b, parent, "contend", k, ns)
		if err := benchproc.Contend(data, procs, ws.check, b.ResetTimer, b.StopTimer); err != nil {
			b.Fatal(err)
		}
		if err := ws.wait(); err != nil {
			b.Fatal(err)
		}
		if got := atomic.LoadUint64(benchproc.Counter(data)); got != uint64(b.N) {
			b.Fatalf("counter is %d after %d locked increments: the lock did not exclude", got, b.N)
		}
	})

	b.Run("Fill/64MiB", func(b *testing.B) {
		const size = 64 << 20
		r := create(b, key("fill"), size)
		src := bytes.Repeat([]byte{0xa5}, benchChunk)
		dst := r.Bytes()
		fill := func() {
			for off := 0; off < len(dst); off += benchChunk {
				copy(dst[off:], src)
			}
		}
		fill() // fault the pages in
		b.SetBytes(size)
		for b.Loop() {
			fill()
		}
	})

	b.Run("PingPong", func(b *testing.B) {
		k := key("pingpong")
		r := create(b, k, benchproc.CtlSize)
		ws := startBenchWorkers(b, parent, "pingpong", k, []int{b.N})
		if err := benchproc.PingPong(r.Bytes(), b.N, ws.check, b.ResetTimer, b.StopTimer); err != nil {
			b.Fatal(err)
		}
		if err := ws.wait(); err != nil {
			b.Fatal(err)
		}
	})
}

// benchWorkers are the running worker processes of one benchmark.
type benchWorkers struct {
	procs []*reexec.Proc
}

// startBenchWorkers starts one worker per element of ns, playing role on
// key with that count, in the Bench call named parent. They are killed when
// b ends, if still running.
func startBenchWorkers(b *testing.B, parent, role, key string, ns []int) *benchWorkers {
	b.Helper()
	ws := &benchWorkers{}
	for _, n := range ns {
		ws.procs = append(ws.procs, reexec.Start(b, role, []string{key, strconv.Itoa(n)}, reexec.InBenchmark(parent)))
	}
	return ws
}

// check returns the failure of the first worker that has failed, if any.
func (ws *benchWorkers) check() error {
	for _, p := range ws.procs {
		if err := p.Err(); err != nil {
			return fmt.Errorf("bench worker: %v\n%s", err, p.Output())
		}
	}
	return nil
}

// wait waits for every worker to exit.
func (ws *benchWorkers) wait() error {
	for _, p := range ws.procs {
		<-p.Done()
	}
	return ws.check()
}

// benchChild plays the worker role this process was started for, if it is
// a worker of the Bench call b, and exits.
func benchChild(b *testing.B, newBackend func(testing.TB) backend.Backend) bool {
	c, ok := reexec.In(b)
	if !ok {
		if reexec.IsChild() {
			// Never run the benchmarks (and start workers) in a worker.
			fmt.Fprintf(os.Stderr, "bench worker: %s is not the benchmark it was started for\n", b.Name())
			os.Exit(3)
		}
		return false
	}
	n, err := strconv.Atoi(c.Arg(1))
	if err == nil {
		err = benchWork(c.Role(), c.Arg(0), n, newBackend(b))
	}
	c.Exit(err)
	return true
}

// benchWork plays a worker's role on key, n times: internal/benchproc's worker
// sides, as cmd/shmbench's workers do.
func benchWork(role, key string, n int, be backend.Backend) error {
	r, err := shm.Open(key, 10*time.Second, shm.WithBackend(be))
	if err != nil {
		return err
	}
	defer r.Close()
	switch role {
	case "contend":
		_, err = benchproc.WorkContend(r, n, 1)
	case "pingpong":
		err = benchproc.WorkPingPong(r.Bytes(), n)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	return err
}
