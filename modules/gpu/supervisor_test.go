package gpu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// The helper process: the test binary started again with
// -test.run=^TestHelperProcess$ and SUP_HELPER=1 in its environment.
// Other SUP_HELPER_* variables choose what it does, in this order:
//
//	SUP_HELPER_ENV_PATH=path   write its environment to path, one per line
//	SUP_HELPER_TERM=ignore     ignore SIGTERM (prints "ignoring SIGTERM")
//	SUP_HELPER_TERM=trap       on SIGTERM print "got SIGTERM" and exit 0
//	                           (prints "trapping SIGTERM" first)
//	SUP_HELPER_GRANDCHILD=1    start a grandchild that ignores SIGTERM and
//	                           print "grandchild <pid>"
//	SUP_HELPER_LINES=n         print "line 0" … "line n-1", alternately on
//	                           stdout and stderr
//	SUP_HELPER_PORT=p          serve /health on 127.0.0.1:p after
//	SUP_HELPER_DELAY_MS=d      d ms; 200 while SUP_HELPER_HEALTH_PATH (if
//	                           set) exists, 503 otherwise
//	SUP_HELPER_EXIT_MS=n       exit after n ms with SUP_HELPER_EXIT_CODE
//
// and otherwise it sleeps until it is killed.
const supHelperRun = "-test.run=^TestHelperProcess$"

// TestHelperProcess is not a test: it is the child process of the
// Supervisor tests (see above) and returns at once when run as a test.
func TestHelperProcess(t *testing.T) {
	if os.Getenv("SUP_HELPER") != "1" {
		return
	}
	supHelperMain()
	os.Exit(0)
}

func supHelperMain() {
	getenv := os.Getenv
	atoi := func(name string) int {
		n, _ := strconv.Atoi(getenv(name))
		return n
	}
	if path := getenv("SUP_HELPER_ENV_PATH"); path != "" {
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(strings.Join(os.Environ(), "\n")), 0o600); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if err := os.Rename(tmp, path); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	switch getenv("SUP_HELPER_TERM") {
	case "ignore":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ignoring SIGTERM")
	case "trap":
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM)
		go func() {
			<-ch
			fmt.Println("got SIGTERM")
			os.Exit(0)
		}()
		fmt.Println("trapping SIGTERM")
	}
	if getenv("SUP_HELPER_GRANDCHILD") == "1" {
		cmd := exec.Command(os.Args[0], supHelperRun)
		cmd.Env = append(os.Environ(), "SUP_HELPER_GRANDCHILD=0", "SUP_HELPER_TERM=ignore", "SUP_HELPER_LINES=0", "SUP_HELPER_PORT=")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Println("grandchild", cmd.Process.Pid)
	}
	for i := range atoi("SUP_HELPER_LINES") {
		out := os.Stdout
		if i%2 == 1 {
			out = os.Stderr
		}
		fmt.Fprintln(out, "line", i)
	}
	if port := getenv("SUP_HELPER_PORT"); port != "" {
		go func() {
			time.Sleep(time.Duration(atoi("SUP_HELPER_DELAY_MS")) * time.Millisecond)
			healthFile := getenv("SUP_HELPER_HEALTH_PATH")
			mux := http.NewServeMux()
			mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) {
				if healthFile != "" {
					if _, err := os.Stat(healthFile); err != nil {
						w.WriteHeader(http.StatusServiceUnavailable)
						return
					}
				}
				_, _ = io.WriteString(w, "ok")
			})
			fmt.Println("serving health")
			err := http.ListenAndServe("127.0.0.1:"+port, mux)
			fmt.Fprintln(os.Stderr, "serve:", err)
			os.Exit(2)
		}()
	}
	if ms := getenv("SUP_HELPER_EXIT_MS"); ms != "" {
		time.Sleep(time.Duration(atoi("SUP_HELPER_EXIT_MS")) * time.Millisecond)
		os.Exit(atoi("SUP_HELPER_EXIT_CODE"))
	}
	for {
		time.Sleep(time.Hour)
	}
}

// supWait is how long the tests wait for something that should happen
// much sooner: it only bounds a test that fails.
const supWait = 60 * time.Second

// supEventually fails the test unless cond becomes true within supWait.
func supEventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(supWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting, after %s, for %s", supWait, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// supRecorder records a Supervisor's status changes.
type supRecorder struct {
	mu     sync.Mutex
	events []ProcStatus
}

func (r *supRecorder) record(st ProcStatus) {
	r.mu.Lock()
	r.events = append(r.events, st)
	r.mu.Unlock()
}

// of returns the changes recorded for replica id, in order.
func (r *supRecorder) of(id string) []ProcStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []ProcStatus
	for _, e := range r.events {
		if e.ID == id {
			out = append(out, e)
		}
	}
	return out
}

// waitFor waits for a change of replica id that match accepts and returns
// it.
func (r *supRecorder) waitFor(t testing.TB, id, what string, match func(ProcStatus) bool) ProcStatus {
	t.Helper()
	var got ProcStatus
	supEventually(t, id+": "+what, func() bool {
		for _, e := range r.of(id) {
			if match(e) {
				got = e
				return true
			}
		}
		return false
	})
	return got
}

// supStates is the sequence of states in events.
func supStates(events []ProcStatus) []ProcState {
	out := make([]ProcState, len(events))
	for i, e := range events {
		out[i] = e.State
	}
	return out
}

// newTestSupervisor returns a Supervisor with fast health checks (cfg's
// zero fields) whose changes go to the returned recorder; it is stopped at
// the end of the test.
func newTestSupervisor(t testing.TB, cfg SupervisorConfig) (*Supervisor, *supRecorder) {
	t.Helper()
	if cfg.HealthInterval == 0 {
		cfg.HealthInterval = 10 * time.Millisecond
	}
	if cfg.BackoffMin == 0 {
		cfg.BackoffMin = 10 * time.Millisecond
	}
	if cfg.Grace == 0 {
		cfg.Grace = 5 * time.Second
	}
	rec := &supRecorder{}
	s := NewSupervisor(cfg, zerolog.Nop(), rec.record)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), supWait)
		defer cancel()
		s.StopAll(ctx)
	})
	return s, rec
}

// supLogBuffer is a log destination safe for concurrent writes.
type supLogBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *supLogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *supLogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *supLogBuffer) has(s string) bool { return strings.Contains(b.String(), s) }

// supSpec is a ProcSpec running the helper process with env.
func supSpec(id string, env ...string) ProcSpec {
	return ProcSpec{
		ID:   id,
		Argv: []string{os.Args[0], supHelperRun},
		// Under -race a process sleeps a second at exit unless told not to.
		Env: append([]string{"SUP_HELPER=1", "GORACE=atexit_sleep_ms=0"}, env...),
	}
}

// supFreePort returns a TCP port on 127.0.0.1 that nothing listens on
// right now.
func supFreePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// supStop stops replica id and fails the test on error.
func supStop(t testing.TB, s *Supervisor, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), supWait)
	defer cancel()
	if err := s.Stop(ctx, id); err != nil {
		t.Fatalf("stop %s: %v", id, err)
	}
	if st, ok := s.Status(id); ok {
		t.Fatalf("stopped replica still known: %+v", st)
	}
}

// supHasLine says whether replica id has written line.
func supHasLine(s *Supervisor, id, line string) bool {
	return slices.Contains(s.Logs(id), line)
}

func TestSupervisorReadyAfterHealth(t *testing.T) {
	s, rec := newTestSupervisor(t, SupervisorConfig{})
	port := supFreePort(t)
	spec := supSpec("r-ready", "SUP_HELPER_PORT="+port, "SUP_HELPER_DELAY_MS=200")
	spec.HealthURL = "http://127.0.0.1:" + port + "/health"
	s.Ensure(spec)

	ready := rec.waitFor(t, "r-ready", "ready", func(e ProcStatus) bool { return e.State == ProcReady })
	if ready.PID <= 0 || ready.ReadySince.IsZero() || ready.StartedAt.IsZero() || ready.ReadySince.Before(ready.StartedAt) {
		t.Fatalf("ready status: %+v", ready)
	}
	resp, err := http.Get(spec.HealthURL)
	if err != nil {
		t.Fatalf("ready, but its health check does not answer: %v", err)
	}
	resp.Body.Close()
	st, ok := s.Status("r-ready")
	if !ok || st.State != ProcReady || st.PID != ready.PID {
		t.Fatalf("Status = %+v, %v; want ready with pid %d", st, ok, ready.PID)
	}
	if l := s.List(); len(l) != 1 || l[0].ID != "r-ready" {
		t.Fatalf("List = %+v", l)
	}
	// Ensure of a known replica leaves it alone.
	s.Ensure(supSpec("r-ready", "SUP_HELPER_EXIT_MS=0"))

	supStop(t, s, "r-ready")
	want := []ProcState{ProcStarting, ProcReady, ProcStopping, ProcStopped}
	if got := supStates(rec.of("r-ready")); !slices.Equal(got, want) {
		t.Fatalf("states %v, want %v", got, want)
	}
	if first := rec.of("r-ready")[0]; first.PID != ready.PID || !first.ReadySince.IsZero() {
		t.Fatalf("starting status: %+v", first)
	}
	if err := syscall.Kill(ready.PID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("process %d still there after Stop: %v", ready.PID, err)
	}
}

func TestSupervisorRestartsAfterExitWithGrowingBackoff(t *testing.T) {
	s, rec := newTestSupervisor(t, SupervisorConfig{BackoffMin: 10 * time.Millisecond, BackoffMax: 40 * time.Millisecond})
	s.Ensure(supSpec("r-crash", "SUP_HELPER_EXIT_MS=10", "SUP_HELPER_EXIT_CODE=3"))
	rec.waitFor(t, "r-crash", "fifth restart", func(e ProcStatus) bool { return e.Restarts == 5 && e.State == ProcBackoff })
	supStop(t, s, "r-crash")

	// Each run: starting, ready (no health URL), backoff; the delays
	// double from BackoffMin up to BackoffMax.
	events := rec.of("r-crash")
	wantDelays := []time.Duration{10, 20, 40, 40, 40, 40}
	pids := map[int]bool{}
	for run, delay := range wantDelays {
		if len(events) < 3*run+3 {
			t.Fatalf("run %d: only %d events: %+v", run, len(events), events)
		}
		start, ready, backoff := events[3*run], events[3*run+1], events[3*run+2]
		if start.State != ProcStarting || start.Restarts != run || start.PID <= 0 || pids[start.PID] {
			t.Fatalf("run %d: start %+v", run, start)
		}
		pids[start.PID] = true
		if ready.State != ProcReady || ready.PID != start.PID || ready.Restarts != run {
			t.Fatalf("run %d: ready %+v", run, ready)
		}
		if backoff.State != ProcBackoff || backoff.PID != 0 || backoff.Restarts != run ||
			backoff.LastExit != "exit status 3" || backoff.Backoff != delay*time.Millisecond {
			t.Fatalf("run %d: backoff %+v, want exit status 3 and a delay of %s", run, backoff, delay*time.Millisecond)
		}
	}
	if last := events[len(events)-1]; last.State != ProcStopped {
		t.Fatalf("last event %+v, want stopped", last)
	}
}

func TestSupervisorBackoffSchedule(t *testing.T) {
	cfg := SupervisorConfig{BackoffMin: time.Second, BackoffMax: 5 * time.Second, BackoffReset: time.Minute}.withDefaults()
	for _, c := range []struct {
		prev, healthy, want time.Duration
	}{
		{0, 0, time.Second},
		{time.Second, 0, 2 * time.Second},
		{2 * time.Second, 59 * time.Second, 4 * time.Second},
		{4 * time.Second, 0, 5 * time.Second},
		{5 * time.Second, 0, 5 * time.Second},
		{5 * time.Second, time.Minute, time.Second}, // ready long enough: start again
	} {
		if got := cfg.procBackoff(c.prev, c.healthy); got != c.want {
			t.Errorf("procBackoff(%s, %s) = %s, want %s", c.prev, c.healthy, got, c.want)
		}
	}
	def := SupervisorConfig{}.withDefaults()
	if def.Grace != 10*time.Second || def.BackoffMin != 500*time.Millisecond || def.BackoffMax != 30*time.Second ||
		def.BackoffReset != time.Minute || def.HealthInterval != time.Second || def.FailThreshold != 3 ||
		def.StartTimeout != 5*time.Minute || def.LogLines != 200 {
		t.Fatalf("defaults: %+v", def)
	}
}

func TestSupervisorRestartsOnFailedHealth(t *testing.T) {
	s, rec := newTestSupervisor(t, SupervisorConfig{FailThreshold: 3})
	port := supFreePort(t)
	healthy := filepath.Join(t.TempDir(), "healthy")
	if err := os.WriteFile(healthy, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	spec := supSpec("r-sick", "SUP_HELPER_PORT="+port, "SUP_HELPER_HEALTH_PATH="+healthy)
	spec.HealthURL = "http://127.0.0.1:" + port + "/health"
	s.Ensure(spec)
	first := rec.waitFor(t, "r-sick", "ready", func(e ProcStatus) bool { return e.State == ProcReady })

	if err := os.Remove(healthy); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "r-sick", "restart", func(e ProcStatus) bool { return e.State == ProcStarting && e.Restarts == 1 })
	// Healthy again: the new process becomes ready.
	if err := os.WriteFile(healthy, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	second := rec.waitFor(t, "r-sick", "ready again", func(e ProcStatus) bool { return e.State == ProcReady && e.Restarts == 1 })
	supStop(t, s, "r-sick")

	events := rec.of("r-sick")
	want := []ProcState{ProcStarting, ProcReady, ProcUnhealthy, ProcStopping, ProcBackoff, ProcStarting, ProcReady, ProcStopping, ProcStopped}
	if got := supStates(events); !slices.Equal(got, want) {
		t.Fatalf("states %v, want %v", got, want)
	}
	if b := events[4]; !strings.HasPrefix(b.LastExit, "health check failed 3 times: health check answered 503") {
		t.Fatalf("backoff after failed health: %+v", b)
	}
	if second.PID == first.PID {
		t.Fatalf("restart kept pid %d", first.PID)
	}
	if err := syscall.Kill(first.PID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("unhealthy process %d still there: %v", first.PID, err)
	}
}

func TestSupervisorRestartsWhenNotReadyInTime(t *testing.T) {
	s, rec := newTestSupervisor(t, SupervisorConfig{StartTimeout: 100 * time.Millisecond})
	spec := supSpec("r-slow")
	spec.HealthURL = "http://127.0.0.1:" + supFreePort(t) + "/health" // never answers
	s.Ensure(spec)
	b := rec.waitFor(t, "r-slow", "backoff", func(e ProcStatus) bool { return e.State == ProcBackoff })
	if b.LastExit != "not ready within 100ms" || b.Restarts != 0 {
		t.Fatalf("backoff: %+v", b)
	}
	rec.waitFor(t, "r-slow", "restart", func(e ProcStatus) bool { return e.State == ProcStarting && e.Restarts == 1 })
	supStop(t, s, "r-slow")
	want := []ProcState{ProcStarting, ProcStopping, ProcBackoff, ProcStarting}
	if got := supStates(rec.of("r-slow")); !slices.Equal(got[:4], want) {
		t.Fatalf("states %v, want them to begin with %v", got, want)
	}
}

func TestSupervisorStartFailureIsRetried(t *testing.T) {
	s, rec := newTestSupervisor(t, SupervisorConfig{})
	s.Ensure(ProcSpec{ID: "r-missing", Argv: []string{filepath.Join(t.TempDir(), "no-such-binary")}})
	b := rec.waitFor(t, "r-missing", "second failed start", func(e ProcStatus) bool { return e.State == ProcBackoff && e.Restarts == 1 })
	if !strings.HasPrefix(b.LastExit, "start: ") || b.PID != 0 {
		t.Fatalf("backoff: %+v", b)
	}
	supStop(t, s, "r-missing")
}

func TestSupervisorStopSendsSIGTERM(t *testing.T) {
	debug := &supLogBuffer{}
	rec := &supRecorder{}
	s := NewSupervisor(SupervisorConfig{Grace: supWait}, zerolog.New(debug).Level(zerolog.DebugLevel), rec.record)
	t.Cleanup(func() { s.StopAll(context.Background()) })
	s.Ensure(supSpec("r-term", "SUP_HELPER_TERM=trap"))
	supEventually(t, "the helper to trap SIGTERM", func() bool { return supHasLine(s, "r-term", "trapping SIGTERM") })
	ctx, cancel := context.WithTimeout(context.Background(), supWait)
	defer cancel()
	if err := s.Stop(ctx, "r-term"); err != nil {
		t.Fatal(err)
	}
	events := rec.of("r-term")
	last := events[len(events)-1]
	if last.State != ProcStopped || last.LastExit != "exit status 0" {
		t.Fatalf("last status %+v, want stopped after exit status 0 (its SIGTERM handler)", last)
	}
	// Stop returns once the output is read to its end, into the debug log.
	if !debug.has(`"replica":"r-term","line":"got SIGTERM"`) {
		t.Fatalf("debug log lacks the helper's last line:\n%s", debug.String())
	}
	// Logs are forgotten with the replica; a second Stop is a no-op.
	if l := s.Logs("r-term"); l != nil {
		t.Fatalf("logs of a stopped replica: %q", l)
	}
	if err := s.Stop(ctx, "r-term"); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.of("r-term")); n != len(events) {
		t.Fatalf("changes after stopped: %+v", rec.of("r-term")[len(events):])
	}
}

func TestSupervisorStopKillsAfterGrace(t *testing.T) {
	s, rec := newTestSupervisor(t, SupervisorConfig{Grace: 200 * time.Millisecond})
	s.Ensure(supSpec("r-stubborn", "SUP_HELPER_TERM=ignore"))
	supEventually(t, "the helper to ignore SIGTERM", func() bool { return supHasLine(s, "r-stubborn", "ignoring SIGTERM") })
	st, _ := s.Status("r-stubborn")
	supStop(t, s, "r-stubborn")
	events := rec.of("r-stubborn")
	if last := events[len(events)-1]; last.State != ProcStopped || last.LastExit != "signal: killed" {
		t.Fatalf("last status %+v, want stopped by SIGKILL", last)
	}
	if err := syscall.Kill(st.PID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("process %d still there: %v", st.PID, err)
	}
}

func TestSupervisorStopKillsGrandchild(t *testing.T) {
	s, _ := newTestSupervisor(t, SupervisorConfig{})
	s.Ensure(supSpec("r-family", "SUP_HELPER_GRANDCHILD=1"))
	var grandchild int
	supEventually(t, "the grandchild's pid", func() bool {
		for _, l := range s.Logs("r-family") {
			if pid, ok := strings.CutPrefix(l, "grandchild "); ok {
				grandchild, _ = strconv.Atoi(pid)
			}
		}
		return grandchild > 0
	})
	// Only the grandchild ignores SIGTERM: the leader dies of it, and the
	// grandchild must go with the group.
	supEventually(t, "the grandchild to ignore SIGTERM", func() bool { return supHasLine(s, "r-family", "ignoring SIGTERM") })
	if !procAlive(grandchild) {
		t.Fatalf("grandchild %d not running", grandchild)
	}
	if !procCarriesReplica(grandchild, "r-family") {
		t.Fatalf("grandchild %d does not carry the replica marker", grandchild)
	}
	supStop(t, s, "r-family")
	supEventually(t, "the grandchild to die", func() bool { return !procAlive(grandchild) })
}

func TestSupervisorLogsKeepLastLines(t *testing.T) {
	s, _ := newTestSupervisor(t, SupervisorConfig{LogLines: 10})
	s.Ensure(supSpec("r-chatty", "SUP_HELPER_LINES=50"))
	var want []string
	for i := 40; i < 50; i++ {
		want = append(want, fmt.Sprint("line ", i))
	}
	supEventually(t, "the last 10 lines", func() bool { return slices.Equal(s.Logs("r-chatty"), want) })
	if s.Logs("r-unknown") != nil {
		t.Fatal("logs of an unknown replica")
	}
	supStop(t, s, "r-chatty")
}

func TestSupervisorLogRing(t *testing.T) {
	g := newProcLogRing(3)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go g.readFrom(r, done, zerolog.Nop())
	long := strings.Repeat("x", 3*procLineMax)
	fmt.Fprintf(w, "a\nb\n%s\nc\nd", long)
	w.Close()
	<-done
	want := []string{long[:procLineMax], "c", "d"}
	if got := g.lines(); !slices.Equal(got, want) {
		t.Fatalf("lines %d: %q…, want the long line cut and the last line unterminated", len(got), got)
	}
	if got := newProcLogRing(2).lines(); len(got) != 0 {
		t.Fatalf("empty ring: %q", got)
	}
}

func TestSupervisorEnvironment(t *testing.T) {
	for _, kv := range [][2]string{
		{"ATRIUM_MASTER_KEY", "master-secret"},
		{"ATRIUM_DATABASE_URL", "postgres://u:db-secret@db/atrium"},
		{"ATRIUM_REDIS_URL", "redis://:redis-secret@redis"},
		{"ATRIUM_MASTER_KEY_FILE", "/run/secrets/master"},
		{"ATRIUM_GPU_NODE", "node-a"},
		{"SOME_TOKEN_FILE", "/run/secrets/token"},
		{"CUDA_VISIBLE_DEVICES", "0,1,2,3"},
		{"NVIDIA_VISIBLE_DEVICES", "all"},
		{"SUP_TEST_PASSED_THROUGH", "yes"},
	} {
		t.Setenv(kv[0], kv[1])
	}
	s, _ := newTestSupervisor(t, SupervisorConfig{})
	envFile := filepath.Join(t.TempDir(), "env")
	spec := supSpec("r-env", "SUP_HELPER_ENV_PATH="+envFile, "MODEL_OPT=1",
		"CUDA_VISIBLE_DEVICES=all", "ATRIUM_REPLICA_ID=spoofed", "ATRIUM_MASTER_KEY=from-spec")
	spec.GPUs = []string{"GPU-11111111-aaaa", "GPU-22222222-bbbb"}
	s.Ensure(spec)
	var env []string
	supEventually(t, "the helper's environment", func() bool {
		b, err := os.ReadFile(envFile)
		env = strings.Split(string(b), "\n")
		return err == nil
	})
	supStop(t, s, "r-env")

	vars := map[string][]string{}
	for _, kv := range env {
		name, value, _ := strings.Cut(kv, "=")
		vars[name] = append(vars[name], value)
		if strings.HasPrefix(name, "ATRIUM_") && name != ProcReplicaIDEnv || strings.HasSuffix(name, "_FILE") {
			t.Errorf("replica got %s", name)
		}
		for _, secret := range []string{"master-secret", "db-secret", "redis-secret", "from-spec"} {
			if strings.Contains(value, secret) {
				t.Errorf("replica got a secret in %s", name)
			}
		}
	}
	for name, want := range map[string]string{
		"CUDA_VISIBLE_DEVICES":    "GPU-11111111-aaaa,GPU-22222222-bbbb",
		"NVIDIA_VISIBLE_DEVICES":  "GPU-11111111-aaaa,GPU-22222222-bbbb",
		ProcReplicaIDEnv:          "r-env",
		"MODEL_OPT":               "1",
		"SUP_TEST_PASSED_THROUGH": "yes",
	} {
		if got := vars[name]; !slices.Equal(got, []string{want}) {
			t.Errorf("%s = %q, want exactly %q", name, got, want)
		}
	}
}

func TestSupervisorEnvironmentWithoutGPUs(t *testing.T) {
	s := NewSupervisor(SupervisorConfig{}, zerolog.Nop(), nil)
	env := s.procEnv(ProcSpec{ID: "r-cpu"})
	for _, want := range []string{"CUDA_VISIBLE_DEVICES=", "NVIDIA_VISIBLE_DEVICES=void", "ATRIUM_REPLICA_ID=r-cpu"} {
		if !slices.Contains(env, want) {
			t.Errorf("env lacks %s", want)
		}
	}
}

// supStartMarked starts a sleeping helper process in its own process
// group, marked as replica id unless id is empty, outside any Supervisor.
// exited is closed once it has been reaped, after *waitErr is set.
func supStartMarked(t *testing.T, id string) (pid int, exited <-chan struct{}, waitErr *error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], supHelperRun)
	cmd.Env = append(os.Environ(), "SUP_HELPER=1")
	if id != "" {
		cmd.Env = append(cmd.Env, ProcReplicaIDEnv+"="+id)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var err error
	go func() {
		err = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	})
	return cmd.Process.Pid, done, &err
}

func TestCleanupLeftovers(t *testing.T) {
	marked, markedExit, markedErr := supStartMarked(t, "r-left")
	other, otherExit, _ := supStartMarked(t, "r-other")
	unmarked, unmarkedExit, _ := supStartMarked(t, "")

	got := CleanupLeftovers(map[string]int{
		"r-left":     marked,
		"r-reused":   other,    // carries another replica's marker
		"r-unmarked": unmarked, // carries none
		"r-zero":     0,
		"r-self":     os.Getpid(),
	})
	if !slices.Equal(got, []string{"r-left"}) {
		t.Fatalf("CleanupLeftovers killed %q, want [r-left]", got)
	}
	select {
	case <-markedExit:
		if *markedErr == nil || (*markedErr).Error() != "signal: killed" {
			t.Fatalf("marked process ended with %v", *markedErr)
		}
	case <-time.After(supWait):
		t.Fatal("marked process still running")
	}
	for _, c := range []struct {
		pid    int
		exited <-chan struct{}
	}{{other, otherExit}, {unmarked, unmarkedExit}} {
		select {
		case <-c.exited:
			t.Fatalf("process %d was killed", c.pid)
		default:
		}
		if !procAlive(c.pid) {
			t.Fatalf("process %d not alive", c.pid)
		}
	}
	if got := CleanupLeftovers(nil); got != nil {
		t.Fatalf("CleanupLeftovers(nil) = %q", got)
	}
}

func TestSupervisorConcurrentUseLeavesNoGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	rec := &supRecorder{}
	s := NewSupervisor(SupervisorConfig{
		HealthInterval: 5 * time.Millisecond, BackoffMin: time.Millisecond, BackoffMax: 5 * time.Millisecond,
		Grace: supWait,
	}, zerolog.Nop(), rec.record)

	port := supFreePort(t)
	ready := supSpec("r-0", "SUP_HELPER_PORT="+port)
	ready.HealthURL = "http://127.0.0.1:" + port + "/health"
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			id := fmt.Sprint("r-", i%4)
			for range 20 {
				switch id {
				case "r-0":
					s.Ensure(ready)
				case "r-1":
					s.Ensure(supSpec(id, "SUP_HELPER_EXIT_MS=1", "SUP_HELPER_LINES=3"))
				default:
					s.Ensure(supSpec(id, "SUP_HELPER_LINES=5"))
				}
				_, _ = s.Status(id)
				_ = s.List()
				_ = s.Logs(id)
			}
		})
	}
	wg.Wait()
	rec.waitFor(t, "r-0", "ready", func(e ProcStatus) bool { return e.State == ProcReady })
	rec.waitFor(t, "r-1", "restarts", func(e ProcStatus) bool { return e.Restarts >= 3 })
	// Stop one while the others keep going, and start it again.
	supStop(t, s, "r-2")
	s.Ensure(supSpec("r-2"))
	rec.waitFor(t, "r-2", "second start", func(e ProcStatus) bool {
		return e.State == ProcStarting && len(rec.of("r-2")) > 4
	})

	ctx, cancel := context.WithTimeout(context.Background(), supWait)
	defer cancel()
	s.StopAll(ctx)
	if l := s.List(); len(l) != 0 {
		t.Fatalf("after StopAll: %+v", l)
	}
	s.Ensure(supSpec("r-late"))
	if _, ok := s.Status("r-late"); ok {
		t.Fatal("Ensure after StopAll started a replica")
	}
	for _, id := range []string{"r-0", "r-1", "r-2", "r-3"} {
		events := rec.of(id)
		if last := events[len(events)-1]; last.State != ProcStopped {
			t.Errorf("%s: last state %s", id, last.State)
		}
	}
	supEventually(t, "the supervisor's goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}
