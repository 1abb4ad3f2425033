package shm

import (
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/file"
	"github.com/shmgo/shm/backend/posix"
)

func viewRegion(t *testing.T, size int) *Region {
	t.Helper()
	key := fmt.Sprintf("/t-view-%d-%s-%s", os.Getpid(), runID, strings.ReplaceAll(t.Name(), "/", "-"))
	r, err := Create(key, size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Unlink(); r.Close() })
	return r
}

type counters struct {
	A, B   uint64
	Flags  [4]uint32
	Inner  struct{ X, Y int32 }
	Signal Futex
}

func TestView(t *testing.T) {
	r := viewRegion(t, 4096)
	c, err := View[counters](r, 64)
	if err != nil {
		t.Fatal(err)
	}
	c.A, c.Inner.Y = 7, -3
	if got := *(*uint64)(unsafe.Pointer(&r.Bytes()[64])); got != 7 {
		t.Fatalf("the view does not alias the data: %d", got)
	}
	c2, err := View[counters](r, 64)
	if err != nil || c2 != c {
		t.Fatalf("a second view: %p, %v; want %p", c2, err, c)
	}
	s, err := Slice[uint32](r, 128, 10)
	if err != nil || len(s) != 10 || cap(s) != 10 {
		t.Fatalf("Slice: %d/%d, %v", len(s), cap(s), err)
	}
	s[9] = 42
	if got := *(*uint32)(unsafe.Pointer(&r.Bytes()[128+36])); got != 42 {
		t.Fatalf("the slice does not alias the data: %d", got)
	}
	for _, off := range []int{0, 4096} {
		if s, err := Slice[uint64](r, off, 0); err != nil || s == nil || len(s) != 0 {
			t.Fatalf("Slice(n=0) at %d: %v, %v; want an empty slice", off, s, err)
		}
	}
	whole, err := Slice[byte](r, 0, 4096)
	if err != nil || len(whole) != 4096 {
		t.Fatalf("Slice of all the data: %d, %v", len(whole), err)
	}
}

func TestViewBadInputs(t *testing.T) {
	r := viewRegion(t, 4096)
	type withString struct {
		N int
		S string
	}
	type withSlice struct{ B []byte }
	type withIface struct{ E error }
	type deep struct {
		A [2]struct{ P *int }
	}
	cases := []struct {
		name string
		f    func() error
		msg  string
	}{
		{"string field", func() error { _, err := View[withString](r, 0); return err }, "holds a string (S)"},
		{"slice field", func() error { _, err := View[withSlice](r, 0); return err }, "holds a slice (B)"},
		{"interface field", func() error { _, err := View[withIface](r, 0); return err }, "holds a interface (E)"},
		{"pointer deep inside", func() error { _, err := View[deep](r, 0); return err }, "holds a ptr (A[0].P)"},
		{"pointer", func() error { _, err := View[*int](r, 0); return err }, "holds a ptr"},
		{"map", func() error { _, err := Slice[map[int]int](r, 0, 1); return err }, "holds a map"},
		{"unsafe.Pointer", func() error { _, err := View[unsafe.Pointer](r, 0); return err }, "holds a unsafe.Pointer"},
		{"zero-size type", func() error { _, err := View[struct{}](r, 0); return err }, "has size 0"},
		{"misaligned", func() error { _, err := View[uint32](r, 2); return err }, "not a multiple of uint32's alignment, 4"},
		// Go aligns uint64 to 4 bytes on 32-bit architectures, to 8 elsewhere.
		{"misaligned uint64", func() error { _, err := View[uint64](r, int(unsafe.Alignof(uint64(0)))/2); return err },
			fmt.Sprintf("not a multiple of uint64's alignment, %d", unsafe.Alignof(uint64(0)))},
		{"negative offset", func() error { _, err := View[uint32](r, -4); return err }, "outside"},
		{"offset beyond", func() error { _, err := View[byte](r, 4097); return err }, "outside"},
		{"one byte too long", func() error { _, err := View[[4097]byte](r, 0); return err }, "do not fit"},
		{"at the end", func() error { _, err := View[uint32](r, 4096); return err }, "do not fit"},
		{"slice too long", func() error { _, err := Slice[uint64](r, 8, 512); return err }, "do not fit"},
		{"huge n", func() error { _, err := Slice[uint64](r, 0, math.MaxInt); return err }, "do not fit"},
		{"negative n", func() error { _, err := Slice[uint64](r, 0, -1); return err }, "negative length"},
	}
	for _, c := range cases {
		err := c.f()
		if !errors.Is(err, ErrInvalidView) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v, want ErrInvalidView saying %q", c.name, err, c.msg)
		}
	}
	r.Unlink()
	r.Close()
	if _, err := View[uint64](r, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("View after Close: %v, want ErrClosed", err)
	}
}

// An option given to a call it means nothing to is an error, not ignored.
func TestOptionsApply(t *testing.T) {
	r := viewRegion(t, 64)
	key := r.Key()
	for _, c := range []struct {
		name string
		err  error
	}{
		{"Remove WithInit", Remove(key, WithInit(func([]byte) error { return nil }))},
		{"Stat WithMode", func() error { _, err := Stat(key, WithMode(0o644)); return err }()},
		{"Open WithMode", func() error { _, err := Open(key, 0, WithMode(0o644)); return err }()},
		{"Open WithMaxUsers", func() error { _, err := Open(key, 0, WithMaxUsers(3)); return err }()},
		{"Open WithReplaceStale", func() error { _, err := Open(key, 0, WithReplaceStale()); return err }()},
		{"Create WithReadOnly", func() error { _, err := Create(key+"-x", 64, WithReadOnly()); return err }()},
		{"Create WithTrustedUIDs", func() error { _, err := Create(key+"-x", 64, WithTrustedUIDs(1)); return err }()},
	} {
		if !errors.Is(c.err, ErrInvalidOption) || !strings.Contains(c.err.Error(), "does not apply to") {
			t.Errorf("%s: %v, want ErrInvalidOption saying it does not apply", c.name, c.err)
		}
	}
	u, err := Open(key, 0, WithBackend(r.be), WithFaultGuard(), WithTrustedUIDs(1), WithAnyOwner())
	if err != nil {
		t.Fatalf("Open with options that apply: %v", err)
	}
	u.Close()
}

// Guard turns a fault on a truncated object's data into ErrCorrupt.
func TestGuard(t *testing.T) {
	r := viewRegion(t, 3*4096)
	if err := r.Guard(func(d []byte) { d[0] = 1 }); err != nil {
		t.Fatalf("Guard of a healthy region: %v", err)
	}
	f, err := r.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(4096); err != nil {
		t.Fatal(err)
	}
	err = r.Guard(func(d []byte) { d[len(d)-1] = 1 })
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Guard of a write past the truncated end: %v, want ErrCorrupt", err)
	}
}

// An Open that waits for a key on a backend that can tell (posix, file:
// backend.CreateWaiter) wakes when it is published, not at its next poll:
// with polling switched off, Open still returns. It logs the delay from
// Create's return to Open's.
func TestOpenWakesAtCreate(t *testing.T) {
	defer func(lo, hi, fast time.Duration) { minBackoff, maxBackoff, fastPoll = lo, hi, fast }(minBackoff, maxBackoff, fastPoll)
	minBackoff, maxBackoff, fastPoll = time.Hour, time.Hour, time.Hour
	for _, be := range []backend.Backend{posix.New(), file.New(t.TempDir())} {
		t.Run(be.Name(), func(t *testing.T) { testOpenWakes(t, be) })
	}
}

func testOpenWakes(t *testing.T, be backend.Backend) {
	var lat []time.Duration
	for i := range 30 {
		key := fmt.Sprintf("/t-view-%d-%s-wake-%d", os.Getpid(), runID, i)
		got := make(chan time.Time, 1)
		go func() {
			u, err := Open(key, 30*time.Second, WithBackend(be))
			at := time.Now()
			if err != nil {
				t.Error(err)
			} else {
				u.Close()
			}
			got <- at
		}()
		time.Sleep(time.Duration(5+i%20) * time.Millisecond) // the waiter is deep in its backoff
		r, err := Create(key, 64, WithBackend(be))
		created := time.Now()
		if err != nil {
			t.Fatal(err)
		}
		lat = append(lat, (<-got).Sub(created))
		r.Unlink()
		r.Close()
	}
	slices.Sort(lat)
	t.Logf("Open returned %v (p50), %v (p99) after Create", lat[len(lat)/2], lat[len(lat)-1])
}
