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
