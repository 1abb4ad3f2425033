package shm

import (
	"strconv"
	"sync/atomic"

	"github.com/shmgo/shm/internal/sys"
)

// The user table. Each Region that locks holds one slot of its region's
// table from its first Lock to Close. The slot says who the user is
// and whether it lives, and the lock word names its holder by slot, so a
// holder can be judged the instant it holds the lock: nothing is written
// after the lock is taken, and nothing is cleared before it is released.
//
// Liveness is the kernel's word: the slot's Live field holds the thread ID
// of a guardian thread of the user's process, armed on that thread's robust
// futex list (sys.Arm), and the kernel replaces it by FutexOwnerDied when the
// process dies or execs, in any PID namespace. Only where the kernel refuses
// robust lists does a slot hold a by-PID tag (byPID), and then its PID,
// start time and PID namespace are judged as sys.Check judges (never across
// namespaces).

// errTooManyUsers is the reason an Open finds no free slot.
func errTooManyUsers(n uint32) error {
	return because("all "+strconv.Itoa(int(n))+" user slots are taken; the creator can allow more with WithMaxUsers", nil, ErrTooManyUsers)
}

// ensureSlot gives r a user slot if it has none: a Region takes one at its
// first lock, and keeps it until Close. The caller has entered (see
// enter), so Close waits for it.
func (r *Region) ensureSlot() error {
	r.claimMu.Lock()
	defer r.claimMu.Unlock()
	if r.me.Load() != 0 {
		return nil
	}
	var err error
	if ferr := guard(func() { err = r.claimSlot() }); ferr != nil {
		return ferr
	}
	return err
}

// claimSlot takes a free slot of r's table for r, arms it and records it in
// r. The caller has checked the header.
func (r *Region) claimSlot() error {
	me := sys.Self()
	n := uint32(len(r.slots))
	for i := uint32(0); i < n; i++ {
		s := &r.slots[i]
		lv := atomic.LoadUint32(&s.Live)
		switch {
		case lv == slotFree || lv&sys.FutexTIDMask == 0 && lv&sys.FutexOwnerDied != 0:
			// Free, or its user died and the kernel marked it.
		case byPID(lv):
			// A user judged by PID: reusable once it is proven dead.
			// Its tag is unique to it, so the compare-and-swap below
			// fails if another process reused the slot meanwhile.
			if sys.Check(slotIdentity(s)) != sys.Dead {
				continue
			}
		default:
			continue
		}
		// A slot that the lock names still stands for its dead holder,
		// for a waiter to take the lock over from: leave it.
		if atomic.LoadUint32(&r.hdr.Lock.Word)&lockOwner == i+1 ||
			!atomic.CompareAndSwapUint32(&s.Live, lv, slotClaiming) {
			continue
		}
		// Only the slot's user can make the lock name it, and it is dead,
		// so the lock cannot name it now unless it did before our swap
		// (a user that died holding, between the two looks); a waiter may
		// also be taking the lock over from it. Either way, give it back.
		// (A free slot needs no look at the hazards: a waiter that took
		// the lock over from a holder in it compares the word's
		// generation, which a new user's holding changes.)
		if atomic.LoadUint32(&r.hdr.Lock.Word)&lockOwner == i+1 || lv != slotFree && r.hazardOn(i+1) {
			atomic.CompareAndSwapUint32(&s.Live, slotClaiming, lv)
			continue
		}
		if lv&sys.FutexWaiters != 0 {
			sys.FutexWake(&s.Live, 1<<30) // sleepers on the dead user: look again
		}
		// The dead user's waits on the condition are over: uncount them.
		if n := atomic.SwapUint32(&s.Hazard, 0) >> 16; n != 0 {
			atomic.AddUint32(&r.hdr.Cond.Waiters, -n)
		}
		atomic.StoreUint32(&s.PID, uint32(me.PID))
		atomic.StoreUint64(&s.Start, me.Start)
		atomic.StoreUint32(&s.NS, uint32(me.NS))
		r.mine = i
		if armed, err := sys.Arm(&s.Live); err == nil {
			r.armed = armed
		} else {
			atomic.StoreUint32(&s.Live, newByPIDTag())
		}
		// Only now may the uncontended lock, in other goroutines, name
		// the slot: a holder's slot is never claiming (see judgeSlot).
		r.me.Store(i + 1)
		return nil
	}
	return errTooManyUsers(n)
}

// Slots of users that the kernel does not arm hold a tag between
// slotByPIDMin and slotClaiming: never a thread ID, and unique to the
// user, so that a slot reused by another process never looks the same.
const slotByPIDMin = 1 << 22

func byPID(lv uint32) bool { return lv >= slotByPIDMin && lv < slotClaiming }

var byPIDTags atomic.Uint32

// newByPIDTag returns a tag for a slot judged by PID.
func newByPIDTag() uint32 {
	n := uint32(sys.Self().PID)*2654435761 + byPIDTags.Add(1)*40503
	return slotByPIDMin + n%(slotClaiming-slotByPIDMin)
}

// slotIdentity reads the identity a slot records.
func slotIdentity(s *slot) sys.Identity {
	id := sys.Identity{PID: int(atomic.LoadUint32(&s.PID)), Start: atomic.LoadUint64(&s.Start), NS: uint64(atomic.LoadUint32(&s.NS))}
	if self := sys.Self().NS; uint32(self) == uint32(id.NS) {
		id.NS = self // the slot keeps the inode's low 32 bits
	}
	return id
}

// hazardOn tells whether some live user is taking the lock over from the
// holder in slot owner (slot+1).
func (r *Region) hazardOn(owner uint32) bool {
	for i := range r.slots {
		if atomic.LoadUint32(&r.slots[i].Hazard)&hazardMask == owner {
			return true
		}
	}
	return false
}

// releaseSlot gives r's slot back. The caller has released the lock. A
// fault on the slot (the object was truncated) does not stop it: the slot's
// entry leaves this process's robust list all the same, before the memory
// goes.
func (r *Region) releaseSlot() (tampered bool) {
	if r.me.Load() == 0 {
		return false
	}
	s := &r.slots[r.mine]
	guard(func() { setHazard(&s.Hazard, 0) })
	var old uint32
	if r.armed != (sys.Armed{}) {
		old, tampered = r.armed.Disarm(slotFree)
	} else {
		guard(func() { old = atomic.SwapUint32(&s.Live, slotFree) })
	}
	if old&sys.FutexWaiters != 0 {
		sys.FutexWake(&s.Live, 1<<30)
	}
	r.me.Store(0)
	return tampered
}

// hazardMask is the hazard part of a slot's Hazard field; the rest counts
// the slot's waiters on the condition.
const hazardMask = 1<<16 - 1

// setHazard sets the hazard part of *hz to owner.
func setHazard(hz *uint32, owner uint32) {
	for {
		cur := atomic.LoadUint32(hz)
		if atomic.CompareAndSwapUint32(hz, cur, cur&^hazardMask|owner) {
			return
		}
	}
}

// holderState is what a waiter knows of the lock's holder.
type holderState int

const (
	holderAlive holderState = iota // alive, or not judgeable from here: never taken over
	holderDead                     // certainly dead: the lock may be taken over
)

// judgeSlot judges the user in slot s, for a waiter whose lock word names
// s as the holder. A free or claiming slot that the lock names held the lock
// for a Region that left without releasing it (a Lock that raced with its
// Close), and a new user cannot hold the lock before its claim is complete:
// the holding is a dead one's.
//
// With deep false it reads the slot alone (no system call): the kernel's
// mark, or a free or claiming slot. With deep true it also checks the
// recorded process by PID (which a slot judged by PID needs, and which
// catches an armed process whose kernel walk a peer cut); waiters do that
// only after a probe sleep timed out.
func judgeSlot(s *slot, deep bool) holderState {
	lv := atomic.LoadUint32(&s.Live)
	if lv == slotFree || lv == slotClaiming || lv&sys.FutexTIDMask == 0 {
		return holderDead
	}
	if deep && slotLiveness(s) == sys.Dead {
		return holderDead
	}
	return holderAlive
}

// slotLiveness is what the lock makes of the user in slot s: Dead when its
// process certainly died (or its Region left without releasing a lock that
// names the slot), Alive when the kernel would have marked its death or its
// PID proves it alive, Unknown otherwise.
func slotLiveness(s *slot) sys.Liveness {
	lv := atomic.LoadUint32(&s.Live)
	switch {
	case lv == slotFree, lv == slotClaiming, lv&sys.FutexTIDMask == 0:
		return sys.Dead
	}
	c := sys.Check(slotIdentity(s))
	if c == sys.Dead || byPID(lv) {
		return c
	}
	return sys.Alive // armed: the kernel marks the slot when the process dies
}
