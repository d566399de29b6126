package auth

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/postgres"
)

// revocations is the in-memory revocation state every instance checks on
// each request without a network round trip. PostgreSQL holds it durably
// (revocations table, users.token_gen, terminals.token_gen) so it survives
// a Redis restart; broadcasts keep instances within a second of each other.
//
//   - jti: one access token (logout).
//   - session: every access token issued in a login session (session
//     revoked by an administrator, refresh-token reuse).
//   - gen: every token of a user or terminal issued before the generation
//     was raised (logout everywhere, password change, disable). Tokens carry
//     the generation they were issued under; generations avoid comparing
//     clock readings at one-second JWT precision.
type revocations struct {
	mu       sync.RWMutex
	jtis     map[string]time.Time // jti -> when the token expires anyway
	sessions map[string]time.Time // session id -> when its last access token expires
	gens     map[string]int64     // "user:<id>" / "terminal:<id>" -> lowest valid generation
}

func newRevocations() *revocations {
	return &revocations{jtis: map[string]time.Time{}, sessions: map[string]time.Time{}, gens: map[string]int64{}}
}

func (r *revocations) revokeJTI(jti string, exp time.Time) {
	r.mu.Lock()
	r.jtis[jti] = exp
	r.mu.Unlock()
}

func (r *revocations) revokeSession(id string, exp time.Time) {
	r.mu.Lock()
	r.sessions[id] = exp
	r.mu.Unlock()
}

func (r *revocations) setGen(subject string, gen int64) {
	r.mu.Lock()
	if gen > r.gens[subject] {
		r.gens[subject] = gen
	}
	r.mu.Unlock()
}

// revoked reports whether a token with these claims has been revoked.
func (r *revocations) revoked(jti, session, subject string, gen int64) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if _, ok := r.jtis[jti]; ok {
		return true
	}
	if session != "" {
		if _, ok := r.sessions[session]; ok {
			return true
		}
	}
	return gen < r.gens[subject]
}

// prune forgets revocations of tokens that have expired anyway.
func (r *revocations) prune(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, exp := range r.jtis {
		if now.After(exp) {
			delete(r.jtis, k)
		}
	}
	for k, exp := range r.sessions {
		if now.After(exp) {
			delete(r.sessions, k)
		}
	}
}

// loadRevocations rebuilds the state from PostgreSQL (at start and after a
// Redis reconnect).
func (s *Service) loadRevocations(ctx context.Context) error {
	fresh := newRevocations()
	type row struct {
		kind, id string
		exp      *time.Time
		gen      int64
	}
	// Every tenant's users and terminals: a batch job on the cross-tenant path.
	rows, err := postgres.Collect(postgres.AllTenants(ctx, "revocation reload"), s.tx, "auth.load_revocations",
		func(r pgx.CollectableRow) (row, error) {
			var x row
			err := r.Scan(&x.kind, &x.id, &x.exp, &x.gen)
			return x, err
		}, `
		SELECT kind, id, expires_at, 0::bigint FROM revocations WHERE expires_at > now()
		UNION ALL SELECT 'gen', 'user:' || id::text, NULL, token_gen FROM users WHERE token_gen > 0
		UNION ALL SELECT 'gen', 'terminal:' || id::text, NULL, token_gen FROM terminals WHERE token_gen > 0`)
	if err != nil {
		return fmt.Errorf("load revocations: %w", err)
	}
	for _, x := range rows {
		switch x.kind {
		case "jti":
			fresh.jtis[x.id] = *x.exp
		case "session":
			fresh.sessions[x.id] = *x.exp
		case "gen":
			fresh.gens[x.id] = x.gen
		}
	}
	// Merge rather than replace: a broadcast applied while loading must not
	// be lost.
	s.revs.mu.Lock()
	for k, v := range fresh.jtis {
		s.revs.jtis[k] = v
	}
	for k, v := range fresh.sessions {
		s.revs.sessions[k] = v
	}
	for k, v := range fresh.gens {
		if v > s.revs.gens[k] {
			s.revs.gens[k] = v
		}
	}
	s.revs.mu.Unlock()
	return nil
}

// permCache caches each user's permissions, resolved from their roles in
// PostgreSQL. Role and membership changes invalidate it on every instance
// through a broadcast, so a change is enforced everywhere within a second;
// a lost broadcast is covered by the TTL.
type permCache struct {
	mu      sync.RWMutex
	entries map[string]permEntry
	// epoch counts invalidations: a load that began before one must not
	// store what it read.
	epoch uint64
}

type permEntry struct {
	roles, perms []string
	loaded       time.Time
}

const permTTL = 5 * time.Minute

func newPermCache() *permCache { return &permCache{entries: map[string]permEntry{}} }

func (c *permCache) get(userID string, now time.Time) (permEntry, bool) {
	c.mu.RLock()
	e, ok := c.entries[userID]
	c.mu.RUnlock()
	return e, ok && now.Sub(e.loaded) < permTTL
}

func (c *permCache) put(userID string, e permEntry) {
	c.mu.Lock()
	c.entries[userID] = e
	c.mu.Unlock()
}

// version returns the invalidation epoch, read before a load.
func (c *permCache) version() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.epoch
}

// putIfCurrent stores e unless an invalidation happened since version v
// was read: the load may then hold permissions from before the change.
func (c *permCache) putIfCurrent(userID string, e permEntry, v uint64) {
	c.mu.Lock()
	if c.epoch == v {
		c.entries[userID] = e
	}
	c.mu.Unlock()
}

// invalidate drops one user's entry, or every entry for "*".
func (c *permCache) invalidate(userID string) {
	c.mu.Lock()
	c.epoch++
	if userID == "*" {
		c.entries = map[string]permEntry{}
	} else {
		delete(c.entries, userID)
	}
	c.mu.Unlock()
}

// userPermissions returns a user's roles and permissions, from the cache or
// PostgreSQL.
func (s *Service) userPermissions(ctx context.Context, userID string) (roles, perms []string, err error) {
	if e, ok := s.perms.get(userID, s.now()); ok {
		return e.roles, e.perms, nil
	}
	v := s.perms.version()
	err = s.tx.QueryRow(ctx, "auth.user_permissions", `SELECT coalesce(array_agg(DISTINCT r.name ORDER BY r.name), '{}'),
			coalesce((SELECT array_agg(DISTINCT p ORDER BY p) FROM user_roles ur2 JOIN roles r2 ON r2.id = ur2.role_id,
				unnest(r2.permissions) p WHERE ur2.user_id = $1), '{}')
		FROM user_roles ur JOIN roles r ON r.id = ur.role_id WHERE ur.user_id = $1`, []any{userID}, &roles, &perms)
	if err != nil {
		return nil, nil, fmt.Errorf("load permissions: %w", err)
	}
	s.perms.putIfCurrent(userID, permEntry{roles: roles, perms: perms, loaded: s.now()}, v)
	return roles, perms, nil
}
