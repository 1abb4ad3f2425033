// Package layout states the layout of a region, as package shm's header.go
// defines it, for the code that may not see package shm's unexported
// names: package conformance, which plants hand-made headers and forges
// lock holders, and the tests. header.go checks at compile time that its
// structs agree with these offsets and sizes.
//
// A region starts with a HeaderSize-byte header, then a table of user
// slots (SlotSize bytes each), then the data, 64-byte aligned, at
// DataOffset(slots). Integers are in the machine's byte order.
package layout

// The header.
const (
	Magic     = "\x89SHMGO\r\n" // at OffMagic; its first 4 bytes are written last
	Version   = 2               // at OffVersion
	MaxKeyLen = 200             // the key field's size

	OffMagic        = 0
	OffVersion      = 8
	OffHeaderSize   = 12 // uint32: where the data starts
	OffDataSize     = 16 // uint64
	OffState        = 24 // uint32 futex word: StateInit, then StateReady
	OffFlags        = 28 // uint32: none defined, 0
	OffCreatorPID   = 32 // uint32
	OffKeyLen       = 36 // uint32
	OffCreatorStart = 40 // uint64: clock ticks since boot
	OffCreatorNS    = 48 // uint64: inode of /proc/PID/ns/pid
	OffCreated      = 56 // int64: Unix nanoseconds
	OffKey          = 64 // MaxKeyLen bytes, without the leading '/'
	OffUsers        = 264
	OffLock         = 384 // uint32 lock word, on its own cache line
	OffCondSeq      = 448 // uint32 futex word, on its own cache line
	OffCondWaiters  = 452 // uint32

	HeaderSize = 512 // the header's fixed part, before the user table
)

// Values of the state word.
const (
	StateInit  = 0
	StateReady = 1
)

// The lock word: the holder's slot+1 in its low bits (0: free); the
// generation, hand-off and inconsistent bits above; LockWaiters when a
// waiter may sleep.
const (
	LockOwner   = 1<<13 - 1
	LockWaiters = 1 << 31
)

// A user slot, at HeaderSize + i*SlotSize for slot i (named i+1 in the lock
// word).
const (
	SlotSize = 32

	SlotLive   = 0  // uint32: the liveness word (a guardian's thread ID, 0 when free)
	SlotHazard = 4  // uint32
	SlotLink   = 8  // uint64: the kernel's robust-list link
	SlotStart  = 16 // uint64: the user process's start time
	SlotPID    = 24 // uint32: its PID in its own PID namespace
	SlotNS     = 28 // uint32: the inode of its PID namespace
)

// DataOffset is where the data of a region with users slots starts.
func DataOffset(users int) int {
	return (HeaderSize + users*SlotSize + 63) &^ 63
}
