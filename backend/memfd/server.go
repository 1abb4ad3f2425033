package memfd

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	backlog  = 64
	maxConns = 16 // connections served at once by one owner
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
type server struct {
	addr    string
	name    string // the key's name, which a hashed address loses
	fd      int    // the region's memfd; the segment keeps it open until shutdown returns
	timeout time.Duration
	ln      *net.UnixListener
	euid    uint32
	sem     chan struct{} // one token per connection being served
	done    chan struct{} // closed when the listener is

	mu      sync.Mutex
	stopped bool // the listener is closed: the key is gone
	closing bool // shutdown has closed the connections
	conns   map[*net.UnixConn]struct{}
	wg      sync.WaitGroup // the accept loop and the handlers
}

// serve makes the bound socket lfd listen and serves it in a goroutine. It
// consumes lfd.
func serve(lfd int, name, addr string, memfd int, timeout time.Duration) (*server, error) {
	if err := unix.Listen(lfd, backlog); err != nil {
		unix.Close(lfd)
		return nil, err
	}
	f := os.NewFile(uintptr(lfd), "@"+addr)
	l, err := net.FileListener(f) // a duplicate, registered with the poller
	f.Close()
	if err != nil {
		return nil, err
	}
	s := &server{
		name: name, addr: addr, fd: memfd, timeout: timeout, ln: l.(*net.UnixListener),
		euid: uint32(os.Geteuid()),
		sem:  make(chan struct{}, maxConns), done: make(chan struct{}),
		conns: map[*net.UnixConn]struct{}{},
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
// server was listening.
func (s *server) unpublish() bool {
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
	s.ln.Close() // returns once the socket is closed and the name free
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
	s.unpublish()
	s.mu.Lock()
	s.closing = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *server) loop() {
	defer s.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		select {
		case s.sem <- struct{}{}:
		case <-s.done:
			return
		}
		c, err := s.ln.AcceptUnix()
		if err != nil {
			<-s.sem
			if errors.Is(err, net.ErrClosed) {
				return
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
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			c.Close()
			<-s.sem
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.handle(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			c.Close()
			<-s.sem
		}()
	}
}

// handle answers one request.
func (s *server) handle(c *net.UnixConn) {
	c.SetDeadline(time.Now().Add(s.timeout))
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	var cred *unix.Ucred
	var groups []uint32
	var groupsErr error
	if cerr := raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err == nil {
			groups, groupsErr = peerGroups(int(fd))
		}
	}); cerr != nil || err != nil {
		return
	}
	if groupsErr != nil {
		groups = nil // an old kernel: the primary group only
	}
	var req [8]byte
	n, err := c.Read(req[:])
	if err != nil {
		return
	}
	if n != 2 || req[0] != protoVersion {
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
		case !mayOpen(cred, groups, &st):
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
		case !s.unpublish():
			s.answer(c, stGone, nil, false)
		default:
			s.answer(c, stOK, nil, false)
		}
	default:
		s.answer(c, stBad, nil, false)
	}
}

func (s *server) answer(c *net.UnixConn, status byte, payload []byte, withFd bool) {
	msg := append([]byte{protoVersion, status}, payload...)
	var oob []byte
	if withFd {
		oob = unix.UnixRights(s.fd)
	}
	c.WriteMsgUnix(msg, oob, nil)
}

// mayOpen applies the region's mode to the peer as open(2) with O_RDWR
// applies a file's: the owner's bits, else the group's, else the others'.
func mayOpen(cred *unix.Ucred, groups []uint32, st *unix.Stat_t) bool {
	if cred.Uid == 0 {
		return true
	}
	mode := st.Mode & 0o777
	var bits uint32
	switch {
	case cred.Uid == st.Uid:
		bits = mode >> 6
	case cred.Gid == st.Gid || contains(groups, st.Gid):
		bits = mode >> 3
	default:
		bits = mode
	}
	return bits&6 == 6
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
