package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/posix"
	"github.com/shmgo/shm/backend/sysv"
	"github.com/shmgo/shm/internal/reexec"
	"github.com/shmgo/shm/internal/shmtest"
)

// The tests drive the built binary, bin. The test binary, re-executed
// (internal/reexec), plays the processes that create and use regions
// (internal/shmtest's roles).
var bin string

const envBin = "SHMCTL_TEST_BIN" // set for re-runs: the binary already built

func TestMain(m *testing.M) {
	shmtest.Register()
	reexec.Main()
	if b := os.Getenv(envBin); b != "" {
		// A re-run of a test in a new namespace: the binary is built.
		bin = b
		os.Exit(m.Run())
	}
	// Under /tmp, not TMPDIR: other users run the binary too, and the
	// directories above TMPDIR need not be open to them (TMPDIR=/root/tmp,
	// with /root 0700). The tests that run it as another user check.
	dir, err := os.MkdirTemp("/tmp", "shmctl-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755)
	bin = filepath.Join(dir, "shmctl")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building shmctl:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type proc struct {
	cmd *exec.Cmd
	out *bufio.Reader
	pid int
}

func (p *proc) kill() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
}

// startProc starts cmd and waits for its first line, which must start
// with want.
func startProc(t *testing.T, cmd *exec.Cmd, want string) *proc {
	t.Helper()
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, out: bufio.NewReader(stdout), pid: cmd.Process.Pid}
	t.Cleanup(p.kill)
	line, err := p.out.ReadString('\n')
	if !strings.HasPrefix(line, want) {
		rest, _ := io.ReadAll(p.out)
		t.Fatalf("%v: first line %q%s (%v), want %q...", cmd.Args, line, rest, err, want)
	}
	return p
}

// startChild starts a child playing role (see internal/shmtest) on key of
// the backend spec, and waits until it is ready.
func startChild(t *testing.T, role, key, spec string) *reexec.Proc {
	t.Helper()
	return shmtest.Start(t, role, key, spec)
}

// hold runs "shmctl create ... --hold" and waits until the region exists.
func hold(t *testing.T, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"create", "--hold"}, args...)...)
	return startProc(t, cmd, "created ")
}

type result struct {
	stdout, stderr string
	code           int
}

func run(t *testing.T, args ...string) result {
	t.Helper()
	return runCmd(t, exec.Command(bin, args...))
}

func runCmd(t *testing.T, cmd *exec.Cmd) result {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%v: %v", cmd.Args, err)
	}
	return result{out.String(), errb.String(), code}
}

// runAsNobody runs bin with args as uid and gid 65534, which must be able
// to reach it.
func runAsNobody(t *testing.T, args ...string) result {
	t.Helper()
	if err := reexec.Reachable(bin, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	return runCmd(t, cmd)
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

func privateDir(t *testing.T) string { return shmtest.PrivateDir(t) }

// keyRun makes the keys of this run its own: the PID keeps two copies of the
// tests running at once apart, and the random part keeps a run that got the
// PID of a killed one (PIDs wrap within minutes on a busy machine) off the
// objects that one left behind.
var keyRun = fmt.Sprintf("%d-%08x", os.Getpid(), rand.Uint32())

// key is this run's key for what; key("") is the prefix of them all.
func key(what string) string { return "/t-ops-" + keyRun + "-" + what }

// row returns the ls table row of key, split in columns, or nil.
func row(table, key string) []string {
	for _, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[1] == key {
			return f
		}
	}
	return nil
}

// Columns of the ls table.
const (
	colBackend  = 0
	colID       = 2
	colOwner    = 3
	colBytes    = 5
	colObjBytes = 6
	colNattch   = 7
	colCPID     = 8
	colCreator  = 9
	colStatus   = 10
	colLock     = 11
	colStale    = 12
)

func TestUsage(t *testing.T) {
	type usageCase struct {
		args []string
		code int
		out  string // in stdout
		err  string // in stderr
	}
	cases := []usageCase{
		{nil, 2, "", "usage: shmctl COMMAND"},
		{[]string{"bogus"}, 2, "", `unknown command "bogus"`},
		{[]string{"help"}, 0, "usage: shmctl COMMAND", ""},
		{[]string{"--help"}, 0, "usage: shmctl COMMAND", ""},
		{[]string{"help", "gc"}, 0, "usage: shmctl gc", ""},
		{[]string{"stat"}, 2, "", "want exactly one KEY"},
		{[]string{"stat", "/a", "/b"}, 2, "", "want exactly one KEY"},
		{[]string{"rm"}, 2, "", "want at least one KEY"},
		{[]string{"gc", "extra"}, 2, "", "unexpected argument"},
		{[]string{"ls", "--bogus"}, 2, "", "shmctl ls: unknown option --bogus\nRun 'shmctl help ls' for usage.\n"},
		{[]string{"ls", "--backend", "nope"}, 2, "", `bad value "nope" for --backend: unknown backend`},
		{[]string{"create", "/t-ops-x"}, 2, "", "want KEY and SIZE"},
		{[]string{"create", "/t-ops-x", "0"}, 2, "", "bad SIZE"},
		{[]string{"create", "/t-ops-x", "10", "--mode", "999"}, 2, "", "bad --mode"},
		{[]string{"create", "memfd:/t-ops-x", "10"}, 2, "", "use --hold"},
		{[]string{"create", "/t-ops-x", "10", "--owner", "no-such-user-here"}, 2, "", "bad --owner"},
		{[]string{"dump", "/t-ops-x", "--offset", "-1"}, 2, "", "--offset"},
		{[]string{"lock", "/t-ops-x"}, 2, "", "want KEY and CMD"},
		{[]string{"stat", "//bad"}, 2, "", "shmctl stat: //bad: key may not contain '/'"},
	}
	for _, name := range []string{"ls", "stat", "rm", "gc", "create", "dump", "lock"} {
		cases = append(cases, usageCase{[]string{name, "--help"}, 0, "usage: shmctl " + name, ""})
	}
	for _, c := range cases {
		r := run(t, c.args...)
		if r.code != c.code || !strings.Contains(r.stdout, c.out) || !strings.Contains(r.stderr, c.err) {
			t.Errorf("shmctl %q: %v\nwant exit %d, stdout with %q, stderr with %q", c.args, r, c.code, c.out, c.err)
		}
	}
}

// Regions left by killed processes are listed as stale and removed by gc;
// regions in use (by their creator, or by a user after the creator died)
// are not.
func TestLsAndGc(t *testing.T) {
	pdir, fdir := privateDir(t), privateDir(t)
	posixArgs := []string{"--backend", "posix", "--shm-dir", pdir}
	fileArgs := []string{"--backend", "file", "--dir", fdir}
	stale, live, used := key("stale"), key("live"), key("used")
	fstale := key("fstale")

	killed := startChild(t, "create-lock", stale, "posix:"+pdir)
	killed.Kill()
	startChild(t, "create", fstale, "file:"+fdir).Kill()
	holder := hold(t, append([]string{live, "4096"}, posixArgs...)...)
	creator := startChild(t, "create", used, "posix:"+pdir)
	user := startChild(t, "attach", used, "posix:"+pdir)
	creator.Kill()

	r := run(t, append([]string{"ls"}, posixArgs...)...)
	if r.code != 0 {
		t.Fatal(r)
	}
	rs, rl, ru := row(r.stdout, stale), row(r.stdout, live), row(r.stdout, used)
	if rs == nil || rl == nil || ru == nil {
		t.Fatalf("ls does not show the three regions:\n%v", r)
	}
	if rs[colStale] != "yes" || rs[colCreator] != "dead" || rs[colCPID] != strconv.Itoa(killed.PID()) ||
		rs[colLock] != "dead:"+strconv.Itoa(killed.PID()) || rs[colNattch] != "0" {
		t.Errorf("stale region's row: %q", rs)
	}
	if rl[colStale] != "no" || rl[colCreator] != "alive" || rl[colCPID] != strconv.Itoa(holder.pid) || rl[colStatus] != "ready" {
		t.Errorf("live region's row: %q", rl)
	}
	if ru[colStale] != "no" || ru[colCreator] != "dead" || ru[colNattch] == "0" {
		t.Errorf("used region's row: %q", ru)
	}

	// JSON, over both directories. Only posix and file: listing SysV would
	// attach, for a moment, every segment of this IPC namespace, which
	// another test (of another copy of the suite) may want unattached.
	r = run(t, "ls", "--json", "--backend", "posix,file", "--shm-dir", pdir, "--dir", fdir)
	var infos []jsonInfo
	if err := json.Unmarshal([]byte(r.stdout), &infos); err != nil {
		t.Fatalf("ls --json: %v\n%v", err, r)
	}
	got := map[string]jsonInfo{}
	for _, in := range infos {
		if strings.HasPrefix(in.Key, key("")) {
			got[in.Backend+in.Key] = in
		}
	}
	if len(got) != 4 || !got["posix"+stale].Stale || !got["file"+fstale].Stale || got["posix"+live].Stale ||
		got["posix"+used].Stale || got["posix"+live].Mode != "0600" || got["posix"+stale].Lock.State != "holder dead" {
		t.Errorf("ls --json: %+v", got)
	}

	// gc --dry-run removes nothing.
	r = run(t, append([]string{"gc", "--dry-run"}, posixArgs...)...)
	if r.code != 0 || strings.TrimSpace(r.stdout) != "would remove posix "+stale+": creator "+strconv.Itoa(killed.PID())+" dead, not in use" {
		t.Fatalf("gc --dry-run: %v", r)
	}
	if _, err := os.Stat(filepath.Join(pdir, stale[1:])); err != nil {
		t.Fatalf("gc --dry-run removed %s: %v", stale, err)
	}

	r = run(t, append([]string{"gc"}, posixArgs...)...)
	if r.code != 0 || strings.TrimSpace(r.stdout) != "removed posix "+stale+": creator "+strconv.Itoa(killed.PID())+" dead, not in use" {
		t.Fatalf("gc: %v", r)
	}
	r = run(t, append([]string{"gc"}, fileArgs...)...)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "removed file "+fstale+":") {
		t.Fatalf("gc of the file backend: %v", r)
	}
	r = run(t, append([]string{"ls"}, posixArgs...)...)
	if row(r.stdout, stale) != nil || row(r.stdout, live) == nil || row(r.stdout, used) == nil {
		t.Fatalf("after gc:\n%v", r)
	}
	if r = run(t, append([]string{"gc"}, posixArgs...)...); r.code != 0 || r.stdout != "" {
		t.Fatalf("second gc: %v", r)
	}

	// Once its last user is gone, the region is stale.
	user.Kill()
	r = run(t, append([]string{"gc"}, posixArgs...)...)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "removed posix "+used+":") {
		t.Fatalf("gc after the user died: %v", r)
	}
	// The holder removes its region when told to stop.
	holder.cmd.Process.Signal(syscall.SIGTERM)
	if err := holder.cmd.Wait(); err != nil {
		t.Fatalf("create --hold after SIGTERM: %v", err)
	}
	if left, _ := os.ReadDir(pdir); len(left) != 0 {
		t.Fatalf("left in %s: %v", pdir, left)
	}
}

// gc over SysV sees every segment of the IPC namespace: the test runs in a
// namespace of its own.
func TestGcSysv(t *testing.T) {
	if !inNewIPCNamespace(t) {
		return
	}
	stale, live := key("sysv-stale"), key("sysv-live")
	startChild(t, "create", stale, "sysv").Kill()
	holder := hold(t, "sysv:"+live, "100")
	defer holder.kill()
	defer sysv.New().Unlink(live[1:])

	r := run(t, "ls", "--backend", "sysv")
	rs, rl := row(r.stdout, stale), row(r.stdout, live)
	if r.code != 0 || rs == nil || rl == nil || rs[colStale] != "yes" || rl[colStale] != "no" || rs[colID] == "-" {
		t.Fatalf("ls: %v", r)
	}
	r = run(t, "gc", "--backend", "sysv")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "removed sysv "+stale+" (id "+rs[colID]+"):") || strings.Count(r.stdout, "\n") != 1 {
		t.Fatalf("gc: %v", r)
	}
	r = run(t, "ls", "--backend", "sysv")
	if row(r.stdout, stale) != nil || row(r.stdout, live) == nil {
		t.Fatalf("ls after gc: %v", r)
	}
	// ipcs agrees.
	if out, err := exec.Command("ipcs", "-m").Output(); err == nil && strings.Contains(string(out), " "+rs[colID]+" ") {
		t.Errorf("ipcs -m still shows shmid %s:\n%s", rs[colID], out)
	}
}

// inNewIPCNamespace re-runs the calling test in a new IPC namespace and
// reports whether the caller is that re-run.
func inNewIPCNamespace(t *testing.T) bool {
	t.Helper()
	return shmtest.InNamespaces(t, syscall.CLONE_NEWIPC, reexec.Env(envBin+"="+bin))
}

func TestStatAndRm(t *testing.T) {
	dir := privateDir(t)
	args := []string{"--backend", "posix", "--shm-dir", dir}
	live, stale := key("stat-live"), key("stat-stale")
	holder := hold(t, append([]string{live, "1K", "--mode", "0640", "--owner", "65534:65534"}, args...)...)
	startChild(t, "create", stale, "posix:"+dir).Kill()

	r := run(t, append([]string{"stat", live, "--json"}, args...)...)
	var in jsonInfo
	if err := json.Unmarshal([]byte(r.stdout), &in); err != nil || r.code != 0 {
		t.Fatalf("stat --json: %v\n%v", err, r)
	}
	if in.Key != live || in.Backend != "posix" || in.Size != 1024 || in.Mode != "0640" || in.UID != 65534 || in.GID != 65534 ||
		in.CreatorPID == nil || *in.CreatorPID != holder.pid || in.Creator == nil || *in.Creator != "alive" || !in.Ready || in.Stale ||
		in.Lock == nil || in.Lock.State != "free" {
		t.Errorf("stat --json: %+v", in)
	}
	r = run(t, append([]string{"stat", live}, args...)...)
	for _, want := range []string{"key:", live, "mode:", "0640", "creator:", fmt.Sprintf("pid %d, alive", holder.pid), "stale:", "no"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stat: no %q in\n%v", want, r)
		}
	}

	// rm refuses a live region, with the key and the backend in the error.
	r = run(t, append([]string{"rm", live}, args...)...)
	if r.code != 1 || !strings.Contains(r.stderr, live+" (posix)") || !strings.Contains(r.stderr, "in use") ||
		!strings.Contains(r.stderr, fmt.Sprintf("creator %d is alive", holder.pid)) {
		t.Errorf("rm of a live region: %v", r)
	}
	// rm takes several keys: it removes the stale one and reports the rest.
	r = run(t, append([]string{"rm", "-v", stale, live, key("nosuch")}, args...)...)
	if r.code != 1 || r.stdout != "removed posix "+stale+"\n" || !strings.Contains(r.stderr, key("nosuch")) ||
		!strings.Contains(r.stderr, "no such region") {
		t.Errorf("rm stale live missing: %v", r)
	}
	if _, err := os.Stat(filepath.Join(dir, live[1:])); err != nil {
		t.Fatalf("rm removed the live region: %v", err)
	}
	r = run(t, append([]string{"stat", stale}, args...)...)
	if r.code != 1 || !strings.Contains(r.stderr, "no such region") {
		t.Errorf("stat of a removed region: %v", r)
	}
	// A key with a backend prefix and no --backend.
	r = run(t, "stat", "--shm-dir", dir, "posix:"+live)
	if r.code != 0 || !strings.Contains(r.stdout, live) {
		t.Errorf("stat posix:KEY: %v", r)
	}
}

func TestDump(t *testing.T) {
	dir := privateDir(t)
	k := key("dump")
	r := run(t, "create", k, "64", "--backend", "posix", "--shm-dir", dir)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "created posix "+k+" (64 bytes, mode 0600)") {
		t.Fatalf("create: %v", r)
	}
	reg, err := shm.Open(k, 0, shm.WithBackend(posix.NewDir(dir)))
	if err != nil {
		t.Fatal(err)
	}
	copy(reg.Bytes()[16:], "Hello, shared\x00\x01memory!\n")
	reg.Close()

	r = run(t, "dump", k, "--offset", "16", "--len", "24", "--shm-dir", dir, "--backend", "posix")
	want := "00000010: 4865 6c6c 6f2c 2073 6861 7265 6400 016d  Hello, shared..m\n" +
		"00000020: 656d 6f72 7921 0a00                      emory!..\n"
	if r.code != 0 || r.stdout != want {
		t.Errorf("dump:\n%v\nwant:\n%s", r, want)
	}
	r = run(t, "dump", k, "--offset", "100", "--shm-dir", dir, "--backend", "posix")
	if r.code != 1 || !strings.Contains(r.stderr, "beyond") {
		t.Errorf("dump past the end: %v", r)
	}
}

func TestLock(t *testing.T) {
	dir := privateDir(t)
	be := posix.NewDir(dir)
	args := []string{"--backend", "posix", "--shm-dir", dir}
	k := key("lock")
	reg, err := shm.Create(k, 64, shm.WithBackend(be))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()

	// The command's status passes through.
	r := run(t, append(append([]string{"lock", k}, args...), "--", "sh", "-c", "echo in $SHMCTL_KEY; exit 3")...)
	if r.code != 3 || r.stdout != "in "+k+"\n" {
		t.Errorf("lock -- exit 3: %v", r)
	}

	// While the command runs, the lock is held.
	cmd := exec.Command(bin, append(append([]string{"lock", k}, args...), "--", "sh", "-c", "echo locked; read x || true")...)
	stdin, _ := cmd.StdinPipe()
	p := startProc(t, cmd, "locked")
	if _, err := reg.TryLock(); !errors.Is(err, shm.ErrLocked) {
		t.Fatalf("TryLock while shmctl lock runs: %v", err)
	}
	in, _ := shm.Stat(k, shm.WithBackend(be))
	if in.Lock.State != shm.LockHeld || in.Lock.PID != p.pid {
		t.Errorf("Stat while shmctl lock runs: %+v, want held by %d", in.Lock, p.pid)
	}
	r2 := run(t, append(append([]string{"lock", "--nonblock", k}, args...), "--", "true")...)
	if r2.code != 75 || !strings.Contains(r2.stderr, "lock is held") {
		t.Errorf("lock --nonblock while held: %v", r2)
	}
	r2 = run(t, append(append([]string{"lock", "--timeout", "20ms", k}, args...), "--", "true")...)
	if r2.code != 75 || !strings.Contains(r2.stderr, "timed out") {
		t.Errorf("lock --timeout while held: %v", r2)
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	l, err := reg.TryLock()
	if err != nil {
		t.Fatalf("TryLock after shmctl lock: %v", err)
	}
	l.Unlock()
}

func TestLockAfterHolderDied(t *testing.T) {
	dir := privateDir(t)
	be := posix.NewDir(dir)
	args := []string{"--backend", "posix", "--shm-dir", dir}
	k := key("lockdead")
	defer be.Unlink(k[1:])
	holder := startChild(t, "create-lock", k, "posix:"+dir)
	holder.Kill()

	r := run(t, append(append([]string{"lock", k}, args...), "--", "sh", "-c", "echo dead=$SHMCTL_OWNER_DEAD")...)
	if r.code != 0 || r.stdout != "dead=1\n" || !strings.Contains(r.stderr, "died holding the lock") {
		t.Fatalf("lock after the holder died: %v", r)
	}
	in, err := shm.Stat(k, shm.WithBackend(be))
	if err != nil || in.Lock.State != shm.LockFree || !in.Lock.Inconsistent {
		t.Fatalf("without --consistent: %+v, %v; want free and inconsistent", in.Lock, err)
	}
	// A failing repair leaves it inconsistent; a successful one marks it.
	r = run(t, append(append([]string{"lock", "--consistent", k}, args...), "--", "false")...)
	if in, _ = shm.Stat(k, shm.WithBackend(be)); r.code != 1 || !in.Lock.Inconsistent {
		t.Fatalf("--consistent with a failing command: %v\n%+v", r, in.Lock)
	}
	r = run(t, append(append([]string{"lock", "--consistent", k}, args...), "--", "true")...)
	if in, _ = shm.Stat(k, shm.WithBackend(be)); r.code != 0 || in.Lock.Inconsistent || in.Lock.State != shm.LockFree {
		t.Fatalf("--consistent with a succeeding command: %v\n%+v", r, in.Lock)
	}
	r = run(t, append(append([]string{"lock", k}, args...), "--", "sh", "-c", "echo dead=$SHMCTL_OWNER_DEAD")...)
	if r.code != 0 || r.stdout != "dead=\n" || r.stderr != "" {
		t.Fatalf("lock once consistent: %v", r)
	}
}

// ls run by another user shows the regions it may read, and says how many
// it could not.
func TestLsAsOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run shmctl as another user")
	}
	dir := privateDir(t)
	args := []string{"--backend", "posix", "--shm-dir", dir}
	private, shared := key("private"), key("shared")
	for _, c := range []struct{ k, mode string }{{private, "0600"}, {shared, "0644"}} {
		if r := run(t, append([]string{"create", c.k, "100", "--mode", c.mode}, args...)...); r.code != 0 {
			t.Fatal(r)
		}
	}
	asNobody := func(a ...string) result { return runAsNobody(t, a...) }
	r := asNobody(append([]string{"ls"}, args...)...)
	if r.code != 0 || row(r.stdout, shared) == nil || row(r.stdout, private) != nil ||
		!strings.Contains(r.stderr, "1 object could not be read") {
		t.Errorf("ls as nobody: %v", r)
	}
	r = asNobody(append([]string{"ls", "--all"}, args...)...)
	if rp := row(r.stdout, private); r.code != 0 || rp == nil || rp[colStatus] != "unreadable" {
		t.Errorf("ls --all as nobody: %v", r)
	}
	r = asNobody(append([]string{"stat", private}, args...)...)
	if r.code != 1 || !strings.Contains(r.stderr, "permission denied") || !strings.Contains(r.stderr, private+" (posix)") {
		t.Errorf("stat as nobody: %v", r)
	}
	r = asNobody(append([]string{"rm", shared}, args...)...)
	if r.code != 1 {
		t.Errorf("rm of root's region as nobody: %v", r)
	}
	// As root, both are stale (their creator, shmctl create, exited).
	r = run(t, append([]string{"gc"}, args...)...)
	if r.code != 0 || strings.Count(r.stdout, "removed posix") != 2 {
		t.Errorf("gc: %v", r)
	}
}

// gc racing a process that attaches again and again never takes the region
// from under it.
func TestGcRacesAttach(t *testing.T) {
	dir := privateDir(t)
	args := []string{"gc", "--backend", "posix", "--shm-dir", dir}
	for round := 0; round < 5; round++ {
		runs, att := shmtest.RaceAttach(t, key(fmt.Sprintf("race-%d", round)), "posix:"+dir, func(context.Context) (bool, error) {
			r := run(t, args...)
			if r.code != 0 {
				return false, errors.New(r.String())
			}
			return r.stdout != "", nil
		})
		t.Logf("round %d: removed after %d runs of gc; attacher: %s", round, runs, att)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int{"1": 1, "4096": 4096, "4K": 4096, "4k": 4096, "2M": 2 << 20, "1G": 1 << 30, "3KiB": 3072, "5MB": 5 << 20} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1", "K", "1T", "1.5K", "2000G"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestSplitKey(t *testing.T) {
	cases := []struct{ in, prefix, dir, key string }{
		{"/k", "", "", "/k"},
		{"k", "", "", "k"},
		{"sysv:/k", "sysv", "", "/k"},
		{"posix:k", "posix", "", "k"},
		{"file:/var/run/x/k", "file", "/var/run/x", "/k"},
		{"/a:b", "", "", "/a:b"},
		{"other:/k", "", "", "other:/k"},
	}
	for _, c := range cases {
		p, d, k := splitKey(c.in)
		if p != c.prefix || d != c.dir || k != c.key {
			t.Errorf("splitKey(%q) = %q %q %q", c.in, p, d, k)
		}
	}
}

// hostile is the tail of a key that tries to take over the terminal of
// whoever lists it: set the title, clear the screen, forge a line, a C1 CSI,
// bytes that are not UTF-8, a right-to-left override, a backslash.
const hostile = "esc\x1b]0;pwned\x07\x1b[2J\rposix\tforged\n\u009b31m\xff\xfe\u202eevil\\x"

// checkSafe fails unless out is valid UTF-8 made of printable runes and
// newlines only, in exactly lines lines (-1: any number).
func checkSafe(t *testing.T, what, out string, lines int) {
	t.Helper()
	if !utf8.ValidString(out) {
		t.Errorf("%s: output is not valid UTF-8: %q", what, out)
	}
	for _, r := range out {
		if r != '\n' && !unicode.IsPrint(r) {
			t.Errorf("%s: unescaped %U in output %q", what, r, out)
			break
		}
	}
	if lines >= 0 && strings.Count(out, "\n") != lines {
		t.Errorf("%s: %d lines, want %d: %q", what, strings.Count(out, "\n"), lines, out)
	}
}

// Keys chosen by other users reach no terminal raw (issue 11.15).
func TestHostileKeysEscaped(t *testing.T) {
	dir := privateDir(t)
	args := []string{"--backend", "posix", "--shm-dir", dir}
	k := key(hostile)
	startChild(t, "create", k, "posix:"+dir).Kill() // a stale region
	// An object that is not a region, under a hostile name.
	foreign := key("foreign-" + hostile)[1:]
	if err := os.WriteFile(filepath.Join(dir, foreign), []byte("not a region\x1b[2J"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The escaped form, spelled out once.
	const escaped = `esc\x1b]0;pwned\x07\x1b[2J\rposix\tforged\n\u009b31m\xff\xfe\u202eevil\\x`
	if got := esc(hostile); got != escaped {
		t.Fatalf("esc(hostile) = %s\nwant %s", got, escaped)
	}

	r := run(t, append([]string{"ls"}, args...)...)
	checkSafe(t, "ls", r.stdout, 2)
	if r.code != 0 || row(r.stdout, escCell(k)) == nil {
		t.Errorf("ls: no row for the hostile key:\n%v", r)
	}
	r = run(t, append([]string{"ls", "--all"}, args...)...)
	checkSafe(t, "ls --all", r.stdout, 3)
	if !strings.Contains(r.stdout, escCell(foreign)) {
		t.Errorf("ls --all: no row for the foreign object:\n%v", r)
	}
	r = run(t, append([]string{"stat", k}, args...)...)
	checkSafe(t, "stat", r.stdout, -1)
	if r.code != 0 || !strings.Contains(r.stdout, " "+esc(k)+"\n") {
		t.Errorf("stat:\n%v", r)
	}
	r = run(t, append([]string{"stat", foreign}, args...)...)
	checkSafe(t, "stat of a foreign object (stdout)", r.stdout, -1)
	checkSafe(t, "stat of a foreign object (stderr)", r.stderr, 1)
	if r.code != 1 || !strings.Contains(r.stderr, esc(foreign)) {
		t.Errorf("stat of a foreign object:\n%v", r)
	}
	r = run(t, append([]string{"rm", k + "-missing"}, args...)...)
	checkSafe(t, "rm of a missing key", r.stderr, 1)
	if r.code != 1 || !strings.Contains(r.stderr, esc(k+"-missing")) {
		t.Errorf("rm of a missing key:\n%v", r)
	}
	r = run(t, append([]string{"gc", "--dry-run"}, args...)...)
	checkSafe(t, "gc --dry-run", r.stdout, 1)
	r = run(t, append([]string{"rm", "-v", k}, args...)...)
	checkSafe(t, "rm -v", r.stdout+r.stderr, 1)
	if r.code != 0 || r.stdout != "removed posix "+esc(k)+"\n" {
		t.Errorf("rm -v:\n%v", r)
	}
	startChild(t, "create", k, "posix:"+dir).Kill()
	r = run(t, append([]string{"gc"}, args...)...)
	checkSafe(t, "gc", r.stdout+r.stderr, 1)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "removed posix "+esc(k)+": ") {
		t.Errorf("gc:\n%v", r)
	}
	// JSON keeps the key exact where JSON can: valid UTF-8 is escaped by
	// encoding/json.
	okKey := key("json\x1b]0;x\x07\n")
	startChild(t, "create", okKey, "posix:"+dir).Kill()
	r = run(t, append([]string{"ls", "--json"}, args...)...)
	checkSafe(t, "ls --json", r.stdout, -1)
	var infos []jsonInfo
	if err := json.Unmarshal([]byte(r.stdout), &infos); err != nil || len(infos) != 1 || infos[0].Key != okKey {
		t.Errorf("ls --json: %v, %+v\n%v", err, infos, r)
	}
}

// procGone reports whether pid has exited (gone, or a zombie that its new
// parent has not reaped yet).
func procGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] == 'Z' || s[i+2] == 'X'
	}
	return false
}

// A SIGKILLed "shmctl lock" takes its command with it, so that the command
// never runs while the next locker holds the lock (issue 11.16).
func TestLockKilledTakesCommand(t *testing.T) {
	dir := privateDir(t)
	be := posix.NewDir(dir)
	k := key("lock-kill")
	reg, err := shm.Create(k, 64, shm.WithBackend(be))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	cmd := exec.Command(bin, "lock", k, "--backend", "posix", "--shm-dir", dir, "--", "sh", "-c", "echo $$; exec sleep 1000")
	p := startProc(t, cmd, "") // the command's first line: its PID
	in, err := shm.Stat(k, shm.WithBackend(be))
	if err != nil || in.Lock.State != shm.LockHeld || in.Lock.PID != p.pid {
		t.Fatalf("lock while the command runs: %+v, %v", in.Lock, err)
	}
	child := cmdPID(t, p.pid)
	t.Cleanup(func() { syscall.Kill(child, syscall.SIGKILL) })
	if procGone(child) {
		t.Fatalf("command %d is not running", child)
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Wait()
	// The kernel ends the command at once; a loaded machine may take a
	// while to let us see it.
	deadline := time.Now().Add(30 * time.Second)
	for !procGone(child) {
		if time.Now().After(deadline) {
			t.Fatalf("command %d still runs 30 s after shmctl lock was killed", child)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The next locker gets the lock, told that its holder died.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := reg.LockContext(ctx)
	if !errors.Is(err, shm.ErrOwnerDead) {
		t.Fatalf("Lock after shmctl lock was killed: %v, want ErrOwnerDead", err)
	}
	l.Unlock()
}

// cmdPID returns the PID of the only child of parent.
func cmdPID(t *testing.T, parent int) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var kids []int
		// The children of every thread: the one that forked may be any.
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", parent))
		for _, task := range tasks {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", parent, task.Name()))
			for _, f := range strings.Fields(string(b)) {
				if n, err := strconv.Atoi(f); err == nil {
					kids = append(kids, n)
				}
			}
		}
		if len(kids) == 1 {
			return kids[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("shmctl %d has children %v, want one", parent, kids)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A non-root gc reports the stale regions of other users that it may not
// remove, removes its own, and does not fail (issue 11.17).
func TestGcAsOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run shmctl as another user")
	}
	if !inNewIPCNamespace(t) {
		return
	}
	roots, nobodys := key("gc-root"), key("gc-nobody")
	for _, a := range [][]string{{"sysv:" + roots, "100", "--mode", "0666"}, {"sysv:" + nobodys, "100", "--mode", "0666", "--owner", "65534:65534"}} {
		if r := run(t, append([]string{"create"}, a...)...); r.code != 0 {
			t.Fatal(r)
		}
	}
	defer sysv.New().Unlink(roots[1:])
	defer sysv.New().Unlink(nobodys[1:])
	asNobody := func(a ...string) result { return runAsNobody(t, a...) }
	r := asNobody("gc", "--backend", "sysv", "--dry-run")
	if r.code != 0 || !strings.Contains(r.stdout, "would remove sysv "+roots+" ") || !strings.Contains(r.stdout, "(owned by root: may not be permitted)") {
		t.Errorf("gc --dry-run as nobody: %v", r)
	}
	for i := 0; i < 2; i++ { // every run, not only the first
		r = asNobody("gc", "--backend", "sysv")
		wantOut := ""
		if i == 0 {
			wantOut = "removed sysv " + nobodys
		}
		if r.code != 0 || !strings.HasPrefix(r.stdout, wantOut) || strings.Count(r.stdout, "\n") != min(1, 1-i) ||
			!strings.Contains(r.stderr, "may not remove "+roots+" (sysv)") || !strings.Contains(r.stderr, "operation not permitted") ||
			!strings.Contains(r.stderr, "1 stale region left that this user may not remove") {
			t.Errorf("gc as nobody, run %d: %v", i+1, r)
		}
	}
	if _, err := sysv.New().Stat(roots[1:]); err != nil {
		t.Fatalf("root's region after gc as nobody: %v", err)
	}
	// root may.
	if r = run(t, "gc", "--backend", "sysv"); r.code != 0 || !strings.HasPrefix(r.stdout, "removed sysv "+roots) || r.stderr != "" {
		t.Errorf("gc as root: %v", r)
	}
}

func TestSplitGcErrors(t *testing.T) {
	denied := &shm.Error{Op: "remove", Key: "/a", Backend: "sysv", Err: fmt.Errorf("shmctl IPC_RMID: %w", syscall.EPERM)}
	inUse := &shm.Error{Op: "remove", Key: "/b", Backend: "posix", Err: syscall.EIO}
	listing := &shm.Error{Op: "list", Backend: "file", Err: syscall.EACCES}
	d, f := splitGcErrors(errors.Join(errors.Join(listing), denied, inUse))
	if len(d) != 1 || d[0] != denied || !errors.Is(f, syscall.EIO) || !errors.Is(f, syscall.EACCES) {
		t.Errorf("splitGcErrors: denied %v, failed %v", d, f)
	}
	if d, f = splitGcErrors(errors.Join(nil, denied)); len(d) != 1 || f != nil {
		t.Errorf("splitGcErrors(only denied): %v, %v", d, f)
	}
}
