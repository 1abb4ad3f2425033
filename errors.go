package shm

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"syscall"

	"github.com/shmgo/shm/backend"
)

// Sentinel errors. Every error package shm returns is an *Error that wraps one
// or more of these (and the system error behind it, when there is one), so
// callers test with errors.Is; List and RemoveStale join one *Error per
// backend or region that failed (errors.Join), which errors.Is and
// errors.As see through.
var (
	// ErrExist: the key is taken. It matches fs.ErrExist.
	ErrExist error = &sentinel{"region already exists", fs.ErrExist}
	// ErrNotExist: no region under the key. It matches fs.ErrNotExist.
	ErrNotExist error = &sentinel{"no such region", fs.ErrNotExist}
	// ErrTimeout: a wait ran out of time. It matches os.ErrDeadlineExceeded.
	ErrTimeout error = &sentinel{"timed out", os.ErrDeadlineExceeded}
	// ErrInvalidKey: the key is not 1 to 200 bytes after an optional
	// leading '/', contains '/' or NUL, is "." or "..", or names an unknown
	// backend.
	ErrInvalidKey = errors.New("invalid key")
	// ErrInvalidSize: the size is not between 1 byte and MaxSize.
	ErrInvalidSize = errors.New("invalid size")
	// ErrInvalidOption: an option's value cannot be used (a nil backend, a
	// mode with bits beyond 0777).
	ErrInvalidOption = errors.New("invalid option")
	// ErrCorrupt: the object under the key is not a valid region: wrong
	// magic, layout version, key or size. The message says which.
	ErrCorrupt = errors.New("not a valid region")
	// ErrClosed: the Region was closed. It matches fs.ErrClosed.
	ErrClosed error = &sentinel{"region is closed", fs.ErrClosed}
	// ErrLocked: TryLock found the lock held.
	ErrLocked = errors.New("lock is held")
	// ErrNotLocked: Unlock or MarkConsistent on a Lock that is not held.
	ErrNotLocked = errors.New("lock is not held")
	// ErrInvalidView: View or Slice cannot give the view asked for: T
	// holds a pointer (at any depth) or has size 0, the offset is not
	// aligned for T, or the view does not fit in the region's data. The
	// message says which.
	ErrInvalidView = errors.New("invalid view")
	// ErrUntrustedOwner: Open found a region owned by a uid it does not
	// trust (see WithTrustedUIDs). It matches fs.ErrPermission.
	ErrUntrustedOwner error = &sentinel{"region's owner is not trusted", fs.ErrPermission}
	// ErrTooManyUsers: a Region's first lock found every slot of the
	// region's user table taken (see WithMaxUsers).
	ErrTooManyUsers = errors.New("too many users")
	// ErrOwnerDead: the process that held the lock died while holding it
	// (the lock is now the caller's, and the data it guards may be half
	// updated), or the creator of a region died before the region was
	// ready.
	ErrOwnerDead = errors.New("owner died")
)

// sentinel is an error that also matches a standard error, the way
// syscall.Errno matches fs.ErrExist.
type sentinel struct {
	msg string
	std error
}

func (e *sentinel) Error() string        { return e.msg }
func (e *sentinel) Is(target error) bool { return target == e.std }

// Error records a failed operation on a region, like *fs.PathError.
type Error struct {
	Op      string // "create", "open", "lock", "unlink", ...
	Key     string // the key as the caller gave it
	Backend string // the backend's name, when known
	Err     error  // what went wrong; matches the sentinels above
}

// Error returns "shm OP KEY (BACKEND): ERR", leaving out the key and the
// backend when they are empty.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("shm ")
	b.WriteString(e.Op)
	if e.Key != "" {
		b.WriteString(" ")
		b.WriteString(e.Key)
	}
	if e.Backend != "" {
		b.WriteString(" (")
		b.WriteString(e.Backend)
		b.WriteString(")")
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

// Unwrap returns e.Err, so that errors.Is and errors.As see the sentinel
// errors and the system error it wraps.
func (e *Error) Unwrap() error { return e.Err }

// reason attaches sentinels to a cause: it matches every sentinel and the
// cause, and prints the cause (or, without one, the message).
type reason struct {
	msg   string
	errs  []error
	cause error
}

func (r *reason) Error() string {
	if r.msg != "" && r.cause != nil {
		return r.msg + ": " + r.cause.Error()
	}
	if r.msg != "" {
		return r.msg
	}
	if r.cause != nil {
		return r.cause.Error()
	}
	return r.errs[0].Error()
}

func (r *reason) Unwrap() []error {
	if r.cause == nil {
		return r.errs
	}
	return append(append([]error(nil), r.errs...), r.cause)
}

// because returns an error matching each sentinel and cause, printing msg
// (or the first sentinel's message when msg is empty) then the cause.
func because(msg string, cause error, sentinels ...error) error {
	return &reason{msg: msg, errs: sentinels, cause: cause}
}

// classify attaches the matching sentinel to a backend's error.
func classify(err error) error {
	switch {
	case errors.Is(err, backend.ErrForeign):
		return because("", err, ErrCorrupt)
	case errors.Is(err, backend.ErrUntrusted):
		return because("", err, ErrUntrustedOwner)
	case errors.Is(err, backend.ErrInUse):
		return because(inUsePrefix+inUseReason(err), nil, ErrInUse)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return because("", err, ErrTimeout)
	case errors.Is(err, syscall.EOVERFLOW):
		return because("the object does not fit in this process's address space", err, ErrInvalidSize)
	case errors.Is(err, fs.ErrExist):
		return because("", err, ErrExist)
	case errors.Is(err, fs.ErrNotExist):
		return because("", err, ErrNotExist)
	}
	return err
}
