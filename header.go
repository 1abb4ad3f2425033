package shm

import (
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/shmgo/shm/internal/layout"
	"github.com/shmgo/shm/internal/sys"
)

// Layout of a region: a header that package shm owns, the table of its
// users, then the data.
//
//	offset size
//	     0    8  magic "\x89SHMGO\r\n"; its first 4 bytes are written last
//	     8    4  layout version (2)
//	    12    4  header size: where the data starts (64-byte aligned)
//	    16    8  data size in bytes
//	    24    4  state: 0 while the owner initialises, 1 when ready (futex word)
//	    28    4  flags (none defined; 0)
//	    32    4  creator PID
//	    36    4  key length
//	    40    8  creator start time (clock ticks since boot)
//	    48    8  creator PID namespace (inode of /proc/PID/ns/pid)
//	    56    8  creation time (Unix nanoseconds)
//	    64  200  key, without the leading '/'
//	   264    4  number of user slots (the table at 512)
//	   384   64  the lock, on its own cache line:
//	              384  4  lock word: holder's slot+1 (bits 0-12, 0 = free),
//	                      generation (bits 13-28), hand-off 1<<29,
//	                      inconsistent 1<<30, waiters 1<<31
//	   448   64  the condition (Lock.Wait, Signal, Broadcast):
//	              448  4  sequence, advanced by every Signal and Broadcast (futex word)
//	              452  4  waiters: how many Lock.Waits may sleep
//	   512   32  user slot 0, then 1, ... (see slot)
//	  HSIZE       data
//
// Every field has a fixed size and lies at a multiple of its size, so 32-
// and 64-bit processes of one host see the same layout. Integers are in the
// machine's byte order: a region never leaves its host.
const (
	headerSize = 512 // the fixed part, before the user table
	version    = 2
	maxKeyLen  = 200

	stateInit  = 0
	stateReady = 1
)

var magic = [8]byte{0x89, 'S', 'H', 'M', 'G', 'O', '\r', '\n'}

type header struct {
	Magic        [8]byte
	Version      uint32
	HeaderSize   uint32 // where the data starts: headerSize + the user table, rounded up to 64
	DataSize     uint64
	State        uint32
	Flags        uint32
	CreatorPID   uint32
	KeyLen       uint32
	CreatorStart uint64
	CreatorNS    uint64
	Created      int64
	Key          [maxKeyLen]byte
	Users        uint32 // slots in the user table
	_            [116]byte
	Lock         lockLine
	Cond         condLine
}

type lockLine struct {
	Word uint32
	_    [60]byte
}

type condLine struct {
	Seq     uint32
	Waiters uint32
	_       [56]byte
}

// slot is one entry of the user table: one Region, in some process, that
// may take the lock. The lock word names its holder by slot, so that the
// holder can be judged from the instant it holds: the slot says whether its
// process lives before the process ever locks.
type slot struct {
	// Live is the slot's state: 0 free; slotClaiming while a process
	// takes it; the thread ID of one of the user process's guardian
	// threads (sys.Arm), which the kernel replaces by FutexOwnerDied
	// when the process dies; or a by-PID tag (byPID: unique to the
	// process, never a thread ID) for a process whose kernel would not
	// arm it, which is judged by PID, Start and NS instead. Whoever frees
	// a slot wakes sleepers on Live if sys.FutexWaiters is set (this
	// library's waiters sleep on the lock word, not on Live).
	Live uint32
	// Hazard holds, in its low 16 bits, the slot+1 whose dead holder this
	// user is taking the lock from, or 0: a slot named by a hazard is not
	// reused meanwhile. Its high 16 bits count the user's goroutines in
	// Lock.Wait, which a user that died leaves counted in the header's
	// waiters until its slot is reused.
	Hazard uint32
	// Link is the kernel's robust-list link of Live, an address in the user
	// process. Nothing but that process (and the kernel) reads it.
	Link  uint64
	Start uint64 // the user process's start time (clock ticks since boot)
	PID   uint32 // its PID, in its own PID namespace
	NS    uint32 // the inode of its PID namespace
}

const slotSize = 32

// Values of slot.Live besides a thread ID. Thread IDs stay below
// 1<<22 (PID_MAX_LIMIT), so these never name a thread.
const (
	slotFree     = 0
	slotClaiming = sys.FutexTIDMask // being taken: not yet anyone's
)

// Users of a region: how many slots a new region gets, and the most it may have.
const (
	// DefaultUsers is the number of Regions, in all processes together,
	// that may use a region's lock at once when its creator does not say
	// otherwise with WithMaxUsers.
	DefaultUsers = 256
	// MaxUsers is the largest number WithMaxUsers accepts: the lock word
	// names its holder's slot in 13 bits.
	MaxUsers = lockOwner
)

// Compile-time layout checks: the same sizes and offsets on every
// architecture.
var (
	_ [0]struct{} = [unsafe.Sizeof(header{}) - headerSize]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(header{}.Lock) - 384]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(header{}.Users) - 264]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(header{}.Cond) - 448]struct{}{}
	_ [0]struct{} = [unsafe.Sizeof(slot{}) - slotSize]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(slot{}.Link) - unsafe.Offsetof(slot{}.Live) - sys.RobustEntryOffset]struct{}{}
)

// Compile-time checks that internal/layout, which states this layout for
// package conformance and the tests, agrees: each length is 0 only when the
// two sides are equal (and negative is an error).
var (
	_ [0]struct{} = [headerSize - layout.HeaderSize]struct{}{}
	_ [0]struct{} = [version - layout.Version]struct{}{}
	_ [0]struct{} = [maxKeyLen - layout.MaxKeyLen]struct{}{}
	_ [0]struct{} = [len(magic) - len(layout.Magic)]struct{}{}
	_ [0]struct{} = [stateInit - layout.StateInit]struct{}{}
	_ [0]struct{} = [stateReady - layout.StateReady]struct{}{}
	_ [0]struct{} = [lockOwner - layout.LockOwner]struct{}{}
	_ [0]struct{} = [lockWaiters - layout.LockWaiters]struct{}{}
	_ [0]struct{} = [slotSize - layout.SlotSize]struct{}{}
	_ [0]struct{} = [unsafe.Sizeof(header{}.Key) - layout.MaxKeyLen]struct{}{}

	_ [0]struct{} = [unsafe.Offsetof(header{}.Magic) - layout.OffMagic]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(header{}.Version) - layout.OffVersion]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(header{}.HeaderSize) - layout.OffHeaderSize]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(header{}.DataSize) - layout.OffDataSize]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(header{}.State) - layout.OffState]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(header{}.Flags) - layout.OffFlags]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(header{}.CreatorPID) - layout.OffCreatorPID]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(header{}.KeyLen) - layout.OffKeyLen]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(header{}.CreatorStart) - layout.OffCreatorStart]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(header{}.CreatorNS) - layout.OffCreatorNS]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(header{}.Created) - layout.OffCreated]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(header{}.Key) - layout.OffKey]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(header{}.Users) - layout.OffUsers]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(header{}.Lock) + unsafe.Offsetof(lockLine{}.Word) - layout.OffLock]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(header{}.Cond) + unsafe.Offsetof(condLine{}.Seq) - layout.OffCondSeq]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(header{}.Cond) + unsafe.Offsetof(condLine{}.Waiters) - layout.OffCondWaiters]struct{}{}

	_ [0]struct{} = [unsafe.Offsetof(slot{}.Live) - layout.SlotLive]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(slot{}.Hazard) - layout.SlotHazard]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(slot{}.Link) - layout.SlotLink]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(slot{}.Start) - layout.SlotStart]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(slot{}.PID) - layout.SlotPID]struct{}{}
	_ [0]struct{} = [unsafe.Offsetof(slot{}.NS) - layout.SlotNS]struct{}{}
)

// dataOffset is where the data of a region with users slots starts.
func dataOffset(users int) int {
	return (headerSize + users*slotSize + 63) &^ 63
}

func headerOf(mem []byte) *header { return (*header)(unsafe.Pointer(&mem[0])) }

// headerCopy returns a copy of the header that b begins with, or nil when b
// is shorter than a header.
func headerCopy(b []byte) *header {
	if len(b) < headerSize {
		return nil
	}
	h := new(header)
	copy(h.bytes(), b)
	return h
}

// bytes is h's memory.
func (h *header) bytes() []byte { return unsafe.Slice((*byte)(unsafe.Pointer(h)), headerSize) }

// slotsOf returns the user table of the region mapped at mem, whose header
// h (a copy, or the mapping's own) has been checked.
func slotsOf(mem []byte, h *header) []slot {
	return unsafe.Slice((*slot)(unsafe.Pointer(&mem[headerSize])), h.Users)
}

// writeHeader fills a fresh (zeroed) header; the state stays stateInit.
func writeHeader(h *header, name string, dataSize int64, users int, now time.Time) {
	me := sys.Self()
	h.Version = version
	h.HeaderSize = uint32(dataOffset(users))
	h.DataSize = uint64(dataSize)
	h.Users = uint32(users)
	h.CreatorPID = uint32(me.PID)
	h.CreatorStart = me.Start
	h.CreatorNS = me.NS
	h.Created = now.UnixNano()
	h.KeyLen = uint32(copy(h.Key[:], name))
	copy(h.Magic[4:], magic[4:])
	// Last, in one 32-bit atomic store (atomic on every architecture): an
	// opener that sees the magic sees every field above (SysV objects are
	// visible while this runs).
	atomic.StoreUint32(h.magicPtr(), magicWord)
}

// magicWord is the first 4 bytes of the magic as one word.
var magicWord = *(*uint32)(unsafe.Pointer(&magic))

func (h *header) magicPtr() *uint32 { return (*uint32)(unsafe.Pointer(&h.Magic)) }

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
	return checkHeaderOf(headerOf(mem), int64(len(mem)), name)
}

// checkHeaderOf is checkHeader for the header h of an object of size bytes
// (at least headerSize): h may be the object's mapping or a copy of its
// first bytes.
func checkHeaderOf(h *header, size int64, name string) (headerState, error) {
	if m := atomic.LoadUint32(h.magicPtr()); m != magicWord {
		if m == 0 {
			// Blank, or being written: the owner writes the magic last.
			return headerBlank, fmt.Errorf("no header (blank magic)")
		}
		return headerBad, fmt.Errorf("bad magic %q", h.Magic[:])
	}
	if err := validFields(h, size); err != nil {
		return headerBad, err
	}
	if k := string(h.Key[:h.KeyLen]); k != name {
		return headerBad, fmt.Errorf("header names key %q, not %q", k, name)
	}
	if !h.ready() {
		return headerNotReady, fmt.Errorf("owner has not finished initialising")
	}
	return headerOK, nil
}

// validHeader checks the fields of a header whose magic is set, for an
// object of objSize bytes (0: unknown) under the key name ("": any key).
func validHeader(h *header, objSize int64, name string) error {
	if err := validFields(h, objSize); err != nil {
		return err
	}
	if key := string(h.Key[:h.KeyLen]); name != "" && key != name {
		return fmt.Errorf("header names key %q, not %q", key, name)
	}
	return nil
}

// validFields checks the fields of a header whose magic is right, for an
// object of size bytes (0: unknown).
func validFields(h *header, size int64) error {
	switch {
	case h.Magic != magic:
		return fmt.Errorf("bad magic %q", h.Magic[:])
	case h.Version != version:
		return fmt.Errorf("layout version %d, this library reads %d", h.Version, version)
	case h.Users == 0 || h.Users > MaxUsers:
		return fmt.Errorf("header claims %d user slots", h.Users)
	case h.HeaderSize != uint32(dataOffset(int(h.Users))):
		return fmt.Errorf("header size %d, want %d for %d user slots", h.HeaderSize, dataOffset(int(h.Users)), h.Users)
	case h.KeyLen > maxKeyLen:
		return fmt.Errorf("key length %d exceeds %d", h.KeyLen, maxKeyLen)
	case h.KeyLen == 0:
		return fmt.Errorf("key length 0")
	case !validName(string(h.Key[:h.KeyLen])):
		return fmt.Errorf("header holds an invalid key %q", h.Key[:h.KeyLen])
	case h.DataSize == 0 || h.DataSize > MaxSize:
		return fmt.Errorf("header claims %d data bytes", h.DataSize)
	case size > 0 && h.DataSize > uint64(size)-uint64(min(size, int64(h.HeaderSize))):
		return fmt.Errorf("header claims %d data bytes, object holds %d after its %d-byte header", h.DataSize, size-min(size, int64(h.HeaderSize)), h.HeaderSize)
	}
	return nil
}
