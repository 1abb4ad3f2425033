package sys

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// FileID names a file the way /proc/PID/maps does: the major and minor
// numbers of its filesystem's device, and its inode number.
type FileID struct {
	Major, Minor uint32
	Ino          uint64
}

// FileIDOf returns the FileID of the file that st describes.
func FileIDOf(st *unix.Stat_t) FileID {
	return FileID{Major: unix.Major(uint64(st.Dev)), Minor: unix.Minor(uint64(st.Dev)), Ino: st.Ino}
}

// MapScan is what a walk over /proc/*/maps found.
type MapScan struct {
	// Mappers counts, for each file asked about, the processes that map
	// it at least once.
	Mappers map[FileID]int
	// Unreadable counts the processes whose maps could not be read (no
	// ptrace access to them): each of them may map any of the files. It is
	// -1 when /proc hides processes (hidepid) so that their number is
	// unknown.
	Unreadable int
}

// Exact tells whether the counts are complete: every process that /proc
// shows was read, and /proc hides none. (Processes of other PID namespaces
// that this /proc does not show are never counted.)
func (s MapScan) Exact() bool { return s.Unreadable == 0 }

// ScanMaps reads /proc/*/maps and counts the processes that map each file
// in want. It reads only; processes that exit during the walk are skipped.
func ScanMaps(want map[FileID]bool) (MapScan, error) {
	return scanMaps("/proc", want)
}

func scanMaps(proc string, want map[FileID]bool) (MapScan, error) {
	res := MapScan{Mappers: map[FileID]int{}}
	if len(want) == 0 {
		return res, nil
	}
	d, err := os.Open(proc)
	if err != nil {
		return res, err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return res, err
	}
	if procHidesPIDs(proc) {
		res.Unreadable = -1
	}
	buf := bufio.NewReaderSize(nil, 64<<10)
	seen := map[FileID]bool{}
	for _, n := range names {
		if n[0] < '0' || n[0] > '9' {
			continue
		}
		f, err := os.Open(proc + "/" + n + "/maps")
		if err == nil {
			clear(seen)
			buf.Reset(f)
			err = mappedFiles(buf, want, seen)
			f.Close()
		}
		if err != nil {
			// A process that exited meanwhile maps nothing; one we may
			// not read makes the count inexact.
			if !isGone(err) && res.Unreadable >= 0 {
				res.Unreadable++
			}
			continue
		}
		for id := range seen {
			res.Mappers[id]++
		}
	}
	return res, nil
}

func isGone(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ESRCH)
}

// mappedFiles reads one maps file and records in seen the files of want it
// maps. A line is "start-end perms offset MM:mm inode   path".
func mappedFiles(r *bufio.Reader, want map[FileID]bool, seen map[FileID]bool) error {
	for {
		line, err := r.ReadSlice('\n')
		if len(line) > 0 {
			if id, ok := parseMapsLine(line); ok && want[id] {
				seen[id] = true
			}
		}
		switch {
		case err == nil:
		case err == io.EOF:
			return nil
		case errors.Is(err, bufio.ErrBufferFull):
			// A very long path: the fields we need were in the part
			// read; skip the rest of the line.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = r.ReadSlice('\n')
			}
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
		default:
			return err
		}
	}
}

// parseMapsLine returns the device and inode fields of a maps line, and
// false for anonymous mappings (inode 0).
func parseMapsLine(line []byte) (FileID, bool) {
	var f [5][]byte
	rest := line
	for i := range f {
		rest = bytes.TrimLeft(rest, " ")
		j := bytes.IndexAny(rest, " \n")
		if j < 0 {
			j = len(rest)
		}
		f[i], rest = rest[:j], rest[j:]
	}
	ino, err := strconv.ParseUint(string(f[4]), 10, 64)
	if err != nil || ino == 0 {
		return FileID{}, false
	}
	maj, min, ok := bytes.Cut(f[3], []byte{':'})
	if !ok {
		return FileID{}, false
	}
	ma, err1 := strconv.ParseUint(string(maj), 16, 32)
	mi, err2 := strconv.ParseUint(string(min), 16, 32)
	if err1 != nil || err2 != nil {
		return FileID{}, false
	}
	return FileID{Major: uint32(ma), Minor: uint32(mi), Ino: ino}, true
}

// procHidesPIDs tells whether the proc filesystem at proc was mounted with
// hidepid (other users' processes invisible) and this process is not
// privileged enough to see through it.
func procHidesPIDs(proc string) bool {
	b, err := os.ReadFile(proc + "/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		// id parent MM:mm root mountpoint opts ... - fstype source superopts
		f := strings.Fields(line)
		if len(f) < 5 || f[4] != proc {
			continue
		}
		_, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		pf := strings.Fields(post)
		if len(pf) < 3 || pf[0] != "proc" {
			continue
		}
		for _, o := range strings.Split(pf[2], ",") {
			v, ok := strings.CutPrefix(o, "hidepid=")
			if ok && v != "0" && v != "off" {
				return os.Geteuid() != 0
			}
		}
	}
	return false
}
