// Package sysv is the System V shared-memory backend: shmget(2), shmat(2)
// and shmctl(2), without cgo. A region's key_t is a hash of its key (Key),
// so ipcs -m lists it and a C program can attach it with
// shmget(Key(name), 0, 0).
//
// Choose it when the other side only speaks SysV shared memory (legacy C
// code, MPI stacks, MIT-SHM style consumers), when operators manage regions
// with ipcs(1) and ipcrm(1), or when regions must belong to an IPC namespace
// (containers that share one, a Kubernetes pod) rather than to a /dev/shm
// mount. Otherwise prefer backend/posix: names instead of 32-bit hashes (of
// two keys whose hashes collide, only one can exist at a time), a file
// descriptor, and no region visible before it is ready. Keep in mind that
// kernel.shmmax, shmall and shmmni bound the segments, that systemd-logind's
// RemoveIPC=yes removes a user's segments when its last session ends, and
// that a segment nobody removes outlives every process.
//
// It registers as "sysv" (backend.Register) and takes no argument.
//
// The Backend is a backend.VisibleBeforePublish, ReadOnlyOpener, Lister,
// IDOpener, Inspector and Remover; its segments are backend.Owned, Sealed
// (a segment never shrinks), Chowner, Unlinker, Namer and Creator, and no
// Fder (Region.File and SendRegion fail). Stat and StatID report what
// ipcs -m shows of a segment.
//
// How keys are hashed, what Open does with a segment whose header is not yet
// written, how a segment knows itself, and what listing costs the others:
// DESIGN.md, next to this package's source.
package sysv

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
)

// shmDest is the mode bit the kernel sets on a segment removed with
// IPC_RMID while still attached (SHM_DEST, not in x/sys).
const shmDest = 0o1000

// shmRdonly is shmat's flag for a read-only attachment (SHM_RDONLY, not in
// x/sys for Linux).
const shmRdonly = 0o10000

// keyPrefix is hashed in front of every name, so that our key_t values do
// not coincide with those of other programs that hash bare names.
const keyPrefix = "shmgo:"

// procFile lists the SysV shared-memory segments of the caller's IPC
// namespace.
const procFile = "/proc/sysvipc/shm"

// Backend is the SysV backend. The zero value is ready to use; so is New().
type Backend struct {
	// keyFn replaces Key in tests, to force hash collisions.
	keyFn func(name string) int
}

// New returns the SysV backend.
func New() *Backend { return &Backend{} }

// Name returns "sysv".
func (b *Backend) Name() string { return "sysv" }

// VisibleBeforePublish implements backend.VisibleBeforePublish: a segment
// is visible under its key from shmget on, before its header is written.
func (b *Backend) VisibleBeforePublish() bool { return true }

// Key returns the SysV key_t (as an int, possibly negative, as shmget takes
// it) under which this backend keeps the region with the given key. A
// leading '/' is ignored, as in package shm. The value is FNV-1a 32 over
// "shmgo:"+name; 0 (IPC_PRIVATE) and -1 are XORed with 0x53484d47.
func Key(name string) int {
	name = strings.TrimPrefix(name, "/")
	h := fnv.New32a()
	h.Write([]byte(keyPrefix))
	h.Write([]byte(name))
	k := int32(h.Sum32())
	if k == 0 || k == -1 {
		k ^= 0x53484d47
	}
	return int(k)
}

func (b *Backend) key(name string) int {
	if b.keyFn != nil {
		return b.keyFn(name)
	}
	return Key(name)
}

// keyPath names a segment in errors the way ipcs shows its key.
func keyPath(name string, key int) string {
	return fmt.Sprintf("/%s (sysv key 0x%08x)", name, uint32(int32(key)))
}

func idPath(id int) string { return "shmid " + strconv.Itoa(id) }

// madvise is unix.Madvise; tests replace it to exercise the fallback.
var madvise = unix.Madvise

// Create implements backend.Backend: shmget(IPC_CREAT|IPC_EXCL), shmat,
// pages populated, mode exact. The segment is visible from here on.
func (b *Backend) Create(name string, size int64, perm fs.FileMode) (backend.Pending, error) {
	key := b.key(name)
	path := keyPath(name, key)
	if size < 1 || int64(int(size)) != size {
		return nil, &fs.PathError{Op: "shmget", Path: path, Err: unix.EINVAL}
	}
	mode := uint32(perm.Perm())
	// Owner read-write at first, so that the creator can attach whatever
	// the final mode; the exact mode is set below, before anyone but the
	// owner (who could change the mode anyway) could attach.
	id, err := unix.SysvShmGet(key, int(size), unix.IPC_CREAT|unix.IPC_EXCL|int(mode|0o600))
	if err != nil {
		return nil, &fs.PathError{Op: "shmget", Path: path, Err: err}
	}
	fail := func(op string, err error, mem []byte) (backend.Pending, error) {
		unix.SysvShmCtl(id, unix.IPC_RMID, nil)
		if mem != nil {
			unix.SysvShmDetach(mem)
		}
		return nil, &fs.PathError{Op: op, Path: path, Err: err}
	}
	mem, err := unix.SysvShmAttach(id, 0, 0)
	if err != nil {
		return fail("shmat", err, nil)
	}
	if int64(len(mem)) != size {
		return fail("shmat", unix.EINVAL, mem)
	}
	if err := populate(mem); err != nil {
		return fail("madvise", err, mem)
	}
	var ds unix.SysvShmDesc
	if _, err := unix.SysvShmCtl(id, unix.IPC_STAT, &ds); err != nil {
		return fail("shmctl IPC_STAT", err, mem)
	}
	// Perm.Mode is uint16 on some 32-bit architectures, uint32 elsewhere.
	if uint32(ds.Perm.Mode)&0o777 != mode {
		ds.Perm.Mode = ds.Perm.Mode&^0o777 | modeAs(ds.Perm.Mode, mode)
		if _, err := unix.SysvShmCtl(id, unix.IPC_SET, &ds); err != nil {
			return fail("shmctl IPC_SET", err, mem)
		}
	}
	s := &segment{id: id, key: key, mem: mem, path: path}
	s.recordIdentity(&ds)
	return s, nil
}

// populate allocates every page of mem, so that later touches cannot fail
// for want of memory. MADV_POPULATE_WRITE (Linux 5.14) reports failure as
// an error; older kernels get one write per page.
func populate(mem []byte) error {
	for {
		err := madvise(mem, unix.MADV_POPULATE_WRITE)
		switch err {
		case nil:
			return nil
		case unix.EINTR:
			continue
		case unix.EINVAL:
			// The kernel does not know MADV_POPULATE_WRITE. The segment
			// is fresh and nobody writes it yet, so writing zeros is safe.
			ps := os.Getpagesize()
			for i := 0; i < len(mem); i += ps {
				mem[i] = 0
			}
			return nil
		default:
			return err
		}
	}
}

// Open implements backend.Backend: shmget(key, 0, 0) and shmat read-write.
// The segment may still be being created (see VisibleBeforePublish).
func (b *Backend) Open(name string) (backend.Segment, error) {
	return b.open(name, 0)
}

// OpenReadOnly implements backend.ReadOnlyOpener: Open that attaches the
// segment SHM_RDONLY, so that read permission suffices. A segment's size
// is fixed at its creation: n and size are not needed, and ignored.
func (b *Backend) OpenReadOnly(ctx context.Context, name string, n int, size func(head []byte) (int64, error)) (backend.Segment, error) {
	return b.open(name, unix.SHM_RDONLY)
}

func (b *Backend) open(name string, flags int) (backend.Segment, error) {
	key := b.key(name)
	path := keyPath(name, key)
	id, err := unix.SysvShmGet(key, 0, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "shmget", Path: path, Err: err}
	}
	// A segment larger than this process can map (a 32-bit process, a
	// segment of 2 GiB or more) would overflow the slice of its mapping.
	var pre unix.SysvShmDesc
	if _, err := unix.SysvShmCtl(id, unix.IPC_STAT, &pre); err == nil && uint64(pre.Segsz) > math.MaxInt {
		return nil, &fs.PathError{Op: "shmat", Path: path, Err: unix.EOVERFLOW}
	}
	s, err := attach(id, path, flags)
	if err != nil {
		return nil, err
	}
	s.key = key
	// A segment removed (IPC_RMID) between shmget and shmat is gone for
	// new users, as it would be a moment later.
	var ds unix.SysvShmDesc
	if _, err := unix.SysvShmCtl(id, unix.IPC_STAT, &ds); err != nil || ds.Perm.Mode&shmDest != 0 {
		s.Close()
		return nil, &fs.PathError{Op: "shmat", Path: path, Err: unix.ENOENT}
	}
	s.recordIdentity(&ds)
	return s, nil
}

// attach maps segment id (read-write, or read-only with flags SHM_RDONLY).
// A segment removed since it was found (shmat's EINVAL or EIDRM) is
// reported as ENOENT.
func attach(id int, path string, flags int) (*segment, error) {
	mem, err := unix.SysvShmAttach(id, 0, flags)
	if err != nil {
		if err == unix.EINVAL || err == unix.EIDRM {
			err = unix.ENOENT
		}
		return nil, &fs.PathError{Op: "shmat", Path: path, Err: err}
	}
	return &segment{id: id, mem: mem, path: path}, nil
}

// Unlink implements backend.Backend: IPC_RMID on the segment under name's
// key. Attached processes keep it; the kernel frees it at the last detach.
func (b *Backend) Unlink(name string) error {
	key := b.key(name)
	path := keyPath(name, key)
	id, err := unix.SysvShmGet(key, 0, 0)
	if err != nil {
		return &fs.PathError{Op: "shmget", Path: path, Err: err}
	}
	return rmid(id, path)
}

func rmid(id int, path string) error {
	if _, err := unix.SysvShmCtl(id, unix.IPC_RMID, nil); err != nil {
		if err == unix.EINVAL || err == unix.EIDRM {
			err = unix.ENOENT
		}
		return &fs.PathError{Op: "shmctl IPC_RMID", Path: path, Err: err}
	}
	return nil
}

// chmod sets the permission bits of the segment under name's key, exactly.
// Only its owner, its creator or a privileged process may.
func (b *Backend) chmod(name string, perm fs.FileMode) error {
	key := b.key(name)
	path := keyPath(name, key)
	id, err := unix.SysvShmGet(key, 0, 0)
	if err != nil {
		return &fs.PathError{Op: "shmget", Path: path, Err: err}
	}
	return setPerm(id, path, func(p *unix.SysvIpcPerm) {
		p.Mode = p.Mode&^0o777 | modeAs(p.Mode, uint32(perm.Perm()))
	})
}

// setPerm reads the segment's permissions, lets edit change them, and
// writes them back (IPC_SET sets owner, group and mode together).
func setPerm(id int, path string, edit func(*unix.SysvIpcPerm)) error {
	var ds unix.SysvShmDesc
	if _, err := unix.SysvShmCtl(id, unix.IPC_STAT, &ds); err != nil {
		return &fs.PathError{Op: "shmctl IPC_STAT", Path: path, Err: err}
	}
	edit(&ds.Perm)
	if _, err := unix.SysvShmCtl(id, unix.IPC_SET, &ds); err != nil {
		return &fs.PathError{Op: "shmctl IPC_SET", Path: path, Err: err}
	}
	return nil
}

// Stat is what shmctl(IPC_STAT) tells about a segment.
type Stat struct {
	ID       int         // shmid
	Key      int         // key_t; 0 once removed
	Size     int64       // bytes
	Mode     fs.FileMode // permission bits
	UID, GID int         // owner
	CPID     int         // creator's PID, in the caller's PID namespace (0 if outside it)
	LPID     int         // PID of the last shmat or shmdt
	Attached int         // number of attachments (nattch)
	Removed  bool        // IPC_RMID done, freed at the last detach (SHM_DEST)
}

// Stat reports on the segment under name's key, as ipcs -m would: what
// package shm's Stat cannot tell, such as the attach count and the PIDs of
// the creator and the last user (cmd/shmctl's stat shows them). It fails
// with an error matching fs.ErrNotExist when there is none, and
// fs.ErrPermission when the caller may not read it.
func (b *Backend) Stat(name string) (Stat, error) {
	key := b.key(name)
	path := keyPath(name, key)
	id, err := unix.SysvShmGet(key, 0, 0)
	if err != nil {
		return Stat{}, &fs.PathError{Op: "shmget", Path: path, Err: err}
	}
	return statID(id, path)
}

// StatID is Stat for the segment with the given shmid (as List reports it
// in Info.ID, and ipcs -m shows it): cmd/shmctl's "stat sysv:@SHMID".
func (b *Backend) StatID(id string) (Stat, error) {
	n, err := parseID(id)
	if err != nil {
		return Stat{}, err
	}
	return statID(n, idPath(n))
}

func statID(id int, path string) (Stat, error) {
	var ds unix.SysvShmDesc
	if _, err := unix.SysvShmCtl(id, unix.IPC_STAT, &ds); err != nil {
		if err == unix.EINVAL || err == unix.EIDRM {
			err = unix.ENOENT
		}
		return Stat{}, &fs.PathError{Op: "shmctl IPC_STAT", Path: path, Err: err}
	}
	return Stat{
		ID: id, Key: int(ds.Perm.Key), Size: int64(ds.Segsz),
		Mode: fs.FileMode(ds.Perm.Mode & 0o777),
		UID:  int(ds.Perm.Uid), GID: int(ds.Perm.Gid),
		CPID: int(ds.Cpid), LPID: int(ds.Lpid), Attached: int(ds.Nattch),
		Removed: ds.Perm.Mode&shmDest != 0,
	}, nil
}

// List implements backend.Lister from /proc/sysvipc/shm: every segment of
// the IPC namespace that still has a key (neither IPC_PRIVATE nor removed),
// ours or not. Name is empty (the name is in the header); ID is the shmid.
// Attached is nattch.
func (b *Backend) List() ([]backend.Info, error) {
	f, err := os.Open(procFile)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseList(f)
}

// parseList reads the format of /proc/sysvipc/shm: a header line naming the
// columns (key shmid perms size cpid lpid nattch uid gid ...), then one line
// per segment, key in decimal and perms in octal.
func parseList(r io.Reader) ([]backend.Info, error) {
	sc := bufio.NewScanner(r)
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return nil, &fs.PathError{Op: "read", Path: procFile, Err: err}
		}
		return nil, nil
	}
	col := map[string]int{}
	for i, f := range strings.Fields(sc.Text()) {
		col[f] = i
	}
	need := []string{"key", "shmid", "perms", "size", "nattch", "uid", "gid"}
	for _, n := range need {
		if _, ok := col[n]; !ok {
			return nil, &fs.PathError{Op: "parse", Path: procFile, Err: fmt.Errorf("no %q column", n)}
		}
	}
	var out []backend.Info
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) < len(col) {
			continue
		}
		get := func(name string, base int) (int64, error) {
			return strconv.ParseInt(string(f[col[name]]), base, 64)
		}
		key, err1 := get("key", 10)
		id, err2 := get("shmid", 10)
		perms, err3 := get("perms", 8)
		size, err4 := get("size", 10)
		nattch, err5 := get("nattch", 10)
		uid, err6 := get("uid", 10)
		gid, err7 := get("gid", 10)
		if err := errors.Join(err1, err2, err3, err4, err5, err6, err7); err != nil {
			return nil, &fs.PathError{Op: "parse", Path: procFile, Err: err}
		}
		if key == 0 || perms&shmDest != 0 {
			continue // IPC_PRIVATE or removed: no key can reach it
		}
		out = append(out, backend.Info{
			Size: size, Mode: fs.FileMode(perms & 0o777),
			UID: int(uid), GID: int(gid), Attached: int(nattch),
			ID: strconv.FormatInt(id, 10),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, &fs.PathError{Op: "read", Path: procFile, Err: err}
	}
	return out, nil
}

func parseID(id string) (int, error) {
	n, err := strconv.Atoi(id)
	if err != nil || n < 0 {
		return 0, &fs.PathError{Op: "parse", Path: "shmid " + id, Err: unix.EINVAL}
	}
	return n, nil
}

// OpenID implements backend.IDOpener for inspecting a listed segment: it
// maps segment id read-only (SHM_RDONLY), so that reading the header of
// another program's segment can never change it (a write through Bytes
// faults). It fails with an error matching fs.ErrNotExist when the segment
// is gone or marked for removal, which it finds out with IPC_STAT without
// attaching.
//
// Even a read-only attachment is seen by others: the kernel sets the
// segment's shm_lpid to the caller and shm_atime at shmat, shm_lpid and
// shm_dtime again at shmdt, and counts it in shm_nattch meanwhile (ipcs -p
// and -t show it). Callers should therefore not open segments that IPC_STAT
// or List already show cannot be theirs (package shm skips those smaller
// than its header).
func (b *Backend) OpenID(id string) (backend.Segment, error) {
	n, err := parseID(id)
	if err != nil {
		return nil, err
	}
	path := idPath(n)
	var ds unix.SysvShmDesc
	if _, err := unix.SysvShmCtl(n, unix.IPC_STAT, &ds); err != nil || ds.Perm.Mode&shmDest != 0 {
		if err == nil || err == unix.EINVAL || err == unix.EIDRM {
			err = unix.ENOENT
		}
		return nil, &fs.PathError{Op: "shmctl IPC_STAT", Path: path, Err: err}
	}
	s, err := attach(n, path, shmRdonly)
	if err != nil {
		return nil, err
	}
	s.key = int(ds.Perm.Key)
	s.readOnly = true
	s.recordIdentity(&ds)
	return s, nil
}

// UnlinkID implements backend.IDOpener: IPC_RMID by shmid.
func (b *Backend) UnlinkID(id string) error {
	n, err := parseID(id)
	if err != nil {
		return err
	}
	return rmid(n, idPath(n))
}

// segment is one attachment of a segment.
type segment struct {
	id       int
	key      int // the key_t it was found under
	mem      []byte
	path     string
	readOnly bool // attached with SHM_RDONLY (OpenID)

	// What IPC_STAT said at attach time that no IPC_SET changes: the
	// creator's PID and uid, and the size (hasIdent when known).
	hasIdent bool
	cpid     int32
	cuid     uint32
	uid      int // shm_perm.uid at attach
	segsz    uint64
}

func (s *segment) recordIdentity(ds *unix.SysvShmDesc) {
	s.hasIdent, s.cpid, s.cuid, s.segsz = true, ds.Cpid, ds.Perm.Cuid, uint64(ds.Segsz)
	s.uid = int(ds.Perm.Uid)
}

// Owner implements backend.Owned: the segment's owner (shm_perm.uid) when
// it was attached.
func (s *segment) Owner() int { return s.uid }

// StillNamed implements backend.Namer: whether the segment's key still
// leads to this very segment. It rests on the shmid, never on the
// segment's bytes (which every process that may attach it can change):
// the kernel frees a shmid only when its segment is destroyed, at the last
// detach after IPC_RMID, so while this segment is attached no other segment
// can have its shmid, and a removed segment is no longer found by its key.
// The segment's immutable identity (creator PID and uid, size, as IPC_STAT
// showed them at attach) is compared as well, where IPC_STAT is allowed;
// shm_ctime is not used, since IPC_SET (chmod, Chown) changes it.
//
// It fails with an error matching fs.ErrNotExist when no segment has the
// key, and fs.ErrClosed after Close (when the shmid may be reused).
func (s *segment) StillNamed() (bool, error) {
	if s.mem == nil {
		return false, &fs.PathError{Op: "shmget", Path: s.path, Err: fs.ErrClosed}
	}
	id, err := unix.SysvShmGet(s.key, 0, 0)
	if err != nil {
		return false, &fs.PathError{Op: "shmget", Path: s.path, Err: err}
	}
	if id != s.id {
		return false, nil
	}
	var ds unix.SysvShmDesc
	if s.hasIdent {
		if _, err := unix.SysvShmCtl(id, unix.IPC_STAT, &ds); err == nil {
			if ds.Cpid != s.cpid || ds.Perm.Cuid != s.cuid || uint64(ds.Segsz) != s.segsz || ds.Perm.Mode&shmDest != 0 {
				return false, nil
			}
		}
	}
	return true, nil
}

// Unlink removes the segment's key if it still leads to this segment
// (StillNamed), by shmid: it can never remove another segment that took
// the key, even one that took it a moment ago. It fails with an error
// matching fs.ErrNotExist when the key leads elsewhere or nowhere.
func (s *segment) Unlink() error {
	same, err := s.StillNamed()
	if err != nil {
		return err
	}
	if !same {
		return &fs.PathError{Op: "shmctl IPC_RMID", Path: s.path, Err: unix.ENOENT}
	}
	return rmid(s.id, s.path)
}

func (s *segment) Bytes() []byte { return s.mem }

// Sealed implements backend.Sealed: a SysV segment never shrinks.
func (s *segment) Sealed() bool { return true }

// CreatorPID implements backend.Creator: the segment's shm_cpid, in the
// caller's PID namespace (0 when unknown), so that an opener can tell a blank
// segment whose creator died from one still being written.
func (s *segment) CreatorPID() int {
	st, err := statID(s.id, s.path)
	if err != nil {
		return 0
	}
	return st.CPID
}

// Publish does nothing: the segment has been visible, and exclusively ours,
// since shmget(IPC_CREAT|IPC_EXCL) in Create.
func (s *segment) Publish() error { return nil }

// Discard removes the segment by its shmid (never another segment that took
// the key since) and detaches it.
func (s *segment) Discard() error {
	err := rmid(s.id, s.path)
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	return err
}

// Chown implements backend.Chowner with IPC_SET, keeping the mode.
func (s *segment) Chown(uid, gid int) error {
	return setPerm(s.id, s.path, func(p *unix.SysvIpcPerm) {
		if uid != -1 {
			p.Uid = uint32(uid)
		}
		if gid != -1 {
			p.Gid = uint32(gid)
		}
	})
}

// Close detaches the segment. A second Close does nothing.
func (s *segment) Close() error {
	if s.mem == nil {
		return nil
	}
	err := unix.SysvShmDetach(s.mem)
	s.mem = nil
	if err != nil {
		return &fs.PathError{Op: "shmdt", Path: s.path, Err: err}
	}
	return nil
}

var (
	_ backend.Backend              = (*Backend)(nil)
	_ backend.Lister               = (*Backend)(nil)
	_ backend.IDOpener             = (*Backend)(nil)
	_ backend.VisibleBeforePublish = (*Backend)(nil)
	_ backend.Pending              = (*segment)(nil)
	_ backend.Chowner              = (*segment)(nil)
	_ backend.Sealed               = (*segment)(nil)
	_ backend.Namer                = (*segment)(nil)
	_ backend.Creator              = (*segment)(nil)
)

// modeAs converts permission bits to the type of ipc_perm's mode field,
// which is uint16 on some 32-bit architectures and uint32 elsewhere.
func modeAs[T uint16 | uint32](_ T, perm uint32) T { return T(perm) }

// idOf finds the shmid of the segment that in names: its ID, or its name's
// key_t.
func (b *Backend) idOf(in backend.Info) (int, string, error) {
	if in.ID != "" {
		n, err := parseID(in.ID)
		return n, idPath(n), err
	}
	key := b.key(in.Name)
	path := keyPath(in.Name, key)
	id, err := unix.SysvShmGet(key, 0, 0)
	if err != nil {
		return 0, path, &fs.PathError{Op: "shmget", Path: path, Err: err}
	}
	return id, path, nil
}

// infoOf describes segment id from IPC_STAT.
func infoOf(id int, name string) (backend.Info, *unix.SysvShmDesc, error) {
	var ds unix.SysvShmDesc
	if _, err := unix.SysvShmCtl(id, unix.IPC_STAT, &ds); err != nil || ds.Perm.Mode&shmDest != 0 {
		if err == nil || err == unix.EINVAL || err == unix.EIDRM {
			err = unix.ENOENT
		}
		return backend.Info{}, nil, &fs.PathError{Op: "shmctl IPC_STAT", Path: idPath(id), Err: err}
	}
	return backend.Info{
		Name: name, Size: int64(ds.Segsz), Mode: fs.FileMode(ds.Perm.Mode & 0o777),
		UID: int(ds.Perm.Uid), GID: int(ds.Perm.Gid), Attached: int(ds.Nattch),
		ID: strconv.Itoa(id), Changed: time.Unix(int64(ds.Ctime), 0),
	}, &ds, nil
}

// Inspect implements backend.Inspector: the segment's first n bytes, read
// through a read-only attachment (which, as any attachment, records this
// process as the last to attach), and its Info.
func (b *Backend) Inspect(in backend.Info, n int) ([]byte, backend.Info, error) {
	id, path, err := b.idOf(in)
	if err != nil {
		return nil, backend.Info{}, err
	}
	now, _, err := infoOf(id, in.Name)
	if err != nil {
		return nil, backend.Info{}, err
	}
	s, err := attach(id, path, unix.SHM_RDONLY)
	if err != nil {
		return nil, backend.Info{}, err
	}
	defer s.Close()
	head := make([]byte, min(n, len(s.mem)))
	copy(head, s.mem)
	return head, now, nil
}

// Unused implements backend.Remover: the kernel's attach count.
func (b *Backend) Unused(in backend.Info) error {
	id, _, err := b.idOf(in)
	if err != nil {
		return err
	}
	now, _, err := infoOf(id, in.Name)
	if err != nil {
		return err
	}
	if now.Attached != 0 {
		return fmt.Errorf("%w: %d processes attached", backend.ErrInUse, now.Attached)
	}
	return nil
}

// RemoveUnused implements backend.Remover: IPC_RMID by shmid, when check
// accepts the segment's first bytes and the kernel counts no attachment
// but the one that read them. A process that attaches between the count
// and the removal keeps a segment whose key is gone (two system calls
// apart; see cmd/shmctl's README).
func (b *Backend) RemoveUnused(in backend.Info, n int, check func(head []byte, now backend.Info) error) error {
	id, path, err := b.idOf(in)
	if err != nil {
		return err
	}
	head, now, err := b.Inspect(backend.Info{ID: strconv.Itoa(id), Name: in.Name}, n)
	if err != nil {
		return err
	}
	if err := check(head, now); err != nil {
		return err
	}
	if err := b.Unused(backend.Info{ID: strconv.Itoa(id)}); err != nil {
		return err
	}
	return rmid(id, path)
}
