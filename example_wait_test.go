package shm_test

import (
	"context"
	"fmt"
	"os"
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
	l, err := r.Lock()
	if err != nil {
		fmt.Println(err)
		return
	}
	st.Seq++
	st.Samples[0] = 3.5
	if err := l.Unlock(); err != nil {
		fmt.Println(err)
		return
	}

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

	in, err := shm.View[Status](consumer, 0)
	if err != nil {
		fmt.Println(err)
		return
	}
	out, err := shm.View[Status](producer, 0)
	if err != nil {
		fmt.Println(err)
		return
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := make(chan error, 1)
	go func() { // the consumer
		l, err := consumer.LockContext(ctx)
		if err != nil {
			got <- err
			return
		}
		defer l.Unlock()
		for in.Seq == 0 { // spurious wake-ups are allowed: check again
			if err := l.Wait(ctx); err != nil {
				got <- err
				return
			}
		}
		fmt.Println("got record", in.Seq)
		got <- nil
	}()

	// The producer.
	produce := func() error {
		l, err := producer.Lock()
		if err != nil {
			return err
		}
		out.Seq = 1
		if err := l.Unlock(); err != nil {
			return err
		}
		return producer.Broadcast() // wakes every waiter, in every process
	}
	if err := produce(); err != nil {
		fmt.Println(err)
		cancel() // the consumer gives up
	}
	if err := <-got; err != nil { // wait for it before the regions close
		fmt.Println(err)
	}
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
	q, err := shm.View[ring](r, 0)
	if err != nil {
		fmt.Println(err)
		return
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { // the consumer, normally in another process
		seen := uint32(0)
		for q.Tail.Load() == seen { // spurious wake-ups are allowed: check again
			if err := q.Tail.Wait(ctx, seen); err != nil {
				done <- err
				return
			}
		}
		fmt.Println("tail", q.Tail.Load(), "data", q.Data[0])
		done <- nil
	}()
	q.Data[0] = 42
	q.Tail.Add(1) // publish, then wake
	q.Tail.Wake(1)
	if err := <-done; err != nil { // wait for it before the region closes
		fmt.Println(err)
	}
	// Output: tail 1 data 42
}
