// Command shmdemo shows the pattern shm was built for, as GEOPM uses it: an
// application process appends region enter/exit records to a record log in
// shared memory, under the region's lock, while a controller process attaches
// by key with a timeout, drains the log and prints what it saw. Then both
// clean up.
//
//	go run ./cmd/shmdemo [-key /name] [-events N] [-period 0|5ms] [-capacity N] [-gap 500us] [-timeout 5s]
//
// Nobody polls: the controller sleeps in Lock.Wait (the region's condition)
// until the application, after appending, calls Broadcast; when the log is
// full, the application sleeps in Lock.Wait the same way until the
// controller has drained it and called Broadcast. At the end the controller
// prints how many times it woke and how many records each drain took.
// With -period D both sides poll every D instead, as GEOPM's controller
// does (every 5 ms), for comparison.
//
// The controller is the process you start; it starts the application as a
// child (this same program with -role app), so the controller attaches before
// the application has created the region and waits for it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/shmgo/shm"
)

// The record log, a fixed layout in the region (like GEOPM's
// ApplicationRecordLog): a count, a done flag, then the records. Every
// field is guarded by the region's lock.
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
	Count    uint32 // records in the log, reset by the controller
	Done     uint32 // the application has appended its last record
	Total    uint64 // records appended since the start
	Capacity uint32 // records the application puts in the log before it waits for a drain
	Full     uint32 // times the application found the log full
	Records  [maxRecords]record
}

// burst is how many records the application appends per holding of the lock.
const burst = 4

var (
	role     = flag.String("role", "controller", "controller or app (the controller starts the app)")
	key      = flag.String("key", "", "the region's key (default: /shmdemo-<pid>)")
	events   = flag.Int("events", 400, "records the application appends")
	period   = flag.Duration("period", 0, "0: wait in Lock.Wait for the other side's Broadcast; >0: poll the log every period instead (GEOPM: 5ms)")
	capacity = flag.Int("capacity", maxRecords, "records the log holds before the application waits for a drain (1 to 1024)")
	gap      = flag.Duration("gap", 500*time.Microsecond, "the application's pause between bursts of 4 records")
	wait     = flag.Duration("timeout", 5*time.Second, "how long the controller waits for the application's region, and either side for the other")
)

func main() {
	flag.Parse()
	if *key == "" {
		*key = fmt.Sprintf("/shmdemo-%d", os.Getpid())
	}
	var err error
	switch {
	case *capacity < 1 || *capacity > maxRecords:
		err = fmt.Errorf("-capacity %d: want 1 to %d", *capacity, maxRecords)
	case *events < 0:
		err = fmt.Errorf("-events %d: want 0 or more", *events)
	case *role == "controller":
		err = controller()
	case *role == "app":
		err = app()
	default:
		err = fmt.Errorf("unknown role %q", *role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "shmdemo:", err)
		os.Exit(1)
	}
}

// how says how the demo waits, for its output.
func how() string {
	if *period > 0 {
		return fmt.Sprintf("polling every %v", *period)
	}
	return "sleeping in Lock.Wait until the other side's Broadcast"
}

// await waits, holding *l, until ok() holds (it is called with the lock
// held), giving up after -timeout or when ctx ends. It sleeps in Lock.Wait,
// or with -period polls: it unlocks, sleeps for the period and locks again.
// It returns holding the lock (a new holding when polling, in *l) unless
// the error says the lock was lost, and counts the times it woke: wakeups,
// and idle, those that found ok() still false.
func await(ctx context.Context, r *shm.Region, l *shm.Lock, ok func() bool) (wakeups, idle int, err error) {
	ctx, cancel := context.WithTimeout(ctx, *wait)
	defer cancel()
	for !ok() {
		if *period > 0 {
			if err := l.Unlock(); err != nil {
				return wakeups, idle, err
			}
			select {
			case <-time.After(*period):
			case <-ctx.Done():
			}
			if *l, err = r.Lock(); err != nil {
				return wakeups, idle, err
			}
		} else {
			err = l.Wait(ctx)
		}
		wakeups++
		if ok() {
			return wakeups, idle, nil
		}
		idle++
		if err == nil {
			err = ctx.Err()
		}
		if err != nil {
			// Lock.Wait returns holding the lock but after Close; the
			// demo never closes while waiting.
			return wakeups, idle, err
		}
	}
	return wakeups, idle, nil
}

// app owns the region: it creates it, appends enter/exit records under the
// lock and broadcasts after each burst; when the log is full it waits for
// the controller's drain. At the end it marks the log done and waits for the
// last drain.
func app() error {
	r, err := shm.Create(*key, int(unsafe.Sizeof(recordLog{})))
	if err != nil {
		return err
	}
	defer r.Close()
	defer r.Unlink() // GEOPM unlinks once everyone has attached; here, at the end
	lg, err := shm.View[recordLog](r, 0)
	if err != nil {
		return err
	}
	// internal/nstest matches this line to its end.
	fmt.Printf("app        pid %d: created %s (%d bytes, backend %s)\n", os.Getpid(), r.Key(), r.Size(), r.Backend())
	fmt.Printf("app        pid %d: appending %d records in bursts of %d to a log of %d, %s\n", os.Getpid(), *events, burst, *capacity, how())
	ctx := context.Background()
	capa := uint32(*capacity)
	pid := int32(os.Getpid())
	var waits, wakeups int
	for i := 0; i < *events; {
		l, err := r.Lock()
		if err != nil {
			return err
		}
		lg.Capacity = capa
		if lg.Count >= capa {
			lg.Full++
			waits++
			w, _, err := await(ctx, r, &l, func() bool { return lg.Count < capa })
			wakeups += w
			if err != nil {
				l.Unlock()
				return fmt.Errorf("waiting for the controller to drain the full log: %w", err)
			}
		}
		for n := 0; n < burst && i < *events && lg.Count < capa; n++ {
			ev := int32(eventEnter)
			if i%2 == 1 {
				ev = eventExit
			}
			lg.Records[lg.Count] = record{Time: time.Now().UnixNano(), PID: pid, Event: ev, Region: 0x1000 + uint64(i/2%8)}
			lg.Count++
			lg.Total++
			i++
		}
		if err := l.Unlock(); err != nil {
			return err
		}
		// After the Unlock, so that the controller it wakes finds the lock
		// free. With nobody waiting (polling) it makes no system call.
		if err := r.Broadcast(); err != nil {
			return err
		}
		if *gap > 0 {
			time.Sleep(*gap)
		}
	}
	l, err := r.Lock()
	if err != nil {
		return err
	}
	lg.Done = 1
	if err := l.Unlock(); err != nil {
		return err
	}
	if err := r.Broadcast(); err != nil {
		return err
	}
	// Wait for the controller to drain the last records.
	if l, err = r.Lock(); err != nil {
		return err
	}
	w, _, err := await(ctx, r, &l, func() bool { return lg.Count == 0 })
	wakeups += w
	l.Unlock()
	if err != nil {
		return fmt.Errorf("waiting for the last drain: %w", err)
	}
	fmt.Printf("app        pid %d: appended %d records; found the log full %d times; wake-ups waiting for drains (the last one included): %d; unlinking and closing\n",
		os.Getpid(), *events, waits, wakeups)
	return nil
}

// controller starts the application, attaches with a timeout, and drains
// the log whenever the application says it appended, until it is done.
func controller() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, "-role", "app", "-key", *key, "-events", fmt.Sprint(*events), "-period", period.String(),
		"-capacity", fmt.Sprint(*capacity), "-gap", gap.String(), "-timeout", wait.String())
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	// When the application exits, a wait for it ends at once.
	ctx, cancel := context.WithCancelCause(context.Background())
	var appErr error
	appDone := make(chan struct{})
	go func() {
		appErr = cmd.Wait()
		cancel(errors.New("the application exited"))
		close(appDone)
	}()
	fmt.Printf("controller pid %d: started app pid %d, attaching to %s (timeout %v)\n", os.Getpid(), cmd.Process.Pid, *key, *wait)
	r, err := shm.Open(*key, *wait)
	if err != nil {
		cmd.Process.Kill()
		<-appDone
		return err
	}
	defer r.Close()
	lg, err := shm.View[recordLog](r, 0)
	if err != nil {
		cmd.Process.Kill()
		<-appDone
		return err
	}
	// internal/nstest matches this line to its end.
	fmt.Printf("controller pid %d: attached to %s (%d bytes, backend %s)\n", os.Getpid(), r.Key(), r.Size(), r.Backend())
	fmt.Printf("controller pid %d: draining the log, %s\n", os.Getpid(), how())

	var seen, enters, exits, wakeups, idle int
	var sizes []int            // records per drain
	var delays []time.Duration // from the oldest record's append to its drain
	batch := make([]record, 0, maxRecords)
	for {
		l, err := r.Lock()
		if err != nil {
			return err
		}
		w, id, werr := await(ctx, r, &l, func() bool { return lg.Count > 0 || lg.Done != 0 })
		wakeups += w
		idle += id
		if werr != nil {
			l.Unlock()
			<-appDone
			if ctx.Err() != nil {
				return fmt.Errorf("waiting for records: %v (%v): %w", context.Cause(ctx), appErr, werr)
			}
			return fmt.Errorf("waiting for records: %w", werr)
		}
		batch = append(batch[:0], lg.Records[:lg.Count]...)
		lg.Count = 0
		done := lg.Done != 0
		full := lg.Full
		if err := l.Unlock(); err != nil {
			return err
		}
		if len(batch) > 0 {
			// The application may be waiting for room.
			if err := r.Broadcast(); err != nil {
				return err
			}
			delays = append(delays, time.Since(time.Unix(0, batch[0].Time)))
			sizes = append(sizes, len(batch))
			seen += len(batch)
			for _, rec := range batch {
				if rec.Event == eventEnter {
					enters++
				} else {
					exits++
				}
			}
			if len(sizes) <= 3 || done {
				fmt.Printf("controller: drain %3d: %4d records, first: %s (wake-ups so far %d; log found full %d times so far)\n",
					len(sizes), len(batch), describe(batch[0]), wakeups, full)
			}
		}
		if done && len(batch) == 0 {
			break
		}
	}
	<-appDone
	if appErr != nil {
		return fmt.Errorf("app: %w", appErr)
	}
	fmt.Printf("controller: saw %d records (%d enter, %d exit) in %d drains; app reported %d\n", seen, enters, exits, len(sizes), lg.Total)
	fmt.Printf("controller: %d wake-ups (%s), %d of them finding nothing new\n", wakeups, how(), idle)
	if len(sizes) > 0 {
		fmt.Printf("controller: records per drain: min %d, median %d, max %d (log capacity %d)\n",
			slices.Min(sizes), median(sizes), slices.Max(sizes), *capacity)
		fmt.Printf("controller: from append to drain (a drain's oldest record): median %v, max %v\n",
			median(delays).Round(time.Microsecond), slices.Max(delays).Round(time.Microsecond))
	}
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

// median is the middle value of xs (the upper one of an even count).
func median[T int | time.Duration](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func describe(r record) string {
	ev := "enter"
	if r.Event == eventExit {
		ev = "exit "
	}
	return fmt.Sprintf("%s region %#x pid %d at %s", ev, r.Region, r.PID, strings.TrimSuffix(time.Unix(0, r.Time).Format("15:04:05.000000"), "0"))
}
