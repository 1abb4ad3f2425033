package backend

import (
	"fmt"
	"sort"
	"sync"
)

// A Factory makes the backend that a registered name stands for, from an
// argument that says where its objects are (a directory, say), in the way
// a data source name says it to a database/sql driver. The empty argument
// asks for the backend's default place.
//
// Package shm calls the factory registered under NAME for:
//
//   - a key that names its backend, "NAME:/KEY" or "NAME:KEY", with arg ""
//     (posix:/app; package shm refuses file:app, since file keys are
//     paths);
//   - a key "NAME:/DIR/KEY", with arg "/DIR": everything between the ':'
//     and the key's last '/' (file:/run/app/data gives "/run/app"); such a
//     directory must be absolute;
//   - SHM_BACKEND=NAME, with arg "", and SHM_BACKEND=NAME:ARG, with ARG.
//
// The built-in backends take these arguments: posix, a directory of POSIX
// shared memory (default /dev/shm); file, the directory of its regions
// (default file.DefaultDir, whose per-user directory it creates when
// missing and checks is private); sysv and memfd take none.
//
// A Factory fails with an error matching fs.ErrInvalid when it does not
// take arg (package shm reports that as shm.ErrInvalidKey for a key and as
// shm.ErrInvalidOption for SHM_BACKEND); any other error says why the
// backend could not be made. The Backend it returns should have Name() ==
// the name it is registered under, since that is the key prefix package
// shm compares with WithBackend's.
type Factory func(arg string) (Backend, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]Factory{}
)

// Register makes a backend available under name, for keys ("NAME:/key"),
// SHM_BACKEND and the tools (shmctl --backend, shmbench -backend).
// A backend package calls it from its init function:
//
//	func init() {
//		backend.Register("tmpf", func(arg string) (backend.Backend, error) {
//			return tmpf.New(arg), nil
//		})
//	}
//
// and a program that wants the backend imports the package, if only for
// that: import _ "example.com/tmpf".
//
// A name is one or more lower-case ASCII letters, digits and '-',
// beginning with a letter (so never containing the ':' that ends a key's
// prefix or a '/'); "auto" is reserved (SHM_BACKEND=auto asks for the
// automatic choice). Register panics if name is not such a name, if it is
// already registered, or if f is nil, as sql.Register does. The built-in
// backend packages register "posix", "sysv", "memfd" and "file"; package
// shm imports them.
func Register(name string, f Factory) {
	if err := checkName(name); err != nil {
		panic("backend: Register: " + err.Error())
	}
	if f == nil {
		panic("backend: Register: nil factory for " + name)
	}
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[name]; dup {
		panic("backend: Register called twice for " + name)
	}
	registry[name] = f
}

// Lookup returns the factory registered under name, if any.
func Lookup(name string) (Factory, bool) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	f, ok := registry[name]
	return f, ok
}

// Names returns the registered names, sorted.
func Names() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// checkName tells why name cannot be registered, or returns nil.
func checkName(name string) error {
	if name == "" {
		return fmt.Errorf("empty name")
	}
	if name == "auto" {
		return fmt.Errorf(`the name "auto" is reserved`)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z':
		case i > 0 && ('0' <= c && c <= '9' || c == '-'):
		default:
			return fmt.Errorf("name %q: want lower-case letters, digits and '-', beginning with a letter", name)
		}
	}
	return nil
}
