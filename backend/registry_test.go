package backend_test

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/posix"
	_ "github.com/shmgo/shm/internal/tposix" // a third-party backend, registered as "tposix"
)

// regRun makes this run's keys its own (see the root package's chooseRun).
var regRun = fmt.Sprintf("%d-%08x", os.Getpid(), rand.Uint32())

func regName(tag string) string { return "t-registry-" + regRun + "-" + tag }

func TestNames(t *testing.T) {
	names := backend.Names()
	if !slices.IsSorted(names) {
		t.Errorf("Names() = %q, not sorted", names)
	}
	for _, n := range []string{"file", "memfd", "posix", "sysv", "tposix"} {
		f, ok := backend.Lookup(n)
		if !ok || f == nil || !slices.Contains(names, n) {
			t.Errorf("%s: Lookup %v %v, Names %q", n, f != nil, ok, names)
		}
	}
	if f, ok := backend.Lookup("nosuch"); ok || f != nil {
		t.Errorf("Lookup(nosuch) = %v, %v", f != nil, ok)
	}
}

func TestFactoryArgs(t *testing.T) {
	for _, c := range []struct {
		name, arg string
		invalid   bool
	}{
		{"posix", "", false},
		{"posix", "/run/elsewhere", false},
		{"file", "/run/elsewhere", false},
		{"sysv", "", false},
		{"sysv", "/x", true},
		{"memfd", "", false},
		{"memfd", "x", true},
	} {
		f, _ := backend.Lookup(c.name)
		be, err := f(c.arg)
		switch {
		case c.invalid && !errors.Is(err, fs.ErrInvalid):
			t.Errorf("%s(%q): %v, want fs.ErrInvalid", c.name, c.arg, err)
		case !c.invalid && (err != nil || be.Name() != c.name):
			t.Errorf("%s(%q): %v, %v", c.name, c.arg, be, err)
		}
	}
}

func TestFileFactoryDefaultDir(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "")
	t.Setenv("TMPDIR", t.TempDir())
	f, _ := backend.Lookup("file")
	if _, err := f(""); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(shm.FileDir())
	if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
		t.Fatalf("file(\"\") made %s: %v, %v; want a 0700 directory", shm.FileDir(), st, err)
	}
	os.Chmod(shm.FileDir(), 0o755)
	if _, err := f(""); err == nil || !strings.Contains(err.Error(), "private") {
		t.Fatalf("file(\"\") with a 0755 default directory: %v", err)
	}
}

var registered atomic.Int64

func TestRegisterPanics(t *testing.T) {
	f := func(string) (backend.Backend, error) { return nil, nil }
	for _, c := range []struct {
		name string
		f    backend.Factory
	}{
		{"", f},
		{"auto", f},
		{"Posix", f},
		{"a:b", f},
		{"a/b", f},
		{"a b", f},
		{"-a", f},
		{"1a", f},
		{"t-registry-nil", nil},
		{"posix", f},  // registered by package posix
		{"tposix", f}, // registered by this test's init
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Register(%q, nil=%v) did not panic", c.name, c.f == nil)
				}
			}()
			backend.Register(c.name, c.f)
		}()
	}
	// A good name registers once (a name of this run's: -count=N runs
	// this test again in the same process, where the registry remembers).
	name := fmt.Sprintf("t-registry-%d", registered.Add(1))
	backend.Register(name, f)
	if _, ok := backend.Lookup(name); !ok {
		t.Errorf("%s not registered", name)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Errorf("a second Register(%q) did not panic", name)
			}
		}()
		backend.Register(name, f)
	}()
}

// TestThirdPartyBackend uses tposix as the built-in ones are used: in a
// key, in SHM_BACKEND, with and without a directory.
func TestThirdPartyBackend(t *testing.T) {
	t.Setenv(shm.EnvBackend, "")
	name := regName("k")
	key := "tposix:/" + name
	r, err := shm.Create(key, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer r.Unlink()
	if r.Backend() != "tposix" || r.Key() != key {
		t.Errorf("Create %s: backend %q, key %q", key, r.Backend(), r.Key())
	}
	if _, err := os.Stat(filepath.Join(posix.DefaultDir, name)); err != nil {
		t.Error(err)
	}
	copy(r.Bytes(), "hello")
	// The same object, through the key, and through posix.
	for _, k := range []string{key, "tposix:" + name, "posix:/" + name} {
		u, err := shm.Open(k, time.Second)
		if err != nil {
			t.Fatalf("Open %s: %v", k, err)
		}
		if got := string(u.Bytes()[:5]); got != "hello" {
			t.Errorf("Open %s: data %q", k, got)
		}
		u.Close()
	}
	if in, err := shm.Stat(key); err != nil || in.Backend != "tposix" || in.Size != 64 {
		t.Errorf("Stat %s: %+v, %v", key, in, err)
	}
	// A key and WithBackend that disagree.
	if _, err := shm.Open(key, 0, shm.WithBackend(posix.New())); !errors.Is(err, shm.ErrInvalidOption) {
		t.Errorf("Open %s with WithBackend(posix): %v, want ErrInvalidOption", key, err)
	}

	// SHM_BACKEND=tposix.
	t.Setenv(shm.EnvBackend, "tposix")
	u, err := shm.Open("/"+name, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if u.Backend() != "tposix" {
		t.Errorf("SHM_BACKEND=tposix: backend %q", u.Backend())
	}
	u.Close()

	// A directory in the key and in SHM_BACKEND.
	dir, err := os.MkdirTemp(posix.DefaultDir, "t-registry-dir-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	t.Setenv(shm.EnvBackend, "tposix:"+dir)
	d, err := shm.Create("/"+name, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	defer d.Unlink()
	if _, err := os.Stat(filepath.Join(dir, name)); err != nil || d.Backend() != "tposix" {
		t.Errorf("SHM_BACKEND=tposix:%s: backend %q, %v", dir, d.Backend(), err)
	}
	t.Setenv(shm.EnvBackend, "")
	dkey := "tposix:" + dir + "/" + name
	u, err = shm.Open(dkey, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	u.Close()
	if err := d.Unlink(); err != nil {
		t.Error(err)
	}
	if _, err := shm.Open(dkey, 0); !errors.Is(err, shm.ErrNotExist) {
		t.Errorf("Open %s after Unlink: %v", dkey, err)
	}
}

// A name that is not registered is refused, with the names that are.
func TestUnregisteredName(t *testing.T) {
	t.Setenv(shm.EnvBackend, "")
	_, err := shm.Create("tmpf:/"+regName("u"), 64)
	if !errors.Is(err, shm.ErrInvalidKey) || !strings.Contains(err.Error(), "posix, sysv, t") {
		t.Errorf("key tmpf:/...: %v, want ErrInvalidKey listing the registered names", err)
	}
	t.Setenv(shm.EnvBackend, "tmpf")
	_, err = shm.Create("/"+regName("u"), 64)
	if !errors.Is(err, shm.ErrInvalidOption) || !strings.Contains(err.Error(), "tposix") {
		t.Errorf("SHM_BACKEND=tmpf: %v, want ErrInvalidOption listing the registered names", err)
	}
}
