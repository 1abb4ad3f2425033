package shm

import (
	"testing"

	"github.com/shmgo/shm/internal/layout"
)

// internal/layout agrees with header.go where the compiler cannot check
// it (header.go checks the offsets and sizes).
func TestLayoutAgrees(t *testing.T) {
	if string(magic[:]) != layout.Magic {
		t.Errorf("magic %q, layout.Magic %q", magic[:], layout.Magic)
	}
	for _, users := range []int{1, 2, 3, 4, DefaultUsers, MaxUsers} {
		if got, want := layout.DataOffset(users), dataOffset(users); got != want {
			t.Errorf("layout.DataOffset(%d) = %d, want %d", users, got, want)
		}
	}
}
