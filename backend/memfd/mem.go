package memfd

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Reserving the pages of a memfd (fallocate) charges memory with no limit
// of the file's own: a reservation bigger than what the machine, or the
// process's memory cgroup, can give gets a process killed by the OOM killer
// (this one, or another) instead of an error. Create therefore checks that
// the size fits in what is available, and reserves big regions in chunks,
// checking again before each one, so that memory that others take
// meanwhile also gives an error rather than a kill.
const (
	// roomCheckMin is the smallest size that Create checks for: smaller
	// reservations cost no more than the process's other allocations.
	roomCheckMin = 1 << 20
	// reserveChunk is how much Create reserves between two checks.
	reserveChunk = 256 << 20
)

// roomError is a reservation refused for want of memory; it matches
// ENOMEM.
type roomError struct {
	size, avail int64
	where       string
}

func (e *roomError) Error() string {
	return fmt.Sprintf("%s does not fit in %s (%s available)", sizeString(e.size), e.where, sizeString(max(e.avail, 0)))
}

func (e *roomError) Unwrap() error { return unix.ENOMEM }

// sizeString shows n bytes in the largest binary unit that fits.
func sizeString(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// reserve reserves size bytes of the memfd fd, checking first (for big
// sizes) that they fit in the memory available to this process.
func reserve(fd int, size int64) error {
	if size < roomCheckMin {
		return fallocate(fd, 0, size)
	}
	for off := int64(0); off < size; {
		// Room for all that is left: others may have taken some meanwhile.
		if err := checkRoom(size - off); err != nil {
			return err
		}
		n := min(size-off, reserveChunk)
		if err := fallocate(fd, off, n); err != nil {
			return err
		}
		off += n
	}
	return nil
}

func fallocate(fd int, off, n int64) error {
	for {
		err := unix.Fallocate(fd, 0, off, n)
		if err != unix.EINTR {
			return err
		}
	}
}

// checkRoom returns a *roomError when size bytes of shared memory would not
// fit in what the machine has available (MemAvailable and free swap), or in
// what the memory cgroups of this process (its own and each above it) allow
// beyond what they use (less their reclaimable page cache), each less a
// small margin.
func checkRoom(size int64) error {
	mi, err := readKV("/proc/meminfo", 1024)
	if err != nil {
		return nil // cannot tell: leave it to the kernel
	}
	swapFree := mi["SwapFree"]
	if avail, ok := mi["MemAvailable"]; ok {
		room := avail + swapFree - margin(mi["MemTotal"], 16<<20, 1<<30)
		if size > room {
			what := "the memory available"
			if swapFree == 0 {
				what += " (no swap)"
			} else {
				what += " and swap"
			}
			return &roomError{size: size, avail: room, where: what}
		}
	}
	for _, cg := range memoryCgroups() {
		if room, limit, ok := cg.room(swapFree); ok {
			room -= margin(limit, 1<<20, 256<<20)
			if size > room {
				return &roomError{size: size, avail: room, where: "memory cgroup " + cg.name + " (limit " + sizeString(limit) + ")"}
			}
		}
	}
	return nil
}

// margin is what a check keeps free of total: a 64th, within [lo, hi].
func margin(total, lo, hi int64) int64 { return min(max(total/64, lo), hi) }

// cgroup is the directory of one memory cgroup.
type cgroup struct {
	dir  string
	name string // its path in the hierarchy, for messages
	v2   bool
}

// unlimited is what a limit at or above means no limit (cgroup v1 shows
// "no limit" as the largest page count in bytes).
const unlimited = 1 << 62

// room returns how many more bytes the cgroup can be charged, counting
// its reclaimable page cache and the swap it may use, and its limit; ok is
// false when it has no limit.
func (cg cgroup) room(swapFree int64) (room, limit int64, ok bool) {
	read := func(f string) (int64, bool) {
		data, err := os.ReadFile(filepath.Join(cg.dir, f))
		if err != nil {
			return 0, false
		}
		s := strings.TrimSpace(string(data))
		if s == "max" {
			return unlimited, true
		}
		v, err := strconv.ParseInt(s, 10, 64)
		return v, err == nil
	}
	stat, _ := readKV(filepath.Join(cg.dir, "memory.stat"), 1)
	if cg.v2 {
		limit, ok1 := read("memory.max")
		used, ok2 := read("memory.current")
		if !ok1 || !ok2 || limit >= unlimited {
			return 0, 0, false
		}
		swap := swapFree
		if smax, ok := read("memory.swap.max"); ok && smax < unlimited {
			scur, _ := read("memory.swap.current")
			swap = min(swap, max(smax-scur, 0))
		}
		return limit - used + stat["inactive_file"] + swap, limit, true
	}
	limit, ok1 := read("memory.limit_in_bytes")
	used, ok2 := read("memory.usage_in_bytes")
	if !ok1 || !ok2 || limit >= unlimited {
		return 0, 0, false
	}
	cache, ok := stat["total_inactive_file"]
	if !ok {
		cache = stat["inactive_file"]
	}
	room = limit - used + cache + swapFree
	// memory.memsw.limit_in_bytes bounds memory and swap together.
	if mslimit, ok := read("memory.memsw.limit_in_bytes"); ok && mslimit < unlimited {
		if msused, ok := read("memory.memsw.usage_in_bytes"); ok {
			room = min(room, mslimit-msused+cache)
		}
	}
	return room, limit, true
}

// memoryCgroups returns the memory cgroup of this process and those above
// it, on cgroup v2 or on the v1 memory controller.
func memoryCgroups() []cgroup {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil
	}
	var v1, v2 string
	hasV1, hasV2 := false, false
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[0] == "0" && f[1] == "" {
			v2, hasV2 = f[2], true
		}
		for _, c := range strings.Split(f[1], ",") {
			if c == "memory" {
				v1, hasV1 = f[2], true
			}
		}
	}
	if !hasV1 && !hasV2 {
		return nil
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []cgroup
	add := func(mnt, root, path string, isV2 bool) {
		rel, ok := strings.CutPrefix(path, root)
		if !ok {
			return // our cgroup is not under this mount
		}
		rel = filepath.Clean("/" + rel)
		for {
			out = append(out, cgroup{dir: filepath.Join(mnt, rel), name: rel, v2: isV2})
			if rel == "/" {
				return
			}
			rel = filepath.Dir(rel)
		}
	}
	for _, l := range strings.Split(string(mounts), "\n") {
		// ID parent major:minor root mountpoint options [optional...] - fstype source superoptions
		i := strings.Index(l, " - ")
		if i < 0 {
			continue
		}
		pre, post := strings.Fields(l[:i]), strings.Fields(l[i+3:])
		if len(pre) < 5 || len(post) < 3 {
			continue
		}
		root, mnt := unescape(pre[3]), unescape(pre[4])
		switch post[0] {
		case "cgroup2":
			if hasV2 && !hasV1 {
				if ctl, err := os.ReadFile(filepath.Join(mnt, "cgroup.controllers")); err == nil && bytes.Contains(ctl, []byte("memory")) {
					add(mnt, root, v2, true)
				}
			}
		case "cgroup":
			if hasV1 && contains2(strings.Split(post[2], ","), "memory") {
				add(mnt, root, v1, false)
			}
		}
		if len(out) > 0 {
			break
		}
	}
	return out
}

func contains2(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// unescape undoes the octal escapes of /proc/self/mountinfo (\040 for a
// space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// readKV reads a file of "key value" or "key: value [kB]" lines, the values
// multiplied by unit.
func readKV(path string, unit int64) (map[string]int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			continue
		}
		m[strings.TrimSuffix(k, ":")] = n * unit
	}
	return m, sc.Err()
}
