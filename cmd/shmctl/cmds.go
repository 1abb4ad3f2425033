package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
)

// longHelp is printed by "shmctl CMD --help" after the summary.
var longHelp = map[string]string{
	"ls": `
Lists the regions of every backend (or of --backend B), like ipcs -m. A
region is STALE when its creator is dead and no process has it open or
mapped; 'shmctl gc' removes those. NATTCH is the number of processes that
map it ("N+" when some processes could not be inspected, "?" when unknown).
Objects this user may not read are not shown; their number is printed on
stderr. --all also lists objects that are not regions of ours (foreign)
and those that could not be read.`,
	"stat": `
Describes the region under KEY: backend, data size, mode, owner, creator PID
and whether it is alive, creation time, ready state, lock state, how many
processes map it, and whether it is stale (and why). KEY may carry a backend
prefix (sysv:/name); without one, every backend is searched.`,
	"rm": `
Removes each KEY if it is stale: its creator is dead and no process has it
open or mapped. A region in use is never removed (exit status 1, with the
reason on stderr). To remove a live region, have its owner unlink it; to
remove an object that is not a region, use rm(1) or ipcrm(1).`,
	"gc": `
Removes every stale region on every backend (or --backend B), re-checking
each just before removing it, and prints one line per region removed
(--dry-run: would remove). Also removes regions whose creator died before
publishing them (temporary files). Safe to run from cron or a systemd
timer: a region in use is never removed.

A stale region that this user may not remove (another user's, for a
non-root gc) is reported on stderr ("may not remove ...") but does not make
gc fail: the exit status is 0 unless a region that it was entitled to
remove could not be removed, or a backend could not be listed (1).`,
	"create": `
Creates a region of SIZE data bytes (suffixes K, M, G: KiB, MiB, GiB) under
KEY, with the exact mode --mode whatever the umask, owned by --owner when
given. Without --hold, shmctl exits at once and the region is stale as soon
as no process maps it (its creator, shmctl, is gone). With --hold, shmctl
keeps it until SIGINT or SIGTERM and then removes it; memfd regions need
--hold, since they live only as long as their creator.`,
	"dump": `
Prints the region's data (not its header) from --offset for --len bytes
in the format of xxd(1): offset, 16 bytes in hex, and in ASCII.`,
	"lock": `
Takes the region's lock, runs CMD, and releases the lock when CMD exits,
like flock(1); exits with CMD's status (128+N when killed by signal N), or
1 when the lock or CMD cannot be had. SIGINT, SIGTERM, SIGHUP and SIGQUIT
are passed on to CMD. The lock belongs to shmctl, not to CMD (unlike
flock(1), whose lock passes with the descriptor): if shmctl dies, even by
SIGKILL, the kernel kills CMD too (SIGKILL, PR_SET_PDEATHSIG), so that CMD
never runs unlocked; the next locker then gets the lock with "the previous
holder died". Processes that CMD starts are not killed with it unless CMD
arranges it. When the previous holder died holding the lock, a
warning is printed and CMD runs with SHMCTL_OWNER_DEAD=1 in its
environment; with --consistent, the data is then marked consistent if CMD
succeeds (CMD is expected to have repaired it).`,
}

func cmdLs(c *cli, args []string) int {
	fl := c.flags("ls", "backend", "dir", "shm-dir")
	all := fl.Bool("all", false, "also list objects that are not regions, and those that could not be read")
	asJSON := fl.Bool("json", false, "print a JSON array")
	pos, _, code, ok := c.parse(fl, "ls", args)
	if !ok {
		return code
	}
	if len(pos) > 0 {
		return c.usageFail(fl, "ls", "unexpected argument %q", pos[0])
	}
	bs, err := c.backends("", true)
	if err != nil {
		return c.fail("ls", err)
	}
	opts := []shm.ListOption{shm.ListBackends(bs...)}
	if *all {
		opts = append(opts, shm.ListForeign())
	}
	infos, lerr := shm.List(c.ctx, opts...)
	var shown []shm.Info
	unreadable := 0
	for _, in := range infos {
		if in.Err != nil {
			unreadable++
			if !*all {
				continue
			}
		}
		shown = append(shown, in)
	}
	if *asJSON {
		err = writeJSON(c.stdout, toJSON(shown))
	} else {
		err = writeTable(c.stdout, shown)
	}
	if err != nil {
		return c.fail("ls", err)
	}
	if unreadable > 0 {
		what := "objects"
		if unreadable == 1 {
			what = "object"
		}
		fmt.Fprintf(c.stderr, "shmctl ls: %d %s could not be read (permission denied, or being removed); they may be regions of other users: run as root or as their owner to see them\n", unreadable, what)
	}
	if lerr != nil {
		return c.fail("ls", lerr)
	}
	return exitOK
}

func cmdStat(c *cli, args []string) int {
	fl := c.flags("stat", "backend", "dir", "shm-dir")
	asJSON := fl.Bool("json", false, "print JSON")
	pos, _, code, ok := c.parse(fl, "stat", args)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		return c.usageFail(fl, "stat", "want exactly one KEY")
	}
	f, err := c.resolve(pos[0], true)
	if err != nil {
		return c.fail("stat", err)
	}
	if f.err != nil && f.info.Backend == "" {
		return c.fail("stat", f.err)
	}
	if *asJSON {
		err = writeJSON(c.stdout, toJSON([]shm.Info{f.info})[0])
	} else {
		err = writeStat(c.stdout, f.info)
	}
	if err != nil {
		return c.fail("stat", err)
	}
	if f.err != nil {
		return c.fail("stat", f.err)
	}
	return exitOK
}

func cmdRm(c *cli, args []string) int {
	fl := c.flags("rm", "backend", "dir", "shm-dir")
	verbose := fl.Bool("v", false, "print each region removed")
	pos, _, code, ok := c.parse(fl, "rm", args)
	if !ok {
		return code
	}
	if len(pos) == 0 {
		return c.usageFail(fl, "rm", "want at least one KEY")
	}
	status := exitOK
	for _, arg := range pos {
		f, err := c.resolve(arg, true)
		if err == nil && f.err != nil {
			err = f.err
		}
		if err == nil {
			err = shm.Remove(f.key, shm.WithBackend(f.be))
		}
		if err != nil {
			if c.fail("rm", err) == exitUsage {
				return exitUsage
			}
			status = exitFail
			continue
		}
		if *verbose {
			fmt.Fprintf(c.stdout, "removed %s\n", describe(f.info))
		}
	}
	return status
}

func cmdGc(c *cli, args []string) int {
	fl := c.flags("gc", "backend", "dir", "shm-dir")
	dry := fl.Bool("dry-run", false, "print what would be removed, remove nothing")
	asJSON := fl.Bool("json", false, "print a JSON array of the regions removed")
	pos, _, code, ok := c.parse(fl, "gc", args)
	if !ok {
		return code
	}
	if len(pos) > 0 {
		return c.usageFail(fl, "gc", "unexpected argument %q", pos[0])
	}
	bs, err := c.backends("", true)
	if err != nil {
		return c.fail("gc", err)
	}
	var done []shm.Info
	verb := "removed"
	if *dry {
		verb = "would remove"
		infos, lerr := shm.List(c.ctx, shm.ListBackends(bs...))
		for _, in := range infos {
			if in.Stale {
				done = append(done, in)
			}
		}
		err = lerr
	} else {
		done, err = shm.RemoveStale(c.ctx, shm.ListBackends(bs...))
	}
	if *asJSON {
		if werr := writeJSON(c.stdout, toJSON(done)); werr != nil && err == nil {
			err = werr
		}
	} else {
		euid := os.Geteuid()
		for _, in := range done {
			note := ""
			if *dry && euid != 0 && in.UID >= 0 && in.UID != euid {
				note = " (owned by " + esc(userName(in.UID)) + ": may not be permitted)"
			}
			fmt.Fprintf(c.stdout, "%s %s: %s%s\n", verb, describe(in), escText(in.Reason), note)
		}
	}
	denied, failed := splitGcErrors(err)
	for _, e := range denied {
		for _, l := range errLines(e) {
			fmt.Fprintf(c.stderr, "shmctl gc: may not remove %s\n", l)
		}
	}
	if len(denied) > 0 {
		what := "regions"
		if len(denied) == 1 {
			what = "region"
		}
		fmt.Fprintf(c.stderr, "shmctl gc: %d stale %s left that this user may not remove: run as root or as the owner to remove them\n", len(denied), what)
	}
	if failed != nil {
		return c.fail("gc", failed)
	}
	return exitOK
}

// splitGcErrors separates, in what RemoveStale returned, the regions that
// this user may not remove (another user's stale region: the error matches
// fs.ErrPermission) from real failures (a region it was entitled to remove,
// a backend that could not be listed). Only the latter fail gc: a non-root
// gc run from cron must not fail forever because of other users' regions.
func splitGcErrors(err error) (denied []error, failed error) {
	var rest []error
	for _, e := range flatten(err) {
		var se *shm.Error
		if errors.As(e, &se) && se.Op == "remove" && errors.Is(e, fs.ErrPermission) {
			denied = append(denied, e)
			continue
		}
		rest = append(rest, e)
	}
	return denied, errors.Join(rest...)
}

// flatten lists the errors that err joins (errors.Join, recursively),
// down to *shm.Error values and other single errors.
func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

func cmdCreate(c *cli, args []string) int {
	fl := c.flags("create", "backend", "dir", "shm-dir")
	mode := fl.String("mode", "0600", "permission bits, in octal, applied exactly")
	owner := fl.String("owner", "", "chown the region to USER[:GROUP] (names or numbers)")
	hold := fl.Bool("hold", false, "keep the region until SIGINT or SIGTERM, then remove it")
	pos, _, code, ok := c.parse(fl, "create", args)
	if !ok {
		return code
	}
	if len(pos) != 2 {
		return c.usageFail(fl, "create", "want KEY and SIZE")
	}
	prefix, keyDir, key := splitKey(pos[0])
	sel := prefix
	if sel == "" {
		sel = c.backend
	} else if c.backend != "" && c.backend != sel {
		return c.fail("create", usagef("key names backend %s but --backend is %s", sel, c.backend))
	}
	if sel == "" {
		sel = "posix"
	}
	if sel == "file" && keyDir == "" && len(c.dirs) > 1 {
		return c.fail("create", usagef("the file backend takes one --dir DIR"))
	}
	if sel == "memfd" && !*hold {
		return c.fail("create", usagef("a memfd region lives only as long as its creator: use --hold"))
	}
	size, err := parseSize(pos[1])
	if err != nil {
		return c.fail("create", usagef("bad SIZE %q: %v", pos[1], err))
	}
	perm, err := strconv.ParseUint(*mode, 8, 32)
	if err != nil || perm > 0o777 {
		return c.fail("create", usagef("bad --mode %q: want octal permission bits such as 0640", *mode))
	}
	uid, gid := -1, -1
	if *owner != "" {
		if uid, gid, err = lookupOwner(*owner); err != nil {
			return c.fail("create", usagef("bad --owner %q: %v", *owner, err))
		}
	}
	dir := keyDir
	if sel == "file" && dir == "" && len(c.dirs) > 0 {
		dir = c.dirs[0]
	}
	if sel == "file" && dir == "" {
		dir = shm.FileDir()
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return c.fail("create", err)
		}
	}
	be, err := c.newBackend(sel, dir, false)
	if err != nil {
		return c.fail("create", err)
	}
	var stop context.CancelFunc = func() {}
	ctx := c.ctx
	if *hold {
		// Before Create, so that a signal right after it is not lost.
		ctx, stop = signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	}
	defer stop()
	r, err := shm.Create(key, size, shm.WithBackend(be), shm.WithMode(fs.FileMode(perm)))
	if err != nil {
		return c.fail("create", err)
	}
	if uid != -1 || gid != -1 {
		if err := r.Chown(uid, gid); err != nil {
			r.Unlink()
			r.Close()
			return c.fail("create", err)
		}
	}
	fmt.Fprintf(c.stdout, "created %s %s (%d bytes, mode %04o)\n", be.Name(), esc(r.Key()), r.Size(), perm)
	if f, ok := c.stdout.(*os.File); ok {
		f.Sync()
	}
	if !*hold {
		if err := r.Close(); err != nil {
			return c.fail("create", err)
		}
		return exitOK
	}
	<-ctx.Done()
	status := exitOK
	if err := r.Unlink(); err != nil && !errors.Is(err, shm.ErrNotExist) {
		status = c.fail("create", err)
	}
	if err := r.Close(); err != nil {
		status = c.fail("create", err)
	}
	return status
}

func cmdDump(c *cli, args []string) int {
	fl := c.flags("dump", "backend", "dir", "shm-dir")
	offset := fl.Int64("offset", 0, "first data byte to print")
	length := fl.Int64("len", -1, "number of bytes to print (default: to the end)")
	pos, _, code, ok := c.parse(fl, "dump", args)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		return c.usageFail(fl, "dump", "want exactly one KEY")
	}
	if *offset < 0 {
		return c.usageFail(fl, "dump", "--offset must not be negative")
	}
	r, err := c.open(pos[0], true)
	if err != nil {
		return c.fail("dump", err)
	}
	defer r.Close()
	data := r.Bytes()
	if *offset > int64(len(data)) {
		return c.fail("dump", fmt.Errorf("%s (%s): offset %d is beyond the region's %d bytes", esc(r.Key()), r.Backend(), *offset, len(data)))
	}
	end := int64(len(data))
	if *length >= 0 && *offset+*length < end {
		end = *offset + *length
	}
	if err := hexdump(c.stdout, data[*offset:end], *offset); err != nil {
		return c.fail("dump", err)
	}
	return exitOK
}

func cmdLock(c *cli, args []string) int {
	fl := c.flags("lock", "backend", "dir", "shm-dir")
	timeout := fl.Duration("timeout", 0, "give up after this long (0: wait as long as it takes)")
	nonblock := fl.Bool("nonblock", false, "fail at once when the lock is held")
	consistent := fl.Bool("consistent", false, "after a holder died, mark the data consistent when CMD succeeds")
	pos, cmdArgs, code, ok := c.parse(fl, "lock", args)
	if !ok {
		return code
	}
	if len(pos) != 1 || len(cmdArgs) == 0 {
		return c.usageFail(fl, "lock", "want KEY -- CMD [ARG...]")
	}
	r, err := c.open(pos[0], false)
	if err != nil {
		return c.fail("lock", err)
	}
	defer r.Close()

	// Signals meant for the command: pass them on while it runs.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)

	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	if *timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	go func() {
		select {
		case <-sigs: // interrupted while waiting for the lock
			cancel()
		case <-ctx.Done():
		}
	}()
	var l shm.Lock
	if *nonblock {
		l, err = r.TryLock()
	} else {
		l, err = r.LockContext(ctx)
	}
	ownerDead := errors.Is(err, shm.ErrOwnerDead)
	if errors.Is(err, shm.ErrTimeout) {
		err = fmt.Errorf("%s (%s): timed out after %v waiting for the lock", esc(r.Key()), r.Backend(), *timeout)
	}
	if err != nil && !ownerDead {
		return c.fail("lock", err)
	}
	cancel() // stops the goroutine above; the lock is held
	defer l.Unlock()
	env := os.Environ()
	if ownerDead {
		fmt.Fprintf(c.stderr, "shmctl lock: %s (%s): the previous holder died holding the lock; the data may be inconsistent\n", esc(r.Key()), r.Backend())
		env = append(env, "SHMCTL_OWNER_DEAD=1")
	}
	cmd := exec.Command(cmdArgs[0], cmdArgs[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, c.stdout, c.stderr
	cmd.Env = append(env, "SHMCTL_KEY="+r.Key(), "SHMCTL_BACKEND="+r.Backend())
	started, waited := startDying(cmd)
	if err := <-started; err != nil {
		return c.fail("lock", err)
	}
	var werr error
wait:
	for {
		select {
		case s := <-sigs:
			cmd.Process.Signal(s)
		case werr = <-waited:
			break wait
		}
	}
	status := exitOK
	var ee *exec.ExitError
	switch {
	case werr == nil:
	case errors.As(werr, &ee):
		status = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			status = 128 + int(ws.Signal())
		}
	default:
		status = c.fail("lock", werr)
	}
	if ownerDead && *consistent && status == exitOK {
		if err := l.MarkConsistent(); err != nil {
			return c.fail("lock", err)
		}
	}
	if err := l.Unlock(); err != nil {
		return c.fail("lock", err)
	}
	return status
}

// startDying starts cmd so that the kernel kills it (SIGKILL) when shmctl
// dies, whatever kills shmctl: otherwise a SIGKILLed "shmctl lock" would
// leave CMD running unlocked while the next locker takes the lock. The
// kernel sends a child's parent-death signal when the *thread* that forked
// it exits, and Go ends idle threads: so the fork happens on a goroutine
// locked to its OS thread, which stays in cmd.Wait until CMD is reaped.
// started reports Start's error; waited, then, Wait's.
func startDying(cmd *exec.Cmd) (started, waited <-chan error) {
	s, w := make(chan error, 1), make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread ends with the goroutine, after CMD.
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
		err := cmd.Start()
		s <- err
		if err != nil {
			return
		}
		w <- cmd.Wait()
	}()
	return s, w
}

func (c *cli) usageFail(_ *flag.FlagSet, cmd, format string, a ...any) int {
	fmt.Fprintf(c.stderr, "shmctl %s: %s\n", cmd, fmt.Sprintf(format, a...))
	fmt.Fprintf(c.stderr, "usage: shmctl %s %s\n", cmd, lookup(cmd).usage)
	return exitUsage
}

// found is a region that resolve found.
type found struct {
	be   backend.Backend
	key  string
	info shm.Info
	err  error // what Stat said besides the Info (unreadable, not a region)
}

// resolve finds the backend that holds the region arg names (with an
// optional backend prefix), searching the backends selected.
func (c *cli) resolve(arg string, inspect bool) (found, error) {
	prefix, dir, key := splitKey(arg)
	var bs []backend.Backend
	var err error
	if dir != "" {
		var b backend.Backend
		b, err = c.newBackend("file", dir, inspect)
		bs = []backend.Backend{b}
	} else {
		bs, err = c.backends(prefix, inspect)
	}
	if err != nil {
		return found{}, err
	}
	var good, bad []found
	for _, b := range bs {
		in, err := shm.Stat(key, shm.WithBackend(b))
		if errors.Is(err, shm.ErrNotExist) && !errors.Is(err, fs.ErrPermission) {
			continue
		}
		if errors.Is(err, shm.ErrInvalidKey) {
			return found{}, usagef("%s", errLines(err)[0])
		}
		f := found{be: b, key: key, info: in, err: err}
		if err == nil {
			good = append(good, f)
		} else {
			bad = append(bad, f)
		}
	}
	switch {
	case len(good) == 1:
		return good[0], nil
	case len(good) > 1:
		var names []string
		for _, f := range good {
			names = append(names, f.be.Name())
		}
		return found{}, fmt.Errorf("%s: regions under this key on %s: choose one with --backend or a prefix (%s:%s)",
			esc(key), strings.Join(names, " and "), names[0], esc(key))
	case len(bad) > 0:
		return bad[0], nil
	}
	var names []string
	for _, b := range bs {
		names = append(names, b.Name())
	}
	return found{}, fmt.Errorf("%s (%s): %w", esc(key), strings.Join(names, ", "), shm.ErrNotExist)
}

// open attaches to the region arg names.
func (c *cli) open(arg string, inspect bool) (*shm.Region, error) {
	f, err := c.resolve(arg, inspect)
	if err != nil {
		return nil, err
	}
	if f.err != nil {
		return nil, f.err
	}
	return shm.Open(f.key, 0, shm.WithBackend(f.be))
}

// parseSize reads a size with an optional K, M or G (binary) suffix.
func parseSize(s string) (int, error) {
	mult := 1
	t := strings.TrimSuffix(strings.ToUpper(s), "B")
	t = strings.TrimSuffix(t, "I")
	switch {
	case strings.HasSuffix(t, "K"):
		mult, t = 1<<10, t[:len(t)-1]
	case strings.HasSuffix(t, "M"):
		mult, t = 1<<20, t[:len(t)-1]
	case strings.HasSuffix(t, "G"):
		mult, t = 1<<30, t[:len(t)-1]
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 1 {
		return 0, errors.New("want a positive number of bytes, with an optional K, M or G suffix")
	}
	if n > shm.MaxSize/int64(mult) {
		return 0, fmt.Errorf("larger than %d bytes", int64(shm.MaxSize))
	}
	return int(n) * mult, nil
}

// lookupOwner reads USER[:GROUP], each a name or a number. Without GROUP
// the group is left unchanged (-1).
func lookupOwner(s string) (uid, gid int, err error) {
	us, gs, hasGroup := strings.Cut(s, ":")
	uid, gid = -1, -1
	if us != "" {
		if uid, err = strconv.Atoi(us); err != nil {
			u, lerr := user.Lookup(us)
			if lerr != nil {
				return 0, 0, lerr
			}
			uid, _ = strconv.Atoi(u.Uid)
		}
	}
	if hasGroup && gs != "" {
		if gid, err = strconv.Atoi(gs); err != nil {
			g, lerr := user.LookupGroup(gs)
			if lerr != nil {
				return 0, 0, lerr
			}
			gid, _ = strconv.Atoi(g.Gid)
		}
	}
	return uid, gid, nil
}
