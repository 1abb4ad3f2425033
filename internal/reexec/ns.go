package reexec

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// envOwnNS marks a test binary that OwnNamespaces has re-executed.
const envOwnNS = "SHMGO_REEXEC_OWNNS"

// OwnNamespaces re-executes the test binary, with the same arguments, in
// new namespaces of the kinds in flags (syscall.CLONE_NEWIPC, say) and
// exits with its status. It returns at once, doing nothing, in a child of
// Start or Command, in the re-executed binary, and where this process is
// not root (it cannot make the namespaces); it returns, saying so, when
// the kernel refuses them. Call it first in TestMain:
// what the tests make in those namespaces (SysV segments, which outlive
// their processes) goes with them, even when the binary is killed before
// its cleanups run. The re-executed binary dies with this one.
func OwnNamespaces(flags uintptr) {
	if IsChild() || os.Getenv(envOwnNS) != "" || os.Geteuid() != 0 {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "reexec: OwnNamespaces:", err)
		os.Exit(2)
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envOwnNS+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: flags, Pdeathsig: syscall.SIGKILL}
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		os.Exit(0)
	case errors.As(err, &ee) && ee.Exited():
		os.Exit(ee.ExitCode())
	case errors.As(err, &ee):
		fmt.Fprintln(os.Stderr, "reexec: OwnNamespaces: the test binary", ee)
		os.Exit(2)
	}
	// The kernel refused the namespaces: the tests run here, as without root.
	fmt.Fprintln(os.Stderr, "reexec: OwnNamespaces: the tests run in this process's namespaces:", err)
}
