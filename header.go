package shm

import (
	"bytes"
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/shmgo/shm/internal/sys"
)

// Layout of a region: a header that package shm owns, then the data.
//
//	offset size
//	     0    8  magic "\x89SHMGO\r\n"
//	     8    4  layout version (1)
//	    12    4  header size (512): the data starts here, 64-byte aligned
//	    16    8  data size in bytes
//	    24    4  state: 0 while the owner initialises, 1 when ready (futex word)
//	    28    4  flags: 1 = robust lock (the word holds a thread ID)
//	    32    4  creator PID
//	    36    4  key length
//	    40    8  creator start time (clock ticks since boot)
//	    48    8  creator PID namespace (inode of /proc/PID/ns/pid)
//	    56    8  creation time (Unix nanoseconds)
//	    64  200  key, without the leading '/'
//	   384   64  the lock, on its own cache line:
//	              384  4  lock word: holder PID | waiters 1<<31 | owner died 1<<30
//	              392  8  holder: PID<<40 | start time (low 40 bits)
//	              400  8  holder PID namespace
//	              408 16  robust mode: links in the holder thread's robust list
//	   512        data
//
// Integers are in the machine's byte order: a region never leaves its host.
const (
	headerSize = 512
	version    = 1
	maxKeyLen  = 200

	stateInit  = 0
	stateReady = 1

	flagRobust = 1 // the lock uses the kernel's robust futex list
)

var magic = [8]byte{0x89, 'S', 'H', 'M', 'G', 'O', '\r', '\n'}

type header struct {
	Magic        [8]byte
	Version      uint32
	HeaderSize   uint32
	DataSize     uint64
	State        uint32
	Flags        uint32
	CreatorPID   uint32
	KeyLen       uint32
	CreatorStart uint64
	CreatorNS    uint64
	Created      int64
	Key          [maxKeyLen]byte
	_            [120]byte
	Lock         lockLine
	_            [64]byte
}

type lockLine struct {
	Word     uint32
	_        uint32
	Holder   uint64 // PID<<40 | start time & (1<<40-1)
	HolderNS uint64
	// Robust mode: the holder thread's robust-list links, in its address
	// space, laid out as glibc's pthread_mutex_t (__list.__prev and __next
	// 24 and 32 bytes after the word), so that they can share a list.
	RobustPrev uintptr
	RobustNext uintptr
	_          [24]byte
}

// Compile-time layout checks.
var (
	_ [headerSize - unsafe.Sizeof(header{})]byte
	_ [unsafe.Sizeof(header{}) - headerSize]byte
	_ [384 - unsafe.Offsetof(header{}.Lock)]byte
	_ [unsafe.Offsetof(header{}.Lock) - 384]byte
)

func headerOf(mem []byte) *header { return (*header)(unsafe.Pointer(&mem[0])) }

// holderRecord packs a process identity into the lock's holder field.
func holderRecord(id sys.Identity) uint64 {
	return uint64(id.PID)<<40 | id.Start&(1<<40-1)
}

// writeHeader fills a fresh (zeroed) header; the state stays stateInit.
func writeHeader(h *header, name string, dataSize int64, now time.Time) {
	me := sys.Self()
	h.Version = version
	h.HeaderSize = headerSize
	h.DataSize = uint64(dataSize)
	h.CreatorPID = uint32(me.PID)
	h.CreatorStart = me.Start
	h.CreatorNS = me.NS
	h.Created = now.UnixNano()
	h.KeyLen = uint32(copy(h.Key[:], name))
	// Last, in one atomic store: an opener that sees the magic sees every
	// field above (SysV objects are visible while this runs).
	atomic.StoreUint64(h.magicPtr(), magicWord)
}

// magicWord is the magic as one machine word.
var magicWord = *(*uint64)(unsafe.Pointer(&magic))

func (h *header) magicPtr() *uint64 { return (*uint64)(unsafe.Pointer(&h.Magic)) }

func (h *header) creator() sys.Identity {
	return sys.Identity{PID: int(h.CreatorPID), Start: h.CreatorStart, NS: h.CreatorNS}
}

func (h *header) ready() bool { return atomic.LoadUint32(&h.State) == stateReady }

// headerState is what an opener makes of an object's first bytes.
type headerState int

const (
	headerOK       headerState = iota
	headerBlank                // all zeros: maybe not yet written (SysV)
	headerNotReady             // valid, the owner is still initialising
	headerBad                  // not a region of ours, or damaged
)

// checkHeader validates the object mapped at mem for the key name. It never
// reads outside mem. The error, for headerBad, says what is wrong.
func checkHeader(mem []byte, name string) (headerState, error) {
	if len(mem) < headerSize {
		if len(mem) == 0 {
			return headerBlank, fmt.Errorf("object is empty")
		}
		return headerBad, fmt.Errorf("object is %d bytes, smaller than the %d-byte header", len(mem), headerSize)
	}
	return checkHeaderOf(headerOf(mem), len(mem), name)
}

// checkHeaderOf is checkHeader for the header h of an object of size bytes
// (at least headerSize): h may be the object's mapping or a copy of its
// first bytes.
func checkHeaderOf(h *header, size int, name string) (headerState, error) {
	if m := atomic.LoadUint64(h.magicPtr()); m != magicWord {
		if m == 0 {
			// Blank, or being written: the owner writes the magic last.
			return headerBlank, fmt.Errorf("no header (blank magic)")
		}
		return headerBad, fmt.Errorf("bad magic %q", h.Magic[:])
	}
	if h.Version != version {
		return headerBad, fmt.Errorf("layout version %d, this library reads %d", h.Version, version)
	}
	if h.HeaderSize != headerSize {
		return headerBad, fmt.Errorf("header size %d, want %d", h.HeaderSize, headerSize)
	}
	if h.KeyLen > maxKeyLen {
		return headerBad, fmt.Errorf("key length %d exceeds %d", h.KeyLen, maxKeyLen)
	}
	if k := h.Key[:h.KeyLen]; !bytes.Equal(k, []byte(name)) {
		return headerBad, fmt.Errorf("header names key %q, not %q", k, name)
	}
	if h.DataSize == 0 || h.DataSize > MaxSize {
		return headerBad, fmt.Errorf("header claims %d data bytes", h.DataSize)
	}
	if h.DataSize > uint64(size-headerSize) {
		return headerBad, fmt.Errorf("header claims %d data bytes, object holds %d", h.DataSize, size-headerSize)
	}
	if !h.ready() {
		return headerNotReady, fmt.Errorf("owner has not finished initialising")
	}
	return headerOK, nil
}
