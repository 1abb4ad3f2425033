package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/internal/benchproc"
	"github.com/shmgo/shm/internal/sys"
)

// The waiting workloads, notify and cond: a ping-pong between the parent
// and one worker process through the library's waits (Futex.Wait and Wake;
// Lock.Wait and Signal), timed round trip by round trip, after warmRounds
// untimed ones. The C baseline (bench/cbaseline/cbench.c) does the same with
// raw futex(2) and a process-shared pthread_cond_t.

// warmRounds round trips precede the timed ones (the C baseline's too).
const warmRounds = 100

// waitBlock is what notify and cond share, at benchproc.OffWait in the
// region.
type waitBlock struct {
	// Turn is notify's word: 0 is the parent's turn, 1 the worker's.
	Turn shm.Futex
	// CondTurn is cond's, guarded by the region's lock.
	CondTurn uint32
}

// startPair creates the region for workload w and starts its worker; it
// returns once the worker has attached. done closes the region and waits
// for the worker.
func startPair(c *config, e *benv, w string, n int) (r *shm.Region, wb *waitBlock, ws *workers, err error) {
	if r, ws, err = withWorkers(c, e, w, 1, n+warmRounds); err != nil {
		return nil, nil, nil, err
	}
	fail := func(err error) (*shm.Region, *waitBlock, *workers, error) {
		ws.kill()
		r.Unlink()
		r.Close()
		return nil, nil, nil, err
	}
	if wb, err = shm.View[waitBlock](r, benchproc.OffWait); err != nil {
		return fail(err)
	}
	if err := sys.WaitAtLeast(benchproc.Word(r.Bytes(), benchproc.OffReady), 1, ws.check); err != nil {
		return fail(err)
	}
	return r, wb, ws, nil
}

// latencies is the result of n timed round trips of d each: ns per round
// trip (the mean), p50_ns and p99_ns.
func latencies(d []time.Duration) result {
	var total time.Duration
	for _, x := range d {
		total += x
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return result{nsPerOp: perOp(total, len(d)), extra: []string{
		fmt.Sprintf("p50_ns=%d", percentile(s, 50).Nanoseconds()),
		fmt.Sprintf("p99_ns=%d", percentile(s, 99).Nanoseconds()),
	}}
}

// percentile is the nearest-rank p-th percentile of sorted s.
func percentile(s []time.Duration, p int) time.Duration {
	i := (len(s)*p + 99) / 100 // ceil(len*p/100)
	return s[max(i, 1)-1]
}

// finish ends a pair workload: it waits for the worker, then unlinks and
// closes the region.
func finish(r *shm.Region, ws *workers, res result, err error) (result, error) {
	if err != nil {
		ws.kill()
	} else if _, werr := ws.wait(); werr != nil {
		err = werr
	}
	r.Unlink()
	r.Close()
	if err != nil {
		return result{}, err
	}
	return res, nil
}

// runNotify: the parent sets Turn to 1 and wakes the worker, which sets it
// back to 0 and wakes the parent; each side sleeps in Futex.Wait while the
// word holds the other's value.
func runNotify(c *config, e *benv) (result, error) {
	n := pick(c.n, 20000)
	r, wb, ws, err := startPair(c, e, "notify", n)
	if err != nil {
		return result{}, err
	}
	d := make([]time.Duration, n)
	for i := -warmRounds; i < n && err == nil; i++ {
		t0 := time.Now()
		wb.Turn.Store(1)
		wb.Turn.Wake(1)
		for wb.Turn.Load() == 1 && err == nil {
			if werr := wb.Turn.Wait(ws.exited, 1); werr != nil && wb.Turn.Load() == 1 {
				err = errors.Join(werr, ws.check())
			}
		}
		if i >= 0 {
			d[i] = time.Since(t0)
		}
	}
	if err != nil {
		return finish(r, ws, result{}, err)
	}
	return finish(r, ws, latencies(d), nil)
}

func workNotify(r *shm.Region, n int) error {
	wb, err := shm.View[waitBlock](r, benchproc.OffWait)
	if err != nil {
		return err
	}
	ctx, stop := parentContext()
	defer stop()
	benchproc.Ready(r.Bytes())
	for range n {
		for wb.Turn.Load() == 0 {
			if err := wb.Turn.Wait(ctx, 0); err != nil && wb.Turn.Load() == 0 {
				return err
			}
		}
		wb.Turn.Store(0)
		wb.Turn.Wake(1)
	}
	return nil
}

// runCond: the parent and the worker each hold the region's lock but while
// they wait in Lock.Wait; the parent sets CondTurn to 1 and signals, the
// worker sets it back to 0 and signals (as a pthread_cond_t with a
// process-shared mutex is used).
func runCond(c *config, e *benv) (result, error) {
	n := pick(c.n, 20000)
	r, wb, ws, err := startPair(c, e, "cond", n)
	if err != nil {
		return result{}, err
	}
	d := make([]time.Duration, n)
	l, err := r.Lock()
	if err != nil {
		return finish(r, ws, result{}, err)
	}
	for i := -warmRounds; i < n && err == nil; i++ {
		t0 := time.Now()
		wb.CondTurn = 1
		if err = r.Signal(); err != nil {
			break
		}
		for wb.CondTurn == 1 && err == nil {
			if werr := l.Wait(ws.exited); werr != nil && (wb.CondTurn == 1 || !errors.Is(werr, context.Canceled)) {
				err = errors.Join(werr, ws.check())
			}
		}
		if i >= 0 {
			d[i] = time.Since(t0)
		}
	}
	if uerr := l.Unlock(); err == nil {
		err = uerr
	}
	if err != nil {
		return finish(r, ws, result{}, err)
	}
	return finish(r, ws, latencies(d), nil)
}

func workCond(r *shm.Region, n int) error {
	wb, err := shm.View[waitBlock](r, benchproc.OffWait)
	if err != nil {
		return err
	}
	ctx, stop := parentContext()
	defer stop()
	benchproc.Ready(r.Bytes())
	l, err := r.Lock()
	if err != nil {
		return err
	}
	defer l.Unlock()
	for range n {
		for wb.CondTurn == 0 {
			if err := l.Wait(ctx); err != nil && (wb.CondTurn == 0 || !errors.Is(err, context.Canceled)) {
				return err
			}
		}
		wb.CondTurn = 0
		if err := r.Signal(); err != nil {
			return err
		}
	}
	return nil
}

// parentContext ends when the parent has gone away (checked every second).
func parentContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if benchproc.ParentGone() != nil {
					cancel()
					return
				}
			}
		}
	}()
	return ctx, cancel
}
