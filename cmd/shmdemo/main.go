// Command shmdemo shows the pattern shm was built for, as GEOPM uses it: an
// application process appends region enter/exit records to a record log in
// shared memory, under the region's lock, while a controller process attaches
// by key with a timeout, drains the log every few milliseconds and prints what
// it saw. Then both clean up.
//
//	go run ./cmd/shmdemo [-key /name] [-events N] [-period 5ms]
//
// The controller is the process you start; it starts the application as a
// child (this same program with -role app), so the controller attaches before
// the application has created the region and waits for it.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/shmgo/shm"
)

// The record log, a fixed layout in the region (like GEOPM's
// ApplicationRecordLog): a count, a done flag, then the records.
const maxRecords = 1024

type record struct {
	Time   int64  // Unix nanoseconds
	PID    int32  // the application process
	Event  int32  // eventEnter or eventExit
	Region uint64 // region hash
}

const (
	eventEnter = 1
	eventExit  = 2
)

type recordLog struct {
	Count   uint32 // records in the log, reset by the controller
	Done    uint32 // the application has appended its last record
	Total   uint64 // records appended since the start
	Records [maxRecords]record
}

func logOf(r *shm.Region) *recordLog { return (*recordLog)(r.Pointer()) }

var (
	role   = flag.String("role", "controller", "controller or app (the controller starts the app)")
	key    = flag.String("key", "", "the region's key (default: /shmdemo-<pid>)")
	events = flag.Int("events", 400, "records the application appends")
	period = flag.Duration("period", 5*time.Millisecond, "how often the controller drains the log")
	wait   = flag.Duration("timeout", 5*time.Second, "how long the controller waits for the application's region")
)

func main() {
	flag.Parse()
	if *key == "" {
		*key = fmt.Sprintf("/shmdemo-%d", os.Getpid())
	}
	var err error
	switch *role {
	case "controller":
		err = controller()
	case "app":
		err = app()
	default:
		err = fmt.Errorf("unknown role %q", *role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "shmdemo:", err)
		os.Exit(1)
	}
}

// app owns the region: it creates it, appends enter/exit records under the
// lock, marks the log done, and waits for the controller to drain it.
func app() error {
	size := int(unsafe.Sizeof(recordLog{}))
	r, err := shm.Create(*key, size)
	if err != nil {
		return err
	}
	defer r.Close()
	defer r.Unlink() // GEOPM unlinks once everyone has attached; here, at the end
	fmt.Printf("app        pid %d: created %s (%d bytes, backend %s)\n", os.Getpid(), r.Key(), r.Size(), r.Backend())
	lg := logOf(r)
	pid := int32(os.Getpid())
	for i := 0; i < *events; {
		l, err := r.Lock()
		if err != nil {
			return err
		}
		// Append a burst of enter/exit pairs when there is room.
		for n := 0; n < 4 && i < *events && lg.Count < maxRecords; n++ {
			ev := int32(eventEnter)
			if i%2 == 1 {
				ev = eventExit
			}
			lg.Records[lg.Count] = record{Time: time.Now().UnixNano(), PID: pid, Event: ev, Region: 0x1000 + uint64(i/2%8)}
			lg.Count++
			lg.Total++
			i++
		}
		l.Unlock()
		time.Sleep(500 * time.Microsecond)
	}
	l, err := r.Lock()
	if err != nil {
		return err
	}
	atomic.StoreUint32(&lg.Done, 1)
	l.Unlock()
	// Wait for the controller to drain the last records.
	for deadline := time.Now().Add(*wait); time.Now().Before(deadline); time.Sleep(*period) {
		l, err := r.Lock()
		if err != nil {
			return err
		}
		empty := lg.Count == 0
		l.Unlock()
		if empty {
			break
		}
	}
	fmt.Printf("app        pid %d: appended %d records, unlinking and closing\n", os.Getpid(), *events)
	return nil
}

// controller starts the application, attaches with a timeout, and drains
// the log every period until the application is done.
func controller() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, "-role", "app", "-key", *key, "-events", fmt.Sprint(*events), "-period", period.String())
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	fmt.Printf("controller pid %d: started app pid %d, attaching to %s (timeout %v)\n", os.Getpid(), cmd.Process.Pid, *key, *wait)
	r, err := shm.Open(*key, *wait)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return err
	}
	defer r.Close()
	fmt.Printf("controller pid %d: attached to %s (%d bytes, backend %s)\n", os.Getpid(), r.Key(), r.Size(), r.Backend())

	lg := logOf(r)
	var seen, drains, enters, exits int
	batch := make([]record, 0, maxRecords)
	for {
		l, err := r.Lock()
		if err != nil {
			return err
		}
		batch = append(batch[:0], lg.Records[:lg.Count]...)
		lg.Count = 0
		done := atomic.LoadUint32(&lg.Done) == 1
		l.Unlock()

		if len(batch) > 0 {
			drains++
			seen += len(batch)
			for _, rec := range batch {
				if rec.Event == eventEnter {
					enters++
				} else {
					exits++
				}
			}
			if drains <= 3 || done {
				fmt.Printf("controller: drain %3d: %3d records, first: %s\n", drains, len(batch), describe(batch[0]))
			}
		}
		if done && len(batch) == 0 {
			break
		}
		time.Sleep(*period)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("app: %w", err)
	}
	fmt.Printf("controller: saw %d records (%d enter, %d exit) in %d drains; app reported %d\n", seen, enters, exits, drains, lg.Total)
	if seen != *events {
		return fmt.Errorf("saw %d records, want %d", seen, *events)
	}
	// The app unlinked the key on its way out: a new user cannot attach.
	if _, err := shm.Open(*key, 0); !errors.Is(err, shm.ErrNotExist) {
		return fmt.Errorf("after cleanup, Open %s: %v (want ErrNotExist)", *key, err)
	}
	fmt.Printf("controller: %s is gone; done\n", *key)
	return nil
}

func describe(r record) string {
	ev := "enter"
	if r.Event == eventExit {
		ev = "exit "
	}
	return fmt.Sprintf("%s region %#x pid %d at %s", ev, r.Region, r.PID, strings.TrimSuffix(time.Unix(0, r.Time).Format("15:04:05.000000"), "0"))
}
