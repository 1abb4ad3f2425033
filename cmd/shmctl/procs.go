package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/sysv"
)

// holder is a process that maps a region or holds a descriptor of it, as
// lsof(8) would list it.
type holder struct {
	PID     int
	Comm    string // /proc/PID/comm
	UID     int    // the owner of /proc/PID: its effective uid
	Maps    []string
	FDs     []int
	Cmdline []string
}

// target identifies a region's object in /proc/*/maps and /proc/*/fd.
type target struct {
	dev, ino uint64
	sysv     bool   // SysV: maps show "/SYSV<key>" with the shmid as inode
	sysvPath string // "/SYSV%08x" of the segment's key_t, when known
	ipcNS    uint64 // SysV: the IPC namespace (shmids are per namespace)
}

// extras is what stat tells beyond shm.Info.
type extras struct {
	holders     []holder
	scanned     bool // holders is known (the object could be identified)
	uninspected int  // processes whose maps this user may not read
	sysv        *sysv.Stat
}

// extras finds the processes that use f's region, and the SysV details.
func (c *cli) extras(f found) extras {
	var x extras
	if f.info.Err != nil {
		return x
	}
	if f.info.Backend == "sysv" && f.info.ID != "" {
		if st, err := sysv.New().StatID(f.info.ID); err == nil {
			x.sysv = &st
		}
	}
	t, ok := c.targetOf(f)
	if !ok {
		return x
	}
	x.holders, x.uninspected = scanHolders(t)
	x.scanned = true
	return x
}

// targetOf identifies f's object: by device and inode of its file (posix,
// file; memfd through a descriptor from its owner), or by shmid (sysv).
func (c *cli) targetOf(f found) (target, bool) {
	var st unix.Stat_t
	switch f.info.Backend {
	case "sysv":
		id, err := strconv.ParseUint(f.info.ID, 10, 64)
		t := target{ino: id, sysv: true, ipcNS: nsInode("self")}
		if f.key != "" && !f.info.Foreign {
			t.sysvPath = fmt.Sprintf("/SYSV%08x", uint32(sysv.Key(strings.TrimPrefix(f.info.Key, "/"))))
		}
		return t, err == nil
	case "memfd":
		if f.info.Foreign || f.key == "" {
			return target{}, false
		}
		r, err := shm.Open(f.key, 0, shm.WithBackend(f.be))
		if err != nil {
			return target{}, false
		}
		defer r.Close()
		file, err := r.File()
		if err != nil {
			return target{}, false
		}
		defer file.Close()
		if unix.Fstat(int(file.Fd()), &st) != nil {
			return target{}, false
		}
	default:
		if f.info.Path == "" || unix.Stat(f.info.Path, &st) != nil {
			return target{}, false
		}
	}
	return target{dev: uint64(st.Dev), ino: uint64(st.Ino)}, true
}

// nsInode is the inode of process pid's ("self") IPC namespace, or 0.
func nsInode(pid string) uint64 {
	var st unix.Stat_t
	if unix.Stat("/proc/"+pid+"/ns/ipc", &st) != nil {
		return 0
	}
	return st.Ino
}

// scanHolders walks /proc for the processes that map t or hold a
// descriptor of it, leaving out shmctl itself. It returns how many processes
// it could not inspect (another user's, for a non-root caller).
func scanHolders(t target) (hs []holder, uninspected int) {
	self := os.Getpid()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, -1
	}
	major, minor := unix.Major(t.dev), unix.Minor(t.dev)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		if t.sysv && t.ipcNS != 0 && nsInode(e.Name()) != t.ipcNS {
			continue // shmids of another IPC namespace name other segments
		}
		maps, err := os.ReadFile(filepath.Join(dir, "maps"))
		if err != nil {
			if !os.IsNotExist(err) && !errors.Is(err, syscall.ESRCH) {
				uninspected++ // not gone meanwhile: not ours to read
			}
			continue
		}
		h := holder{PID: pid}
		sc := bufio.NewScanner(bytes.NewReader(maps))
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			// start-end perms offset major:minor inode path
			f := strings.Fields(sc.Text())
			if len(f) < 5 {
				continue
			}
			ino, err := strconv.ParseUint(f[4], 10, 64)
			if err != nil || ino != t.ino {
				continue
			}
			if t.sysv {
				if len(f) < 6 || !strings.HasPrefix(f[5], "/SYSV") || t.sysvPath != "" && f[5] != t.sysvPath {
					continue
				}
			} else {
				ma, mi, ok := strings.Cut(f[3], ":")
				maj, err1 := strconv.ParseUint(ma, 16, 32)
				mino, err2 := strconv.ParseUint(mi, 16, 32)
				if !ok || err1 != nil || err2 != nil || uint32(maj) != major || uint32(mino) != minor {
					continue
				}
			}
			if !contains(h.Maps, f[1]) {
				h.Maps = append(h.Maps, f[1])
			}
		}
		if !t.sysv {
			fds, _ := os.ReadDir(filepath.Join(dir, "fd"))
			for _, fd := range fds {
				var st unix.Stat_t
				if unix.Stat(filepath.Join(dir, "fd", fd.Name()), &st) != nil || uint64(st.Dev) != t.dev || uint64(st.Ino) != t.ino {
					continue
				}
				if n, err := strconv.Atoi(fd.Name()); err == nil {
					h.FDs = append(h.FDs, n)
				}
			}
			sort.Ints(h.FDs)
		}
		if len(h.Maps) == 0 && len(h.FDs) == 0 {
			continue
		}
		comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
		h.Comm = strings.TrimSuffix(string(comm), "\n")
		if cl, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil && len(cl) > 0 {
			h.Cmdline = strings.Split(strings.TrimSuffix(string(cl), "\x00"), "\x00")
		}
		h.UID = -1
		var st unix.Stat_t
		if unix.Stat(dir, &st) == nil {
			h.UID = int(st.Uid)
		}
		hs = append(hs, h)
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i].PID < hs[j].PID })
	return hs, uninspected
}

// String describes h on one line: "811 app-server (app): mapped rw-s, fd 3".
func (h holder) String() string {
	var b strings.Builder
	b.WriteString(strconv.Itoa(h.PID))
	b.WriteString(" " + esc(h.Comm))
	b.WriteString(" (" + esc(userName(h.UID)) + ")")
	var what []string
	if len(h.Maps) > 0 {
		what = append(what, "mapped "+strings.Join(h.Maps, ","))
	}
	if len(h.FDs) > 0 {
		fds := make([]string, len(h.FDs))
		for i, fd := range h.FDs {
			fds[i] = strconv.Itoa(fd)
		}
		w := "fd "
		if len(fds) > 1 {
			w = "fds "
		}
		what = append(what, w+strings.Join(fds, ","))
	}
	if len(what) > 0 {
		b.WriteString(": " + strings.Join(what, ", "))
	}
	return b.String()
}
