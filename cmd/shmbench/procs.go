package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/internal/sys"
)

// The workers of contend, pingpong, notify and cond are this program, re-executed with
// envWorker set to their role and envArgs to their parameters.
const (
	envWorker = "SHMBENCH_WORKER"
	envArgs   = "SHMBENCH_ARGS"
)

// The control block at the start of the region's data, shared by the parent
// and its workers (the C baseline uses the same layout).
const (
	offReady   = 0   // workers attached
	offGo      = 4   // futex: 1 once the parent starts the clock
	offDone    = 8   // workers finished
	offTurn    = 12  // pingpong: futex, 0 = the parent's turn, 1 = the worker's
	offCounter = 64  // contend: the counter, on its own cache line
	offWait    = 128 // notify, cond: a waitBlock, on its own cache line
	ctlSize    = 192
)

func word(data []byte, off int) *uint32 { return (*uint32)(unsafe.Pointer(&data[off])) }

// workerArgs are a worker's parameters, in envArgs as JSON.
type workerArgs struct {
	Backend    string
	Key        string
	N          int
	Goroutines int
	Size       int    // the owner role's region size
	Dir        string // the file backend's directory
}

// workers is a set of running worker processes.
type workers struct {
	cmds   []*exec.Cmd
	outs   []*bytes.Buffer
	mu     sync.Mutex
	failed error // the first worker that exited with an error
	wg     sync.WaitGroup
	// exited ends when a worker exits, for the waits of notify and cond.
	exited context.Context
	cancel context.CancelFunc
}

// startWorkers starts count workers playing role on key.
func startWorkers(c *config, e *benv, role, key string, count, n int) (*workers, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	ws := &workers{}
	ws.exited, ws.cancel = context.WithCancel(context.Background())
	args, err := json.Marshal(workerArgs{Backend: e.name, Key: key, N: n, Goroutines: c.goroutines, Size: max(c.size, ctlSize), Dir: e.dir})
	if err != nil {
		return nil, err
	}
	for range count {
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), envWorker+"="+role, envArgs+"="+string(args))
		out := &bytes.Buffer{}
		cmd.Stdout = out
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			ws.kill()
			return nil, err
		}
		ws.cmds = append(ws.cmds, cmd)
		ws.outs = append(ws.outs, out)
		ws.wg.Add(1)
		go func() {
			defer ws.wg.Done()
			defer ws.cancel()
			if err := cmd.Wait(); err != nil {
				ws.mu.Lock()
				if ws.failed == nil {
					ws.failed = fmt.Errorf("worker %d: %v", cmd.Process.Pid, err)
				}
				ws.mu.Unlock()
			}
		}()
	}
	return ws, nil
}

// check reports a worker that failed.
func (ws *workers) check() error {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.failed
}

func (ws *workers) kill() {
	for _, cmd := range ws.cmds {
		cmd.Process.Kill()
	}
	ws.wg.Wait()
}

// wait waits for every worker to exit and returns the "key=value" fields
// they printed, by key.
func (ws *workers) wait() (map[string][]string, error) {
	ws.wg.Wait()
	if err := ws.check(); err != nil {
		return nil, err
	}
	fields := map[string][]string{}
	for _, out := range ws.outs {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			for _, f := range strings.Fields(sc.Text()) {
				if k, v, ok := strings.Cut(f, "="); ok {
					fields[k] = append(fields[k], v)
				}
			}
		}
	}
	return fields, nil
}

func runContend(c *config, e *benv) (result, error) {
	n := pick(c.n, 1_000_000)
	key := e.key("contend")
	r, err := shm.Create(key, max(c.size, ctlSize), e.opt())
	if err != nil {
		return result{}, err
	}
	defer r.Close()
	defer r.Unlink()
	data := r.Bytes()
	ws, err := startWorkers(c, e, "contend", key, c.procs, n)
	if err != nil {
		return result{}, err
	}
	if err := sys.WaitAtLeast(word(data, offReady), uint32(c.procs), ws.check); err != nil {
		ws.kill()
		return result{}, err
	}
	start := time.Now()
	sys.StoreWake(word(data, offGo), 1)
	if err := sys.WaitAtLeast(word(data, offDone), uint32(c.procs), ws.check); err != nil {
		ws.kill()
		return result{}, err
	}
	d := time.Since(start)
	fields, err := ws.wait()
	if err != nil {
		return result{}, err
	}
	total := atomic.LoadUint64((*uint64)(unsafe.Pointer(&data[offCounter])))
	expected := uint64(n) * uint64(c.procs)
	threads := 0
	for _, v := range fields["threads"] {
		t, _ := strconv.Atoi(v)
		threads = max(threads, t)
	}
	var cpu int64
	for _, v := range fields["cpu_ns"] {
		t, _ := strconv.ParseInt(v, 10, 64)
		cpu += t
	}
	ns := perOp(d, int(expected))
	res := result{nsPerOp: ns, extra: []string{
		fmt.Sprintf("procs=%d", c.procs),
		fmt.Sprintf("goroutines=%d", c.goroutines),
		fmt.Sprintf("total=%d", total),
		fmt.Sprintf("expected=%d", expected),
		fmt.Sprintf("Mops=%.2f", 1e3/ns),
		fmt.Sprintf("threads=%d", threads),
		fmt.Sprintf("cpu_ns_per_op=%.2f", float64(cpu)/float64(expected)),
	}}
	if total != expected {
		return result{}, fmt.Errorf("total=%d expected=%d: the lock did not exclude (%s)", total, expected, strings.Join(res.extra, " "))
	}
	return res, nil
}

func runPingPong(c *config, e *benv) (result, error) {
	n := pick(c.n, 20000)
	key := e.key("pingpong")
	r, err := shm.Create(key, max(c.size, ctlSize), e.opt())
	if err != nil {
		return result{}, err
	}
	defer r.Close()
	defer r.Unlink()
	data := r.Bytes()
	ws, err := startWorkers(c, e, "pingpong", key, 1, n)
	if err != nil {
		return result{}, err
	}
	if err := sys.WaitAtLeast(word(data, offReady), 1, ws.check); err != nil {
		ws.kill()
		return result{}, err
	}
	turn := word(data, offTurn)
	start := time.Now()
	for range n {
		sys.StoreWake(turn, 1)
		if err := sys.WaitWhile(turn, 1, ws.check); err != nil {
			ws.kill()
			return result{}, err
		}
	}
	d := time.Since(start)
	if _, err := ws.wait(); err != nil {
		return result{}, err
	}
	return result{nsPerOp: perOp(d, n)}, nil
}

// workerMain plays the role in the environment and returns the exit status.
func workerMain() int {
	role := os.Getenv(envWorker)
	var a workerArgs
	if err := json.Unmarshal([]byte(os.Getenv(envArgs)), &a); err != nil {
		fmt.Fprintf(os.Stderr, "shmbench worker: bad %s: %v\n", envArgs, err)
		return 2
	}
	be, err := newBackend(a.Backend, a.Dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "shmbench worker: backend %q: %v\n", a.Backend, err)
		return 2
	}
	var opt shm.Option
	if be != nil {
		opt = shm.WithBackend(be)
	}
	switch role {
	case "own", "openwait":
		// These attach (or create) on their own.
		if role == "own" {
			err = workOwn(a.Key, a.Size, opt)
		} else {
			err = workOpenWait(a.Key, a.N, opt)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "shmbench worker %s: %v\n", role, err)
			return 1
		}
		return 0
	}
	r, err := shm.Open(a.Key, 10*time.Second, opt)
	if err != nil {
		fmt.Fprintf(os.Stderr, "shmbench worker: %v\n", err)
		return 1
	}
	defer r.Close()
	switch role {
	case "contend":
		err = workContend(r, a.N, max(a.Goroutines, 1))
	case "pingpong":
		err = workPingPong(r, a.N)
	case "notify":
		err = workNotify(r, a.N)
	case "cond":
		err = workCond(r, a.N)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "shmbench worker %s: %v\n", role, err)
		return 1
	}
	return 0
}

// parentGone stops a worker's wait when its parent has gone away.
func parentGone() error {
	if os.Getppid() == 1 {
		return errors.New("parent exited")
	}
	return nil
}

func workContend(r *shm.Region, n, g int) error {
	data := r.Bytes()
	counter := (*uint64)(unsafe.Pointer(&data[offCounter]))
	atomic.AddUint32(word(data, offReady), 1)
	sys.FutexWake(word(data, offReady), 1<<30)
	if err := sys.WaitWhile(word(data, offGo), 0, parentGone); err != nil {
		return err
	}
	cpu0 := processCPU()
	var wg sync.WaitGroup
	errs := make([]error, g)
	for k := range g {
		cnt := n / g
		if k < n%g {
			cnt++
		}
		wg.Go(func() {
			for range cnt {
				l, err := r.Lock()
				if err != nil {
					errs[k] = err
					return
				}
				*counter++
				if err := l.Unlock(); err != nil {
					errs[k] = err
					return
				}
			}
		})
	}
	wg.Wait()
	cpu := processCPU() - cpu0
	atomic.AddUint32(word(data, offDone), 1)
	sys.FutexWake(word(data, offDone), 1<<30)
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Printf("threads=%d cpu_ns=%d\n", threadCount(), cpu)
	return nil
}

func workPingPong(r *shm.Region, n int) error {
	data := r.Bytes()
	turn := word(data, offTurn)
	atomic.AddUint32(word(data, offReady), 1)
	sys.FutexWake(word(data, offReady), 1<<30)
	for range n {
		if err := sys.WaitWhile(turn, 0, parentGone); err != nil {
			return err
		}
		sys.StoreWake(turn, 0)
	}
	return nil
}

// processCPU is the CPU time of this process (all its threads), in
// nanoseconds.
func processCPU() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts)
	return ts.Nano()
}

// threadCount is the number of OS threads of this process. The Go runtime
// never ends its threads, so it is also the most this process had.
func threadCount() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			t, _ := strconv.Atoi(strings.TrimSpace(v))
			return t
		}
	}
	return 0
}

// workOwn creates the region (attach measures users attaching to a region
// owned by another process, as in real use: a memfd owner serves them from
// there) and keeps it until the parent sets the done word.
func workOwn(key string, size int, opt shm.Option) error {
	r, err := shm.Create(key, size, opt)
	if err != nil {
		return err
	}
	defer r.Close()
	defer r.Unlink()
	return sys.WaitWhile(word(r.Bytes(), offDone), 0, parentGone)
}
