package shm

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/internal/fdseg"
	"github.com/shmgo/shm/internal/sys"
)

// fdBackendName is what Region.Backend returns for a region opened from a
// descriptor.
const fdBackendName = "fd"

// File returns a new descriptor for the region's object, as an *os.File
// that the caller must close; the region stays open. Pass it to a child in
// exec.Cmd.ExtraFiles, or send it with SendRegion, and open it there with
// OpenFile. The descriptor is close-on-exec, like every *os.File, until
// ExtraFiles passes it on.
//
// This hands a region to another process without its key:
//
//	f, _ := r.File()               // the parent
//	cmd.ExtraFiles = []*os.File{f} // the child's descriptor 3
//
//	u, err := shm.OpenFile(os.NewFile(3, "region")) // the child
//
// A region opened from a descriptor is the same memory, header and lock as
// its key's: the lock excludes every holder whichever way it attached.
//
// Backends that implement backend.Fder have descriptors (posix, memfd,
// file); File fails with ErrInvalidOption for the others (sysv).
func (r *Region) File() (*os.File, error) {
	fd, err := r.dupFd()
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "shm:"+r.key), nil
}

// dupFd returns a close-on-exec duplicate of the region's descriptor.
func (r *Region) dupFd() (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed.Load() {
		return -1, r.err("file", ErrClosed)
	}
	f, ok := r.seg.(backend.Fder)
	if !ok {
		return -1, r.err("file", because("backend "+r.be.Name()+" has no file descriptor", nil, ErrInvalidOption))
	}
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, r.err("file", &fs.PathError{Op: "dup", Path: r.key, Err: err})
	}
	// An ordinary blocking descriptor for whoever gets it (the backend may
	// have opened it O_NONBLOCK, not to block on a peer's lease).
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil && fl&unix.O_NONBLOCK != 0 {
		unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
	}
	return fd, nil
}

// OpenFile maps the region whose object f refers to, as Region.File
// returned it in this or another process, and checks its header as Open
// does: anything that is not a ready region gives ErrCorrupt (or
// ErrOwnerDead when its creator died before making it ready). It does not
// wait. OpenFile keeps its own descriptor: the caller may close f.
//
// The region's Key is "/" and the name its header records; check it when
// the descriptor comes from a process you do not trust. Backend returns
// "fd", and Unlink fails with ErrInvalidOption: the key, if it still
// exists, can be removed by Open(key) and Unlink, or by its owner.
func OpenFile(f *os.File) (*Region, error) {
	if f == nil {
		return nil, &Error{Op: "open", Backend: fdBackendName, Err: because("nil file", nil, ErrInvalidOption)}
	}
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, &Error{Op: "open", Backend: fdBackendName, Err: err}
	}
	fd := -1
	var derr error
	if err := raw.Control(func(u uintptr) { fd, derr = unix.FcntlInt(u, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		derr = err
	}
	if derr != nil {
		return nil, &Error{Op: "open", Backend: fdBackendName, Err: &fs.PathError{Op: "dup", Path: f.Name(), Err: derr}}
	}
	return openFd(fd, f.Name())
}

// openFd maps the region of descriptor fd, which it owns from then on.
func openFd(fd int, what string) (*Region, error) {
	fail := func(key string, err error) (*Region, error) {
		return nil, &Error{Op: "open", Key: key, Backend: fdBackendName, Err: err}
	}
	seg, err := mapFd(fd, what)
	if err != nil {
		return fail("", err)
	}
	mem := seg.Bytes()
	var (
		name        string
		st          headerState
		why         error
		creatorDead bool
		h           = new(header) // a copy: the sender may change the mapping's
	)
	// The object may be a file that someone truncates under us.
	if ferr := guard(func() {
		*h = *headerOf(mem)
		if h.KeyLen <= maxKeyLen {
			name = string(h.Key[:h.KeyLen])
		}
		st, why = checkHeaderOf(h, int64(len(mem)), name)
		creatorDead = st == headerNotReady && sys.Check(h.creator()) == sys.Dead
	}); ferr != nil {
		seg.Close()
		return fail("", ferr)
	}
	if st == headerOK {
		if _, err := parseKey(name); err != nil {
			st, why = headerBad, errors.New("header records an invalid key")
		}
	}
	switch st {
	case headerOK:
		return newRegionFrom("/"+name, name, fdBackend{}, seg, mem, h), nil
	case headerNotReady:
		seg.Close()
		if creatorDead {
			return fail("/"+name, because("creator died before the region was ready", nil, ErrOwnerDead))
		}
		return fail("/"+name, because(why.Error(), nil, ErrCorrupt))
	default:
		seg.Close()
		return fail("", because(why.Error(), nil, ErrCorrupt))
	}
}

// mapFd maps the whole of regular file fd read-write and shared. It closes
// fd on failure.
func mapFd(fd int, what string) (*fdSegment, error) {
	fail := func(op string, err error) (*fdSegment, error) {
		unix.Close(fd)
		return nil, &fs.PathError{Op: op, Path: what, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail("fstat", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fail("open", because("not a regular file", unix.EINVAL, ErrCorrupt))
	}
	if st.Size < headerSize || st.Size > int64(dataOffset(MaxUsers))+MaxSize {
		return fail("open", because("object is too small or too large to be a region", nil, ErrCorrupt))
	}
	if _, err := mappable(st.Size); err != nil {
		return fail("open", err)
	}
	seg, err := fdseg.Map(fd, what, st.Size, unix.PROT_READ|unix.PROT_WRITE, 0)
	if err != nil {
		return nil, err
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	sealed := err == nil && seals&(unix.F_SEAL_SHRINK|unix.F_SEAL_GROW) == unix.F_SEAL_SHRINK|unix.F_SEAL_GROW
	return &fdSegment{Segment: seg, sealed: sealed}, nil
}

// fdSegment is a region mapped from a descriptor: no name, and sealed when
// the object is (a memfd's).
type fdSegment struct {
	*fdseg.Segment
	sealed bool
}

// Sealed implements backend.Sealed.
func (s *fdSegment) Sealed() bool { return s.sealed }

// fdBackend is the backend of regions opened from descriptors: they have
// no key to open, create or remove.
type fdBackend struct{}

func (fdBackend) Name() string { return fdBackendName }

func noKey() error {
	return because("a region opened from a file descriptor has no key to create, open or remove", nil, ErrInvalidOption)
}

func (fdBackend) Create(string, int64, fs.FileMode) (backend.Pending, error) { return nil, noKey() }
func (fdBackend) Open(string) (backend.Segment, error)                       { return nil, noKey() }
func (fdBackend) Unlink(string) error                                        { return noKey() }

// regionMsg is the payload that carries a region's descriptor.
var regionMsg = []byte("SHMGO-R1")

// SendRegion sends a descriptor of r over c, for the peer's ReceiveRegion.
// c may be a stream, datagram or seqpacket unix socket. When ctx can end,
// SendRegion uses c's write deadline to give up with it, and clears that
// deadline before returning; otherwise c's own deadline applies.
func SendRegion(ctx context.Context, c *net.UnixConn, r *Region) error {
	fd, err := r.dupFd()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	stop := bindDeadline(ctx, c.SetWriteDeadline)
	_, _, err = c.WriteMsgUnix(regionMsg, unix.UnixRights(fd), nil)
	if err = stop(err); err != nil {
		return r.err("send", err)
	}
	return nil
}

// ReceiveRegion receives a region that the peer sent with SendRegion and
// opens it as OpenFile does. It waits until a message comes or ctx ends
// (c's read deadline serves ctx as in SendRegion). A message that does not
// carry exactly one descriptor with SendRegion's payload gives ErrCorrupt;
// descriptors that came with it are closed.
func ReceiveRegion(ctx context.Context, c *net.UnixConn) (*Region, error) {
	fail := func(err error) (*Region, error) {
		return nil, &Error{Op: "receive", Backend: fdBackendName, Err: err}
	}
	buf := make([]byte, len(regionMsg))
	oob := make([]byte, unix.CmsgSpace(4*4))
	stop := bindDeadline(ctx, c.SetReadDeadline)
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	var fds []int
	if oobn > 0 {
		if msgs, perr := unix.ParseSocketControlMessage(oob[:oobn]); perr == nil {
			for i := range msgs {
				if f, perr := unix.ParseUnixRights(&msgs[i]); perr == nil {
					fds = append(fds, f...)
				}
			}
		}
	}
	if err == nil && n > 0 && n < len(buf) {
		// A stream socket may split the payload; the descriptor came
		// with its first byte.
		_, err = io.ReadFull(c, buf[n:])
		n = len(buf)
	}
	err = stop(err)
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	switch {
	case err != nil:
		closeAll()
		return fail(err)
	case flags&unix.MSG_CTRUNC != 0 || len(fds) != 1 || !bytes.Equal(buf[:n], regionMsg):
		closeAll()
		return fail(because("the message does not carry a region", nil, ErrCorrupt))
	}
	r, err := openFd(fds[0], "received region")
	if err != nil {
		err.(*Error).Op = "receive"
		return nil, err
	}
	return r, nil
}

// longAgo is a deadline in the past, which makes pending I/O fail at once.
var longAgo = time.Unix(1, 0)

// bindDeadline makes set (a connection's read or write deadline) follow
// ctx, when ctx can end. The returned stop clears the deadline and turns an
// I/O error caused by ctx into one that wraps ctx.Err().
func bindDeadline(ctx context.Context, set func(time.Time) error) (stop func(error) error) {
	if ctx.Done() == nil {
		return func(err error) error { return err }
	}
	if d, ok := ctx.Deadline(); ok {
		set(d)
	}
	fired := make(chan struct{})
	stopAfter := context.AfterFunc(ctx, func() {
		set(longAgo)
		close(fired)
	})
	return func(err error) error {
		if !stopAfter() {
			<-fired
		}
		set(time.Time{})
		// Only ctx sets c's deadline while it is bound.
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
		if errors.Is(ctx.Err(), context.Canceled) {
			return because("", context.Canceled)
		}
		return because("", context.DeadlineExceeded, ErrTimeout)
	}
}
