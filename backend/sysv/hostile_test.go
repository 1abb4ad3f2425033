package sysv_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/sysv"
)

// runRoleWith runs the test binary in role for key, with arg, and returns
// its output; the child must succeed.
func runRoleWith(t *testing.T, role, key, arg string) string {
	t.Helper()
	cmd := child(t, role, key, arg)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child %s: %v\n%s", role, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// TestUnlinkAfterPeerChangesHeader: a peer with write access changes one
// byte of the header (the creation time, the magic, the creator PID). The
// owner's Unlink must still remove its segment: it is identified by its
// shmid, not by bytes anyone can write.
func TestUnlinkAfterPeerChangesHeader(t *testing.T) {
	for _, c := range []struct {
		what string
		off  int
	}{{"creation time", 56}, {"magic", 0}, {"creator PID", 32}} {
		t.Run(strings.ReplaceAll(c.what, " ", "-"), func(t *testing.T) {
			key := testName(t, "flip")
			r, err := shm.Create(key, 4096, opt())
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			runRoleWith(t, "flip", key, strconv.Itoa(c.off))
			if err := r.Unlink(); err != nil {
				sysv.New().Unlink(key)
				t.Fatalf("Unlink after a peer changed the header's %s: %v", c.what, err)
			}
			if _, err := unix.SysvShmGet(sysv.Key(key), 0, 0); !errors.Is(err, unix.ENOENT) {
				t.Fatalf("shmget after Unlink: %v, want ENOENT", err)
			}
		})
	}
}

// TestStillNamedByShmid: StillNamed holds while the key leads to this
// segment, whatever its bytes; it is false once the key names a successor,
// and says ErrNotExist when nothing has the key. The segment's own Unlink
// never removes a successor.
func TestStillNamedByShmid(t *testing.T) {
	b := sysv.New()
	name := testName(t, "named")[1:]
	p, err := b.Create(name, 4096, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	t.Cleanup(func() { b.Unlink(name) })
	n, ok := p.(backend.Namer)
	if !ok {
		t.Fatal("sysv segments do not implement backend.Namer")
	}
	clear(p.Bytes()) // whatever the bytes say
	if same, err := n.StillNamed(); !same || err != nil {
		t.Fatalf("StillNamed of a fresh segment = %v, %v", same, err)
	}
	st, err := b.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	// Chmod changes shm_ctime: not part of the identity.
	if err := b.Chmod(name, 0o640); err != nil {
		t.Fatal(err)
	}
	if same, err := n.StillNamed(); !same || err != nil {
		t.Fatalf("StillNamed after Chmod = %v, %v", same, err)
	}
	// Another process removes it (ipcrm -m).
	if err := b.UnlinkID(strconv.Itoa(st.ID)); err != nil {
		t.Fatal(err)
	}
	if same, err := n.StillNamed(); same || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("StillNamed of a removed segment = %v, %v; want false, ErrNotExist", same, err)
	}
	// A successor takes the key.
	q, err := b.Create(name, 8192, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Discard()
	if same, err := n.StillNamed(); same || err != nil {
		t.Fatalf("StillNamed with a successor under the key = %v, %v; want false, nil", same, err)
	}
	u, ok := p.(interface{ Unlink() error })
	if !ok {
		t.Fatal("sysv segments have no Unlink")
	}
	if err := u.Unlink(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the old segment's Unlink: %v, want ErrNotExist", err)
	}
	if st, err := b.Stat(name); err != nil || st.Size != 8192 {
		t.Fatalf("the successor after the old segment's Unlink: %+v, %v", st, err)
	}
	if same, err := q.(backend.Namer).StillNamed(); !same || err != nil {
		t.Fatalf("the successor's StillNamed = %v, %v", same, err)
	}
	if err := q.(interface{ Unlink() error }).Unlink(); err != nil {
		t.Fatalf("the successor's own Unlink: %v", err)
	}
	if _, err := b.Stat(name); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Stat after the successor's Unlink: %v", err)
	}
	p.Close()
	if _, err := n.StillNamed(); !errors.Is(err, fs.ErrClosed) {
		t.Fatalf("StillNamed after Close: %v, want ErrClosed", err)
	}
}

// mapPerms returns the permissions /proc/self/maps shows for the mapping
// that holds addr ("rw-s", "r--s").
func mapPerms(t *testing.T, addr uintptr) string {
	t.Helper()
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		var lo, hi uintptr
		if _, err := fmt.Sscanf(fields[0], "%x-%x", &lo, &hi); err != nil {
			continue
		}
		if lo <= addr && addr < hi {
			return fields[1]
		}
	}
	t.Fatalf("no mapping holds %#x", addr)
	return ""
}

// TestOpenIDReadOnly: OpenID, which listing uses to read headers, attaches
// read-only (SHM_RDONLY), and does not attach a segment marked for
// removal at all.
func TestOpenIDReadOnly(t *testing.T) {
	b := sysv.New()
	key := testName(t, "openid-ro")
	r, err := shm.Create(key, 4096, opt())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer r.Unlink()
	st := mustStat(t, b, key)
	s, err := b.OpenID(strconv.Itoa(st.ID))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := mapPerms(t, uintptr(unsafe.Pointer(&s.Bytes()[0]))); got != "r--s" {
		t.Fatalf("OpenID maps the segment %s, want r--s", got)
	}
	if got := mapPerms(t, uintptr(unsafe.Pointer(&r.Bytes()[0]))); got != "rw-s" {
		t.Fatalf("the owner maps it %s, want rw-s", got)
	}
	s.Close()

	// Marked for removal, still attached by the owner: not there.
	if err := b.UnlinkID(strconv.Itoa(st.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.OpenID(strconv.Itoa(st.ID)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("OpenID of a removed segment: %v, want ErrNotExist", err)
	}
	if st, err := b.StatID(strconv.Itoa(st.ID)); err != nil || st.Attached != 1 {
		t.Fatalf("after OpenID of a removed segment: %+v, %v; want 1 attachment", st, err)
	}
}

// shmStat is IPC_STAT of a shmid.
func shmStat(t *testing.T, id int) unix.SysvShmDesc {
	t.Helper()
	var ds unix.SysvShmDesc
	if _, err := unix.SysvShmCtl(id, unix.IPC_STAT, &ds); err != nil {
		t.Fatal(err)
	}
	return ds
}

// TestListLeavesForeignSegmentsAlone: listing SysV regions never attaches a
// foreign segment that is too small to be a region (its lpid and times stay
// those of its owner), and reads the others through a read-only attachment,
// which leaves their bytes alone. The kernel still records even a
// read-only attach and detach (shm_lpid, shm_atime, shm_dtime): that is
// logged, as the residual effect the package doc describes.
func TestListLeavesForeignSegmentsAlone(t *testing.T) {
	type seg struct {
		key  string
		size int
		id   int
	}
	segs := []*seg{{key: testName(t, "foreign-tiny"), size: 100}, {key: testName(t, "foreign-big"), size: 8192}}
	for _, s := range segs {
		out := runRoleWith(t, "foreign", s.key, strconv.Itoa(s.size))
		id, err := strconv.Atoi(out)
		if err != nil {
			t.Fatalf("child said %q", out)
		}
		s.id = id
		t.Cleanup(func() { unix.SysvShmCtl(id, unix.IPC_RMID, nil) })
	}
	before := map[int]unix.SysvShmDesc{}
	for _, s := range segs {
		before[s.id] = shmStat(t, s.id)
	}
	if _, err := shm.List(context.Background(), shm.ListBackends(sysv.New()), shm.ListForeign()); err != nil {
		t.Logf("List: %v", err)
	}
	me := int32(os.Getpid())
	for _, s := range segs {
		a, b := before[s.id], shmStat(t, s.id)
		if a.Perm.Mode != b.Perm.Mode || a.Nattch != b.Nattch || a.Segsz != b.Segsz {
			t.Errorf("segment %d (%d bytes) changed: %+v, was %+v", s.id, s.size, b, a)
		}
		if s.size < 512 {
			if b.Lpid != a.Lpid || b.Atime != a.Atime || b.Dtime != a.Dtime {
				t.Errorf("List attached the %d-byte foreign segment: lpid %d atime %d dtime %d, was %d %d %d",
					s.size, b.Lpid, b.Atime, b.Dtime, a.Lpid, a.Atime, a.Dtime)
			}
			continue
		}
		t.Logf("%d-byte foreign segment: lpid %d -> %d (this process %d), atime %d -> %d (read-only attach)",
			s.size, a.Lpid, b.Lpid, me, a.Atime, b.Atime)
		mem, err := unix.SysvShmAttach(s.id, 0, 0x1000)
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range mem {
			if v != byte(i*7+3) {
				t.Fatalf("byte %d of the foreign segment is %#x after List", i, v)
			}
		}
		unix.SysvShmDetach(mem)
	}
}
