package conformance

import (
	"errors"
	"os"
	"strings"

	"github.com/shmgo/shm"
	"github.com/shmgo/shm/backend"
)

func init() { roles["squat"] = roleSquat }

// roleSquat creates the region, mode 0666, as the user it runs as, and
// holds it until told to go.
func roleSquat(c *childCtx) error {
	r, err := shm.Create(c.key, 64, c.opt(), shm.WithMode(0o666))
	if err != nil {
		return err
	}
	defer r.Close()
	defer r.Unlink()
	c.say("created")
	c.hear()
	return nil
}

// testSquatter: a region that another uid put under a key (a squatter
// waiting for a root service to attach) is refused by Open with
// ErrUntrustedOwner, on every backend, and accepted WithTrustedUIDs or
// WithAnyOwner. The squatter is a child of uid 65534 where the backend lets
// it create (memfd, sysv), else a region whose owner was changed to 65534.
func testSquatter(h *harness) {
	if os.Geteuid() != 0 {
		h.t.Skip("skipped: needs root to make a region of another uid (CI runs as root)")
	}
	key := h.Key("squat")
	var done func()
	ch := h.start("squat", key, nil, asOther)
	if ev, ok := ch.Next(); ok && ev == "created" {
		done = func() { ch.Send("go"); ch.Wait() }
	} else {
		// The backend's directory is not writable by that user (file):
		// make the region ours, then give it to the squatter.
		<-ch.Done()
		r := h.create(key, 64, shm.WithMode(0o666))
		h.ok(r.Chown(65534, 65534), "Chown to the squatter (the child could not create: "+ev+")")
		done = func() { r.Close() }
	}
	defer done()
	// Package shm refuses the squatter by the segment's backend.Owned,
	// unless the backend judges owners itself (backend.Trusts) and
	// refuses already. Without either, package shm cannot keep what
	// WithTrustedUIDs promises on every backend.
	if seg, err := h.b.Open(strings.TrimPrefix(key, "/")); err == nil {
		_, owned := seg.(backend.Owned)
		seg.Close()
		if !owned {
			h.t.Fatalf("%s's segments are no backend.Owned, and its Open does not refuse an untrusted owner (backend.ErrUntrusted): package shm cannot refuse a squatter's region", h.b.Name())
		}
	} else if !errors.Is(err, backend.ErrUntrusted) {
		h.t.Fatalf("backend Open of the squatter's region: %v", err)
	}
	_, err := shm.Open(key, 0, h.Opt())
	h.is(err, shm.ErrUntrustedOwner)
	for _, opt := range []shm.Option{shm.WithTrustedUIDs(65534), shm.WithAnyOwner()} {
		u, err := shm.Open(key, 0, h.Opt(), opt)
		h.ok(err, "Open of a trusted owner's region")
		h.ok(u.Close(), "Close")
	}
}

// testInitPanics: a WithInit function that panics leaves nothing behind
// (object, temporary object, descriptor, socket); the panic goes on, and
// the key is free at once.
func testInitPanics(h *harness) {
	key := h.Key("initpanic")
	fds0, ours0 := h.fds(), h.badOurs()
	func() {
		defer func() {
			if p := recover(); p != "init panics" {
				h.t.Fatalf("recovered %v, want the init's panic", p)
			}
		}()
		shm.Create(key, 64, h.Opt(), shm.WithInit(func([]byte) error { panic("init panics") }))
		h.t.Fatal("Create returned from a panicking init")
	}()
	h.badNothingLeft("after a panicking init", fds0, ours0)
	r, err := shm.Create(key, 64, h.Opt())
	h.ok(err, "Create after a panicking init")
	h.ok(r.Unlink(), "Unlink")
	h.ok(r.Close(), "Close")
	h.track(key + "-e")
	_, err = shm.Create(key+"-e", 64, h.Opt(), shm.WithInit(func([]byte) error { return errors.New("init fails") }))
	if err == nil || err.Error() == "" {
		h.t.Fatal("Create with a failing init succeeded")
	}
	h.badNothingLeft("after a failing init", fds0, ours0)
}
