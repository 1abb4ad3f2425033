package dirobj

import (
	"bytes"
	"context"
	"encoding/binary"
	"io/fs"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// WaitCreate returns when a file named name may have appeared in the
// directory (a creation or a rename into it, which is how objects are
// published), or when ctx is done (with ctx's error). A file that appeared
// just before the wait began ends it at once. Where inotify is not
// available it returns an error at once and the caller polls.
//
// The waits of a process on one directory share one inotify instance,
// read by one goroutine through the Go runtime's poller, so a waiting
// goroutine holds no thread and many waits cost one descriptor. The
// instance is closed when its last wait ends, by a goroutine of its own:
// closing an inotify instance waits for the kernel's grace period, which
// takes milliseconds, and the wait that ends should not.
func (d Dir) WaitCreate(ctx context.Context, name string) error {
	w, ch, err := watchDir(d.Path, name)
	if err != nil {
		return err
	}
	defer w.done(name, ch)
	// Published between the caller's look and the watch: no event will
	// come for it.
	var st unix.Stat_t
	if unix.Lstat(d.Join(name), &st) == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// dirWatch is the inotify instance of a directory and the waits on it.
type dirWatch struct {
	path string
	f    *os.File
	// waits are the channels to close when a name appears, by name, and n
	// counts them; both under watchesMu.
	waits map[string][]chan struct{}
	n     int
}

var (
	watchesMu sync.Mutex
	watches   = map[string]*dirWatch{}
)

// watchDir registers a wait for name on the directory's watch, made if
// needed; the wait ends with done. ch is closed when name may have
// appeared.
func watchDir(path, name string) (w *dirWatch, ch chan struct{}, err error) {
	watchesMu.Lock()
	defer watchesMu.Unlock()
	if w = watches[path]; w == nil {
		fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
		if err != nil {
			return nil, nil, &fs.PathError{Op: "inotify_init1", Path: path, Err: err}
		}
		if _, err := unix.InotifyAddWatch(fd, path, unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_ONLYDIR); err != nil {
			unix.Close(fd)
			return nil, nil, &fs.PathError{Op: "inotify_add_watch", Path: path, Err: err}
		}
		w = &dirWatch{path: path, f: os.NewFile(uintptr(fd), "inotify:"+path), waits: map[string][]chan struct{}{}}
		watches[path] = w
		go w.read()
	}
	ch = make(chan struct{})
	w.waits[name] = append(w.waits[name], ch)
	w.n++
	return w, ch, nil
}

// done ends the wait ch for name; the last wait closes the instance.
func (w *dirWatch) done(name string, ch chan struct{}) {
	watchesMu.Lock()
	defer watchesMu.Unlock()
	w.n--
	chs := w.waits[name]
	for i, c := range chs {
		if c == ch {
			chs = append(chs[:i], chs[i+1:]...)
			break
		}
	}
	if len(chs) == 0 {
		delete(w.waits, name)
	} else {
		w.waits[name] = chs
	}
	if w.n == 0 {
		w.retire()
	}
}

// retire takes w out of use and closes its instance in the background
// (see WaitCreate); watchesMu is held.
func (w *dirWatch) retire() {
	if watches[w.path] == w {
		delete(watches, w.path)
		closing.Add(1)
		go func() {
			defer closing.Add(-1)
			w.f.Close() // ends read too
		}()
	}
}

// closing counts the instances being closed in the background.
var closing atomic.Int64

// WaitClosed returns once the inotify instances of waits that have ended
// are closed (or after 5 s): tests that count descriptors call it first.
func WaitClosed() {
	for wait, end := 100*time.Microsecond, time.Now().Add(5*time.Second); closing.Load() != 0 && time.Now().Before(end); wait = min(2*wait, 10*time.Millisecond) {
		time.Sleep(wait)
	}
}

// wake ends the waits for name (every wait, for name ""); watchesMu is held.
func (w *dirWatch) wake(name string) {
	for n, chs := range w.waits {
		if name != "" && n != name {
			continue
		}
		for _, c := range chs {
			close(c)
		}
		delete(w.waits, n)
	}
}

// read dispatches the instance's events until it is closed. A failure to
// read wakes every wait (their callers look again) and retires the watch.
func (w *dirWatch) read() {
	buf := make([]byte, 16<<10)
	for {
		n, err := w.f.Read(buf)
		watchesMu.Lock()
		if err != nil {
			w.wake("")
			w.retire()
			watchesMu.Unlock()
			return
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
			if mask&unix.IN_Q_OVERFLOW != 0 {
				w.wake("") // events were lost: everyone looks again
			} else if len(w.waits) > 0 {
				w.wake(string(evName))
			}
			ev = ev[end:]
		}
		watchesMu.Unlock()
	}
}
