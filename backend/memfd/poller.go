package memfd

import (
	"container/heap"
	"encoding/binary"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The listening sockets of every key this process serves are in one epoll
// set, which one goroutine, the dispatcher, waits on in epoll_wait(2) and
// serves. So an owner of ten thousand keys has one goroutine and one thread
// for them, not a thread blocked in accept(2) (or a goroutine) per key. The
// dispatcher waits in the system call itself, rather than in the Go
// runtime's poller, because it is then woken as directly as the thread of
// a blocking accept was; it runs only while some key is served: the last
// Unlink or Close stops it.
//
// A connection whose request has not arrived when it is accepted (the
// dispatcher often wakes at the connect, a moment before the user's
// request) joins the same set, once: the dispatcher answers it as soon as
// the request comes, or closes it at its deadline, without ever waiting for
// one connection while others are there. Each server may have a few such
// connections per uid, so that silent peers of one uid cannot take the
// places of the others.
type poller struct {
	mu       sync.Mutex
	cur      *epollSet          // nil when no key is served
	servers  map[uint64]*server // by the id in their epoll events
	waiting  map[uint64]*silent // connections waiting for their request, by id
	expiries silentHeap         // the same, by deadline
	nextID   uint64
}

// silent is an accepted connection whose request has not arrived yet.
type silent struct {
	id       uint64
	fd       int
	s        *server
	cred     *unix.Ucred
	deadline time.Time
	index    int // in the heap
}

// epollSet is one dispatcher's epoll instance, with the eventfd that stops
// it; the dispatcher closes both before it returns.
type epollSet struct {
	epfd, evfd int
	closed     bool          // under pl.mu
	done       chan struct{} // closed once epfd and evfd are
}

// close closes the set's descriptors; only its dispatcher calls it, when it
// is not in epoll_wait. p.mu is held.
func (set *epollSet) close() {
	unix.Close(set.epfd)
	unix.Close(set.evfd)
	set.closed = true
	close(set.done)
}

// stopID is the id of the eventfd's events.
const stopID = 0

var pl = poller{servers: map[uint64]*server{}, waiting: map[uint64]*silent{}}

// add makes the dispatcher serve s's listening socket.
func (p *poller) add(s *server) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur == nil {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return err
		}
		evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			unix.Close(epfd)
			return err
		}
		if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, event(stopID, unix.EPOLLIN)); err != nil {
			unix.Close(evfd)
			unix.Close(epfd)
			return err
		}
		p.cur = &epollSet{epfd: epfd, evfd: evfd, done: make(chan struct{})}
		go p.dispatch(p.cur)
	}
	p.nextID++
	s.id, s.set = p.nextID, p.cur
	if err := unix.EpollCtl(s.set.epfd, unix.EPOLL_CTL_ADD, s.lfd, event(s.id, unix.EPOLLIN)); err != nil {
		if wait := p.stopIfIdle(false); wait != nil {
			p.mu.Unlock()
			wait()
			p.mu.Lock()
		}
		return err
	}
	p.servers[s.id] = s
	return nil
}

// remove stops serving s's listening socket; the caller then closes it.
// When s was the last, the dispatcher stops: remove then returns a function
// that waits until it has closed its descriptors, which the caller must
// call once it holds no lock; onDispatcher tells that the caller is the
// dispatcher, which then closes them at once.
func (p *poller) remove(s *server, onDispatcher bool) (wait func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.servers[s.id] != s {
		return nil
	}
	delete(p.servers, s.id)
	unix.EpollCtl(s.set.epfd, unix.EPOLL_CTL_DEL, s.lfd, nil)
	// Its silent connections go too: their users, who would be told that
	// the key is gone, find that out by connecting again.
	for _, w := range s.silent {
		p.take(w)
		unix.Close(w.fd)
	}
	return p.stopIfIdle(onDispatcher)
}

// wait adds the accepted connection c of s, from a peer with credentials
// cred, to the connections waiting for their request, unless its uid or s
// has too many already. It consumes c.
func (p *poller) wait(s *server, c int, cred *unix.Ucred) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.servers[s.id] != s || s.perUID[cred.Uid] >= maxSilentPerUID || len(s.silent) >= maxSilent {
		unix.Close(c) // the peer may connect again, and send its request at once
		return
	}
	p.nextID++
	w := &silent{id: p.nextID, fd: c, s: s, cred: cred, deadline: time.Now().Add(s.silentFor)}
	// One-shot: the first event takes the connection out of the set.
	if unix.EpollCtl(s.set.epfd, unix.EPOLL_CTL_ADD, c, event(w.id, unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLONESHOT)) != nil {
		unix.Close(c)
		return
	}
	p.waiting[w.id] = w
	heap.Push(&p.expiries, w)
	s.silent[w.id] = w
	s.perUID[cred.Uid]++
}

// take removes w from the waiting connections; the caller then serves or
// closes w.fd. p.mu is held.
func (p *poller) take(w *silent) {
	delete(p.waiting, w.id)
	heap.Remove(&p.expiries, w.index)
	delete(w.s.silent, w.id)
	if w.s.perUID[w.cred.Uid]--; w.s.perUID[w.cred.Uid] <= 0 {
		delete(w.s.perUID, w.cred.Uid)
	}
}

// timeout is how long the dispatcher may wait for events: until the first
// deadline of a waiting connection, in milliseconds rounded up, or -1 for
// ever. p.mu is held.
func (p *poller) timeout() int {
	if len(p.expiries) == 0 {
		return -1
	}
	left := time.Until(p.expiries[0].deadline)
	if left <= 0 {
		return 0
	}
	return int((left + time.Millisecond - 1) / time.Millisecond)
}

// pause stops the events of s's socket for d (accept failed for want of
// descriptors, say: the pending connection would wake the dispatcher at
// once again).
func (p *poller) pause(s *server, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.servers[s.id] != s {
		return
	}
	unix.EpollCtl(s.set.epfd, unix.EPOLL_CTL_MOD, s.lfd, event(s.id, 0))
	time.AfterFunc(d, func() {
		s.lnMu.Lock() // the socket is still open, and still s's
		defer s.lnMu.Unlock()
		p.mu.Lock()
		defer p.mu.Unlock()
		if s.lfd >= 0 && p.servers[s.id] == s {
			unix.EpollCtl(s.set.epfd, unix.EPOLL_CTL_MOD, s.lfd, event(s.id, unix.EPOLLIN))
		}
	})
}

// stopIfIdle stops the dispatcher when no key is left, as remove says.
// p.mu is held.
func (p *poller) stopIfIdle(onDispatcher bool) (wait func()) {
	set := p.cur
	if len(p.servers) > 0 || set == nil {
		return nil
	}
	p.cur = nil // the next add starts another
	if onDispatcher {
		set.close() // it is not in epoll_wait, and will not call it again
		return nil
	}
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	unix.Write(set.evfd, one[:])
	return func() { <-set.done }
}

func event(id uint64, events uint32) *unix.EpollEvent {
	return &unix.EpollEvent{Events: events, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
}

// dispatch serves the sockets whose events set reports, until told to
// stop; it then closes set.
func (p *poller) dispatch(set *epollSet) {
	events := make([]unix.EpollEvent, 128)
	var ready []*server
	var conns, expired []*silent
	for {
		p.mu.Lock()
		timeout := p.timeout()
		p.mu.Unlock()
		n, err := unix.EpollWait(set.epfd, events, timeout)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return // cannot happen with a valid set
		}
		ready, conns, expired = ready[:0], conns[:0], expired[:0]
		stop := false
		now := time.Now()
		p.mu.Lock()
		for _, ev := range events[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if id == stopID {
				stop = true
			} else if s := p.servers[id]; s != nil {
				ready = append(ready, s)
			} else if w := p.waiting[id]; w != nil {
				p.take(w)
				conns = append(conns, w)
			}
		}
		for len(p.expiries) > 0 && !now.Before(p.expiries[0].deadline) {
			w := p.expiries[0]
			p.take(w)
			expired = append(expired, w)
		}
		if stop {
			// Every server of set was removed first, with its connections.
			set.close()
		}
		p.mu.Unlock()
		for _, w := range expired {
			unix.Close(w.fd)
		}
		if stop {
			return
		}
		for _, w := range conns {
			w.s.late(w.fd, w.cred)
		}
		for _, s := range ready {
			s.acceptOne()
		}
		p.mu.Lock()
		closed := set.closed // by an unlink this turn served
		p.mu.Unlock()
		if closed {
			return
		}
	}
}

// silentHeap orders waiting connections by deadline (container/heap).
type silentHeap []*silent

func (h silentHeap) Len() int           { return len(h) }
func (h silentHeap) Less(i, j int) bool { return h[i].deadline.Before(h[j].deadline) }
func (h silentHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *silentHeap) Push(x any) {
	w := x.(*silent)
	w.index = len(*h)
	*h = append(*h, w)
}
func (h *silentHeap) Pop() any {
	old := *h
	w := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return w
}
