package main

import (
	"fmt"
	"os"
	"sort"
	"sync/atomic"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/file"
	"github.com/shmgo/shm/backend/memfd"
	"github.com/shmgo/shm/backend/posix"
	"github.com/shmgo/shm/backend/sysv"
)

// backends makes each backend by name. dir is the file backend's directory.
var backends = map[string]func(dir string) backend.Backend{
	"posix": func(string) backend.Backend { return posix.New() },
	"sysv":  func(string) backend.Backend { return sysv.New() },
	"file":  func(dir string) backend.Backend { return file.New(dir) },
	"memfd": func(string) backend.Backend { return memfd.New() },
	// auto: no WithBackend, package shm's own choice (the key's prefix,
	// SHM_BACKEND, or POSIX when /dev/shm has room).
	"auto": func(string) backend.Backend { return nil },
}

// backendOrder is the order of -backend all.
var backendOrder = []string{"posix", "sysv", "file", "memfd", "auto"}

func backendNames() []string {
	var names []string
	for _, n := range backendOrder {
		if _, ok := backends[n]; ok {
			names = append(names, n)
		}
	}
	var rest []string
	for n := range backends {
		found := false
		for _, m := range names {
			found = found || m == n
		}
		if !found {
			rest = append(rest, n)
		}
	}
	sort.Strings(rest)
	return append(names, rest...)
}

// benv is one backend, ready to benchmark.
type benv struct {
	name   string
	be     backend.Backend
	dir    string // the file backend's directory
	rmDir  bool   // we made dir
	keySeq atomic.Int64
}

func newBenv(name string, c *config) (*benv, error) {
	mk, ok := backends[name]
	if !ok {
		return nil, fmt.Errorf("unknown backend")
	}
	e := &benv{name: name, dir: c.dir}
	if name == "file" && e.dir == "" {
		d, err := os.MkdirTemp("", "t-bench-file-")
		if err != nil {
			return nil, err
		}
		e.dir, e.rmDir = d, true
	}
	e.be = mk(e.dir)
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
