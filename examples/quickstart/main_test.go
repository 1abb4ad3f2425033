package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The quick start as the README runs it: the owner, then the user, as two
// processes. They keep their region in a directory of this test's
// (SHM_BACKEND), so that two runs at once do not meet.
func TestQuickstart(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("SHM_BACKEND", "file:"+dir)
	exe := filepath.Join(t.TempDir(), "quickstart")
	if out, err := exec.Command("go", "build", "-o", exe, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	var ownerOut, userOut bytes.Buffer
	owner := exec.Command(exe, "owner")
	owner.Stdout, owner.Stderr = &ownerOut, &ownerOut
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	user := exec.Command(exe, "user")
	user.Stdout, user.Stderr = &userOut, &userOut
	if err := user.Run(); err != nil {
		owner.Process.Kill()
		t.Fatalf("user: %v\n%s", err, userOut.String())
	}
	if err := owner.Wait(); err != nil {
		t.Fatalf("owner: %v\n%s", err, ownerOut.String())
	}
	if got := userOut.String(); got != "user: the owner says \"hello from the owner\"\n" {
		t.Errorf("user printed %q", got)
	}
	if got := ownerOut.String(); got != "owner: the user says \"hello back\"\n" {
		t.Errorf("owner printed %q", got)
	}
	// The owner unlinked its key: a second run starts afresh.
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("left behind after the owner exited: %v", left)
	}
}

// The README shows this program as it is.
func TestReadmeShowsIt(t *testing.T) {
	src, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const start, end = "<!-- quickstart: examples/quickstart/main.go -->\n```go\n", "```\n"
	i := strings.Index(string(readme), start)
	if i < 0 {
		t.Fatalf("README.md has no %q", start)
	}
	block := string(readme[i+len(start):])
	block = block[:strings.Index(block, end)]
	if block != string(src) {
		t.Fatal("README.md's quick start differs from examples/quickstart/main.go: copy the file into it")
	}
}
