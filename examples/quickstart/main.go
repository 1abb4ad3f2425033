// Quickstart shares a struct between two processes and wakes one when the
// other writes: run "go run . owner" in one terminal, then "go run . user"
// in another.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/shmgo/shm"
)

// Greeting is what the processes share: plain values, no Go pointers.
type Greeting struct {
	Seq  uint64
	Text [64]byte
}

const key = "/quickstart-greeting"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "user" {
		user()
		return
	}
	owner()
}

// owner creates the region, writes a greeting, and waits for the reply.
func owner() {
	r, err := shm.Create(key, 4096, shm.WithReplaceStale()) // a crashed owner's key is taken over
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	defer r.Unlink() // runs first: the key goes, then the mapping

	g, err := shm.View[Greeting](r, 0)
	if err != nil {
		log.Fatal(err)
	}
	l, err := r.Lock()
	if err != nil {
		log.Fatal(err)
	}
	copy(g.Text[:], "hello from the owner")
	g.Seq = 1
	r.Broadcast() // wake the user, if it already waits

	// Wait (the lock released meanwhile) until the user answers.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for g.Seq != 2 {
		if err := l.Wait(ctx); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Printf("owner: the user says %q\n", cstring(g.Text[:]))
	l.Unlock()
}

// user attaches (waiting for the owner up to 10 s), reads, and answers.
func user() {
	r, err := shm.Open(key, 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()

	g, err := shm.View[Greeting](r, 0)
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := r.Lock()
	if err != nil {
		log.Fatal(err)
	}
	for g.Seq != 1 {
		if err := l.Wait(ctx); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Printf("user: the owner says %q\n", cstring(g.Text[:]))
	copy(g.Text[:], "hello back\x00")
	g.Seq = 2
	l.Unlock()
	r.Broadcast()
}

// cstring is the text up to the first NUL.
func cstring(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
