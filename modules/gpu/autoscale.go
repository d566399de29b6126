package gpu

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Autoscaling: every router publishes its requests in flight per
// deployment in Redis; the scheduler leader adds them up across instances
// and sets each autoscaled deployment's replica count between min and max:
// up at once, down only to the highest recommendation of the stabilization
// window (ScaleDownSeconds), to zero only after ScaleToZeroSeconds without
// a request (min_replicas 0). A request that finds no replica is held by
// its router and counts as in flight, which brings the first replica up.
// Every change is recorded with its reason in the deployment's history.

func (s *Service) inflightKey(dep string) string { return s.redis.Key("gpu", "inflight", dep) }
func (s *Service) lastReqKey(dep string) string  { return s.redis.Key("gpu", "lastreq", dep) }

// publishInflight records this instance's requests in flight per
// deployment (with the time, so stale entries of a dead instance are
// ignored) and, when requests were served, the time of the last one.
func (s *Service) publishInflight(ctx context.Context, inflight map[string]int64, served int) error {
	now := s.now()
	pipe := s.redis.Pipeline()
	for dep, n := range inflight {
		k := s.inflightKey(dep)
		pipe.HSet(ctx, k, s.instance, strconv.FormatInt(n, 10)+"|"+strconvMS(now))
		pipe.Expire(ctx, k, time.Minute)
		if n > 0 || served > 0 {
			pipe.Set(ctx, s.lastReqKey(dep), strconvMS(now), 24*time.Hour)
		}
	}
	_, err := pipe.Exec(ctx)
	return err
}

// strconvMS formats a time as Unix milliseconds.
func strconvMS(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

// demand is a deployment's requests in flight across the cluster and the
// time of its last request (zero when unknown).
func (s *Service) demand(ctx context.Context, dep string) (int64, time.Time, error) {
	vals, err := s.redis.HGetAll(ctx, s.inflightKey(dep)).Result()
	if err != nil {
		return 0, time.Time{}, err
	}
	now := s.now()
	var total int64
	for _, v := range vals {
		n, at, ok := strings.Cut(v, "|")
		ms, err1 := strconv.ParseInt(at, 10, 64)
		c, err2 := strconv.ParseInt(n, 10, 64)
		if !ok || err1 != nil || err2 != nil || now.Sub(time.UnixMilli(ms)) > 5*time.Second {
			continue
		}
		total += c
	}
	var last time.Time
	if v, err := s.redis.Get(ctx, s.lastReqKey(dep)).Int64(); err == nil {
		last = time.UnixMilli(v)
	}
	return total, last, nil
}

// recommendations are the autoscaler's recent desired counts per
// deployment (the leader's memory: a new leader starts a fresh window,
// which only delays scaling down).
type recommendations struct {
	mu   sync.Mutex
	past map[string][]rec
}

type rec struct {
	at time.Time
	n  int
}

// autoscale adjusts every autoscaled deployment's replica count; gpuUtil
// is each GPU's measured utilization.
func (s *Service) autoscale(ctx context.Context, token int64, gpuUtil map[string]int) error {
	deps, err := s.autoscaled(ctx)
	if err != nil || len(deps) == 0 {
		return err
	}
	util, err := s.deploymentUtilization(ctx, gpuUtil)
	if err != nil {
		return err
	}
	now := s.now()
	for _, d := range deps {
		inflight, last, err := s.demand(ctx, d.ID)
		if err != nil {
			return err
		}
		want, why := desiredReplicas(&d, inflight, util[d.ID], last, now)
		s.recs.mu.Lock()
		if s.recs.past == nil {
			s.recs.past = map[string][]rec{}
		}
		window := time.Duration(d.Params.ScaleDownSeconds) * time.Second
		past := append(s.recs.past[d.ID], rec{now, want})
		for len(past) > 0 && now.Sub(past[0].at) > window {
			past = past[1:]
		}
		s.recs.past[d.ID] = past
		target := want
		if want < d.Replicas {
			// Down only as far as the highest recommendation of the window.
			for _, r := range past {
				target = max(target, r.n)
			}
		}
		s.recs.mu.Unlock()
		if target == d.Replicas {
			continue
		}
		msg := fmt.Sprintf("replicas %d → %d: %s", d.Replicas, target, why)
		if err := s.setReplicas(ctx, token, d.ID, d.Replicas, target, msg); err != nil {
			return err
		}
	}
	return nil
}

// desiredReplicas is what d's metric asks for now, with the reason.
func desiredReplicas(d *Deployment, inflight int64, util float64, last, now time.Time) (int, string) {
	p := d.Params
	var want int
	var why string
	switch p.AutoscaleMetric {
	case "gpu_utilization":
		want = int(math.Ceil(float64(d.Replicas) * util / p.AutoscaleTarget))
		why = fmt.Sprintf("GPU utilization %.0f%% over %d replicas, target %.0f%%", util, d.Replicas, p.AutoscaleTarget)
		if inflight > 0 && d.Replicas == 0 {
			want, why = 1, fmt.Sprintf("%d requests waiting with no replica", inflight)
		}
	default:
		want = int(math.Ceil(float64(inflight) / p.AutoscaleTarget))
		why = fmt.Sprintf("%d requests in flight, target %g per replica", inflight, p.AutoscaleTarget)
	}
	floor := max(d.MinReplicas, 1)
	if d.MinReplicas == 0 && inflight == 0 {
		idle := time.Duration(p.ScaleToZeroSeconds) * time.Second
		if p.ScaleToZeroSeconds > 0 && (last.IsZero() || now.Sub(last) >= idle) {
			floor = 0
			if want == 0 {
				why = fmt.Sprintf("no request for %s: scaled to zero", idle)
			}
		}
	}
	return min(max(want, floor), d.MaxReplicas), why
}

// autoscaled are the deployments with an autoscaling metric.
func (s *Service) autoscaled(ctx context.Context) ([]Deployment, error) {
	var out []Deployment
	err := s.tx.Do(ctx, "gpu.autoscaled", func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `SELECT `+deploymentCols+deploymentFrom+`
			WHERE d.state <> 'deleting' AND coalesce(d.params ->> 'autoscale_metric', '') <> ''`)
		var err error
		out, err = pgx.CollectRows(rows, scanDeployment)
		return err
	})
	return out, err
}

// deploymentUtilization is the mean measured utilization of the GPUs each
// deployment's running replicas hold.
func (s *Service) deploymentUtilization(ctx context.Context, util map[string]int) (map[string]float64, error) {
	type held struct {
		Deployment string
		GPUs       []string
	}
	var rows []held
	err := s.tx.Do(ctx, "gpu.held", func(tx pgx.Tx) error {
		r, _ := tx.Query(ctx, `SELECT deployment_id::text, gpu_uuids FROM replicas WHERE state = 'running'`)
		var err error
		rows, err = pgx.CollectRows(r, pgx.RowToStructByPos[held])
		return err
	})
	if err != nil {
		return nil, err
	}
	sum, n := map[string]float64{}, map[string]int{}
	for _, h := range rows {
		for _, g := range h.GPUs {
			sum[h.Deployment] += float64(util[g])
			n[h.Deployment]++
		}
	}
	out := map[string]float64{}
	for d, v := range sum {
		out[d] = v / float64(n[d])
	}
	return out, nil
}

// setReplicas changes a deployment's replica count from was to n, fenced,
// unless someone changed it meanwhile.
func (s *Service) setReplicas(ctx context.Context, token int64, id string, was, n int, msg string) error {
	changed := false
	err := s.tx.Do(ctx, "gpu.autoscale", func(tx pgx.Tx) error {
		if err := fence(ctx, tx, token); err != nil {
			return err
		}
		d, err := getDeployment(ctx, tx, id, true)
		if err != nil || d.Replicas != was {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE deployments SET replicas = $2, updated_at = now() WHERE id = $1`, id, n); err != nil {
			return err
		}
		changed = true
		return addEvents(ctx, tx, d, []depEvent{{"autoscaled", msg}})
	})
	if err == nil && changed {
		s.log.Info().Str("deployment", id).Str("decision", msg).Msg("autoscaled")
	}
	return err
}
