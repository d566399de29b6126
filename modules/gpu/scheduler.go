package gpu

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/redisx"
)

// The scheduler runs on one instance at a time, the holder of the
// "gpu-scheduler" lease. Each cycle it (1) marks nodes whose inventory
// lapsed as lost and stops their replicas, (2) stops replicas on unhealthy
// GPUs, (3) runs the release controller over every deployment, (4) places
// pending replicas, and now and then (5) meters GPU time. Every write is
// fenced: a transaction first raises gpu_scheduler.fence to its lease's
// token and fails if a larger one was seen, so a deposed leader's late
// writes are refused. The GPUs' rows carry what is held on them under
// check constraints, so even two leaders at once cannot allocate twice.

// errFenced means a newer scheduler leader exists.
var errFenced = errors.New("gpu scheduler: fenced off by a newer leader")

// fence raises the fencing token inside tx, or fails with errFenced.
func fence(ctx context.Context, tx pgx.Tx, token int64) error {
	tag, err := tx.Exec(ctx, `UPDATE gpu_scheduler SET fence = $1 WHERE fence <= $1`, token)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return errFenced
	}
	return nil
}

// cross is ctx on the scheduler's cross-tenant path.
func cross(ctx context.Context) context.Context { return postgres.AllTenants(ctx, "gpu.scheduler") }

func (s *Service) runScheduler(ctx context.Context) {
	lease := redisx.NewLease(s.redis, "gpu-scheduler", s.instance, s.cfg.LeaseTTL)
	lease.Run(ctx, s.log, func(ctx context.Context, token int64) {
		s.log.Info().Int64("token", token).Msg("GPU scheduler: leading")
		t := time.NewTicker(s.cfg.ScheduleInterval)
		defer t.Stop()
		var metered time.Time
		for {
			if _, err := s.Cycle(ctx, token); err != nil && ctx.Err() == nil {
				if errors.Is(err, errFenced) {
					s.log.Warn().Msg("GPU scheduler: a newer leader exists; standing down")
					return
				}
				s.log.Warn().Err(err).Msg("GPU scheduler cycle failed")
			}
			if now := s.now(); now.Sub(metered) >= s.cfg.MeterInterval {
				if err := s.Meter(ctx, token); err != nil && ctx.Err() == nil {
					s.log.Warn().Err(err).Msg("GPU metering failed")
				}
				metered = now
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
}

// CycleReport says what one scheduler cycle did.
type CycleReport struct {
	Lost, Moved, Placed, Pending int
}

// Cycle runs one scheduler cycle as the leader holding token.
func (s *Service) Cycle(ctx context.Context, token int64) (CycleReport, error) {
	var rep CycleReport
	ctx = cross(ctx)
	live, err := s.readCluster(ctx)
	if err != nil {
		return rep, fmt.Errorf("inventory: %w", err)
	}
	if rep.Lost, err = s.loseNodes(ctx, token, live.alive); err != nil {
		return rep, fmt.Errorf("lost nodes: %w", err)
	}
	if rep.Moved, err = s.leaveUnhealthy(ctx, token); err != nil {
		return rep, fmt.Errorf("unhealthy GPUs: %w", err)
	}
	if err = s.autoscale(ctx, token, live.util); err != nil {
		return rep, fmt.Errorf("autoscaling: %w", err)
	}
	if err = s.reconcileAll(ctx, token); err != nil {
		return rep, fmt.Errorf("deployments: %w", err)
	}
	if rep.Placed, rep.Pending, err = s.place(ctx, token, live.util); err != nil {
		return rep, fmt.Errorf("placement: %w", err)
	}
	return rep, nil
}

// loseNodes marks up nodes whose inventory lapsed from Redis as lost and
// stops their replicas at once (their node cannot): their GPUs and quota
// are freed, and the controllers create replacements.
func (s *Service) loseNodes(ctx context.Context, token int64, alive map[string]bool) (int, error) {
	var up []string
	var err error
	if err := s.tx.Do(ctx, "gpu.nodes_up", func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `SELECT id FROM gpu_nodes WHERE state = 'up' AND last_seen < now() - $1::interval`,
			s.cfg.NodeTTL.String())
		up, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	}); err != nil {
		return 0, err
	}
	lost := 0
	for _, node := range up {
		if alive[node] {
			continue
		}
		err := s.tx.Do(ctx, "gpu.lose_node", func(tx pgx.Tx) error {
			if err := fence(ctx, tx, token); err != nil {
				return err
			}
			tag, err := tx.Exec(ctx, `UPDATE gpu_nodes SET state = 'lost', lost_at = now() WHERE id = $1 AND state = 'up'`, node)
			if err != nil || tag.RowsAffected() == 0 {
				return err
			}
			rows, _ := tx.Query(ctx, `SELECT id FROM replicas WHERE node_id = $1 AND state IN ('placed', 'running', 'stopping') FOR UPDATE`, node)
			ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return err
			}
			for _, id := range ids {
				if err := s.release(ctx, tx, id, "node "+node+" lost"); err != nil {
					return err
				}
			}
			s.log.Warn().Str("node", node).Int("replicas", len(ids)).Msg("GPU node lost: its replicas are rescheduled")
			return nil
		})
		if err != nil {
			return lost, err
		}
		lost++
	}
	return lost, nil
}

// leaveUnhealthy asks the replicas on unhealthy GPUs to stop; their
// controllers create replacements that the placement keeps off those GPUs.
func (s *Service) leaveUnhealthy(ctx context.Context, token int64) (int, error) {
	var n int
	err := s.tx.Do(ctx, "gpu.leave_unhealthy", func(tx pgx.Tx) error {
		if err := fence(ctx, tx, token); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE replicas r SET state = 'stopping', stopping_at = now(),
			reason = 'GPU ' || g.uuid || ' unhealthy: ' || g.unhealthy
			FROM gpu_devices g WHERE r.state IN ('placed', 'running') AND g.uuid = ANY (r.gpu_uuids) AND NOT g.healthy`)
		n = int(tag.RowsAffected())
		return err
	})
	return n, err
}

// release frees a replica's allocation (GPUs and max_gpus) and marks it
// stopped, inside tx.
func (s *Service) release(ctx context.Context, tx pgx.Tx, id, reason string) error {
	var tenant, sharing string
	var memory int64
	var milli int
	var gpus []string
	var mig string
	err := tx.QueryRow(ctx, `UPDATE replicas SET state = 'stopped', stopped_at = now(),
			reason = CASE WHEN $2 = '' THEN reason ELSE $2 END
		WHERE id = $1 AND state IN ('placed', 'running', 'stopping')
		RETURNING tenant_id, sharing, memory_mb, milli_gpus, gpu_uuids, mig_profile`, id, reason).
		Scan(&tenant, &sharing, &memory, &milli, &gpus, &mig)
	if postgres.IsNoRows(err) {
		return nil // already stopped
	}
	if err != nil {
		return err
	}
	if err := hold(ctx, tx, id, Need{Sharing: Sharing(sharing), MemoryMB: memory, MIGProfile: mig}, gpus, -1); err != nil {
		return err
	}
	if milli > 0 {
		return s.quotas.Return(ctx, tx, tenant, "max_gpus", int64(milli))
	}
	return nil
}

// hold adds (sign 1) or removes (sign -1) what replica id holds on its
// GPUs. Adding fails when a GPU cannot take it: the row's check
// constraints and conditions refuse a double allocation.
func hold(ctx context.Context, tx pgx.Tx, id string, n Need, gpus []string, sign int64) error {
	var q string
	var args []any
	switch n.Sharing {
	case Exclusive:
		if sign > 0 {
			q = `UPDATE gpu_devices SET exclusive_replica = $2 WHERE uuid = ANY ($1) AND exclusive_replica IS NULL
				AND shared_mb = 0 AND mig_compute = 0 AND NOT mig_mode`
		} else {
			q = `UPDATE gpu_devices SET exclusive_replica = NULL WHERE uuid = ANY ($1) AND exclusive_replica = $2`
		}
		args = []any{gpus, id}
	case Shared:
		q = `UPDATE gpu_devices SET shared_mb = shared_mb + $2 WHERE uuid = ANY ($1) AND exclusive_replica IS NULL AND NOT mig_mode`
		if sign < 0 {
			q = `UPDATE gpu_devices SET shared_mb = greatest(shared_mb - $2, 0) WHERE uuid = ANY ($1)`
		}
		args = []any{gpus, n.MemoryMB}
	case MIG:
		compute, mem, err := ParseMIGProfile(n.MIGProfile)
		if err != nil {
			return err
		}
		q = `UPDATE gpu_devices SET mig_compute = mig_compute + $2, mig_memory_mb = mig_memory_mb + $3 WHERE uuid = ANY ($1) AND mig_mode`
		if sign < 0 {
			q = `UPDATE gpu_devices SET mig_compute = greatest(mig_compute - $2, 0), mig_memory_mb = greatest(mig_memory_mb - $3, 0)
				WHERE uuid = ANY ($1)`
		}
		args = []any{gpus, compute, mem}
	default:
		return fmt.Errorf("replica %s: unknown sharing %q", id, n.Sharing)
	}
	tag, err := tx.Exec(ctx, q, args...)
	if err != nil {
		if postgres.IsCheck(err) {
			return errDoubleAllocation
		}
		return err
	}
	if sign > 0 && int(tag.RowsAffected()) != len(gpus) {
		return errDoubleAllocation
	}
	return nil
}

// errDoubleAllocation means a GPU could not take a replica: what the
// placer saw was stale (another writer got there first).
var errDoubleAllocation = errors.New("gpu: the GPUs cannot take the replica any more")

// reconcileAll runs the release controller over every deployment.
func (s *Service) reconcileAll(ctx context.Context, token int64) error {
	ids, err := postgres.Collect(ctx, s.tx, "gpu.deployments", pgx.RowTo[string], `SELECT id FROM deployments ORDER BY id`)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if err := s.reconcile(ctx, token, id); err != nil {
			return err
		}
	}
	return nil
}

// reconcile runs one controller pass over a deployment and applies it.
func (s *Service) reconcile(ctx context.Context, token int64, id string) error {
	var changed bool
	err := s.tx.Do(ctx, "gpu.reconcile", func(tx pgx.Tx) error {
		if err := fence(ctx, tx, token); err != nil {
			return err
		}
		d, err := getDeployment(ctx, tx, id, true)
		if errs.CodeOf(err) == errs.NotFound {
			return nil
		}
		if err != nil {
			return err
		}
		reps, err := liveReplicas(ctx, tx, id)
		if err != nil {
			return err
		}
		before := *d
		dc := plan(d, reps, s.now(), func(version string, since time.Time) VersionStats {
			st, err := s.stats.Window(ctx, id, version, since, s.now())
			if err != nil {
				s.log.Warn().Err(err).Str("deployment", id).Msg("canary statistics unavailable; the step waits")
				return VersionStats{}
			}
			return st
		})
		if d.State == "deleting" && len(reps) == 0 {
			return s.remove(ctx, tx, d)
		}
		for _, v := range dc.create {
			if _, err := tx.Exec(ctx, `INSERT INTO replicas (id, tenant_id, deployment_id, version_id, state, reason, gpus, memory_mb, sharing, mig_profile)
				SELECT $1, v.tenant_id, $2, v.id, 'pending', 'waiting for the scheduler', v.gpus, v.memory_mb, v.sharing, v.mig_profile
				FROM model_versions v WHERE v.id = $3`, newID(), id, v); err != nil {
				return err
			}
		}
		if len(dc.stop) > 0 {
			// Pending replicas hold nothing: they stop at once. Others stop
			// on their node, which frees their GPUs.
			if _, err := tx.Exec(ctx, `UPDATE replicas SET state = 'stopped', stopped_at = now(), reason = 'not needed'
				WHERE id = ANY ($1) AND state = 'pending'`, dc.stop); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE replicas SET state = 'stopping', stopping_at = now(), reason = 'not needed'
				WHERE id = ANY ($1) AND state IN ('placed', 'running')`, dc.stop); err != nil {
				return err
			}
		}
		changed = !sameRelease(&before, d)
		if changed {
			if err := saveDeployment(ctx, tx, d); err != nil {
				return err
			}
		}
		return addEvents(ctx, tx, d, dc.events)
	})
	if err == nil && changed {
		s.changed(ctx, id)
	}
	return err
}

// sameRelease reports whether the controller left a deployment as it was.
func sameRelease(a, b *Deployment) bool {
	eqp := func(x, y *string) bool { return (x == nil) == (y == nil) && (x == nil || *x == *y) }
	eqt := func(x, y *time.Time) bool { return (x == nil) == (y == nil) && (x == nil || x.Equal(*y)) }
	same := len(a.Traffic) == len(b.Traffic)
	for k, v := range a.Traffic {
		same = same && b.Traffic[k] == v
	}
	return same && a.StableVersionID == b.StableVersionID && eqp(a.TargetVersionID, b.TargetVersionID) && a.State == b.State &&
		a.Step == b.Step && eqt(a.StepStartedAt, b.StepStartedAt) && eqp(a.PreviousVersionID, b.PreviousVersionID) &&
		eqt(a.PreviousUntil, b.PreviousUntil)
}

// remove deletes a deployment whose replicas have all stopped, once their
// GPU time is metered, and gives its max_deployments unit back.
func (s *Service) remove(ctx context.Context, tx pgx.Tx, d *Deployment) error {
	var unmetered bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM replicas WHERE deployment_id = $1 AND placed_at IS NOT NULL
		AND metered_until < stopped_at)`, d.ID).Scan(&unmetered); err != nil || unmetered {
		return err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM deployments WHERE id = $1`, d.ID); err != nil {
		return err
	}
	return s.quotas.Return(ctx, tx, d.TenantID, "max_deployments", 1)
}

// pendingReplica is a replica waiting for GPUs.
type pendingReplica struct {
	ID, Tenant, Reason string
	Need               Need
}

// place places pending replicas, oldest first, on the GPUs whose
// utilization util has (those of live nodes).
func (s *Service) place(ctx context.Context, token int64, util map[string]int) (placed, pending int, err error) {
	var reps []pendingReplica
	var slots []Slot
	err = s.tx.Do(ctx, "gpu.pending", func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `SELECT id, tenant_id, reason, gpus, memory_mb, sharing, mig_profile FROM replicas
			WHERE state = 'pending' ORDER BY created_at, id LIMIT 5000`)
		reps, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (pendingReplica, error) {
			var p pendingReplica
			var sharing string
			err := r.Scan(&p.ID, &p.Tenant, &p.Reason, &p.Need.GPUs, &p.Need.MemoryMB, &sharing, &p.Need.MIGProfile)
			p.Need.Sharing = Sharing(sharing)
			return p, err
		})
		if err != nil || len(reps) == 0 {
			return err
		}
		slots, err = slotsOf(ctx, tx, util)
		return err
	})
	if err != nil || len(reps) == 0 {
		return 0, 0, err
	}
	placer := NewPlacer(slots, s.cfg.Policy)
	// The budget is checked once per tenant per cycle.
	budget := map[string]error{}
	for _, r := range reps {
		reason := ""
		if b, ok := budget[r.Tenant]; ok {
			if b != nil {
				reason = b.Error()
			}
		} else {
			b := s.tx.Do(postgres.WithTenant(ctx, r.Tenant), "gpu.budget", func(tx pgx.Tx) error {
				return s.quotas.Check(ctx, tx, r.Tenant, "max_gpu_hours")
			})
			if b != nil && errs.CodeOf(b) != errs.QuotaExceeded {
				return placed, pending, b
			}
			budget[r.Tenant] = b
			if b != nil {
				reason = b.Error()
			}
		}
		if reason == "" {
			uuids, node, why, ok := placer.Place(r.Need)
			if !ok {
				reason = why
			} else {
				err := s.bind(ctx, token, r, node, uuids, slots)
				switch {
				case err == nil:
					placed++
					continue
				case errs.CodeOf(err) == errs.QuotaExceeded:
					placer.Unplace(uuids, r.Need)
					reason = err.Error()
				case errors.Is(err, errDoubleAllocation):
					placer.Unplace(uuids, r.Need)
					reason = "waiting: the GPUs chosen were taken meanwhile"
				default:
					return placed, pending, err
				}
			}
		}
		pending++
		if reason != r.Reason {
			if err := s.tx.Exec(ctx, "gpu.pending_reason", `UPDATE replicas SET reason = $2 WHERE id = $1 AND state = 'pending'`,
				r.ID, reason); err != nil {
				return placed, pending, err
			}
		}
	}
	return placed, pending, nil
}

// bind records a placement: the replica's allocation, what its GPUs hold,
// and the tenant's max_gpus, in one fenced transaction.
func (s *Service) bind(ctx context.Context, token int64, r pendingReplica, node string, uuids []string, slots []Slot) error {
	milli := milliGPUs(r.Need, uuids, slots)
	return s.tx.Do(ctx, "gpu.bind", func(tx pgx.Tx) error {
		if err := fence(ctx, tx, token); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE replicas SET state = 'placed', node_id = $2, gpu_uuids = $3, milli_gpus = $4, fence = $5,
			placed_at = now(), metered_until = now(), reason = '' WHERE id = $1 AND state = 'pending'`, r.ID, node, uuids, milli, token)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return errDoubleAllocation // stopped or placed meanwhile
		}
		if err := hold(ctx, tx, r.ID, r.Need, uuids, 1); err != nil {
			return err
		}
		return s.quotas.Use(ctx, tx, r.Tenant, "max_gpus", int64(milli))
	})
}

// milliGPUs is the share of GPUs a placed replica holds, in thousandths:
// whole GPUs when exclusive, its memory share when shared, its compute
// slices (of 7) under MIG. It weighs max_gpus and GPU-hours.
func milliGPUs(n Need, uuids []string, slots []Slot) int {
	switch n.Sharing {
	case Shared:
		for _, sl := range slots {
			if slices.Contains(uuids, sl.UUID) && sl.MemoryMB > 0 {
				return int(max(1, (n.MemoryMB*1000+sl.MemoryMB-1)/sl.MemoryMB))
			}
		}
		return 1000
	case MIG:
		c, _, _ := ParseMIGProfile(n.MIGProfile)
		return (c*1000 + 6) / 7
	}
	return 1000 * len(uuids)
}

// slotsOf are the GPUs placement may use: present and healthy, on nodes
// that are up and live (in util), with what replicas hold on them and their
// measured utilization.
func slotsOf(ctx context.Context, tx pgx.Tx, util map[string]int) ([]Slot, error) {
	rows, _ := tx.Query(ctx, `SELECT g.uuid, g.node_id, g.domain, g.memory_total_mb, g.mig_mode, g.exclusive_replica IS NOT NULL,
			g.shared_mb, g.mig_compute, g.mig_memory_mb
		FROM gpu_devices g JOIN gpu_nodes n ON n.id = g.node_id
		WHERE n.state = 'up' AND g.present AND g.healthy ORDER BY g.node_id, g.idx`)
	slots, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Slot, error) {
		var sl Slot
		err := r.Scan(&sl.UUID, &sl.Node, &sl.Domain, &sl.MemoryMB, &sl.MIGMode, &sl.Exclusive, &sl.SharedMB, &sl.MIGCompute, &sl.MIGMemoryMB)
		return sl, err
	})
	if err != nil {
		return nil, err
	}
	alive := slots[:0]
	for _, sl := range slots {
		u, ok := util[sl.UUID]
		if !ok {
			continue // its node's inventory lapsed: it is about to be lost
		}
		sl.Utilization = u
		alive = append(alive, sl)
	}
	return alive, nil
}

// Meter charges the GPU time of allocated replicas since they were last
// metered: time × their GPU share, per tenant, into usage and the
// max_gpu_hours budget. Each replica's charge is computed from its
// cumulative time, so rounding never drifts.
func (s *Service) Meter(ctx context.Context, token int64) error {
	ctx = cross(ctx)
	perTenant := map[string]int64{}
	err := s.tx.Do(ctx, "gpu.meter", func(tx pgx.Tx) error {
		if err := fence(ctx, tx, token); err != nil {
			return err
		}
		rows, _ := tx.Query(ctx, `WITH m AS (
				SELECT id, tenant_id, milli_gpus, placed_at, metered_until AS old, least(coalesce(stopped_at, now()), now()) AS upto
				FROM replicas WHERE placed_at IS NOT NULL AND metered_until < least(coalesce(stopped_at, now()), now())
				FOR UPDATE SKIP LOCKED)
			UPDATE replicas r SET metered_until = m.upto FROM m WHERE r.id = m.id
			RETURNING m.tenant_id::text, (floor(extract(epoch FROM m.upto - m.placed_at) * m.milli_gpus / 1000)
				- floor(extract(epoch FROM m.old - m.placed_at) * m.milli_gpus / 1000))::bigint`)
		type charge struct {
			Tenant  string
			Seconds int64
		}
		cs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[charge])
		for _, c := range cs {
			perTenant[c.Tenant] += c.Seconds
		}
		return err
	})
	if err != nil {
		return err
	}
	// After the commit: a crash in between loses at most one interval's
	// charge; it never charges twice.
	for tenant, secs := range perTenant {
		if secs > 0 {
			if err := s.meter.AddGPUSeconds(ctx, tenant, secs); err != nil {
				return err
			}
		}
	}
	return nil
}
