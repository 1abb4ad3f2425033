package memfd

import (
	"os"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	backlog  = 64
	maxConns = 16 // connections served at once by one owner
	// inlineWait is how long the accept loop waits for the request of a
	// connection before it hands the connection to a goroutine of its own.
	inlineWait = time.Millisecond
	// soPeerGroups is SO_PEERGROUPS (Linux 4.13), missing from x/sys.
	soPeerGroups = 59
)

// The keys this process serves, by socket address, so that Unlink in the
// owner process stops serving without a round trip.
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
// The serving goroutine blocks in accept(2) on the listening socket itself,
// outside the runtime's poller (so it holds a thread while the key is
// published), and answers a request that arrives within inlineWait, with
// system calls that do not wait otherwise. A connection whose request has
// not arrived by then goes to a goroutine of its own that waits for it
// under SO_RCVTIMEO; at most maxConns connections are served at once.
type server struct {
	addr    string
	name    string // the key's name, which a hashed address loses
	fd      int    // the region's memfd; the segment keeps it open until shutdown returns
	timeout time.Duration
	lfd     int // the listening socket; closed by unpublish
	euid    uint32
	sem     chan struct{} // one token per connection being served
	done    chan struct{} // closed when unpublish starts
	looped  chan struct{} // closed when the accept loop has returned

	mu      sync.Mutex
	stopped bool // the listener is closed: the key is gone
	closing bool // shutdown has shut the connections down
	conns   map[int]struct{}
	wg      sync.WaitGroup // the accept loop and the handlers
}

// serve makes the bound socket lfd listen and serves it in a goroutine. It
// consumes lfd.
func serve(lfd int, name, addr string, memfd int, timeout time.Duration) (*server, error) {
	if err := unix.Listen(lfd, backlog); err != nil {
		unix.Close(lfd)
		return nil, err
	}
	s := &server{
		name: name, addr: addr, fd: memfd, timeout: timeout, lfd: lfd,
		euid: uint32(os.Geteuid()),
		sem:  make(chan struct{}, maxConns), done: make(chan struct{}),
		looped: make(chan struct{}),
		conns:  map[int]struct{}{},
	}
	regMu.Lock()
	registry[addr] = s
	regMu.Unlock()
	s.wg.Add(1)
	go s.loop()
	return s, nil
}

// unpublish stops listening, so that the key is free and new Opens fail;
// connections already accepted are still answered. It reports whether the
// server was listening. inLoop tells that the caller is the accept loop,
// which returns once it is done with the request.
func (s *server) unpublish(inLoop bool) bool {
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
	close(s.done)
	// Refuses new connections and wakes the accept loop; once the loop no
	// longer uses the socket, closing it frees the name.
	unix.Shutdown(s.lfd, unix.SHUT_RDWR)
	if !inLoop {
		<-s.looped
	}
	unix.Close(s.lfd)
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
	s.mu.Lock()
	s.closing = true
	for c := range s.conns {
		// Wakes a handler blocked in recv; the handler closes c.
		unix.Shutdown(c, unix.SHUT_RDWR)
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *server) loop() {
	defer s.wg.Done()
	defer close(s.looped)
	backoff := 5 * time.Millisecond
	for {
		select {
		case <-s.done:
			return
		default:
		}
		select {
		case s.sem <- struct{}{}:
		case <-s.done:
			return
		}
		c, _, err := unix.Accept4(s.lfd, unix.SOCK_CLOEXEC)
		if err == unix.EINTR || err == unix.ECONNABORTED {
			<-s.sem
			continue
		}
		if err != nil {
			<-s.sem
			select {
			case <-s.done: // shut down by unpublish
				return
			default:
			}
			// Out of descriptors, say: wait before trying again.
			t := time.NewTimer(backoff)
			select {
			case <-s.done:
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond

		// Users send their request right after connecting: answer it here
		// if it comes within a moment.
		var req [8]byte
		n, _, err := unix.Recvfrom(c, req[:], unix.MSG_DONTWAIT)
		if err == unix.EAGAIN && waitReadable(c, inlineWait) {
			n, _, err = unix.Recvfrom(c, req[:], unix.MSG_DONTWAIT)
		}
		if err != unix.EAGAIN {
			if err == nil && n > 0 {
				s.handle(c, req[:n], true)
			}
			unix.Close(c)
			<-s.sem
			continue
		}

		deadline := time.Now().Add(s.timeout)
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			unix.Close(c)
			<-s.sem
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			if n, ok := recvRequest(c, req[:], deadline); ok {
				s.handle(c, req[:n], false)
			}
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			unix.Close(c)
			<-s.sem
		}()
	}
}

// waitReadable waits up to d for data (or the end) on socket c.
func waitReadable(c int, d time.Duration) bool {
	fds := []unix.PollFd{{Fd: int32(c), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, int(d/time.Millisecond))
	return err == nil && n > 0
}

// recvRequest waits until deadline for the request on the blocking socket
// c and reads it into buf.
func recvRequest(c int, buf []byte, deadline time.Time) (int, bool) {
	for {
		if setTimeout(c, unix.SO_RCVTIMEO, deadline) != nil {
			return 0, false
		}
		n, _, err := unix.Recvfrom(c, buf, 0)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil || n == 0:
			return 0, false // timed out, failed, or the peer (or shutdown) closed it
		}
		return n, true
	}
}

// handle answers the request req received on the connection c; inLoop
// tells that the caller is the accept loop.
func (s *server) handle(c int, req []byte, inLoop bool) {
	cred, err := unix.GetsockoptUcred(c, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return
	}
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
		case !mayOpen(cred, c, &st):
			s.answer(c, stDenied, nil, false)
		default:
			s.answer(c, stOK, nil, true)
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
		case !s.unpublish(inLoop):
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
	msg := append([]byte{protoVersion, status}, payload...)
	var oob []byte
	if withFd {
		oob = unix.UnixRights(s.fd)
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
func mayOpen(cred *unix.Ucred, c int, st *unix.Stat_t) bool {
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
	return bits&6 == 6
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
