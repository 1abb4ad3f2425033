package shm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"runtime/debug"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/internal/layout"
)

// fuzzName is the key name the seeds are made for.
const fuzzName = "t-rel-fuzz"

// fuzzOff is where the data of the seeds starts: a header with one user
// slot.
var fuzzOff = layout.DataOffset(1)

// fuzzHeader lays out a header by hand, as internal/layout states it,
// independently of the header struct: one user slot, and the data after it
// up to total bytes.
func fuzzHeader(total int, edit func(b []byte)) []byte {
	b := make([]byte, max(total, fuzzOff))
	ne := binary.NativeEndian
	copy(b[layout.OffMagic:], layout.Magic)
	ne.PutUint32(b[layout.OffVersion:], layout.Version)
	ne.PutUint32(b[layout.OffHeaderSize:], uint32(fuzzOff))
	ne.PutUint64(b[layout.OffDataSize:], uint64(max(total-fuzzOff, 1)))
	ne.PutUint32(b[layout.OffUsers:], 1)
	ne.PutUint32(b[layout.OffState:], layout.StateReady)
	ne.PutUint32(b[layout.OffCreatorPID:], uint32(os.Getpid()))
	ne.PutUint32(b[layout.OffKeyLen:], uint32(len(fuzzName)))
	ne.PutUint64(b[layout.OffCreatorStart:], 1234)
	ne.PutUint64(b[layout.OffCreatorNS:], 5678)
	ne.PutUint64(b[layout.OffCreated:], uint64(time.Now().UnixNano()))
	copy(b[layout.OffKey:], fuzzName)
	if edit != nil {
		edit(b)
	}
	return b[:total]
}

func put32(off int, v uint32) func([]byte) {
	return func(b []byte) { binary.NativeEndian.PutUint32(b[off:], v) }
}

func put64(off int, v uint64) func([]byte) {
	return func(b []byte) { binary.NativeEndian.PutUint64(b[off:], v) }
}

// refCheck is what checkHeader must answer, computed from the layout
// internal/layout states, with bounds-checked reads.
func refCheck(mem []byte, name string) headerState {
	if len(mem) == 0 {
		return headerBlank
	}
	if len(mem) < headerSize {
		return headerBad
	}
	ne := binary.NativeEndian
	if string(mem[:4]) != layout.Magic[:4] {
		// The creator writes the magic's first 4 bytes last: without
		// them, the header may still be being written (SysV objects are
		// visible meanwhile), whatever the other fields hold.
		if bytes.Equal(mem[:4], make([]byte, 4)) {
			return headerBlank
		}
		return headerBad
	}
	keyLen := ne.Uint32(mem[layout.OffKeyLen:])
	dataSize := ne.Uint64(mem[layout.OffDataSize:])
	users := ne.Uint32(mem[layout.OffUsers:])
	hsize := ne.Uint32(mem[layout.OffHeaderSize:])
	switch {
	case string(mem[:8]) != layout.Magic,
		ne.Uint32(mem[layout.OffVersion:]) != layout.Version,
		users == 0, users > MaxUsers,
		int(hsize) != layout.DataOffset(int(users)),
		keyLen > layout.MaxKeyLen, keyLen == 0,
		!validName(string(mem[layout.OffKey : layout.OffKey+keyLen])),
		string(mem[layout.OffKey:layout.OffKey+keyLen]) != name,
		dataSize == 0, dataSize > MaxSize, uint64(hsize) > uint64(len(mem)), dataSize > uint64(len(mem))-uint64(hsize):
		return headerBad
	}
	if ne.Uint32(mem[layout.OffState:]) != layout.StateReady {
		return headerNotReady
	}
	return headerOK
}

// guarded returns a copy of data that ends where an inaccessible page
// begins, so that reading a byte beyond it faults, and a function to
// release it.
func guarded(t *testing.T, data []byte) ([]byte, func()) {
	ps := os.Getpagesize()
	pages := (len(data) + ps - 1) / ps
	m, err := unix.Mmap(-1, 0, (pages+1)*ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mprotect(m[pages*ps:], unix.PROT_NONE); err != nil {
		t.Fatal(err)
	}
	end := pages * ps
	mem := m[end-len(data) : end : end]
	copy(mem, data)
	return mem, func() { unix.Munmap(m) }
}

// checkGuarded runs checkHeader, turning a fault (a read outside mem) or a
// panic into a test failure.
func checkGuarded(t *testing.T, mem []byte, name, where string) (st headerState, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			t.Fatalf("checkHeader(%d bytes %s, %q) panicked (read outside mem?): %v", len(mem), where, name, p)
		}
	}()
	return checkHeader(mem, name)
}

var guardSink byte

// TestGuardedFaults checks the harness of FuzzCheckHeader: a read one byte
// beyond a guarded slice faults and is caught.
func TestGuardedFaults(t *testing.T) {
	mem, release := guarded(t, make([]byte, 777))
	defer release()
	faulted := func() (caught bool) {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() { caught = recover() != nil }()
		guardSink = *(*byte)(unsafe.Add(unsafe.Pointer(&mem[0]), len(mem)))
		return false
	}()
	if !faulted {
		t.Fatal("reading one byte beyond a guarded slice did not fault")
	}
	if st, _ := checkGuarded(t, mem, fuzzName, "zeros"); st != headerBlank {
		t.Fatalf("777 zero bytes: %s, want Blank", stateNames[st])
	}
}

var stateNames = map[headerState]string{headerOK: "OK", headerBlank: "Blank", headerNotReady: "NotReady", headerBad: "Bad"}

// FuzzCheckHeader checks that checkHeader never panics, never reads outside
// the slice it is given (the slice ends at an inaccessible page), accepts
// only a consistent, ready header for the key, and classifies everything
// else as the documented layout says.
//
// testdata/fuzz/FuzzCheckHeader/partially-written-header is a header with
// every field but the magic written, as an opener of a SysV object (visible
// from its creation) can see it while the creator runs writeHeader: it must
// be blank, so that the opener waits, not corrupt.
func FuzzCheckHeader(f *testing.F) {
	seeds := [][]byte{
		fuzzHeader(fuzzOff+64, nil),              // valid
		fuzzHeader(fuzzOff+1, nil),               // valid, 1 data byte
		fuzzHeader(fuzzOff+4093, nil),            // valid, odd length
		fuzzHeader(fuzzOff+64, nil)[:fuzzOff+63], // truncated by one byte
		fuzzHeader(fuzzOff+64, nil)[:fuzzOff],    // only the header
		fuzzHeader(fuzzOff+64, nil)[:fuzzOff-1],  // shorter than the header
		fuzzHeader(fuzzOff+64, nil)[:100],        // much shorter
		fuzzHeader(fuzzOff+64, nil)[:1],          // one byte
		{},                                       // empty
		make([]byte, fuzzOff+64),                 // zeros
		make([]byte, 100),                        // short zeros
		fuzzHeader(fuzzOff+64, func(b []byte) { copy(b, "GEOPMSHM") }),
		fuzzHeader(fuzzOff+64, put32(layout.OffVersion, 1)),                      // version 1
		fuzzHeader(fuzzOff+64, put32(layout.OffUsers, 0)),                        // no user slots
		fuzzHeader(fuzzOff+64, put32(layout.OffUsers, 2)),                        // slots without room
		fuzzHeader(fuzzOff+64, put32(layout.OffUsers, MaxUsers+1)),               // too many slots
		fuzzHeader(fuzzOff+64, put32(layout.OffVersion, 0)),                      // version 0
		fuzzHeader(fuzzOff+64, put32(layout.OffHeaderSize, 256)),                 // header size
		fuzzHeader(fuzzOff+64, put64(layout.OffDataSize, 0)),                     // data size 0
		fuzzHeader(fuzzOff+64, put64(layout.OffDataSize, 65)),                    // data beyond the end
		fuzzHeader(fuzzOff+64, put64(layout.OffDataSize, MaxSize+1)),             // beyond MaxSize
		fuzzHeader(fuzzOff+64, put64(layout.OffDataSize, 1<<63)),                 // huge
		fuzzHeader(fuzzOff+64, put32(layout.OffState, 0)),                        // initialising
		fuzzHeader(fuzzOff+64, put32(layout.OffState, 7)),                        // unknown state
		fuzzHeader(fuzzOff+64, put32(layout.OffKeyLen, layout.MaxKeyLen+1)),      // key length
		fuzzHeader(fuzzOff+64, put32(layout.OffKeyLen, 1<<32-1)),                 // key length
		fuzzHeader(fuzzOff+64, put32(layout.OffKeyLen, uint32(len(fuzzName)-1))), // key prefix
		fuzzHeader(fuzzOff+64, func(b []byte) { b[layout.OffKey] = 'T' }),        // other key
		fuzzHeader(fuzzOff+64, func(b []byte) { copy(b[4:8], make([]byte, 4)) }), // half a magic
		fuzzHeader(fuzzOff+64, func(b []byte) { copy(b, make([]byte, 16)) }),     // no magic, version or header size
	}
	for _, s := range seeds {
		f.Add(s, fuzzName)
	}
	f.Add(fuzzHeader(fuzzOff+64, nil), "")
	f.Add(fuzzHeader(fuzzOff+64, nil), fuzzName+"x")
	f.Add(fuzzHeader(fuzzOff+64, put32(layout.OffKeyLen, 0)), "")

	f.Fuzz(func(t *testing.T, data []byte, name string) {
		want := refCheck(data, name)

		// At the end of a page, followed by an inaccessible one.
		mem, release := guarded(t, data)
		defer release()
		st, err := checkGuarded(t, mem, name, "before a guard page")

		// Page-aligned, as objects are mapped, followed by junk that
		// must not change the answer.
		buf := bytes.Repeat([]byte{0xA5}, len(data)+4096)
		copy(buf, data)
		st2, err2 := checkGuarded(t, buf[:len(data):len(data)], name, "aligned")

		desc := fmt.Sprintf("checkHeader(%d bytes, %q)", len(data), name)
		if st != want || st2 != want {
			t.Fatalf("%s = %s (guarded) / %s (aligned), want %s; errors %v / %v", desc, stateNames[st], stateNames[st2], stateNames[want], err, err2)
		}
		if (st == headerOK) != (err == nil) || (st2 == headerOK) != (err2 == nil) {
			t.Fatalf("%s = %s with error %v / %v: an error must come with every state but OK", desc, stateNames[st], err, err2)
		}
		if !bytes.Equal(mem, data) {
			t.Fatalf("%s wrote to the object", desc)
		}
	})
}
