package gpu

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
)

// The replica runtime: every GPU node runs the replicas the scheduler
// placed on it as supervised child processes (supervisor.go), started from
// their version's command template with the GPUs they were given, a port
// on ATRIUM_GPU_ADVERTISE_HOST, and readiness from their health path. A
// replica is "running" (and gets traffic) only while its process answers
// its health check; it falls back to "placed" (no traffic) while it
// restarts. A stopping replica's process gets SIGTERM, then SIGKILL after
// the grace period, and only then are its GPUs freed. After a crash of
// Atrium, processes left from before are killed (their pid is on their
// row, and their environment carries their replica id) and started anew.

// nodeReplica is one of this node's replicas with how to run it.
type nodeReplica struct {
	ID, Deployment, DeploymentName, State, Command, HealthPath, Artifact, Model, Version string
	GPUs                                                                                 []string
	PID                                                                                  *int
}

// fillCommand fills a version's command template and splits it into argv
// (on white space; no shell is involved, so no quoting).
func fillCommand(tmpl string, port int, host string, r nodeReplica) []string {
	return strings.Fields(strings.NewReplacer("{port}", strconv.Itoa(port), "{host}", host, "{artifact}", r.Artifact, "{model}", r.Model,
		"{version}", r.Version, "{deployment}", r.DeploymentName).Replace(tmpl))
}

// freePort asks the kernel for a free TCP port on host.
func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// nodeReplicas are this node's replicas that hold GPUs.
func (s *Service) nodeReplicas(ctx context.Context) ([]nodeReplica, error) {
	var out []nodeReplica
	err := s.tx.Do(postgres.AllTenants(ctx, "gpu.agent"), "gpu.node_replicas", func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `SELECT r.id, r.deployment_id, d.name, r.state, v.command, v.health_path, v.artifact_uri, m.name,
				v.version, r.gpu_uuids, r.pid
			FROM replicas r JOIN deployments d ON d.id = r.deployment_id JOIN model_versions v ON v.id = r.version_id
				JOIN models m ON m.id = v.model_id
			WHERE r.node_id = $1 AND r.state IN ('placed', 'running', 'stopping')`, s.cfg.Node)
		var err error
		out, err = pgx.CollectRows(rows, pgx.RowToStructByPos[nodeReplica])
		return err
	})
	return out, err
}

// adoptLeftovers runs once when the agent starts: processes an earlier run
// left (Atrium crashed or was killed) are killed, and their replicas go
// back to "placed" so that they are started afresh.
func (s *Service) adoptLeftovers(ctx context.Context) error {
	reps, err := s.nodeReplicas(ctx)
	if err != nil {
		return err
	}
	pids := map[string]int{}
	for _, r := range reps {
		if r.PID != nil {
			pids[r.ID] = *r.PID
		}
	}
	if killed := CleanupLeftovers(pids); len(killed) > 0 {
		s.log.Warn().Strs("replicas", killed).Msg("killed replica processes left by an earlier run; they start again")
	}
	return s.tx.Exec(postgres.AllTenants(ctx, "gpu.agent"), "gpu.adopt",
		`UPDATE replicas SET state = 'placed', endpoint = '', pid = NULL, runtime = '' WHERE node_id = $1 AND state = 'running'`, s.cfg.Node)
}

// reconcileRuntime makes this node's processes match its replicas: starts
// the placed and running ones the supervisor does not run, stops the
// stopping ones (then frees their GPUs), and stops processes whose replica
// no longer holds this node's GPUs.
func (s *Service) reconcileRuntime(ctx context.Context) error {
	reps, err := s.nodeReplicas(ctx)
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, r := range reps {
		switch r.State {
		case "placed", "running":
			want[r.ID] = true
			if _, ok := s.sup.Status(r.ID); ok {
				continue
			}
			if !allowedProgram(r.Command, s.cfg.Commands) {
				// Checked when the version was added; this node's operator
				// may allow less.
				if err := s.tx.Exec(postgres.AllTenants(ctx, "gpu.agent"), "gpu.refuse_command",
					`UPDATE replicas SET runtime = 'refused', reason = $2 WHERE id = $1 AND runtime <> 'refused'`, r.ID,
					"node "+s.cfg.Node+" does not allow this command's program (ATRIUM_GPU_COMMANDS)"); err != nil {
					return err
				}
				continue
			}
			port, err := freePort(s.cfg.AdvertiseHost)
			if err != nil {
				return fmt.Errorf("replica %s: no free port on %s: %w", r.ID, s.cfg.AdvertiseHost, err)
			}
			s.mu.Lock()
			s.ports[r.ID] = port
			s.deps[r.ID] = r.Deployment
			s.mu.Unlock()
			s.sup.Ensure(ProcSpec{ID: r.ID, GPUs: r.GPUs,
				Argv:      fillCommand(r.Command, port, s.cfg.AdvertiseHost, r),
				Env:       []string{"PORT=" + strconv.Itoa(port)},
				HealthURL: "http://" + net.JoinHostPort(s.cfg.AdvertiseHost, strconv.Itoa(port)) + r.HealthPath})
		case "stopping":
			if s.stopping(r.ID) {
				continue
			}
			go func() {
				sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ReplicaGrace+10*time.Second)
				defer cancel()
				if _, ok := s.sup.Status(r.ID); ok {
					if err := s.sup.Stop(sctx, r.ID); err != nil {
						s.log.Warn().Err(err).Str("replica", r.ID).Msg("replica did not stop cleanly")
					}
				}
				s.finishStop(sctx, r.ID, r.Deployment)
			}()
		}
	}
	for _, st := range s.sup.List() {
		if !want[st.ID] && st.State != ProcStopped && !s.stopping(st.ID) {
			go func() {
				sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ReplicaGrace+10*time.Second)
				defer cancel()
				_ = s.sup.Stop(sctx, st.ID)
				s.forget(st.ID)
			}()
		}
	}
	return nil
}

// stopping marks a replica as being stopped by this agent; false the first
// time.
func (s *Service) stopping(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stops[id] {
		return true
	}
	s.stops[id] = true
	return false
}

func (s *Service) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.ports, id)
	delete(s.deps, id)
	delete(s.stops, id)
}

// finishStop frees a stopped replica's GPUs and quota.
func (s *Service) finishStop(ctx context.Context, id, deployment string) {
	defer s.forget(id)
	err := s.tx.Do(postgres.AllTenants(ctx, "gpu.agent"), "gpu.stopped", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE replicas SET endpoint = '', pid = NULL, runtime = 'stopped' WHERE id = $1`, id); err != nil {
			return err
		}
		return s.release(ctx, tx, id, "")
	})
	if err != nil {
		s.log.Error().Err(err).Str("replica", id).Msg("a stopped replica's GPUs were not freed; retried at the next pass")
		s.mu.Lock()
		delete(s.stops, id)
		s.mu.Unlock()
		return
	}
	s.changed(ctx, deployment)
}

// procChanged records a replica process's state: ready makes the replica
// running at its endpoint; anything else takes it out of traffic.
func (s *Service) procChanged(st ProcStatus) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.mu.Lock()
	port, dep := s.ports[st.ID], s.deps[st.ID]
	s.mu.Unlock()
	var pid *int
	if st.PID > 0 {
		pid = &st.PID
	}
	var q string
	var args []any
	switch st.State {
	case ProcReady:
		q = `UPDATE replicas SET state = 'running', ready_at = coalesce(ready_at, now()), endpoint = $2, pid = $3, restarts = $4,
				runtime = 'ready', reason = ''
			WHERE id = $1 AND state IN ('placed', 'running')`
		args = []any{st.ID, net.JoinHostPort(s.cfg.AdvertiseHost, strconv.Itoa(port)), pid, st.Restarts}
	case ProcStopping, ProcStopped:
		q = `UPDATE replicas SET endpoint = '', runtime = $2 WHERE id = $1`
		args = []any{st.ID, string(st.State)}
	default: // starting, unhealthy, backoff: out of traffic until ready
		q = `UPDATE replicas SET state = 'placed', endpoint = '', pid = $2, restarts = $3, runtime = $4,
				reason = CASE WHEN $5 = '' THEN reason ELSE 'last exit: ' || $5 END
			WHERE id = $1 AND state IN ('placed', 'running')`
		args = []any{st.ID, pid, st.Restarts, string(st.State), st.LastExit}
	}
	if err := s.tx.Exec(postgres.AllTenants(ctx, "gpu.agent"), "gpu.replica_state", q, args...); err != nil {
		s.log.Warn().Err(err).Str("replica", st.ID).Str("state", string(st.State)).Msg("replica state not recorded")
		return
	}
	if dep != "" {
		s.changed(ctx, dep)
	}
}

// publishLogs copies the last lines of each local replica's output to
// Redis, where any instance's UI reads them.
func (s *Service) publishLogs(ctx context.Context) {
	pipe := s.redis.Pipeline()
	n := 0
	for _, st := range s.sup.List() {
		lines := s.sup.Logs(st.ID)
		if len(lines) == 0 {
			continue
		}
		pipe.Set(ctx, s.redis.Key("gpu", "logs", st.ID), strings.Join(lines, "\n"), time.Hour)
		n++
	}
	if n > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			s.log.Debug().Err(err).Msg("replica logs not published")
		}
	}
}

// ReplicaLogs returns the last lines of a replica's output, as its node
// last published them.
func (s *Service) ReplicaLogs(ctx context.Context, deployment, replica string) ([]string, error) {
	d, err := s.GetDeployment(ctx, deployment)
	if err != nil {
		return nil, err
	}
	found := false
	for _, r := range d.ReplicaList {
		found = found || r.ID == replica
	}
	if !found {
		return nil, errNoReplica
	}
	v, err := s.redis.Get(ctx, s.redis.Key("gpu", "logs", replica)).Result()
	if err != nil || v == "" {
		return []string{}, nil
	}
	return strings.Split(v, "\n"), nil
}

var errNoReplica = errs.E(errs.NotFound, "no such replica in this deployment")
