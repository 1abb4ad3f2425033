package main

import (
	"fmt"
	"io"
	"strings"
)

// The texts of the help, which "shmctl man" also makes the manual page of:
// paragraphs separated by blank lines; lines indented by two spaces are
// shown as they are.

const overviewText = `
shmctl lists, inspects, creates, locks and cleans up the shared-memory
regions of github.com/shmgo/shm on its four backends: POSIX shared memory
in /dev/shm (posix), SysV segments (sysv), memfds that their owner serves
over an abstract unix socket (memfd), and mapped files in a directory
(file). It replaces ipcs -m, ipcrm, ls /dev/shm and rm /dev/shm/... after
crashes: it tells a live region from a stale one (its creator is dead and
no process uses it) and removes only stale ones, so that it can run from
cron or a systemd timer.

Options and arguments may come in any order after the command; options
have a long form (--all, --backend=posix or --backend posix; -all also
works) and some a short one (-a), and short ones combine (-nv). "--" ends
the options.`

const keysText = `
A KEY is a region's key: "/name" or "name", 1 to 200 bytes without '/' or
NUL. It may name its backend, any that --backend takes: posix:/name,
sysv:/name, memfd:/name, file:/name; with a directory, file:/dir/name for
a file region in /dir, posix:/dir/name for POSIX shared memory in another
tmpfs. Without a prefix, --backend chooses; without either, every
backend is searched (and create uses posix). A SysV segment may also be
named by its shmid, as ipcs(1) shows it: sysv:@SHMID (for stat, rm, dump
and lock), or SHMID with stat --id and rm --id; stat --shmkey and rm
--shmkey take its key_t.

File regions are looked for in the directories given with --dir, else in
the library's default ones ($XDG_RUNTIME_DIR, or $TMPDIR/shmgo-UID, that
exist); POSIX ones in --shm-dir (default /dev/shm).

Keys come from other users: shmctl prints them, and every other name and
message, with control and other non-printable bytes and invalid UTF-8
escaped (\x1b, \n, \u202e; \\ for a backslash), so that no key can send
escape sequences to the terminal or forge a line. --json gives keys
exactly (and key_hex when a key is not valid UTF-8).`

const exitText = `
0 on success; 1 on failure (the message names the key and the backend); 2
for a usage error (a one-line message and a hint on stderr).

gc exits with 0 when the only stale regions it leaves are other users'
that it may not remove (it reports them on stderr), and with 1 when a
region it was entitled to remove could not be removed, or a backend could
not be listed. rm exits with 1 when any KEY was not removed.

lock exits with CMD's status (128+N when CMD was killed by signal N); 75
(EX_TEMPFAIL), or N given with -E, when the lock is busy; 126 when CMD
cannot be run; 127 when CMD is not found.`

const jsonText = `
ls --json and gc --json print an array of objects, stat --json one object.
Every field is always present (null when it does not apply); new fields
may be added, but none is renamed or removed, nor changes type.

  key             string  the key, with its leading '/' ("" for a SysV
                          segment that is not a region)
  key_hex         string  the key's bytes in hex when they are not valid
                          UTF-8 (key then holds U+FFFD for them), else null
  backend         string  posix, sysv, memfd or file
  path            string  the file (posix, file) or the abstract socket
                          (memfd, "@shmgo/memfd/..."); null for sysv
  id              number  the SysV shmid; null for other backends
  handle          string  another backend's handle for an object without a
                          name (a memfd socket with a hashed name), or null
  size            number  bytes of data
  object_size     number  bytes of the whole object, header included
  mode            string  the permission bits, in octal ("0600")
  uid, gid        number  the owner and group (-1 when unknown)
  owner, group    string  their names (the number when it has none), or
                          null when unknown
  creator_pid     number  the creator's PID, or null (no header)
  creator         string  alive, dead or unknown (another PID namespace),
                          or null
  created         string  the creation time (RFC 3339), or null
  status          string  ready, init, temp, temp,blank, foreign or
                          unreadable
  ready           bool    the creator has finished initialising it
  lock            object  null without a header, else:
    state         string  free, held or holder dead
    pid           number  the holder's PID; 0 if free
    robust        bool    the kernel marks the holder's death (its process
                          is on a robust futex list); false when only its
                          PID can tell
    inconsistent  bool    a holder died; not yet marked consistent
    waiters       bool    a process may be waiting
  attached        number  processes that map it; -1 when unknown
  attached_exact  bool    false when some processes could not be inspected
  stale           bool    the creator is dead and no process uses it
  reason          string  why it is stale, or not ("" when none)
  foreign         bool    not a region of package shm (ls --all)
  temp            bool    never published: its creator died, or is at work
  error           string  why it could not be read, or null
  sysv            object  IPC_STAT of a SysV segment, or null:
    shmid         number
    key           number  the key_t, as an unsigned 32-bit number
    nattch        number  the kernel's attach count
    cpid, lpid    number  creator and last shmat/shmdt PIDs (kernel's view)
    removed       bool    IPC_RMID done: freed at the last detach

stat --json adds:

  processes       array   the processes that map the region or hold a
                          descriptor of it, or null when the object could
                          not be identified; each with pid (number),
                          command (string, /proc/PID/comm), cmdline
                          (array of strings, or null), uid (number), user
                          (string or null), maps (array of permission
                          strings such as "rw-s") and fds (array of
                          numbers)
  processes_uninspected  number  processes this user may not inspect`

// topics are the help topics other than commands.
var topics = map[string]struct{ title, text string }{
	"keys": {"Keys", keysText},
	"json": {"JSON output", jsonText},
	"exit": {"Exit status", exitText},
}

func (c *cli) help(w io.Writer) {
	fmt.Fprintln(w, "usage: shmctl COMMAND [OPTIONS] [ARGS]")
	fmt.Fprintln(w, "       shmctl --version")
	fmt.Fprintln(w)
	fmt.Fprintln(w, strings.TrimSpace(overviewText))
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	for _, cmd := range commands {
		fmt.Fprintf(w, "  %-10s  %s\n", cmd.name, cmd.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Exit status: 0 success, 1 failure, 2 usage error; lock: see 'shmctl help lock'.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'shmctl help COMMAND' for a command's options; 'shmctl help keys', 'help")
	fmt.Fprintln(w, "json' and 'help exit' for those topics; 'shmctl man | man -l -' for the manual.")
}

// cmdHelp prints the help of one command.
func (c *cli) cmdHelp(w io.Writer, cmd *command) {
	s := optionsOf(cmd)
	fmt.Fprintf(w, "usage: %s\n\n%s.\n", synopsis(cmd, s), upperFirst(cmd.summary))
	if t := strings.TrimSpace(cmd.long); t != "" {
		fmt.Fprintf(w, "\n%s\n", t)
	}
	if len(s.opts) > 0 {
		fmt.Fprintln(w, "\nOptions:")
		s.writeOptions(w)
	}
}

// topicHelp prints a help topic, if name is one.
func topicHelp(w io.Writer, name string) bool {
	t, ok := topics[name]
	if ok {
		fmt.Fprintf(w, "%s\n\n%s\n", t.title, strings.TrimSpace(t.text))
	}
	return ok
}

// optionsOf returns the options of cmd (for help, the manual and
// completion).
func optionsOf(cmd *command) *optSet {
	s := newOptSet(cmd.name)
	cmd.define(&cli{stdout: io.Discard, stderr: io.Discard}, s)
	return s
}

func synopsis(cmd *command, s *optSet) string {
	out := "shmctl " + cmd.name
	if len(s.opts) > 0 {
		out += " [OPTIONS]"
	}
	if cmd.args != "" {
		out += " " + cmd.args
	}
	return out
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
