package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/user"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/shmgo/shm"
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
	case in.Creator == shm.Dead:
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
		if l.Robust {
			s = "held:tid" + strconv.Itoa(l.PID)
		}
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

// writeTable prints regions like ipcs -m, one a line.
func writeTable(w io.Writer, infos []shm.Info) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKEND\tKEY\tID\tOWNER\tPERMS\tBYTES\tNATTCH\tCPID\tCREATOR\tSTATUS\tLOCK\tSTALE")
	for _, in := range infos {
		cpid, creator := "-", "-"
		if in.CreatorPID != 0 {
			cpid, creator = strconv.Itoa(in.CreatorPID), in.Creator.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%03o\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n",
			escCell(in.Backend), dash(escCell(in.Key)), dash(escCell(in.ID)), escCell(userName(in.UID)), uint32(in.Mode.Perm()), in.Size,
			attached(in), cpid, creator, status(in), lockCol(in), stale(in))
	}
	return tw.Flush()
}

// writeStat prints one region, a field a line.
func writeStat(w io.Writer, in shm.Info) error {
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
	p("stale", stale(in))
	if in.Reason != "" {
		p("reason", escText(in.Reason))
	}
	return tw.Flush()
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

// jsonInfo is the JSON form of a shm.Info.
type jsonInfo struct {
	Key           string     `json:"key"`
	Backend       string     `json:"backend"`
	Path          string     `json:"path,omitempty"`
	ID            string     `json:"id,omitempty"`
	Size          int64      `json:"size"`
	ObjectSize    int64      `json:"object_size"`
	Mode          string     `json:"mode"`
	UID           int        `json:"uid"`
	GID           int        `json:"gid"`
	Owner         string     `json:"owner,omitempty"`
	CreatorPID    int        `json:"creator_pid,omitempty"`
	Creator       string     `json:"creator,omitempty"`
	Created       *time.Time `json:"created,omitempty"`
	Ready         bool       `json:"ready"`
	Lock          *jsonLock  `json:"lock,omitempty"`
	Attached      int        `json:"attached"`
	AttachedExact bool       `json:"attached_exact"`
	Stale         bool       `json:"stale"`
	Reason        string     `json:"reason,omitempty"`
	Foreign       bool       `json:"foreign,omitempty"`
	Temp          bool       `json:"temp,omitempty"`
	Error         string     `json:"error,omitempty"`
}

type jsonLock struct {
	State        string `json:"state"` // free, held, holder dead
	PID          int    `json:"pid,omitempty"`
	Inconsistent bool   `json:"inconsistent,omitempty"`
	Waiters      bool   `json:"waiters,omitempty"`
	Robust       bool   `json:"robust,omitempty"` // pid is then a thread ID
}

func toJSON(infos []shm.Info) []jsonInfo {
	out := make([]jsonInfo, 0, len(infos))
	for _, in := range infos {
		j := jsonInfo{
			Key: in.Key, Backend: in.Backend, Path: in.Path, ID: in.ID,
			Size: in.Size, ObjectSize: in.ObjectSize, Mode: fmt.Sprintf("%04o", uint32(in.Mode.Perm())),
			UID: in.UID, GID: in.GID, Ready: in.Ready,
			Attached: in.Attached, AttachedExact: in.AttachedExact,
			Stale: in.Stale, Reason: in.Reason, Foreign: in.Foreign, Temp: in.Temp,
		}
		if in.UID >= 0 {
			j.Owner = userName(in.UID)
		}
		if in.CreatorPID != 0 {
			j.CreatorPID, j.Creator = in.CreatorPID, in.Creator.String()
			t := in.Created
			j.Created = &t
			j.Lock = &jsonLock{State: in.Lock.State.String(), PID: in.Lock.PID,
				Inconsistent: in.Lock.Inconsistent, Waiters: in.Lock.Waiters, Robust: in.Lock.Robust}
		}
		if in.Err != nil {
			j.Error = in.Err.Error()
		}
		out = append(out, j)
	}
	return out
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// hexdump prints data like xxd(1): the offset (starting at base), 16 bytes
// in groups of two in hex, then the same bytes in ASCII ('.' for the
// unprintable).
func hexdump(w io.Writer, data []byte, base int64) error {
	var line strings.Builder
	for off := 0; off < len(data); off += 16 {
		line.Reset()
		end := min(off+16, len(data))
		fmt.Fprintf(&line, "%08x: ", base+int64(off))
		for i := 0; i < 16; i++ {
			if off+i < end {
				fmt.Fprintf(&line, "%02x", data[off+i])
			} else {
				line.WriteString("  ")
			}
			if i%2 == 1 && i < 15 {
				line.WriteByte(' ')
			}
		}
		line.WriteString("  ")
		for _, b := range data[off:end] {
			if b >= 0x20 && b < 0x7f {
				line.WriteByte(b)
			} else {
				line.WriteByte('.')
			}
		}
		line.WriteByte('\n')
		if _, err := io.WriteString(w, line.String()); err != nil {
			return err
		}
	}
	return nil
}
