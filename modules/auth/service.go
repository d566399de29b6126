package auth

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/config"
	"github.com/atriumhq/atrium/platform/keyring"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
	"github.com/atriumhq/atrium/platform/redisx"
)

// Deps are what the auth module needs from the process.
type Deps struct {
	Tx       *postgres.Tx
	Redis    *redisx.Client
	Log      zerolog.Logger
	Keyring  *keyring.Keyring
	Instance string
	// Secure marks cookies Secure (production, behind TLS).
	Secure bool
	Now    func() time.Time
	// Tenants says whether a tenant may act; nil: every tenant may.
	Tenants Tenants
	// Quotas counts users and terminals against their tenant's allocation
	// quotas (max_users, max_terminals); nil: unlimited.
	Quotas Quotas
}

// Tenants is what auth needs of the tenant module: whether a tenant is
// active, answered from memory (it is asked on every request).
type Tenants interface {
	Active(ctx context.Context, tenant string) error
}

// Quotas is what auth needs of the quota module: count n units of an
// allocation quota for tenant within tx, refusing with quota_exceeded.
type Quotas interface {
	Use(ctx context.Context, tx pgx.Tx, tenant, quota string, n int64) error
}

// Service is the auth module.
type Service struct {
	cfg     config.Auth
	tx      *postgres.Tx
	tenants Tenants
	quotas  Quotas
	redis   *redisx.Client
	log     zerolog.Logger
	now     func() time.Time
	inst    string
	sec     bool
	argon   argonParams

	keys     *keys
	verified verifiedTokens // tokens whose signature verified (tokens.go)
	revs     *revocations
	perms    *permCache
	events   *redisx.Broadcast[event]
	ready    chan struct{} // closed once the first subscription is live
	once     sync.Once
	// profiles caches TerminalProfile by terminal id.
	profiles sync.Map
}

// New validates its dependencies and loads (creating on first start) the
// signing keys, the revocation state and nothing else: permissions load on
// demand.
func New(ctx context.Context, cfg config.Auth, d Deps) (*Service, error) {
	if d.Tx == nil || d.Redis == nil || d.Keyring == nil {
		return nil, errors.New("auth: Tx, Redis and Keyring are required")
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	s := &Service{cfg: cfg, tx: d.Tx, tenants: d.Tenants, quotas: d.Quotas, redis: d.Redis, log: d.Log, now: func() time.Time { return d.Now().UTC() },
		inst: d.Instance, sec: d.Secure, argon: defaultArgon, ready: make(chan struct{})}
	s.keys = &keys{s: s, ring: d.Keyring}
	s.revs = newRevocations()
	s.perms = newPermCache()
	s.events = redisx.NewBroadcast[event](d.Redis, "auth")
	if _, err := s.keys.ensure(ctx, false); err != nil {
		return nil, fmt.Errorf("auth: signing keys: %w", err)
	}
	if err := s.keys.load(ctx); err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	if err := s.loadRevocations(ctx); err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	return s, nil
}

// event is broadcast to every instance when auth state changes, so each
// updates its in-memory copy within a second.
type event struct {
	Kind string    `json:"kind"` // keys, jti, session, gen, perms
	ID   string    `json:"id,omitempty"`
	Gen  int64     `json:"gen,omitempty"`
	Exp  time.Time `json:"exp,omitzero"`
}

func (s *Service) apply(ev event) {
	switch ev.Kind {
	case "keys":
		if err := s.keys.load(context.Background()); err != nil {
			s.log.Error().Err(err).Msg("reload of signing keys after broadcast failed")
		}
	case "jti":
		s.revs.revokeJTI(ev.ID, ev.Exp)
	case "session":
		s.revs.revokeSession(ev.ID, ev.Exp)
	case "gen":
		s.revs.setGen(ev.ID, ev.Gen)
	case "perms":
		s.perms.invalidate(ev.ID)
	}
}

// publish applies ev here at once and tells the other instances. A failed
// broadcast is logged: PostgreSQL already holds the change, and instances
// reload it when their subscription comes back.
func (s *Service) publish(ctx context.Context, ev event) {
	s.apply(ev)
	if err := s.events.Publish(ctx, ev); err != nil {
		s.log.Error().Ctx(ctx).Err(err).Str("kind", ev.Kind).Msg("auth broadcast failed; other instances catch up on resubscribe")
	}
}

// Run subscribes to auth broadcasts and, as the leader, rotates keys on
// schedule. It returns when ctx ends.
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() {
		onReady := func() {
			// Catch up on whatever was missed while unsubscribed.
			if err := s.keys.load(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn().Err(err).Msg("reload keys on resubscribe")
			}
			if err := s.loadRevocations(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn().Err(err).Msg("reload revocations on resubscribe")
			}
			s.perms.invalidate("*")
			s.once.Do(func() { close(s.ready) })
		}
		if err := s.events.Subscribe(ctx, s.log, onReady, s.apply); err != nil {
			s.log.Error().Err(err).Msg("auth subscription ended")
		}
	})
	wg.Go(func() {
		lease := redisx.NewLease(s.redis, "auth-keys", s.inst, 15*time.Second)
		lease.Run(ctx, s.log, func(ctx context.Context, _ int64) {
			t := time.NewTicker(time.Minute)
			defer t.Stop()
			for {
				if changed, err := s.keys.ensure(ctx, false); err != nil {
					if ctx.Err() == nil {
						s.log.Error().Err(err).Msg("key rotation check failed")
					}
				} else if changed {
					s.log.Info().Msg("signing keys rotated on schedule")
					s.publish(ctx, event{Kind: "keys"})
				}
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		})
	})
	wg.Go(func() {
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.revs.prune(s.now())
				// Catch up on any broadcast this instance missed while its
				// subscription stayed up (a failed publish elsewhere).
				if err := s.loadRevocations(ctx); err != nil && ctx.Err() == nil {
					s.log.Warn().Err(err).Msg("periodic reload of revocations failed")
				}
			}
		}
	})
	wg.Wait()
	return nil
}

// Ready is closed once the instance receives auth broadcasts (tests wait on
// it before checking propagation).
func (s *Service) Ready() <-chan struct{} { return s.ready }

// RotateKeys rotates the signing keys now ("rotate now" in the UI).
func (s *Service) RotateKeys(ctx context.Context) error {
	if err := principal.Check(ctx, "auth:keys"); err != nil {
		return err
	}
	if _, err := s.keys.ensure(ctx, true); err != nil {
		return err
	}
	s.publish(ctx, event{Kind: "keys"})
	return nil
}

// Keys lists the published signing keys.
func (s *Service) Keys(ctx context.Context) ([]KeyInfo, error) {
	if err := principal.Check(ctx, "auth:keys"); err != nil {
		return nil, err
	}
	return s.keys.set.Load().infos, nil
}

// JWKS returns the JSON Web Key Set of the published public keys.
func (s *Service) JWKS() []byte { return s.keys.set.Load().jwks }

// scopeFor returns ctx whose transactions see tenant's rows, or take the
// cross-tenant path for a platform administrator (tenant "").
func scopeFor(ctx context.Context, tenant string) context.Context {
	if tenant == "" {
		return postgres.AllTenants(ctx, "platform")
	}
	return postgres.WithTenant(ctx, tenant)
}

// tenantActive refuses a suspended (or unknown) tenant.
func (s *Service) tenantActive(ctx context.Context, tenant string) error {
	if s.tenants == nil || tenant == "" {
		return nil
	}
	return s.tenants.Active(ctx, tenant)
}

// useQuota counts n units of quota for tenant within tx (platform
// administrators, with no tenant, have no quotas).
func (s *Service) useQuota(ctx context.Context, tx pgx.Tx, tenant, quota string, n int64) error {
	if s.quotas == nil || tenant == "" {
		return nil
	}
	return s.quotas.Use(ctx, tx, tenant, quota, n)
}
