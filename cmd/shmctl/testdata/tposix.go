// This file is not part of shmctl: TestThirdPartyBackend builds shmctl with
// it (go build -overlay), as a user would build shmctl with a backend of
// their own, to check that --backend and keys take any registered backend.

package main

import (
	"os"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/posix"
)

// tposix is the POSIX backend under another name. Its default directory is
// $TPOSIX_DIR, so that the test lists only its own regions.
type tposix struct{ *posix.Backend }

func (tposix) Name() string { return "tposix" }

func init() {
	backend.Register("tposix", func(arg string) (backend.Backend, error) {
		if arg == "" {
			arg = os.Getenv("TPOSIX_DIR")
		}
		return tposix{posix.NewDir(arg)}, nil
	})
}
