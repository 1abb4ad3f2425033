package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/shmgo/shm/backend"
	"github.com/shmgo/shm/backend/posix"
)

// tposix is a third-party backend (the POSIX one under another name),
// registered as a package outside the module would: -backend takes it, and
// so do the worker processes (this test binary, re-executed).
type tposix struct{ *posix.Backend }

func (tposix) Name() string { return "tposix" }

func init() {
	backend.Register("tposix", func(arg string) (backend.Backend, error) {
		if arg == "" {
			return tposix{posix.New()}, nil
		}
		return tposix{posix.NewDir(arg)}, nil
	})
}

func TestThirdPartyBackend(t *testing.T) {
	if names := strings.Join(backendNames(), " "); names != "posix sysv file memfd tposix auto" {
		t.Errorf("backendNames() = %s", names)
	}
	for _, w := range []string{"create", "contend"} {
		var out, errs bytes.Buffer
		if code := run([]string{"-backend", "tposix", "-workload", w, "-n", "20"}, &out, &errs); code != 0 {
			t.Fatalf("-backend tposix -workload %s: exit status %d: %s", w, code, errs.String())
		}
		line := strings.TrimSpace(out.String())
		if !lineRE.MatchString(line) || !strings.HasPrefix(line, "workload="+w+" backend=tposix ") {
			t.Errorf("-backend tposix -workload %s: %q", w, line)
		}
	}
}
