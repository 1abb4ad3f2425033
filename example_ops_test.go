package shm_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/file"
)

// Two processes exchange a message: the owner creates the region, writes
// under the lock and wakes the users; a user attaches by key (waiting for
// the owner), sleeps in Lock.Wait until the message is there, and answers.
//
// In real use, owner and user are two programs that agree on a fixed key,
// as examples/quickstart is (the README shows it); here they run in two
// goroutines of one process.
func Example_ownerAndUser() {
	// message is what the processes share: plain values, no Go pointers.
	type message struct {
		Seq  uint64
		Text [64]byte
	}

	// The owner's program.
	owner := func(key string) error {
		r, err := shm.Create(key, 4096)
		if err != nil {
			return err
		}
		defer r.Close()
		defer r.Unlink() // runs first: the key goes, then the mapping

		m, err := shm.View[message](r, 0)
		if err != nil {
			return err
		}
		l, err := r.Lock()
		if err != nil {
			return err
		}
		defer l.Unlock()
		copy(m.Text[:], "hello from the owner")
		m.Seq = 1
		if err := r.Broadcast(); err != nil { // wake the user, if it already waits
			return err
		}

		// Wait, the lock released meanwhile, until the user answers.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for m.Seq != 2 {
			if err := l.Wait(ctx); err != nil {
				return err
			}
		}
		fmt.Printf("owner: the user says %q\n", bytes.TrimRight(m.Text[:], "\x00"))
		return nil
	}

	// The user's program.
	user := func(key string) error {
		r, err := shm.Open(key, 5*time.Second) // the owner may not be there yet
		if err != nil {
			return err
		}
		defer r.Close()

		m, err := shm.View[message](r, 0)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		l, err := r.LockContext(ctx)
		if err != nil {
			return err
		}
		for m.Seq != 1 { // spurious wake-ups are allowed: check again
			if err := l.Wait(ctx); err != nil {
				l.Unlock()
				return err
			}
		}
		fmt.Printf("user: the owner says %q\n", bytes.TrimRight(m.Text[:], "\x00"))
		clear(m.Text[:])
		copy(m.Text[:], "hello back")
		m.Seq = 2
		if err := l.Unlock(); err != nil {
			return err
		}
		return r.Broadcast()
	}

	key := exampleKey("exchange") // a program would use a fixed key: "/myapp-status"
	errs := make(chan error, 2)
	go func() { errs <- owner(key) }()
	go func() { errs <- user(key) }()
	for range 2 {
		if err := <-errs; err != nil {
			fmt.Println(err)
		}
	}
	// Output:
	// user: the owner says "hello from the owner"
	// owner: the user says "hello back"
}

// List finds the regions this process can see, on every default backend
// (DefaultBackends); here, the one this example made. Its error says what
// went wrong on some backend: the regions of the others are returned
// anyway, so report it and go on. Regions kept in a directory of their own
// (a key file:/DIR/NAME, SHM_BACKEND=file:/DIR) are listed only when
// ListBackends names it: file.New("/DIR").
func ExampleList() {
	r, err := shm.Create(exampleKey("list"), 4096)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	defer r.Unlink()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	infos, err := shm.List(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "list:", err)
	}
	for _, in := range infos {
		if in.Key == r.Key() && in.Backend == r.Backend() {
			fmt.Println(in.Size, in.Ready, in.Creator, in.Stale)
		}
	}
	// Output: 4096 true alive false
}

// Stat describes one region: its size, its creator, its lock and the
// Regions that use the lock, as shmctl stat shows them.
func ExampleStat() {
	r, err := shm.Create(exampleKey("stat"), 4096)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	defer r.Unlink()

	l, err := r.Lock()
	if err != nil {
		fmt.Println(err)
		return
	}
	in, err := shm.Stat(r.Key())
	if uerr := l.Unlock(); uerr != nil {
		fmt.Println(uerr)
		return
	}
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(in.Size, in.Creator, in.Lock.State)
	for _, u := range in.Users {
		fmt.Println("user", u.Alive)
	}
	// Output:
	// 4096 alive held
	// user alive
}

// RemoveStale removes the regions whose creator died and that nobody maps,
// as shmctl gc does, and never one in use: a region whose creator lives
// stays, and List says why it is not stale.
//
// This example keeps its region in a directory of its own and looks only
// there (ListBackends), so that it removes nothing but what it made; without
// ListBackends, List and RemoveStale look at every default place.
func ExampleRemoveStale() {
	dir, err := os.MkdirTemp("", "shm-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	r, err := shm.Create("file:"+dir+"/status", 4096) // the key names the backend and its directory
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	defer r.Unlink()

	here := shm.ListBackends(file.New(dir))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	removed, err := shm.RemoveStale(ctx, here)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("removed", len(removed))

	infos, err := shm.List(ctx, here)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, in := range infos {
		fmt.Println(in.Key, "stale:", in.Stale)
	}
	// Output:
	// removed 0
	// /status stale: false
}

// File hands a region to another process without its key: a child gets the
// descriptor through exec.Cmd.ExtraFiles and maps it with OpenFile. Here the
// same process opens it, and sees the same memory.
func ExampleRegion_File() {
	r, err := shm.Create(exampleKey("file"), 4096)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	defer r.Unlink()

	f, err := r.File()
	if err != nil {
		fmt.Println(err)
		return
	}
	// In the parent: cmd.ExtraFiles = []*os.File{f}, the child's descriptor 3.
	// In the child: u, err := shm.OpenFile(os.NewFile(3, "region")).
	u, err := shm.OpenFile(f)
	f.Close() // OpenFile keeps a descriptor of its own
	if err != nil {
		fmt.Println(err)
		return
	}
	defer u.Close()

	copy(r.Bytes(), "one region")
	fmt.Println(string(u.Bytes()[:10]), u.Backend(), u.Key() == r.Key())
	// The key is its owner's to remove, not the descriptor's.
	fmt.Println(errors.Is(u.Unlink(), shm.ErrInvalidOption))
	// Output:
	// one region fd true
	// true
}

// SendRegion passes a region over a unix socket, to a process that may not
// know its key (or could not open it: another container, another user);
// ReceiveRegion maps it. Here both ends are in one process.
func ExampleSendRegion() {
	r, err := shm.Create(exampleKey("send"), 4096)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	defer r.Unlink()
	copy(r.Bytes(), "sent by descriptor")

	// Between two processes, one end would be a connection accepted on a
	// listener (net.ListenUnix), the other the client's.
	sender, receiver, err := unixPair()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sender.Close()
	defer receiver.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := shm.SendRegion(ctx, sender, r); err != nil {
		fmt.Println(err)
		return
	}
	u, err := shm.ReceiveRegion(ctx, receiver)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer u.Close()
	fmt.Println(string(u.Bytes()[:18]), u.Size())
	// Output: sent by descriptor 4096
}

// unixPair returns both ends of a connected pair of unix stream sockets.
func unixPair() (*net.UnixConn, *net.UnixConn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	conn := func(fd int) (*net.UnixConn, error) {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close() // FileConn keeps a descriptor of its own
		c, err := net.FileConn(f)
		if err != nil {
			return nil, err
		}
		return c.(*net.UnixConn), nil
	}
	a, err := conn(fds[0])
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	b, err := conn(fds[1])
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, b, nil
}

// WithReplaceStale lets Create take over a key that a crashed owner left
// behind (its creator dead, nobody mapping it), so that a restarted program
// does not fail with ErrExist. A free key is created as without it; a key
// whose region is in use is never taken: Create fails with ErrExist.
func ExampleWithReplaceStale() {
	key := exampleKey("replace") // a program would use a fixed key
	r, err := shm.Create(key, 4096, shm.WithReplaceStale())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	defer r.Unlink()
	fmt.Println("created")

	// A second owner, while the first lives:
	again, err := shm.Create(key, 4096, shm.WithReplaceStale())
	if err == nil {
		fmt.Println("took a live region's key")
		again.Unlink()
		again.Close()
		return
	}
	fmt.Println(errors.Is(err, shm.ErrExist))
	// Output:
	// created
	// true
}
