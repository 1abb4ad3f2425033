package sysv_test

import (
	"fmt"
	"time"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend/sysv"
)

// A region in SysV shared memory: ipcs -m shows it under sysv.Key(key),
// and a C program can attach it with shmget(key_t, 0, 0) and shmat.
func Example() {
	const key = "/t-sysv-example"
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
	fmt.Printf("key_t %#08x, mode %v, %d attachments\n", uint32(int32(sysv.Key(key))), st.Mode, st.Attached)
	fmt.Println(string(user.Bytes()[:5]))
	// Output:
	// key_t 0xc11adbe2, mode -rw-r-----, 2 attachments
	// hello
}
