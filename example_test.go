package shm_test

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/shmgo/shm"
)

// The owner creates a region; a user (normally another process) attaches by
// key and both see the same bytes. The lock guards updates.
//
// In a program, the owner and its users agree on a fixed key such as
// "/myapp-status". The examples make theirs unique to the run (the PID and
// the time), so that they can run anywhere: beside another copy of
// themselves, or after a run that was killed and left its region behind.
func Example() {
	key := fmt.Sprintf("/example-status-%d-%d", os.Getpid(), time.Now().UnixNano())
	owner, err := shm.Create(key, 4096)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer owner.Close()
	defer owner.Unlink()

	user, err := shm.Open(key, 2*time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer user.Close()

	l, err := owner.Lock()
	if err != nil {
		fmt.Println(err)
		return
	}
	copy(owner.Bytes(), "hello from the owner")
	if err := l.Unlock(); err != nil {
		fmt.Println(err)
		return
	}

	fmt.Println(string(user.Bytes()[:20]), user.Size())
	// Output: hello from the owner 4096
}

// A user that starts before the owner waits for it; one that never finds the
// key gets an error matching both ErrTimeout and ErrNotExist.
func ExampleOpen() {
	key := fmt.Sprintf("/example-missing-%d-%d", os.Getpid(), time.Now().UnixNano()) // nobody made it
	_, err := shm.Open(key, 10*time.Millisecond)
	fmt.Println(errors.Is(err, shm.ErrNotExist), errors.Is(err, shm.ErrTimeout))
	// Output: true true
}

// Lock excludes other processes and goroutines. When the previous holder
// died holding the lock, Lock returns it with ErrOwnerDead: repair what it
// guards, then MarkConsistent.
func ExampleRegion_Lock() {
	key := fmt.Sprintf("/example-lock-%d-%d", os.Getpid(), time.Now().UnixNano()) // unique to this run
	r, err := shm.Create(key, 64)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	defer r.Unlink()

	l, err := r.Lock()
	switch {
	case errors.Is(err, shm.ErrOwnerDead):
		clear(r.Bytes()) // repair: here, start over
		if err := l.MarkConsistent(); err != nil {
			fmt.Println(err)
			l.Unlock()
			return
		}
	case err != nil:
		fmt.Println(err)
		return
	}
	r.Bytes()[0]++
	if err := l.Unlock(); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(r.Bytes()[0])
	// Output: 1
}

// WithInit fills a region before any user can attach: Open waits until the
// owner's init has returned, so users never see a half-made region.
func ExampleWithInit() {
	key := fmt.Sprintf("/example-init-%d-%d", os.Getpid(), time.Now().UnixNano()) // unique to this run
	owner, err := shm.Create(key, 16, shm.WithInit(func(data []byte) error {
		copy(data, "configured")
		return nil
	}))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer owner.Close()
	defer owner.Unlink()

	user, err := shm.Open(key, time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer user.Close()
	fmt.Println(string(user.Bytes()[:10]))
	// Output: configured
}

// A key may name its backend, so that configuration chooses without code:
// "memfd:/myapp" is the key "/myapp" on the memfd backend.
func ExampleCreate_backendInKey() {
	key := fmt.Sprintf("memfd:/example-memfd-%d-%d", os.Getpid(), time.Now().UnixNano()) // unique to this run
	r, err := shm.Create(key, 4096)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	fmt.Println(r.Backend(), r.Key() == key, r.Size())
	// Output: memfd true 4096
}
