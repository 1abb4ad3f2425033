package main

import (
	"bytes"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shmgo/shm/internal/reexec"
)

// The workers re-execute the test binary (internal/reexec), which plays
// their roles.
func TestMain(m *testing.M) {
	reexec.Main()
	os.Exit(m.Run())
}

var lineRE = regexp.MustCompile(`^workload=([a-z]+) backend=([a-z]+) size=([0-9]+) ns_per_op=([0-9.]+)( [a-zA-Z_][a-zA-Z0-9_]*=[^ ]+)*$`)

// TestWorkloads runs every workload briefly on each backend and checks
// the output: one line per workload in the documented format, contend's
// total equal to expected, fill's and createwrite's bandwidth, notify's and
// cond's percentiles.
func TestWorkloads(t *testing.T) {
	for _, be := range backendNames() {
		t.Run(be, func(t *testing.T) {
			var out, errs bytes.Buffer
			code := run([]string{"-backend", be, "-workload", "all", "-n", "20", "-size", "65536", "-goroutines", "3"}, &out, &errs)
			if code != 0 {
				t.Fatalf("exit status %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errs.String())
			}
			seen := map[string]bool{}
			for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				m := lineRE.FindStringSubmatch(line)
				if m == nil {
					t.Fatalf("line %q is not in shmbench's format", line)
				}
				if m[2] != be || m[3] != "65536" {
					t.Errorf("line %q: want backend=%s size=65536", line, be)
				}
				if ns, err := strconv.ParseFloat(m[4], 64); err != nil || ns <= 0 {
					t.Errorf("line %q: ns_per_op is not a positive number", line)
				}
				f := fields(line)
				switch m[1] {
				case "contend":
					if f["total"] == "" || f["total"] != f["expected"] || f["expected"] != "40" {
						t.Errorf("line %q: want total=expected=40 (2 processes x 20)", line)
					}
					if th, _ := strconv.Atoi(f["threads"]); th < 1 {
						t.Errorf("line %q: no thread count", line)
					}
				case "fill":
					if g, _ := strconv.ParseFloat(f["GBps"], 64); g <= 0 {
						t.Errorf("line %q: no bandwidth", line)
					}
				case "lock":
					if f["cpu_ns_per_op"] == "" {
						t.Errorf("line %q: no cpu_ns_per_op", line)
					}
				case "notify", "cond":
					p50, err50 := strconv.ParseInt(f["p50_ns"], 10, 64)
					p99, err99 := strconv.ParseInt(f["p99_ns"], 10, 64)
					if err50 != nil || err99 != nil || p50 <= 0 || p99 < p50 {
						t.Errorf("line %q: want 0 < p50_ns <= p99_ns", line)
					}
				}
				seen[m[1]] = true
			}
			for _, w := range workloads {
				if w.inAll && !seen[w.name] {
					t.Errorf("no line for workload %s", w.name)
				}
			}
		})
	}
}

func TestCreateWrite(t *testing.T) {
	var out, errs bytes.Buffer
	if code := run([]string{"-workload", "createwrite", "-n", "2", "-size", "3000000", "-chunk", "100000"}, &out, &errs); code != 0 {
		t.Fatalf("exit status %d: %s", code, errs.String())
	}
	line := strings.TrimSpace(out.String())
	if !lineRE.MatchString(line) || !strings.HasPrefix(line, "workload=createwrite backend=posix size=3000000 ") {
		t.Fatalf("output %q", line)
	}
}

func TestBadArguments(t *testing.T) {
	for _, args := range [][]string{
		{"-backend", "nosuch"},
		{"-workload", "nosuch"},
		{"-size", "0"},
		{"-procs", "0"},
		{"extra"},
	} {
		var out, errs bytes.Buffer
		if code := run(args, &out, &errs); code != 2 {
			t.Errorf("%q: exit status %d, want 2", args, code)
		}
		if out.Len() != 0 {
			t.Errorf("%q: printed %q", args, out.String())
		}
	}
}

func fields(line string) map[string]string {
	f := map[string]string{}
	for _, kv := range strings.Fields(line) {
		if k, v, ok := strings.Cut(kv, "="); ok {
			f[k] = v
		}
	}
	return f
}

func TestPercentile(t *testing.T) {
	s := make([]time.Duration, 200)
	for i := range s {
		s[i] = time.Duration(i + 1)
	}
	for _, c := range []struct {
		n, p int
		want time.Duration
	}{
		{200, 50, 100}, {200, 99, 198}, {200, 100, 200}, {1, 50, 1}, {1, 99, 1}, {20, 99, 20}, {20, 50, 10},
	} {
		if got := percentile(s[:c.n], c.p); got != c.want {
			t.Errorf("percentile(1..%d, %d) = %d, want %d", c.n, c.p, got, c.want)
		}
	}
}
