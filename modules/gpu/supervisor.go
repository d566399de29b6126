package gpu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// ProcSpec is one replica process for a Supervisor to run.
type ProcSpec struct {
	// ID is the replica's id; the Supervisor knows each replica by it.
	ID string
	// Argv is the command and its arguments, already filled in from the
	// version's template. It is executed directly, never through a shell.
	Argv []string
	// Env is extra environment ("NAME=value") for the process. Variables
	// named ATRIUM_*, CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES are
	// dropped from it: the Supervisor sets those itself.
	Env []string
	// GPUs are the UUIDs of the GPUs the replica may use; they become
	// CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES (comma-joined).
	GPUs []string
	// HealthURL is polled with GET; a 200 answer means ready. Empty means
	// the replica counts as ready as soon as it has started.
	HealthURL string
}

// SupervisorConfig tunes a Supervisor. A zero or negative field takes its
// default.
type SupervisorConfig struct {
	// Grace is how long a stopping process has between SIGTERM and SIGKILL
	// (default 10s).
	Grace time.Duration
	// BackoffMin and BackoffMax bound the delay before a replica is
	// restarted: it starts at BackoffMin and doubles with each restart up
	// to BackoffMax (defaults 500ms and 30s).
	BackoffMin, BackoffMax time.Duration
	// BackoffReset is how long a replica must have been ready for its
	// backoff to start again from BackoffMin (default 1m).
	BackoffReset time.Duration
	// HealthInterval is the time between health checks (default 1s).
	HealthInterval time.Duration
	// HealthTimeout bounds one health check (default 2s).
	HealthTimeout time.Duration
	// FailThreshold is how many consecutive failed health checks of a
	// ready replica make the Supervisor restart it (default 3).
	FailThreshold int
	// StartTimeout is how long a started replica has to become ready
	// before it is restarted (default 5m).
	StartTimeout time.Duration
	// LogLines is how many of the last lines of its stdout and stderr are
	// kept for each replica (default 200).
	LogLines int
}

// The defaults of SupervisorConfig, taken by its zero fields.
const (
	DefaultProcGrace          = 10 * time.Second
	DefaultProcBackoffMin     = 500 * time.Millisecond
	DefaultProcBackoffMax     = 30 * time.Second
	DefaultProcBackoffReset   = time.Minute
	DefaultProcHealthInterval = time.Second
	DefaultProcHealthTimeout  = 2 * time.Second
	DefaultProcFailThreshold  = 3
	DefaultProcStartTimeout   = 5 * time.Minute
	DefaultProcLogLines       = 200
)

// procLineMax is the longest output line kept; the rest of a longer line
// is dropped.
const procLineMax = 4096

// procDrainWait is how long the Supervisor waits, after a replica's
// process group is gone, for the end of its output; a process that left
// the group and still holds the pipe is not waited for longer.
const procDrainWait = 2 * time.Second

// procCleanupWait is how long CleanupLeftovers waits for a killed
// process to disappear.
const procCleanupWait = 5 * time.Second

// ProcReplicaIDEnv is the environment variable that marks a process (and
// its children) as a replica the Supervisor started; its value is the
// replica id. CleanupLeftovers kills only processes that carry it.
const ProcReplicaIDEnv = "ATRIUM_REPLICA_ID"

func (c SupervisorConfig) withDefaults() SupervisorConfig {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.Grace, DefaultProcGrace)
	def(&c.BackoffMin, DefaultProcBackoffMin)
	def(&c.BackoffMax, DefaultProcBackoffMax)
	def(&c.BackoffReset, DefaultProcBackoffReset)
	def(&c.HealthInterval, DefaultProcHealthInterval)
	def(&c.HealthTimeout, DefaultProcHealthTimeout)
	def(&c.StartTimeout, DefaultProcStartTimeout)
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = c.BackoffMin
	}
	if c.FailThreshold <= 0 {
		c.FailThreshold = DefaultProcFailThreshold
	}
	if c.LogLines <= 0 {
		c.LogLines = DefaultProcLogLines
	}
	return c
}

// procBackoff is the delay before the next restart of a replica whose
// previous delay was prev (0: none yet) and which had been ready for
// healthyFor before it ended: BackoffMin the first time and after a run
// ready for at least BackoffReset, otherwise prev doubled, capped at
// BackoffMax.
func (c SupervisorConfig) procBackoff(prev, healthyFor time.Duration) time.Duration {
	if prev <= 0 || healthyFor >= c.BackoffReset {
		return c.BackoffMin
	}
	return min(prev*2, c.BackoffMax)
}

// ProcState is where a supervised replica is in its life.
type ProcState string

// The states of a supervised replica.
const (
	// ProcStarting means the process runs but has not yet answered its
	// health check.
	ProcStarting ProcState = "starting"
	// ProcReady means the process answers its health check.
	ProcReady ProcState = "ready"
	// ProcUnhealthy means a ready process failed its last health checks,
	// fewer than FailThreshold of them.
	ProcUnhealthy ProcState = "unhealthy"
	// ProcBackoff means the process ended (or could not start) and the
	// replica waits to be restarted.
	ProcBackoff ProcState = "backoff"
	// ProcStopping means the process has been sent SIGTERM and is being
	// waited for, either because it was stopped or to restart it.
	ProcStopping ProcState = "stopping"
	// ProcStopped means the replica was stopped and will not be
	// restarted. It is the last state the Supervisor reports for it.
	ProcStopped ProcState = "stopped"
)

// ProcStatus is a snapshot of one supervised replica.
type ProcStatus struct {
	ID    string
	State ProcState
	// PID is the id of the running process (also its process group's
	// id); 0 when none runs.
	PID int
	// Restarts counts the times the replica was started again after its
	// first start.
	Restarts int
	// LastExit says how the last process ended: "exit status 1",
	// "signal: killed", "health check failed 3 times: ...", "not ready
	// within 5m0s", "start: ..."; empty before any ended.
	LastExit string
	// Backoff is the delay before the next start while State is
	// ProcBackoff, otherwise the last such delay.
	Backoff time.Duration
	// ReadySince is when the process last became ready; zero while it has
	// not been.
	ReadySince time.Time
	// StartedAt is when the current (or last) process was started.
	StartedAt time.Time
}

// Supervisor runs replica processes on a GPU node: each in its own
// process group, with the GPUs it was given and no Atrium secret in its
// environment, restarted with capped exponential backoff when it exits or
// fails its health checks, and stopped with SIGTERM then SIGKILL. It keeps
// the last lines of each replica's output. Its methods are safe for
// concurrent use. Each replica has one goroutine (and two more while a
// process runs); all of them end when the replica is stopped.
type Supervisor struct {
	cfg      SupervisorConfig
	log      zerolog.Logger
	onChange func(ProcStatus)
	client   *http.Client

	mu     sync.Mutex
	procs  map[string]*supervised
	closed bool
}

// supervised is one replica under a Supervisor.
type supervised struct {
	spec ProcSpec
	env  []string
	logs *procLogRing
	// cancel asks the replica's goroutine to stop it; done is closed when
	// that goroutine has ended.
	cancel context.CancelFunc
	done   chan struct{}
	// status is guarded by Supervisor.mu and written only by the
	// replica's goroutine.
	status ProcStatus
}

// NewSupervisor returns a Supervisor. onChange (which may be nil) is
// called with the replica's new status on every change of it, from the
// replica's own goroutine, so the changes of one replica arrive in order;
// it must not block for long and must not call Stop or StopAll for the
// same replica.
func NewSupervisor(cfg SupervisorConfig, log zerolog.Logger, onChange func(ProcStatus)) *Supervisor {
	cfg = cfg.withDefaults()
	if onChange == nil {
		onChange = func(ProcStatus) {}
	}
	return &Supervisor{
		cfg:      cfg,
		log:      log.With().Str("component", "supervisor").Logger(),
		onChange: onChange,
		client: &http.Client{
			Timeout: cfg.HealthTimeout,
			// A fresh connection per check: no idle connection (and its
			// goroutines) outlives a replica. Never through a proxy.
			Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
		procs: make(map[string]*supervised),
	}
}

// Ensure starts the replica spec describes unless the Supervisor already
// knows its ID, in which case nothing changes (even if spec differs: Stop
// it first to change it). A replica that is stopping is still known until
// its Stop returns. After StopAll, Ensure does nothing.
func (s *Supervisor) Ensure(spec ProcSpec) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		s.log.Warn().Str("replica", spec.ID).Msg("replica not started: the supervisor is shut down")
		return
	}
	if _, ok := s.procs[spec.ID]; ok {
		return
	}
	spec.Argv = slices.Clone(spec.Argv)
	spec.GPUs = slices.Clone(spec.GPUs)
	spec.Env = slices.Clone(spec.Env)
	ctx, cancel := context.WithCancel(context.Background())
	p := &supervised{
		spec:   spec,
		env:    s.procEnv(spec),
		logs:   newProcLogRing(s.cfg.LogLines),
		cancel: cancel,
		done:   make(chan struct{}),
		status: ProcStatus{ID: spec.ID},
	}
	s.procs[spec.ID] = p
	go s.run(ctx, p)
}

// Stop stops the replica id: SIGTERM to its process group, SIGKILL to the
// group after Grace if the process has not exited, then SIGKILL to what is
// left of the group. It returns once the replica is stopped and forgotten
// (Status no longer knows it; Ensure may start it again). Stopping an
// unknown replica does nothing. If ctx ends first, Stop returns ctx's
// error wrapped, and the replica goes on stopping.
func (s *Supervisor) Stop(ctx context.Context, id string) error {
	s.mu.Lock()
	p := s.procs[id]
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	p.cancel()
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop replica %s: %w", id, ctx.Err())
	}
}

// StopAll stops every replica as Stop does, all at once, and refuses any
// later Ensure; it is meant for shutdown. It returns when all are stopped
// or ctx ends.
func (s *Supervisor) StopAll(ctx context.Context) {
	s.mu.Lock()
	s.closed = true
	all := make([]*supervised, 0, len(s.procs))
	for _, p := range s.procs {
		all = append(all, p)
	}
	s.mu.Unlock()
	for _, p := range all {
		p.cancel()
	}
	for _, p := range all {
		select {
		case <-p.done:
		case <-ctx.Done():
			s.log.Warn().Err(ctx.Err()).Msg("replicas still stopping at shutdown")
			return
		}
	}
}

// Status returns the status of replica id, and false if the Supervisor
// does not know it.
func (s *Supervisor) Status(id string) (ProcStatus, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.procs[id]
	if !ok {
		return ProcStatus{}, false
	}
	return p.status, true
}

// List returns the status of every known replica, ordered by ID.
func (s *Supervisor) List() []ProcStatus {
	s.mu.Lock()
	out := make([]ProcStatus, 0, len(s.procs))
	for _, p := range s.procs {
		out = append(out, p.status)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b ProcStatus) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Logs returns the last LogLines lines the replica id wrote to stdout and
// stderr (across its restarts), oldest first; nil if the Supervisor does
// not know it.
func (s *Supervisor) Logs(id string) []string {
	s.mu.Lock()
	p := s.procs[id]
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.logs.lines()
}

// procEnv is the environment of spec's process: the Supervisor's own
// without any secret of Atrium's, spec.Env without the variables the
// Supervisor sets, then the GPUs and the replica marker.
func (s *Supervisor) procEnv(spec ProcSpec) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if name == "" || procReservedEnv(name) || strings.HasSuffix(strings.ToUpper(name), "_FILE") {
			continue
		}
		env = append(env, kv)
	}
	for _, kv := range spec.Env {
		name, _, _ := strings.Cut(kv, "=")
		if name == "" || procReservedEnv(name) {
			s.log.Warn().Str("replica", spec.ID).Str("variable", name).Msg("replica environment variable dropped: reserved name")
			continue
		}
		env = append(env, kv)
	}
	gpus := strings.Join(spec.GPUs, ",")
	nvidia := gpus
	if nvidia == "" {
		// For NVIDIA's container runtime, "void" means no GPU, while an
		// empty value may mean the image's default.
		nvidia = "void"
	}
	return append(env,
		"CUDA_VISIBLE_DEVICES="+gpus,
		"NVIDIA_VISIBLE_DEVICES="+nvidia,
		ProcReplicaIDEnv+"="+spec.ID,
	)
}

// procReservedEnv says whether the variable name belongs to Atrium (its
// configuration and secrets) or to the GPU assignment, and so is never
// passed through to a replica.
func procReservedEnv(name string) bool {
	up := strings.ToUpper(name)
	return strings.HasPrefix(up, "ATRIUM_") || up == "CUDA_VISIBLE_DEVICES" || up == "NVIDIA_VISIBLE_DEVICES"
}

// setStatus changes p's status with fn and reports the new status.
func (s *Supervisor) setStatus(p *supervised, fn func(*ProcStatus)) {
	s.mu.Lock()
	fn(&p.status)
	st := p.status
	s.mu.Unlock()
	s.onChange(st)
}

// run is the goroutine of replica p: it starts the process, watches it
// and restarts it after a backoff until ctx is cancelled.
func (s *Supervisor) run(ctx context.Context, p *supervised) {
	var delay time.Duration
	var why string
	for attempt := 0; ; attempt++ {
		var healthyFor time.Duration
		var stopped bool
		healthyFor, why, stopped = s.runOnce(ctx, p, attempt)
		if stopped || ctx.Err() != nil {
			break // stopped, possibly while it was being restarted
		}
		delay = s.cfg.procBackoff(delay, healthyFor)
		s.log.Warn().Str("replica", p.spec.ID).Str("exit", why).Dur("backoff", delay).Msg("replica ended; restarting")
		s.setStatus(p, func(st *ProcStatus) {
			st.State, st.PID, st.Restarts, st.LastExit, st.Backoff = ProcBackoff, 0, attempt, why, delay
		})
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			why = ""
		case <-t.C:
			continue
		}
		break
	}
	s.setStatus(p, func(st *ProcStatus) {
		st.State, st.PID = ProcStopped, 0
		if why != "" {
			st.LastExit = why
		}
	})
	s.mu.Lock()
	delete(s.procs, p.spec.ID)
	s.mu.Unlock()
	close(p.done)
}

// runOnce starts p's process once (attempt is the number of earlier
// starts) and watches it until it ends, fails its health checks or ctx is
// cancelled. When it returns the process has exited and what is left of
// its group has been sent SIGKILL. It returns how long the process was
// ready, why it ended, and whether it was stopped (ctx cancelled) rather
// than ended.
func (s *Supervisor) runOnce(ctx context.Context, p *supervised, attempt int) (healthyFor time.Duration, why string, stopped bool) {
	if ctx.Err() != nil {
		return 0, "", true
	}
	if len(p.spec.Argv) == 0 {
		return 0, "start: no command", false
	}
	r, w, err := os.Pipe()
	if err != nil {
		return 0, "start: " + err.Error(), false
	}
	cmd := exec.Command(p.spec.Argv[0], p.spec.Argv[1:]...)
	cmd.Env = p.env
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		return 0, "start: " + err.Error(), false
	}
	pid := cmd.Process.Pid
	started := time.Now()
	s.log.Info().Str("replica", p.spec.ID).Int("pid", pid).Msg("replica started")
	s.setStatus(p, func(st *ProcStatus) {
		st.State, st.PID, st.Restarts, st.StartedAt, st.ReadySince = ProcStarting, pid, attempt, started, time.Time{}
	})

	drained := make(chan struct{})
	go p.logs.readFrom(r, drained, s.log.With().Str("replica", p.spec.ID).Logger())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	defer func() {
		// What is left of the group (children of a process that exited on
		// its own or on SIGTERM) goes with it.
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		t := time.NewTimer(procDrainWait)
		select {
		case <-drained:
		case <-t.C:
			r.Close() // a process outside the group still holds the pipe
			<-drained
		}
		t.Stop()
		s.log.Info().Str("replica", p.spec.ID).Int("pid", pid).Str("exit", why).Msg("replica process ended")
	}()

	var readyAt time.Time
	if p.spec.HealthURL == "" {
		readyAt = started
		s.setStatus(p, func(st *ProcStatus) { st.State, st.ReadySince = ProcReady, readyAt })
	}
	sinceReady := func() time.Duration {
		if readyAt.IsZero() {
			return 0
		}
		return time.Since(readyAt)
	}
	// restart ends the process to restart it.
	restart := func(reason string) (time.Duration, string, bool) {
		h := sinceReady()
		s.setStatus(p, func(st *ProcStatus) { st.State = ProcStopping })
		return h, s.terminate(pid, exited, reason), false
	}

	tick := time.NewTicker(s.cfg.HealthInterval)
	defer tick.Stop()
	deadline := time.NewTimer(s.cfg.StartTimeout)
	defer deadline.Stop()
	fails := 0
	for {
		select {
		case err := <-exited:
			return sinceReady(), procExitText(err), false
		case <-ctx.Done():
			s.setStatus(p, func(st *ProcStatus) { st.State = ProcStopping })
			return sinceReady(), s.terminate(pid, exited, ""), true
		case <-deadline.C:
			if readyAt.IsZero() {
				return restart(fmt.Sprintf("not ready within %s", s.cfg.StartTimeout))
			}
		case <-tick.C:
			if p.spec.HealthURL == "" {
				continue
			}
			err := s.probe(ctx, p.spec.HealthURL)
			if ctx.Err() != nil {
				continue // stopping: the next round sees it
			}
			switch {
			case err == nil && readyAt.IsZero():
				readyAt = time.Now()
				fails = 0
				deadline.Stop()
				s.setStatus(p, func(st *ProcStatus) { st.State, st.ReadySince = ProcReady, readyAt })
			case err == nil:
				if fails > 0 {
					fails = 0
					now := time.Now()
					s.setStatus(p, func(st *ProcStatus) { st.State, st.ReadySince = ProcReady, now })
				}
			case !readyAt.IsZero():
				fails++
				s.log.Debug().Str("replica", p.spec.ID).Err(err).Int("fails", fails).Msg("replica health check failed")
				if fails >= s.cfg.FailThreshold {
					return restart(fmt.Sprintf("health check failed %d times: %v", fails, err))
				}
				if fails == 1 {
					s.setStatus(p, func(st *ProcStatus) { st.State = ProcUnhealthy })
				}
			}
		}
	}
}

// terminate sends SIGTERM to the process group pid, SIGKILL after Grace,
// and waits for the process's exit (from exited). It returns reason, or
// how the process ended when reason is empty.
func (s *Supervisor) terminate(pid int, exited <-chan error, reason string) string {
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	t := time.NewTimer(s.cfg.Grace)
	defer t.Stop()
	var err error
	select {
	case err = <-exited:
	case <-t.C:
		s.log.Warn().Int("pid", pid).Dur("grace", s.cfg.Grace).Msg("replica ignored SIGTERM; killing its process group")
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		err = <-exited
	}
	if reason != "" {
		return reason
	}
	return procExitText(err)
}

// procExitText says how a process ended from cmd.Wait's error.
func procExitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// probe makes one health check of url: nil for a 200 answer.
func (s *Supervisor) probe(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health check answered %d", resp.StatusCode)
	}
	return nil
}

// procLogRing keeps the last lines of a replica's output.
type procLogRing struct {
	mu    sync.Mutex
	buf   []string
	start int // index of the oldest line when the ring is full
}

func newProcLogRing(n int) *procLogRing {
	return &procLogRing{buf: make([]string, 0, n)}
}

func (g *procLogRing) add(line string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.buf) < cap(g.buf) {
		g.buf = append(g.buf, line)
		return
	}
	g.buf[g.start] = line
	g.start = (g.start + 1) % len(g.buf)
}

func (g *procLogRing) lines() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]string, 0, len(g.buf))
	out = append(out, g.buf[g.start:]...)
	return append(out, g.buf[:g.start]...)
}

// readFrom adds the lines read from r to the ring (and the debug log)
// until r ends or is closed, then closes r and done. A line longer than
// procLineMax is cut there.
func (g *procLogRing) readFrom(r *os.File, done chan<- struct{}, log zerolog.Logger) {
	defer close(done)
	defer r.Close()
	br := bufio.NewReaderSize(r, procLineMax)
	var line []byte
	for {
		chunk, more, err := br.ReadLine()
		if len(line) < procLineMax {
			line = append(line, chunk[:min(len(chunk), procLineMax-len(line))]...)
		}
		if err != nil {
			if len(line) > 0 {
				g.add(string(line))
			}
			return
		}
		if more {
			continue
		}
		l := string(line)
		log.Debug().Str("line", l).Msg("replica output")
		g.add(l)
		line = line[:0]
	}
}

// CleanupLeftovers kills the replica processes that an earlier run of
// this node's Supervisor left behind (after Atrium crashed), given their
// last known pids by replica id. A pid is killed (with its process group,
// by SIGKILL) only if /proc/<pid>/environ carries ATRIUM_REPLICA_ID=<id>,
// so a pid reused by another process is never killed. It waits a few
// seconds for the killed processes to disappear and returns the ids whose
// processes it killed, sorted.
func CleanupLeftovers(pids map[string]int) []string {
	var killed []string
	var waitFor []int
	for id, pid := range pids {
		if pid <= 1 || pid == os.Getpid() || !procCarriesReplica(pid, id) {
			continue
		}
		target := pid
		if pg, err := syscall.Getpgid(pid); err == nil && pg == pid {
			target = -pid // it leads its group, as the Supervisor starts them
		}
		if err := syscall.Kill(target, syscall.SIGKILL); err != nil {
			continue
		}
		killed = append(killed, id)
		waitFor = append(waitFor, pid)
	}
	deadline := time.Now().Add(procCleanupWait)
	for _, pid := range waitFor {
		for procAlive(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	slices.Sort(killed)
	return killed
}

// procCarriesReplica says whether process pid's environment marks it as
// replica id.
func procCarriesReplica(pid int, id string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	want := ProcReplicaIDEnv + "=" + id
	for kv := range strings.SplitSeq(string(b), "\x00") {
		if kv == want {
			return true
		}
	}
	return false
}

// procAlive says whether process pid exists and is not a zombie.
func procAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// The state follows the command name, which is in parentheses and may
	// itself hold spaces or parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return true
	}
	return b[i+2] != 'Z' && b[i+2] != 'X'
}
