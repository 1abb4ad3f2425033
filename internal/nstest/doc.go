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
// A lock holder is named in the lock word by its slot in the region's user
// table, and the slot's liveness word is marked by the kernel when the
// holder's process dies, in any PID namespace (package shm's lock doc). So,
// across PID namespaces:
//
//   - The lock excludes as everywhere: a live holder in another namespace
//     is never taken over, even when its PID means another process (or no
//     process) in the waiter's namespace, and two namespaces' PID 1s share
//     a lock.
//   - A holder that dies is recovered by a waiter in any namespace, parent
//     or child: the next Lock returns ErrOwnerDead.
//   - A waiter that got the dead holder's PID (PIDs wrap) recovers the lock
//     too, and so does a waiter of another uid to which /proc hides the
//     holder (hidepid), which never takes a live holder's lock over.
//   - Where the kernel refuses robust lists (envNoRobust in these tests),
//     slots are judged by PID, start time and PID namespace: a holder in
//     another namespace is then never judged, and a waiter there waits
//     until its context ends.
//
// The tests choose PIDs with ns_last_pid from a single-threaded sh
// (withpid_test.go: a Go process creates threads and processes of its own
// at moments it chooses, which take the PID first).
package nstest
