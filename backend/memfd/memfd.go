// Package memfd is the memfd backend: regions are anonymous memory files
// (memfd_create(2)) that no filesystem names, found by key through an
// abstract unix socket served by the process that created them.
//
// # When to pick it
//
// Pick memfd when there is no usable /dev/shm (containers that mount none,
// or Docker's 64 MB one), when the memory must be sealed so that no peer can
// shrink it under the others (a peer of a POSIX or file region can truncate
// it and kill every other user with SIGBUS), or when no name may appear in
// any filesystem. Pick posix when the owner cannot stay alive for as long as
// users must be able to attach, or when C programs must find the region by
// name with shm_open.
//
// # How it works
//
// Create makes the file with memfd_create(MFD_CLOEXEC|MFD_ALLOW_SEALING),
// sets its mode with fchmod (exact, whatever the umask), reserves its pages
// with fallocate (a full memory cgroup fails at Create, never with SIGBUS
// later), maps it shared and seals it with F_SEAL_SHRINK|F_SEAL_GROW|
// F_SEAL_SEAL: from then on nobody can change its size. Create also binds
// the key's abstract unix socket, "\x00shmgo/memfd/" followed by the key's
// name (or by '#' and the SHA-256 of the name, in hex, when the name is too
// long for a socket address or holds control bytes), so a second Create of
// the key fails at once with an error matching fs.ErrExist. Publish starts
// listening: from then on Open connects, and the owner's serving goroutine
// sends the file descriptor with SCM_RIGHTS.
//
// The socket name holds no uid: keys form one namespace per network
// namespace, as POSIX keys do per /dev/shm, so that a 0666 region is found
// by users of any uid.
//
// # Security
//
// Abstract socket names have no permissions: anyone can bind a name first.
// Both sides therefore check the other's credentials (SO_PEERCRED, which
// the kernel fills in and no peer can forge):
//
//   - The owner applies the region's mode to the connecting process as
//     open(2) would apply it to a file: the owner bits when its uid owns the
//     region, else the group bits when its gid or one of its supplementary
//     groups is the region's group, else the other bits; read and write are
//     both needed; uid 0 may always. It reads the owner, group and mode from
//     the file each time, so Chown takes effect at once. A refused process
//     gets an explicit refusal, and Open fails with an error matching
//     fs.ErrPermission (not fs.ErrNotExist).
//   - The user accepts a descriptor only from a process running as its own
//     effective uid or as root, and from other uids only when told with
//     WithTrustedUIDs or WithAnyServer. A squatter of another uid that binds
//     the key first thus cannot feed it memory: Open fails with an error
//     matching fs.ErrPermission. (The uid that owns the received file is not
//     what is checked: the server chooses which descriptor to send, while the
//     kernel vouches for its credentials.) The user also checks that the
//     file is sealed against shrinking and growing, so that no peer can
//     truncate it under the user.
//   - Neither side can be held by the other. The owner reads each peer's
//     credentials as soon as it accepts the connection and answers with
//     system calls that never wait; a connection whose request is not
//     there yet is set aside until it comes, for at most 250 ms (or the
//     I/O timeout), and each uid may have only a few such connections (8,
//     and 128 in all): the others are closed at once. So a thousand idle
//     connections from another uid cost the owner a few descriptors, and
//     every user is still served. A user bounds its wait for the owner by
//     its context (OpenContext) or by the I/O timeout (WithIOTimeout,
//     default DefaultIOTimeout); past its first 2 ms, it waits in the Go
//     runtime's poller, so that an owner that is stopped or hostile costs
//     it no thread and nothing beyond its deadline.
//
// Removing a key (Unlink) is allowed, as in /dev/shm whose sticky bit
// applies, to the uid that owns the region, to the uid of the owner process
// and to root.
//
// # Limits and cleanup
//
// Abstract sockets are per network namespace: a process in another one
// (a container with its own network) cannot attach by key, although a
// descriptor handed to it (shm.Region.File, shm.SendRegion) works anywhere.
// The owner process must stay alive for new users to attach: when the owner
// Closes its mapping or exits, the key disappears (new Opens fail with
// fs.ErrNotExist) while the users already attached keep their mappings and
// the data, until the last one unmaps it and the kernel frees the memory.
// So there is nothing to clean up after a crash: no file, no socket, no
// segment outlives the processes that use it.
//
// The sockets of all the keys a process serves are in one epoll set that a
// single goroutine waits on (in epoll_wait, so one thread, while any key is
// served): a published key costs its owner two descriptors (the memfd and
// the socket) but no thread and no goroutine of its own. (Raise
// RLIMIT_NOFILE for tens of thousands of keys.)
//
// Create refuses, with an error matching ENOMEM, a region that does not fit
// in the memory available (MemAvailable and free swap) or in the memory
// cgroup of the process (v2 memory.max, v1 memory.limit_in_bytes, less what
// is used), and reserves big regions in chunks, checking again before each:
// reserving memory that is not there would get a process killed by the OOM
// killer rather than give an error.
//
// Unlink in the owner process stops serving; in a user process it asks the
// owner to stop. The owner's Close stops serving too. In each case the
// region lives on for the processes that have it mapped.
//
// List parses /proc/net/unix for the sockets of this backend and asks the
// owners, all at once, for their regions' size, mode and owner, each with a
// short deadline; ListContext also reports the sockets that do not answer.
package memfd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
)

// addrPrefix starts the abstract socket name of every memfd key (after the
// leading NUL, shown as '@' by ss(8) and /proc/net/unix).
const addrPrefix = "shmgo/memfd/"

// DefaultIOTimeout bounds the wait for an owner's answer where no context
// does: Open, OpenID, Unlink.
const DefaultIOTimeout = time.Second

// maxAddr is the longest abstract socket name, without its leading NUL.
const maxAddr = 107

// Backend is the memfd backend. The zero value is not usable; call New.
type Backend struct {
	timeout  time.Duration
	trusted  map[uint32]bool
	trustAll bool
}

// Option configures a Backend.
type Option func(*Backend)

// WithTrustedUIDs makes Open accept regions served by processes running as
// one of uids, besides the caller's own effective uid and root. Use it to
// attach to a region that a process of another user owns.
func WithTrustedUIDs(uids ...int) Option {
	return func(b *Backend) {
		for _, u := range uids {
			b.trusted[uint32(u)] = true
		}
	}
}

// WithAnyServer makes Open accept regions served by a process of any uid.
// Any local user can then squat a key before its owner and serve its own
// memory under it, as any user can create a file in /dev/shm first: use it
// only when the data read from the region is not trusted anyway.
func WithAnyServer() Option {
	return func(b *Backend) { b.trustAll = true }
}

// WithIOTimeout bounds the wait for an owner's answer in Open, OpenID and
// Unlink (default DefaultIOTimeout); OpenContext waits until its context
// is done instead. It also bounds how long an owner waits for the request
// of a connection that sends none at once (at most 250 ms), and a
// listing's wait for each owner (at most 250 ms).
func WithIOTimeout(d time.Duration) Option {
	return func(b *Backend) {
		if d > 0 {
			b.timeout = d
		}
	}
}

// New returns a memfd backend.
func New(opts ...Option) *Backend {
	b := &Backend{timeout: DefaultIOTimeout, trusted: map[uint32]bool{}}
	for _, o := range opts {
		if o != nil {
			o(b)
		}
	}
	return b
}

// Name returns "memfd".
func (b *Backend) Name() string { return "memfd" }

// trusts tells whether a server running as uid may hand us memory: by the
// caller's policy when ctx carries one (backend.WithTrust), and by the
// backend's own (its uid, root, WithTrustedUIDs, WithAnyServer).
func (b *Backend) trusts(ctx context.Context, uid uint32) bool {
	if b.trustAll || uid == 0 || uid == uint32(os.Geteuid()) || b.trusted[uid] {
		return true
	}
	t, ok := backend.Trusts(ctx)
	return ok && t(int(uid))
}

// keyAddr returns the abstract unix socket name that serves the key name,
// without its leading NUL byte.
func keyAddr(name string) string {
	if len(addrPrefix)+len(name) <= maxAddr && !strings.HasPrefix(name, "#") && printable(name) {
		return addrPrefix + name
	}
	sum := sha256.Sum256([]byte(name))
	return addrPrefix + "#" + hex.EncodeToString(sum[:])
}

// printable reports whether name can appear as is in /proc/net/unix, one
// socket a line.
func printable(name string) bool {
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// sockaddr is the address of the abstract name addr.
func sockaddr(addr string) *unix.SockaddrUnix { return &unix.SockaddrUnix{Name: "@" + addr} }

// Create implements backend.Backend.
func (b *Backend) Create(name string, size int64, perm fs.FileMode) (backend.Pending, error) {
	addr := keyAddr(name)
	path := "@" + addr
	lfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "socket", Path: path, Err: err}
	}
	if err := unix.Bind(lfd, sockaddr(addr)); err != nil {
		unix.Close(lfd)
		if err == unix.EADDRINUSE {
			err = unix.EEXIST
		}
		return nil, &fs.PathError{Op: "bind", Path: path, Err: err}
	}
	fd, err := unix.MemfdCreate(memfdName(name), unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		unix.Close(lfd)
		return nil, &fs.PathError{Op: "memfd_create", Path: path, Err: err}
	}
	fail := func(op string, err error) (backend.Pending, error) {
		unix.Close(fd)
		unix.Close(lfd)
		return nil, &fs.PathError{Op: op, Path: path, Err: err}
	}
	if size < 1 || int64(int(size)) != size {
		return fail("create", unix.EINVAL)
	}
	if err := unix.Fchmod(fd, uint32(perm.Perm())); err != nil {
		return fail("fchmod", err)
	}
	if err := reserve(fd, size); err != nil {
		if _, ok := err.(*roomError); ok {
			return fail("reserve", err)
		}
		return fail("fallocate", err)
	}
	mem, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail("mmap", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		unix.Munmap(mem)
		return fail("seal", err)
	}
	return &segment{b: b, name: name, addr: addr, fd: fd, mem: mem, lfd: lfd}, nil
}

// memfdName is the name the kernel shows for the file in /proc/PID/fd
// ("memfd:shmgo:NAME"); at most 249 bytes.
func memfdName(name string) string {
	n := "shmgo:" + name
	if len(n) > 249 {
		n = n[:249]
	}
	return n
}

// Open implements backend.Backend: it asks the key's owner for the
// descriptor and maps it, waiting for the answer up to the I/O timeout. It
// fails with an error matching fs.ErrNotExist when nobody serves the key,
// fs.ErrPermission when the owner refuses this process or the server is not
// trusted, and os.ErrDeadlineExceeded when the server does not answer in
// time.
func (b *Backend) Open(name string) (backend.Segment, error) {
	return b.openAddr(context.Background(), keyAddr(name), false)
}

// OpenContext implements backend.ContextOpener: it is Open that waits for
// the owner's answer until ctx is done, however long the I/O timeout (with
// a ctx that can never end, context.Background, up to the I/O timeout as
// Open does), asking again when the owner drops the connection unanswered
// or its backlog is full. A key that nobody serves fails at once, even when
// ctx has already ended, with an error matching fs.ErrNotExist. When ctx
// ends first, the error says that the owner did not answer and matches
// ctx's error, and os.ErrDeadlineExceeded when ctx's deadline passed.
func (b *Backend) OpenContext(ctx context.Context, name string) (backend.Segment, error) {
	return b.openAddr(ctx, keyAddr(name), false)
}

// OpenReadOnly implements backend.ReadOnlyOpener: OpenContext that asks
// the owner for a descriptor opened for reading only (the owner checks
// read permission alone) and maps it PROT_READ. A memfd cannot be resized:
// n and size are not needed, and ignored.
func (b *Backend) OpenReadOnly(ctx context.Context, name string, n int, size func(head []byte) (int64, error)) (backend.Segment, error) {
	return b.openAddr(ctx, keyAddr(name), true)
}

// OpenID implements backend.IDOpener, for the objects List returns without
// a name: id is the part of the socket name after "shmgo/memfd/" ('#' and
// the SHA-256 of the name, in hex).
func (b *Backend) OpenID(id string) (backend.Segment, error) {
	addr, err := idAddr(id)
	if err != nil {
		return nil, err
	}
	return b.openAddr(context.Background(), addr, false)
}

func (b *Backend) openAddr(ctx context.Context, addr string, readOnly bool) (backend.Segment, error) {
	op, prot := byte(opOpen), unix.PROT_READ|unix.PROT_WRITE
	if readOnly {
		op, prot = opOpenRO, unix.PROT_READ
	}
	rep, err := b.ask(ctx, addr, op, b.exchangeDeadline(ctx))
	if err != nil {
		return nil, err
	}
	fd := rep.fd
	path := "@" + addr
	fail := func(op string, err error) (backend.Segment, error) {
		unix.Close(fd)
		return nil, &fs.PathError{Op: op, Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail("fstat", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size < 1 || int64(int(st.Size)) != st.Size {
		return fail("open", protoErr(nil, unix.EINVAL, "the owner sent something that is not a memory file"))
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil || seals&(unix.F_SEAL_SHRINK|unix.F_SEAL_GROW) != unix.F_SEAL_SHRINK|unix.F_SEAL_GROW {
		return fail("open", protoErr(nil, unix.EINVAL, "the owner sent a file that is not sealed against resizing"))
	}
	mem, err := unix.Mmap(fd, 0, int(st.Size), prot, unix.MAP_SHARED)
	if err != nil {
		return fail("mmap", err)
	}
	return &segment{b: b, addr: addr, fd: fd, mem: mem, lfd: -1}, nil
}

// Unlink implements backend.Backend. In the process that owns the region
// it stops serving the key; elsewhere it asks the owner to.
func (b *Backend) Unlink(name string) error {
	return b.unlinkAddr(keyAddr(name))
}

// UnlinkID implements backend.IDOpener.
func (b *Backend) UnlinkID(id string) error {
	addr, err := idAddr(id)
	if err != nil {
		return err
	}
	return b.unlinkAddr(addr)
}

func (b *Backend) unlinkAddr(addr string) error {
	if srv := lookup(addr); srv != nil {
		if srv.unpublish(false) {
			return nil
		}
	}
	_, err := b.ask(context.Background(), addr, opUnlink, time.Now().Add(b.timeout))
	return err
}

func idAddr(id string) (string, error) {
	if len(id) != 65 || id[0] != '#' {
		return "", &fs.PathError{Op: "open", Path: id, Err: unix.EINVAL}
	}
	if _, err := hex.DecodeString(id[1:]); err != nil {
		return "", &fs.PathError{Op: "open", Path: id, Err: unix.EINVAL}
	}
	return addrPrefix + id, nil
}

// segment is one mapping of a memfd region: the owner's (lfd or srv set)
// or a user's.
type segment struct {
	b    *Backend
	name string // the key's name; empty in a user's segment
	addr string
	fd   int
	mem  []byte

	mu     sync.Mutex
	lfd    int     // the bound socket until Publish, then -1
	srv    *server // serves the key once published
	closed bool
}

func (s *segment) Bytes() []byte { return s.mem }

// Fd implements backend.Fder.
func (s *segment) Fd() uintptr { return uintptr(s.fd) }

// Sealed implements backend.Sealed: the file cannot shrink or grow.
func (s *segment) Sealed() bool { return true }

// Chown implements backend.Chowner. The owner reads the file's owner for
// each request, so the change applies to the next Open.
func (s *segment) Chown(uid, gid int) error {
	if err := unix.Fchown(s.fd, uid, gid); err != nil {
		return &fs.PathError{Op: "fchown", Path: "@" + s.addr, Err: err}
	}
	return nil
}

// Publish implements backend.Pending: the bound socket starts listening and
// a goroutine serves it.
func (s *segment) Publish() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.lfd < 0 {
		return &fs.PathError{Op: "publish", Path: "@" + s.addr, Err: unix.EINVAL}
	}
	srv, err := serve(s.lfd, s.name, s.addr, s.fd, s.b.timeout)
	s.lfd = -1 // serve took it, or closed it
	if err != nil {
		return &fs.PathError{Op: "publish", Path: "@" + s.addr, Err: err}
	}
	s.srv = srv
	return nil
}

// Discard implements backend.Pending.
func (s *segment) Discard() error { return s.Close() }

// Close stops serving the key, if this is the owner's segment, and unmaps
// the region.
func (s *segment) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.lfd >= 0 {
		unix.Close(s.lfd)
		s.lfd = -1
	}
	if s.srv != nil {
		s.srv.shutdown() // waits until no goroutine uses s.fd
		s.srv = nil
	}
	var err error
	if s.mem != nil {
		err = unix.Munmap(s.mem)
		s.mem = nil
	}
	if e := unix.Close(s.fd); err == nil {
		err = e
	}
	s.fd = -1
	if err != nil {
		return &fs.PathError{Op: "close", Path: "@" + s.addr, Err: err}
	}
	return nil
}
