package quota

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/auditlog"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
	"github.com/atriumhq/atrium/platform/redisx"
)

// Route classes group the API's paths for rate-limit rules. Every request
// that has a class also belongs to ClassAPI; paths outside the API (the
// admin UI, static files, probes, /metrics, key discovery) have none and
// are never rate limited, so they cost no Redis round trip.
const (
	ClassAll       = "*" // every request that has a class
	ClassAPI       = "api"
	ClassPayments  = "payments"
	ClassAuth      = "auth"
	ClassInference = "inference"
)

// RouteClasses maps path prefixes to route classes, first match wins: the
// one table that decides which rules a path is checked against. "/api/v1"
// itself is ClassAPI too.
var RouteClasses = []struct{ Prefix, Class string }{
	{"/api/v1/payments", ClassPayments},
	{"/api/v1/refunds", ClassPayments},
	{"/api/v1/auth/", ClassAuth},
	{"/oauth2/", ClassAuth},
	{"/v1/", ClassInference},
	{"/api/v1/", ClassAPI},
}

// class is a route class as an index; noClass is a path outside the API.
type class uint8

const (
	noClass class = iota
	classAPI
	classPayments
	classAuth
	classInference
	numClasses
)

var (
	classNames  = [numClasses]string{"", ClassAPI, ClassPayments, ClassAuth, ClassInference}
	classByName = map[string]class{ClassAPI: classAPI, ClassPayments: classPayments, ClassAuth: classAuth, ClassInference: classInference}
	// routeClasses is RouteClasses with the classes as indexes.
	routeClasses = func() []struct {
		prefix string
		c      class
	} {
		out := make([]struct {
			prefix string
			c      class
		}, len(RouteClasses))
		for i, rc := range RouteClasses {
			out[i].prefix, out[i].c = rc.Prefix, classByName[rc.Class]
		}
		return out
	}()
)

func classOf(path string) class {
	for _, rc := range routeClasses {
		if strings.HasPrefix(path, rc.prefix) {
			return rc.c
		}
	}
	if path == "/api/v1" {
		return classAPI
	}
	return noClass
}

// ClassOf returns the route class of a path, "" for a path outside the API.
func ClassOf(path string) string { return classNames[classOf(path)] }

// RuleClasses are the values of RuleDef.RouteClass, KeyBys those of
// RuleDef.KeyBy.
var (
	RuleClasses = []string{ClassAll, ClassAPI, ClassPayments, ClassAuth, ClassInference}
	KeyBys      = []string{"tenant", "principal", "terminal", "ip"}
)

// keyKind is what a rule counts.
type keyKind uint8

const (
	keyTenant    keyKind = iota // the caller's tenant: "tenant:<id>"
	keyPrincipal                // the caller: "user:<id>" or "terminal:<id>"
	keyTerminal                 // terminals only: "terminal:<id>"
	keyIP                       // anonymous requests by client address: "ip:<addr>"
)

// RuleDef is a stored rate-limit rule, as the admin API shows it.
type RuleDef struct {
	ID          string `json:"id"`
	Description string `json:"description"`
	// RouteClass is one of RuleClasses: the requests the rule covers.
	RouteClass string `json:"route_class"`
	// KeyBy is one of KeyBys: what the rule counts. A request without
	// such a subject (no tenant, not a terminal, authenticated for ip) is
	// not checked against the rule.
	KeyBy string `json:"key_by"`
	// Quota, when set, names the rate quota whose value for the caller's
	// tenant (plan plus override) is the rate; callers without a tenant,
	// and tenants for whom the quota is unlimited, are not checked. Rate is
	// then nil; otherwise Rate is the rate for everyone.
	Quota    *string `json:"quota"`
	Rate     *int    `json:"rate"`
	PeriodMS int64   `json:"period_ms"`
	// Burst is how many events may come at once; nil means the rate.
	Burst *int `json:"burst"`
	// Mode is enforce or observe; FailMode open or closed (what the rule
	// does while Redis is unreachable).
	Mode      string    `json:"mode"`
	FailMode  string    `json:"fail_mode"`
	Enabled   bool      `json:"enabled"`
	UpdatedAt time.Time `json:"updated_at"`
	UpdatedBy string    `json:"updated_by"`
}

// NewRule is a request to create a rule. Mode defaults to enforce,
// FailMode to open, Enabled to true.
type NewRule struct {
	ID          string  `json:"id" required:"true"`
	Description string  `json:"description"`
	RouteClass  string  `json:"route_class" required:"true"`
	KeyBy       string  `json:"key_by" required:"true"`
	Quota       *string `json:"quota"`
	Rate        *int    `json:"rate"`
	PeriodMS    int64   `json:"period_ms" required:"true"`
	Burst       *int    `json:"burst"`
	Mode        string  `json:"mode"`
	FailMode    string  `json:"fail_mode"`
	Enabled     *bool   `json:"enabled"`
}

// Nullable is a JSON member that may be absent (Set false), null (Set and
// Null) or a value: a PATCH tells "leave it" from "clear it".
type Nullable[T any] struct {
	Set, Null bool
	Value     T
}

// UnmarshalJSON records that the member was present.
func (n *Nullable[T]) UnmarshalJSON(b []byte) error {
	n.Set = true
	if string(b) == "null" {
		n.Null = true
		return nil
	}
	return json.Unmarshal(b, &n.Value)
}

// Val returns a pointer to the value, nil for null.
func (n Nullable[T]) Val() *T {
	if n.Null {
		return nil
	}
	v := n.Value
	return &v
}

// Some is a Nullable holding v.
func Some[T any](v T) Nullable[T] { return Nullable[T]{Set: true, Value: v} }

// Null is a Nullable holding null.
func Null[T any]() Nullable[T] { return Nullable[T]{Set: true, Null: true} }

// RuleChange changes a rule; absent members stay as they are. Setting a
// quota clears the rate and setting a rate clears the quota, unless both
// are given; a null burst means "the same as the rate".
type RuleChange struct {
	Description *string          `json:"description"`
	RouteClass  *string          `json:"route_class"`
	KeyBy       *string          `json:"key_by"`
	Quota       Nullable[string] `json:"quota"`
	Rate        Nullable[int]    `json:"rate"`
	PeriodMS    *int64           `json:"period_ms"`
	Burst       Nullable[int]    `json:"burst"`
	Mode        *string          `json:"mode"`
	FailMode    *string          `json:"fail_mode"`
	Enabled     *bool            `json:"enabled"`
}

// validate checks a rule, naming the first field at fault.
func (d RuleDef) validate() error {
	switch {
	case d.ID == "" || len(d.ID) > 64 || strings.IndexFunc(d.ID, badIDRune) >= 0:
		return errs.Field("id", "must be 1 to 64 letters, digits, '-', '_' or '.'")
	case len(d.Description) > 500:
		return errs.Field("description", "must be at most 500 characters")
	case !contains(RuleClasses, d.RouteClass):
		return errs.Field("route_class", "must be one of %s", strings.Join(RuleClasses, ", "))
	case !contains(KeyBys, d.KeyBy):
		return errs.Field("key_by", "must be one of %s", strings.Join(KeyBys, ", "))
	case (d.Quota == nil) == (d.Rate == nil):
		return errs.Field("rate", "give either a rate or a quota, not both")
	case d.PeriodMS < 1 || d.PeriodMS > 366*86400*1000:
		return errs.Field("period_ms", "must be between 1 ms and 366 days")
	case d.Burst != nil && (*d.Burst < 1 || *d.Burst > 1_000_000_000):
		return errs.Field("burst", "must be between 1 and 1000000000, or null for the same as the rate")
	case d.Mode != Enforce.String() && d.Mode != Observe.String():
		return errs.Field("mode", "must be enforce or observe")
	case d.FailMode != FailOpen.String() && d.FailMode != FailClosed.String():
		return errs.Field("fail_mode", "must be open or closed")
	}
	if d.Quota != nil {
		def, ok := DefOf(*d.Quota)
		if !ok || def.Kind != Rate {
			return errs.Field("quota", "must name a rate quota (%s)", strings.Join(rateQuotas(), ", "))
		}
		if d.KeyBy == "ip" {
			return errs.Field("quota", "quotas are per tenant, and requests counted by ip are anonymous: give a rate")
		}
		return nil
	}
	if *d.Rate < 1 || *d.Rate > 1_000_000_000 {
		return errs.Field("rate", "must be between 1 and 1000000000")
	}
	if time.Duration(d.PeriodMS)*time.Millisecond/time.Duration(*d.Rate) < time.Microsecond {
		return errs.Field("rate", "at most one event per microsecond")
	}
	return nil
}

func rateQuotas() []string {
	var out []string
	for _, d := range Defs {
		if d.Kind == Rate {
			out = append(out, d.Name)
		}
	}
	return out
}

func contains(list []string, v string) bool {
	for _, s := range list {
		if s == v {
			return true
		}
	}
	return false
}

// RateLimitDeps are what the rate limits need from the process.
type RateLimitDeps struct {
	Tx    *postgres.Tx
	Redis *redisx.Client
	// Quotas gives the per-tenant limits of quota rules.
	Quotas *Service
	Log    zerolog.Logger
	Now    func() time.Time
	// Limiter tunes the engine (its Redis timeouts and hold-off); its
	// Observer is not used.
	Limiter Config
}

// RateLimits is the rate limiting of the HTTP edge: the rules, stored in
// PostgreSQL and held in memory on every instance, the middleware that
// checks requests against them with one Limiter.Allow, their metrics and
// live counts, and their admin API.
type RateLimits struct {
	tx     *postgres.Tx
	redis  *redisx.Client
	quotas *Service
	log    zerolog.Logger
	now    func() time.Time
	events *redisx.Broadcast[string]

	limiter atomic.Pointer[Limiter]
	rules   atomic.Pointer[ruleSet]
	// reloadMu orders reloads, so an older read never replaces a newer one.
	reloadMu sync.Mutex

	statsMu sync.Mutex
	stats   map[string]*ruleStats // rule id -> counters, kept across reloads

	decisions   *prometheus.CounterVec
	fallbackLog logGate
	quotaLog    logGate
	flushLog    logGate
}

// NewRateLimits loads the rules and opens the Limiter's own Redis pool.
func NewRateLimits(ctx context.Context, d RateLimitDeps) (*RateLimits, error) {
	if d.Tx == nil || d.Redis == nil || d.Quotas == nil {
		return nil, errors.New("quota: rate limits need Tx, Redis and Quotas")
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	s := &RateLimits{tx: d.Tx, redis: d.Redis, quotas: d.Quotas, log: d.Log, now: d.Now,
		events: redisx.NewBroadcast[string](d.Redis, "ratelimit-rules"), stats: map[string]*ruleStats{},
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atrium_ratelimit_decisions_total",
			Help: "Rate-limit verdicts by rule: allowed, refused (enforcing), would_refuse (observe mode); fallback counts, in addition, verdicts made without Redis.",
		}, []string{"rule", "outcome"}),
	}
	d.Limiter.Observer = nil
	s.limiter.Store(NewLimiter(d.Redis, d.Limiter))
	if err := s.reload(ctx); err != nil {
		s.limiter.Load().Close() //nolint:errcheck
		return nil, fmt.Errorf("quota: %w", err)
	}
	return s, nil
}

// Collectors returns the rate limits' metrics.
func (s *RateLimits) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.decisions}
}

// SetLimiter replaces the Limiter that decides requests and closes the
// old one (tests point it at a Redis that does not answer).
func (s *RateLimits) SetLimiter(l *Limiter) {
	if old := s.limiter.Swap(l); old != nil {
		_ = old.Close()
	}
}

// Close releases the Limiter's Redis connections.
func (s *RateLimits) Close() error {
	if l := s.limiter.Load(); l != nil {
		return l.Close()
	}
	return nil
}

// Run keeps the rules current until ctx ends — a reload on every broadcast
// (a change anywhere), on every (re)subscription and every 30 s — and
// flushes the live counts to Redis every second.
func (s *RateLimits) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.runFlush(ctx) })
	// A message only says that the rules changed: reread them all.
	return s.events.Follow(ctx, s.log, 30*time.Second, s.reload, func(string) {
		if err := s.reload(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn().Err(err).Msg("rate-limit rule reload failed; retried within 30 s")
		}
	})
}

const ruleColumns = `id, description, route_class, key_by, quota, rate, period_ms, burst, mode, fail_mode, enabled, updated_at, updated_by`

func scanRule(r pgx.CollectableRow) (RuleDef, error) {
	var d RuleDef
	err := r.Scan(&d.ID, &d.Description, &d.RouteClass, &d.KeyBy, &d.Quota, &d.Rate, &d.PeriodMS, &d.Burst,
		&d.Mode, &d.FailMode, &d.Enabled, &d.UpdatedAt, &d.UpdatedBy)
	d.UpdatedAt = d.UpdatedAt.UTC()
	return d, err
}

// load reads every rule. rate_limit_rules has no tenant_id, so it needs no
// tenant scope.
func (s *RateLimits) load(ctx context.Context) ([]RuleDef, error) {
	return postgres.Collect(ctx, s.tx, "ratelimit.rules", scanRule, `SELECT `+ruleColumns+` FROM rate_limit_rules ORDER BY id`)
}

// reload replaces the in-memory rules with PostgreSQL's.
func (s *RateLimits) reload(ctx context.Context) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	defs, err := s.load(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("load rate-limit rules: %w", err)
	}
	s.rules.Store(s.compile(defs))
	return nil
}

// check allows platform administrators with quotas:manage: rules are
// platform settings, and their live counts add up every tenant's traffic.
func check(ctx context.Context) error {
	if err := principal.Check(ctx, "quotas:manage"); err != nil {
		return err
	}
	if principal.From(ctx).TenantID != "" {
		return errs.E(errs.Forbidden, "rate-limit rules are platform settings")
	}
	return nil
}

// RuleStatus is a rule with its live counts.
type RuleStatus struct {
	RuleDef
	// Live is nil when Redis could not be read.
	Live *LiveCounts `json:"live"`
}

// List returns every rule with its live counts.
func (s *RateLimits) List(ctx context.Context) ([]RuleStatus, error) {
	if err := check(ctx); err != nil {
		return nil, err
	}
	defs, err := s.load(ctx)
	if err != nil {
		return nil, err
	}
	live, lerr := s.LiveCounts(ctx)
	if lerr != nil {
		s.log.Warn().Ctx(ctx).Err(lerr).Msg("rate-limit live counts unavailable")
	}
	out := make([]RuleStatus, len(defs))
	for i, d := range defs {
		out[i].RuleDef = d
		if lerr == nil {
			c := live[d.ID]
			c.WindowSeconds = liveWindow * 60
			out[i].Live = &c
		}
	}
	return out, nil
}

// Get returns one rule with its live counts.
func (s *RateLimits) Get(ctx context.Context, id string) (*RuleStatus, error) {
	rs, err := s.List(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range rs {
		if r.ID == id {
			return &r, nil
		}
	}
	return nil, errs.E(errs.NotFound, "no rate-limit rule %q", id)
}

// Create adds a rule. Errors: invalid (naming the field), conflict (the id
// is taken), forbidden.
func (s *RateLimits) Create(ctx context.Context, in NewRule) (*RuleDef, error) {
	if err := check(ctx); err != nil {
		return nil, err
	}
	d := RuleDef{ID: in.ID, Description: in.Description, RouteClass: in.RouteClass, KeyBy: in.KeyBy, Quota: in.Quota,
		Rate: in.Rate, PeriodMS: in.PeriodMS, Burst: in.Burst, Mode: in.Mode, FailMode: in.FailMode, Enabled: true,
		UpdatedAt: s.now().UTC().Truncate(time.Microsecond), UpdatedBy: auditlog.Actor(ctx)}
	if d.Mode == "" {
		d.Mode = Enforce.String()
	}
	if d.FailMode == "" {
		d.FailMode = FailOpen.String()
	}
	if in.Enabled != nil {
		d.Enabled = *in.Enabled
	}
	if err := d.validate(); err != nil {
		return nil, err
	}
	err := s.tx.Do(postgres.AllTenants(ctx, "rate-limit rules"), "ratelimit.create", func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO rate_limit_rules (`+ruleColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
			d.ID, d.Description, d.RouteClass, d.KeyBy, d.Quota, d.Rate, d.PeriodMS, d.Burst, d.Mode, d.FailMode, d.Enabled, d.UpdatedAt, d.UpdatedBy)
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "23505" {
			return &errs.Error{Code: errs.Conflict, Message: "id: a rule with this id exists",
				Fields: []errs.FieldError{{Field: "id", Message: "a rule with this id exists"}}}
		}
		if err != nil {
			return err
		}
		return auditlog.Record(ctx, tx, d.UpdatedAt, "", d.UpdatedBy, "ratelimit.create", "rate-limit:"+d.ID, ruleAudit(d))
	})
	if err != nil {
		return nil, err
	}
	s.changed(ctx, d.ID)
	return &d, nil
}

// Update changes a rule. Errors: invalid (naming the field), not_found,
// forbidden.
func (s *RateLimits) Update(ctx context.Context, id string, in RuleChange) (*RuleDef, error) {
	if err := check(ctx); err != nil {
		return nil, err
	}
	var d RuleDef
	err := s.tx.Do(postgres.AllTenants(ctx, "rate-limit rules"), "ratelimit.update", func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+ruleColumns+` FROM rate_limit_rules WHERE id = $1 FOR UPDATE`, id)
		if err != nil {
			return err
		}
		d, err = pgx.CollectExactlyOneRow(rows, scanRule)
		if postgres.IsNoRows(err) {
			return errs.E(errs.NotFound, "no rate-limit rule %q", id)
		}
		if err != nil {
			return err
		}
		before := ruleAudit(d)
		in.apply(&d)
		if err := d.validate(); err != nil {
			return err
		}
		d.UpdatedAt, d.UpdatedBy = s.now().UTC().Truncate(time.Microsecond), auditlog.Actor(ctx)
		if _, err := tx.Exec(ctx, `UPDATE rate_limit_rules SET description = $2, route_class = $3, key_by = $4, quota = $5,
				rate = $6, period_ms = $7, burst = $8, mode = $9, fail_mode = $10, enabled = $11, updated_at = $12, updated_by = $13
			WHERE id = $1`, d.ID, d.Description, d.RouteClass, d.KeyBy, d.Quota, d.Rate, d.PeriodMS, d.Burst,
			d.Mode, d.FailMode, d.Enabled, d.UpdatedAt, d.UpdatedBy); err != nil {
			return err
		}
		detail := map[string]any{}
		for k, v := range ruleAudit(d) {
			if fmt.Sprint(before[k]) != fmt.Sprint(v) {
				detail[k] = map[string]any{"from": before[k], "to": v}
			}
		}
		return auditlog.Record(ctx, tx, d.UpdatedAt, "", d.UpdatedBy, "ratelimit.update", "rate-limit:"+d.ID, detail)
	})
	if err != nil {
		return nil, err
	}
	s.changed(ctx, d.ID)
	return &d, nil
}

func (c RuleChange) apply(d *RuleDef) {
	if c.Description != nil {
		d.Description = *c.Description
	}
	if c.RouteClass != nil {
		d.RouteClass = *c.RouteClass
	}
	if c.KeyBy != nil {
		d.KeyBy = *c.KeyBy
	}
	if c.Quota.Set {
		d.Quota = c.Quota.Val()
		if d.Quota != nil && !c.Rate.Set {
			d.Rate = nil
		}
	}
	if c.Rate.Set {
		d.Rate = c.Rate.Val()
		if d.Rate != nil && !c.Quota.Set {
			d.Quota = nil
		}
	}
	if c.PeriodMS != nil {
		d.PeriodMS = *c.PeriodMS
	}
	if c.Burst.Set {
		d.Burst = c.Burst.Val()
	}
	if c.Mode != nil {
		d.Mode = *c.Mode
	}
	if c.FailMode != nil {
		d.FailMode = *c.FailMode
	}
	if c.Enabled != nil {
		d.Enabled = *c.Enabled
	}
}

// Delete removes a rule; its counters in Redis expire on their own.
// Errors: not_found, forbidden.
func (s *RateLimits) Delete(ctx context.Context, id string) error {
	if err := check(ctx); err != nil {
		return err
	}
	now := s.now().UTC()
	err := s.tx.Do(postgres.AllTenants(ctx, "rate-limit rules"), "ratelimit.delete", func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `DELETE FROM rate_limit_rules WHERE id = $1 RETURNING `+ruleColumns, id)
		if err != nil {
			return err
		}
		d, err := pgx.CollectExactlyOneRow(rows, scanRule)
		if postgres.IsNoRows(err) {
			return errs.E(errs.NotFound, "no rate-limit rule %q", id)
		}
		if err != nil {
			return err
		}
		return auditlog.Record(ctx, tx, now, "", auditlog.Actor(ctx), "ratelimit.delete", "rate-limit:"+id, ruleAudit(d))
	})
	if err != nil {
		return err
	}
	s.changed(ctx, id)
	return nil
}

// ruleAudit is a rule's settings as an audit record's detail.
func ruleAudit(d RuleDef) map[string]any {
	m := map[string]any{"route_class": d.RouteClass, "key_by": d.KeyBy, "period_ms": d.PeriodMS, "mode": d.Mode,
		"fail_mode": d.FailMode, "enabled": d.Enabled, "description": d.Description, "quota": nil, "rate": nil, "burst": nil}
	if d.Quota != nil {
		m["quota"] = *d.Quota
	}
	if d.Rate != nil {
		m["rate"] = *d.Rate
	}
	if d.Burst != nil {
		m["burst"] = *d.Burst
	}
	return m
}

// changed applies a committed change here at once and tells every other
// instance to reload.
func (s *RateLimits) changed(ctx context.Context, id string) {
	if err := s.reload(ctx); err != nil {
		s.log.Error().Ctx(ctx).Err(err).Msg("rate-limit rule reload after a change failed; retried within 30 s")
	}
	if err := s.events.Publish(context.WithoutCancel(ctx), id); err != nil {
		// PostgreSQL has it; the other instances catch up within 30 s.
		s.log.Error().Ctx(ctx).Err(err).Str("rule", id).Msg("rate-limit rule broadcast failed; instances catch up within 30 s")
	}
}
