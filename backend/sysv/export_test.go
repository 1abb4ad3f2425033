package sysv

import "io/fs"

// Hooks for the external tests (package sysv_test, which imports package
// shm, which imports this package).

// NewWithKeyFunc returns a backend that maps names to key_t values with f,
// to force hash collisions.
func NewWithKeyFunc(f func(name string) int) *Backend { return &Backend{keyFn: f} }

// SetMadvise replaces madvise until the returned function is called.
func SetMadvise(f func([]byte, int) error) (restore func()) {
	old := madvise
	madvise = f
	return func() { madvise = old }
}

// ParseList is parseList.
var ParseList = parseList

// ProcFile is procFile.
const ProcFile = procFile

// Chmod is chmod: it sets the permission bits of the segment under name's
// key, exactly.
func (b *Backend) Chmod(name string, perm fs.FileMode) error { return b.chmod(name, perm) }
