package memfd

import (
	"errors"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
)

// soAcceptCon is __SO_ACCEPTCON in the Flags column of /proc/net/unix: the
// socket listens.
const soAcceptCon = 0x10000

// List implements backend.Lister: the keys served in this network
// namespace, from /proc/net/unix. It asks each owner for its region's size,
// mode, owner and group, as the owner reports them (any local user may
// answer for a key it serves); when an owner does not answer, they are 0,
// 0, -1 and -1. Attached is always -1. A key whose socket name is hashed
// (see Addr) and whose owner does not answer has no Name but an ID, which
// OpenID and UnlinkID take.
func (b *Backend) List() ([]backend.Info, error) {
	addrs, err := listening("/proc/net/unix")
	if err != nil {
		return nil, err
	}
	var out []backend.Info
	for _, addr := range addrs {
		in := backend.Info{UID: -1, GID: -1, Attached: -1}
		if id := addr[len(AddrPrefix):]; strings.HasPrefix(id, "#") {
			in.ID = id
		} else {
			in.Name = id
		}
		rep, err := b.request(addr, opStat, time.Time{})
		if errors.Is(err, fs.ErrNotExist) {
			continue // gone since we read the table
		}
		if err == nil {
			if si, err := parseStat(rep.payload); err == nil {
				in.Size, in.Mode, in.UID, in.GID = si.size, si.mode, si.uid, si.gid
				if si.name != "" && Addr(si.name) == addr {
					in.Name, in.ID = si.name, ""
				}
			}
		}
		out = append(out, in)
	}
	return out, nil
}

// listening returns the listening SOCK_SEQPACKET abstract sockets named
// with AddrPrefix in the /proc/net/unix table at path, without the leading
// NUL of their names.
func listening(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	// Num RefCount Protocol Flags Type St Inode Path; abstract names are
	// shown with '@' for their leading NUL.
	var addrs []string
	seen := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		i := strings.Index(line, " @"+AddrPrefix)
		if i < 0 {
			continue
		}
		f := strings.Fields(line[:i])
		if len(f) != 7 {
			continue
		}
		flags, err1 := strconv.ParseUint(f[3], 16, 32)
		typ, err2 := strconv.ParseUint(f[4], 16, 32)
		if err1 != nil || err2 != nil || flags&soAcceptCon == 0 || typ != unix.SOCK_SEQPACKET {
			continue
		}
		addr := line[i+2:]
		if len(addr) > len(AddrPrefix) && !seen[addr] {
			seen[addr] = true
			addrs = append(addrs, addr)
		}
	}
	return addrs, nil
}
