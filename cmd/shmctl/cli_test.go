package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"golang.org/x/sys/unix"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/posix"
	"github.com/shmgo/shm/backend/sysv"
)

// Help, usage errors and --version (issue 15).
func TestHelpAndUsageErrors(t *testing.T) {
	r := run(t, "--version")
	if r.code != 0 || !regexp.MustCompile(`^shmctl (\(devel\)|v\S+)( \([0-9a-f]+(, modified)?\))? go\S+ linux/\w+\n$`).MatchString(r.stdout) {
		t.Errorf("--version: %v", r)
	}
	if r2 := run(t, "version"); r2.stdout != r.stdout {
		t.Errorf("version: %v, want the same as --version", r2)
	}
	// Every help: options shown as --name, one default each.
	for _, cmd := range commands {
		for _, args := range [][]string{{"help", cmd.name}, {cmd.name, "--help"}} {
			r := run(t, args...)
			if r.code != 0 || !strings.HasPrefix(r.stdout, "usage: shmctl "+cmd.name) || r.stderr != "" {
				t.Errorf("shmctl %q: %v", args, r)
			}
			for _, l := range strings.Split(r.stdout, "\n") {
				if strings.Count(l, "(default") > 1 {
					t.Errorf("shmctl %q: two defaults in %q", args, l)
				}
				if m := regexp.MustCompile(`^\s+-[a-z][a-z]`).FindString(l); m != "" {
					t.Errorf("shmctl %q: an option with one dash: %q", args, l)
				}
				if len(l) > 80 {
					t.Errorf("shmctl %q: line longer than 80 columns: %q", args, l)
				}
			}
		}
	}
	if r := run(t, "help", "ls"); !strings.Contains(r.stdout, "  -a, --all ") || !strings.Contains(r.stdout, "  -h, --human ") {
		t.Errorf("help ls: %v", r)
	}
	if r := run(t, "help", "dump"); strings.Contains(r.stdout, "(default -1)") || !strings.Contains(r.stdout, "(default: to the end)") {
		t.Errorf("help dump: %v", r)
	}
	for _, topic := range []string{"keys", "json", "exit"} {
		if r := run(t, "help", topic); r.code != 0 || len(r.stdout) < 200 {
			t.Errorf("help %s: %v", topic, r)
		}
	}
	// A bad command line: one line, a hint, exit 2.
	for _, args := range [][]string{
		{"bogus"}, {"--bogus"}, {"ls", "--bogus"}, {"ls", "-Z"}, {"ls", "--sort", "color"}, {"ls", "[x"},
		{"stat"}, {"rm"}, {"gc", "x"}, {"dump", "/k", "--offset", "x"}, {"dump", "/k", "-s"},
		{"lock", "/k"}, {"lock", "-E", "300", "/k", "true"}, {"lock", "/k", "-c", "true", "false"},
		{"create", "/k"}, {"create", "/k", "0"}, {"completion", "fish"}, {"help", "nothing"},
		{"stat", "--id", "x"}, {"rm", "--shmkey", "zz"}, {"ls", "--count", "2"},
	} {
		r := run(t, args...)
		lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
		cmd := args[0]
		if cmd == "help" || strings.HasPrefix(cmd, "-") || lookup(cmd) == nil {
			cmd = ""
		}
		hint := "Run 'shmctl help " + cmd + "' for usage."
		if cmd == "" {
			hint = "Run 'shmctl help' for usage."
		}
		if r.code != 2 || r.stdout != "" || len(lines) != 2 || lines[1] != hint || !strings.HasPrefix(lines[0], "shmctl") {
			t.Errorf("shmctl %q: %v\nwant exit 2, one line and %q", args, r, hint)
		}
	}
	// Old spellings still work: -all, -json, -dry-run.
	dir := privateDir(t)
	if r := run(t, "ls", "-all", "-json", "--backend", "posix", "-shm-dir", dir); r.code != 0 || r.stdout != "[]\n" {
		t.Errorf("ls -all -json: %v", r)
	}
	if r := run(t, "gc", "-dry-run", "--backend=posix", "--shm-dir="+dir); r.code != 0 {
		t.Errorf("gc -dry-run: %v", r)
	}
}

// ls: filters, sorting, human sizes, keys, JSON numbers, --interval.
func TestLsOptions(t *testing.T) {
	pdir, fdir := privateDir(t), privateDir(t)
	dirs := []string{"--shm-dir", pdir, "--dir", fdir, "--backend", "posix,file"}
	small, big, other, stalek := key("ls-small"), key("ls-big"), key("ls-other"), key("ls-stale")
	h1 := hold(t, small, "100", "--shm-dir", pdir)
	hold(t, big, "3M", "--shm-dir", pdir, "--owner", "65534")
	hold(t, "file:"+fdir+other, "1536")
	startChild(t, "create", stalek, "posix:"+pdir).Kill()

	r := run(t, append([]string{"ls"}, dirs...)...)
	rs := row(r.stdout, small)
	if r.code != 0 || rs == nil || rs[colBytes] != "100" || rs[colObjBytes] != "8804" || rs[colOwner] != "root" {
		t.Fatalf("ls: %v", r)
	}
	if r := run(t, append([]string{"ls", "-h"}, dirs...)...); row(r.stdout, big)[colBytes] != "3M" ||
		row(r.stdout, other)[colBytes] != "1.5K" || row(r.stdout, small)[colBytes] != "100B" || row(r.stdout, big)[colObjBytes] != "3M" {
		t.Errorf("ls -h: %v", r)
	}
	keysOf := func(out string) []string {
		var ks []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
			ks = append(ks, strings.Fields(l)[1])
		}
		return ks
	}
	for _, c := range []struct {
		args []string
		want []string
	}{
		{nil, []string{other, big, small, stalek}}, // file, then posix by key
		{[]string{"--sort", "size"}, []string{small, other, stalek, big}},
		{[]string{"--sort", "size", "-r"}, []string{big, stalek, other, small}},
		{[]string{"--sort", "key"}, []string{big, other, small, stalek}},
		{[]string{"--stale"}, []string{stalek}},
		{[]string{"--owner", "nobody"}, []string{big}},
		{[]string{"-u", "65534"}, []string{big}},
		{[]string{"--backend", "file"}, []string{other}},
		{[]string{key("ls-s*")[1:]}, []string{small, stalek}},
		{[]string{key("ls-?ig"), "posix:" + key("ls-other")}, []string{big}},
		{[]string{"file:" + key("*")}, []string{other}},
	} {
		args := append(append([]string{"ls"}, dirs...), c.args...)
		if c.args != nil && c.args[0] == "--backend" {
			args = append([]string{"ls", "--shm-dir", pdir, "--dir", fdir}, c.args...)
		}
		r := run(t, args...)
		if got := keysOf(r.stdout); r.code != 0 || strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Errorf("ls %q: keys %q, want %q\n%v", c.args, got, c.want, r)
		}
	}
	if r := run(t, append([]string{"ls", "--keys", "--sort", "key"}, dirs...)...); r.stdout != strings.Join([]string{big, other, small, stalek}, "\n")+"\n" {
		t.Errorf("ls --keys: %v", r)
	}

	// JSON: numbers are numbers, every field present.
	r = run(t, append([]string{"ls", "--json", key("ls-small")}, dirs...)...)
	var raw []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil || len(raw) != 1 {
		t.Fatalf("ls --json: %v\n%v", err, r)
	}
	want := map[string]string{"key": "string", "key_hex": "nil", "backend": "string", "path": "string", "id": "nil",
		"handle": "nil", "size": "float64", "object_size": "float64", "mode": "string", "uid": "float64", "gid": "float64",
		"owner": "string", "group": "string", "creator_pid": "float64", "creator": "string", "created": "string",
		"status": "string", "ready": "bool", "lock": "map[string]interface {}", "attached": "float64",
		"attached_exact": "bool", "stale": "bool", "reason": "string", "foreign": "bool", "temp": "bool", "error": "nil", "sysv": "nil"}
	for k, typ := range want {
		v, ok := raw[0][k]
		got := fmt.Sprintf("%T", v)
		if v == nil {
			got = "nil"
		}
		if !ok || got != typ {
			t.Errorf("ls --json: field %s is %s (present %v), want %s", k, got, ok, typ)
		}
	}
	if len(raw[0]) != len(want) {
		t.Errorf("ls --json: %d fields, want %d: %v", len(raw[0]), len(want), raw[0])
	}
	if raw[0]["size"] != 100.0 || raw[0]["creator_pid"] != float64(h1.pid) || raw[0]["object_size"] != 8804.0 {
		t.Errorf("ls --json: %v", raw[0])
	}

	// --interval prints the list again; --count stops it.
	start := time.Now()
	r = run(t, append([]string{"ls", "--interval", "0.2", "--count", "3", "--stale"}, dirs...)...)
	if r.code != 0 || strings.Count(r.stdout, "Every 200ms: shmctl ls --stale") != 3 || strings.Count(r.stdout, stalek) != 3 || time.Since(start) < 400*time.Millisecond {
		t.Errorf("ls --interval: %v", r)
	}
	// Interrupted, it exits with 0.
	cmd := exec.Command(bin, append([]string{"ls", "--interval", "0.1", "--keys"}, dirs...)...)
	p := startProc(t, cmd, other) // the first key, in List's order
	p.cmd.Process.Signal(syscall.SIGINT)
	if err := p.cmd.Wait(); err != nil {
		t.Errorf("ls --interval after SIGINT: %v", err)
	}
}

// stat names the processes that use a region, as lsof does.
func TestStatProcesses(t *testing.T) {
	dir := privateDir(t)
	args := []string{"--backend", "posix", "--shm-dir", dir}
	k := key("stat-procs")
	holder := hold(t, append([]string{k, "4096"}, args...)...)
	user := startChild(t, "attach", k, "posix:"+dir)

	r := run(t, append([]string{"stat", k}, args...)...)
	comm := func(pid int) string {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		return strings.TrimSpace(string(b))
	}
	pids := []int{holder.pid, user.PID()}
	for _, pid := range pids {
		want := fmt.Sprintf("%d %s (root): mapped rw-s, fd ", pid, comm(pid))
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stat: no %q in\n%v", want, r)
		}
	}
	if !regexp.MustCompile(`(?m)^processes: +\d+ `).MatchString(r.stdout) {
		t.Errorf("stat: no processes line:\n%v", r)
	}
	r = run(t, append([]string{"stat", "--json", k}, args...)...)
	var st jsonStat
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st.Processes == nil || len(*st.Processes) != 2 {
		t.Fatalf("stat --json: %v\n%v", err, r)
	}
	for i, pid := range pids {
		jp := (*st.Processes)[i]
		if jp.PID != pid || jp.Command != comm(pid) || jp.UID != 0 || len(jp.Maps) != 1 || jp.Maps[0] != "rw-s" || len(jp.FDs) != 1 || len(jp.Cmdline) == 0 {
			t.Errorf("stat --json: process %d: %+v", pid, jp)
		}
	}
	user.Kill()
	holder.kill()
	r = run(t, append([]string{"stat", k}, args...)...)
	if !strings.Contains(r.stdout, "processes: none found") {
		t.Errorf("stat once nobody maps it:\n%v", r)
	}
}

// SysV segments by shmid and key_t, as ipcrm -m and -M take them.
func TestSysvByID(t *testing.T) {
	if !inNewIPCNamespace(t) {
		return
	}
	live, stale := key("id-live"), key("id-stale")
	holder := hold(t, "sysv:"+live, "100")
	startChild(t, "create", stale, "sysv").Kill()
	defer sysv.New().Unlink(live[1:])
	defer sysv.New().Unlink(stale[1:])
	stl, err := sysv.New().Stat(live[1:])
	if err != nil {
		t.Fatal(err)
	}
	sts, err := sysv.New().Stat(stale[1:])
	if err != nil {
		t.Fatal(err)
	}
	lid := strconv.Itoa(stl.ID)

	for _, args := range [][]string{{"sysv:@" + lid}, {"--id", lid}, {"--shmkey", fmt.Sprintf("0x%08x", uint32(stl.Key))}, {"--shmkey", strconv.Itoa(stl.Key)}} {
		r := run(t, append([]string{"stat"}, args...)...)
		if r.code != 0 || !strings.Contains(r.stdout, live) || !strings.Contains(r.stdout, fmt.Sprintf("shmid %d, key 0x%08x", stl.ID, uint32(stl.Key))) ||
			!strings.Contains(r.stdout, fmt.Sprintf("%d shmctl (root): mapped rw-s", holder.pid)) {
			t.Errorf("stat %q: %v", args, r)
		}
	}
	r := run(t, "stat", "--json", "sysv:@"+lid)
	var st jsonStat
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st.ID == nil || *st.ID != int64(stl.ID) || st.SysV == nil ||
		st.SysV.Key != int64(uint32(stl.Key)) || st.SysV.Nattch != 1 || st.Processes == nil || len(*st.Processes) != 1 {
		t.Errorf("stat --json sysv:@ID: %v\n%+v", err, st)
	}
	if r := run(t, "dump", "-l", "16", "sysv:@"+lid); r.code != 0 || !strings.HasPrefix(r.stdout, "00000000: 0000 ") {
		t.Errorf("dump sysv:@ID: %v", r)
	}
	if r := run(t, "lock", "sysv:@"+lid, "sh", "-c", "echo $SHMCTL_KEY"); r.code != 0 || r.stdout != live+"\n" {
		t.Errorf("lock sysv:@ID: %v", r)
	}
	if r := run(t, "stat", "sysv:@999999"); r.code != 1 || !strings.Contains(r.stderr, "no segment with shmid 999999") {
		t.Errorf("stat of a missing shmid: %v", r)
	}
	if r := run(t, "rm", "--id", lid); r.code != 1 || !strings.Contains(r.stderr, "in use") {
		t.Errorf("rm --id of a live segment: %v", r)
	}
	if r := run(t, "rm", "-v", "--id", strconv.Itoa(sts.ID)); r.code != 0 || r.stdout != "removed sysv "+stale+" (id "+strconv.Itoa(sts.ID)+")\n" {
		t.Errorf("rm --id of a stale segment: %v", r)
	}
	// A segment that is not a region is left to ipcrm.
	id, err := unix.SysvShmGet(0x5eed1234, 4096, 0o600|unix.IPC_CREAT|unix.IPC_EXCL)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.SysvShmCtl(id, unix.IPC_RMID, nil)
	if r := run(t, "rm", "--shmkey", "0x5eed1234"); r.code != 1 || !strings.Contains(r.stderr, fmt.Sprintf("ipcrm -m %d", id)) {
		t.Errorf("rm of a foreign segment: %v", r)
	}
}

// lock keeps flock(1)'s habits.
func TestLockOptions(t *testing.T) {
	dir := privateDir(t)
	be := posix.NewDir(dir)
	args := []string{"--backend", "posix", "--shm-dir", dir}
	k := key("lock-opts")
	reg, err := shm.Create(k, 64, shm.WithBackend(be))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	lock := func(a ...string) result { return run(t, append(append([]string{"lock"}, args...), a...)...) }

	// CMD without "--", options of its own included.
	if r := lock(k, "sh", "-c", `echo "[$1]" $SHMCTL_BACKEND`, "sh", "-n"); r.code != 0 || r.stdout != "[-n] posix\n" {
		t.Errorf("lock KEY CMD: %v", r)
	}
	if r := lock("-c", "echo via -c; exit 4", k); r.code != 4 || r.stdout != "via -c\n" {
		t.Errorf("lock -c: %v", r)
	}
	if r := lock(k, "no-such-command-here"); r.code != 127 || !strings.Contains(r.stderr, "no-such-command-here: command not found") {
		t.Errorf("lock of a missing command: %v", r)
	}
	noexec := filepath.Join(t.TempDir(), "noexec")
	os.WriteFile(noexec, []byte("#!/bin/sh\n"), 0o644)
	if r := lock(k, noexec); r.code != 126 {
		t.Errorf("lock of a command that cannot run: %v", r)
	}
	if r := lock(k, "sh", "-c", "kill -TERM $$"); r.code != 128+15 {
		t.Errorf("lock of a command killed by SIGTERM: %v", r)
	}

	l, err := reg.Lock()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		a    []string
		code int
		msg  string
	}{
		{[]string{"-n", k, "true"}, 75, "lock is held (held by " + strconv.Itoa(os.Getpid()) + ")"},
		{[]string{"--nonblock", "-E", "42", k, "true"}, 42, "lock is held"},
		{[]string{"-w", "0", k, "true"}, 75, "lock is held"},
		{[]string{"-w", "0", "-E", "1", k, "true"}, 1, "lock is held"},
		{[]string{"-w", "0.05", "--conflict-exit-code=7", k, "true"}, 7, "timed out after 50ms"},
		{[]string{"--timeout", "30ms", k, "true"}, 75, "timed out after 30ms"},
	} {
		start := time.Now()
		r := lock(c.a...)
		if r.code != c.code || !strings.Contains(r.stderr, c.msg) || r.stdout != "" {
			t.Errorf("lock %q while held: %v\nwant exit %d and %q", c.a, r, c.code, c.msg)
		}
		if time.Since(start) > 5*time.Second {
			t.Errorf("lock %q took %v", c.a, time.Since(start))
		}
	}
	// Waiting: the lock comes when its holder lets go.
	unlocked := make(chan struct{})
	go func() { time.Sleep(100 * time.Millisecond); l.Unlock(); close(unlocked) }()
	if r := lock("-w", "10", k, "echo", "got it"); r.code != 0 || r.stdout != "got it\n" {
		t.Errorf("lock -w 10 until released: %v", r)
	}
	<-unlocked // before reg.Close
}

// dump collapses repeated lines and reads POSIX regions read-only.
func TestDumpSqueezeAndHeader(t *testing.T) {
	dir := privateDir(t)
	be := posix.NewDir(dir)
	args := []string{"--backend", "posix", "--shm-dir", dir}
	k := key("dump-squeeze")
	r := run(t, append([]string{"create", k, "200", "--mode", "0644"}, args...)...)
	if r.code != 0 {
		t.Fatal(r)
	}
	reg, err := shm.Open(k, 0, shm.WithBackend(be))
	if err != nil {
		t.Fatal(err)
	}
	copy(reg.Bytes(), "head")
	copy(reg.Bytes()[190:], "tail")
	reg.Close()
	zero := "0000 0000 0000 0000 0000 0000 0000 0000  ................\n"
	want := "00000000: 6865 6164 0000 0000 0000 0000 0000 0000  head............\n" +
		"00000010: " + zero +
		"*\n" + // as xxd -a and hexdump print a run
		"000000b0: 0000 0000 0000 0000 0000 0000 0000 7461  ..............ta\n" +
		"000000c0: 696c 0000 0000 0000                      il......\n"
	r = run(t, append([]string{"dump", k}, args...)...)
	if r.code != 0 || r.stdout != want {
		t.Errorf("dump:\n%v\nwant:\n%s", r, want)
	}
	r = run(t, append([]string{"dump", "-v", k}, args...)...)
	if r.code != 0 || strings.Count(r.stdout, "\n") != 13 || strings.Contains(r.stdout, "*") {
		t.Errorf("dump -v:\n%v", r)
	}
	r = run(t, append([]string{"dump", "-s", "16", "-l", "48", k}, args...)...)
	if want := "00000010: " + zero + "*\n00000030: " + zero; r.stdout != want {
		t.Errorf("dump -s 16 -l 48:\n%v\nwant:\n%s", r, want)
	}
	// Read-only: another user with read permission only dumps it, and it
	// is never mapped.
	if os.Geteuid() == 0 {
		cmd := exec.Command(bin, append([]string{"dump", "-l", "4", k}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		if r := runCmd(t, cmd); r.code != 0 || r.stdout != "00000000: 6865 6164                                head\n" {
			t.Errorf("dump as nobody of a 0644 region: %v", r)
		}
	}
	r = run(t, append([]string{"dump", "--header", k}, args...)...)
	for _, w := range []string{"key:", k, "header:     8704 bytes", "data:       200 bytes, at offset 8704", "object:     8904 bytes", "users:      0 of 256 slots", "state:      ready", "lock:       free", "waiters:    no"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("dump --header: no %q in\n%v", w, r)
		}
	}
}

// dump attaches a region that has no file (memfd) read-only: a user with
// read permission only dumps it.
func TestDumpReadOnlyAttach(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run shmctl as another user")
	}
	k := key("dump-ro")
	r, err := shm.Create("memfd:"+k, 64, shm.WithMode(0o644))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Unlink(); r.Close() })
	copy(r.Bytes(), "head")
	cmd := exec.Command(bin, "dump", "-l", "4", "memfd:"+k)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if res := runCmd(t, cmd); res.code != 0 || res.stdout != "00000000: 6865 6164                                head\n" {
		t.Errorf("dump as nobody of a 0644 memfd region: %v", res)
	}
}

// Completion scripts parse, and complete; the manual page is current.
func TestCompletionAndMan(t *testing.T) {
	r := run(t, "completion", "bash")
	if r.code != 0 {
		t.Fatal(r)
	}
	script := filepath.Join(t.TempDir(), "shmctl.bash")
	os.WriteFile(script, []byte(r.stdout), 0o644)
	if _, err := exec.LookPath("bash"); err == nil {
		dir := privateDir(t)
		k := key("complete")
		hold(t, k, "10", "--shm-dir", dir)
		// shmctl in PATH, for the key completion.
		os.Symlink(bin, filepath.Join(filepath.Dir(script), "shmctl"))
		complete := func(words ...string) string {
			sh := fmt.Sprintf(`source %s; COMP_WORDS=(%s); COMP_CWORD=%d; _shmctl; echo "${COMPREPLY[*]}"`,
				script, shellWords(words), len(words)-1)
			cmd := exec.Command("bash", "-c", sh)
			cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(script)+":"+os.Getenv("PATH"))
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("bash completion of %q: %v\n%s", words, err, out)
			}
			return strings.TrimSpace(string(out))
		}
		for _, c := range []struct {
			words []string
			want  string
		}{
			{[]string{"shmctl", "st"}, "stat"},
			{[]string{"shmctl", "ls", "--hu"}, "--human"},
			{[]string{"shmctl", "lock", "--time"}, "--timeout"},
			{[]string{"shmctl", "ls", "--backend", "sy"}, "sysv"},
			{[]string{"shmctl", "ls", "--sort", "si"}, "size"},
			{[]string{"shmctl", "help", "js"}, "json"},
			{[]string{"shmctl", "completion", "z"}, "zsh"},
		} {
			if got := complete(c.words...); got != c.want {
				t.Errorf("bash completion of %q: %q, want %q", c.words, got, c.want)
			}
		}
		if got := complete("shmctl", "stat", "--shm-dir", dir, k[:len(k)-3]); got != k {
			t.Errorf("bash completion of a key: %q, want %q", got, k)
		}
		if got := complete("shmctl", "lock", "-w", "5", k, "shmctl-no-such-comman"); got != "" {
			t.Errorf("bash completion of lock's CMD: %q", got)
		}
		if got := complete("shmctl", "lock", k, "ech"); !strings.Contains(got, "echo") {
			t.Errorf("bash completion of lock's CMD: %q, want echo", got)
		}
	}
	r = run(t, "completion", "zsh")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "#compdef shmctl\n") || !strings.Contains(r.stdout, "'(-n --nonblock)'{-n,--nonblock}'[fail at once") {
		t.Errorf("completion zsh: %v", r)
	}
	if _, err := exec.LookPath("zsh"); err == nil {
		cmd := exec.Command("zsh", "-n")
		cmd.Stdin = strings.NewReader(r.stdout)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("zsh -n: %v\n%s", err, out)
		}
	}

	r = run(t, "man")
	file, err := os.ReadFile("shmctl.1")
	if r.code != 0 || err != nil || r.stdout != string(file) {
		t.Errorf("shmctl man differs from shmctl.1 (%v): run 'go generate ./cmd/shmctl'", err)
	}
	for _, want := range []string{".TH SHMCTL 1", ".SH SYNOPSIS", ".SS \"shmctl lock [OPTIONS] KEY [\\-\\-] CMD [ARG...]\"", "\\fB\\-n\\fR, \\fB\\-\\-nonblock\\fR", ".SH JSON OUTPUT", ".SH EXIT STATUS"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("shmctl man: no %q", want)
		}
	}
	if _, err := exec.LookPath("groff"); err == nil {
		cmd := exec.Command("groff", "-man", "-ww", "-z")
		cmd.Stdin = strings.NewReader(r.stdout)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil || stderr.Len() > 0 {
			t.Errorf("groff -man -ww: %v\n%s", err, stderr.String())
		}
	}
}

func shellWords(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

func TestParseOptions(t *testing.T) {
	type res struct {
		n, v bool
		w    time.Duration
		e    int64
		pos  []string
		rest []string
		err  string
		help bool
	}
	parse := func(maxPos int, args ...string) res {
		s := newOptSet("x")
		n := s.Bool("nonblock", 'n', "")
		v := s.Bool("verbose", 'v', "")
		w := s.Seconds("timeout", 'w', "")
		e := s.Int("code", 'E', "N", 1, true, "")
		pos, rest, err := s.parse(args, maxPos)
		r := res{n: *n, v: *v, w: *w, e: *e, pos: pos, rest: rest, help: s.help}
		if err != nil {
			r.err = err.Error()
		}
		return r
	}
	for _, c := range []struct {
		maxPos int
		args   []string
		want   res
	}{
		{-1, []string{"-nv", "a", "--timeout=1.5", "b"}, res{n: true, v: true, w: 1500 * time.Millisecond, e: 1, pos: []string{"a", "b"}}},
		{-1, []string{"-w5", "-E", "42", "-1234"}, res{w: 5 * time.Second, e: 42, pos: []string{"-1234"}}},
		{-1, []string{"-w", "200ms", "-nonblock", "-code=3"}, res{n: true, w: 200 * time.Millisecond, e: 3}},
		{-1, []string{"--", "-n", "--x"}, res{w: -1, e: 1, pos: []string{"-n", "--x"}}},
		{-1, []string{"--verbose=false", "-v", "--help"}, res{v: true, w: -1, e: 1, help: true}},
		{1, []string{"-n", "KEY", "cmd", "-v", "--", "x"}, res{n: true, w: -1, e: 1, pos: []string{"KEY"}, rest: []string{"cmd", "-v", "--", "x"}}},
		{1, []string{"KEY", "-v", "--", "-cmd"}, res{v: true, w: -1, e: 1, pos: []string{"KEY"}, rest: []string{"-cmd"}}},
		{-1, []string{"--bogus"}, res{w: -1, e: 1, err: "unknown option --bogus"}},
		{-1, []string{"-nx"}, res{n: true, w: -1, e: 1, err: "unknown option -x"}},
		{-1, []string{"-w"}, res{w: -1, e: 1, err: "option -w needs a value (SECONDS)"}},
		{-1, []string{"--code", "x"}, res{w: -1, e: 1, err: `bad value "x" for --code: want an integer`}},
		{-1, []string{"--timeout", "-3"}, res{w: -1, e: 1, err: `bad value "-3" for --timeout: want a number of seconds from 0 to 1e9`}},
	} {
		got := parse(c.maxPos, c.args...)
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("parse(%d, %q) = %+v\nwant %+v", c.maxPos, c.args, got, c.want)
		}
	}
}
