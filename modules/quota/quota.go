package quota

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"
	"golang.org/x/sync/singleflight"

	"github.com/atriumhq/atrium/platform/auditlog"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
	"github.com/atriumhq/atrium/platform/redisx"
)

// Kind is what sort of limit a quota is.
type Kind string

// The kinds of quota.
const (
	// Allocation bounds how much a tenant holds at once (users, GPUs):
	// counted up when something is created, down when it is removed.
	Allocation Kind = "allocation"
	// Rate bounds how fast a tenant may call: enforced by the rate limiter.
	Rate Kind = "rate"
	// Budget bounds what a tenant consumes per calendar month (UTC).
	Budget Kind = "budget"
)

// Def describes one quota.
type Def struct {
	Name string `json:"name"`
	Kind Kind   `json:"kind"`
	// Unit is what the limit counts. Scale is how many units of use make
	// one unit of the limit (GPU-hours are metered in GPU-seconds).
	Unit  string `json:"unit"`
	Scale int64  `json:"scale"`
	Help  string `json:"help"`
}

// Defs are the quotas a plan sets, in display order.
var Defs = []Def{
	{"max_users", Allocation, "users", 1, "Users of the tenant (disabled ones included)."},
	{"max_terminals", Allocation, "terminals", 1, "POS terminals registered."},
	{"max_models", Allocation, "models", 1, "Models registered."},
	{"max_deployments", Allocation, "deployments", 1, "Model deployments."},
	{"max_gpus", Allocation, "GPUs", 1000, "GPUs allocated to the tenant's replicas at once, counted in thousandths: a shared replica holds its share of a GPU's memory, a MIG replica its share of the compute slices."},
	{"max_storage_gb", Allocation, "GB", 1, "Model artifact storage."},
	{"max_api_calls_per_day", Rate, "calls per day", 1, "API calls per day (rule tenant-daily)."},
	{"payments_per_second", Rate, "payments per second", 1, "Payment requests per second (rule tenant-payments)."},
	{"terminal_requests_per_second", Rate, "requests per second", 1, "Requests per second of each terminal (rule terminal-rps)."},
	{"max_gpu_hours", Budget, "GPU-hours per month", 3600, "GPU time per calendar month (UTC), metered in GPU-seconds."},
}

// DefOf returns the definition of the named quota.
func DefOf(name string) (Def, bool) {
	for _, d := range Defs {
		if d.Name == name {
			return d, true
		}
	}
	return Def{}, false
}

// Deps are what the quota module needs from the process.
type Deps struct {
	Tx    *postgres.Tx
	Redis *redisx.Client
	Log   zerolog.Logger
	Now   func() time.Time
}

// Service is the quota module: quotas (allocation, rate, budget) with
// their plans and overrides.
type Service struct {
	tx     *postgres.Tx
	log    zerolog.Logger
	now    func() time.Time
	events *redisx.Broadcast[string]

	mu     sync.RWMutex
	limits map[string]limitsEntry // tenant → effective limits
	// gen counts invalidations: a load that raced with one does not
	// store what it read.
	gen   uint64
	loads singleflight.Group
}

type limitsEntry struct {
	limits map[string]int64
	loaded time.Time
	// stale entries are served while one background load refreshes them.
	stale, refreshing bool
}

// limitsTTL bounds how long a cached tenant's limits live without an
// invalidation (a lost broadcast, say).
const limitsTTL = 30 * time.Second

// New returns the quota service.
func New(d Deps) (*Service, error) {
	if d.Tx == nil || d.Redis == nil {
		return nil, errors.New("quota: Tx and Redis are required")
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	return &Service{tx: d.Tx, log: d.Log, now: func() time.Time { return d.Now().UTC() },
		events: redisx.NewBroadcast[string](d.Redis, "quota-limits"), limits: map[string]limitsEntry{}}, nil
}

// Run keeps cached limits current until ctx ends: every instance drops a
// tenant's limits when they change anywhere, and all of them on
// resubscribe. Expired reservations are released every 30 s.
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		t := time.NewTicker(30 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if n, err := s.expireReservations(ctx); err != nil && ctx.Err() == nil {
					s.log.Warn().Err(err).Msg("releasing expired reservations failed")
				} else if n > 0 {
					s.log.Info().Int64("released", n).Msg("released expired quota reservations")
				}
			}
		}
	})
	return s.events.Subscribe(ctx, s.log, func() { s.forget("*") }, s.forget)
}

// forget invalidates tenant's cached limits ("*": every tenant's, after a
// resubscription, when broadcasts may have been missed). A tenant's entry
// goes at once: its next check loads the new limits. After "*" the entries
// are served while they refresh, so a resubscription does not send every
// tenant's next request to PostgreSQL at once.
func (s *Service) forget(tenant string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	if tenant != "*" {
		delete(s.limits, tenant)
		return
	}
	for k, e := range s.limits {
		e.stale = true
		s.limits[k] = e
	}
}

// LimitsChanged drops tenant's cached limits on every instance (after a
// plan change in the tenant module or an override here).
func (s *Service) LimitsChanged(ctx context.Context, tenant string) {
	s.forget(tenant)
	if err := s.events.Publish(ctx, tenant); err != nil {
		s.log.Error().Ctx(ctx).Err(err).Str("tenant", tenant).Msg("quota broadcast failed; instances catch up within 30 s")
	}
}

// Limits returns tenant's effective limits (its plan's, with its
// overrides), from a cache that broadcasts keep current. A quota absent
// from the map is unlimited.
//
// It is on the request path of the rate limiter: a cached entry is
// answered from memory, and one past its TTL (or marked stale) too, while a
// single background load refreshes it. Only a tenant's first check on an
// instance (or the first after its limits changed) waits for PostgreSQL,
// and concurrent checks share that one load; it waits at most a second
// (the rate limiter runs before the request's own deadline is set).
func (s *Service) Limits(ctx context.Context, tenant string) (map[string]int64, error) {
	s.mu.RLock()
	e, ok := s.limits[tenant]
	s.mu.RUnlock()
	if ok && !e.stale && s.now().Sub(e.loaded) < limitsTTL {
		return e.limits, nil
	}
	if ok {
		s.mu.Lock()
		e, ok = s.limits[tenant]
		start := ok && !e.refreshing
		if start {
			e.refreshing = true
			s.limits[tenant] = e
		}
		s.mu.Unlock()
		if start {
			go func() {
				if _, err := s.load(context.WithoutCancel(ctx), tenant); err != nil {
					s.log.Warn().Err(err).Str("tenant", tenant).Msg("refreshing quota limits failed; serving the cached ones")
					s.mu.Lock()
					if e, ok := s.limits[tenant]; ok {
						e.refreshing = false
						s.limits[tenant] = e
					}
					s.mu.Unlock()
				}
			}()
		}
		if ok {
			return e.limits, nil
		}
	}
	ch := s.loads.DoChan(tenant, func() (any, error) { return s.load(context.WithoutCancel(ctx), tenant) })
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(map[string]int64), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(time.Second):
		return nil, errs.E(errs.Unavailable, "the tenant's quota limits cannot be read right now")
	}
}

// load reads tenant's limits from PostgreSQL and caches them, unless an
// invalidation came in meanwhile (then the next check loads again).
func (s *Service) load(ctx context.Context, tenant string) (map[string]int64, error) {
	s.mu.RLock()
	gen := s.gen
	s.mu.RUnlock()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	limits, _, err := s.loadLimits(postgres.WithTenant(ctx, tenant), tenant)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.gen == gen {
		s.limits[tenant] = limitsEntry{limits: limits, loaded: s.now()}
	}
	s.mu.Unlock()
	return limits, nil
}

// loadLimits reads the effective limits and which of them are overrides.
func (s *Service) loadLimits(ctx context.Context, tenant string) (map[string]int64, map[string]bool, error) {
	var plan []byte
	var names []string
	var values []int64
	err := s.tx.QueryRow(ctx, "quota.limits", `SELECT p.quotas,
			coalesce((SELECT array_agg(quota ORDER BY quota) FROM quota_overrides WHERE tenant_id = t.id), '{}'),
			coalesce((SELECT array_agg(value ORDER BY quota) FROM quota_overrides WHERE tenant_id = t.id), '{}')
		FROM tenants t JOIN plans p ON p.id = t.plan WHERE t.id = $1`, []any{tenant}, &plan, &names, &values)
	if postgres.IsNoRows(err) {
		return nil, nil, errs.E(errs.NotFound, "no such tenant")
	}
	if err != nil {
		return nil, nil, err
	}
	limits := map[string]int64{}
	if err := json.Unmarshal(plan, &limits); err != nil {
		return nil, nil, fmt.Errorf("plan quotas: %w", err)
	}
	overridden := map[string]bool{}
	for i, n := range names {
		limits[n] = values[i]
		overridden[n] = true
	}
	return limits, overridden, nil
}

// period is the usage period of a quota at t: "" for allocation quotas,
// the UTC month for budgets.
func period(d Def, t time.Time) string {
	if d.Kind == Budget {
		return t.Format("2006-01")
	}
	return ""
}

// exceeded is the error for an allocation or budget quota that refuses:
// quota_exceeded with the quota, its limit and current use (in the
// limit's unit), answered 403 because retrying will not help until use
// falls or the limit rises.
func exceeded(d Def, limit, used, reserved int64) error {
	inUse := float64(used+reserved) / float64(d.Scale)
	return &errs.Error{
		Code:    errs.QuotaExceeded,
		Message: fmt.Sprintf("quota %s exceeded: limit %d %s, %g in use", d.Name, limit, d.Unit, inUse),
		Extra:   map[string]any{"quota": d.Name, "limit": limit, "used": inUse},
	}
}

// take adds n units of quota to tenant's use inside tx, as reserved or as
// used, refusing when the limit would be passed; at picks the budget
// period. It is atomic under concurrency: the conditional UPDATE re-reads
// the row after waiting for its lock, so concurrent takers from any
// instance serialise on it.
func (s *Service) take(ctx context.Context, tx pgx.Tx, tenant string, d Def, n int64, reserve, check bool, at time.Time) (string, error) {
	if n <= 0 {
		return "", errs.Field("amount", "must be positive")
	}
	per := period(d, at)
	var limit *int64
	if err := tx.QueryRow(ctx, `SELECT coalesce(
			(SELECT value FROM quota_overrides WHERE tenant_id = $1 AND quota = $2),
			(SELECT (p.quotas ->> $2)::bigint FROM tenants t JOIN plans p ON p.id = t.plan WHERE t.id = $1))`,
		tenant, d.Name).Scan(&limit); err != nil {
		return "", err
	}
	var scaled *int64
	if limit != nil && check {
		v := *limit * d.Scale
		scaled = &v
	}
	if _, err := tx.Exec(ctx, `INSERT INTO quota_usage (tenant_id, quota, period) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
		tenant, d.Name, per); err != nil {
		return "", err
	}
	col := "used"
	if reserve {
		col = "reserved"
	}
	add := `UPDATE quota_usage SET ` + col + ` = ` + col + ` + $4, updated_at = now()
		WHERE tenant_id = $1 AND quota = $2 AND period = $3 AND ($5::bigint IS NULL OR used + reserved + $4 <= $5)`
	tag, err := tx.Exec(ctx, add, tenant, d.Name, per, n, scaled)
	if err != nil {
		return "", err
	}
	if tag.RowsAffected() == 0 {
		// Refused: first give back what expired reservations still hold
		// (the sweep would, within 30 s), then try once more. SKIP LOCKED:
		// never wait on a reservation the sweep or a settle holds.
		if freed, err := s.releaseExpired(ctx, tx, tenant, d.Name, per); err != nil {
			return "", err
		} else if freed > 0 {
			if tag, err = tx.Exec(ctx, add, tenant, d.Name, per, n, scaled); err != nil {
				return "", err
			}
		}
	}
	if tag.RowsAffected() == 0 {
		var used, reserved int64
		if err := tx.QueryRow(ctx, `SELECT used, reserved FROM quota_usage WHERE tenant_id = $1 AND quota = $2 AND period = $3`,
			tenant, d.Name, per).Scan(&used, &reserved); err != nil {
			return "", err
		}
		return "", exceeded(d, *limit, used, reserved)
	}
	return per, nil
}

func (s *Service) def(name string, kinds ...Kind) (Def, error) {
	d, ok := DefOf(name)
	if !ok {
		return Def{}, errs.Field("quota", "no quota named %q", name)
	}
	for _, k := range kinds {
		if d.Kind == k {
			return d, nil
		}
	}
	return Def{}, errs.Field("quota", "%s is a %s quota", name, d.Kind)
}

// Use counts n units of an allocation or budget quota for tenant inside
// the caller's transaction, so the count commits or rolls back with the
// caller's change. It refuses with quota_exceeded when the limit would be
// passed. Lowering a limit never takes back what is in use; it only
// refuses new use.
func (s *Service) Use(ctx context.Context, tx pgx.Tx, tenant, quota string, n int64) error {
	d, err := s.def(quota, Allocation, Budget)
	if err != nil {
		return err
	}
	_, err = s.take(ctx, tx, tenant, d, n, false, true, s.now())
	return err
}

// Return gives n units of an allocation quota back inside the caller's
// transaction (what Use counted was removed), never below zero.
func (s *Service) Return(ctx context.Context, tx pgx.Tx, tenant, quota string, n int64) error {
	d, err := s.def(quota, Allocation)
	if err != nil {
		return err
	}
	if n <= 0 {
		return errs.Field("amount", "must be positive")
	}
	_, err = tx.Exec(ctx, `UPDATE quota_usage SET used = greatest(used - $4, 0), updated_at = now()
		WHERE tenant_id = $1 AND quota = $2 AND period = $3`, tenant, d.Name, period(d, s.now()), n)
	return err
}

// Check refuses with quota_exceeded, inside the caller's transaction, when
// tenant's use of a budget or allocation quota has reached its limit (GPU
// time over budget: no new replicas). It counts nothing.
func (s *Service) Check(ctx context.Context, tx pgx.Tx, tenant, quota string) error {
	d, err := s.def(quota, Allocation, Budget)
	if err != nil {
		return err
	}
	var limit *int64
	var used, reserved int64
	if err := tx.QueryRow(ctx, `SELECT coalesce(
			(SELECT value FROM quota_overrides WHERE tenant_id = $1 AND quota = $2),
			(SELECT (p.quotas ->> $2)::bigint FROM tenants t JOIN plans p ON p.id = t.plan WHERE t.id = $1)),
			coalesce((SELECT used FROM quota_usage WHERE tenant_id = $1 AND quota = $2 AND period = $3), 0),
			coalesce((SELECT reserved FROM quota_usage WHERE tenant_id = $1 AND quota = $2 AND period = $3), 0)`,
		tenant, d.Name, period(d, s.now())).Scan(&limit, &used, &reserved); err != nil {
		return err
	}
	if limit != nil && used+reserved >= *limit*d.Scale {
		return exceeded(d, *limit, used, reserved)
	}
	return nil
}

// Consume counts n units of a budget quota that were already consumed
// (metered GPU time), inside the caller's transaction, without refusing:
// use past the limit shows as over budget and refuses the next Use or
// Reserve.
func (s *Service) Consume(ctx context.Context, tx pgx.Tx, tenant, quota string, n int64) error {
	return s.consumeAt(ctx, tx, tenant, quota, n, s.now())
}

// consumeAt is Consume for use that happened at t: it counts in t's budget
// period (the metering flush charges a day's GPU time to that day's month,
// even when the flush runs after midnight on the 1st).
func (s *Service) consumeAt(ctx context.Context, tx pgx.Tx, tenant, quota string, n int64, t time.Time) error {
	d, err := s.def(quota, Budget)
	if err != nil {
		return err
	}
	_, err = s.take(ctx, tx, tenant, d, n, false, false, t.UTC())
	return err
}

// Reservation is capacity held for a tenant between Reserve and Commit or
// Release.
type Reservation struct {
	ID        string    `json:"id"`
	TenantID  string    `json:"tenant_id"`
	Quota     string    `json:"quota"`
	Amount    int64     `json:"amount"`
	State     string    `json:"state"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Reserve holds n units of an allocation or budget quota for tenant until
// Commit or Release, or until ttl passes (then it is released). It refuses
// with quota_exceeded when used plus reserved plus n would pass the limit;
// 100 concurrent reservations from any number of instances never pass it.
func (s *Service) Reserve(ctx context.Context, tenant, quota string, n int64, ttl time.Duration) (*Reservation, error) {
	d, err := s.def(quota, Allocation, Budget)
	if err != nil {
		return nil, err
	}
	if ttl <= 0 || ttl > 24*time.Hour {
		return nil, errs.Field("ttl", "must be between 0 and 24h")
	}
	r := &Reservation{ID: uuid.Must(uuid.NewV7()).String(), TenantID: tenant, Quota: quota, Amount: n, State: "reserved",
		ExpiresAt: s.now().Add(ttl)}
	err = s.tx.Do(postgres.WithTenant(ctx, tenant), "quota.reserve", func(tx pgx.Tx) error {
		per, err := s.take(ctx, tx, tenant, d, n, true, true, s.now())
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO quota_reservations (id, tenant_id, quota, period, amount, expires_at)
			VALUES ($1, $2, $3, $4, $5, $6)`, r.ID, tenant, quota, per, n, r.ExpiresAt)
		return err
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Commit turns a reservation into use. Committing twice is a no-op;
// committing a released or expired reservation is a conflict.
func (s *Service) Commit(ctx context.Context, tenant, id string) error {
	return s.settle(ctx, tenant, id, "committed")
}

// Release gives a reservation's units back: a held reservation stops
// holding them, a committed one stops using them. Releasing twice is a
// no-op.
func (s *Service) Release(ctx context.Context, tenant, id string) error {
	return s.settle(ctx, tenant, id, "released")
}

func (s *Service) settle(ctx context.Context, tenant, id, to string) error {
	if _, err := uuid.Parse(id); err != nil {
		return errs.E(errs.NotFound, "no such reservation")
	}
	return s.tx.Do(postgres.WithTenant(ctx, tenant), "quota."+to, func(tx pgx.Tx) error {
		var quota, per, state string
		var amount int64
		var expires time.Time
		err := tx.QueryRow(ctx, `SELECT quota, period, amount, state, expires_at FROM quota_reservations WHERE id = $1 FOR UPDATE`, id).
			Scan(&quota, &per, &amount, &state, &expires)
		if postgres.IsNoRows(err) {
			return errs.E(errs.NotFound, "no such reservation")
		}
		if err != nil {
			return err
		}
		var q string
		switch {
		case state == to:
			return nil
		case state == "released":
			return errs.E(errs.Conflict, "the reservation was released")
		case state == "reserved" && to == "committed" && !s.now().Before(expires):
			// Expired: the sweep releases it within 30 s; until then it
			// may be released, not committed.
			return errs.E(errs.Conflict, "the reservation expired")
		case state == "reserved" && to == "committed":
			q = `reserved = reserved - $4, used = used + $4`
		case state == "reserved" && to == "released":
			q = `reserved = reserved - $4`
		case state == "committed" && to == "released":
			q = `used = greatest(used - $4, 0)`
		}
		if _, err := tx.Exec(ctx, `UPDATE quota_usage SET `+q+`, updated_at = now()
			WHERE tenant_id = $1 AND quota = $2 AND period = $3`, tenant, quota, per, amount); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE quota_reservations SET state = $2, updated_at = now() WHERE id = $1`, id, to)
		return err
	})
}

// releaseExpired releases tenant's expired, held reservations of one
// quota and period inside tx, returning the units given back.
func (s *Service) releaseExpired(ctx context.Context, tx pgx.Tx, tenant, quota, per string) (int64, error) {
	var freed int64
	err := tx.QueryRow(ctx, `WITH gone AS (
			UPDATE quota_reservations SET state = 'released', updated_at = now()
			WHERE id IN (SELECT id FROM quota_reservations WHERE tenant_id = $1 AND quota = $2 AND period = $3
				AND state = 'reserved' AND expires_at < $4 FOR UPDATE SKIP LOCKED)
			RETURNING amount)
		SELECT coalesce(sum(amount), 0)::bigint FROM gone`, tenant, quota, per, s.now()).Scan(&freed)
	if err != nil || freed == 0 {
		return 0, err
	}
	_, err = tx.Exec(ctx, `UPDATE quota_usage SET reserved = greatest(reserved - $4, 0), updated_at = now()
		WHERE tenant_id = $1 AND quota = $2 AND period = $3`, tenant, quota, per, freed)
	return freed, err
}

// expireReservations releases held reservations past their expiry, on
// the cross-tenant path (a batch job).
func (s *Service) expireReservations(ctx context.Context) (int64, error) {
	var n int64
	err := s.tx.Do(postgres.AllTenants(ctx, "quota reservation expiry"), "quota.expire", func(tx pgx.Tx) error {
		// n counts the reservations released, not the usage rows updated.
		return tx.QueryRow(ctx, `WITH gone AS (
				UPDATE quota_reservations SET state = 'released', updated_at = now()
				WHERE id IN (SELECT id FROM quota_reservations WHERE state = 'reserved' AND expires_at < now() LIMIT 1000 FOR UPDATE SKIP LOCKED)
				RETURNING tenant_id, quota, period, amount),
			given_back AS (
				UPDATE quota_usage u SET reserved = greatest(u.reserved - g.amount, 0), updated_at = now()
				FROM (SELECT tenant_id, quota, period, sum(amount) AS amount FROM gone GROUP BY 1, 2, 3) g
				WHERE u.tenant_id = g.tenant_id AND u.quota = g.quota AND u.period = g.period)
			SELECT count(*) FROM gone`).Scan(&n)
	})
	return n, err
}

// Status is one quota of a tenant as the API and UI show it.
type Status struct {
	Def
	// Limit is nil when the quota is unlimited.
	Limit      *int64 `json:"limit"`
	Overridden bool   `json:"overridden"`
	// Used and Reserved are in the limit's unit (allocation and budget
	// quotas; rate quotas have no stored use).
	Used     float64 `json:"used"`
	Reserved float64 `json:"reserved"`
	Period   string  `json:"period,omitempty"`
}

// Report returns every quota of tenant with its limit and current use.
// Tenant members see their own tenant; platform administrators any.
func (s *Service) Report(ctx context.Context, tenant string) ([]Status, error) {
	if err := s.visible(ctx, tenant); err != nil {
		return nil, err
	}
	ctx = postgres.WithTenant(ctx, tenant)
	limits, overridden, err := s.loadLimits(ctx, tenant)
	if err != nil {
		return nil, err
	}
	type row struct {
		quota, period  string
		used, reserved int64
	}
	now := s.now()
	rows, err := postgres.Collect(ctx, s.tx, "quota.report", func(r pgx.CollectableRow) (row, error) {
		var x row
		err := r.Scan(&x.quota, &x.period, &x.used, &x.reserved)
		return x, err
	}, `SELECT quota, period, used, reserved FROM quota_usage WHERE tenant_id = $1 AND period IN ('', $2)`,
		tenant, now.Format("2006-01"))
	if err != nil {
		return nil, err
	}
	out := make([]Status, 0, len(Defs))
	for _, d := range Defs {
		st := Status{Def: d, Overridden: overridden[d.Name], Period: period(d, now)}
		if v, ok := limits[d.Name]; ok {
			st.Limit = &v
		}
		for _, r := range rows {
			if r.quota == d.Name && r.period == st.Period {
				st.Used = float64(r.used) / float64(d.Scale)
				st.Reserved = float64(r.reserved) / float64(d.Scale)
			}
		}
		out = append(out, st)
	}
	return out, nil
}

// visible refuses a tenant the caller may not see, as not_found.
func (s *Service) visible(ctx context.Context, tenant string) error {
	p := principal.From(ctx)
	if p == nil {
		return errs.E(errs.Unauthenticated, "authentication required")
	}
	// Quotas and usage (payment totals included) are for the tenant's
	// people, not its POS terminals: a stolen terminal secret must not
	// read the merchant group's figures.
	if p.Kind != principal.User {
		return errs.E(errs.Forbidden, "terminals cannot read quotas or usage")
	}
	if _, err := uuid.Parse(tenant); err != nil || (p.TenantID != "" && p.TenantID != tenant) || (p.TenantID == "" && !p.Has("quotas:manage")) {
		return errs.E(errs.NotFound, "no such tenant")
	}
	return nil
}

// SetOverride sets (value non-nil) or removes (nil) tenant's override of
// one quota. Platform administrators only (quotas:manage). A lower limit
// refuses new use and takes nothing back.
func (s *Service) SetOverride(ctx context.Context, tenant, quota string, value *int64) error {
	if err := principal.Check(ctx, "quotas:manage"); err != nil {
		return err
	}
	if err := s.visible(ctx, tenant); err != nil {
		return err
	}
	if _, ok := DefOf(quota); !ok {
		return errs.E(errs.NotFound, "no quota named %s", quota)
	}
	if value != nil && *value < 0 {
		return errs.Field("value", "must be zero or more")
	}
	now := s.now()
	err := s.tx.Do(ctx, "quota.override", func(tx pgx.Tx) error {
		var err error
		if value == nil {
			_, err = tx.Exec(ctx, `DELETE FROM quota_overrides WHERE tenant_id = $1 AND quota = $2`, tenant, quota)
		} else {
			_, err = tx.Exec(ctx, `INSERT INTO quota_overrides (tenant_id, quota, value, updated_at) VALUES ($1, $2, $3, $4)
				ON CONFLICT (tenant_id, quota) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`,
				tenant, quota, *value, now)
		}
		if postgres.IsForeignKey(err) {
			return errs.E(errs.NotFound, "no such tenant")
		}
		if err != nil {
			return err
		}
		return auditlog.Record(ctx, tx, now, tenant, auditlog.Actor(ctx), "quota.override", "quota:"+quota, map[string]any{"value": value})
	})
	if err != nil {
		return err
	}
	s.LimitsChanged(ctx, tenant)
	return nil
}

// Plan is a named set of limits.
type Plan struct {
	ID          string           `json:"id"`
	Name        string           `json:"name"`
	Description string           `json:"description"`
	Quotas      map[string]int64 `json:"quotas"`
}

// Plans lists the plans.
func (s *Service) Plans(ctx context.Context) ([]Plan, error) {
	if err := principal.Check(ctx); err != nil {
		return nil, err
	}
	return postgres.Collect(ctx, s.tx, "quota.plans", func(r pgx.CollectableRow) (Plan, error) {
		var p Plan
		var q []byte
		if err := r.Scan(&p.ID, &p.Name, &p.Description, &q); err != nil {
			return p, err
		}
		return p, json.Unmarshal(q, &p.Quotas)
	}, `SELECT id, name, description, quotas FROM plans ORDER BY id`)
}
