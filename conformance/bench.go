package conformance

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/internal/sys"
)

// envBenchChild marks a worker process of Bench; it holds a benchSpec as
// JSON.
const envBenchChild = "SHMGO_BENCH_CHILD"

type benchSpec struct {
	Bench string // b.Name() of the Bench call that started the worker
	Role  string // "contend" or "pingpong"
	Key   string
	N     int
}

// The control block at the start of a cross-process benchmark's region
// (the same layout as cmd/shmbench's).
const (
	benchOffReady   = 0  // workers attached
	benchOffGo      = 4  // futex: 1 once the parent starts the clock
	benchOffDone    = 8  // workers finished
	benchOffTurn    = 12 // pingpong: futex, 0 = the parent's turn, 1 = the worker's
	benchOffCounter = 64 // contend: the counter, on its own cache line
	benchCtlSize    = 128
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
		r := create(b, k, benchCtlSize)
		data := r.Bytes()
		ns := []int{b.N / procs, b.N - b.N/procs}
		ws := startBenchWorkers(b, parent, "contend", k, ns)
		if err := sys.WaitAtLeast(benchWord(data, benchOffReady), procs, ws.check); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		sys.StoreWake(benchWord(data, benchOffGo), 1)
		if err := sys.WaitAtLeast(benchWord(data, benchOffDone), procs, ws.check); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := ws.wait(); err != nil {
			b.Fatal(err)
		}
		if got := atomic.LoadUint64((*uint64)(unsafe.Pointer(&data[benchOffCounter]))); got != uint64(b.N) {
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
		r := create(b, k, benchCtlSize)
		data := r.Bytes()
		ws := startBenchWorkers(b, parent, "pingpong", k, []int{b.N})
		if err := sys.WaitAtLeast(benchWord(data, benchOffReady), 1, ws.check); err != nil {
			b.Fatal(err)
		}
		turn := benchWord(data, benchOffTurn)
		b.ResetTimer()
		for range b.N {
			sys.StoreWake(turn, 1)
			if err := sys.WaitWhile(turn, 1, ws.check); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		if err := ws.wait(); err != nil {
			b.Fatal(err)
		}
	})
}

func benchWord(data []byte, off int) *uint32 { return (*uint32)(unsafe.Pointer(&data[off])) }

// benchWorkers are the running worker processes of one benchmark.
type benchWorkers struct {
	mu     sync.Mutex
	failed error
	wg     sync.WaitGroup
	cmds   []*exec.Cmd
}

// startBenchWorkers starts one worker per element of ns, playing role on
// key with that count, in the Bench call named parent. They are killed when
// b ends, if still running.
func startBenchWorkers(b *testing.B, parent, role, key string, ns []int) *benchWorkers {
	b.Helper()
	ws := &benchWorkers{}
	for _, n := range ns {
		spec, err := json.Marshal(benchSpec{Bench: parent, Role: role, Key: key, N: n})
		if err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench="+benchPattern(parent), "-test.benchtime=1x")
		cmd.Env = append(os.Environ(), envBenchChild+"="+string(spec))
		var out bytes.Buffer
		cmd.Stdout = &out
		cmd.Stderr = &out
		if err := cmd.Start(); err != nil {
			ws.kill()
			b.Fatal(err)
		}
		ws.cmds = append(ws.cmds, cmd)
		ws.wg.Go(func() {
			if err := cmd.Wait(); err != nil {
				ws.mu.Lock()
				if ws.failed == nil {
					ws.failed = fmt.Errorf("bench worker %s: %v\n%s", role, err, out.String())
				}
				ws.mu.Unlock()
			}
		})
	}
	b.Cleanup(ws.kill)
	return ws
}

func (ws *benchWorkers) check() error {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.failed
}

func (ws *benchWorkers) kill() {
	for _, cmd := range ws.cmds {
		cmd.Process.Kill()
	}
	ws.wg.Wait()
}

func (ws *benchWorkers) wait() error {
	ws.wg.Wait()
	return ws.check()
}

// benchPattern is a -test.bench pattern that selects exactly the benchmark
// named name.
func benchPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

// benchChild plays the worker role in the environment, if this process is
// a worker of the Bench call b, and exits.
func benchChild(b *testing.B, newBackend func(testing.TB) backend.Backend) bool {
	raw := os.Getenv(envBenchChild)
	if raw == "" {
		return false
	}
	var spec benchSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil || spec.Bench != b.Name() {
		// Never run the benchmarks (and start workers) in a worker.
		fmt.Fprintf(os.Stderr, "bench worker: %s is not %s (%v)\n", b.Name(), spec.Bench, err)
		os.Exit(3)
	}
	if err := benchWork(spec, newBackend(b)); err != nil {
		fmt.Fprintf(os.Stderr, "bench worker %s: %v\n", spec.Role, err)
		os.Exit(1)
	}
	os.Exit(0)
	return true
}

func benchWork(spec benchSpec, be backend.Backend) error {
	r, err := shm.Open(spec.Key, 10*time.Second, shm.WithBackend(be))
	if err != nil {
		return err
	}
	defer r.Close()
	data := r.Bytes()
	parentGone := func() error {
		if os.Getppid() == 1 {
			return fmt.Errorf("parent exited")
		}
		return nil
	}
	atomic.AddUint32(benchWord(data, benchOffReady), 1)
	sys.FutexWake(benchWord(data, benchOffReady), 1<<30)
	switch spec.Role {
	case "contend":
		counter := (*uint64)(unsafe.Pointer(&data[benchOffCounter]))
		if err := sys.WaitWhile(benchWord(data, benchOffGo), 0, parentGone); err != nil {
			return err
		}
		for range spec.N {
			l, err := r.Lock()
			if err != nil {
				return err
			}
			*counter++
			if err := l.Unlock(); err != nil {
				return err
			}
		}
		atomic.AddUint32(benchWord(data, benchOffDone), 1)
		sys.FutexWake(benchWord(data, benchOffDone), 1<<30)
	case "pingpong":
		turn := benchWord(data, benchOffTurn)
		for range spec.N {
			if err := sys.WaitWhile(turn, 0, parentGone); err != nil {
				return err
			}
			sys.StoreWake(turn, 0)
		}
	default:
		return fmt.Errorf("unknown role %q", spec.Role)
	}
	return nil
}
