package dirobj

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
)

// ErrForeign is matched by the errors of Open, OpenContext and Inspect when
// the name holds something that cannot be one of our objects: a symbolic
// link, a FIFO, a directory, a socket, a device, or a regular file with
// more than one link. The error is a *ForeignError that says which. It
// matches neither fs.ErrExist nor fs.ErrNotExist: package shm reports it as
// a corrupt region (shm.ErrCorrupt), as it does a regular file whose
// contents are not a region. It is backend.ErrForeign.
var ErrForeign = backend.ErrForeign

// ForeignError says what Open found under a name instead of a regular file
// with one link.
type ForeignError struct {
	What string // "a symbolic link", "a FIFO", "a hard-linked file (2 links)", ...
}

func (e *ForeignError) Error() string { return "found " + e.What + ", not a region's file" }

// Is makes a ForeignError match ErrForeign.
func (e *ForeignError) Is(target error) bool { return target == ErrForeign }

// kind names a file type for a ForeignError.
func kind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFLNK:
		return "a symbolic link"
	case unix.S_IFIFO:
		return "a FIFO (named pipe)"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFSOCK:
		return "a unix socket"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	}
	return fmt.Sprintf("a file of unknown type %#o", mode&unix.S_IFMT)
}

// Inspect tells whether st, the status of what is under the object name,
// can be one of our objects: nil for a regular file with one link, a
// *ForeignError otherwise. A second link is accepted while it is the
// temporary name of a publication in progress (on a filesystem without
// renameat2's RENAME_NOREPLACE, Publish links the final name and then
// removes the temporary one); name is the object's name, st its status
// (lstat or fstat).
//
// Package shm's Stat and Remove can call it on what they find under a key,
// so that they agree with Create (which says the key is taken) and Open
// (which says what is there).
func (d Dir) Inspect(name string, st *unix.Stat_t) error {
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return &ForeignError{What: kind(st.Mode)}
	}
	if st.Nlink > 1 && !d.publishing(name, st) {
		return &ForeignError{What: fmt.Sprintf("a hard-linked file (%d links)", st.Nlink)}
	}
	return nil
}

// publishing tells whether the second link of the file st under name is
// one of name's temporary names (a Publish by link(2) between its link and
// its unlink, or a creator that died in between).
func (d Dir) publishing(name string, st *unix.Stat_t) bool {
	if st.Nlink != 2 {
		return false
	}
	names, err := ReadDir(d.Path)
	if err != nil {
		return false
	}
	prefix := d.TempPrefix + name + "."
	for _, n := range names {
		rest, ok := strings.CutPrefix(n, prefix)
		if !ok || strings.Contains(rest, ".") {
			continue
		}
		var tst unix.Stat_t
		if unix.Lstat(d.Join(n), &tst) == nil && tst.Dev == st.Dev && tst.Ino == st.Ino {
			return true
		}
	}
	return false
}

// openFlags open an object without following a symbolic link, without
// blocking on a FIFO or on a lease (EWOULDBLOCK instead), and without
// making a terminal the controlling one.
const openFlags = unix.O_RDWR | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC

// Open is one try of OpenContext: a lease held on the file fails it at
// once with an error matching syscall.EWOULDBLOCK.
func (d Dir) Open(name string) (int, *unix.Stat_t, error) {
	return d.open(name)
}

// OpenContext opens the object name read-write (see openFlags) and returns
// its descriptor, in blocking mode, and its status.
//
// It fails with an error matching fs.ErrNotExist when there is no such
// name (or the file lost its last link while being opened), and with a
// *ForeignError (ErrForeign) when the name holds anything but a regular
// file with one link: nothing under a key can make it follow a link, block
// on a FIFO, or open a directory or socket. (A device node is opened, in
// non-blocking mode and without becoming a controlling terminal, before it
// is rejected; only a privileged user can make one.)
//
// While another process holds a lease on the file (package shm's cleanup
// does while it decides whether to remove a file; a hostile owner may keep
// one for the kernel's lease-break-time, 45 s by default), open(2) fails
// with EWOULDBLOCK instead of blocking; OpenContext tries again with
// backoff until ctx is done, or for def when ctx has no deadline. It then
// fails with a *BusyError, which matches os.ErrDeadlineExceeded when the
// time ran out (context.Canceled instead when ctx was cancelled). Each try
// tells the lease holder that someone is opening the file, which is what
// package shm's cleanup watches for to give the name back.
func (d Dir) OpenContext(ctx context.Context, name string, def time.Duration) (int, *unix.Stat_t, error) {
	r := NewRetry(ctx, def)
	for {
		fd, st, err := d.open(name)
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return fd, st, err
		}
		if werr := r.Wait(); werr != nil {
			return -1, nil, &fs.PathError{Op: "open", Path: d.Join(name), Err: &BusyError{
				Why: "another process holds a lease on the file", Err: unix.EWOULDBLOCK, Ctx: werr,
			}}
		}
	}
}

// open is one try of OpenContext. A lease gives a *fs.PathError wrapping
// EWOULDBLOCK.
func (d Dir) open(name string) (int, *unix.Stat_t, error) {
	p := d.Join(name)
	var fd int
	var err error
	for {
		flags := openFlags
		if d.ReadOnly {
			flags = flags&^unix.O_RDWR | unix.O_RDONLY
		}
		fd, err = unix.Open(p, flags, 0)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		if err != unix.ENOENT && err != unix.EWOULDBLOCK {
			// Say what is there when it is not a regular file (ELOOP for
			// a symbolic link, EISDIR, ENXIO for a socket, EACCES for a
			// device on a nodev mount, ...).
			var st unix.Stat_t
			if unix.Lstat(p, &st) == nil && st.Mode&unix.S_IFMT != unix.S_IFREG {
				return -1, nil, &fs.PathError{Op: "open", Path: p, Err: &ForeignError{What: kind(st.Mode)}}
			}
		}
		return -1, nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, nil, &fs.PathError{Op: "fstat", Path: p, Err: err}
	}
	if err := d.Inspect(name, &st); err != nil {
		unix.Close(fd)
		return -1, nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	if st.Nlink == 0 {
		// Removed between the lookup and the open (a cleanup that held a
		// lease): not there.
		unix.Close(fd)
		return -1, nil, &fs.PathError{Op: "open", Path: p, Err: unix.ENOENT}
	}
	// The descriptor stays O_NONBLOCK, which means nothing for a regular
	// file's I/O and mappings (package shm's Region.File clears it on the
	// descriptor it hands out).
	return fd, &st, nil
}

// BusyError is the error of an operation that another process held up
// (with a lease or a lock) until the caller's time ran out.
type BusyError struct {
	Why string // what held it up
	Err error  // the system error of the last try (EWOULDBLOCK)
	// Ctx is why the waiting ended: context.DeadlineExceeded when the
	// deadline (ctx's or the backend's default) passed, context.Canceled
	// when ctx was cancelled.
	Ctx error
}

func (e *BusyError) Error() string {
	if e.Ctx == nil {
		return e.Why
	}
	if errors.Is(e.Ctx, context.DeadlineExceeded) {
		return e.Why + " (timed out waiting for it)"
	}
	return e.Why + " (" + e.Ctx.Error() + " while waiting for it)"
}

// Unwrap returns the system error and the context's.
func (e *BusyError) Unwrap() []error { return []error{e.Err, e.Ctx} }

// Is makes a BusyError whose time ran out match os.ErrDeadlineExceeded.
func (e *BusyError) Is(target error) bool {
	return target == os.ErrDeadlineExceeded && errors.Is(e.Ctx, context.DeadlineExceeded)
}

// Timeout reports whether the time ran out (net.Error's method).
func (e *BusyError) Timeout() bool { return errors.Is(e.Ctx, context.DeadlineExceeded) }

// Backoff bounds of Retry.Wait: from 50 us, doubling, to 10 ms.
const (
	minBackoff = 50 * time.Microsecond
	maxBackoff = 10 * time.Millisecond
)

// Retry paces the tries of an operation that another process can hold up:
// it sleeps with exponential backoff between tries and says when to stop,
// at ctx's deadline (or after a default wait when ctx has none), or when
// ctx is cancelled. It never busy-waits.
type Retry struct {
	ctx      context.Context
	deadline time.Time
	wait     time.Duration
	timer    *time.Timer
}

// NewRetry starts pacing tries until ctx is done, or for def from now when
// ctx has no deadline.
func NewRetry(ctx context.Context, def time.Duration) *Retry {
	d, ok := ctx.Deadline()
	if !ok {
		d = time.Now().Add(def)
	}
	return &Retry{ctx: ctx, deadline: d, wait: minBackoff}
}

// Wait sleeps before the next try. It returns nil when there is time for
// one, context.DeadlineExceeded when the deadline has passed, and ctx's
// error when ctx is cancelled first.
func (r *Retry) Wait() error {
	if err := r.ctx.Err(); err != nil {
		return err
	}
	left := time.Until(r.deadline)
	if left <= 0 {
		return context.DeadlineExceeded
	}
	w := min(r.wait, left)
	r.wait = min(2*r.wait, maxBackoff)
	if r.timer == nil {
		r.timer = time.NewTimer(w)
	} else {
		r.timer.Reset(w)
	}
	select {
	case <-r.ctx.Done():
		r.timer.Stop()
		return r.ctx.Err()
	case <-r.timer.C:
		return nil
	}
}

// Stop releases the timer. A Retry need not be stopped (an expired or
// unreferenced timer costs nothing), but may be.
func (r *Retry) Stop() {
	if r.timer != nil {
		r.timer.Stop()
	}
}

// MapLength returns how many bytes of the object open as fd, objSize bytes
// long, to map for a caller that decides from the object's first n bytes
// (fewer when it is shorter): size returns a length of at least 1, and the
// mapping has that many bytes, or the whole object when it is shorter (so
// that the caller sees that it was cut short). An error from size is
// returned as is.
func MapLength(fd int, path string, objSize int64, n int, size func(head []byte) (int64, error)) (int64, error) {
	head := make([]byte, max(0, min(int64(n), objSize)))
	got := 0
	for got < len(head) {
		m, err := unix.Pread(fd, head[got:], int64(got))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if m == 0 {
			break // shrunk meanwhile
		}
		got += m
	}
	want, err := size(head[:got])
	if err != nil {
		return 0, err
	}
	if want < 1 {
		return 0, &fs.PathError{Op: "mmap", Path: path, Err: unix.EINVAL}
	}
	return min(want, objSize), nil
}
