package main

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/sysv"
)

// errLines renders err for stderr, one line per error it joins; a
// *shm.Error prints as "KEY (BACKEND): what went wrong".
func errLines(err error) []string {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []string
		for _, e := range j.Unwrap() {
			if e != nil {
				out = append(out, errLines(e)...)
			}
		}
		return out
	}
	var se *shm.Error
	if errors.As(err, &se) && se.Err != nil {
		where := esc(se.Key)
		if se.Backend != "" {
			if where != "" {
				where += " "
			}
			where += "(" + esc(se.Backend) + ")"
		}
		if where != "" {
			return []string{where + ": " + escText(se.Err.Error())}
		}
	}
	return []string{escText(err.Error())}
}

var (
	userNames  = map[int]string{}
	groupNames = map[int]string{}
)

func userName(uid int) string {
	if uid < 0 {
		return "?"
	}
	if n, ok := userNames[uid]; ok {
		return n
	}
	n := strconv.Itoa(uid)
	if u, err := user.LookupId(n); err == nil {
		n = u.Username
	}
	userNames[uid] = n
	return n
}

func groupName(gid int) string {
	if gid < 0 {
		return "?"
	}
	if n, ok := groupNames[gid]; ok {
		return n
	}
	n := strconv.Itoa(gid)
	if g, err := user.LookupGroupId(n); err == nil {
		n = g.Name
	}
	groupNames[gid] = n
	return n
}

func attached(in shm.Info) string {
	switch {
	case in.Attached < 0:
		return "?"
	case !in.AttachedExact && in.Attached == 0:
		return "?"
	case !in.AttachedExact:
		return strconv.Itoa(in.Attached) + "+"
	}
	return strconv.Itoa(in.Attached)
}

func status(in shm.Info) string {
	switch {
	case in.Err != nil:
		return "unreadable"
	case in.Foreign:
		return "foreign"
	case in.Temp && in.CreatorPID == 0:
		return "temp,blank"
	case in.Temp:
		return "temp"
	case in.Ready:
		return "ready"
	}
	return "init"
}

func stale(in shm.Info) string {
	switch {
	case in.Stale:
		return "yes"
	case in.Err != nil || in.Foreign:
		return "-"
	case in.Creator == shm.LivenessDead:
		return "no"
	case in.Creator == shm.LivenessUnknown && in.CreatorPID != 0:
		return "?"
	}
	return "no"
}

func lockCol(in shm.Info) string {
	if in.Err != nil || in.Foreign || in.CreatorPID == 0 {
		return "-"
	}
	l := in.Lock
	var s string
	switch l.State {
	case shm.LockHeld:
		s = "held:" + strconv.Itoa(l.PID)
	case shm.LockHolderDead:
		s = "dead:" + strconv.Itoa(l.PID)
	default:
		s = "free"
	}
	if l.Inconsistent {
		s += ",inconsistent"
	}
	return s
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// humanSize prints n in powers of 1024 with one letter, as ipcs --human
// does: 512B, 4K, 1.5M, 64G.
func humanSize(n int64) string {
	if n < 1024 {
		return strconv.FormatInt(n, 10) + "B"
	}
	f := float64(n)
	units := "KMGTPE"
	i := -1
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	s := strconv.FormatFloat(f, 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	return s + units[i:i+1]
}

func sizeCell(n int64, human bool) string {
	if human {
		return humanSize(n)
	}
	return strconv.FormatInt(n, 10)
}

// writeTable prints regions like ipcs -m, one a line.
func writeTable(w io.Writer, infos []shm.Info, human bool) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKEND\tKEY\tID\tOWNER\tPERMS\tBYTES\tOBJBYTES\tNATTCH\tCPID\tCREATOR\tSTATUS\tLOCK\tSTALE")
	for _, in := range infos {
		cpid, creator := "-", "-"
		if in.CreatorPID != 0 {
			cpid, creator = strconv.Itoa(in.CreatorPID), in.Creator.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%03o\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			escCell(in.Backend), dash(escCell(in.Key)), dash(escCell(in.ID)), escCell(userName(in.UID)),
			uint32(in.Mode.Perm()), sizeCell(in.Size, human), sizeCell(in.ObjectSize, human),
			attached(in), cpid, creator, status(in), lockCol(in), stale(in))
	}
	return tw.Flush()
}

// writeStat prints one region, a field a line.
func writeStat(w io.Writer, in shm.Info, x extras) error {
	tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
	p := func(k string, v any) { fmt.Fprintf(tw, "%s:\t%v\n", k, v) }
	p("key", dash(esc(in.Key)))
	p("backend", esc(in.Backend))
	if in.Path != "" {
		p("path", esc(in.Path))
	}
	if in.ID != "" {
		p("id", esc(in.ID))
	}
	if st := x.sysv; st != nil {
		p("sysv", fmt.Sprintf("shmid %d, key 0x%08x, nattch %d, cpid %d, lpid %d%s", st.ID, uint32(st.Key), st.Attached, st.CPID, st.LPID,
			map[bool]string{true: ", removed (freed at the last detach)"}[st.Removed]))
	}
	p("size", fmt.Sprintf("%d bytes of data (object %d bytes)", in.Size, in.ObjectSize))
	p("mode", fmt.Sprintf("%04o", uint32(in.Mode.Perm())))
	p("owner", fmt.Sprintf("%s (%d)", esc(userName(in.UID)), in.UID))
	p("group", fmt.Sprintf("%s (%d)", esc(groupName(in.GID)), in.GID))
	if in.Err != nil {
		p("error", strings.Join(errLines(in.Err), "; "))
	}
	if in.CreatorPID != 0 {
		p("creator", fmt.Sprintf("pid %d, %s", in.CreatorPID, in.Creator))
		p("created", in.Created.Format(time.RFC3339Nano))
		p("state", status(in))
		p("lock", in.Lock.String())
	} else {
		p("state", status(in))
	}
	p("attached", attached(in))
	if x.scanned {
		switch {
		case len(x.holders) == 0:
			p("processes", "none found"+uninspected(x.uninspected))
		default:
			for i, h := range x.holders {
				k := "processes"
				if i > 0 {
					k = ""
				}
				v := h.String()
				if i == len(x.holders)-1 {
					v += uninspected(x.uninspected)
				}
				if k == "" {
					fmt.Fprintf(tw, "\t%s\n", v)
				} else {
					p(k, v)
				}
			}
		}
	}
	p("stale", stale(in))
	if in.Reason != "" {
		p("reason", escText(in.Reason))
	}
	return tw.Flush()
}

func uninspected(n int) string {
	switch {
	case n < 0:
		return " (/proc could not be read)"
	case n == 1:
		return " (1 process could not be inspected" + rootHint() + ")"
	case n > 1:
		return fmt.Sprintf(" (%d processes could not be inspected%s)", n, rootHint())
	}
	return ""
}

// rootHint is the advice for processes that could not be inspected: root
// sees every process unless /proc refuses (as it can for PID 1 of a VM).
func rootHint() string {
	if os.Geteuid() == 0 {
		return ": /proc would not show their mappings, even to root"
	}
	return ": run as root to see every one"
}

// describe names a region in gc and rm output.
func describe(in shm.Info) string {
	s := esc(in.Backend) + " " + dash(esc(in.Key))
	if in.ID != "" {
		s += " (id " + esc(in.ID) + ")"
	}
	if in.Temp && in.Path != "" {
		s += " (" + esc(in.Path) + ")"
	}
	return s
}

// jsonInfo is the JSON form of a shm.Info: the schema of ls --json, gc
// --json and (with the fields of jsonStat) stat --json. Every field is
// always present; those that do not apply are null. Fields may be added;
// none is renamed, removed or changes type. 'shmctl help json' documents
// them (jsonSchema).
type jsonInfo struct {
	Key           string     `json:"key"`
	KeyHex        *string    `json:"key_hex"`
	Backend       string     `json:"backend"`
	Path          *string    `json:"path"`
	ID            *int64     `json:"id"`
	Handle        *string    `json:"handle"`
	Size          int64      `json:"size"`
	ObjectSize    int64      `json:"object_size"`
	Mode          string     `json:"mode"`
	UID           int        `json:"uid"`
	GID           int        `json:"gid"`
	Owner         *string    `json:"owner"`
	Group         *string    `json:"group"`
	CreatorPID    *int       `json:"creator_pid"`
	Creator       *string    `json:"creator"`
	Created       *time.Time `json:"created"`
	Status        string     `json:"status"`
	Ready         bool       `json:"ready"`
	Lock          *jsonLock  `json:"lock"`
	Attached      int        `json:"attached"`
	AttachedExact bool       `json:"attached_exact"`
	Stale         bool       `json:"stale"`
	Reason        string     `json:"reason"`
	Foreign       bool       `json:"foreign"`
	Temp          bool       `json:"temp"`
	Error         *string    `json:"error"`
	SysV          *jsonSysV  `json:"sysv"`
}

type jsonLock struct {
	State        string `json:"state"` // free, held, holder dead
	PID          int    `json:"pid"`
	Robust       bool   `json:"robust"` // the kernel marks the holder's death
	Inconsistent bool   `json:"inconsistent"`
	Waiters      bool   `json:"waiters"`
}

// jsonSysV is what IPC_STAT tells about a SysV segment.
type jsonSysV struct {
	Shmid   int   `json:"shmid"`
	Key     int64 `json:"key"` // key_t, as an unsigned 32-bit number
	Nattch  int   `json:"nattch"`
	CPID    int   `json:"cpid"`
	LPID    int   `json:"lpid"`
	Removed bool  `json:"removed"`
}

// jsonStat is stat --json: jsonInfo and the processes that use the region.
type jsonStat struct {
	jsonInfo
	// Processes is null when the object could not be identified in /proc.
	Processes   *[]jsonProc `json:"processes"`
	Uninspected int         `json:"processes_uninspected"`
}

type jsonProc struct {
	PID     int      `json:"pid"`
	Command string   `json:"command"`
	Cmdline []string `json:"cmdline"`
	UID     int      `json:"uid"`
	User    *string  `json:"user"`
	Maps    []string `json:"maps"`
	FDs     []int    `json:"fds"`
}

func ptr[T any](v T) *T { return &v }

func nameOrNil(id int, name func(int) string) *string {
	if id < 0 {
		return nil
	}
	n := name(id)
	return &n
}

func infoJSON(in shm.Info) jsonInfo {
	j := jsonInfo{
		Key: in.Key, Backend: in.Backend,
		Size: in.Size, ObjectSize: in.ObjectSize, Mode: fmt.Sprintf("%04o", uint32(in.Mode.Perm())),
		UID: in.UID, GID: in.GID, Owner: nameOrNil(in.UID, userName), Group: nameOrNil(in.GID, groupName),
		Status: status(in), Ready: in.Ready,
		Attached: in.Attached, AttachedExact: in.AttachedExact,
		Stale: in.Stale, Reason: in.Reason, Foreign: in.Foreign, Temp: in.Temp,
	}
	if !utf8.ValidString(in.Key) {
		j.KeyHex = ptr(hex.EncodeToString([]byte(in.Key)))
	}
	if in.Path != "" {
		j.Path = ptr(in.Path)
	}
	if in.ID != "" {
		if n, err := strconv.ParseInt(in.ID, 10, 64); err == nil && in.Backend == "sysv" {
			j.ID = &n
		} else {
			j.Handle = ptr(in.ID)
		}
	}
	if in.CreatorPID != 0 {
		j.CreatorPID, j.Creator = ptr(in.CreatorPID), ptr(in.Creator.String())
		j.Created = ptr(in.Created)
		j.Lock = &jsonLock{State: in.Lock.State.String(), PID: in.Lock.PID,
			Inconsistent: in.Lock.Inconsistent, Waiters: in.Lock.Waiters, Robust: in.Lock.Robust}
	}
	if in.Err != nil {
		j.Error = ptr(strings.Join(errLines(in.Err), "; "))
	}
	return j
}

func sysvJSON(st *sysv.Stat) *jsonSysV {
	if st == nil {
		return nil
	}
	return &jsonSysV{Shmid: st.ID, Key: int64(uint32(st.Key)), Nattch: st.Attached, CPID: st.CPID, LPID: st.LPID, Removed: st.Removed}
}

// toJSON converts infos for ls and gc, with IPC_STAT's view of SysV
// segments.
func toJSON(infos []shm.Info) []jsonInfo {
	out := make([]jsonInfo, 0, len(infos))
	be := sysv.New()
	for _, in := range infos {
		j := infoJSON(in)
		if j.ID != nil {
			if st, err := be.StatID(in.ID); err == nil {
				j.SysV = sysvJSON(&st)
			}
		}
		out = append(out, j)
	}
	return out
}

func statJSON(in shm.Info, x extras) jsonStat {
	j := jsonStat{jsonInfo: infoJSON(in), Uninspected: x.uninspected}
	j.SysV = sysvJSON(x.sysv)
	if x.scanned {
		ps := make([]jsonProc, 0, len(x.holders))
		for _, h := range x.holders {
			jp := jsonProc{PID: h.PID, Command: h.Comm, Cmdline: h.Cmdline, UID: h.UID,
				User: nameOrNil(h.UID, userName), Maps: h.Maps, FDs: h.FDs}
			if jp.Maps == nil {
				jp.Maps = []string{}
			}
			if jp.FDs == nil {
				jp.FDs = []int{}
			}
			ps = append(ps, jp)
		}
		j.Processes = &ps
	}
	return j
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
