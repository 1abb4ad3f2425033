// Package fdseg is the segment of the objects that a descriptor holds open
// (backend/posix's and backend/file's files, package shm's regions opened
// from a descriptor): a shared mapping of the object and the descriptor,
// which Close unmaps and closes. Backends add what is theirs (a name, a
// lock, seals) by embedding it.
package fdseg

import (
	"io/fs"

	"golang.org/x/sys/unix"
)

// Segment is a shared mapping of an object and the descriptor that holds
// it open. It implements backend.Segment, backend.Fder and backend.Chowner.
type Segment struct {
	fd      int // -1 after Close
	mem     []byte
	path    string       // names the object in errors
	release func() error // run by Close after the descriptor is closed, or nil
}

// Map maps the first length bytes of fd with protection prot, shared
// (MAP_SHARED, with the extra flags), into a Segment that owns fd from then
// on; a length of 0 maps nothing (Bytes is nil). path names the object in
// errors. When the mapping fails, Map closes fd and returns an
// *fs.PathError of op "mmap".
func Map(fd int, path string, length int64, prot, flags int) (*Segment, error) {
	s := &Segment{fd: fd, path: path}
	if length > 0 {
		mem, err := unix.Mmap(fd, 0, int(length), prot, unix.MAP_SHARED|flags)
		if err != nil {
			unix.Close(fd)
			return nil, &fs.PathError{Op: "mmap", Path: path, Err: err}
		}
		s.mem = mem
	}
	return s, nil
}

// OnClose makes Close call release once it has unmapped the segment and
// closed the descriptor: for what announces the mapping and must outlive it
// (backend/file's flock). An error from release is Close's error, unless
// unmapping or closing failed first.
func (s *Segment) OnClose(release func() error) { s.release = release }

// Path is what names the object in errors.
func (s *Segment) Path() string { return s.path }

// Bytes implements backend.Segment: the mapping, nil after Close.
func (s *Segment) Bytes() []byte { return s.mem }

// Fd implements backend.Fder: the mapped descriptor, ^uintptr(0) after
// Close.
func (s *Segment) Fd() uintptr { return uintptr(s.fd) }

// Chown implements backend.Chowner (fchown). After Close it fails with an
// error matching fs.ErrClosed.
func (s *Segment) Chown(uid, gid int) error {
	if s.fd < 0 {
		return &fs.PathError{Op: "fchown", Path: s.path, Err: fs.ErrClosed}
	}
	if err := unix.Fchown(s.fd, uid, gid); err != nil {
		return &fs.PathError{Op: "fchown", Path: s.path, Err: err}
	}
	return nil
}

// Close implements backend.Segment: it unmaps the segment, closes the
// descriptor and then runs what OnClose gave it. Closing again does
// nothing. The error is an *fs.PathError of op "close".
func (s *Segment) Close() error {
	var err error
	if s.mem != nil {
		err = unix.Munmap(s.mem)
		s.mem = nil
	}
	if s.fd >= 0 {
		if e := unix.Close(s.fd); err == nil {
			err = e
		}
		s.fd = -1
	}
	if s.release != nil {
		if e := s.release(); err == nil {
			err = e
		}
		s.release = nil
	}
	if err != nil {
		return &fs.PathError{Op: "close", Path: s.path, Err: err}
	}
	return nil
}
