package gpu

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/auditlog"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
)

// Params tune a deployment's release strategy.
type Params struct {
	// Rolling: how many replicas above the desired count may exist, and how
	// many below it may be out of service, while old ones are replaced.
	MaxSurge       int `json:"max_surge"`
	MaxUnavailable int `json:"max_unavailable"`
	// Canary: percent of traffic at each step (the last is 100), how long
	// each step is watched, and the bounds that pass it. A step with at
	// least MinRequests requests out of bounds rolls back at once; a step
	// with fewer is judged at the end of its window.
	CanarySteps  []int   `json:"canary_steps"`
	WatchSeconds int     `json:"watch_seconds"`
	MaxErrorRate float64 `json:"max_error_rate"`
	MaxP99MS     int     `json:"max_p99_ms"`
	MinRequests  int     `json:"min_requests"`
	// Blue-green: how long the previous set is kept after the switch.
	RollbackSeconds int `json:"rollback_seconds"`
	// Autoscaling between min_replicas and max_replicas: off when
	// AutoscaleMetric is "", else "concurrency" (AutoscaleTarget requests in
	// flight per replica) or "gpu_utilization" (AutoscaleTarget percent).
	// Scaling down waits for ScaleDownSeconds of lower recommendations; with
	// min_replicas 0, ScaleToZeroSeconds without a request (0: never) scales
	// to zero.
	AutoscaleMetric    string  `json:"autoscale_metric"`
	AutoscaleTarget    float64 `json:"autoscale_target"`
	ScaleDownSeconds   int     `json:"scale_down_seconds"`
	ScaleToZeroSeconds int     `json:"scale_to_zero_seconds"`
}

// DefaultParams are the strategy parameters a deployment starts with.
func DefaultParams() Params {
	return Params{MaxSurge: 1, MaxUnavailable: 0, CanarySteps: []int{10, 50, 100}, WatchSeconds: 60,
		MaxErrorRate: 0.05, MaxP99MS: 2000, MinRequests: 20, RollbackSeconds: 300, ScaleDownSeconds: 300}
}

// ParamsInput changes some of a deployment's Params.
type ParamsInput struct {
	MaxSurge        *int     `json:"max_surge"`
	MaxUnavailable  *int     `json:"max_unavailable"`
	CanarySteps     *[]int   `json:"canary_steps"`
	WatchSeconds    *int     `json:"watch_seconds"`
	MaxErrorRate    *float64 `json:"max_error_rate"`
	MaxP99MS        *int     `json:"max_p99_ms"`
	MinRequests     *int     `json:"min_requests"`
	RollbackSeconds *int     `json:"rollback_seconds"`
	// AutoscaleMetric "" turns autoscaling off.
	AutoscaleMetric    *string  `json:"autoscale_metric"`
	AutoscaleTarget    *float64 `json:"autoscale_target"`
	ScaleDownSeconds   *int     `json:"scale_down_seconds"`
	ScaleToZeroSeconds *int     `json:"scale_to_zero_seconds"`
}

// apply validates in onto p.
func (in *ParamsInput) apply(p *Params) error {
	if in == nil {
		return nil
	}
	set := func(dst *int, v *int, field string, lo, hi int) error {
		if v == nil {
			return nil
		}
		if *v < lo || *v > hi {
			return errs.Field(field, "must be %d to %d", lo, hi)
		}
		*dst = *v
		return nil
	}
	for _, f := range []struct {
		dst    *int
		v      *int
		name   string
		lo, hi int
	}{{&p.MaxSurge, in.MaxSurge, "params.max_surge", 0, 100}, {&p.MaxUnavailable, in.MaxUnavailable, "params.max_unavailable", 0, 100},
		{&p.WatchSeconds, in.WatchSeconds, "params.watch_seconds", 0, 86400}, {&p.MaxP99MS, in.MaxP99MS, "params.max_p99_ms", 1, 600000},
		{&p.MinRequests, in.MinRequests, "params.min_requests", 0, 1000000}, {&p.RollbackSeconds, in.RollbackSeconds, "params.rollback_seconds", 0, 7 * 86400},
		{&p.ScaleDownSeconds, in.ScaleDownSeconds, "params.scale_down_seconds", 0, 86400},
		{&p.ScaleToZeroSeconds, in.ScaleToZeroSeconds, "params.scale_to_zero_seconds", 0, 7 * 86400}} {
		if err := set(f.dst, f.v, f.name, f.lo, f.hi); err != nil {
			return err
		}
	}
	if p.MaxSurge == 0 && p.MaxUnavailable == 0 {
		return errs.Field("params.max_surge", "max_surge and max_unavailable cannot both be 0: a rolling release could never start")
	}
	if in.MaxErrorRate != nil {
		if *in.MaxErrorRate < 0 || *in.MaxErrorRate > 1 {
			return errs.Field("params.max_error_rate", "must be 0 to 1 (a fraction of requests)")
		}
		p.MaxErrorRate = *in.MaxErrorRate
	}
	if in.AutoscaleMetric != nil {
		switch *in.AutoscaleMetric {
		case "", "concurrency", "gpu_utilization":
			p.AutoscaleMetric = *in.AutoscaleMetric
		default:
			return errs.Field("params.autoscale_metric", "must be concurrency, gpu_utilization or empty (off)")
		}
	}
	if in.AutoscaleTarget != nil {
		p.AutoscaleTarget = *in.AutoscaleTarget
	}
	switch {
	case p.AutoscaleMetric == "concurrency" && (p.AutoscaleTarget < 0.1 || p.AutoscaleTarget > 10000):
		return errs.Field("params.autoscale_target", "must be 0.1 to 10000 requests in flight per replica")
	case p.AutoscaleMetric == "gpu_utilization" && (p.AutoscaleTarget < 1 || p.AutoscaleTarget > 100):
		return errs.Field("params.autoscale_target", "must be 1 to 100 percent")
	}
	if in.CanarySteps != nil {
		steps := *in.CanarySteps
		if len(steps) == 0 || len(steps) > 10 || steps[len(steps)-1] != 100 {
			return errs.Field("params.canary_steps", "must be 1 to 10 percentages ending with 100")
		}
		for i, v := range steps {
			if v < 1 || v > 100 || (i > 0 && v <= steps[i-1]) {
				return errs.Field("params.canary_steps", "must rise strictly, each 1 to 100")
			}
		}
		p.CanarySteps = append([]int{}, steps...)
	}
	return nil
}

func (d *Deployment) watch() time.Duration { return time.Duration(d.Params.WatchSeconds) * time.Second }

// vname is a version's name for messages.
func (d *Deployment) vname(id string) string {
	if n, ok := d.Versions[id]; ok {
		return n
	}
	return id
}

// Deployment runs a model's version on GPU replicas and releases new
// versions with a strategy.
type Deployment struct {
	ID              string  `json:"id"`
	TenantID        string  `json:"tenant_id"`
	Name            string  `json:"name"`
	ModelID         string  `json:"model_id"`
	ModelName       string  `json:"model_name"`
	StableVersionID string  `json:"stable_version_id"`
	TargetVersionID *string `json:"target_version_id"`
	Strategy        string  `json:"strategy"`
	Params          Params  `json:"params"`
	MinReplicas     int     `json:"min_replicas"`
	MaxReplicas     int     `json:"max_replicas"`
	Replicas        int     `json:"replicas"`
	// State is steady, progressing (a release runs), paused or deleting.
	State             string     `json:"state"`
	Step              int        `json:"step"`
	StepStartedAt     *time.Time `json:"step_started_at"`
	PreviousVersionID *string    `json:"previous_version_id"`
	PreviousUntil     *time.Time `json:"previous_until"`
	// Traffic is the percent of requests per version id.
	Traffic   map[string]int `json:"traffic"`
	CreatedAt time.Time      `json:"created_at"`
	UpdatedAt time.Time      `json:"updated_at"`
	// Versions names the model's versions by id.
	Versions map[string]string `json:"versions"`
}

// Replica is one replica of a deployment and its allocation.
type Replica struct {
	ID           string     `json:"id"`
	DeploymentID string     `json:"deployment_id"`
	VersionID    string     `json:"version_id"`
	State        string     `json:"state"`
	Reason       string     `json:"reason"`
	Need         Need       `json:"need"`
	Node         *string    `json:"node"`
	GPUs         []string   `json:"gpus"`
	MilliGPUs    int        `json:"milli_gpus"`
	CreatedAt    time.Time  `json:"created_at"`
	PlacedAt     *time.Time `json:"placed_at"`
	ReadyAt      *time.Time `json:"ready_at"`
	StoppedAt    *time.Time `json:"stopped_at"`
	// What its node's runtime reports: where the router reaches it while
	// ready, its process, restarts and the supervisor's state.
	Endpoint string `json:"endpoint"`
	PID      *int   `json:"pid"`
	Restarts int    `json:"restarts"`
	Runtime  string `json:"runtime"`
	// Figures are the router's figures for it over the last minute (detail
	// only).
	Figures *VersionStats `json:"figures,omitempty"`
}

// Event is one entry of a deployment's history.
type Event struct {
	At      time.Time `json:"at"`
	Kind    string    `json:"kind"`
	Message string    `json:"message"`
}

// DeploymentDetail is a deployment with its replicas and history.
type DeploymentDetail struct {
	Deployment
	ReplicaList []Replica `json:"replica_list"`
	Events      []Event   `json:"events"`
	// Stats are the release target's figures in the current canary step.
	Stats *VersionStats `json:"stats,omitempty"`
	// VersionFigures are the router's figures per version id over the last
	// minute, across every instance.
	VersionFigures map[string]VersionStats `json:"version_figures"`
}

// NewDeployment creates a deployment.
type NewDeployment struct {
	TenantID string `json:"tenant_id,omitempty"` // platform administrators only
	Name     string `json:"name" required:"true"`
	ModelID  string `json:"model_id" required:"true"`
	// VersionID defaults to the model's newest version.
	VersionID   string       `json:"version_id"`
	Replicas    *int         `json:"replicas"`
	MinReplicas *int         `json:"min_replicas"`
	MaxReplicas *int         `json:"max_replicas"`
	Strategy    string       `json:"strategy"`
	Params      *ParamsInput `json:"params"`
}

// DeploymentUpdate changes a deployment: a new VersionID starts a release
// with the deployment's strategy.
type DeploymentUpdate struct {
	VersionID   *string      `json:"version_id"`
	Replicas    *int         `json:"replicas"`
	MinReplicas *int         `json:"min_replicas"`
	MaxReplicas *int         `json:"max_replicas"`
	Strategy    *string      `json:"strategy"`
	Params      *ParamsInput `json:"params"`
}

var deploymentName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// sizes validates replica counts onto d.
func sizes(d *Deployment, replicas, lo, hi *int) error {
	if lo != nil {
		d.MinReplicas = *lo
	}
	if hi != nil {
		d.MaxReplicas = *hi
	}
	if replicas != nil {
		d.Replicas = *replicas
	}
	switch {
	case d.MinReplicas < 0:
		return errs.Field("min_replicas", "must not be negative")
	case d.MaxReplicas < 1 || d.MaxReplicas > 1000:
		return errs.Field("max_replicas", "must be 1 to 1000")
	case d.MaxReplicas < d.MinReplicas:
		return errs.Field("max_replicas", "must not be below min_replicas (%d)", d.MinReplicas)
	case d.Replicas < d.MinReplicas || d.Replicas > d.MaxReplicas:
		return errs.Field("replicas", "must be between min_replicas (%d) and max_replicas (%d)", d.MinReplicas, d.MaxReplicas)
	}
	return nil
}

func checkStrategy(s string) error {
	switch s {
	case "rolling", "blue_green", "canary":
		return nil
	}
	return errs.Field("strategy", "must be rolling, blue_green or canary")
}

const deploymentCols = `d.id, d.tenant_id, d.name, d.model_id, m.name, d.stable_version_id, d.target_version_id, d.strategy, d.params,
	d.min_replicas, d.max_replicas, d.replicas, d.state, d.step, d.step_started_at, d.previous_version_id, d.previous_until,
	d.traffic, d.created_at, d.updated_at,
	(SELECT jsonb_object_agg(v.id, v.version) FROM model_versions v WHERE v.model_id = d.model_id)`

const deploymentFrom = ` FROM deployments d JOIN models m ON m.id = d.model_id`

func scanDeployment(r pgx.CollectableRow) (Deployment, error) {
	var d Deployment
	var params, traffic, versions []byte
	err := r.Scan(&d.ID, &d.TenantID, &d.Name, &d.ModelID, &d.ModelName, &d.StableVersionID, &d.TargetVersionID, &d.Strategy,
		&params, &d.MinReplicas, &d.MaxReplicas, &d.Replicas, &d.State, &d.Step, &d.StepStartedAt, &d.PreviousVersionID,
		&d.PreviousUntil, &traffic, &d.CreatedAt, &d.UpdatedAt, &versions)
	if err != nil {
		return d, err
	}
	d.Params = DefaultParams()
	if err := json.Unmarshal(params, &d.Params); err != nil {
		return d, err
	}
	if err := json.Unmarshal(traffic, &d.Traffic); err != nil {
		return d, err
	}
	if versions != nil {
		err = json.Unmarshal(versions, &d.Versions)
	}
	return d, err
}

// getDeployment reads a deployment in tx's scope, locking it when lock.
func getDeployment(ctx context.Context, tx pgx.Tx, id string, lock bool) (*Deployment, error) {
	if _, err := uuid.Parse(id); err != nil {
		return nil, errs.E(errs.NotFound, "no such deployment")
	}
	q := `SELECT ` + deploymentCols + deploymentFrom + ` WHERE d.id = $1`
	if lock {
		q += ` FOR UPDATE OF d`
	}
	rows, _ := tx.Query(ctx, q, id)
	d, err := pgx.CollectExactlyOneRow(rows, scanDeployment)
	if postgres.IsNoRows(err) {
		return nil, errs.E(errs.NotFound, "no such deployment")
	}
	return &d, err
}

// saveDeployment writes what the controller and the actions change.
func saveDeployment(ctx context.Context, tx pgx.Tx, d *Deployment) error {
	params, _ := json.Marshal(d.Params)
	traffic, _ := json.Marshal(d.Traffic)
	_, err := tx.Exec(ctx, `UPDATE deployments SET stable_version_id = $2, target_version_id = $3, strategy = $4, params = $5,
		min_replicas = $6, max_replicas = $7, replicas = $8, state = $9, step = $10, step_started_at = $11,
		previous_version_id = $12, previous_until = $13, traffic = $14, updated_at = now() WHERE id = $1`,
		d.ID, d.StableVersionID, d.TargetVersionID, d.Strategy, params, d.MinReplicas, d.MaxReplicas, d.Replicas, d.State,
		d.Step, d.StepStartedAt, d.PreviousVersionID, d.PreviousUntil, traffic)
	return err
}

func addEvents(ctx context.Context, tx pgx.Tx, d *Deployment, evs []depEvent) error {
	for _, e := range evs {
		if _, err := tx.Exec(ctx, `INSERT INTO deployment_events (tenant_id, deployment_id, kind, message) VALUES ($1, $2, $3, $4)`,
			d.TenantID, d.ID, e.kind, e.message); err != nil {
			return err
		}
	}
	return nil
}

// CreateDeployment creates a deployment (counted against max_deployments);
// the scheduler creates and places its replicas.
func (s *Service) CreateDeployment(ctx context.Context, in NewDeployment) (*Deployment, error) {
	if err := principal.Check(ctx, "gpu:deploy"); err != nil {
		return nil, err
	}
	tenant, err := principal.OwningTenant(ctx, in.TenantID)
	if err != nil {
		return nil, err
	}
	d := &Deployment{ID: uuid.Must(uuid.NewV7()).String(), TenantID: tenant, Name: strings.TrimSpace(in.Name),
		Strategy: in.Strategy, Params: DefaultParams(), State: "steady", MinReplicas: 1, MaxReplicas: 1, Replicas: 1}
	if !deploymentName.MatchString(d.Name) {
		return nil, errs.Field("name", "must be 1 to 63 lower-case letters, digits or dashes, starting and ending with a letter or digit")
	}
	if d.Strategy == "" {
		d.Strategy = "rolling"
	}
	if err := checkStrategy(d.Strategy); err != nil {
		return nil, err
	}
	if in.Replicas != nil {
		d.MaxReplicas = max(*in.Replicas, 1)
		d.MinReplicas = min(*in.Replicas, 1)
	}
	if in.MinReplicas != nil && in.MaxReplicas == nil {
		d.MaxReplicas = max(d.MaxReplicas, *in.MinReplicas)
	}
	if in.Replicas == nil && in.MinReplicas != nil {
		d.Replicas = *in.MinReplicas
	}
	if err := sizes(d, in.Replicas, in.MinReplicas, in.MaxReplicas); err != nil {
		return nil, err
	}
	if err := in.Params.apply(&d.Params); err != nil {
		return nil, err
	}
	ctx = postgres.WithTenant(ctx, tenant)
	var out *Deployment
	err = s.tx.Do(ctx, "gpu.create_deployment", func(tx pgx.Tx) error {
		m, err := getModel(ctx, tx, in.ModelID)
		if err != nil {
			if errs.CodeOf(err) == errs.NotFound {
				return errs.Field("model_id", "no such model")
			}
			return err
		}
		if len(m.Versions) == 0 {
			return errs.Field("model_id", "the model has no version yet")
		}
		d.StableVersionID = m.Versions[len(m.Versions)-1].ID
		if in.VersionID != "" {
			d.StableVersionID = ""
			for _, v := range m.Versions {
				if v.ID == in.VersionID {
					d.StableVersionID = v.ID
				}
			}
			if d.StableVersionID == "" {
				return errs.Field("version_id", "not a version of this model")
			}
		}
		d.ModelID = m.ID
		d.Traffic = map[string]int{d.StableVersionID: 100}
		params, _ := json.Marshal(d.Params)
		traffic, _ := json.Marshal(d.Traffic)
		if _, err := tx.Exec(ctx, `INSERT INTO deployments (id, tenant_id, name, model_id, stable_version_id, strategy, params,
			min_replicas, max_replicas, replicas, state, traffic) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'steady', $11)`,
			d.ID, tenant, d.Name, d.ModelID, d.StableVersionID, d.Strategy, params, d.MinReplicas, d.MaxReplicas, d.Replicas, traffic); err != nil {
			return err
		}
		if err := s.quotas.Use(ctx, tx, tenant, "max_deployments", 1); err != nil {
			return err
		}
		if err := addEvents(ctx, tx, d, []depEvent{{"created", "created with " + d.Strategy + " releases"}}); err != nil {
			return err
		}
		if err := auditlog.Record(ctx, tx, s.now(), tenant, auditlog.Actor(ctx), "deployment.create", "deployment:"+d.ID,
			map[string]any{"name": d.Name, "model": m.Name}); err != nil {
			return err
		}
		out, err = getDeployment(ctx, tx, d.ID, false)
		return err
	})
	if postgres.IsUnique(err, "deployments_tenant_id_name_key") {
		return nil, errs.Field("name", "a deployment named %q exists", d.Name)
	}
	if err != nil {
		return nil, err
	}
	s.changed(ctx, out.ID)
	return out, nil
}

// ListDeployments lists the caller's tenant's deployments (every tenant's
// for platform administrators).
func (s *Service) ListDeployments(ctx context.Context) ([]Deployment, error) {
	if err := principal.Check(ctx, "gpu:read"); err != nil {
		return nil, err
	}
	return postgres.Collect(ctx, s.tx, "gpu.list_deployments", scanDeployment,
		`SELECT `+deploymentCols+deploymentFrom+` ORDER BY d.name, d.id LIMIT 1000`)
}

const replicaCols = `id, deployment_id, version_id, state, reason, gpus, memory_mb, sharing, mig_profile, node_id, gpu_uuids,
	milli_gpus, created_at, placed_at, ready_at, stopped_at, endpoint, pid, restarts, runtime`

func scanReplica(r pgx.CollectableRow) (Replica, error) {
	var x Replica
	var sharing string
	err := r.Scan(&x.ID, &x.DeploymentID, &x.VersionID, &x.State, &x.Reason, &x.Need.GPUs, &x.Need.MemoryMB, &sharing,
		&x.Need.MIGProfile, &x.Node, &x.GPUs, &x.MilliGPUs, &x.CreatedAt, &x.PlacedAt, &x.ReadyAt, &x.StoppedAt, &x.Endpoint, &x.PID, &x.Restarts, &x.Runtime)
	x.Need.Sharing = Sharing(sharing)
	return x, err
}

// GetDeployment returns a deployment with its live replicas (and the 20
// last stopped), its history and the release target's current figures.
func (s *Service) GetDeployment(ctx context.Context, id string) (*DeploymentDetail, error) {
	if err := principal.Check(ctx, "gpu:read"); err != nil {
		return nil, err
	}
	var out DeploymentDetail
	err := s.tx.Do(ctx, "gpu.get_deployment", func(tx pgx.Tx) error {
		d, err := getDeployment(ctx, tx, id, false)
		if err != nil {
			return err
		}
		out.Deployment = *d
		rows, _ := tx.Query(ctx, `(SELECT `+replicaCols+` FROM replicas WHERE deployment_id = $1 AND state <> 'stopped')
			UNION ALL (SELECT `+replicaCols+` FROM replicas WHERE deployment_id = $1 AND state = 'stopped' ORDER BY stopped_at DESC LIMIT 20)
			ORDER BY created_at, id`, id)
		if out.ReplicaList, err = pgx.CollectRows(rows, scanReplica); err != nil {
			return err
		}
		rows, _ = tx.Query(ctx, `SELECT at, kind, message FROM deployment_events WHERE deployment_id = $1 ORDER BY id DESC LIMIT 100`, id)
		out.Events, err = pgx.CollectRows(rows, pgx.RowToStructByPos[Event])
		return err
	})
	if err != nil {
		return nil, err
	}
	if d := out.Deployment; d.TargetVersionID != nil && d.StepStartedAt != nil {
		if st, err := s.stats.Window(ctx, d.ID, *d.TargetVersionID, *d.StepStartedAt, s.now()); err == nil {
			out.Stats = &st
		}
	}
	// The last minute's figures, in one round trip; Redis being down leaves
	// them out.
	now := s.now()
	var subjects []string
	for v := range out.Versions {
		subjects = append(subjects, v)
	}
	for _, r := range out.ReplicaList {
		if r.State != "stopped" {
			subjects = append(subjects, "replica:"+r.ID)
		}
	}
	out.VersionFigures = map[string]VersionStats{}
	if figs, err := s.stats.Windows(ctx, out.ID, subjects, now.Add(-time.Minute), now); err == nil {
		for v := range out.Versions {
			if f := figs[v]; f.Requests > 0 {
				out.VersionFigures[v] = f
			}
		}
		for i, r := range out.ReplicaList {
			if f, ok := figs["replica:"+r.ID]; ok && f.Requests > 0 {
				out.ReplicaList[i].Figures = &f
			}
		}
	}
	return &out, nil
}

// UpdateDeployment scales a deployment, changes its strategy, or starts a
// release of another version.
func (s *Service) UpdateDeployment(ctx context.Context, id string, in DeploymentUpdate) (*Deployment, error) {
	return s.act(ctx, id, "deployment.update", func(tx pgx.Tx, d *Deployment, c counts) ([]depEvent, error) {
		var evs []depEvent
		if in.Strategy != nil {
			if err := checkStrategy(*in.Strategy); err != nil {
				return nil, err
			}
			if d.TargetVersionID != nil && *in.Strategy != d.Strategy {
				return nil, errs.E(errs.Conflict, "a release is in progress: promote or roll it back before changing the strategy")
			}
			d.Strategy = *in.Strategy
		}
		if err := in.Params.apply(&d.Params); err != nil {
			return nil, err
		}
		before := d.Replicas
		if err := sizes(d, in.Replicas, in.MinReplicas, in.MaxReplicas); err != nil {
			return nil, err
		}
		if d.Replicas != before {
			evs = append(evs, depEvent{"scaled", fmt.Sprintf("replicas %d → %d", before, d.Replicas)})
		}
		if in.VersionID != nil {
			v := *in.VersionID
			if _, ok := d.Versions[v]; !ok {
				return nil, errs.Field("version_id", "not a version of this deployment's model")
			}
			switch {
			case d.TargetVersionID != nil && *d.TargetVersionID == v:
			case d.TargetVersionID != nil:
				return nil, errs.E(errs.Conflict, "a release of version %s is in progress: promote or roll it back first", d.vname(*d.TargetVersionID))
			case v == d.StableVersionID:
				return nil, errs.E(errs.Conflict, "the deployment already runs version %s", d.vname(v))
			default:
				d.TargetVersionID, d.Step, d.StepStartedAt, d.State = &v, 0, nil, "progressing"
				evs = append(evs, depEvent{"release_started", fmt.Sprintf("%s release of version %s started", d.Strategy, d.vname(v))})
			}
		}
		return evs, nil
	})
}

// Promote advances a release now: the next canary step without waiting for
// the watch window, a blue-green switch once the new set is ready, or the
// end of a blue-green rollback window.
func (s *Service) Promote(ctx context.Context, id string) (*Deployment, error) {
	return s.act(ctx, id, "deployment.promote", func(tx pgx.Tx, d *Deployment, c counts) ([]depEvent, error) {
		var dc decision
		switch {
		case d.TargetVersionID == nil && d.PreviousVersionID != nil:
			now := s.now()
			d.PreviousUntil = &now
			dc.event("promoted", "rollback window ended by an operator")
		case d.TargetVersionID == nil:
			return nil, errs.E(errs.Conflict, "no release in progress")
		case d.Strategy == "rolling":
			return nil, errs.E(errs.Conflict, "a rolling release advances by itself as new replicas become ready")
		case d.Strategy == "blue_green":
			if n := c.running[*d.TargetVersionID]; n < d.Replicas {
				return nil, errs.E(errs.Conflict, "the new set is not ready: %d of %d replicas run", n, d.Replicas)
			}
			switchBlueGreen(d, &dc, s.now(), "promoted by an operator")
		default:
			if !stepReady(d, c) {
				return nil, errs.E(errs.Conflict, "canary step %d is not ready: %d of %d replicas run", d.Step+1,
					c.running[*d.TargetVersionID], canaryWant(d, d.Step))
			}
			dc.event("promoted", "step %d (%d%%) promoted by an operator", d.Step+1, d.Params.CanarySteps[d.Step])
			advance(d, &dc, s.now())
		}
		return dc.events, nil
	})
}

// Rollback abandons a release in progress, or within a blue-green rollback
// window returns traffic to the previous set.
func (s *Service) Rollback(ctx context.Context, id string) (*Deployment, error) {
	return s.act(ctx, id, "deployment.rollback", func(tx pgx.Tx, d *Deployment, c counts) ([]depEvent, error) {
		var dc decision
		switch {
		case d.TargetVersionID != nil:
			rollback(d, &dc, "rolled back by an operator")
		case d.PreviousVersionID != nil && d.PreviousUntil != nil && s.now().Before(*d.PreviousUntil):
			from := d.StableVersionID
			d.StableVersionID, d.PreviousVersionID, d.PreviousUntil = *d.PreviousVersionID, nil, nil
			d.Traffic = map[string]int{d.StableVersionID: 100}
			dc.event("rolled_back", "traffic returned from version %s to %s by an operator", d.vname(from), d.vname(d.StableVersionID))
		default:
			return nil, errs.E(errs.Conflict, "nothing to roll back: no release in progress and no previous set kept")
		}
		return dc.events, nil
	})
}

// Pause stops a release where it is (replicas are still replaced).
func (s *Service) Pause(ctx context.Context, id string) (*Deployment, error) {
	return s.act(ctx, id, "deployment.pause", func(tx pgx.Tx, d *Deployment, c counts) ([]depEvent, error) {
		if d.TargetVersionID == nil {
			return nil, errs.E(errs.Conflict, "no release in progress")
		}
		if d.State == "paused" {
			return nil, nil
		}
		d.State = "paused"
		return []depEvent{{"paused", "release paused by an operator"}}, nil
	})
}

// Resume continues a paused release.
func (s *Service) Resume(ctx context.Context, id string) (*Deployment, error) {
	return s.act(ctx, id, "deployment.resume", func(tx pgx.Tx, d *Deployment, c counts) ([]depEvent, error) {
		if d.State != "paused" {
			return nil, errs.E(errs.Conflict, "the release is not paused")
		}
		d.State = "progressing"
		return []depEvent{{"resumed", "release resumed by an operator"}}, nil
	})
}

// DeleteDeployment stops every replica; the deployment is removed (and its
// max_deployments unit given back) once they have all stopped.
func (s *Service) DeleteDeployment(ctx context.Context, id string) error {
	_, err := s.act(ctx, id, "deployment.delete", func(tx pgx.Tx, d *Deployment, c counts) ([]depEvent, error) {
		if d.State == "deleting" {
			return nil, nil
		}
		d.State, d.TargetVersionID, d.Traffic = "deleting", nil, map[string]int{}
		return []depEvent{{"deleting", "deletion requested: replicas stop"}}, nil
	})
	return err
}

// act runs an operator's action on a locked deployment and records it.
func (s *Service) act(ctx context.Context, id, action string, fn func(pgx.Tx, *Deployment, counts) ([]depEvent, error)) (*Deployment, error) {
	if err := principal.Check(ctx, "gpu:deploy"); err != nil {
		return nil, err
	}
	var out *Deployment
	err := s.tx.Do(ctx, "gpu."+action, func(tx pgx.Tx) error {
		d, err := getDeployment(ctx, tx, id, true)
		if err != nil {
			return err
		}
		if d.State == "deleting" && action != "deployment.delete" {
			return errs.E(errs.Conflict, "the deployment is being deleted")
		}
		reps, err := liveReplicas(ctx, tx, d.ID)
		if err != nil {
			return err
		}
		evs, err := fn(tx, d, countReplicas(reps))
		if err != nil {
			return err
		}
		if err := saveDeployment(ctx, tx, d); err != nil {
			return err
		}
		if err := addEvents(ctx, tx, d, evs); err != nil {
			return err
		}
		if err := auditlog.Record(ctx, tx, s.now(), d.TenantID, auditlog.Actor(ctx), action, "deployment:"+d.ID, nil); err != nil {
			return err
		}
		out, err = getDeployment(ctx, tx, id, false)
		return err
	})
	if err != nil {
		return nil, err
	}
	s.changed(ctx, id)
	return out, nil
}

// liveReplicas are a deployment's replicas that have not stopped.
func liveReplicas(ctx context.Context, tx pgx.Tx, deployment string) ([]repView, error) {
	rows, _ := tx.Query(ctx, `SELECT id, version_id, state, created_at FROM replicas WHERE deployment_id = $1 AND state <> 'stopped'
		ORDER BY created_at, id`, deployment)
	return pgx.CollectRows(rows, pgx.RowToStructByPos[repView])
}

// changed tells every instance the deployment's weights may have changed
// (the router reloads them) and wakes the scheduler.
func (s *Service) changed(ctx context.Context, id string) {
	if err := s.traffic.Publish(ctx, id); err != nil {
		s.log.Warn().Err(err).Str("deployment", id).Msg("traffic change not broadcast; routers catch up at their next reload")
	}
}
