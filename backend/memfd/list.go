package memfd

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmgo/shm/backend"
)

// soAcceptCon is __SO_ACCEPTCON in the Flags column of /proc/net/unix: the
// socket listens.
const soAcceptCon = 0x10000

const (
	// listTimeout bounds each owner's answer to a listing (or the I/O
	// timeout, if shorter): a live owner answers in microseconds.
	listTimeout = 250 * time.Millisecond
	// listParallel is how many owners a listing asks at once. Waiting
	// exchanges hold no OS thread (they wait in the runtime's poller).
	listParallel = 128
)

// List implements backend.Lister: the keys served in this network
// namespace whose owners answer, as ListContext finds them. The sockets
// whose servers do not answer in time are left out (ListContext reports
// them), so that no socket can stall a listing; List takes at most about
// ListContext's time.
func (b *Backend) List() ([]backend.Info, error) {
	infos, _, err := b.list(context.Background())
	return infos, err
}

// ListContext is List that ends when ctx is done, and reports the sockets
// that did not answer.
//
// It reads /proc/net/unix for the listening sockets of this backend (a
// snapshot that may miss a socket of another process while others come and
// go; this process's own keys are always there) and
// asks each owner for its region's size, mode, owner and group, as the
// owner reports them (any local user may answer for a key it serves):
// the owners of this process at once, the others in parallel, each within
// 250 ms (or the I/O timeout, if shorter). Attached is always -1. A key
// whose socket name is hashed (see the package doc) has the name its owner
// reports when it matches the address, else no Name but an ID, which OpenID
// and UnlinkID take.
//
// The slice holds the keys whose owners answered, even when the error is
// not nil. The error joins one *fs.PathError (Op "stat", Path the socket's
// name as ss(8) shows it, "@shmgo/memfd/...") for each socket that did not
// answer in time, matching os.ErrDeadlineExceeded, or answered wrongly, and
// one matching ctx's error when ctx ended before every socket was asked.
func (b *Backend) ListContext(ctx context.Context) ([]backend.Info, error) {
	infos, unanswered, err := b.list(ctx)
	if err != nil {
		return nil, err
	}
	return infos, unanswered
}

// list is ListContext, with the sockets that did not answer (unanswered)
// apart from a failure to list any (err).
func (b *Backend) list(ctx context.Context) (infos []backend.Info, unanswered, err error) {
	addrs, err := listening("/proc/net/unix")
	if err != nil {
		return nil, nil, err
	}
	// The kernel prints the table in pieces, and a socket made or closed
	// meanwhile by anyone can make a read skip other lines: this process's
	// own keys are added from its registry, so that they are always there.
	addrs = withServed(addrs)
	type result struct {
		in    backend.Info
		err   error
		asked bool
	}
	res := make([]result, len(addrs))
	per := min(b.timeout, listTimeout)
	sem := make(chan struct{}, listParallel)
	var wg sync.WaitGroup
	for i, addr := range addrs {
		r := &res[i]
		r.in = backend.Info{UID: -1, GID: -1, Attached: -1, Path: "@" + addr}
		if id := addr[len(addrPrefix):]; strings.HasPrefix(id, "#") {
			r.in.ID = id
		} else {
			r.in.Name = id
		}
		if srv := lookup(addr); srv != nil {
			// Served by this process: no need to ask.
			r.asked = true
			if st, ok := srv.stat(); ok {
				r.in.Size, r.in.Mode, r.in.UID, r.in.GID = st.Size, fs.FileMode(st.Mode&0o777), int(st.Uid), int(st.Gid)
				r.in.Name, r.in.ID = srv.name, ""
			} else {
				r.err = fs.ErrNotExist // gone since we read the table
			}
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		r.asked = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			rep, err := b.ask(ctx, addr, opStat, time.Now().Add(per))
			if err != nil {
				r.err = err
				return
			}
			si, err := parseStat(rep.payload)
			if err != nil {
				r.err = &fs.PathError{Op: "stat", Path: "@" + addr, Err: protoErr(nil, unix.EPROTO, "malformed answer from the owner")}
				return
			}
			r.in.Size, r.in.Mode, r.in.UID, r.in.GID = si.size, si.mode, si.uid, si.gid
			if si.name != "" && keyAddr(si.name) == addr {
				r.in.Name, r.in.ID = si.name, ""
			}
		}()
	}
	wg.Wait()

	var out []backend.Info
	var errs []error
	notAsked := 0
	for i := range res {
		r := &res[i]
		switch {
		case !r.asked:
			notAsked++
		case r.err == nil:
			out = append(out, r.in)
		case errors.Is(r.err, fs.ErrNotExist):
			// Gone since we read the table.
		default:
			var pe *fs.PathError
			if errors.As(r.err, &pe) {
				r.err = &fs.PathError{Op: "stat", Path: pe.Path, Err: pe.Err}
			}
			errs = append(errs, r.err)
		}
	}
	if notAsked > 0 {
		kinds := []error{ctx.Err()}
		if ctx.Err() == context.DeadlineExceeded {
			kinds = append(kinds, os.ErrDeadlineExceeded)
		}
		errs = append(errs, &fs.PathError{Op: "list", Path: "@" + addrPrefix, Err: &protoError{kinds: kinds, errno: ctx.Err(),
			msg: strconv.Itoa(notAsked) + " of " + strconv.Itoa(len(addrs)) + " sockets not asked before the context ended"}})
	}
	return out, errors.Join(errs...), nil
}

// withServed returns addrs and the addresses this process serves that
// addrs lacks.
func withServed(addrs []string) []string {
	have := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		have[a] = true
	}
	regMu.Lock()
	defer regMu.Unlock()
	for a := range registry {
		if !have[a] {
			addrs = append(addrs, a)
		}
	}
	return addrs
}

// listening returns the listening SOCK_SEQPACKET abstract sockets named
// with addrPrefix in the /proc/net/unix table at path, without the leading
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
		i := strings.Index(line, " @"+addrPrefix)
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
		if len(addr) > len(addrPrefix) && !seen[addr] {
			seen[addr] = true
			addrs = append(addrs, addr)
		}
	}
	return addrs, nil
}
