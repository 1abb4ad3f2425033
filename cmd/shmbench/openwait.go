package main

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/internal/benchproc"
	"github.com/shmgo/shm/internal/sys"
)

// The openwait workload: how soon users waiting in Open for a key that does
// not exist yet hear that it was created. Each of -procs worker processes
// (default 1) waits in shm.Open for the round's key; the parent, a random
// 1-30 ms after they all began to wait (so that a polling Open is caught at
// any point of its backoff), creates it. A round's latency is from Create's
// return in the parent to Open's return in a worker, on CLOCK_MONOTONIC,
// which every process shares.
//
// The control region the parent and workers share:
const (
	owRound   = 0  // futex: the round the workers may begin (1-based)
	owWaiting = 4  // futex: workers that began waiting, all rounds together
	owDone    = 8  // futex: workers whose Open returned, all rounds together
	owIndex   = 12 // the next worker's index
	owTimes   = 64 // each worker's Open return, in ns, per worker
)

func runOpenWait(c *config, e *benv) (result, error) {
	n := pick(c.n, 100)
	w := max(c.procs, 1)
	key := e.key("openwait")
	ctl, err := shm.Create(key, owTimes+8*w, e.opt())
	if err != nil {
		return result{}, err
	}
	defer ctl.Close()
	defer ctl.Unlink()
	data := ctl.Bytes()
	ws, err := startWorkers(c, e, "openwait", key, w, n)
	if err != nil {
		return result{}, err
	}
	lat := make([]time.Duration, 0, n*w)
	for i := 1; i <= n && err == nil; i++ {
		atomic.StoreUint32(benchproc.Word(data, owRound), uint32(i))
		sys.FutexWake(benchproc.Word(data, owRound), 1<<30)
		if err = sys.WaitAtLeast(benchproc.Word(data, owWaiting), uint32(i*w), ws.check); err != nil {
			break
		}
		time.Sleep(time.Millisecond + rand.N(29*time.Millisecond))
		var r *shm.Region
		r, err = shm.Create(roundKey(key, i), 4096, e.opt())
		if err != nil {
			break
		}
		t0 := monotonic()
		err = sys.WaitAtLeast(benchproc.Word(data, owDone), uint32(i*w), ws.check)
		for j := range w {
			t1 := atomic.LoadInt64((*int64)(unsafe.Pointer(&data[owTimes+8*j])))
			lat = append(lat, time.Duration(max(t1-t0, 0)))
		}
		r.Unlink()
		r.Close()
	}
	if err != nil {
		ws.kill()
		return result{}, err
	}
	if _, err := ws.wait(); err != nil {
		return result{}, err
	}
	res := latencies(lat)
	s := slices.Clone(lat)
	slices.Sort(s)
	res.extra = append(res.extra, fmt.Sprintf("max_ns=%d", s[len(s)-1].Nanoseconds()), fmt.Sprintf("waiters=%d", w))
	return res, nil
}

// roundKey is the key that round i creates.
func roundKey(key string, i int) string { return key + "-r" + strconv.Itoa(i) }

// monotonic is CLOCK_MONOTONIC in ns: the same clock in every process.
func monotonic() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// workOpenWait is a worker of openwait, on the control region key, for n
// rounds.
func workOpenWait(key string, n int, opt shm.Option) error {
	ctl, err := shm.Open(key, 10*time.Second, opt)
	if err != nil {
		return err
	}
	defer ctl.Close()
	data := ctl.Bytes()
	me := int(atomic.AddUint32(benchproc.Word(data, owIndex), 1) - 1)
	if owTimes+8*(me+1) > len(data) {
		return fmt.Errorf("worker %d of a control region for %d", me, (len(data)-owTimes)/8)
	}
	for i := 1; i <= n; i++ {
		if err := sys.WaitAtLeast(benchproc.Word(data, owRound), uint32(i), benchproc.ParentGone); err != nil {
			return err
		}
		atomic.AddUint32(benchproc.Word(data, owWaiting), 1)
		sys.FutexWake(benchproc.Word(data, owWaiting), 1<<30)
		r, err := shm.Open(roundKey(key, i), 10*time.Second, opt)
		t1 := monotonic()
		if err != nil {
			return err
		}
		atomic.StoreInt64((*int64)(unsafe.Pointer(&data[owTimes+8*me])), t1)
		r.Close()
		atomic.AddUint32(benchproc.Word(data, owDone), 1)
		sys.FutexWake(benchproc.Word(data, owDone), 1<<30)
	}
	return nil
}
