package shm

import (
	"errors"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"github.com/shmgo/shm/backend"
	// The built-in backends, which register themselves (keys and
	// SHM_BACKEND can always name them), and the automatic choice.
	"github.com/shmgo/shm/internal/builtin"
)

// EnvBackend names the environment variable that sets the default backend
// of a process: NAME or NAME:ARG for a registered backend (see
// backend.Register), or "auto" (the same as unset). The built-in ones:
// "posix", "posix:/some/tmpfs", "sysv", "memfd", "file" (in FileDir), and
// "file:/some/dir".
//
// A backend is chosen, in order of precedence, by:
//
//  1. a key that names its backend, NAME:/KEY or NAME:/DIR/KEY for a
//     registered NAME: "posix:/name", "sysv:/name", "memfd:/name",
//     "file:/dir/name". The registered factory gets the absolute
//     directory between the ':' and the key's last '/' ("" when there is
//     none: "file:/name" is a file in FileDir) and the key is what follows
//     it. NAME:KEY, without a '/', is KEY in the default place too
//     ("sysv:name"), except for file, whose keys are paths ("file:name" is
//     ErrInvalidKey). A key NAME:/... whose NAME is not registered is
//     ErrInvalidKey; a ':' in a key that has no '/' after it is part of the
//     key ("a:b");
//  2. WithBackend;
//  3. the SHM_BACKEND environment variable, whose NAME must be registered
//     (ErrInvalidOption otherwise), with ARG for its factory;
//  4. automatic: Create takes POSIX when /dev/shm is a writable tmpfs with
//     room for the region, else memfd, else a file in FileDir; Open looks
//     for the key in the same order.
//
// A key that names a backend and a WithBackend that gives another one (by
// Name) is ErrInvalidOption. A factory that does not take the argument it
// is given (sysv:/dir/name) makes the key ErrInvalidKey and SHM_BACKEND
// ErrInvalidOption.
const EnvBackend = "SHM_BACKEND"

// FileDir returns the directory the automatic choice and SHM_BACKEND=file
// use for the file backend: $XDG_RUNTIME_DIR when set, else a directory of
// this user's own in the temporary directory (shmgo-UID, mode 0700), so that
// other users cannot plant objects under our keys. It is file.DefaultDir.
func FileDir() string { return builtin.FileDir() }

// registered lists the registered backends' names for a message.
func registered() string {
	return "registered: " + strings.Join(backend.Names(), ", ")
}

// splitKey separates a backend prefix from a key: for "NAME:/DIR/KEY" with
// NAME registered, the backend NAME's factory makes from "/DIR", and the
// rest of the key, "/KEY".
func splitKey(key string) (be backend.Backend, rest string, err error) {
	prefix, after, ok := strings.Cut(key, ":")
	if !ok || strings.Contains(prefix, "/") {
		return nil, key, nil
	}
	f, ok := backend.Lookup(prefix)
	if !ok {
		if strings.Contains(after, "/") {
			// Not an ordinary key either: those have no '/' after the first byte.
			return nil, key, because("unknown backend "+strconv.Quote(prefix)+" ("+registered()+")", nil, ErrInvalidKey)
		}
		return nil, key, nil
	}
	if err := builtin.CheckKey(prefix, after); err != nil {
		return nil, key, because(err.Error(), nil, ErrInvalidKey)
	}
	arg, rest := "", after
	if i := strings.LastIndexByte(after, '/'); i > 0 {
		if after[0] != '/' {
			return nil, key, because("a key with a directory is NAME:/absolute/dir/name", nil, ErrInvalidKey)
		}
		arg, rest = after[:i], after[i:]
	}
	be, err = f(arg)
	if err != nil {
		if errors.Is(err, fs.ErrInvalid) {
			return nil, key, because("", err, ErrInvalidKey)
		}
		return nil, key, err
	}
	return be, rest, nil
}

// backendsFor resolves the backends for key: one, or, when the choice is
// automatic, the candidates in order (size 0 means Open; for Create, only
// those that may hold size bytes now, and Create moves on to the next when
// one turns out full).
func backendsFor(key string, o *options, size int64) (name string, bes []backend.Backend, err error) {
	fromKey, rest, err := splitKey(key)
	if err != nil {
		return "", nil, err
	}
	name, err = parseKey(rest)
	if err != nil {
		return "", nil, err
	}
	switch {
	case fromKey != nil && o.backend != nil && o.backend.Name() != fromKey.Name():
		return "", nil, because("key names backend "+fromKey.Name()+", WithBackend gives "+o.backend.Name(), nil, ErrInvalidOption)
	case fromKey != nil:
		return name, []backend.Backend{fromKey}, nil
	case o.backend != nil:
		return name, []backend.Backend{o.backend}, nil
	}
	if env := os.Getenv(EnvBackend); env != "" && env != "auto" {
		n, arg, _ := strings.Cut(env, ":")
		f, ok := backend.Lookup(n)
		if !ok {
			return "", nil, because(EnvBackend+"="+env, because("unknown backend "+strconv.Quote(n)+" ("+registered()+")", nil, ErrInvalidOption))
		}
		be, err := f(arg)
		if err != nil {
			if errors.Is(err, fs.ErrInvalid) {
				return "", nil, because(EnvBackend+"="+env, err, ErrInvalidOption)
			}
			return "", nil, because(EnvBackend+"="+env, err)
		}
		return name, []backend.Backend{be}, nil
	}
	if size > 0 {
		bes, err := builtin.ForCreate(size)
		if err != nil {
			return "", nil, err
		}
		return name, bes, nil
	}
	return name, builtin.ForOpen(), nil
}
