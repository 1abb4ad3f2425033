// Command shmbench measures package shm: creating, attaching, locking,
// filling and handing turns through a region, on each backend.
//
//	go run ./cmd/shmbench [-backend posix|sysv|file|memfd|auto|all] [-workload NAME|all]
//	                      [-n N] [-size BYTES] [-procs P] [-goroutines G] [-chunk BYTES]
//
// It prints one line per workload and backend:
//
//	workload=<name> backend=<backend> size=<bytes> ns_per_op=<number> [key=value ...]
//
// -backend takes any registered backend (see backend.Register: a shmbench
// built with a third-party one measures it too); -backend auto passes no
// WithBackend: package shm chooses, as it does for a program that does not
// say.
//
// Workloads:
//
//   - create: Create, Unlink and Close of a region of size bytes, per cycle.
//   - attach: Open (timeout 0) and Close of an existing region, per cycle.
//   - lock: an uncontended Lock and Unlock in one goroutine.
//   - contend: procs processes (default 2), each doing n locked increments
//     of one counter in the region with goroutines goroutines (default 1);
//     ns per increment over the whole run. It prints total= and expected=
//     and fails when they differ, and threads= (the most OS threads any
//     worker process had).
//   - fill: copies size bytes into the region in 1 MiB chunks (-chunk),
//     repeatedly (after one untimed pass that faults the pages in); prints
//     GBps=.
//   - pingpong: two processes hand a turn back and forth through a word in
//     the region (a futex wait on the word, woken by the other side); ns
//     per round trip.
//   - notify: the same ping-pong through the library's Futex (Store, Wake
//     and Wait on a shm.Futex in the region, reached with shm.View); ns per
//     round trip (the mean), p50_ns= and p99_ns= (each round trip timed,
//     after 100 untimed ones).
//   - cond: a ping-pong through the region's condition: each process holds
//     the lock but while it sleeps in Lock.Wait, flips a turn and calls
//     Signal, as with a pthread_cond_t and a process-shared mutex; ns per
//     round trip, p50_ns= and p99_ns=.
//   - openwait: procs worker processes (default 1) wait in Open for a key
//     that does not exist yet, which the parent creates a random 1-30 ms
//     later, n rounds; ns from Create's return to Open's (the mean of every
//     worker's), p50_ns=, p99_ns= and max_ns=.
//   - many (not in "all"): n regions (default 10000) open at once in this
//     process; ns per Create, threads=, fds=, list_ms= (List of the
//     backend, which also reads every other region it holds), listed=; a
//     kernel limit stops it early with made= and stopped=.
//   - createwrite (not in "all"): Create of a region of size bytes plus one
//     full write of it in 1 MiB chunks, the cost of a fresh big region.
//
// -n 0 picks a count per workload. contend, pingpong, notify, cond and openwait re-execute shmbench
// as their worker processes (selected by an environment variable). Keys
// start with /t-bench-; every region is removed before shmbench exits.
//
// bench/run.sh runs shmbench next to a C program that does the same the
// way GEOPM does (shm_open, ftruncate, mmap, a process-shared pthread
// mutex) and prints the ratios.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/shmgo/shm/internal/reexec"
)

type config struct {
	backend    string
	workload   string
	n          int
	size       int
	procs      int
	goroutines int
	dir        string // file backend directory
	chunk      int    // fill, createwrite: bytes per copy
}

var workloads = []struct {
	name  string
	inAll bool
	run   func(c *config, env *benv) (result, error)
}{
	{"create", true, runCreate},
	{"attach", true, runAttach},
	{"lock", true, runLock},
	{"contend", true, runContend},
	{"fill", true, runFill},
	{"pingpong", true, runPingPong},
	{"notify", true, runNotify},
	{"cond", true, runCond},
	{"openwait", true, runOpenWait},
	{"many", false, runMany},
	{"createwrite", false, runCreateWrite},
}

// result is one measurement.
type result struct {
	nsPerOp float64
	extra   []string // "key=value"
}

func main() {
	reexec.Main() // a worker plays its role and exits (procs.go)
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is shmbench with arguments args; it returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	var c config
	flags := flag.NewFlagSet("shmbench", flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.StringVar(&c.backend, "backend", "posix", "backend: "+strings.Join(backendNames(), "|")+"|all")
	flags.StringVar(&c.workload, "workload", "all", "workload: create|attach|lock|contend|fill|pingpong|notify|cond|openwait|many|createwrite|all")
	flags.IntVar(&c.n, "n", 0, "iterations (0: a default per workload); contend: increments per process")
	flags.IntVar(&c.size, "size", 4096, "region data size in bytes")
	flags.IntVar(&c.procs, "procs", 2, "contend: worker processes")
	flags.IntVar(&c.goroutines, "goroutines", 1, "contend: goroutines per worker process")
	flags.IntVar(&c.chunk, "chunk", 1<<20, "fill, createwrite: bytes per copy")
	flags.StringVar(&c.dir, "dir", "", "file backend: directory for the regions (default: a new temporary directory)")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if flags.NArg() != 0 || c.size < 1 || c.procs < 1 || c.goroutines < 1 || c.n < 0 || c.chunk < 1 {
		flags.Usage()
		return 2
	}

	var bes []string
	if c.backend == "all" {
		bes = backendNames()
	} else {
		if !slices.Contains(backendNames(), c.backend) {
			fmt.Fprintf(stderr, "shmbench: unknown backend %q\n", c.backend)
			return 2
		}
		bes = []string{c.backend}
	}
	var wls []int
	for i, w := range workloads {
		if c.workload == w.name || c.workload == "all" && w.inAll {
			wls = append(wls, i)
		}
	}
	if len(wls) == 0 {
		fmt.Fprintf(stderr, "shmbench: unknown workload %q\n", c.workload)
		return 2
	}

	failed := false
	for _, bn := range bes {
		env, err := newBenv(bn, &c)
		if err != nil {
			fmt.Fprintf(stderr, "shmbench: backend %s: %v\n", bn, err)
			failed = true
			continue
		}
		for _, i := range wls {
			w := workloads[i]
			res, err := w.run(&c, env)
			if err != nil {
				fmt.Fprintf(stderr, "shmbench: workload=%s backend=%s: %v\n", w.name, bn, err)
				failed = true
				continue
			}
			line := fmt.Sprintf("workload=%s backend=%s size=%d ns_per_op=%.2f", w.name, bn, c.size, res.nsPerOp)
			if len(res.extra) > 0 {
				line += " " + strings.Join(res.extra, " ")
			}
			fmt.Fprintln(stdout, line)
		}
		env.close()
	}
	if failed {
		return 1
	}
	return 0
}

// perOp is the time per operation of ops operations that took d.
func perOp(d time.Duration, ops int) float64 {
	return float64(d.Nanoseconds()) / float64(ops)
}

func pick(n, def int) int {
	if n > 0 {
		return n
	}
	return def
}
