package shm

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/internal/sys"
)

// ErrInUse is returned by Remove when the region is in use, or may be: its
// creator lives or cannot be judged from here, or a process has it open or
// mapped, or that could not be proven otherwise.
var ErrInUse = errors.New("region is in use")

// Remove removes the region under key (its backend chosen as for Stat) if
// it is stale: its creator is dead and no process uses it. It never
// removes a region in use: it fails with ErrInUse when the creator lives
// (or cannot be judged from here) or a process has the region open or
// mapped, or when that cannot be proven. It fails with ErrNotExist when
// there is no such region, and ErrCorrupt when the object under the key is
// not a region.
//
// A process uses a region when it maps it or (for the backends whose
// objects are files) holds a descriptor of it. The proof that none does is
// the backend's (backend.Remover), held while the object is removed: a
// write lease on the file for posix, its flock protocol for file, the
// kernel's attach count for sysv. A backend without one has its objects
// removed only when a complete walk of /proc/*/maps finds no mapping. A
// memfd region has no name once its owner is gone: it is never stale.
//
// To remove a region whose creator lives, Open it and Unlink it.
func Remove(key string, opts ...Option) error {
	obj, bname, err := findKey(key, opts)
	if err == nil {
		switch {
		case obj.Err != nil:
			err = classify(obj.Err)
		case obj.Foreign:
			err = because(obj.Reason, nil, ErrCorrupt)
		default:
			err = remove(obj, nil)
		}
	}
	if err != nil {
		return &Error{Op: "remove", Key: key, Backend: bname, Err: err}
	}
	return nil
}

// RemoveStale removes every stale region that List (with the same options)
// finds, and returns those it removed. Each one is checked again just before
// its removal, so that a region that came into use since it was listed is
// left alone. The error joins what went wrong, region by region.
func RemoveStale(ctx context.Context, opts ...ListOption) ([]Info, error) {
	lo := buildListOptions(opts)
	lo.foreign = false
	objs, err := list(ctx, lo)
	errs := []error{err}
	var removed []Info
	for _, o := range objs {
		if !o.Stale {
			continue
		}
		if ctx.Err() != nil {
			errs = append(errs, &Error{Op: "remove", Err: ctxError(ctx)})
			break
		}
		if err := remove(o, o); err != nil {
			if !errors.Is(err, ErrNotExist) && !errors.Is(err, ErrInUse) {
				errs = append(errs, &Error{Op: "remove", Key: o.Key, Backend: o.Backend, Err: err})
			}
			continue
		}
		removed = append(removed, o.Info)
	}
	return removed, errors.Join(errs...)
}

// remove removes the object o describes after checking again, on what it
// finds now, that it is stale. With expect set, the region must also still
// be the one expect describes (same creator and creation time).
func remove(o *object, expect *object) error {
	want := o.bi.Name
	if o.bi.Temp {
		want = ""
	}
	check := func(head []byte, now backend.Info) error {
		h, blank, _ := parseHead(head, now.Size, want)
		return checkStale(o, expect, h, blank, now)
	}
	if rm, ok := o.be.(backend.Remover); ok {
		return classify(rm.RemoveUnused(o.bi, headerSize, check))
	}
	return removeByMaps(o, check)
}

// checkStale checks, on a fresh copy of the header (nil when it is not a
// valid one; blank when it is all zeros), that the object is a stale region
// (and the one expect describes).
func checkStale(o, expect *object, h *header, blank bool, now backend.Info) error {
	if h == nil {
		if !(blank && o.Temp) {
			return because("not a region", nil, ErrCorrupt)
		}
		if expect != nil && !expect.blank {
			return inUse("header changed since it was listed")
		}
		if time.Since(now.Changed) < tempGrace {
			return inUse("being created")
		}
		return nil
	}
	if expect != nil && (expect.hdr == nil || h.Created != expect.hdr.Created || h.creator() != expect.hdr.creator()) {
		return inUse("another region took its place since it was listed")
	}
	switch sys.Check(h.creator()) {
	case sys.Alive:
		return inUse(fmt.Sprintf("creator %d is alive", h.CreatorPID))
	case sys.Unknown:
		return because(fmt.Sprintf("cannot tell whether creator %d lives (another PID namespace?)", h.CreatorPID), nil, ErrInUse)
	}
	return nil
}

// removeByMaps removes an object of a backend without backend.Remover when
// check accepts its header and a complete walk of /proc/*/maps finds no
// mapping: weaker than a backend's proof (a process may open it between
// the walk and the removal), and refused when any process could not be
// read.
func removeByMaps(o *object, check func([]byte, backend.Info) error) error {
	if o.bi.Temp {
		return because("backend cannot remove objects being created", nil, ErrInUse)
	}
	fresh := inspect(o.be, o.bi)
	if fresh == nil {
		return because("gone", nil, ErrNotExist)
	}
	if fresh.hdr == nil {
		return because("not a region", nil, ErrCorrupt)
	}
	if err := checkStale(o, o, fresh.hdr, false, o.bi); err != nil {
		return err
	}
	if !fresh.hasFID {
		return inUse("cannot tell whether a process maps it")
	}
	scan, err := sys.ScanMaps(map[sys.FileID]bool{fresh.fid: true})
	if err != nil || !scan.Exact() || scan.Mappers[fresh.fid] != 0 {
		return inUse("cannot prove that no process maps it")
	}
	if o.bi.ID != "" {
		if ido, ok := o.be.(backend.IDOpener); ok {
			return classify(ido.UnlinkID(o.bi.ID))
		}
	}
	return classify(o.be.Unlink(o.Key[1:]))
}

// inUse is the error of a removal refused because the region is, or may
// be, in use.
func inUse(detail string) error { return because(inUsePrefix+detail, nil, ErrInUse) }

const inUsePrefix = "in use: "
