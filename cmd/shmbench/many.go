package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/shmgo/shm"
)

// The many workload: n regions (default 10000) of size bytes held open at
// once by this process, as a node controller with many applications holds
// them: ns per Create, the OS threads and descriptors of the process with
// all of them open, and how long List takes to see them. A kernel limit
// (SysV's shmmni, the descriptor limit) stops the run early: it prints
// made= and stopped= (the error) then.
func runMany(c *config, e *benv) (result, error) {
	n := pick(c.n, 10000)
	fds0 := fdCount()
	regions := make([]*shm.Region, 0, n)
	defer func() {
		for _, r := range regions {
			r.Unlink()
			r.Close()
		}
	}()
	var stopped error
	t0 := time.Now()
	for i := range n {
		r, err := shm.Create(e.key(fmt.Sprint("many-", i)), c.size, e.opt())
		if err != nil {
			stopped = err
			break
		}
		regions = append(regions, r)
	}
	d := time.Since(t0)
	if len(regions) == 0 {
		return result{}, stopped
	}
	threads, fds := threadCount(), fdCount()-fds0
	var listed int
	var listErr error
	var lt time.Duration
	if c.backend != "auto" && e.be != nil {
		t1 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		infos, err := shm.List(ctx, shm.ListBackends(e.be))
		cancel()
		lt = time.Since(t1)
		listErr = err
		prefix := fmt.Sprintf("/t-bench-%d-", os.Getpid())
		for _, in := range infos {
			if strings.HasPrefix(in.Key, prefix) {
				listed++
			}
		}
	}
	res := result{nsPerOp: perOp(d, len(regions)), extra: []string{
		fmt.Sprintf("made=%d", len(regions)),
		fmt.Sprintf("threads=%d", threads),
		fmt.Sprintf("fds=%d", fds),
		fmt.Sprintf("list_ms=%.1f", float64(lt.Microseconds())/1000),
		fmt.Sprintf("listed=%d", listed),
	}}
	if listErr != nil {
		res.extra = append(res.extra, "list_error="+strings.ReplaceAll(listErr.Error(), " ", "_"))
	}
	if stopped != nil {
		res.extra = append(res.extra, "stopped="+strings.ReplaceAll(stopped.Error(), " ", "_"))
	}
	return res, nil
}

// fdCount is the number of descriptors this process has open.
func fdCount() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}
