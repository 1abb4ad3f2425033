// Command shmctl lists, inspects, creates, locks and cleans up the
// shared-memory regions of package github.com/shmgo/shm on every backend
// (POSIX /dev/shm, SysV, memfd, and files in the directories given with
// --dir). It tells a live region from a stale one (its creator is dead and
// no process uses it) and removes only stale ones, so that it can run from
// cron or a systemd timer after crashes, instead of ipcrm or rm /dev/shm/*
// by hand.
//
//	shmctl ls [-a] [-h] [--json] [--stale] [--owner USER] [--sort FIELD] [PATTERN...]
//	shmctl stat [--json] KEY | sysv:@SHMID
//	shmctl rm [-v] KEY...
//	shmctl gc [--dry-run] [--json]
//	shmctl create [--mode 0600] [--owner USER[:GROUP]] [--hold] KEY SIZE
//	shmctl dump [-s OFFSET] [-l LEN] [-v] [--header] KEY
//	shmctl lock [-n] [-w SECONDS] [-E N] KEY CMD [ARG...]
//	shmctl completion bash|zsh
//	shmctl man
//
// A KEY may name its backend with a prefix ("sysv:/name"); otherwise
// --backend chooses, and without either, every backend is searched (and
// create uses posix). Exit status: 0 on success, 1 on failure, 2 on a usage
// error; lock exits with the command's status. "shmctl help" and "shmctl
// man" say the rest.
//
// It parses its arguments itself (opts.go), in the GNU style (--name,
// --name=VALUE, -n, clusters such as -nv), with options and positional
// arguments in any order: the standard library's flag package shows -name
// in its help and has no one-letter aliases, and the module takes no
// dependency for this.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/file"
	"github.com/shmgo/shm/backend/memfd"
	"github.com/shmgo/shm/backend/posix"
)

// Exit statuses, as the classic tools use them.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
	// lock: the lock is busy (held, or not had in time): EX_TEMPFAIL of
	// sysexits.h, "try again later", so that a script tells it from a
	// failure; flock(1) exits with 1 here (-E 1 does the same).
	exitBusy = 75
	// lock: CMD found but not executable, and CMD not found, as sh(1),
	// env(1) and timeout(1) report them.
	exitCannotRun = 126
	exitNotFound  = 127
)

// builtinOrder is the order in which shmctl searches the built-in backends.
var builtinOrder = []string{"posix", "sysv", "memfd", "file"}

// backendNames returns the registered backends (backend.Names) in the
// order shmctl searches them: the built-in ones, then any other that this
// binary registers (a shmctl built with a third-party backend), by name.
func backendNames() []string {
	names := backend.Names()
	out := make([]string, 0, len(names))
	for _, n := range builtinOrder {
		if slices.Contains(names, n) {
			out = append(out, n)
		}
	}
	for _, n := range names {
		if !slices.Contains(builtinOrder, n) {
			out = append(out, n)
		}
	}
	return out
}

// runner runs a command on its positional arguments; rest is what follows
// the command's last positional argument (lock: CMD and its arguments).
type runner func(pos, rest []string) int

type command struct {
	name    string
	args    string // the arguments, after "shmctl NAME [OPTIONS] "
	summary string
	long    string // the help's text, paragraphs separated by blank lines
	// maxPos: the positional arguments after which the rest is returned
	// as it is (lock: 1, KEY), or -1.
	maxPos int
	// define adds the command's options to s and returns its body.
	define func(c *cli, s *optSet) runner
}

var commands []command

// cli is one run of the command: where it writes, and the options every
// subcommand shares.
type cli struct {
	stdout, stderr io.Writer
	ctx            context.Context

	sel    []string // --backend, repeatable: the backends chosen
	dirs   []string // --dir, repeatable: file backend directories
	shmDir string   // --shm-dir: the POSIX directory
}

func main() {
	c := &cli{stdout: os.Stdout, stderr: os.Stderr, ctx: context.Background()}
	os.Exit(c.main(os.Args[1:]))
}

func (c *cli) main(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(c.stderr, "usage: shmctl COMMAND [OPTIONS] [ARGS]")
		fmt.Fprintln(c.stderr, "Run 'shmctl help' for the commands.")
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		if args[0] == "help" && len(args) > 1 {
			if topicHelp(c.stdout, args[1]) {
				return exitOK
			}
			cmd := lookup(args[1])
			if cmd == nil {
				return c.usageErr("", "no help for %q: not a command nor a topic (keys, json, exit)", args[1])
			}
			c.cmdHelp(c.stdout, cmd)
			return exitOK
		}
		c.help(c.stdout)
		return exitOK
	case "-V", "--version", "-version":
		fmt.Fprintln(c.stdout, versionString())
		return exitOK
	}
	cmd := lookup(args[0])
	if cmd == nil {
		if strings.HasPrefix(args[0], "-") {
			return c.usageErr("", "unknown option %s (options follow the command)", quoteArg(args[0]))
		}
		return c.usageErr("", "unknown command %q", args[0])
	}
	s := newOptSet(cmd.name)
	run := cmd.define(c, s)
	pos, rest, err := s.parse(args[1:], cmd.maxPos)
	if s.help {
		c.cmdHelp(c.stdout, cmd)
		return exitOK
	}
	if err != nil {
		return c.fail(cmd.name, err)
	}
	return run(pos, rest)
}

func lookup(name string) *command {
	for i := range commands {
		if commands[i].name == name {
			return &commands[i]
		}
	}
	return nil
}

// quoteArg quotes a command-line argument for a message when it needs it.
func quoteArg(a string) string {
	if needsEscape(a, false, true) {
		return fmt.Sprintf("%q", a)
	}
	return a
}

// versionString is shmctl's version: the module's, as "go install
// ...@version" records it, or "(devel)"; with the VCS revision when the
// build recorded one.
func versionString() string {
	v, rev, dirty := "(devel)", "", false
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	out := "shmctl " + v
	if rev != "" && !strings.Contains(v, rev[:min(12, len(rev))]) {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if dirty {
			rev += ", modified"
		}
		out += " (" + rev + ")"
	}
	return out + " " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
}

// usageError is a bad command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// usageErr reports a bad command line in one line, with a hint, and
// returns exit status 2.
func (c *cli) usageErr(cmd, format string, a ...any) int {
	return c.fail(cmd, usagef(format, a...))
}

// fail reports err on stderr and returns its exit status: 2, with a hint,
// for a usage error, else 1.
func (c *cli) fail(cmd string, err error) int {
	prefix := "shmctl: "
	if cmd != "" {
		prefix = "shmctl " + cmd + ": "
	}
	for _, l := range errLines(err) {
		fmt.Fprintf(c.stderr, "%s%s\n", prefix, l)
	}
	var ue *usageError
	if errors.As(err, &ue) {
		if cmd == "" {
			fmt.Fprintln(c.stderr, "Run 'shmctl help' for usage.")
		} else {
			fmt.Fprintf(c.stderr, "Run 'shmctl help %s' for usage.\n", cmd)
		}
		return exitUsage
	}
	return exitFail
}

// Which shared options a command takes.
const (
	optsSearch = iota // --backend chooses where to look
	optsCreate        // --backend chooses the one to create on
)

// common adds the options that select backends and their directories.
func (c *cli) common(s *optSet, kind int) {
	help := "only look at backend B: " + strings.Join(backendNames(), ", ") + " (repeatable, or B,B; default: all)"
	if kind == optsCreate {
		help = "create the region on backend B: " + strings.Join(backendNames(), ", ") + " (default posix)"
	}
	s.Func("backend", 0, "B", help, func(v string) error {
		for _, b := range strings.Split(v, ",") {
			if b = strings.TrimSpace(b); b == "" {
				continue
			}
			if _, ok := backend.Lookup(b); !ok {
				return fmt.Errorf("unknown backend (want one of %s)", strings.Join(backendNames(), ", "))
			}
			c.sel = append(c.sel, b)
		}
		return nil
	})
	s.Func("dir", 0, "DIR", "a directory of file-backend regions (repeatable; default: the library's default ones)", func(v string) error {
		c.dirs = append(c.dirs, v)
		return nil
	})
	s.Func("shm-dir", 0, "DIR", "the directory of POSIX shared memory (default "+posix.DefaultDir+")", func(v string) error {
		c.shmDir = v
		return nil
	})
}

// newBackend makes the registered backend called name from its factory's
// argument arg (a directory, for posix and file: see backend.Factory);
// posix's is --shm-dir when arg is "". inspect selects a memfd backend that
// accepts a descriptor from any server: shmctl then only reads headers and
// data, it does not trust them.
func (c *cli) newBackend(name string, arg string, inspect bool) (backend.Backend, error) {
	f, ok := backend.Lookup(name)
	if !ok {
		return nil, usagef("unknown backend %q (want one of %s)", name, strings.Join(backendNames(), ", "))
	}
	switch {
	case name == "posix" && arg == "":
		arg = c.shmDir
	case name == "memfd" && arg == "" && inspect:
		return memfd.New(memfd.WithAnyServer()), nil
	}
	be, err := f(arg)
	if errors.Is(err, fs.ErrInvalid) {
		return nil, usagef("%v", err)
	}
	return be, err
}

// backends returns the backends selected by --backend, --dir and a key's
// prefix (prefix may be ""): all of them when none is chosen. The file
// backend is included once per directory of fileDirs.
func (c *cli) backends(prefix string, inspect bool) ([]backend.Backend, error) {
	names := c.sel
	if prefix != "" {
		if len(c.sel) > 0 && !contains(c.sel, prefix) {
			return nil, usagef("key names backend %s but --backend is %s", prefix, strings.Join(c.sel, ","))
		}
		names = []string{prefix}
	}
	if len(names) == 0 {
		names = backendNames()
	}
	var out []backend.Backend
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] {
			continue
		}
		seen[n] = true
		if n == "file" {
			for _, d := range c.fileDirs() {
				b, err := c.newBackend("file", d, inspect)
				if err != nil {
					return nil, err
				}
				out = append(out, b)
			}
			continue
		}
		b, err := c.newBackend(n, "", inspect)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// fileDirs returns the directories of the file backend to look at: the
// --dir ones, or else the library's default ones that exist.
func (c *cli) fileDirs() []string {
	if len(c.dirs) > 0 {
		return c.dirs
	}
	var out []string
	for _, b := range shm.DefaultBackends() {
		if fb, ok := b.(*file.Backend); ok {
			if st, err := os.Stat(fb.Dir()); err == nil && st.IsDir() {
				out = append(out, fb.Dir())
			}
		}
	}
	return out
}

// splitKey separates a backend prefix ("sysv:/name", "posix:name",
// "file:/dir/name") from a key, as package shm does. Only the names of
// registered backends count as prefixes. A directory ("file:/dir/name",
// "posix:/dir/name": what lies between the ':' and the key's last '/', when
// absolute) goes to dir, the factory's argument, and the key is "/name".
func splitKey(arg string) (prefix, dir, key string) {
	i := strings.IndexByte(arg, ':')
	if i <= 0 || strings.Contains(arg[:i], "/") {
		return "", "", arg
	}
	p, rest := arg[:i], arg[i+1:]
	if _, ok := backend.Lookup(p); !ok {
		return "", "", arg
	}
	if j := strings.LastIndexByte(rest, '/'); j > 0 && rest[0] == '/' {
		return p, rest[:j], rest[j:]
	}
	return p, "", rest
}
