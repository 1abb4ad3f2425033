package shm

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// Many goroutines wait on one word with contexts that end at random times,
// while the word moves: leads pass from waiter to waiter, and in the end a
// single Store and Wake still wakes every waiter, and Close ends the rest.
func TestFutexGroupChurn(t *testing.T) {
	r, key := lockRegion(t, "futexchurn")
	u, err := Open(key, 0)
	if err != nil {
		t.Fatal(err)
	}
	f, _ := View[Futex](u, 8)
	const n = 24
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.Background(), context.CancelFunc(func() {})
				switch rand.N(3) {
				case 0:
					ctx, cancel = context.WithTimeout(context.Background(), rand.N(500*time.Microsecond))
				case 1:
					ctx, cancel = context.WithCancel(context.Background())
					time.AfterFunc(rand.N(500*time.Microsecond), cancel)
				}
				err := f.Wait(ctx, f.Load())
				cancel()
				if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, ErrTimeout) {
					t.Errorf("Wait: %v", err)
					return
				}
			}
		}()
	}
	for range 3000 {
		f.Add(1)
		f.Wake(1 << 30)
		if rand.N(8) == 0 {
			time.Sleep(rand.N(200 * time.Microsecond))
		}
	}
	close(stop)
	f.Add(1)
	f.Wake(1 << 30)
	wg.Wait()

	// Every waiter of a value wakes on one Store and Wake.
	v := f.Load()
	woke := make(chan error, n)
	for range n {
		go func() { woke <- f.Wait(context.Background(), v) }()
	}
	time.Sleep(20 * time.Millisecond)
	f.Store(v + 1)
	f.Wake(1)
	for range n {
		select {
		case err := <-woke:
			if err != nil {
				t.Fatalf("Wait: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a waiter did not wake")
		}
	}

	// Close ends waits of every kind with ErrClosed.
	for i := range n {
		go func() {
			ctx := context.Background()
			if i%2 == 1 {
				c, cancel := context.WithTimeout(ctx, time.Minute)
				defer cancel()
				ctx = c
			}
			woke <- f.Wait(ctx, v+1)
		}()
	}
	time.Sleep(20 * time.Millisecond)
	u.Close()
	for range n {
		select {
		case err := <-woke:
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("Wait across Close: %v, want ErrClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a waiter did not end on Close")
		}
	}
	_ = r
}

// A wait that watch registered and wait never blocks for leaves no trace:
// the next waiter leads, and a waiter behind it still wakes.
func TestWatchAbandon(t *testing.T) {
	r, _ := lockRegion(t, "abandon")
	f, _ := View[Futex](r, 8)
	wt := watch(&f.v, 0)
	if wt.g == nil || wt.g.leader != wt {
		t.Fatal("a lone waiter does not lead")
	}
	follower := make(chan error, 1)
	go func() { follower <- f.Wait(context.Background(), 0) }()
	time.Sleep(10 * time.Millisecond)
	wt.abandon()
	select {
	case err := <-follower:
		t.Fatalf("the follower ended without a Wake: %v", err)
	case <-time.After(10 * time.Millisecond):
	}
	f.Store(1)
	f.Wake(1)
	select {
	case err := <-follower:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the follower did not wake after abandon")
	}
	groups.mu.Lock()
	left := groups.m[&f.v]
	groups.mu.Unlock()
	if left != nil {
		t.Fatal("a group outlived its waiters")
	}
}

// The end of a leader's context ends its wait promptly, even when it comes
// just as the leader goes to sleep, and with more contexts in use at once
// than the registrations kept (ctxWatchMax): each leader on its own word.
func TestFutexWaitCtxPrompt(t *testing.T) {
	r, _ := lockRegion(t, "futexctx")
	words, err := Slice[Futex](r, 0, 2*ctxWatchMax)
	if err != nil {
		t.Fatal(err)
	}
	for round := range 200 {
		n := 1
		if round%10 == 0 {
			n = len(words) // more contexts than the registrations kept
		}
		ends := make(chan error, n)
		cancels := make([]context.CancelFunc, n)
		for i := range n {
			ctx, cancel := context.WithCancel(context.Background())
			cancels[i] = cancel
			go func() { ends <- words[i].Wait(ctx, 0) }()
		}
		if n > 1 || round%2 == 0 {
			time.Sleep(time.Duration(rand.N(300)) * time.Microsecond)
		}
		for _, cancel := range cancels {
			cancel()
		}
		for range n {
			select {
			case err := <-ends:
				if !errors.Is(err, context.Canceled) && err != nil {
					t.Fatalf("Wait: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("round %d: a Wait outlived its context", round)
			}
		}
	}
	groups.mu.Lock()
	kept := len(ctxWatches)
	groups.mu.Unlock()
	if kept > ctxWatchMax {
		t.Fatalf("%d context registrations kept, at most %d", kept, ctxWatchMax)
	}
}
