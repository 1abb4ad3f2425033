package dirobj

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/internal/sys"
)

// Inspecting and removing objects: the proof that nobody uses a file, and
// its removal under that proof (backend.Inspector and backend.Remover for
// the backends of this package).
//
// The proof is a write lease (F_SETLEASE F_WRLCK), which the kernel grants
// only when no other open file description of the file exists, mappings
// included, in any PID namespace. Without a lease (NFS; a caller that
// neither owns the file nor has CAP_LEASE), the file backend's flock
// protocol (Dir.Flock: every user holds LOCK_SH) or a complete walk of
// /proc/*/maps serves.

// TombPrefix names the tombstone of a removal in progress: a temporary
// name, so that an interrupted removal is finished by the next one.
const TombPrefix = ".shmgo-gc-tmp.tomb."

// settle is how long a removal waits, with the name gone and the lease
// held, for processes that looked the name up just before.
const settle = time.Millisecond

func inUse(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{backend.ErrInUse}, args...)...)
}

// openRead opens the object name for reading, without following a link,
// blocking (a FIFO, a lease) or making a terminal the controlling one, and
// returns its status; anything but a regular file gives a *ForeignError.
func (d Dir) openRead(name string) (int, *unix.Stat_t, error) {
	p := d.Join(name)
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.EWOULDBLOCK {
			return -1, nil, &fs.PathError{Op: "open", Path: p, Err: &BusyError{Why: "another process is removing or opening it", Err: err}}
		}
		var st unix.Stat_t
		if err != unix.ENOENT && unix.Lstat(p, &st) == nil && st.Mode&unix.S_IFMT != unix.S_IFREG {
			return -1, nil, &fs.PathError{Op: "open", Path: p, Err: &ForeignError{What: kind(st.Mode)}}
		}
		return -1, nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, nil, &fs.PathError{Op: "fstat", Path: p, Err: err}
	}
	if err := d.Inspect(name, &st); err != nil && !d.isTemp(name) {
		unix.Close(fd)
		return -1, nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	return fd, &st, nil
}

// Head returns the first n bytes of the object name, read without mapping
// it (read permission suffices), and its Info.
func (d Dir) Head(name string, n int) ([]byte, backend.Info, error) {
	fd, st, err := d.openRead(name)
	if err != nil {
		return nil, backend.Info{}, err
	}
	defer unix.Close(fd)
	head, err := pread(fd, n)
	if err != nil {
		return nil, backend.Info{}, &fs.PathError{Op: "read", Path: d.Join(name), Err: err}
	}
	return head, d.info(name, st), nil
}

func pread(fd, n int) ([]byte, error) {
	b := make([]byte, n)
	got := 0
	for got < n {
		m, err := unix.Pread(fd, b[got:], int64(got))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m == 0 {
			break
		}
		got += m
	}
	return b[:got], nil
}

// Unused returns nil when it can prove that no process has the object name
// open or mapped, and otherwise an error matching backend.ErrInUse.
func (d Dir) Unused(name string) error {
	fd, st, err := d.openRead(name)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	switch err := takeLease(fd); err {
	case nil:
		dropLease(fd)
		return nil
	case unix.EAGAIN:
		return inUse("open or mapped by another process")
	default:
		release, err := d.fallback(fd, st, err)
		if err == nil {
			release()
		}
		return err
	}
}

// fallback proves non-use without a lease (leaseErr says why there is
// none): the file backend's flock, held until release, or a complete /proc
// walk.
func (d Dir) fallback(fd int, st *unix.Stat_t, leaseErr error) (release func(), err error) {
	if d.Flock {
		switch err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err {
		case nil:
			return func() { unix.Flock(fd, unix.LOCK_UN) }, nil
		case unix.EWOULDBLOCK:
			return nil, inUse("locked by another process")
		}
	}
	fid := sys.FileIDOf(st)
	scan, serr := sys.ScanMaps(map[sys.FileID]bool{fid: true})
	switch {
	case serr == nil && scan.Exact() && scan.Mappers[fid] == 0:
		return func() {}, nil
	case serr == nil && scan.Mappers[fid] > 0:
		return nil, inUse("mapped by %d processes", scan.Mappers[fid])
	}
	return nil, inUse("cannot prove that no process uses it (no lease: %v; some processes could not be inspected)", leaseErr)
}

// RemoveUnused removes the object name (a temporary one when temp) if check
// accepts its first n bytes and nobody else has it open. It holds a write
// lease from before it reads them until the name is gone: a process that
// opens the file in the meantime waits in open(2) and then gets the removed
// file (with no link left, st_nlink 0). A published name is first renamed
// to a tombstone, and the tombstone removed only if it is the very file
// that was checked; a file that took the name in the meantime is put back.
func (d Dir) RemoveUnused(name string, temp bool, n int, check func(head []byte, now backend.Info) error) error {
	p := d.Join(name)
	fd, st, err := d.openRead(name)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	verify := func() error {
		head, err := pread(fd, n)
		if err != nil {
			return &fs.PathError{Op: "read", Path: p, Err: err}
		}
		return check(head, d.info(name, st))
	}
	// Once without the lease, for a precise reason when the creator lives;
	// again under the lease, which freezes who has the file open.
	if err := verify(); err != nil {
		return err
	}
	leased := false
	switch err := takeLease(fd); err {
	case nil:
		leased = true
		defer dropLease(fd)
	case unix.EAGAIN:
		return inUse("open or mapped by another process")
	default:
		release, err := d.fallback(fd, st, err)
		if err != nil {
			return err
		}
		defer release()
	}
	if err := verify(); err != nil {
		return err
	}
	if leased && leaseBreaking(fd) {
		return inUse("another process is opening it")
	}
	if temp {
		// A temporary name is never opened by users and never reused.
		if err := unix.Unlink(p); err != nil {
			return &fs.PathError{Op: "unlink", Path: p, Err: err}
		}
		return nil
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tomb := d.Join(TombPrefix + hex.EncodeToString(rnd[:]))
	if err := unix.Renameat2(unix.AT_FDCWD, p, unix.AT_FDCWD, tomb, unix.RENAME_NOREPLACE); err != nil {
		if err != unix.EINVAL && err != unix.ENOSYS {
			return &fs.PathError{Op: "rename", Path: p, Err: err}
		}
		// No RENAME_NOREPLACE here: check the name, then unlink it.
		var now unix.Stat_t
		if err := unix.Lstat(p, &now); err != nil || now.Dev != st.Dev || now.Ino != st.Ino {
			return inUse("another file took its name")
		}
		if err := unix.Unlink(p); err != nil {
			return &fs.PathError{Op: "unlink", Path: p, Err: err}
		}
		return nil
	}
	putBack := func(why string) error {
		if err := unix.Renameat2(unix.AT_FDCWD, tomb, unix.AT_FDCWD, p, unix.RENAME_NOREPLACE); err != nil {
			return fmt.Errorf("%s, and it could not be given its name back (left at %s): %w", why, tomb, err)
		}
		return inUse("%s", why)
	}
	var now unix.Stat_t
	if err := unix.Lstat(tomb, &now); err != nil || now.Dev != st.Dev || now.Ino != st.Ino {
		// Between our open and the rename, someone removed the file and
		// another took its name: give it back.
		return putBack("another file took its name")
	}
	if leased {
		// A process that looked the name up before the rename reaches our
		// lease within microseconds, unless it is descheduled: give it a
		// moment, and give the name back if it shows up. (Package shm's
		// Open also rejects an object without links.)
		time.Sleep(settle)
		if leaseBreaking(fd) {
			return putBack("another process is opening it")
		}
	}
	if err := unix.Unlink(tomb); err != nil {
		return &fs.PathError{Op: "unlink", Path: tomb, Err: err}
	}
	return nil
}

func takeLease(fd int) error {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_WRLCK)
	return err
}

func dropLease(fd int) { unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_UNLCK) }

// leaseBreaking tells whether another process is opening the file and
// waits for our lease.
func leaseBreaking(fd int) bool {
	v, err := unix.FcntlInt(uintptr(fd), unix.F_GETLEASE, 0)
	return err != nil || v != unix.F_WRLCK
}
