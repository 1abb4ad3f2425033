package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// buildWith builds shmctl with the extra source file src, as a program of
// the package, and returns the binary.
func buildWith(t *testing.T, src string) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	overlay := filepath.Join(dir, "overlay.json")
	o, _ := json.Marshal(map[string]map[string]string{"Replace": {
		filepath.Join(wd, "zz_"+filepath.Base(src)): filepath.Join(wd, src),
	}})
	if err := os.WriteFile(overlay, o, 0o600); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "shmctl")
	build := exec.Command("go", "build", "-overlay", overlay, "-o", exe, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building shmctl with %s: %v\n%s", src, err, out)
	}
	return exe
}

// A shmctl built with a third-party backend takes it in --backend and in
// keys; the stock one refuses its name as a usage error.
func TestThirdPartyBackend(t *testing.T) {
	if testing.Short() {
		t.Skip("builds shmctl again")
	}
	k := key("tposix")
	if r := run(t, "stat", "tposix:"+k); r.code != exitUsage || !strings.Contains(r.stderr, `unknown backend "tposix"`) {
		t.Errorf("stock shmctl stat tposix:KEY: %v", r)
	}
	if r := run(t, "ls", "--backend", "tposix"); r.code != exitUsage || !strings.Contains(r.stderr, "want one of posix, sysv, memfd, file") {
		t.Errorf("stock shmctl ls --backend tposix: %v", r)
	}

	exe := buildWith(t, "testdata/tposix.go")
	dir, other := privateDir(t), privateDir(t)
	tp := func(args ...string) result {
		t.Helper()
		cmd := exec.Command(exe, args...)
		cmd.Env = append(os.Environ(), "TPOSIX_DIR="+dir)
		return runCmd(t, cmd)
	}
	if r := tp("help", "ls"); !strings.Contains(r.stdout, "tposix (repeatable") {
		t.Errorf("help ls does not offer tposix: %v", r)
	}
	if r := tp("create", "--backend", "tposix", k, "4096"); r.code != 0 {
		t.Fatalf("create --backend tposix: %v", r)
	}
	if _, err := os.Stat(filepath.Join(dir, k)); err != nil {
		t.Fatalf("create --backend tposix made no %s: %v", filepath.Join(dir, k), err)
	}
	if r := tp("create", "tposix:"+other+k, "64"); r.code != 0 {
		t.Fatalf("create tposix:DIR/KEY: %v", r)
	}
	if _, err := os.Stat(filepath.Join(other, k)); err != nil {
		t.Fatalf("create tposix:%s%s: %v", other, k, err)
	}
	r := tp("ls", "--backend", "tposix", "--json")
	var infos []struct{ Key, Backend string }
	if err := json.Unmarshal([]byte(r.stdout), &infos); r.code != 0 || err != nil || len(infos) != 1 || infos[0].Key != k || infos[0].Backend != "tposix" {
		t.Errorf("ls --backend tposix: %v (%v, %+v)", r, err, infos)
	}
	if r := tp("stat", "tposix:"+k); r.code != 0 || !strings.Contains(r.stdout, "tposix") {
		t.Errorf("stat tposix:KEY: %v", r)
	}
	if r := tp("stat", "tposix:"+other+k); r.code != 0 || !strings.Contains(r.stdout, "64") {
		t.Errorf("stat tposix:DIR/KEY: %v", r)
	}
	for _, arg := range []string{"tposix:" + k, "tposix:" + other + k} {
		if r := tp("rm", arg); r.code != 0 {
			t.Errorf("rm %s: %v", arg, r)
		}
	}
	for _, d := range []string{dir, other} {
		if _, err := os.Stat(filepath.Join(d, k)); !os.IsNotExist(err) {
			t.Errorf("rm left %s: %v", filepath.Join(d, k), err)
		}
	}
}
