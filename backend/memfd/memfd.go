// Package memfd is the memfd backend: a region is an anonymous memory file
// (memfd_create(2)) sealed against resizing, which the process that created
// it serves by key over an abstract unix socket; no filesystem names it.
//
// Choose it when there is no usable /dev/shm (a container that mounts none,
// or a small one), when no peer may shrink the memory under the others (a
// peer of a POSIX or file region can truncate it, and every other user then
// faults), or when no name may appear in any filesystem. Do not choose it
// when users must attach after the owner has closed the region or exited
// (they keep what they have mapped, but the key goes with the owner), from
// another network namespace (only a descriptor, shm.Region.File or
// shm.SendRegion, crosses it), or by name from C with shm_open.
//
// Both sides check the other's credentials: the owner applies the region's
// mode to every process that asks for it, as open(2) would to a file, and a
// user accepts memory only from a server of its own uid or root, unless
// told otherwise (WithTrustedUIDs, WithAnyServer, or shm.WithTrustedUIDs).
//
// It registers as "memfd" (backend.Register) and takes no argument; New
// takes Options.
//
// The Backend is a backend.ContextOpener, ReadOnlyOpener, Lister,
// ContextLister and IDOpener; its segments are backend.Fder, Sealed and
// Chowner. It is no Remover: nothing of a region outlives the processes
// that map it, so there is never anything stale to remove.
//
// The protocol, how neither side can be held up by the other, and the
// limits: DESIGN.md, next to this package's source.
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
	if size < 1 {
		return fail("create", unix.EINVAL)
	}
	if int64(int(size)) != size {
		return fail("create", unix.EOVERFLOW) // more than a 32-bit process can map
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
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size < 1 {
		return fail("open", protoErr(nil, unix.EINVAL, "the owner sent something that is not a memory file"))
	}
	if int64(int(st.Size)) != st.Size {
		return fail("mmap", unix.EOVERFLOW) // more than a 32-bit process can map
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
