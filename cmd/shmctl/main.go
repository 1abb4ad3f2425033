// Command shmctl lists, inspects, creates and cleans up the shared-memory
// regions of package github.com/shmgo/shm on every backend (POSIX /dev/shm,
// SysV, memfd, and files in the directories given with --dir). It tells a
// live region from a stale one (its creator is dead and no process uses
// it) and removes only stale ones, so that it can run from cron or a
// systemd timer after crashes, instead of ipcrm or rm /dev/shm/* by hand.
//
//	shmctl ls [--backend B] [--all] [--json]
//	shmctl stat KEY [--json]
//	shmctl rm KEY...
//	shmctl gc [--dry-run]
//	shmctl create KEY SIZE [--mode 0600] [--backend B] [--owner U[:G]] [--hold]
//	shmctl dump KEY [--offset N] [--len N]
//	shmctl lock KEY [--timeout D] -- CMD [ARG...]
//
// A KEY may name its backend with a prefix ("sysv:/name"); otherwise
// --backend chooses, and without either, every backend is searched (and
// create uses posix). Exit status: 0 on success, 1 on failure, 2 on a usage
// error; lock exits with the command's status.
//
// It parses its arguments with the standard library's flag package, one
// FlagSet per subcommand: the flags are few and simple, flag gives -h and
// --help, and the module takes no dependency for it. Flags may follow the
// positional arguments ("stat /key --json").
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/file"
	"github.com/shmgo/shm/backend/memfd"
	"github.com/shmgo/shm/backend/posix"
	"github.com/shmgo/shm/backend/sysv"
)

// Exit statuses, as the classic tools use them.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// backendNames are the backends shmctl knows, in the order it searches.
var backendNames = []string{"posix", "sysv", "memfd", "file"}

type command struct {
	name    string
	usage   string // after "shmctl NAME "
	summary string
	run     func(c *cli, args []string) int
}

var commands []command

func init() {
	commands = []command{
		{"ls", "[--backend B] [--all] [--json]", "list regions, with a STALE column", cmdLs},
		{"stat", "KEY [--json]", "describe one region", cmdStat},
		{"rm", "KEY...", "remove stale regions (never one in use)", cmdRm},
		{"gc", "[--dry-run] [--json]", "remove every stale region, printing each", cmdGc},
		{"create", "KEY SIZE [--mode 0600] [--backend B] [--owner USER[:GROUP]] [--hold]", "create a region", cmdCreate},
		{"dump", "KEY [--offset N] [--len N]", "print a region's data in hex and ASCII, like xxd", cmdDump},
		{"lock", "KEY [--timeout D] [--nonblock] [--consistent] -- CMD [ARG...]", "run a command while holding the region's lock, like flock(1)", cmdLock},
	}
}

// cli is one run of the command: where it writes, and the options every
// subcommand shares.
type cli struct {
	stdout, stderr io.Writer
	ctx            context.Context

	backend string   // --backend
	dirs    []string // --dir, repeatable: file backend directories
	shmDir  string   // --shm-dir: the POSIX directory
}

func main() {
	c := &cli{stdout: os.Stdout, stderr: os.Stderr, ctx: context.Background()}
	os.Exit(c.main(os.Args[1:]))
}

func (c *cli) main(args []string) int {
	if len(args) == 0 {
		c.usage(c.stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		if len(args) > 1 && args[0] == "help" {
			if cmd := lookup(args[1]); cmd != nil {
				return cmd.run(c, []string{"--help"})
			}
		}
		c.usage(c.stdout)
		return exitOK
	}
	cmd := lookup(args[0])
	if cmd == nil {
		fmt.Fprintf(c.stderr, "shmctl: unknown command %q\n", args[0])
		c.usage(c.stderr)
		return exitUsage
	}
	return cmd.run(c, args[1:])
}

func lookup(name string) *command {
	for i := range commands {
		if commands[i].name == name {
			return &commands[i]
		}
	}
	return nil
}

func (c *cli) usage(w io.Writer) {
	fmt.Fprintln(w, "usage: shmctl COMMAND [ARGS]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Lists, inspects and cleans up shared-memory regions of github.com/shmgo/shm")
	fmt.Fprintln(w, "on every backend (posix, sysv, memfd, file). Commands:")
	fmt.Fprintln(w)
	for _, cmd := range commands {
		fmt.Fprintf(w, "  %-7s %s\n", cmd.name, cmd.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'shmctl COMMAND --help' for a command's arguments.")
	fmt.Fprintln(w, "Exit status: 0 success, 1 failure, 2 usage error.")
}

// usageError is a bad command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// flags makes the FlagSet of a subcommand, with the shared flags that it
// takes.
func (c *cli) flags(name string, shared ...string) *flag.FlagSet {
	fs := flag.NewFlagSet("shmctl "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	for _, s := range shared {
		switch s {
		case "backend":
			fs.StringVar(&c.backend, "backend", "", "backend: "+strings.Join(backendNames, ", ")+" (default: all of them)")
		case "dir":
			fs.Func("dir", "a directory of file-backend regions (repeatable)", func(v string) error {
				c.dirs = append(c.dirs, v)
				return nil
			})
		case "shm-dir":
			fs.StringVar(&c.shmDir, "shm-dir", posix.DefaultDir, "the directory of POSIX shared memory")
		}
	}
	return fs
}

// parse parses args for fs, flags and positional arguments in any order,
// up to a "--"; what follows "--" is returned as rest. It prints the help
// and returns (nil, nil, errHelp) for -h/--help.
func (c *cli) parse(fs *flag.FlagSet, cmd string, args []string) (pos, rest []string, code int, ok bool) {
	head := args
	for i, a := range args {
		if a == "--" {
			head, rest = args[:i], args[i+1:]
			if rest == nil {
				rest = []string{}
			}
			break
		}
	}
	for {
		err := fs.Parse(head)
		if errors.Is(err, flag.ErrHelp) {
			c.cmdUsage(c.stdout, fs, cmd)
			return nil, nil, exitOK, false
		}
		if err != nil {
			fmt.Fprintf(c.stderr, "shmctl %s: %v\n", cmd, err)
			c.cmdUsage(c.stderr, fs, cmd)
			return nil, nil, exitUsage, false
		}
		head = fs.Args()
		if len(head) == 0 {
			break
		}
		pos = append(pos, head[0])
		head = head[1:]
	}
	return pos, rest, 0, true
}

func (c *cli) cmdUsage(w io.Writer, fs *flag.FlagSet, name string) {
	cmd := lookup(name)
	fmt.Fprintf(w, "usage: shmctl %s %s\n\n%s.\n", name, cmd.usage, upperFirst(cmd.summary))
	if help := longHelp[name]; help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(help))
	}
	fmt.Fprintln(w, "\nflags:")
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// fail reports err on stderr and returns its exit status.
func (c *cli) fail(cmd string, err error) int {
	for _, l := range errLines(err) {
		fmt.Fprintf(c.stderr, "shmctl %s: %s\n", cmd, l)
	}
	var ue *usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitFail
}

// newBackend makes the backend called name. inspect selects a memfd
// backend that accepts a descriptor from any server: shmctl then only reads
// headers and data, it does not trust them.
func (c *cli) newBackend(name string, dir string, inspect bool) (backend.Backend, error) {
	switch name {
	case "posix":
		if c.shmDir == "" {
			return posix.New(), nil
		}
		return posix.NewDir(c.shmDir), nil
	case "sysv":
		return sysv.New(), nil
	case "memfd":
		if inspect {
			return memfd.New(memfd.WithAnyServer()), nil
		}
		return memfd.New(), nil
	case "file":
		if dir == "" {
			dir = shm.FileDir()
		}
		return file.New(dir), nil
	}
	return nil, usagef("unknown backend %q (want one of %s)", name, strings.Join(backendNames, ", "))
}

// backends returns the backends selected by --backend, --dir and a key's
// prefix (prefix may be ""): all of them when none is chosen. The file
// backend is included once per directory of fileDirs.
func (c *cli) backends(prefix string, inspect bool) ([]backend.Backend, error) {
	sel := c.backend
	if prefix != "" {
		if sel != "" && sel != prefix {
			return nil, usagef("key names backend %s but --backend is %s", prefix, sel)
		}
		sel = prefix
	}
	var names []string
	if sel == "" {
		names = backendNames
	} else {
		names = []string{sel}
	}
	var out []backend.Backend
	for _, n := range names {
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
// "file:/dir/name") from a key. Only the names of known backends count as
// prefixes. For file, the directory goes to dir and the key is "/name".
func splitKey(arg string) (prefix, dir, key string) {
	i := strings.IndexByte(arg, ':')
	if i <= 0 || strings.Contains(arg[:i], "/") {
		return "", "", arg
	}
	switch p, rest := arg[:i], arg[i+1:]; p {
	case "file":
		if strings.HasPrefix(rest, "/") && !strings.HasSuffix(rest, "/") {
			return p, filepath.Dir(rest), "/" + filepath.Base(rest)
		}
		return p, "", rest
	case "posix", "sysv", "memfd":
		return p, "", rest
	}
	return "", "", arg
}
