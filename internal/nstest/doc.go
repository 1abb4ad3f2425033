// Package nstest holds no code, only tests: it runs real processes in new
// Linux mount and PID namespaces to prove what package shm promises to
// containers. The tests need root (CAP_SYS_ADMIN, to create namespaces and
// mount); some also need util-linux's unshare(1). They skip, saying why,
// when either is missing; CI has both and runs them all.
//
// # Containers without /dev/shm
//
// In a new mount namespace the tests hide /dev/shm (an empty read-only
// tmpfs over it), or remove it altogether (a fresh /dev without it), and
// run cmd/shmdemo there: with no configuration its application and
// controller agree on the memfd backend and share the record log and the
// lock. Two such namespaces that share only a directory share a region
// through the file backend ("file:/dir/name" or SHM_BACKEND=file:/dir),
// lock included. A 1 MiB tmpfs as /dev/shm makes a 4 MiB Create fall back
// to memfd, while an explicit POSIX Create fails with ENOSPC, not SIGBUS,
// and leaves nothing behind.
//
// # PID namespaces
//
// A lock holder records its PID, start time and PID namespace. A waiter
// judges a holder's PID only when the holder recorded the waiter's own PID
// namespace and /proc shows that namespace; any other holder is "unknown",
// and an unknown holder is never taken over. So, across PID namespaces:
//
//   - The lock excludes as everywhere: a live holder in another namespace
//     is never taken over, even when its PID means another process (or no
//     process) in the waiter's namespace, and two namespaces' PID 1s can
//     share a lock.
//   - A holder that dies is recovered (the next Lock returns ErrOwnerDead)
//     only by a waiter in the holder's own PID namespace, with /proc
//     mounted for that namespace. A waiter in another namespace, parent or
//     child, keeps waiting until its timeout or context ends: use
//     LockContext with a deadline there. When a whole container's PID
//     namespace dies holding a default lock, no process outside it can
//     recover the lock; the region must be recreated.
//   - A region created WithRobustLock is recovered from any namespace: the
//     kernel marks the dead holder's lock itself, and the next Lock, here
//     or in another container, returns ErrOwnerDead. Its lock word holds a
//     thread ID, which is per namespace too: two containers' PID 1s lock
//     from the same thread ID 1, so a waiter must not leave its entry
//     pending with the kernel while it sleeps (see robust_test.go).
package nstest
