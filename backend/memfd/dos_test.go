package memfd_test

// Tests of an owner under attack by idle connections of another uid
// (issue 11, item 1).

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/memfd"
	"github.com/shmgo/shm/internal/fdtest"
)

// idleClient plays a peer that opens count connections to the key's socket
// and sends nothing on any of them; with refill, it connects again each
// time the owner closes one, so that it keeps count connections open.
func idleClient(key, count string, refill bool, hear func() string, say func(string, ...any)) int {
	n, err := strconv.Atoi(count)
	if err != nil {
		say("error %v", err)
		return 1
	}
	sa := &unix.SockaddrUnix{Name: "@" + memfd.Addr(name(key))}
	dial := func(deadline time.Time) (int, error) {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return -1, err
		}
		// Connecting waits only while the owner's backlog is full.
		wait := time.Millisecond
		for {
			err = unix.Connect(fd, sa)
			if err != unix.EAGAIN || !time.Now().Before(deadline) {
				break
			}
			time.Sleep(wait)
			wait = min(2*wait, 50*time.Millisecond)
		}
		if err != nil {
			unix.Close(fd)
			return -1, err
		}
		return fd, nil
	}
	var fds []int
	// Give up on the rest after a while (an owner that never accepts).
	deadline := time.Now().Add(10 * time.Second)
	for len(fds) < n {
		fd, err := dial(deadline)
		if err != nil {
			break
		}
		fds = append(fds, fd)
	}
	say("connected %d", len(fds))
	stop := make(chan struct{})
	go func() { hear(); close(stop) }() // until told, or until stdin closes
	if refill {
		pfds := make([]unix.PollFd, len(fds))
		reconnects := 0
	loop:
		for {
			select {
			case <-stop:
				break loop
			default:
			}
			for i, fd := range fds {
				pfds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLRDHUP}
			}
			if k, err := unix.Poll(pfds, 100); err != nil || k == 0 {
				continue
			}
			for i := range pfds {
				if pfds[i].Revents == 0 {
					continue
				}
				unix.Close(fds[i])
				fd, err := dial(time.Now().Add(100 * time.Millisecond))
				if err != nil {
					// Keep a closed socket's place: a descriptor that
					// polls as hung up is tried again next round.
					fd, _ = unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
				}
				fds[i] = fd
				reconnects++
			}
		}
		fmt.Fprintln(os.Stderr, "idle peer: connected again", reconnects, "times")
	} else {
		<-stop
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	return 0
}

// TestIdleConnectionsFromOtherUID: a process of another uid, which may not
// even open the region, holds a thousand connections to the owner's socket
// and sends nothing on them ("refill": connecting again each one the owner
// closes); every legitimate Open is still served, and the owner keeps only
// a few of those connections.
func TestIdleConnectionsFromOtherUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a peer of another uid needs root to run a child as another uid")
	}
	for _, mode := range []string{"hold", "refill"} {
		t.Run(mode, func(t *testing.T) {
			const idle, opens = 1000, 50
			key := testKey("idle")
			r, err := shm.Create(key, 4096, shm.WithBackend(memfd.New()), shm.WithMode(0o600))
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			copy(r.Bytes(), "served")
			fds := fdtest.Count(t)

			attacker := startChild(t, "idle", []string{key, strconv.Itoa(idle), mode}, asUser(t, 65534, 65534))
			if l := attacker.Expect(""); l != "connected "+strconv.Itoa(idle) {
				t.Errorf("the idle peer: %q, want all %d connections accepted", l, idle)
			}

			opt := shm.WithBackend(memfd.New())
			var lat []time.Duration
			served := 0
			for range opens {
				start := time.Now()
				u, err := shm.Open(key, 30*time.Second, opt)
				lat = append(lat, time.Since(start))
				if err != nil {
					t.Errorf("Open with %d idle connections of uid 65534 open: %v", idle, err)
					continue
				}
				if string(u.Bytes()[:6]) != "served" {
					t.Errorf("Open maps %q", u.Bytes()[:6])
				}
				u.Close()
				served++
			}
			slices.Sort(lat)
			t.Logf("%d of %d Opens served while uid 65534 holds %d idle connections (%s); latency p50 %v, max %v",
				served, opens, idle, mode, lat[len(lat)/2], lat[len(lat)-1])
			// The owner holds a few of the idle connections at most, not all.
			if n := fdtest.Count(t) - fds; n > 64 {
				t.Errorf("the owner holds %d more descriptors with the idle peer connected", n)
			}
			attacker.Send("done")
			attacker.Wait()
		})
	}
}
