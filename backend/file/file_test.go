package file_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/file"
	"github.com/shmgo/shm/internal/dirobj"
	"github.com/shmgo/shm/internal/reexec"
)

// Cross-process tests re-execute the test binary (internal/reexec); TestMain
// plays the child's role instead of running the tests. A child's arguments
// are the backend's directory and the object's name.
func TestMain(m *testing.M) {
	for _, role := range []string{"probe", "race", "user", "modes", "exlock", "lease", "inuse"} {
		reexec.Register(role, func(c *reexec.Child) error { return runRole(c, role, c.Arg(0), c.Arg(1)) })
	}
	reexec.Main()
	os.Exit(m.Run())
}

// runRole is what a child process does. It talks to the parent with lines on
// stdout and stdin.
func runRole(c *reexec.Child, role, dir, name string) error {
	hear := c.Hear
	b := file.New(dir)
	switch role {
	case "probe":
		// Say how the file dir/name is locked, seen from another process.
		ex, sh, err := probe(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		inUse, err := b.InUse(name)
		if err != nil {
			return err
		}
		c.Say("ex=%v sh=%v inuse=%v", ex, sh, inUse)
		return nil
	case "race":
		// Create, wait for the parent's go, then Publish.
		p, err := b.Create(name, 4096, 0o600)
		if err != nil {
			return err
		}
		defer p.Close()
		c.Say("created")
		if hear() != "go" {
			return errors.New("no go")
		}
		switch err := p.Publish(); {
		case err == nil:
			c.Say("won")
		case errors.Is(err, fs.ErrExist):
			c.Say("lost")
		default:
			return err
		}
		hear() // keep the segment until the parent is done
		return nil
	case "user":
		// Attach, answer the owner, and stay attached until told.
		r, err := shm.Open("/"+name, 30*time.Second, shm.WithBackend(b))
		if err != nil {
			return err
		}
		defer r.Close()
		got := string(r.Bytes()[:5])
		copy(r.Bytes()[100:], "reply from the user")
		c.Say("read %s", got)
		hear()
		return nil
	case "modes":
		// As an unprivileged user: create with modes that leave the owner
		// no read access, which the lock's own open must not trip on.
		for i, perm := range []fs.FileMode{0o000, 0o200, 0o400} {
			n := fmt.Sprintf("%s-%d", name, i)
			p, err := b.Create(n, 4096, perm)
			if err != nil {
				return fmt.Errorf("Create with mode %v: %w", perm, err)
			}
			if err := p.Publish(); err != nil {
				return fmt.Errorf("Publish with mode %v: %w", perm, err)
			}
			if err := p.Close(); err != nil {
				return err
			}
		}
		c.Say("ok")
		return nil
	case "exlock":
		// Hold an exclusive flock on dir/name through a read-only
		// descriptor (any user who may read a file may lock it) until
		// told to let go.
		fd, err := unix.Open(filepath.Join(dir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			return fmt.Errorf("flock LOCK_EX: %w", err)
		}
		c.Say("locked")
		if l := hear(); l != "unlock" {
			return fmt.Errorf("heard %q", l)
		}
		if err := unix.Flock(fd, unix.LOCK_UN); err != nil {
			return err
		}
		c.Say("unlocked")
		hear()
		return nil
	case "lease":
		// Take a write lease on dir/name and keep it, ignoring the
		// kernel's requests to give it up, until told.
		signal.Ignore(syscall.SIGIO)
		fd, err := unix.Open(filepath.Join(dir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_WRLCK); err != nil {
			return fmt.Errorf("F_SETLEASE F_WRLCK: %w", err)
		}
		c.Say("leased")
		hear()
		return nil
	case "inuse":
		inUse, err := b.InUse(name)
		if err != nil {
			return err
		}
		c.Say("inuse=%v", inUse)
		return nil
	}
	return fmt.Errorf("unknown role %q", role)
}

// probe tries to lock path shared, then exclusively, without waiting, from
// a descriptor of its own, and releases at once: ex and sh say which
// succeeded.
func probe(path string) (ex, sh bool, err error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, false, err
	}
	defer unix.Close(fd)
	try := func(how int) (bool, error) {
		err := unix.Flock(fd, how|unix.LOCK_NB)
		if err == unix.EWOULDBLOCK {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		return true, unix.Flock(fd, unix.LOCK_UN)
	}
	if sh, err = try(unix.LOCK_SH); err != nil {
		return
	}
	ex, err = try(unix.LOCK_EX)
	return
}

func startChild(t *testing.T, role, dir, name string, opts ...reexec.Option) *reexec.Proc {
	t.Helper()
	return reexec.Start(t, role, []string{dir, name}, opts...)
}

// probeFrom runs a probe child on dir/name and returns its verdict line.
func probeFrom(t *testing.T, dir, name string) string {
	t.Helper()
	c := startChild(t, "probe", dir, name)
	l := c.Expect("")
	c.Wait()
	return l
}

func ok(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func is(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v (%T) does not match %v", err, err, target)
	}
}

// dirNames lists dir, sorted.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	ok(t, err, "ReadDir")
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// create makes and publishes name.
func create(t *testing.T, b *file.Backend, name string, size int64, perm fs.FileMode) backend.Segment {
	t.Helper()
	p, err := b.Create(name, size, perm)
	ok(t, err, "Create")
	ok(t, p.Publish(), "Publish")
	return p
}

func TestCreateOpenUnlink(t *testing.T) {
	dir := t.TempDir()
	b := file.New(dir)
	if b.Name() != "file" || b.Dir() != dir {
		t.Fatalf("Name %q Dir %q", b.Name(), b.Dir())
	}
	const name = "t-file-basic"
	p, err := b.Create(name, 10000, 0o600)
	ok(t, err, "Create")
	if len(p.Bytes()) != 10000 {
		t.Fatalf("owner maps %d bytes, want 10000", len(p.Bytes()))
	}
	copy(p.Bytes(), "owner")
	ok(t, p.Publish(), "Publish")

	s, err := b.Open(name)
	ok(t, err, "Open")
	if len(s.Bytes()) != 10000 || string(s.Bytes()[:5]) != "owner" {
		t.Fatalf("user maps %d bytes starting %q", len(s.Bytes()), s.Bytes()[:5])
	}
	copy(s.Bytes()[9990:], "user")
	if string(p.Bytes()[9990:9994]) != "user" {
		t.Fatalf("owner does not see the user's write")
	}

	// Fd is the mapped file; Chown works on it.
	var st unix.Stat_t
	ok(t, unix.Fstat(int(s.(backend.Fder).Fd()), &st), "fstat Fd")
	var fst unix.Stat_t
	ok(t, unix.Stat(filepath.Join(dir, name), &fst), "stat")
	if st.Ino != fst.Ino || st.Size != 10000 {
		t.Fatalf("Fd names inode %d size %d, file is %d", st.Ino, st.Size, fst.Ino)
	}
	ok(t, p.(backend.Chowner).Chown(os.Getuid(), os.Getgid()), "Chown")

	ok(t, b.Unlink(name), "Unlink")
	_, err = b.Open(name)
	is(t, err, fs.ErrNotExist)
	is(t, b.Unlink(name), fs.ErrNotExist)
	_, err = b.InUse(name)
	is(t, err, fs.ErrNotExist)
	// Mappings survive the Unlink.
	copy(p.Bytes()[5000:], "after")
	if string(s.Bytes()[5000:5005]) != "after" {
		t.Fatalf("mapping broken by Unlink")
	}
	ok(t, s.Close(), "Close user")
	ok(t, s.Close(), "second Close")
	ok(t, p.Close(), "Close owner")
	if names := dirNames(t, dir); len(names) != 0 {
		t.Fatalf("left behind: %v", names)
	}
}

func TestCreateExclusive(t *testing.T) {
	dir := t.TempDir()
	b := file.New(dir)
	const name = "t-file-excl"
	s := create(t, b, name, 4096, 0o600)
	defer s.Close()
	_, err := b.Create(name, 4096, 0o600)
	is(t, err, fs.ErrExist)

	// Two owners that both got past Create: the second Publish loses and
	// its object goes away.
	const other = "t-file-excl2"
	p1, err := b.Create(other, 4096, 0o600)
	ok(t, err, "Create 1")
	p2, err := b.Create(other, 8192, 0o600)
	ok(t, err, "Create 2")
	copy(p1.Bytes(), "first")
	ok(t, p1.Publish(), "Publish 1")
	is(t, p2.Publish(), fs.ErrExist)
	ok(t, p2.Discard(), "Discard 2")
	defer p1.Close()
	u, err := b.Open(other)
	ok(t, err, "Open")
	defer u.Close()
	if len(u.Bytes()) != 4096 || string(u.Bytes()[:5]) != "first" {
		t.Fatalf("the loser replaced the winner")
	}
	if names := dirNames(t, dir); !slices.Equal(names, []string{name, other}) {
		t.Fatalf("directory holds %v", names)
	}
}

func TestModeExactUnderUmask(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	dir := t.TempDir()
	b := file.New(dir)
	for i, perm := range []fs.FileMode{0o666, 0o660, 0o644, 0o600, 0o777, 0o000} {
		name := fmt.Sprintf("t-file-mode-%d", i)
		s := create(t, b, name, 4096, perm)
		fi, err := os.Lstat(filepath.Join(dir, name))
		ok(t, err, "Lstat")
		if fi.Mode() != perm {
			t.Errorf("mode %v, want %v", fi.Mode(), perm)
		}
		ok(t, s.Close(), "Close")
	}
}

func TestHalfMadeInvisible(t *testing.T) {
	dir := t.TempDir()
	b := file.New(dir)
	const name = "t-file-half"
	p, err := b.Create(name, 4096, 0o644)
	ok(t, err, "Create")
	_, err = b.Open(name)
	is(t, err, fs.ErrNotExist)
	_, err = os.Lstat(filepath.Join(dir, name))
	is(t, err, fs.ErrNotExist)
	list, err := b.List()
	ok(t, err, "List")
	if len(list) != 1 || !list[0].Temp || !strings.HasPrefix(list[0].Name, file.TempPrefix+name+".") {
		t.Fatalf("List shows %v, want the object under its temporary name, Temp set", list)
	}
	names := dirNames(t, dir)
	if len(names) != 1 || !strings.HasPrefix(names[0], file.TempPrefix+name+".") {
		t.Fatalf("directory holds %v, want one temporary file", names)
	}
	// Through package shm too: a region not yet published is not there.
	_, err = shm.Open("/"+name, 0, shm.WithBackend(b))
	is(t, err, shm.ErrNotExist)
	ok(t, p.Discard(), "Discard")
	if names := dirNames(t, dir); len(names) != 0 {
		t.Fatalf("Discard left %v", names)
	}
}

func TestList(t *testing.T) {
	dir := t.TempDir()
	b := file.New(dir)
	a := create(t, b, "t-file-list-a", 4096, 0o640)
	defer a.Close()
	p, err := b.Create("t-file-list-b", 4096, 0o600) // not published
	ok(t, err, "Create")
	defer p.Discard()
	ok(t, os.Mkdir(filepath.Join(dir, "t-file-list-dir"), 0o700), "Mkdir")
	ok(t, os.Symlink("t-file-list-a", filepath.Join(dir, "t-file-list-link")), "Symlink")
	list, err := b.List()
	ok(t, err, "List")
	byName := map[string]backend.Info{}
	for _, in := range list {
		if in.Temp {
			in.Name = "temp"
		}
		byName[in.Name] = in
	}
	a0 := byName["t-file-list-a"]
	want := backend.Info{Name: "t-file-list-a", Size: 4096, Mode: 0o640, UID: os.Getuid(), GID: os.Getgid(), Attached: -1,
		Path: filepath.Join(dir, "t-file-list-a"), Dev: a0.Dev, Ino: a0.Ino, Changed: a0.Changed}
	if len(list) != 4 || a0 != want || a0.Ino == 0 || a0.Changed.IsZero() {
		t.Fatalf("List = %+v, want 4 entries, with %+v", list, want)
	}
	if !byName["temp"].Temp || byName["t-file-list-dir"].Foreign != "a directory" || byName["t-file-list-link"].Foreign != "a symbolic link" {
		t.Fatalf("List = %+v: want the unpublished one with Temp set, and the directory and the link Foreign, saying what they are", list)
	}
	// Open refuses what is not a regular file, and says what it is.
	_, err = b.Open("t-file-list-link")
	is(t, err, dirobj.ErrForeign)
	if !strings.Contains(err.Error(), "a symbolic link") {
		t.Fatalf("Open of a symbolic link: %q does not say so", err)
	}
	_, err = b.Open("t-file-list-dir")
	is(t, err, dirobj.ErrForeign)
	if !strings.Contains(err.Error(), "a directory") {
		t.Fatalf("Open of a directory: %q does not say so", err)
	}
}

// The lock states, seen from another process: exclusive while the owner
// initialises, shared while anyone maps the file, free after every Close.
func TestFlockStates(t *testing.T) {
	dir := t.TempDir()
	b := file.New(dir)
	const name = "t-file-flock"
	p, err := b.Create(name, 4096, 0o600)
	ok(t, err, "Create")
	tmp := filepath.Base(file.TempPath(p))
	if got := probeFrom(t, dir, tmp); got != "ex=false sh=false inuse=true" {
		t.Fatalf("while initialising: %s, want exclusive", got)
	}
	ok(t, p.Publish(), "Publish")
	if got := probeFrom(t, dir, name); got != "ex=false sh=true inuse=true" {
		t.Fatalf("after Publish: %s, want shared", got)
	}
	u, err := b.Open(name)
	ok(t, err, "Open")
	ok(t, p.Close(), "Close owner")
	if got := probeFrom(t, dir, name); got != "ex=false sh=true inuse=true" {
		t.Fatalf("user still attached: %s, want shared", got)
	}
	ok(t, u.Close(), "Close user")
	if got := probeFrom(t, dir, name); got != "ex=true sh=true inuse=false" {
		t.Fatalf("after every Close: %s, want free", got)
	}
	inUse, err := b.InUse(name)
	ok(t, err, "InUse")
	if inUse {
		t.Fatal("InUse true after every Close")
	}
}

// A user in another process holds the lock while attached; killing it frees
// the file.
func TestInUseKilledUser(t *testing.T) {
	dir := t.TempDir()
	b := file.New(dir)
	const name = "t-file-killed"
	r, err := shm.Create("/"+name, 4096, shm.WithBackend(b))
	ok(t, err, "shm.Create")
	defer r.Unlink()
	copy(r.Bytes(), "hello")
	ok(t, r.Close(), "Close owner")
	if inUse, err := b.InUse(name); err != nil || inUse {
		t.Fatalf("InUse = %v, %v after the owner's Close; want false", inUse, err)
	}
	c := startChild(t, "user", dir, name)
	if l := c.Expect(""); l != "read hello" {
		t.Fatalf("child said %q", l)
	}
	if inUse, err := b.InUse(name); err != nil || !inUse {
		t.Fatalf("InUse = %v, %v while a child maps it; want true", inUse, err)
	}
	ok(t, c.Signal(syscall.SIGKILL), "kill")
	<-c.Done()
	if inUse, err := b.InUse(name); err != nil || inUse {
		t.Fatalf("InUse = %v, %v after the child was killed; want false", inUse, err)
	}
}

// Two processes race to publish one name: exactly one wins.
func TestCreateRaceProcesses(t *testing.T) {
	dir := t.TempDir()
	for round := range 3 {
		name := fmt.Sprintf("t-file-race-%d", round)
		c1 := startChild(t, "race", dir, name)
		c2 := startChild(t, "race", dir, name)
		for _, c := range []*reexec.Proc{c1, c2} {
			if l := c.Expect(""); l != "created" {
				t.Fatalf("child said %q", l)
			}
		}
		c1.Send("go")
		c2.Send("go")
		got := []string{c1.Expect(""), c2.Expect("")}
		slices.Sort(got)
		if !slices.Equal(got, []string{"lost", "won"}) {
			t.Fatalf("round %d: children said %v, want one won and one lost", round, got)
		}
		c1.Wait()
		c2.Wait()
	}
	names := dirNames(t, dir)
	if !slices.Equal(names, []string{"t-file-race-0", "t-file-race-1", "t-file-race-2"}) {
		t.Fatalf("directory holds %v", names)
	}
	for _, n := range names {
		if inUse, err := file.New(dir).InUse(n); err != nil || inUse {
			t.Fatalf("InUse(%s) = %v, %v after both children exited", n, inUse, err)
		}
	}
}

// A region is shared between two processes through package shm.
func TestShareAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	b := file.New(dir)
	const name = "t-file-share"
	r, err := shm.Create("/"+name, 4096, shm.WithBackend(b))
	ok(t, err, "shm.Create")
	defer r.Close()
	defer r.Unlink()
	copy(r.Bytes(), "hello")
	c := startChild(t, "user", dir, name)
	if l := c.Expect(""); l != "read hello" {
		t.Fatalf("child said %q", l)
	}
	if got := string(r.Bytes()[100:119]); got != "reply from the user" {
		t.Fatalf("owner reads %q", got)
	}
	c.Send("bye")
	c.Wait()
}

// A file shrunk under a mapping is caught by the next Open.
func TestShrunkIsCorrupt(t *testing.T) {
	dir := t.TempDir()
	b := file.New(dir)
	const name = "t-file-shrunk"
	r, err := shm.Create("/"+name, 8192, shm.WithBackend(b))
	ok(t, err, "shm.Create")
	defer r.Close() // touches only the header page, which stays
	defer r.Unlink()
	hdr := 512 + 32*shm.DefaultUsers // the header and its user table
	ok(t, os.Truncate(filepath.Join(dir, name), int64(hdr+100)), "truncate")
	_, err = shm.Open("/"+name, 0, shm.WithBackend(b))
	is(t, err, shm.ErrCorrupt)
	if !strings.Contains(err.Error(), "header claims 8192 data bytes, object holds 100") {
		t.Fatalf("error %q does not say what is wrong", err)
	}
}

// Open waits for a foreign exclusive lock, and gives up with EWOULDBLOCK
// when it is kept.
func TestOpenWaitsForExclusive(t *testing.T) {
	dir := t.TempDir()
	b := file.New(dir)
	const name = "t-file-wait"
	s := create(t, b, name, 4096, 0o600)
	ok(t, s.Close(), "Close")

	fd, err := unix.Open(filepath.Join(dir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	ok(t, err, "open")
	defer unix.Close(fd)
	ok(t, unix.Flock(fd, unix.LOCK_EX), "flock")

	restore := file.SetLockWait(20 * time.Millisecond)
	_, err = b.Open(name)
	restore()
	is(t, err, syscall.EWOULDBLOCK)

	type result struct {
		s   backend.Segment
		err error
	}
	// The default wait (2 s) could end before a loaded machine gets to the
	// unlock below: wait long enough for any machine.
	defer file.SetLockWait(time.Minute)()
	done := make(chan result, 1)
	go func() {
		s, err := b.Open(name)
		done <- result{s, err}
	}()
	time.Sleep(20 * time.Millisecond)
	select {
	case r := <-done:
		t.Fatalf("Open returned (%v) while the file was locked exclusively", r.err)
	default:
	}
	ok(t, unix.Flock(fd, unix.LOCK_UN), "unlock")
	r := <-done
	ok(t, r.err, "Open after the unlock")
	ok(t, r.s.Close(), "Close")
}

// Create reserves the file's blocks.
func TestCreateReserves(t *testing.T) {
	dir := t.TempDir()
	b := file.New(dir)
	const size = 1 << 20
	s := create(t, b, "t-file-reserve", size, 0o600)
	defer s.Close()
	var st unix.Stat_t
	ok(t, unix.Fstat(int(s.(backend.Fder).Fd()), &st), "fstat")
	if st.Size != size || st.Blocks*512 < size {
		t.Fatalf("size %d, %d bytes allocated; want %d of each", st.Size, st.Blocks*512, size)
	}
}

// othersDir makes a directory with mode perm under /tmp, removed when the
// test ends, and checks that uid 65534 can reach it. Not under TMPDIR, as
// t.TempDir is: the directories above TMPDIR need not be open to others
// (TMPDIR=/root/tmp, with /root 0700).
func othersDir(t *testing.T, perm fs.FileMode) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "shmgo-file-test-")
	ok(t, err, "mkdir under /tmp")
	t.Cleanup(func() { os.RemoveAll(dir) })
	ok(t, os.Chmod(dir, perm), "chmod")
	ok(t, reexec.Reachable(dir, 65534, 65534), "a directory for uid 65534")
	return dir
}

// asNobody runs a child as uid and gid 65534, from a copy of the test binary
// that it can execute.
func asNobody(t *testing.T) reexec.Option {
	t.Helper()
	return reexec.AsUser(65534, 65534)
}

// An unprivileged owner can create regions it cannot read itself (the lock
// is taken before fchmod), and another user with read access only can tell
// whether a region is in use.
func TestOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child as uid 65534")
	}
	nobody := asNobody(t)
	dir := othersDir(t, 0o777)
	c := startChild(t, "modes", dir, "t-file-nobody", nobody)
	if l := c.Expect(""); l != "ok" {
		t.Fatalf("unprivileged creator said %q", l)
	}
	c.Wait()
	for i, perm := range []fs.FileMode{0o000, 0o200, 0o400} {
		fi, err := os.Lstat(filepath.Join(dir, fmt.Sprintf("t-file-nobody-%d", i)))
		ok(t, err, "Lstat")
		if fi.Mode() != perm || fi.Sys().(*syscall.Stat_t).Uid != 65534 {
			t.Fatalf("mode %v uid %d, want %v uid 65534", fi.Mode(), fi.Sys().(*syscall.Stat_t).Uid, perm)
		}
	}

	// Root's region, readable but not writable by others.
	b := file.New(dir)
	const name = "t-file-readonly"
	s := create(t, b, name, 4096, 0o644)
	if l := probeAs(t, dir, name, nobody); l != "inuse=true" {
		t.Fatalf("other user while mapped: %s", l)
	}
	ok(t, s.Close(), "Close")
	if l := probeAs(t, dir, name, nobody); l != "inuse=false" {
		t.Fatalf("other user after Close: %s", l)
	}
}

func probeAs(t *testing.T, dir, name string, as reexec.Option) string {
	t.Helper()
	c := startChild(t, "inuse", dir, name, as)
	l := c.Expect("")
	c.Wait()
	return l
}
