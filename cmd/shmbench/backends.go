package main

import (
	"fmt"
	"os"
	"slices"
	"sync/atomic"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
)

// builtinOrder is the order of -backend all for the built-in backends; any
// other registered backend follows, by name, then auto: no WithBackend,
// package shm's own choice (the key's prefix, SHM_BACKEND, or POSIX when
// /dev/shm has room).
var builtinOrder = []string{"posix", "sysv", "file", "memfd"}

// backendNames returns the names -backend takes, in the order of -backend
// all: the registered backends (backend.Names) and auto.
func backendNames() []string {
	names := backend.Names()
	var out []string
	for _, n := range builtinOrder {
		if slices.Contains(names, n) {
			out = append(out, n)
		}
	}
	for _, n := range names {
		if !slices.Contains(builtinOrder, n) {
			out = append(out, n)
		}
	}
	return append(out, "auto")
}

// newBackend makes the backend called name from its factory's argument
// (for file, its directory), or nil for auto.
func newBackend(name, arg string) (backend.Backend, error) {
	if name == "auto" {
		return nil, nil
	}
	f, ok := backend.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("unknown backend")
	}
	return f(arg)
}

// benv is one backend, ready to benchmark.
type benv struct {
	name   string
	be     backend.Backend
	dir    string // the file backend's directory: its factory's argument
	rmDir  bool   // we made dir
	keySeq atomic.Int64
}

func newBenv(name string, c *config) (*benv, error) {
	e := &benv{name: name}
	if name == "file" {
		// Not the default directory, which the benchmark would litter.
		e.dir = c.dir
		if e.dir == "" {
			d, err := os.MkdirTemp("", "t-bench-file-")
			if err != nil {
				return nil, err
			}
			e.dir, e.rmDir = d, true
		}
	}
	be, err := newBackend(name, e.dir)
	if err != nil {
		e.close()
		return nil, err
	}
	e.be = be
	return e, nil
}

func (e *benv) opt() shm.Option {
	if e.be == nil {
		return nil // auto
	}
	return shm.WithBackend(e.be)
}

// key returns a fresh key for workload w.
func (e *benv) key(w string) string {
	return fmt.Sprintf("/t-bench-%d-%s-%s-%d", os.Getpid(), e.name, w, e.keySeq.Add(1))
}

// remove unlinks key's object if it is still there (after a failure).
func (e *benv) remove(key string) {
	_ = shm.Remove(key, e.opt())
}

func (e *benv) close() {
	if e.rmDir {
		os.RemoveAll(e.dir)
	}
}
