package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/internal/benchproc"
	"github.com/shmgo/shm/internal/reexec"
	"github.com/shmgo/shm/internal/sys"
)

// The workers of contend, pingpong, notify, cond and openwait, and
// attach's owner, are this program re-executed (internal/reexec): main plays their role
// first. A worker's arguments are a workerArgs; it reports "key=value"
// fields. The region starts with internal/benchproc's control block.

// workerRoles are the roles of the workers.
var workerRoles = []string{"contend", "pingpong", "notify", "cond", "openwait", "own"}

func init() {
	for _, role := range workerRoles {
		reexec.Register(role, func(c *reexec.Child) error {
			a, err := parseWorkerArgs(c.Args())
			if err != nil {
				return fmt.Errorf("shmbench worker %s: %w", role, err)
			}
			if err := work(c, role, a); err != nil {
				return fmt.Errorf("shmbench worker %s: %w", role, err)
			}
			return nil
		})
	}
}

// workerArgs are a worker's parameters.
type workerArgs struct {
	Backend    string
	Dir        string // the file backend's directory
	Key        string
	N          int
	Goroutines int
	Size       int // the owner role's region size
}

func (a workerArgs) strings() []string {
	return []string{a.Backend, a.Dir, a.Key, strconv.Itoa(a.N), strconv.Itoa(a.Goroutines), strconv.Itoa(a.Size)}
}

func parseWorkerArgs(s []string) (a workerArgs, err error) {
	if len(s) != 6 {
		return a, fmt.Errorf("%d arguments, want 6", len(s))
	}
	a.Backend, a.Dir, a.Key = s[0], s[1], s[2]
	for i, p := range []*int{&a.N, &a.Goroutines, &a.Size} {
		if *p, err = strconv.Atoi(s[3+i]); err != nil {
			return a, err
		}
	}
	return a, nil
}

// workers is a set of running worker processes.
type workers struct {
	mu     sync.Mutex
	procs  []*os.Process
	fields map[string][]string // the "key=value" fields they reported, by key
	failed error               // the first worker that exited with an error
	wg     sync.WaitGroup
	// exited ends when a worker exits, for the waits of notify and cond.
	exited context.Context
	cancel context.CancelFunc
}

// startWorkers starts count workers playing role on key.
func startWorkers(c *config, e *benv, role, key string, count, n int) (*workers, error) {
	ws := &workers{fields: map[string][]string{}}
	ws.exited, ws.cancel = context.WithCancel(context.Background())
	args := workerArgs{Backend: e.name, Dir: e.dir, Key: key, N: n, Goroutines: c.goroutines, Size: max(c.size, benchproc.CtlSize)}
	for range count {
		cmd, err := reexec.Command(role, args.strings())
		if err != nil {
			ws.kill()
			return nil, err
		}
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			ws.kill()
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			ws.kill()
			return nil, err
		}
		ws.procs = append(ws.procs, cmd.Process)
		ws.wg.Add(1)
		go func() {
			defer ws.wg.Done()
			defer ws.cancel()
			ws.read(out)
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

// read collects the fields of a worker's reports, and passes its other
// output on.
func (ws *workers) read(out io.Reader) {
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		r, ok := reexec.CutReport(sc.Text())
		if !ok {
			fmt.Fprintln(os.Stderr, sc.Text())
			continue
		}
		ws.mu.Lock()
		for _, f := range strings.Fields(r) {
			if k, v, ok := strings.Cut(f, "="); ok {
				ws.fields[k] = append(ws.fields[k], v)
			}
		}
		ws.mu.Unlock()
	}
}

// check reports a worker that failed.
func (ws *workers) check() error {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.failed
}

func (ws *workers) kill() {
	for _, p := range ws.procs {
		p.Kill()
	}
	ws.wg.Wait()
}

// wait waits for every worker to exit and returns the "key=value" fields
// they reported, by key.
func (ws *workers) wait() (map[string][]string, error) {
	ws.wg.Wait()
	if err := ws.check(); err != nil {
		return nil, err
	}
	return ws.fields, nil
}

func runContend(c *config, e *benv) (result, error) {
	n := pick(c.n, 1_000_000)
	r, ws, err := withWorkers(c, e, "contend", c.procs, n)
	if err != nil {
		return result{}, err
	}
	defer r.Close()
	defer r.Unlink()
	data := r.Bytes()
	var clk clock
	if err := benchproc.Contend(data, c.procs, ws.check, clk.start, clk.stop); err != nil {
		ws.kill()
		return result{}, err
	}
	d := clk.d
	fields, err := ws.wait()
	if err != nil {
		return result{}, err
	}
	total := atomic.LoadUint64(benchproc.Counter(data))
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
	r, ws, err := withWorkers(c, e, "pingpong", 1, n)
	if err != nil {
		return result{}, err
	}
	defer r.Close()
	defer r.Unlink()
	var clk clock
	if err := benchproc.PingPong(r.Bytes(), n, ws.check, clk.start, clk.stop); err != nil {
		ws.kill()
		return result{}, err
	}
	if _, err := ws.wait(); err != nil {
		return result{}, err
	}
	return result{nsPerOp: perOp(clk.d, n)}, nil
}

// withWorkers creates the region of workload w (its data holds the control
// block) and starts count workers on it, each doing n of its operations.
// The caller unlinks and closes the region.
func withWorkers(c *config, e *benv, w string, count, n int) (*shm.Region, *workers, error) {
	key := e.key(w)
	r, err := shm.Create(key, max(c.size, benchproc.CtlSize), e.opt())
	if err != nil {
		return nil, nil, err
	}
	ws, err := startWorkers(c, e, w, key, count, n)
	if err != nil {
		r.Unlink()
		r.Close()
		return nil, nil, err
	}
	return r, ws, nil
}

// clock times what runs between its start and stop.
type clock struct {
	t0 time.Time
	d  time.Duration
}

func (c *clock) start() { c.t0 = time.Now() }
func (c *clock) stop()  { c.d = time.Since(c.t0) }

// work plays a worker's role.
func work(c *reexec.Child, role string, a workerArgs) error {
	be, err := newBackend(a.Backend, a.Dir)
	if err != nil {
		return fmt.Errorf("backend %q: %w", a.Backend, err)
	}
	var opt shm.Option
	if be != nil {
		opt = shm.WithBackend(be)
	}
	// These attach (or create) on their own.
	switch role {
	case "own":
		return workOwn(a.Key, a.Size, opt)
	case "openwait":
		return workOpenWait(a.Key, a.N, opt)
	}
	r, err := shm.Open(a.Key, 10*time.Second, opt)
	if err != nil {
		return err
	}
	defer r.Close()
	switch role {
	case "contend":
		cpu, err := benchproc.WorkContend(r, a.N, max(a.Goroutines, 1))
		if err != nil {
			return err
		}
		c.Say("threads=%d cpu_ns=%d", threadCount(), cpu)
		return nil
	case "pingpong":
		return benchproc.WorkPingPong(r.Bytes(), a.N)
	case "notify":
		return workNotify(r, a.N)
	case "cond":
		return workCond(r, a.N)
	}
	return fmt.Errorf("unknown role %q", role)
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
	return sys.WaitWhile(benchproc.Word(r.Bytes(), benchproc.OffDone), 0, benchproc.ParentGone)
}
