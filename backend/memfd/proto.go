package memfd

import (
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
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
	opUnlink = 'u'
	opStat   = 's'

	stOK     = 'k'
	stDenied = 'p'
	stGone   = 'g'
	stBad    = 'e'

	maxReply = 2 + 20 + 256
)

// protoError is a failure of an exchange with an owner; it matches kind
// (fs.ErrNotExist, fs.ErrPermission, os.ErrDeadlineExceeded) and wraps the
// system error behind it, if any.
type protoError struct {
	kind  error
	errno error
	msg   string
}

func protoErr(kind, errno error, msg string) error {
	return &protoError{kind: kind, errno: errno, msg: msg}
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

func (e *protoError) Is(target error) bool { return e.kind != nil && target == e.kind }
func (e *protoError) Unwrap() error        { return e.errno }

// reply is an owner's answer.
type reply struct {
	status  byte
	payload []byte
	fd      int // the descriptor sent with an open's answer, else -1
}

// request connects to addr, checks that the server is trusted, sends op and
// returns the answer with status 'k'; any other status is an error. The
// whole exchange ends by deadline, or by the backend's I/O timeout when
// deadline is zero or later.
func (b *Backend) request(addr string, op byte, deadline time.Time) (reply, error) {
	path := "@" + addr
	fail := func(sysop string, err error) (reply, error) {
		return reply{fd: -1}, &fs.PathError{Op: sysop, Path: path, Err: err}
	}
	if limit := time.Now().Add(b.timeout); deadline.IsZero() || limit.Before(deadline) {
		deadline = limit
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail("socket", err)
	}
	defer unix.Close(fd)

	// Connect: a listening owner accepts at once; the timeout covers a full
	// backlog. The send and receive timeouts are set once, for the whole
	// exchange, and set again only when a call is interrupted.
	if err = setTimeout(fd, unix.SO_SNDTIMEO, deadline); err == nil {
		err = setTimeout(fd, unix.SO_RCVTIMEO, deadline)
	}
	for err == nil {
		err = unix.Connect(fd, sockaddr(addr))
		if err != unix.EINTR {
			break
		}
		err = setTimeout(fd, unix.SO_SNDTIMEO, deadline)
	}
	switch err {
	case nil, unix.EISCONN:
	case unix.ECONNREFUSED, unix.ENOENT:
		return fail("connect", protoErr(fs.ErrNotExist, err, "no owner serves the key"))
	case unix.EAGAIN, unix.ETIMEDOUT:
		return fail("connect", protoErr(os.ErrDeadlineExceeded, err, "the owner's backlog is full"))
	default:
		return fail("connect", err)
	}

	send := func() error {
		for {
			_, err := unix.SendmsgN(fd, []byte{protoVersion, op}, nil, nil, unix.MSG_NOSIGNAL)
			if err != unix.EINTR {
				return err
			}
			if err = setTimeout(fd, unix.SO_SNDTIMEO, deadline); err != nil {
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
	if op != opStat && !b.trusts(cred.Uid) {
		return fail("connect", protoErr(fs.ErrPermission, nil,
			"the key is served by uid "+itoa(cred.Uid)+" (pid "+itoa(uint32(cred.Pid))+"), which this process does not trust"))
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
	for {
		n, oobn, flags, _, err = unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err != unix.EINTR {
			break
		}
		if err = setTimeout(fd, unix.SO_RCVTIMEO, deadline); err != nil {
			break
		}
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
		return fail("recv", protoErr(fs.ErrNotExist, nil, "the owner closed the connection without answering"))
	case flags&(unix.MSG_CTRUNC|unix.MSG_TRUNC) != 0 || len(fds) > 1 || n < 2 || buf[0] != protoVersion:
		closeAll()
		return fail("recv", protoErr(nil, unix.EPROTO, "malformed answer from the owner"))
	}
	rep.status, rep.payload = buf[1], buf[2:n]
	switch {
	case rep.status == stOK && (op == opOpen) == (rep.fd >= 0):
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

// setTimeout sets a socket timeout option to the time left until deadline.
func setTimeout(fd, opt int, deadline time.Time) error {
	left := time.Until(deadline)
	if left <= 0 {
		return unix.EAGAIN
	}
	// A zero timeval means no timeout: keep at least a microsecond.
	tv := unix.NsecToTimeval(max(int64(left), int64(time.Microsecond)))
	return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv)
}

// ioErr classifies the error of a send or receive.
func ioErr(err error) error {
	switch err {
	case unix.EAGAIN:
		return protoErr(os.ErrDeadlineExceeded, err, "the owner did not answer in time")
	case unix.ECONNRESET, unix.EPIPE:
		return protoErr(fs.ErrNotExist, err, "the owner closed the connection without answering")
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
