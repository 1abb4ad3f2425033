package benchproc_test

import (
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/internal/benchproc"
)

func region(t *testing.T, what string) *shm.Region {
	t.Helper()
	r, err := shm.Create(fmt.Sprintf("/t-benchproc-%d-%s", os.Getpid(), what), benchproc.CtlSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Unlink(); r.Close() })
	return r
}

// Both sides of each workload, the workers as goroutines with Regions of
// their own: the parent's clock runs from the workers' start to their end,
// and every increment counts.
func TestBothSides(t *testing.T) {
	t.Run("contend", func(t *testing.T) {
		r := region(t, "contend")
		const procs, n = 3, 1000
		errs := make(chan error, procs)
		for range procs {
			u, err := shm.Open(r.Key(), 0)
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			go func() {
				_, err := benchproc.WorkContend(u, n, 2)
				errs <- err
			}()
		}
		var started, stopped bool
		err := benchproc.Contend(r.Bytes(), procs, nil, func() {
			if atomic.LoadUint32(benchproc.Word(r.Bytes(), benchproc.OffReady)) != procs {
				t.Error("the clock started before every worker attached")
			}
			started = true
		}, func() {
			if got := atomic.LoadUint64(benchproc.Counter(r.Bytes())); got != procs*n {
				t.Errorf("the clock stopped at counter %d, want %d", got, procs*n)
			}
			stopped = true
		})
		if err != nil || !started || !stopped {
			t.Fatalf("Contend: %v (started %v, stopped %v)", err, started, stopped)
		}
		for range procs {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Run("pingpong", func(t *testing.T) {
		r := region(t, "pingpong")
		const n = 500
		done := make(chan error, 1)
		go func() { done <- benchproc.WorkPingPong(r.Bytes(), n) }()
		stopped := false
		if err := benchproc.PingPong(r.Bytes(), n, nil, func() {}, func() { stopped = true }); err != nil || !stopped {
			t.Fatalf("PingPong: %v (stopped %v)", err, stopped)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if turn := atomic.LoadUint32(benchproc.Word(r.Bytes(), benchproc.OffTurn)); turn != 0 {
			t.Fatalf("turn %d after the last round trip, want the parent's (0)", turn)
		}
	})
}
