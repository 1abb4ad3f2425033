package main

import (
	"bytes"
	"strings"
	"testing"

	_ "github.com/shmgo/shm/internal/tposix" // a third-party backend, registered as "tposix"
)

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
