package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/sysv"
)

func init() {
	commands = []command{
		{name: "ls", args: "[PATTERN...]", summary: "list regions, like ipcs -m, with a STALE column", maxPos: -1, define: defineLs, long: `
Lists the regions of every backend (or of --backend B), like ipcs -m,
sorted by backend and key (--sort). A PATTERN (a shell glob: * ? [...])
keeps the regions whose key matches it, with or without its leading '/',
and may name a backend (sysv:/app-*).

Columns: BYTES is the size of the data, OBJBYTES that of the whole object
(the header, its table of users, and the data). NATTCH is the number of
processes that map the region ("N+" when some processes could not be
inspected, "?" when unknown). CPID and CREATOR: the creator's PID and
whether it lives. STATUS: ready, init (being initialised), temp (never
published), foreign (not a region of ours, with --all), unreadable (with
--all). LOCK: free, held:PID, dead:PID (its holder died; the next locker
repairs). A region is STALE
when its creator is dead and no process has it open or mapped: 'shmctl gc'
removes those.

Objects this user may not read are not shown; their number is printed on
stderr. --all also lists objects that are not regions of ours and those
that could not be read. Keys and names are printed with control and other
non-printable bytes escaped (\x1b, \n, \u202e, and \\ for a backslash);
--json gives them exactly. -h is --human here, as in ls(1) and df(1); use
--help for help.`},
		{name: "stat", args: "KEY | sysv:@SHMID", summary: "describe one region, and the processes that use it", maxPos: -1, define: defineStat, long: `
Describes the region under KEY: backend, data and object size, mode,
owner, creator PID and whether it lives, creation time, ready state, lock
state, the processes that map it or hold a descriptor of it (PID, command
and user, as lsof(8) shows them, from /proc/*/maps and /proc/*/fd: a
non-root user sees only its own processes), and whether it is stale (and
why). For a SysV segment it also gives the key_t, the shmid and the
kernel's creator and last-attach PIDs (IPC_STAT).

KEY may carry a backend prefix (sysv:/name); without one, every backend is
searched. A SysV segment may be named by its shmid, as ipcs(1) shows it:
sysv:@SHMID, or SHMID with --id; or by its key_t with --shmkey (as ipcrm -M).`},
		{name: "rm", args: "KEY...", summary: "remove stale regions (never one in use)", maxPos: -1, define: defineRm, long: `
Removes each KEY if it is stale: its creator is dead and no process has it
open or mapped. A region in use is never removed (exit status 1, with the
reason on stderr). To remove a live region, have its owner unlink it; to
remove an object that is not a region, use rm(1) or ipcrm(1).

A SysV segment may be named by its shmid (sysv:@SHMID, or --id as ipcrm -m)
or by its key_t (--shmkey, as ipcrm -M); it is removed only if it is a
stale region and still the segment under its region's key.`},
		{name: "gc", args: "", summary: "remove every stale region, printing each", maxPos: -1, define: defineGc, long: `
Removes every stale region on every backend (or --backend B), re-checking
each just before removing it, and prints one line per region removed
(--dry-run: would remove). Also removes regions whose creator died before
publishing them (temporary files). Safe to run from cron or a systemd
timer: a region in use is never removed.

A stale region that this user may not remove (another user's, for a
non-root gc) is reported on stderr ("may not remove ...") but does not make
gc fail: the exit status is 0 unless a region that it was entitled to
remove could not be removed, or a backend could not be listed (1).`},
		{name: "create", args: "KEY SIZE", summary: "create a region", maxPos: -1, define: defineCreate, long: `
Creates a region of SIZE data bytes (suffixes K, M, G: KiB, MiB, GiB) under
KEY, with the exact mode --mode whatever the umask, owned by --owner when
given. Without --hold, shmctl exits at once and the region is stale as soon
as no process maps it (its creator, shmctl, is gone). With --hold, shmctl
keeps it until SIGINT or SIGTERM and then removes it; memfd regions need
--hold, since they live only as long as their creator.`},
		{name: "dump", args: "KEY", summary: "print a region's data in hex and ASCII, like xxd", maxPos: -1, define: defineDump, long: `
Prints the region's data (not its header) from --offset for --len bytes in
the format of xxd(1): the offset, 16 bytes in hex, and in ASCII. A run of
identical lines is shown as one line, a '*', and the run's last line, as
xxd -a and hexdump(1) do; --verbose prints every line.

POSIX and file regions are read with pread(2) from a read-only descriptor:
read permission suffices, and the region is neither mapped nor written
(their data starts after the header, at the offset it records). SysV and
memfd regions have no file to read: they are attached read-only
(shm.WithReadOnly), which also needs only read permission.

--header prints the header instead, decoded as far as the library tells it
(shm.Stat): key, sizes, creator, creation time, ready state and lock word.`},
		{name: "lock", args: "KEY [--] CMD [ARG...]", summary: "run a command while holding the region's lock, like flock(1)", maxPos: 1, define: defineLock, long: `
Takes the region's lock, runs CMD, and releases the lock when CMD exits,
like flock(1). Everything after KEY is CMD and its arguments: "--" is
needed only when CMD starts with '-'. SIGINT, SIGTERM, SIGHUP and SIGQUIT
are passed on to CMD. CMD gets SHMCTL_KEY and SHMCTL_BACKEND in its
environment.

The lock belongs to shmctl, not to CMD (unlike flock(1), whose lock passes
with the descriptor): if shmctl dies, even by SIGKILL, the kernel kills CMD
too (SIGKILL, PR_SET_PDEATHSIG), so that CMD never runs unlocked; the next
locker then gets the lock with "the previous holder died". Processes that
CMD starts are not killed with it unless CMD arranges it.

When the previous holder died holding the lock, a warning is printed and
CMD runs with SHMCTL_OWNER_DEAD=1 in its environment; with --consistent,
the data is then marked consistent if CMD succeeds (CMD is expected to have
repaired it).

Exit status:
  CMD's status, or 128+N when CMD was killed by signal N
  75     the lock is busy: held (--nonblock, --timeout 0) or not had in
         time (--timeout); -E N chooses another status for this case
         (flock(1) exits with 1 here: -E 1 does the same)
  1      another failure (no such region, ...)
  2      a usage error
  126    CMD was found but could not be run
  127    CMD was not found (flock(1) exits with 69 here; shmctl does as
         sh(1), env(1) and timeout(1) do)`},
		{name: "completion", args: "bash|zsh", summary: "print a shell completion script", maxPos: -1, define: defineCompletion, long: `
Prints a completion script for bash or zsh, which completes commands,
options, backends and the keys of existing regions. Load it with:

  source <(shmctl completion bash)        # in ~/.bashrc
  shmctl completion zsh > ~/.zsh/completions/_shmctl   # a directory of $fpath`},
		{name: "man", args: "", summary: "print the manual page (roff)", maxPos: -1, define: defineMan, long: `
Prints shmctl's manual page in roff, from the same text as its help:

  shmctl man | man -l -
  shmctl man > /usr/local/share/man/man1/shmctl.1`},
		{name: "version", args: "", summary: "print shmctl's version (also --version)", maxPos: -1, define: defineVersion, long: `
Prints the module version that shmctl was built from ("(devel)" for a
build from a work tree), the VCS revision when recorded, and the Go
version and platform.`},
	}
}

func defineVersion(c *cli, s *optSet) runner {
	return func(pos, _ []string) int {
		if len(pos) > 0 {
			return c.usageErr("version", "unexpected argument %s", quoteArg(pos[0]))
		}
		fmt.Fprintln(c.stdout, versionString())
		return exitOK
	}
}

// lsOpts are the options of ls.
type lsOpts struct {
	all, asJSON, human, staleOnly, reverse, keys bool
	owner                                        int // -1: any
	sortBy                                       string
	patterns                                     []string
}

var sortFields = []string{"backend", "key", "size", "owner", "created"}

func defineLs(c *cli, s *optSet) runner {
	all := s.Bool("all", 'a', "also list objects that are not regions, and those that could not be read")
	human := s.Bool("human", 'h', "print sizes in powers of 1024 (4K, 1.5M), as ipcs --human")
	owner := s.String("owner", 'u', "USER", "", "only the regions that USER (a name or a uid) owns")
	staleOnly := s.Bool("stale", 0, "only the stale regions (those that gc removes)")
	sortBy := s.String("sort", 0, "FIELD", "", "sort by "+strings.Join(sortFields, ", ")+" (default: backend, then key)")
	reverse := s.Bool("reverse", 'r', "reverse the order")
	asJSON := s.Bool("json", 0, "print a JSON array ('shmctl help json' gives the schema)")
	keys := s.Bool("keys", 0, "print only the keys, one a line")
	interval := s.Seconds("interval", 0, "list again every SECONDS until interrupted, like watch(1)")
	count := s.Int("count", 0, "N", 0, false, "with --interval: stop after N lists")
	c.common(s, optsSearch)
	return func(pos, _ []string) int {
		o := lsOpts{all: *all, asJSON: *asJSON, human: *human, staleOnly: *staleOnly, reverse: *reverse, keys: *keys, owner: -1, sortBy: *sortBy}
		for _, p := range pos {
			if _, err := path.Match(p, ""); err != nil {
				return c.usageErr("ls", "bad PATTERN %s: %v", quoteArg(p), err)
			}
			o.patterns = append(o.patterns, p)
		}
		if *owner != "" {
			uid, _, err := lookupOwner(*owner)
			if err != nil || uid < 0 {
				return c.usageErr("ls", "bad --owner %s: no such user", quoteArg(*owner))
			}
			o.owner = uid
		}
		if o.sortBy != "" && !contains(sortFields, o.sortBy) {
			return c.usageErr("ls", "bad --sort %s: want one of %s", quoteArg(o.sortBy), strings.Join(sortFields, ", "))
		}
		if *asJSON && *keys {
			return c.usageErr("ls", "--json and --keys exclude each other")
		}
		if *interval < 0 {
			if *count != 0 {
				return c.usageErr("ls", "--count needs --interval")
			}
			return c.lsOnce(o)
		}
		if *interval == 0 {
			return c.usageErr("ls", "--interval must be more than 0 seconds")
		}
		return c.lsWatch(o, *interval, int(*count))
	}
}

// lsWatch lists every interval until SIGINT or SIGTERM (exit status 0),
// or count times, like watch(1): on a terminal, each list replaces the
// last one.
func (c *cli) lsWatch(o lsOpts, interval time.Duration, count int) int {
	ctx, stop := signal.NotifyContext(c.ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	tty := isTerminal(c.stdout)
	status := exitOK
	for n := 0; count <= 0 || n < count; n++ {
		if n > 0 {
			t := time.NewTimer(interval)
			select {
			case <-ctx.Done():
				t.Stop()
				return exitOK
			case <-t.C:
			}
		}
		if !o.asJSON && !o.keys {
			if tty {
				fmt.Fprint(c.stdout, "\x1b[H\x1b[2J") // home, clear
			} else if n > 0 {
				fmt.Fprintln(c.stdout)
			}
			fmt.Fprintf(c.stdout, "Every %v: shmctl ls%s\t%s\n\n", interval, describeLs(o), time.Now().Format(time.DateTime))
		}
		status = c.lsOnce(o)
	}
	return status
}

func describeLs(o lsOpts) string {
	var b strings.Builder
	if o.staleOnly {
		b.WriteString(" --stale")
	}
	for _, p := range o.patterns {
		b.WriteString(" " + esc(p))
	}
	return b.String()
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func (c *cli) lsOnce(o lsOpts) int {
	bs, err := c.backends("", true)
	if err != nil {
		return c.fail("ls", err)
	}
	opts := []shm.ListOption{shm.ListBackends(bs...)}
	if o.all {
		opts = append(opts, shm.ListForeign())
	}
	infos, lerr := shm.List(c.ctx, opts...)
	var shown []shm.Info
	unreadable := 0
	for _, in := range infos {
		if !o.match(in) {
			continue
		}
		if in.Err != nil {
			unreadable++
			if !o.all {
				continue
			}
		}
		if o.staleOnly && !in.Stale {
			continue
		}
		shown = append(shown, in)
	}
	o.sort(shown)
	switch {
	case o.asJSON:
		err = writeJSON(c.stdout, toJSON(shown))
	case o.keys:
		seen := map[string]bool{}
		for _, in := range shown {
			if in.Key != "" && !seen[in.Key] {
				seen[in.Key] = true
				fmt.Fprintln(c.stdout, esc(in.Key))
			}
		}
	default:
		err = writeTable(c.stdout, shown, o.human)
	}
	if err != nil {
		return c.fail("ls", err)
	}
	if unreadable > 0 {
		what := "objects"
		if unreadable == 1 {
			what = "object"
		}
		fmt.Fprintf(c.stderr, "shmctl ls: %d %s could not be read (permission denied, an owner that did not answer, or being removed); they may be regions of other users: run as root or as their owner to see them\n", unreadable, what)
	}
	if lerr != nil {
		return c.fail("ls", lerr)
	}
	return exitOK
}

// match reports whether in passes the patterns and --owner.
func (o lsOpts) match(in shm.Info) bool {
	if o.owner >= 0 && in.UID != o.owner {
		return false
	}
	if len(o.patterns) == 0 {
		return true
	}
	for _, p := range o.patterns {
		prefix, _, pat := splitKey(p)
		if prefix != "" && prefix != in.Backend {
			continue
		}
		k := in.Key
		if !strings.HasPrefix(pat, "/") {
			k = strings.TrimPrefix(k, "/")
		}
		if ok, _ := path.Match(pat, k); ok {
			return true
		}
	}
	return false
}

func (o lsOpts) sort(infos []shm.Info) {
	less := func(a, b shm.Info) bool { return false } // List's order
	switch o.sortBy {
	case "key":
		less = func(a, b shm.Info) bool { return a.Key < b.Key }
	case "size":
		less = func(a, b shm.Info) bool { return a.Size < b.Size }
	case "owner":
		less = func(a, b shm.Info) bool { return userName(a.UID) < userName(b.UID) }
	case "created":
		less = func(a, b shm.Info) bool { return a.Created.Before(b.Created) }
	case "backend":
		less = func(a, b shm.Info) bool { return a.Backend < b.Backend }
	}
	sort.SliceStable(infos, func(i, j int) bool { return less(infos[i], infos[j]) })
	if o.reverse {
		for i, j := 0, len(infos)-1; i < j; i, j = i+1, j-1 {
			infos[i], infos[j] = infos[j], infos[i]
		}
	}
}

// idOpts adds --id and --shmkey, which make the positional arguments SysV
// shmids or key_ts, and returns what turns the arguments into KEYs.
func idOpts(s *optSet) func(args []string) ([]string, error) {
	byID := s.Bool("id", 0, "the arguments are SysV shmids, as ipcs shows them (as ipcrm -m): the same as sysv:@SHMID")
	byKey := s.Bool("shmkey", 0, "the arguments are SysV keys (key_t: 0x1234abcd or decimal, as ipcrm -M)")
	return func(args []string) ([]string, error) {
		switch {
		case *byID && *byKey:
			return nil, usagef("--id and --shmkey exclude each other")
		case *byID:
			out := make([]string, len(args))
			for i, a := range args {
				if !isDigits(a) {
					return nil, usagef("bad shmid %s: want a number", quoteArg(a))
				}
				out[i] = "sysv:@" + a
			}
			return out, nil
		case *byKey:
			out := make([]string, len(args))
			for i, a := range args {
				k, err := strconv.ParseInt(a, 0, 64)
				if err != nil || k < -1<<31 || k >= 1<<32 {
					return nil, usagef("bad key_t %s: want a 32-bit number (0x1234abcd or decimal)", quoteArg(a))
				}
				id, err := shmidOfKey(int32(k))
				if err != nil {
					return nil, err
				}
				out[i] = "sysv:@" + id
			}
			return out, nil
		}
		return args, nil
	}
}

func defineStat(c *cli, s *optSet) runner {
	asJSON := s.Bool("json", 0, "print JSON ('shmctl help json' gives the schema)")
	ids := idOpts(s)
	c.common(s, optsSearch)
	return func(pos, _ []string) int {
		if len(pos) != 1 {
			return c.usageErr("stat", "want exactly one KEY")
		}
		args, err := ids(pos)
		if err != nil {
			return c.fail("stat", err)
		}
		f, err := c.resolve(args[0], true)
		if err != nil {
			return c.fail("stat", err)
		}
		if f.err != nil && f.info.Backend == "" {
			return c.fail("stat", f.err)
		}
		x := c.extras(f)
		if *asJSON {
			err = writeJSON(c.stdout, statJSON(f.info, x))
		} else {
			err = writeStat(c.stdout, f.info, x)
		}
		if err != nil {
			return c.fail("stat", err)
		}
		if f.err != nil {
			return c.fail("stat", f.err)
		}
		return exitOK
	}
}

func defineRm(c *cli, s *optSet) runner {
	verbose := s.Bool("verbose", 'v', "print each region removed")
	ids := idOpts(s)
	c.common(s, optsSearch)
	return func(pos, _ []string) int {
		if len(pos) == 0 {
			return c.usageErr("rm", "want at least one KEY")
		}
		args, err := ids(pos)
		if err != nil {
			return c.fail("rm", err)
		}
		status := exitOK
		for _, arg := range args {
			f, err := c.resolve(arg, true)
			if err == nil && f.err != nil {
				err = f.err
			}
			if err == nil {
				err = f.sameSegment()
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
}

func defineGc(c *cli, s *optSet) runner {
	dry := s.Bool("dry-run", 'n', "print what would be removed, remove nothing")
	asJSON := s.Bool("json", 0, "print a JSON array of the regions removed ('shmctl help json')")
	c.common(s, optsSearch)
	return func(pos, _ []string) int {
		if len(pos) > 0 {
			return c.usageErr("gc", "unexpected argument %s", quoteArg(pos[0]))
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

func defineCreate(c *cli, s *optSet) runner {
	mode := s.String("mode", 'm', "MODE", "0600", "permission bits, in octal, applied exactly whatever the umask")
	owner := s.String("owner", 0, "USER[:GROUP]", "", "chown the region to USER and GROUP (names or numbers)")
	hold := s.Bool("hold", 0, "keep the region until SIGINT or SIGTERM, then remove it")
	c.common(s, optsCreate)
	return func(pos, _ []string) int {
		if len(pos) != 2 {
			return c.usageErr("create", "want KEY and SIZE")
		}
		if len(c.sel) > 1 {
			return c.usageErr("create", "want one --backend")
		}
		prefix, keyDir, key := splitKey(pos[0])
		sel := prefix
		if sel == "" && len(c.sel) == 1 {
			sel = c.sel[0]
		} else if len(c.sel) == 1 && c.sel[0] != sel {
			return c.usageErr("create", "key names backend %s but --backend is %s", sel, c.sel[0])
		}
		if sel == "" {
			sel = "posix"
		}
		if sel == "file" && keyDir == "" && len(c.dirs) > 1 {
			return c.usageErr("create", "the file backend takes one --dir DIR")
		}
		if sel == "memfd" && !*hold {
			return c.usageErr("create", "a memfd region lives only as long as its creator: use --hold")
		}
		size, err := parseSize(pos[1])
		if err != nil {
			return c.usageErr("create", "bad SIZE %s: %v", quoteArg(pos[1]), err)
		}
		perm, err := strconv.ParseUint(*mode, 8, 32)
		if err != nil || perm > 0o777 {
			return c.usageErr("create", "bad --mode %s: want octal permission bits such as 0640", quoteArg(*mode))
		}
		uid, gid := -1, -1
		if *owner != "" {
			if uid, gid, err = lookupOwner(*owner); err != nil {
				return c.usageErr("create", "bad --owner %s: %v", quoteArg(*owner), err)
			}
		}
		// The factory's argument: the key's directory, or file's --dir;
		// file's own default (FileDir, made if missing) otherwise.
		dir := keyDir
		if sel == "file" && dir == "" && len(c.dirs) > 0 {
			dir = c.dirs[0]
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
}

func defineDump(c *cli, s *optSet) runner {
	offset := s.Int("offset", 's', "N", 0, false, "start at data byte N (default 0)")
	length := s.Int("len", 'l', "N", -1, false, "print N bytes (default: to the end)")
	verbose := s.Bool("verbose", 'v', "print every line: do not collapse identical lines into '*'")
	header := s.Bool("header", 0, "print the region's header, decoded, instead of its data")
	c.common(s, optsSearch)
	return func(pos, _ []string) int {
		if len(pos) != 1 {
			return c.usageErr("dump", "want exactly one KEY")
		}
		if *offset < 0 {
			return c.usageErr("dump", "--offset must not be negative")
		}
		if *length < -1 {
			return c.usageErr("dump", "--len must not be negative")
		}
		f, err := c.resolve(pos[0], true)
		if err == nil && f.err != nil {
			err = f.err
		}
		if err != nil {
			return c.fail("dump", err)
		}
		if *header {
			if err := writeHeader(c.stdout, f.info); err != nil {
				return c.fail("dump", err)
			}
			return exitOK
		}
		if err := c.dump(f, *offset, *length, !*verbose); err != nil {
			return c.fail("dump", err)
		}
		return exitOK
	}
}

func defineLock(c *cli, s *optSet) runner {
	nonblock := s.Bool("nonblock", 'n', "fail at once if the lock is held (as --timeout 0)")
	timeout := s.Seconds("timeout", 'w', "give up after SECONDS (1.5, or a duration: 200ms); 0: do not wait (default: wait as long as it takes)")
	conflict := s.Int("conflict-exit-code", 'E', "N", exitBusy, true, "exit status when the lock is busy: held, or not had in time")
	command := s.String("command", 'c', "COMMAND", "", "run COMMAND with sh -c, instead of CMD [ARG...]")
	consistent := s.Bool("consistent", 0, "after a holder died, mark the data consistent when CMD succeeds")
	c.common(s, optsSearch)
	return func(pos, argv []string) int {
		if *conflict < 0 || *conflict > 255 {
			return c.usageErr("lock", "bad --conflict-exit-code %d: want 0 to 255", *conflict)
		}
		if len(pos) != 1 {
			return c.usageErr("lock", "want KEY and CMD [ARG...], or KEY -c COMMAND")
		}
		if *command != "" {
			if len(argv) > 0 {
				return c.usageErr("lock", "want CMD [ARG...] or -c COMMAND, not both")
			}
			argv = []string{"sh", "-c", *command}
		}
		if len(argv) == 0 {
			return c.usageErr("lock", "want KEY and CMD [ARG...], or KEY -c COMMAND")
		}
		// Before taking the lock: a command that cannot run needs no lock.
		path, err := exec.LookPath(argv[0])
		if err != nil {
			if errors.Is(err, exec.ErrNotFound) {
				fmt.Fprintf(c.stderr, "shmctl lock: %s: command not found\n", esc(argv[0]))
				return exitNotFound
			}
			fmt.Fprintf(c.stderr, "shmctl lock: %s\n", escText(err.Error()))
			return exitCannotRun
		}
		r, f, err := c.open(pos[0], false)
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
		if *nonblock || *timeout == 0 {
			l, err = r.TryLock()
		} else {
			l, err = r.LockContext(ctx)
		}
		ownerDead := errors.Is(err, shm.ErrOwnerDead)
		switch {
		case errors.Is(err, shm.ErrLocked):
			fmt.Fprintf(c.stderr, "shmctl lock: %s (%s): lock is held%s\n", esc(r.Key()), r.Backend(), holderNote(f))
			return int(*conflict)
		case errors.Is(err, shm.ErrTimeout):
			fmt.Fprintf(c.stderr, "shmctl lock: %s (%s): timed out after %v waiting for the lock%s\n", esc(r.Key()), r.Backend(), *timeout, holderNote(f))
			return int(*conflict)
		case err != nil && !ownerDead:
			return c.fail("lock", err)
		}
		cancel() // stops the goroutine above; the lock is held
		defer l.Unlock()
		env := os.Environ()
		if ownerDead {
			fmt.Fprintf(c.stderr, "shmctl lock: %s (%s): the previous holder died holding the lock; the data may be inconsistent\n", esc(r.Key()), r.Backend())
			env = append(env, "SHMCTL_OWNER_DEAD=1")
		}
		cmd := &exec.Cmd{Path: path, Args: argv}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, c.stdout, c.stderr
		cmd.Env = append(env, "SHMCTL_KEY="+r.Key(), "SHMCTL_BACKEND="+r.Backend())
		started, waited := startDying(cmd)
		if err := <-started; err != nil {
			fmt.Fprintf(c.stderr, "shmctl lock: %s\n", escText(err.Error()))
			return exitCannotRun
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
}

// holderNote names the lock's holder for a "lock is held" message.
func holderNote(f found) string {
	in, err := shm.Stat(f.key, shm.WithBackend(f.be))
	if err != nil || in.Lock.State == shm.LockFree {
		return ""
	}
	return " (" + in.Lock.String() + ")"
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

// found is a region that resolve found.
type found struct {
	be   backend.Backend
	key  string
	info shm.Info
	err  error // what Stat said besides the Info (unreadable, not a region)
	// shmid is set when the region was named by its SysV shmid.
	shmid string
}

// resolve finds the backend that holds the region arg names (with an
// optional backend prefix, or sysv:@SHMID), searching the backends
// selected.
func (c *cli) resolve(arg string, inspect bool) (found, error) {
	prefix, dir, key := splitKey(arg)
	if prefix == "sysv" && strings.HasPrefix(key, "@") && isDigits(key[1:]) {
		return c.resolveID(key[1:])
	}
	var bs []backend.Backend
	var err error
	if dir != "" {
		var b backend.Backend
		b, err = c.newBackend(prefix, dir, inspect)
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

// resolveID finds the SysV segment with the given shmid.
func (c *cli) resolveID(id string) (found, error) {
	if len(c.sel) > 0 && !contains(c.sel, "sysv") {
		return found{}, usagef("sysv:@%s names a SysV segment but --backend is %s", id, strings.Join(c.sel, ","))
	}
	be := sysv.New()
	infos, err := shm.List(c.ctx, shm.ListBackends(be), shm.ListForeign())
	for _, in := range infos {
		if in.ID != id {
			continue
		}
		f := found{be: be, key: in.Key, info: in, shmid: id}
		switch {
		case in.Err != nil:
			f.err = &shm.Error{Op: "stat", Key: "@" + id, Backend: "sysv", Err: in.Err}
		case in.Foreign:
			f.err = &shm.Error{Op: "stat", Key: "@" + id, Backend: "sysv",
				Err: fmt.Errorf("%s (remove it with ipcrm -m %s if it is yours): %w", in.Reason, id, shm.ErrCorrupt)}
		}
		return f, nil
	}
	if err != nil {
		return found{}, err
	}
	return found{}, &shm.Error{Op: "stat", Key: "@" + id, Backend: "sysv", Err: fmt.Errorf("no segment with shmid %s: %w", id, shm.ErrNotExist)}
}

// sameSegment checks, for a region named by its shmid, that its key still
// names that segment: shm.Remove and shm.Open find SysV regions by key,
// and the public API has no way to reach a segment by shmid.
func (f found) sameSegment() error {
	if f.shmid == "" {
		return nil
	}
	st, err := sysv.New().Stat(strings.TrimPrefix(f.key, "/"))
	if err == nil && strconv.Itoa(st.ID) == f.shmid {
		return nil
	}
	now := "no segment"
	if err == nil {
		now = "segment " + strconv.Itoa(st.ID)
	}
	return &shm.Error{Op: "remove", Key: "@" + f.shmid, Backend: "sysv",
		Err: fmt.Errorf("the segment's header names key %s, which now names %s: left alone", esc(f.key), now)}
}

// open attaches to the region arg names.
func (c *cli) open(arg string, inspect bool) (*shm.Region, found, error) {
	f, err := c.resolve(arg, inspect)
	if err != nil {
		return nil, f, err
	}
	if f.err != nil {
		return nil, f, f.err
	}
	if err := f.sameSegment(); err != nil {
		return nil, f, err
	}
	r, err := shm.Open(f.key, 0, shm.WithBackend(f.be))
	return r, f, err
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// shmidOfKey returns the shmid of the SysV segment with key_t k.
func shmidOfKey(k int32) (string, error) {
	be := sysv.New()
	infos, err := be.List()
	if err != nil {
		return "", err
	}
	for _, bi := range infos {
		st, err := be.StatID(bi.ID)
		if err == nil && int32(st.Key) == k {
			return bi.ID, nil
		}
	}
	return "", &shm.Error{Op: "stat", Key: fmt.Sprintf("0x%08x", uint32(k)), Backend: "sysv", Err: fmt.Errorf("no segment with this key_t: %w", shm.ErrNotExist)}
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
