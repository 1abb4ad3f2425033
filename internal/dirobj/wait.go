package dirobj

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// WaitCreate returns when a file named name may have appeared in the
// directory (a creation or a rename into it, which is how objects are
// published), or when ctx is done (with ctx's error). It watches the
// directory with inotify through the Go runtime's poller, so a waiting
// goroutine holds no thread; a file that appeared just before the watch
// began ends the wait at once. Where inotify is not available it returns an
// error at once and the caller polls.
func (d Dir) WaitCreate(ctx context.Context, name string) error {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return &fs.PathError{Op: "inotify_init1", Path: d.Path, Err: err}
	}
	f := os.NewFile(uintptr(fd), "inotify:"+d.Path)
	defer f.Close()
	if _, err := unix.InotifyAddWatch(fd, d.Path, unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_ONLYDIR); err != nil {
		return &fs.PathError{Op: "inotify_add_watch", Path: d.Path, Err: err}
	}
	// Published between the caller's look and the watch: no event will
	// come for it.
	var st unix.Stat_t
	if unix.Lstat(d.Join(name), &st) == nil {
		return nil
	}
	if dl, ok := ctx.Deadline(); ok {
		f.SetReadDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, 16<<10)
	for {
		n, err := f.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return context.DeadlineExceeded
			}
			return &fs.PathError{Op: "read", Path: "inotify:" + d.Path, Err: err}
		}
		for ev := buf[:n]; len(ev) >= unix.SizeofInotifyEvent; {
			mask := binary.NativeEndian.Uint32(ev[4:])
			l := int(binary.NativeEndian.Uint32(ev[12:]))
			end := unix.SizeofInotifyEvent + l
			if end > len(ev) {
				break
			}
			evName := ev[unix.SizeofInotifyEvent:end]
			if i := bytes.IndexByte(evName, 0); i >= 0 {
				evName = evName[:i]
			}
			if mask&unix.IN_Q_OVERFLOW != 0 || string(evName) == name {
				return nil
			}
			ev = ev[end:]
		}
	}
}
