// Package tenant holds Atrium's tenants: the customer organisations (a
// merchant group running POS terminals, an ML team deploying models, or
// both) that own every tenant-scoped row. Platform administrators create,
// rename, suspend and reactivate tenants and assign their plan.
//
// The tenant of a request is the authenticated principal's, never a field
// the client sends; platform/postgres turns it into the row-level-security
// scope of every transaction. This module keeps the set of suspended
// tenants in memory on every instance, updated by a Redis broadcast (and
// reloaded on resubscribe and every 30 s), so Active answers without a
// network round trip and a suspension reaches every instance within a
// second.
package tenant

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/auditlog"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
	"github.com/atriumhq/atrium/platform/redisx"
)

// Deps are what the tenant module needs from the process.
type Deps struct {
	Tx    *postgres.Tx
	Redis *redisx.Client
	Log   zerolog.Logger
	Now   func() time.Time
	// PlanChanged, if set, is called after a tenant's plan changes (the
	// quota module drops its cached limits for the tenant).
	PlanChanged func(ctx context.Context, tenant string)
}

// Tenant is a customer organisation.
type Tenant struct {
	ID          string     `json:"id"`
	Name        string     `json:"name"`
	Status      string     `json:"status"`
	Plan        string     `json:"plan"`
	CreatedAt   time.Time  `json:"created_at"`
	UpdatedAt   time.Time  `json:"updated_at"`
	SuspendedAt *time.Time `json:"suspended_at"`
}

// NewTenant is a request to create a tenant.
type NewTenant struct {
	Name string `json:"name" required:"true"`
	// Plan defaults to "default".
	Plan string `json:"plan"`
}

// Update changes a tenant's name or plan; absent members stay as they are.
type Update struct {
	Name *string `json:"name"`
	Plan *string `json:"plan"`
}

// Service is the tenant module.
type Service struct {
	tx          *postgres.Tx
	log         zerolog.Logger
	now         func() time.Time
	events      *redisx.Broadcast[event]
	planChanged func(ctx context.Context, tenant string)

	mu        sync.RWMutex
	suspended map[string]bool
	// gen counts status changes applied to suspended; a reload that
	// raced with one reads again rather than overwrite it.
	gen uint64
}

// event tells every instance that a tenant's status changed.
type event struct {
	Tenant    string `json:"tenant"`
	Suspended bool   `json:"suspended"`
}

// ErrSuspended refuses the requests, tokens and terminals of a suspended tenant.
var ErrSuspended = errs.E(errs.Forbidden, "the tenant is suspended")

// New loads the suspended tenants.
func New(ctx context.Context, d Deps) (*Service, error) {
	if d.Tx == nil || d.Redis == nil {
		return nil, errors.New("tenant: Tx and Redis are required")
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	s := &Service{tx: d.Tx, log: d.Log, now: func() time.Time { return d.Now().UTC() },
		events: redisx.NewBroadcast[event](d.Redis, "tenants"), planChanged: d.PlanChanged, suspended: map[string]bool{}}
	if err := s.load(ctx); err != nil {
		return nil, fmt.Errorf("tenant: %w", err)
	}
	return s, nil
}

// load replaces the in-memory suspended set with PostgreSQL's. A status
// change applied while it read (a broadcast, or this instance's own) may be
// newer than what it read: then it reads again.
func (s *Service) load(ctx context.Context) error {
	for {
		s.mu.RLock()
		gen := s.gen
		s.mu.RUnlock()
		ids, err := postgres.Collect(postgres.AllTenants(ctx, "tenant status"), s.tx, "tenant.load", pgx.RowTo[string],
			`SELECT id::text FROM tenants WHERE status = 'suspended'`)
		if err != nil {
			return fmt.Errorf("load suspended tenants: %w", err)
		}
		fresh := make(map[string]bool, len(ids))
		for _, id := range ids {
			fresh[id] = true
		}
		s.mu.Lock()
		if s.gen == gen {
			s.suspended = fresh
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
	}
}

// apply records one tenant's status in memory.
func (s *Service) apply(e event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	if e.Suspended {
		s.suspended[e.Tenant] = true
	} else {
		delete(s.suspended, e.Tenant)
	}
}

// Active returns ErrSuspended when tenant is suspended, from memory.
func (s *Service) Active(_ context.Context, tenant string) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.suspended[tenant] {
		return ErrSuspended
	}
	return nil
}

// Run keeps the suspended set current: broadcasts as they come, a reload
// on every (re)subscription and every 30 s. It returns when ctx ends.
func (s *Service) Run(ctx context.Context) error {
	return s.events.Follow(ctx, s.log, 30*time.Second, s.load, s.apply)
}

const columns = `id, name, status, plan, created_at, updated_at, suspended_at`

func scan(r pgx.CollectableRow) (Tenant, error) {
	var t Tenant
	err := r.Scan(&t.ID, &t.Name, &t.Status, &t.Plan, &t.CreatedAt, &t.UpdatedAt, &t.SuspendedAt)
	return t, err
}

func validName(name string) (string, error) {
	name = strings.TrimSpace(name)
	if name == "" || len(name) > 200 {
		return "", errs.Field("name", "must be 1 to 200 characters")
	}
	return name, nil
}

// Create adds a tenant. Errors: invalid (name, plan), conflict (name taken),
// forbidden.
func (s *Service) Create(ctx context.Context, in NewTenant) (*Tenant, error) {
	if err := principal.Check(ctx, "tenants:manage"); err != nil {
		return nil, err
	}
	name, err := validName(in.Name)
	if err != nil {
		return nil, err
	}
	if in.Plan == "" {
		in.Plan = "default"
	}
	now := s.now()
	t := &Tenant{ID: uuid.Must(uuid.NewV7()).String(), Name: name, Status: "active", Plan: in.Plan, CreatedAt: now, UpdatedAt: now}
	err = s.tx.Do(ctx, "tenant.create", func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO tenants (id, name, plan, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)`,
			t.ID, t.Name, t.Plan, now)
		if err != nil {
			return writeError(err)
		}
		return auditlog.Record(ctx, tx, now, t.ID, auditlog.Actor(ctx), "tenant.create", "tenant:"+t.ID,
			map[string]any{"name": t.Name, "plan": t.Plan})
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// writeError turns constraint violations into field errors.
func writeError(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "23505":
			return &errs.Error{Code: errs.Conflict, Message: "name: a tenant with this name exists",
				Fields: []errs.FieldError{{Field: "name", Message: "a tenant with this name exists"}}}
		case pe.Code == "23503":
			return errs.Field("plan", "no such plan")
		}
	}
	return err
}

// List returns every tenant (platform administrators only).
func (s *Service) List(ctx context.Context) ([]Tenant, error) {
	if err := principal.Check(ctx, "tenants:manage"); err != nil {
		return nil, err
	}
	return postgres.Collect(ctx, s.tx, "tenant.list", scan, `SELECT `+columns+` FROM tenants ORDER BY lower(name)`)
}

// Get returns one tenant: any tenant to a platform administrator, and to
// anyone else their own. Errors: not_found.
func (s *Service) Get(ctx context.Context, id string) (*Tenant, error) {
	p := principal.From(ctx)
	if p == nil {
		return nil, errs.E(errs.Unauthenticated, "authentication required")
	}
	if _, err := uuid.Parse(id); err != nil || (p.TenantID != "" && p.TenantID != id) || (p.TenantID == "" && !p.Has("tenants:manage")) {
		return nil, errs.E(errs.NotFound, "no such tenant")
	}
	ts, err := postgres.Collect(ctx, s.tx, "tenant.get", scan, `SELECT `+columns+` FROM tenants WHERE id = $1`, id)
	if err != nil {
		return nil, err
	}
	if len(ts) == 0 {
		return nil, errs.E(errs.NotFound, "no such tenant")
	}
	return &ts[0], nil
}

// Update renames a tenant or changes its plan. Errors: invalid, not_found,
// conflict.
func (s *Service) Update(ctx context.Context, id string, in Update) (*Tenant, error) {
	if err := principal.Check(ctx, "tenants:manage"); err != nil {
		return nil, err
	}
	t, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	detail := map[string]any{}
	if in.Name != nil {
		name, err := validName(*in.Name)
		if err != nil {
			return nil, err
		}
		in.Name = &name
		detail["name"] = name
	}
	var planChanged bool
	if in.Plan != nil {
		if *in.Plan == "" {
			return nil, errs.Field("plan", "must name a plan")
		}
		detail["plan"] = *in.Plan
	}
	t.UpdatedAt = s.now()
	err = s.tx.Do(ctx, "tenant.update", func(tx pgx.Tx) error {
		// Only the members given are written, and the plan it had is read
		// under the row lock: concurrent updates of different members
		// both hold, and the plan change is noticed by the one that made it.
		var before string
		if err := tx.QueryRow(ctx, `SELECT plan FROM tenants WHERE id = $1 FOR UPDATE`, id).Scan(&before); err != nil {
			return err
		}
		err := tx.QueryRow(ctx, `UPDATE tenants SET name = coalesce($2, name), plan = coalesce($3, plan), updated_at = $4
			WHERE id = $1 RETURNING name, plan, status, suspended_at`, id, in.Name, in.Plan, t.UpdatedAt).
			Scan(&t.Name, &t.Plan, &t.Status, &t.SuspendedAt)
		if err != nil {
			return writeError(err)
		}
		planChanged = t.Plan != before
		return auditlog.Record(ctx, tx, t.UpdatedAt, id, auditlog.Actor(ctx), "tenant.update", "tenant:"+id, detail)
	})
	if err != nil {
		return nil, err
	}
	if planChanged && s.planChanged != nil {
		s.planChanged(ctx, id)
	}
	return t, nil
}

// Suspend stops a tenant: within a second, every instance refuses its
// users' and terminals' tokens, and no new token is issued to them. Its
// data stays. Reactivate undoes it. Errors: not_found.
func (s *Service) Suspend(ctx context.Context, id, reason string) (*Tenant, error) {
	return s.setStatus(ctx, id, "suspended", reason)
}

// Reactivate returns a suspended tenant to service.
func (s *Service) Reactivate(ctx context.Context, id string) (*Tenant, error) {
	return s.setStatus(ctx, id, "active", "")
}

func (s *Service) setStatus(ctx context.Context, id, status, reason string) (*Tenant, error) {
	if err := principal.Check(ctx, "tenants:manage"); err != nil {
		return nil, err
	}
	if len(reason) > 500 {
		return nil, errs.Field("reason", "must be at most 500 characters")
	}
	t, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	now := s.now()
	t.Status, t.UpdatedAt = status, now
	t.SuspendedAt = nil
	if status == "suspended" {
		t.SuspendedAt = &now
	}
	err = s.tx.Do(ctx, "tenant.status", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE tenants SET status = $2, updated_at = $3, suspended_at = $4 WHERE id = $1`,
			id, status, now, t.SuspendedAt); err != nil {
			return err
		}
		action := "tenant.reactivate"
		if status == "suspended" {
			action = "tenant.suspend"
		}
		return auditlog.Record(ctx, tx, now, id, auditlog.Actor(ctx), action, "tenant:"+id, map[string]any{"reason": reason})
	})
	if err != nil {
		return nil, err
	}
	e := event{Tenant: id, Suspended: status == "suspended"}
	s.apply(e)
	if err := s.events.Publish(ctx, e); err != nil {
		// PostgreSQL has it; the other instances catch up within 30 s.
		s.log.Error().Ctx(ctx).Err(err).Str("tenant", id).Msg("tenant status broadcast failed")
	}
	return t, nil
}
