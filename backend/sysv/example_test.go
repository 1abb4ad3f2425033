package sysv_test

import (
	"fmt"
	"os"
	"time"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/sysv"
)

// A region in SysV shared memory: ipcs -m shows it under sysv.Key(key),
// and a C program can attach it with shmget(key_t, 0, 0) and shmat.
//
// A program uses a fixed key such as "/myapp"; the example makes its own
// unique (the PID and the time), since a SysV segment outlives a process
// that was killed before it could remove it.
func Example() {
	key := fmt.Sprintf("/example-sysv-%d-%d", os.Getpid(), time.Now().UnixNano())
	owner, err := shm.Create(key, 4096, shm.WithBackend(sysv.New()), shm.WithMode(0o640))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer owner.Close()
	defer owner.Unlink() // IPC_RMID: attached processes keep the segment
	copy(owner.Bytes(), "hello")

	user, err := shm.Open(key, time.Second, shm.WithBackend(sysv.New()))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer user.Close()

	st, err := sysv.New().Stat(key)
	if err != nil {
		fmt.Println(err)
		return
	}
	// st.Key is the key_t that ipcs -m lists and shmget takes.
	fmt.Printf("key_t is sysv.Key(key): %v, mode %v, %d attachments\n", st.Key == sysv.Key(key), st.Mode, st.Attached)
	fmt.Println(string(user.Bytes()[:5]))
	// Output:
	// key_t is sysv.Key(key): true, mode -rw-r-----, 2 attachments
	// hello
}
