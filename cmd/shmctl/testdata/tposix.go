// This file is not part of shmctl: TestThirdPartyBackend builds shmctl with
// it (go build -overlay), as a user would build shmctl with a backend of
// their own, to check that --backend and keys take any registered backend.
// The backend's default directory is $TPOSIX_DIR, so that the test lists
// only its own regions.

package main

import _ "github.com/shmgo/shm/internal/tposix" // registers "tposix"
