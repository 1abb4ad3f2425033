package main

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
)

// dump prints length bytes (-1: to the end) of f's data from offset.
func (c *cli) dump(f found, offset, length int64, squeeze bool) error {
	size := f.info.Size
	if offset > size {
		return fmt.Errorf("%s (%s): offset %d is beyond the region's %d bytes", esc(f.info.Key), f.info.Backend, offset, size)
	}
	end := size
	if length >= 0 && offset+length < end {
		end = offset + length
	}
	h := &hexdumper{w: c.stdout, off: offset, squeeze: squeeze}
	// An object with a file path is read through a read-only descriptor; any
	// other is attached read-only.
	switch {
	case strings.HasPrefix(f.info.Path, "/"):
		if err := c.dumpFile(f, offset, end, h); err != nil {
			return err
		}
	default:
		if err := f.sameSegment(); err != nil {
			return err
		}
		r, err := shm.Open(f.key, 0, shm.WithBackend(f.be), shm.WithReadOnly())
		if err != nil {
			return err
		}
		defer r.Close()
		data := r.Bytes()
		end = min(end, int64(len(data)))
		if offset < end {
			h.write(data[offset:end])
		}
	}
	return h.close()
}

// dumpFile reads the data of a region whose object has a path from a read-only
// descriptor, with pread: no mapping, no write access needed, and a file
// truncated meanwhile gives a short read, not SIGBUS.
func (c *cli) dumpFile(f found, offset, end int64, h *hexdumper) error {
	p := f.info.Path
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return &shm.Error{Op: "dump", Key: f.info.Key, Backend: f.info.Backend, Err: &fs.PathError{Op: "open", Path: p, Err: err}}
	}
	defer unix.Close(fd)
	buf := make([]byte, 64<<10)
	for pos := offset; pos < end; {
		n := int(min(int64(len(buf)), end-pos))
		m, err := unix.Pread(fd, buf[:n], f.info.HeaderSize+pos)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &shm.Error{Op: "dump", Key: f.info.Key, Backend: f.info.Backend, Err: &fs.PathError{Op: "read", Path: p, Err: err}}
		}
		if m == 0 {
			return &shm.Error{Op: "dump", Key: f.info.Key, Backend: f.info.Backend,
				Err: fmt.Errorf("the object ends at data byte %d, before the %d its header claims (truncated?)", pos, f.info.Size)}
		}
		if err := h.write(buf[:m]); err != nil {
			return err
		}
		pos += int64(m)
	}
	return nil
}

// hexdumper prints data like xxd(1): the offset, 16 bytes in groups of two
// in hex, then the same bytes in ASCII ('.' for the unprintable). With
// squeeze, a run of lines identical to the one before is printed as "*"
// and the run's last line, as xxd -a prints a run of zero lines (hexdump(1)
// squeezes any repeated line, as this does).
type hexdumper struct {
	w       io.Writer
	off     int64 // of the next line
	squeeze bool

	part    []byte // the start of the next line
	prev    []byte // the last line printed
	skipped []byte // the last line not printed, in a run
	skipOff int64
	star    bool
	err     error
}

func (h *hexdumper) write(p []byte) error {
	for len(p) > 0 && h.err == nil {
		if len(h.part) == 0 && len(p) >= 16 {
			h.line(p[:16])
			p = p[16:]
			continue
		}
		n := min(16-len(h.part), len(p))
		h.part = append(h.part, p[:n]...)
		p = p[n:]
		if len(h.part) == 16 {
			h.line(h.part)
			h.part = h.part[:0]
		}
	}
	return h.err
}

func (h *hexdumper) line(l []byte) {
	off := h.off
	h.off += int64(len(l))
	if h.squeeze && len(l) == 16 && h.prev != nil && bytes.Equal(l, h.prev) {
		if !h.star {
			h.print("*\n")
			h.star = true
		}
		h.skipped = append(h.skipped[:0], l...)
		h.skipOff = off
		return
	}
	h.star, h.skipped = false, h.skipped[:0]
	h.prev = append(h.prev[:0], l...)
	h.print(formatLine(off, l))
}

func (h *hexdumper) close() error {
	if len(h.part) > 0 {
		h.line(h.part)
		h.part = nil
	}
	if h.star && len(h.skipped) > 0 {
		h.print(formatLine(h.skipOff, h.skipped))
	}
	return h.err
}

func (h *hexdumper) print(s string) {
	if h.err == nil {
		_, h.err = io.WriteString(h.w, s)
	}
}

func formatLine(off int64, l []byte) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%08x: ", off)
	for i := 0; i < 16; i++ {
		if i < len(l) {
			fmt.Fprintf(&b, "%02x", l[i])
		} else {
			b.WriteString("  ")
		}
		if i%2 == 1 && i < 15 {
			b.WriteByte(' ')
		}
	}
	b.WriteString("  ")
	for _, c := range l {
		if c >= 0x20 && c < 0x7f {
			b.WriteByte(c)
		} else {
			b.WriteByte('.')
		}
	}
	b.WriteByte('\n')
	return b.String()
}

// writeHeader prints a region's header, decoded from what shm.Stat tells
// (the public API gives no raw header: magic, layout version and the raw
// lock word are not shown).
func writeHeader(w io.Writer, in shm.Info) error {
	tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
	p := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	p("key", dash(esc(in.Key)))
	p("backend", esc(in.Backend))
	p("header", fmt.Sprintf("%d bytes, at offset 0 (a table of %d users included)", in.HeaderSize, in.MaxUsers))
	p("data", fmt.Sprintf("%d bytes, at offset %d", in.Size, in.HeaderSize))
	p("object", fmt.Sprintf("%d bytes", in.ObjectSize))
	if in.CreatorPID != 0 {
		p("creator", fmt.Sprintf("pid %d (%s in this PID namespace)", in.CreatorPID, in.Creator))
		p("created", in.Created.Format(time.RFC3339Nano))
	} else {
		p("creator", "- (never recorded: the header is blank)")
	}
	st := "init (the creator has not finished initialising it)"
	if in.Ready {
		st = "ready"
	}
	p("state", st)
	l := in.Lock
	word := l.State.String()
	if l.PID != 0 {
		word += ", holder " + strconv.Itoa(l.PID)
		if !l.Robust {
			word += " (judged by PID: its kernel refused a robust list)"
		}
	}
	p("lock", word)
	p("users", fmt.Sprintf("%d of %d slots", len(in.Users), in.MaxUsers))
	p("owner died", map[bool]string{true: "yes: inconsistent until a holder calls MarkConsistent", false: "no"}[l.Inconsistent])
	p("waiters", map[bool]string{true: "yes", false: "no"}[l.Waiters])
	return tw.Flush()
}
