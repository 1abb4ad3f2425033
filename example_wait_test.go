package shm_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/shmgo/shm"
)

// exampleKey makes a key of this run, so that examples run as tests never
// meet what another run left.
func exampleKey(what string) string {
	return fmt.Sprintf("/example-%s-%d-%d", what, os.Getpid(), time.Now().UnixNano())
}

// Status is what a producer shares: plain values, no Go pointers.
type Status struct {
	Seq     uint64
	Samples [8]float64
}

// View gives a typed pointer into the region: what one process stores
// there, the others see.
func ExampleView() {
	r, err := shm.Create(exampleKey("view"), 4096)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	defer r.Unlink()

	st, err := shm.View[Status](r, 0)
	if err != nil {
		fmt.Println(err)
		return
	}
	l, _ := r.Lock()
	st.Seq++
	st.Samples[0] = 3.5
	l.Unlock()

	// A type that holds a Go pointer cannot be shared.
	_, err = shm.View[struct{ Name string }](r, 128)
	fmt.Println(st.Seq, st.Samples[0], err != nil)
	// Output: 1 3.5 true
}

// Slice gives n values of a type: a table, a ring of records.
func ExampleSlice() {
	r, err := shm.Create(exampleKey("slice"), 4096)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	defer r.Unlink()

	cpus, err := shm.Slice[uint32](r, 64, 16)
	if err != nil {
		fmt.Println(err)
		return
	}
	cpus[3] = 1500 // MHz, say
	fmt.Println(len(cpus), cpus[3])
	// Output: 16 1500
}

// Lock.Wait sleeps until another process (or goroutine) signals, with the
// lock released meanwhile, like a pthread condition variable: a consumer
// that must wake when data arrives needs no polling.
func ExampleLock_Wait() {
	key := exampleKey("wait")
	producer, err := shm.Create(key, 4096)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer producer.Close()
	defer producer.Unlink()
	consumer, err := shm.Open(key, time.Second) // normally another process
	if err != nil {
		fmt.Println(err)
		return
	}
	defer consumer.Close()

	in, _ := shm.View[Status](consumer, 0)
	out, _ := shm.View[Status](producer, 0)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the consumer
		defer wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		l, _ := consumer.Lock()
		defer l.Unlock()
		for in.Seq == 0 { // spurious wake-ups are allowed: check again
			if err := l.Wait(ctx); err != nil {
				fmt.Println(err)
				return
			}
		}
		fmt.Println("got record", in.Seq)
	}()

	l, _ := producer.Lock()
	out.Seq = 1
	l.Unlock()
	producer.Broadcast() // wakes every waiter, in every process
	wg.Wait()
	// Output: got record 1
}

// A Futex is a word for lock-free protocols: a counter the producer
// advances, and a consumer that sleeps until it moves.
func ExampleFutex() {
	type ring struct {
		Tail shm.Futex
		Data [64]uint64
	}
	r, err := shm.Create(exampleKey("futex"), 4096)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	defer r.Unlink()
	q, _ := shm.View[ring](r, 0)

	done := make(chan uint32)
	go func() { // the consumer, normally in another process
		seen := uint32(0)
		for q.Tail.Load() == seen {
			q.Tail.Wait(context.Background(), seen)
		}
		done <- q.Tail.Load()
	}()
	q.Data[0] = 42
	q.Tail.Add(1) // publish, then wake
	q.Tail.Wake(1)
	fmt.Println("tail", <-done, "data", q.Data[0])
	// Output: tail 1 data 42
}
