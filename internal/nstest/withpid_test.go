package nstest_test

// Children with a PID of the test's choosing, in a new PID namespace.
//
// The kernel hands out the PID after /proc/sys/kernel/ns_last_pid to the
// next process or thread created in the namespace. So the process that
// writes it and then forks must create nothing else in between, and no
// other process of the namespace may either. A Go process cannot promise
// that: os.StartProcess clones a throw-away child the first time it runs
// (syscall's checkClonePidfd), and the runtime starts OS threads when it
// sees fit (a P handed off while a goroutine blocks in a system call, the
// thread os/signal locks for its loop, GC workers), each of which takes a
// PID. Worse, a thread that took the PID keeps it for the life of the
// process: Go never ends an idle thread, so retrying from the same process
// fails for good. Here the namespace's PID 1 is sh(1), idle, and each
// child is started by a single-threaded sh that nsenter(1) runs in the
// namespace: it writes ns_last_pid and forks the test binary at once.

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/internal/reexec"
)

// pidNS is a new PID namespace, with a mount namespace of its own in which
// /proc is mounted for it, made by unshare(1). Its PID 1 is sh(1), which
// does nothing until the test ends, so that the PIDs startWithPID chooses
// are taken by nobody else.
type pidNS struct {
	nsenter string
	unshare int    // PID (here) of unshare(1), whose ns/pid_for_children and ns/mnt are the namespaces
	inode   uint64 // of the PID namespace
	pidMax  int    // the namespace's /proc/sys/kernel/pid_max
}

// newPIDNS makes a PID namespace for startWithPID; it ends with the test.
// It skips the test, saying why, when util-linux or the kernel cannot.
func newPIDNS(t *testing.T) *pidNS {
	t.Helper()
	unshare := requireUnshare(t)
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		t.Skip("skipped: nsenter(1) from util-linux is not installed (CI installs util-linux)")
	}
	lastPIDWorks(t)
	// read returns at the end of its input: when the test closes it. The
	// test binary and its flags, which reexec.Start appends, are the
	// script's arguments, unused: no test binary plays role "sh" here.
	const script = `echo "` + reexec.ReportPrefix + `ready pid_max=$(cat /proc/sys/kernel/pid_max)"; read _`
	init := startChild(t, "PID 1 (sh) of a new PID namespace", "sh", nil,
		nsOpts{prefix: []string{unshare, "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", script, "sh"}})
	line := init.expect("ready")
	ns := &pidNS{
		nsenter: nsenter,
		unshare: init.PID(),
		pidMax:  atoi(t, field(t, line, "pid_max")),
	}
	ns.inode = nsInode(strconv.Itoa(ns.unshare), "pid_for_children")
	if ns.inode == 0 || ns.inode == nsInode("self", "pid") {
		t.Fatalf("unshare(1) (PID %d) made no new PID namespace (pid_for_children inode %d)", ns.unshare, ns.inode)
	}
	return ns
}

// startWithPIDScript runs as sh -c SCRIPT sh LAST ARGV...: it makes LAST
// the namespace's last PID and forks ARGV, which gets LAST+1 (sh creates
// no process or thread in between). The exit after ARGV keeps sh from
// exec'ing it in place (dash does for the last command of -c), and a
// child killed by a signal kills sh with the same signal, which nsenter
// then passes on, so that the test sees the signal.
const startWithPIDScript = `echo "$1" > /proc/sys/kernel/ns_last_pid || exit 125
shift
"$@"
s=$?
if [ "$s" -gt 128 ]; then kill -s "$(kill -l "$s")" $$; fi
exit "$s"
`

// startWithPID runs the test binary as role in ns with the PID pid there.
// No other process of ns may create processes or threads meanwhile (start
// the next child once the previous one has reported): the child checks
// its PID, and startWithPID fails the test unless it is pid. The returned
// proc's kill kills the child itself.
func (ns *pidNS) startWithPID(t *testing.T, name, role, key, arg string, pid int) *proc {
	t.Helper()
	if pid < 2 || pid >= ns.pidMax {
		t.Fatalf("startWithPID: PID %d is outside [2, %d), the namespace's pid_max", pid, ns.pidMax)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	u := "/proc/" + strconv.Itoa(ns.unshare) + "/ns/"
	p := startChild(t, name, role, []string{key, arg, "", strconv.Itoa(pid)}, nsOpts{prefix: []string{
		ns.nsenter, "--pid=" + u + "pid_for_children", "--mount=" + u + "mnt", "--wd=" + wd, "--",
		"sh", "-c", startWithPIDScript, "sh", strconv.Itoa(pid - 1)}})
	if got := atoi(t, field(t, p.expect("started"), "pid")); got != pid {
		t.Fatalf("%s has PID %d in its namespace, want %d", name, got, pid)
	}
	// The child's PID here, held as a pidfd: once the child is gone its
	// PID may name another process, which kill must not hit. The child
	// waits for "go" meanwhile, so it is there to be found.
	fd, err := ns.pidfd(pid)
	if err != nil {
		t.Fatalf("%s (PID %d in PID namespace %d): %v; output:\n%s", name, pid, ns.inode, err, p.Output())
	}
	t.Cleanup(func() { unix.Close(fd) })
	sigkill := func() { unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) }
	// Killing nsenter(1), as reexec does at the end of the test, leaves
	// the child: kill it first (cleanups run last first).
	t.Cleanup(sigkill)
	p.kill = func() {
		sigkill()
		p.WaitDone()
	}
	p.Send("go")
	return p
}

// pidfd opens a pidfd for the process that has PID pid in ns.
func (ns *pidNS) pidfd(pid int) (int, error) {
	paths, err := filepath.Glob("/proc/[0-9]*/status")
	if err != nil {
		return -1, err
	}
	for _, path := range paths {
		dir := filepath.Dir(path)
		here := filepath.Base(dir)
		if !ns.has(dir, pid) {
			continue
		}
		n, _ := strconv.Atoi(here)
		fd, err := unix.PidfdOpen(n, 0)
		if err != nil {
			continue // gone meanwhile
		}
		if ns.has(dir, pid) { // still the same process, now held by fd
			return fd, nil
		}
		unix.Close(fd)
	}
	return -1, errors.New("no such process here")
}

// has tells whether the process /proc/N (dir) is in ns with PID pid there.
func (ns *pidNS) has(dir string, pid int) bool {
	f, err := os.Open(dir + "/status")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "NSpid:"); ok {
			// The PIDs from this /proc's namespace down to the process's.
			ids := strings.Fields(v)
			return len(ids) > 1 && ids[len(ids)-1] == strconv.Itoa(pid) &&
				nsInode(filepath.Base(dir), "pid") == ns.inode
		}
	}
	return false
}

// pidUnusedHere returns a PID for a child of ns that no process or thread
// of this test's PID namespace has, and none of avoid. sure tells that none
// can ever have it: since Linux 6.14, pid_max is per PID namespace and a
// new one's may exceed ours, and no PID here reaches our pid_max.
// Otherwise (one pid_max for all namespaces), it is a PID unused here now,
// the one our namespace will hand out last, and the caller must check
// after use that it stayed unused.
func (ns *pidNS) pidUnusedHere(t *testing.T, avoid map[int]bool) (pid int, sure bool) {
	t.Helper()
	hostMax := readInt(t, "/proc/sys/kernel/pid_max")
	if ns.pidMax > hostMax {
		for p := hostMax; p < ns.pidMax; p++ {
			if !avoid[p] {
				return p, true
			}
		}
	}
	// PIDs are handed out cyclically after ns_last_pid, from 300 (the
	// kernel's RESERVED_PIDS) after a wrap: the farthest from the next
	// ones is just below the last.
	last := readInt(t, "/proc/sys/kernel/ns_last_pid")
	top := min(hostMax, ns.pidMax)
	if last < 300 || last >= top {
		last = top // no wrap yet: top-1 comes last
	}
	for i := 1; i < top; i++ {
		p := last - i
		if p < 300 {
			p += top - 300
		}
		if p >= 300 && p < top && !avoid[p] && unusedHere(p) {
			return p, false
		}
	}
	t.Fatalf("no PID unused here below pid_max %d", top)
	return 0, false
}

// unusedHere tells whether no process or thread of this test's PID
// namespace has the ID pid (/proc/TID exists for threads too).
func unusedHere(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return errors.Is(err, os.ErrNotExist)
}

func readInt(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return n
}
