package shm

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/posix"
	"github.com/shmgo/shm/backend/sysv"
)

// chooseRun makes the keys of these tests this run's own: the PID keeps two
// copies of the suite running at once apart, and the random part keeps a
// later run that got the PID of a killed one off the objects it left (SysV
// segments and /dev/shm files outlive their process).
var chooseRun = fmt.Sprintf("%d-%08x", os.Getpid(), rand.Uint32())

// chooseName is the name, without a slash or prefix, of this run's key tag.
func chooseName(tag string) string { return "t-choose-" + chooseRun + "-" + tag }

// removeOnCleanup unlinks and closes r when the test ends, if the test has
// not: a failing test leaves nothing behind.
func removeOnCleanup(t *testing.T, r *Region) {
	t.Cleanup(func() {
		r.Unlink()
		r.Close()
	})
}

func TestKeyPrefixChoosesBackend(t *testing.T) {
	dir := t.TempDir()
	p, s, m, f := chooseName("p"), chooseName("s"), chooseName("m"), chooseName("f")
	cases := []struct{ key, backend, open string }{
		{"posix:/" + p, "posix", "/" + p},
		{"sysv:/" + s, "sysv", "sysv:" + s},
		{"memfd:/" + m, "memfd", "memfd:/" + m},
		{"file:" + dir + "/" + f, "file", "file:" + dir + "/" + f},
	}
	for _, c := range cases {
		r, err := Create(c.key, 64)
		if err != nil {
			t.Fatalf("Create %s: %v", c.key, err)
		}
		removeOnCleanup(t, r)
		if r.Backend() != c.backend || r.Key() != c.key {
			t.Errorf("Create %s: backend %q key %q", c.key, r.Backend(), r.Key())
		}
		u, err := Open(c.open, time.Second)
		if err != nil {
			t.Fatalf("Open %s: %v", c.open, err)
		}
		if u.Backend() != c.backend {
			t.Errorf("Open %s: backend %q, want %q", c.open, u.Backend(), c.backend)
		}
		u.Close()
		if err := r.Unlink(); err != nil {
			t.Error(err)
		}
		r.Close()
	}
	if _, err := os.Stat(dir + "/" + f); !os.IsNotExist(err) {
		t.Errorf("file region left after Unlink: %v", err)
	}
}

func TestKeyPrefixConflicts(t *testing.T) {
	_, err := Create("sysv:/"+chooseName("x"), 64, WithBackend(posix.New()))
	if !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("key naming sysv with WithBackend(posix): %v, want ErrInvalidOption", err)
	}
	_, err = Create("file:relative/x", 64)
	if !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("relative file key: %v, want ErrInvalidKey", err)
	}
	// A prefix that names no backend is part of an ordinary key.
	r, err := Create("/"+chooseName("a:b"), 64, WithBackend(posix.New()))
	if err != nil {
		t.Fatal(err)
	}
	removeOnCleanup(t, r)
	r.Unlink()
	r.Close()
	// The same backend in both places is fine.
	r, err = Create("sysv:/"+chooseName("y"), 64, WithBackend(sysv.New()))
	if err != nil {
		t.Fatal(err)
	}
	removeOnCleanup(t, r)
	r.Unlink()
	r.Close()
}

func TestEnvBackend(t *testing.T) {
	t.Setenv(EnvBackend, "memfd")
	key := "/" + chooseName("env")
	r, err := Create(key, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Backend() != "memfd" {
		t.Fatalf("SHM_BACKEND=memfd gave %q", r.Backend())
	}
	u, err := Open(key, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	u.Close()

	dir := t.TempDir()
	t.Setenv(EnvBackend, "file:"+dir)
	fname := chooseName("envf")
	f, err := Create("/"+fname, 64)
	if err != nil {
		t.Fatal(err)
	}
	removeOnCleanup(t, f)
	if _, err := os.Stat(dir + "/" + fname); err != nil || f.Backend() != "file" {
		t.Fatalf("SHM_BACKEND=file:%s: backend %q, stat %v", dir, f.Backend(), err)
	}
	f.Unlink()
	f.Close()

	t.Setenv(EnvBackend, "nonsense")
	if _, err := Create("/"+chooseName("bad"), 64); !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("SHM_BACKEND=nonsense: %v, want ErrInvalidOption", err)
	}
}

// Open without a backend finds a key wherever the automatic order finds it.
func TestAutoOpenFindsAnyBackend(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("XDG_RUNTIME_DIR", dir)
	for _, key := range []string{"memfd:/" + chooseName("am"), "file:" + dir + "/" + chooseName("af"), "posix:/" + chooseName("ap")} {
		r, err := Create(key, 64)
		if err != nil {
			t.Fatal(err)
		}
		removeOnCleanup(t, r)
		_, rest, _ := splitKey(key)
		u, err := Open(rest, time.Second)
		if err != nil {
			t.Fatalf("Open %s (created as %s): %v", rest, key, err)
		}
		if u.Backend() != r.Backend() {
			t.Errorf("Open %s found backend %s, created on %s", rest, u.Backend(), r.Backend())
		}
		u.Close()
		r.Unlink()
		r.Close()
	}
}

func TestFileDirIsPrivate(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "")
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	t.Setenv(EnvBackend, "file")
	name := chooseName("private")
	r, err := Create("/"+name, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer r.Unlink()
	dir := FileDir()
	st, err := os.Stat(dir)
	if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
		t.Fatalf("FileDir %s: %v %v, want a 0700 directory", dir, st.Mode(), err)
	}
	if _, err := os.Stat(dir + "/" + name); err != nil {
		t.Fatal(err)
	}
	// A directory that others can write is refused.
	r.Unlink()
	os.Chmod(dir, 0o777)
	if _, err := Create("/"+chooseName("private2"), 64); err == nil || !strings.Contains(err.Error(), "private") {
		t.Fatalf("Create in a world-writable FileDir: %v", err)
	}
	os.Chmod(dir, 0o700)
}

// A key or SHM_BACKEND names any registered backend, with the directory its
// factory takes; a name that is not registered, or an argument a backend
// does not take, is refused with the registered names.
func TestKeyNamesRegisteredBackend(t *testing.T) {
	t.Setenv(EnvBackend, "")
	pdir, err := os.MkdirTemp(posix.DefaultDir, "t-choose-dir-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(pdir)
	n := chooseName("pdir")
	key := "posix:" + pdir + "/" + n
	r, err := Create(key, 64)
	if err != nil {
		t.Fatal(err)
	}
	removeOnCleanup(t, r)
	if _, err := os.Stat(pdir + "/" + n); err != nil || r.Backend() != "posix" {
		t.Fatalf("Create %s: backend %q, %v", key, r.Backend(), err)
	}
	t.Setenv(EnvBackend, "posix:"+pdir)
	u, err := Open("/"+n, time.Second)
	if err != nil {
		t.Fatalf("SHM_BACKEND=posix:%s: %v", pdir, err)
	}
	u.Close()
	r.Unlink()

	// file:/name is a file in FileDir.
	t.Setenv(EnvBackend, "")
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	f, err := Create("file:/"+n, 64)
	if err != nil {
		t.Fatal(err)
	}
	removeOnCleanup(t, f)
	if _, err := os.Stat(FileDir() + "/" + n); err != nil {
		t.Errorf("file:/%s is not in FileDir: %v", n, err)
	}
	f.Unlink()

	names := strings.Join(backend.Names(), ", ")
	for _, c := range []struct {
		key, env string
		want     error
		msg      string
	}{
		{"nosuch:/" + n, "", ErrInvalidKey, names},
		{"sysv:/dir/" + n, "", ErrInvalidKey, "no argument"},
		{"memfd:/dir/" + n, "", ErrInvalidKey, "no argument"},
		{"posix:dir/" + n, "", ErrInvalidKey, "absolute"},
		{"file:" + n, "", ErrInvalidKey, "file:/absolute/dir/name"},
		{"/" + n, "nosuch", ErrInvalidOption, names},
		{"/" + n, "nosuch:/dir", ErrInvalidOption, names},
		{"/" + n, "sysv:/dir", ErrInvalidOption, "no argument"},
	} {
		t.Setenv(EnvBackend, c.env)
		_, err := Create(c.key, 64)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("Create %s with %s=%s: %v, want %v saying %q", c.key, EnvBackend, c.env, err, c.want, c.msg)
		}
	}
}
