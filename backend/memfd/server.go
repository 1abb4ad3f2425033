package memfd

import (
	"os"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// backlog is the listen(2) backlog. The dispatcher empties it at once
	// whatever the peers do, so that it fills only under a burst.
	backlog = 512
	// A connection that has not sent its request when accepted ("silent")
	// waits for it up to silentTimeout (or the I/O timeout, if shorter);
	// each server keeps at most maxSilentPerUID of one uid and maxSilent in
	// all, and closes the others at once. A user sends its request right
	// after connecting, so that a legitimate connection is silent only for
	// a moment, and never for long enough to meet these limits.
	silentTimeout   = 250 * time.Millisecond
	maxSilentPerUID = 8
	maxSilent       = 128
	// soPeerGroups is SO_PEERGROUPS (Linux 4.13), missing from x/sys.
	soPeerGroups = 59
)

// The keys this process serves, by socket address, so that Unlink in the
// owner process stops serving without a round trip and List answers for
// them without one.
var (
	regMu    sync.Mutex
	registry = map[string]*server{}
)

func lookup(addr string) *server {
	regMu.Lock()
	defer regMu.Unlock()
	return registry[addr]
}

// server hands the memfd of one region to the users that ask for it.
//
// Its listening socket is non-blocking, in the epoll set of the process's
// dispatcher (see poller), the only thread that waits for connections.
// Each accepted connection is served with system calls that never wait:
// the peer's credentials (SO_PEERCRED) first, then the request if it is
// already there, then the answer. A connection whose request is not there
// yet waits for it in the dispatcher's set with a short deadline, within
// per-uid limits, so that no peer can hold the dispatcher or the places of
// other users.
type server struct {
	addr      string
	name      string // the key's name, which a hashed address loses
	fd        int    // the region's memfd; the segment keeps it open until shutdown returns
	silentFor time.Duration
	euid      uint32
	backoff   time.Duration // the dispatcher's, after a failed accept

	// Under pl.mu:
	id     uint64             // in the dispatcher's epoll events
	set    *epollSet          // the dispatcher's epoll set
	silent map[uint64]*silent // its connections waiting for their request
	perUID map[uint32]int     // how many of them each uid has

	lnMu sync.Mutex // guards lfd against its close
	lfd  int        // the listening socket; -1 once closed by unpublish

	mu      sync.Mutex
	stopped bool           // the listener is closed: the key is gone
	wg      sync.WaitGroup // the dispatcher's turns, while it uses fd
}

// serve makes the bound, non-blocking socket lfd listen and has the
// dispatcher serve it. It consumes lfd.
func serve(lfd int, name, addr string, memfd int, timeout time.Duration) (*server, error) {
	if err := unix.Listen(lfd, backlog); err != nil {
		unix.Close(lfd)
		return nil, err
	}
	s := &server{
		name: name, addr: addr, fd: memfd, silentFor: min(timeout, silentTimeout), lfd: lfd,
		euid:   uint32(os.Geteuid()),
		silent: map[uint64]*silent{},
		perUID: map[uint32]int{},
	}
	if err := pl.add(s); err != nil {
		unix.Close(lfd)
		return nil, err
	}
	regMu.Lock()
	registry[addr] = s
	regMu.Unlock()
	return s, nil
}

// unpublish stops listening, so that the key is free and new Opens fail,
// before it returns; connections already accepted are still answered, but
// not those still silent. It reports whether the server was listening.
// onDispatcher tells that the caller is the dispatcher.
func (s *server) unpublish(onDispatcher bool) bool {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return false
	}
	s.stopped = true
	s.mu.Unlock()
	regMu.Lock()
	if registry[s.addr] == s {
		delete(registry, s.addr)
	}
	regMu.Unlock()
	s.lnMu.Lock()
	wait := pl.remove(s, onDispatcher)
	unix.Close(s.lfd)
	s.lfd = -1
	s.lnMu.Unlock()
	if wait != nil {
		wait() // the dispatcher's descriptors are closed too
	}
	return true
}

func (s *server) isStopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopped
}

// shutdown stops serving and returns when no goroutine of the server is
// left (and so none uses the memfd).
func (s *server) shutdown() {
	s.unpublish(false)
	s.wg.Wait()
}

// stat reports the region's size, mode and owner, for a List in this
// process, or false once the key is no longer served.
func (s *server) stat() (st unix.Stat_t, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock() // unpublish, and so the memfd's close, waits for this
	if s.stopped || unix.Fstat(s.fd, &st) != nil {
		return st, false
	}
	return st, true
}

// acceptOne accepts and serves one connection waiting on the listening
// socket; the dispatcher calls it each time the socket is readable. The
// epoll set is level-triggered, so that a socket with more connections
// waiting is reported again at once, in turn with the others, and the
// common case of one connection costs no accept(2) that finds none.
func (s *server) acceptOne() {
	if !s.enter() {
		return
	}
	defer s.wg.Done()
	for {
		s.lnMu.Lock()
		if s.lfd < 0 {
			s.lnMu.Unlock()
			return
		}
		c, _, err := unix.Accept4(s.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		s.lnMu.Unlock()
		switch err {
		case nil:
			s.backoff = 0
			s.accepted(c)
			return
		case unix.EINTR, unix.ECONNABORTED:
			continue
		case unix.EAGAIN:
			return
		default:
			// Out of descriptors, say: wait before trying again.
			s.backoff = min(max(2*s.backoff, 5*time.Millisecond), time.Second)
			pl.pause(s, s.backoff)
			return
		}
	}
}

// enter tells whether the server still serves, and then counts the
// caller in until its wg.Done, so that shutdown waits for it.
func (s *server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return false
	}
	s.wg.Add(1) // before shutdown's Wait, which follows stopped
	return true
}

// accepted serves the connection c, or hands it to the dispatcher's set
// when its request has not arrived; it never waits. It consumes c.
func (s *server) accepted(c int) {
	cred, err := unix.GetsockoptUcred(c, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		unix.Close(c)
		return
	}
	var req [8]byte
	n, err := recvRequest(c, req[:])
	if err == unix.EAGAIN {
		pl.wait(s, c, cred)
		return
	}
	if err == nil && n > 0 {
		s.handle(c, cred, req[:n])
	}
	unix.Close(c)
}

// late serves the connection c, which was silent when accepted and has now
// sent its request (or closed). It consumes c.
func (s *server) late(c int, cred *unix.Ucred) {
	defer unix.Close(c)
	if !s.enter() {
		return // the user, told nothing, connects again and finds the key gone
	}
	defer s.wg.Done()
	var req [8]byte
	if n, err := recvRequest(c, req[:]); err == nil && n > 0 {
		s.handle(c, cred, req[:n])
	}
}

// recvRequest reads the request on c, without waiting.
func recvRequest(c int, buf []byte) (int, error) {
	for {
		n, _, err := unix.Recvfrom(c, buf, unix.MSG_DONTWAIT)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// handle answers the request req received on the connection c from the
// process whose credentials are cred.
func (s *server) handle(c int, cred *unix.Ucred, req []byte) {
	if len(req) != 2 || req[0] != protoVersion {
		s.answer(c, stBad, nil, false)
		return
	}
	var st unix.Stat_t
	if err := unix.Fstat(s.fd, &st); err != nil {
		s.answer(c, stBad, nil, false)
		return
	}
	switch req[1] {
	case opOpen:
		switch {
		case s.isStopped():
			s.answer(c, stGone, nil, false)
		case !mayOpen(cred, c, &st, 6):
			s.answer(c, stDenied, nil, false)
		default:
			s.answer(c, stOK, nil, true)
		}
	case opOpenRO:
		switch {
		case s.isStopped():
			s.answer(c, stGone, nil, false)
		case !mayOpen(cred, c, &st, 4):
			s.answer(c, stDenied, nil, false)
		default:
			// A descriptor of its own, opened for reading only: the
			// user cannot map it for writing.
			ro, err := unix.Open("/proc/self/fd/"+strconv.Itoa(s.fd), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				s.answer(c, stBad, nil, false)
				return
			}
			s.answerFd(c, stOK, ro)
			unix.Close(ro)
		}
	case opStat:
		if s.isStopped() {
			s.answer(c, stGone, nil, false)
			return
		}
		s.answer(c, stOK, statPayload(st.Size, st.Mode&0o777, st.Uid, st.Gid, s.name), false)
	case opUnlink:
		switch {
		case cred.Uid != 0 && cred.Uid != st.Uid && cred.Uid != s.euid:
			s.answer(c, stDenied, nil, false)
		case !s.unpublish(true): // only the dispatcher handles requests
			s.answer(c, stGone, nil, false)
		default:
			s.answer(c, stOK, nil, false)
		}
	default:
		s.answer(c, stBad, nil, false)
	}
}

// answer sends one message on c. It never waits: the user sends a single
// request and reads the single answer, so a fresh connection always has
// room for it; a peer that does not is dropped.
func (s *server) answer(c int, status byte, payload []byte, withFd bool) {
	fd := -1
	if withFd {
		fd = s.fd
	}
	s.send(c, status, payload, fd)
}

// answerFd answers with the descriptor fd.
func (s *server) answerFd(c int, status byte, fd int) { s.send(c, status, nil, fd) }

func (s *server) send(c int, status byte, payload []byte, fd int) {
	msg := append([]byte{protoVersion, status}, payload...)
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	for {
		_, err := unix.SendmsgN(c, msg, oob, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		if err != unix.EINTR {
			return
		}
	}
}

// mayOpen applies the region's mode to the peer of the socket c, whose
// credentials are cred, as open(2) with O_RDWR applies a file's: the
// owner's bits, else the group's, else the others'. It asks for the peer's
// supplementary groups only when they decide.
func mayOpen(cred *unix.Ucred, c int, st *unix.Stat_t, want uint32) bool {
	if cred.Uid == 0 {
		return true
	}
	mode := st.Mode & 0o777
	var bits uint32
	switch {
	case cred.Uid == st.Uid:
		bits = mode >> 6
	case cred.Gid == st.Gid || inPeerGroups(c, st.Gid):
		bits = mode >> 3
	default:
		bits = mode
	}
	return bits&want == want
}

// inPeerGroups reports whether gid is one of the supplementary groups of
// the peer of socket c. On a kernel without SO_PEERGROUPS it is never.
func inPeerGroups(c int, gid uint32) bool {
	groups, err := peerGroups(c)
	if err != nil {
		return false // an old kernel: the primary group only
	}
	return contains(groups, gid)
}

func contains(list []uint32, v uint32) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// peerGroups returns the supplementary groups of the peer of socket fd.
func peerGroups(fd int) ([]uint32, error) {
	n := 32
	for {
		buf := make([]uint32, n)
		l := uint32(4 * n)
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, soPeerGroups,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
		if e == unix.ERANGE && int(l/4) > n {
			n = int(l / 4)
			continue
		}
		if e != 0 {
			return nil, e
		}
		return buf[:l/4], nil
	}
}
