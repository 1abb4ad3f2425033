package shm_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/shmgo/shm"
)

// The owner creates a region; a user (normally another process) attaches by
// key and both see the same bytes. The lock guards updates.
func Example() {
	owner, err := shm.Create("/example-status", 4096)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer owner.Close()
	defer owner.Unlink()

	user, err := shm.Open("/example-status", 2*time.Second)
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
	l.Unlock()

	fmt.Println(string(user.Bytes()[:20]), user.Size())
	// Output: hello from the owner 4096
}

// A user that starts before the owner waits for it; one that never finds the
// key gets an error matching both ErrTimeout and ErrNotExist.
func ExampleOpen() {
	_, err := shm.Open("/example-missing", 10*time.Millisecond)
	fmt.Println(errors.Is(err, shm.ErrNotExist), errors.Is(err, shm.ErrTimeout))
	// Output: true true
}

// Lock excludes other processes and goroutines. When the previous holder
// died holding the lock, Lock returns it with ErrOwnerDead: repair what it
// guards, then MarkConsistent.
func ExampleRegion_Lock() {
	r, err := shm.Create("/example-lock", 64)
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
		l.MarkConsistent()
	case err != nil:
		fmt.Println(err)
		return
	}
	r.Bytes()[0]++
	l.Unlock()
	fmt.Println(r.Bytes()[0])
	// Output: 1
}

// WithInit fills a region before any user can attach: Open waits until the
// owner's init has returned, so users never see a half-made region.
func ExampleWithInit() {
	owner, err := shm.Create("/example-init", 16, shm.WithInit(func(data []byte) error {
		copy(data, "configured")
		return nil
	}))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer owner.Close()
	defer owner.Unlink()

	user, err := shm.Open("/example-init", time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer user.Close()
	fmt.Println(string(user.Bytes()[:10]))
	// Output: configured
}

// A key may name its backend, so that configuration chooses without code.
func ExampleCreate_backendInKey() {
	r, err := shm.Create("memfd:/example-memfd", 4096)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	fmt.Println(r.Backend(), r.Key(), r.Size())
	// Output: memfd memfd:/example-memfd 4096
}
