package shm

import (
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/shmgo/shm/internal/fdtest"
)

// A table of MaxUsers slots, every one taken: MaxUsers Regions of this
// process each take a slot at their first Lock, the next Region's first
// Lock fails with ErrTooManyUsers, and the slot a Close gives back goes to
// a new Region. Everything is closed and nothing is left.
//
// It runs on SysV, whose Open keeps no descriptor (a segment is attached
// with shmat), so MaxUsers Regions fit in any RLIMIT_NOFILE; the test checks
// that they cost no descriptor. (A POSIX or file Region keeps its file's
// descriptor, and a memfd one its memfd's.)
func TestUserSlotsAtTheLimit(t *testing.T) {
	began := time.Now()
	key := fmt.Sprintf("sysv:/t-lock-%d-%s-limit", os.Getpid(), runID)
	c, err := Create(key, 64, WithMaxUsers(MaxUsers))
	if err != nil {
		t.Fatal(err)
	}
	var users []*Region
	closeAll := func() {
		for _, u := range users {
			if u != nil {
				u.Close()
			}
		}
		users = nil
	}
	defer func() {
		closeAll()
		c.Unlink()
		c.Close()
	}()
	fds := fdtest.Count(t)
	open := func() *Region {
		t.Helper()
		u, err := Open(key, 0)
		if err != nil {
			t.Fatalf("Open of user %d: %v", len(users), err)
		}
		return u
	}
	lockOnce := func(x *Region) error {
		l, err := x.Lock()
		if err == nil {
			err = l.Unlock()
		}
		return err
	}

	// MaxUsers users, each in a slot of its own.
	taken := make([]bool, MaxUsers+1) // by slot+1
	for len(users) < MaxUsers {
		u := open()
		users = append(users, u)
		if err := lockOnce(u); err != nil {
			t.Fatalf("first Lock of user %d of %d: %v", len(users), MaxUsers, err)
		}
		me := u.me.Load()
		if me == 0 || me > MaxUsers || taken[me] {
			t.Fatalf("user %d holds slot+1 %d, want a slot of its own", len(users), me)
		}
		taken[me] = true
	}
	if n := fdtest.Count(t); n > fds+4 {
		t.Fatalf("%d descriptors open with %d SysV Regions, %d before: an Open keeps a descriptor", n, MaxUsers, fds)
	}
	filled := time.Since(began)

	// One more: its first Lock finds every slot taken, and so does the
	// creator's (it never locked). Their later Locks too.
	extra := open()
	defer extra.Close()
	for _, x := range []*Region{extra, c, extra} {
		if err := lockOnce(x); !errors.Is(err, ErrTooManyUsers) {
			t.Fatalf("first Lock of a user past %d: %v, want ErrTooManyUsers", MaxUsers, err)
		}
		if x.me.Load() != 0 {
			t.Fatalf("a Lock that failed with ErrTooManyUsers left the Region in slot+1 %d", x.me.Load())
		}
	}
	if _, err := extra.TryLock(); !errors.Is(err, ErrTooManyUsers) {
		t.Fatalf("TryLock of a user past %d: %v, want ErrTooManyUsers", MaxUsers, err)
	}

	// A Close in the middle of the table gives its slot back: the next
	// Region to lock takes that one, the only one free.
	i := MaxUsers / 2
	freed := users[i].me.Load()
	if err := users[i].Close(); err != nil {
		t.Fatal(err)
	}
	users[i] = nil
	if err := lockOnce(extra); err != nil {
		t.Fatalf("Lock after a Close freed slot %d: %v", freed-1, err)
	}
	if got := extra.me.Load(); got != freed {
		t.Fatalf("the new user took slot %d, want the freed slot %d", got-1, freed-1)
	}
	if err := lockOnce(c); !errors.Is(err, ErrTooManyUsers) {
		t.Fatalf("Lock of another user once the freed slot was reused: %v, want ErrTooManyUsers", err)
	}

	// Close every Region: every slot is free again.
	closeAll()
	if err := extra.Close(); err != nil {
		t.Fatal(err)
	}
	if err := lockOnce(c); err != nil {
		t.Fatalf("the creator's Lock once every user closed: %v", err)
	}
	info, err := Stat(key)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Users) != 1 || info.MaxUsers != MaxUsers {
		t.Fatalf("Stat once all but the creator closed: %d users of %d, want 1 of %d", len(info.Users), info.MaxUsers, MaxUsers)
	}
	if n := fdtest.Count(t); n != fds {
		t.Fatalf("%d descriptors open once every user closed, %d before", n, fds)
	}
	t.Logf("%d users in %v, all of it in %v", MaxUsers, filled, time.Since(began))
}
