package main

import (
	"fmt"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/internal/benchproc"
	"github.com/shmgo/shm/internal/sys"
)

func runCreate(c *config, e *benv) (result, error) {
	n := pick(c.n, 2000)
	key := e.key("create")
	cycle := func() error {
		r, err := shm.Create(key, c.size, e.opt())
		if err != nil {
			return err
		}
		if err := r.Unlink(); err != nil {
			r.Close()
			return err
		}
		return r.Close()
	}
	if err := cycle(); err != nil { // warm-up
		e.remove(key)
		return result{}, err
	}
	start := time.Now()
	for range n {
		if err := cycle(); err != nil {
			e.remove(key)
			return result{}, err
		}
	}
	return result{nsPerOp: perOp(time.Since(start), n)}, nil
}

func runAttach(c *config, e *benv) (result, error) {
	n := pick(c.n, 5000)
	key := e.key("attach")
	// The owner is another process, as in real use.
	ws, err := startWorkers(c, e, "own", key, 1, 0)
	if err != nil {
		return result{}, err
	}
	ctl, err := shm.Open(key, 10*time.Second, e.opt())
	if err != nil {
		ws.kill()
		return result{}, err
	}
	defer func() {
		sys.StoreWake(benchproc.Word(ctl.Bytes(), benchproc.OffDone), 1)
		ctl.Close()
		ws.wait()
	}()
	cycle := func() error {
		r, err := shm.Open(key, 0, e.opt())
		if err != nil {
			return err
		}
		return r.Close()
	}
	if err := cycle(); err != nil { // warm-up
		return result{}, err
	}
	start := time.Now()
	for range n {
		if err := cycle(); err != nil {
			return result{}, err
		}
	}
	return result{nsPerOp: perOp(time.Since(start), n)}, nil
}

func runLock(c *config, e *benv) (result, error) {
	n := pick(c.n, 20_000_000)
	key := e.key("lock")
	r, err := shm.Create(key, c.size, e.opt())
	if err != nil {
		return result{}, err
	}
	defer r.Close()
	if err := r.Unlink(); err != nil {
		return result{}, err
	}
	// The CPU time of this thread too: on a shared machine it leaves out
	// the time other programs ran instead of us.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start, cpu := time.Now(), threadCPU()
	for range n {
		l, err := r.Lock()
		if err != nil {
			return result{}, err
		}
		if err := l.Unlock(); err != nil {
			return result{}, err
		}
	}
	cpuNS := float64(threadCPU()-cpu) / float64(n)
	return result{nsPerOp: perOp(time.Since(start), n), extra: []string{fmt.Sprintf("cpu_ns_per_op=%.2f", cpuNS)}}, nil
}

// threadCPU is the CPU time of the calling thread, in nanoseconds.
func threadCPU() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
	return ts.Nano()
}

// fillPass writes all of dst from src, len(src) bytes at a time.
func fillPass(dst, src []byte) {
	for off := 0; off < len(dst); off += len(src) {
		copy(dst[off:], src)
	}
}

func gbps(bytes int, nsPerOp float64) string {
	return fmt.Sprintf("GBps=%.3f", float64(bytes)/nsPerOp)
}

func runFill(c *config, e *benv) (result, error) {
	n := pick(c.n, 8)
	key := e.key("fill")
	r, err := shm.Create(key, c.size, e.opt())
	if err != nil {
		return result{}, err
	}
	defer r.Close()
	if err := r.Unlink(); err != nil {
		return result{}, err
	}
	src := make([]byte, c.chunk)
	for i := range src {
		src[i] = 0xa5
	}
	dst := r.Bytes()
	fillPass(dst, src) // warm-up: faults the pages in
	start := time.Now()
	for range n {
		fillPass(dst, src)
	}
	ns := perOp(time.Since(start), n)
	return result{nsPerOp: ns, extra: []string{gbps(c.size, ns), fmt.Sprintf("chunk=%d", c.chunk)}}, nil
}

func runCreateWrite(c *config, e *benv) (result, error) {
	n := pick(c.n, 3)
	key := e.key("createwrite")
	src := make([]byte, c.chunk)
	for i := range src {
		src[i] = 0x5a
	}
	var total time.Duration
	for range n {
		start := time.Now()
		r, err := shm.Create(key, c.size, e.opt())
		if err != nil {
			return result{}, err
		}
		fillPass(r.Bytes(), src)
		total += time.Since(start)
		err = r.Unlink()
		if cerr := r.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			e.remove(key)
			return result{}, err
		}
	}
	ns := perOp(total, n)
	return result{nsPerOp: ns, extra: []string{gbps(c.size, ns)}}, nil
}
