package memfd

import (
	"context"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
)

// The protocol, over a SOCK_SEQPACKET connection to the key's abstract
// socket: the user sends one message {version, op}; the owner answers with
// one message {version, status, payload...} and closes the connection.
//
//	op 'o' open:   status 'k' with the descriptor attached (SCM_RIGHTS)
//	op 'u' unlink: status 'k' once the owner has stopped listening
//	op 's' stat:   status 'k', then size u64, mode u32, uid u32, gid u32
//	               (machine byte order) and the key's name
//
// Other statuses: 'p' permission denied, 'g' the key is gone (the owner
// stopped serving it), 'e' a request this owner does not understand.
const (
	protoVersion = 1

	opOpen   = 'o'
	opOpenRO = 'r' // open for reading only
	opUnlink = 'u'
	opStat   = 's'

	stOK     = 'k'
	stDenied = 'p'
	stGone   = 'g'
	stBad    = 'e'

	maxReply = 2 + 20 + 256
)

// protoError is a failure of an exchange with an owner; it matches each of
// kinds (fs.ErrNotExist, fs.ErrPermission, os.ErrDeadlineExceeded, a
// context's error) and wraps the system error behind it, if any. again
// marks a failure that says nothing of the key (the owner closed the
// connection without answering, or its backlog was full): asking again,
// while time is left, may succeed.
type protoError struct {
	kinds []error
	errno error
	msg   string
	again bool
}

func protoErr(kind, errno error, msg string) error {
	e := &protoError{errno: errno, msg: msg}
	if kind != nil {
		e.kinds = []error{kind}
	}
	return e
}

func (e *protoError) Error() string {
	if e.errno != nil && e.msg == "" {
		return e.errno.Error()
	}
	if e.errno != nil {
		return e.msg + " (" + e.errno.Error() + ")"
	}
	return e.msg
}

func (e *protoError) Is(target error) bool {
	for _, k := range e.kinds {
		if k == target {
			return true
		}
	}
	return false
}

func (e *protoError) Unwrap() error { return e.errno }

// isAgain tells whether err is a failure after which asking again may
// succeed.
func isAgain(err error) bool {
	var pe *protoError
	return errors.As(err, &pe) && pe.again
}

// reply is an owner's answer.
type reply struct {
	status  byte
	payload []byte
	fd      int // the descriptor sent with an open's answer, else -1
}

// exchangeDeadline is when an exchange under ctx gives up: ctx's deadline;
// the I/O timeout from now when ctx can never end; none (zero) when ctx
// can be cancelled but has no deadline.
func (b *Backend) exchangeDeadline(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	if ctx.Done() == nil {
		return time.Now().Add(b.timeout)
	}
	return time.Time{}
}

// ask is request, asked again with backoff after failures that say nothing
// of the key, until deadline (zero: none) or until ctx is done.
func (b *Backend) ask(ctx context.Context, addr string, op byte, deadline time.Time) (reply, error) {
	start := time.Now()
	wait := time.Millisecond
	var timer *time.Timer
	for tries := 1; ; tries++ {
		rep, err := b.request(ctx, addr, op, deadline, start)
		if err == nil || !isAgain(err) {
			return rep, err
		}
		if timeUp(ctx, deadline) {
			var pe *protoError
			errors.As(err, &pe)
			end := ended(ctx, deadline, start, pe.errno, pe.msg)
			if tries > 1 {
				end.msg += " (" + strconv.Itoa(tries) + " tries)"
			}
			return rep, &fs.PathError{Op: "connect", Path: "@" + addr, Err: end}
		}
		d := wait
		if !deadline.IsZero() {
			d = min(d, time.Until(deadline))
		}
		if timer == nil {
			timer = time.NewTimer(d)
			defer timer.Stop()
		} else {
			timer.Reset(d)
		}
		select {
		case <-ctx.Done():
		case <-timer.C:
		}
		wait = min(2*wait, 50*time.Millisecond)
	}
}

// ended returns the error of an exchange that ran out of time, or that ctx
// ended: it matches os.ErrDeadlineExceeded when a deadline passed, and
// ctx's error when ctx is done (or when its deadline, which is then the
// exchange's, has passed). msg says what did not happen; ended adds for
// how long, or that ctx was cancelled, unless the exchange never waited.
func ended(ctx context.Context, deadline, start time.Time, errno error, msg string) *protoError {
	e := &protoError{errno: errno, msg: msg}
	cerr := ctx.Err()
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		// ctx's deadline has passed, whether or not its timer has fired
		// yet, or it was cancelled after it.
		e.kinds = append(e.kinds, context.DeadlineExceeded)
		if cerr == nil {
			cerr = context.DeadlineExceeded
		}
	}
	if cerr != nil && cerr != context.DeadlineExceeded {
		e.kinds = append(e.kinds, cerr)
	}
	if cerr == context.Canceled && len(e.kinds) == 1 {
		if !start.IsZero() {
			e.msg += " before the context was cancelled"
		}
		return e
	}
	e.kinds = append(e.kinds, os.ErrDeadlineExceeded)
	if !start.IsZero() {
		e.msg += " within " + time.Since(start).Round(time.Millisecond).String()
	}
	return e
}

// timeUp tells whether an exchange must give up now.
func timeUp(ctx context.Context, deadline time.Time) bool {
	return ctx.Err() != nil || !deadline.IsZero() && !time.Now().Before(deadline)
}

// conn is the user's end of one exchange: a non-blocking socket. When the
// exchange has to wait, it waits first up to block in poll(2), which the
// owner's answer, coming in microseconds, wakes at once; then in the Go
// runtime's poller, so that a user waiting longer (for an owner that is
// stopped, say) holds no OS thread and a context can end the wait. The
// runtime's poller alone would cost each attach some 20 us here; poll(2)
// alone would hold a thread per waiting exchange.
type conn struct {
	fd    int
	block time.Duration
	f     *os.File // the socket once in the poller; it then owns fd
}

// firstWait is how long an Open or Unlink waits for the answer in poll(2)
// before it waits in the runtime's poller (where a context can end it).
const firstWait = 2 * time.Millisecond

func (c *conn) close() {
	if c.f != nil {
		c.f.Close()
	} else {
		unix.Close(c.fd)
	}
}

// wait waits until do, which returns EAGAIN when it must wait for the
// socket to be readable, has done its work, until deadline (zero: none) or
// until ctx is done. It returns EAGAIN when the time is up.
func (c *conn) wait(ctx context.Context, deadline time.Time, do func(fd int) error) error {
	if c.block == 0 || timeUp(ctx, deadline) {
		// (Else poll(2) comes first: the answer is never there at once.)
		if err := do(c.fd); err != unix.EAGAIN {
			return err
		}
		if timeUp(ctx, deadline) {
			return unix.EAGAIN
		}
	}
	if c.block > 0 {
		d := c.block
		if !deadline.IsZero() {
			d = min(d, time.Until(deadline))
		}
		fds := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(fds, int((d+time.Millisecond-1)/time.Millisecond)); n > 0 || err == unix.EINTR {
			if err := do(c.fd); err != unix.EAGAIN {
				return err
			}
		}
		if timeUp(ctx, deadline) {
			return unix.EAGAIN
		}
	}
	if c.f == nil {
		c.f = os.NewFile(uintptr(c.fd), "")
	}
	if err := c.f.SetReadDeadline(deadline); err != nil {
		return err
	}
	rc, err := c.f.SyscallConn()
	if err != nil {
		return err
	}
	if ctx.Done() != nil {
		f := c.f
		stop := context.AfterFunc(ctx, func() { f.SetReadDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	var derr error
	if err := rc.Read(func(fd uintptr) bool {
		derr = do(int(fd))
		return derr != unix.EAGAIN
	}); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return unix.EAGAIN
		}
		return err
	}
	return derr
}

// request connects to addr, checks that the server is trusted, sends op and
// returns the answer with status 'k'; any other status is an error. The
// exchange ends by deadline (zero: none), or when ctx is done; start is
// when the caller began asking, for the messages.
func (b *Backend) request(ctx context.Context, addr string, op byte, deadline, start time.Time) (reply, error) {
	path := "@" + addr
	fail := func(sysop string, err error) (reply, error) {
		return reply{fd: -1}, &fs.PathError{Op: sysop, Path: path, Err: err}
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail("socket", err)
	}
	c := &conn{fd: fd}
	if op != opStat {
		c.block = firstWait // a listing asks many at once: no thread for each
	}
	defer c.close()

	// Connect: a listening owner's backlog has room at once, unless the
	// owner is stopped or overwhelmed. Connecting never waits, so that it
	// is tried even when the time is up: a key that nobody serves is told
	// at once.
	for {
		err = unix.Connect(fd, sockaddr(addr))
		if err != unix.EINTR {
			break
		}
	}
	switch err {
	case nil, unix.EISCONN:
	case unix.ECONNREFUSED, unix.ENOENT:
		return fail("connect", protoErr(fs.ErrNotExist, err, "no owner serves the key"))
	case unix.EAGAIN:
		return fail("connect", &protoError{errno: err, msg: "the owner did not accept the connection (its backlog is full)", again: true})
	default:
		return fail("connect", err)
	}
	if timeUp(ctx, deadline) {
		// The key is served, but there is no time to wait for an answer.
		return fail("connect", ended(ctx, deadline, time.Time{}, nil, "the time was up before the owner could be asked"))
	}

	send := func() error {
		for {
			_, err := unix.SendmsgN(fd, []byte{protoVersion, op}, nil, nil, unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
			if err != unix.EINTR {
				return err
			}
		}
	}
	// An open or stat request is sent before the server is checked, so that
	// it is there when the owner accepts the connection: asking has no
	// effect on the owner, and an untrusted answer is refused below. An
	// unlink request waits for the check.
	var sendErr error
	sent := op != opUnlink
	if sent {
		sendErr = send()
	}

	// Only a trusted process may hand us memory or tell us a key is gone.
	cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return fail("getsockopt", err)
	}
	if op != opStat && !b.trusts(ctx, cred.Uid) {
		e := &protoError{kinds: []error{fs.ErrPermission, backend.ErrUntrusted},
			msg: "the key is served by uid " + itoa(cred.Uid) + " (pid " + itoa(uint32(cred.Pid)) + "), which this process does not trust"}
		return fail("connect", e)
	}
	if !sent {
		sendErr = send()
	}
	if sendErr != nil {
		return fail("send", ioErr(sendErr))
	}

	buf := make([]byte, maxReply)
	oob := make([]byte, unix.CmsgSpace(4*4))
	var n, oobn, flags int
	err = c.wait(ctx, deadline, func(fd int) error {
		var err error
		for {
			n, oobn, flags, _, err = unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC|unix.MSG_DONTWAIT)
			if err != unix.EINTR {
				return err
			}
		}
	})
	if err == unix.EAGAIN {
		return fail("recv", ended(ctx, deadline, start, nil, "the owner (pid "+itoa(uint32(cred.Pid))+") did not answer"))
	}
	if err != nil {
		return fail("recv", ioErr(err))
	}
	fds := parseRights(oob[:oobn])
	rep := reply{fd: -1}
	if len(fds) > 0 {
		rep.fd = fds[0]
	}
	closeAll := func() {
		for _, f := range fds {
			unix.Close(f)
		}
	}
	switch {
	case n == 0:
		closeAll()
		return fail("recv", &protoError{msg: "the owner closed the connection without answering", again: true})
	case flags&(unix.MSG_CTRUNC|unix.MSG_TRUNC) != 0 || len(fds) > 1 || n < 2 || buf[0] != protoVersion:
		closeAll()
		return fail("recv", protoErr(nil, unix.EPROTO, "malformed answer from the owner"))
	}
	rep.status, rep.payload = buf[1], buf[2:n]
	switch {
	case rep.status == stOK && (op == opOpen || op == opOpenRO) == (rep.fd >= 0):
		return rep, nil
	case rep.status == stDenied:
		closeAll()
		what := "map"
		if op == opUnlink {
			what = "unlink"
		}
		return fail("connect", protoErr(fs.ErrPermission, unix.EACCES,
			"the owner refused to let uid "+itoa(uint32(os.Geteuid()))+" "+what+" the region"))
	case rep.status == stGone:
		closeAll()
		return fail("connect", protoErr(fs.ErrNotExist, unix.ENOENT, "the owner no longer serves the key"))
	default:
		closeAll()
		return fail("recv", protoErr(nil, unix.EPROTO, "unexpected answer from the owner"))
	}
}

// parseRights returns the descriptors in a control message buffer.
func parseRights(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for i := range msgs {
		if f, err := unix.ParseUnixRights(&msgs[i]); err == nil {
			fds = append(fds, f...)
		}
	}
	return fds
}

// ioErr classifies the error of a send or receive.
func ioErr(err error) error {
	switch err {
	case unix.ECONNRESET, unix.EPIPE:
		// The owner closed the connection unanswered (it stops serving the
		// key, or it dropped us): asking again tells which.
		return &protoError{errno: err, msg: "the owner closed the connection without answering", again: true}
	}
	return err
}

// statPayload encodes a stat answer.
func statPayload(size int64, mode, uid, gid uint32, name string) []byte {
	p := make([]byte, 20, 20+len(name))
	binary.NativeEndian.PutUint64(p[0:], uint64(size))
	binary.NativeEndian.PutUint32(p[8:], mode)
	binary.NativeEndian.PutUint32(p[12:], uid)
	binary.NativeEndian.PutUint32(p[16:], gid)
	return append(p, name...)
}

type statInfo struct {
	size     int64
	mode     fs.FileMode
	uid, gid int
	name     string
}

func parseStat(p []byte) (statInfo, error) {
	if len(p) < 20 {
		return statInfo{}, errors.New("short stat answer")
	}
	return statInfo{
		size: int64(binary.NativeEndian.Uint64(p[0:])),
		mode: fs.FileMode(binary.NativeEndian.Uint32(p[8:]) & 0o777),
		uid:  int(binary.NativeEndian.Uint32(p[12:])),
		gid:  int(binary.NativeEndian.Uint32(p[16:])),
		name: string(p[20:]),
	}, nil
}

func itoa(u uint32) string { return strconv.FormatUint(uint64(u), 10) }
