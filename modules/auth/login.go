package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"strings"
	"time"

	"github.com/atriumhq/atrium/platform/auditlog"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
)

// Login protection: attempts are counted per account (the email as typed,
// whether or not it exists, so lockout reveals nothing) and per client IP,
// in Redis. Each attempt is checked against the locks and counted in one
// script before its password is checked, so parallel attempts cannot outrun
// the count; a successful sign-in takes its attempt back. From the threshold
// on, each attempt locks the key for twice as long as the last, up to
// maxLockout.
const (
	accountThreshold = 5
	ipThreshold      = 50
	failureWindow    = 15 * time.Minute
	baseLockout      = 2 * time.Second
	maxLockout       = 15 * time.Minute
	refreshGrace     = 5 * time.Second
)

// admitScript admits one attempt for an account (count KEYS[1], lock
// KEYS[2]) and a client IP (KEYS[3], KEYS[4]). While either is locked it
// counts nothing and returns {the longest remaining lock in ms, 0}.
// Otherwise it counts the attempt on both (counts expire after ARGV[5] ms)
// and, from each threshold on (ARGV[1] account, ARGV[2] IP), locks further
// attempts for base*2^(n-threshold) ms (ARGV[3]), capped at ARGV[4]; it
// returns {0, the account lock it set in ms or 0}.
var admitScript = redis.NewScript(`
local wait = math.max(redis.call('PTTL', KEYS[2]), redis.call('PTTL', KEYS[4]))
if wait > 0 then return {wait, 0} end
local set = {0, 0}
for i = 1, 2 do
  local n = redis.call('INCR', KEYS[2*i-1])
  if n == 1 then redis.call('PEXPIRE', KEYS[2*i-1], ARGV[5]) end
  local over = n - tonumber(ARGV[i])
  if over >= 0 then
    set[i] = math.floor(math.min(tonumber(ARGV[3]) * (2 ^ over), tonumber(ARGV[4])))
    redis.call('SET', KEYS[2*i], '1', 'PX', set[i])
  end
end
return {0, set[1]}
`)

// forgiveScript takes a successful attempt back: the account's count
// (KEYS[1]) and lock (KEYS[2]) go, the IP's count (KEYS[3]) drops by one.
var forgiveScript = redis.NewScript(`
redis.call('DEL', KEYS[1], KEYS[2])
if redis.call('GET', KEYS[3]) then redis.call('DECR', KEYS[3]) end
return 0
`)

func (s *Service) lockKeys(kind, who string) (count, lock string) {
	h := sha256.Sum256([]byte(strings.ToLower(who)))
	id := hex.EncodeToString(h[:12])
	return s.redis.Key("login", kind, id, "n"), s.redis.Key("login", kind, id, "lock")
}

// admit counts a sign-in attempt for the account and the client IP. It
// returns how long sign-in is locked for either (the attempt is then not
// counted), and the account lock this attempt started, if any. With Redis
// down it fails open, relying on argon2's cost; logged.
func (s *Service) admit(ctx context.Context, email, ip string) (wait, locked time.Duration) {
	acctN, acctL := s.lockKeys("acct", email)
	ipN, ipL := s.lockKeys("ip", ip)
	r, err := admitScript.Run(ctx, s.redis, []string{acctN, acctL, ipN, ipL}, accountThreshold, ipThreshold,
		baseLockout.Milliseconds(), maxLockout.Milliseconds(), failureWindow.Milliseconds()).Int64Slice()
	if err != nil || len(r) != 2 {
		s.log.Warn().Ctx(ctx).Err(err).Msg("login lockout check unavailable")
		return 0, 0
	}
	return time.Duration(r[0]) * time.Millisecond, time.Duration(r[1]) * time.Millisecond
}

// forgive takes a successful sign-in's attempt back.
func (s *Service) forgive(ctx context.Context, email, ip string) {
	acctN, acctL := s.lockKeys("acct", email)
	ipN, _ := s.lockKeys("ip", ip)
	if err := forgiveScript.Run(ctx, s.redis, []string{acctN, acctL, ipN}).Err(); err != nil {
		s.log.Warn().Ctx(ctx).Err(err).Msg("login attempt count not reset")
	}
}

func (s *Service) auditNoTx(ctx context.Context, tenant, actor, action, object string, detail map[string]any) {
	err := s.tx.Do(ctx, "auth.audit", func(tx pgx.Tx) error {
		return auditlog.Record(ctx, tx, s.now(), tenant, actor, action, object, detail)
	})
	if err != nil {
		s.log.Error().Ctx(ctx).Err(err).Str("action", action).Msg("audit write failed")
	}
}

// User is a person who signs in.
type User struct {
	ID          string    `json:"id"`
	TenantID    *string   `json:"tenant_id"`
	Email       string    `json:"email"`
	DisplayName string    `json:"display_name"`
	Status      string    `json:"status"`
	Roles       []string  `json:"roles"`
	CreatedAt   time.Time `json:"created_at"`
}

// LoginResult is the seed's login answer: the user and the tokens.
type LoginResult struct {
	User User `json:"user"`
	TokenResponse
	Permissions []string `json:"permissions"`
}

var errBadCredentials = errs.E(errs.Unauthenticated, "email or password is incorrect")

// Login checks an email and password and opens a session. Unknown emails
// and wrong passwords get the same answer after the same work (a dummy
// hash is checked for unknown emails). Errors: invalid, unauthenticated,
// quota_exceeded (locked out; retry_after_seconds says when).
func (s *Service) Login(ctx context.Context, email, password, userAgent string) (*LoginResult, error) {
	email = strings.TrimSpace(email)
	ip := httpx.ClientIP(ctx)
	wait, locked := s.admit(ctx, email, ip)
	if wait > 0 {
		secs := int(wait.Round(time.Second) / time.Second)
		return nil, &errs.Error{Code: errs.QuotaExceeded, Message: "too many failed sign-in attempts; try again later",
			Extra: map[string]any{"retry_after_seconds": max(secs, 1)}}
	}
	var u User
	var hash string
	var gen int64
	// The tenant is not known until the user is found: an identity lookup
	// on the cross-tenant path. Everything after it runs in the user's scope.
	err := s.tx.QueryRow(postgres.AllTenants(ctx, "sign-in"), "auth.login_lookup",
		`SELECT id, tenant_id, email, display_name, status, password_hash, created_at, token_gen
		FROM users WHERE lower(email) = lower($1)`, []any{email}, &u.ID, &u.TenantID, &u.Email, &u.DisplayName, &u.Status, &hash, &u.CreatedAt, &gen)
	found := err == nil
	if found {
		ctx = scopeFor(ctx, deref(u.TenantID))
	} else {
		ctx = postgres.AllTenants(ctx, "sign-in")
	}
	if err != nil && !postgres.IsNoRows(err) {
		return nil, err
	}
	if !found {
		hash = dummyHash
	}
	ok, rehash, err := checkPassword(password, hash, s.argon)
	if err != nil {
		return nil, err
	}
	if found && ok && u.Status == "active" && u.TenantID != nil {
		if err := s.tenantActive(ctx, *u.TenantID); err != nil {
			s.auditNoTx(ctx, *u.TenantID, "user:"+u.ID, "auth.login.refused", "email:"+strings.ToLower(email), map[string]any{"reason": "tenant suspended"})
			return nil, err
		}
	}
	if !found || !ok || u.Status != "active" {
		if locked > 0 {
			s.auditNoTx(ctx, deref(u.TenantID), "anonymous", "auth.lockout", "email:"+strings.ToLower(email), map[string]any{"lock_ms": locked.Milliseconds()})
		}
		actor := "anonymous"
		if found {
			actor = "user:" + u.ID
		}
		s.auditNoTx(ctx, deref(u.TenantID), actor, "auth.login.failure", "email:"+strings.ToLower(email), nil)
		return nil, errBadCredentials
	}
	s.forgive(ctx, email, ip)
	if rehash {
		if err := s.tx.Exec(ctx, "auth.rehash", `UPDATE users SET password_hash = $2 WHERE id = $1`, u.ID, hashPassword(password, s.argon)); err != nil {
			s.log.Warn().Ctx(ctx).Err(err).Msg("password rehash failed")
		}
	}
	return s.openSession(ctx, u, gen, userAgent)
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// openSession creates a session with its first refresh token and issues an
// access token. gen is the user's token generation read with the password
// hash that was checked: if a password change, disable or logout-all raised
// it since, the sign-in is refused, and the row lock keeps one from
// committing before the session exists (it then ends the session).
func (s *Service) openSession(ctx context.Context, u User, gen int64, userAgent string) (*LoginResult, error) {
	now := s.now()
	sid := uuid.Must(uuid.NewV7()).String()
	refresh, hash := newOpaque()
	err := s.tx.Do(ctx, "auth.login", func(tx pgx.Tx) error {
		var cur int64
		err := tx.QueryRow(ctx, `SELECT token_gen FROM users WHERE id = $1 AND status = 'active' FOR SHARE`, u.ID).Scan(&cur)
		if postgres.IsNoRows(err) || (err == nil && cur != gen) {
			return errBadCredentials
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO sessions (id, user_id, tenant_id, created_at, last_used_at, expires_at, user_agent, client_ip)
			VALUES ($1, $2, $3, $4, $4, $5, $6, $7)`, sid, u.ID, u.TenantID, now, now.Add(s.cfg.SessionMax), truncate(userAgent, 256), httpx.ClientIP(ctx)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO refresh_tokens (hash, session_id, tenant_id, created_at) VALUES ($1, $2, $3, $4)`, hash, sid, u.TenantID, now); err != nil {
			return err
		}
		return auditlog.Record(ctx, tx, now, deref(u.TenantID), "user:"+u.ID, "auth.login.success", "session:"+sid, nil)
	})
	if err != nil {
		return nil, err
	}
	roles, perms, err := s.userPermissions(ctx, u.ID)
	if err != nil {
		return nil, err
	}
	u.Roles = roles
	at, _, _, err := s.issue(tokenSpec{kind: principal.User, subject: u.ID, tenant: deref(u.TenantID), session: sid, gen: gen, roles: roles})
	if err != nil {
		return nil, err
	}
	return &LoginResult{User: u, Permissions: perms, TokenResponse: TokenResponse{AccessToken: at, TokenType: "Bearer",
		ExpiresIn: int(s.cfg.AccessTTL.Seconds()), RefreshToken: refresh}}, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

var errBadRefresh = errs.E(errs.Unauthenticated, "the refresh token is invalid, expired or revoked")

// ErrRefreshRace answers a refresh token presented again within seconds of
// its exchange: a retry or a concurrent twin. The session stays valid; the
// tokens issued by the first exchange are the ones to use.
var ErrRefreshRace = errs.E(errs.Conflict, "this refresh token was exchanged moments ago; use the tokens issued then")

// Refresh exchanges a refresh token for a new access token and a new
// refresh token (rotation). Presenting a token that was already exchanged
// revokes its whole session (reuse detection), except a retry of the
// immediate predecessor within a few seconds, which is refused with
// ErrRefreshRace and revokes nothing. Concurrent refreshes of one token
// serialise on its row: one wins, the others get ErrRefreshRace, and
// exactly one refresh token of the session is ever valid.
func (s *Service) Refresh(ctx context.Context, token string) (*TokenResponse, error) {
	now := s.now()
	hash := hashOpaque(token)
	newToken, newHash := newOpaque()
	var (
		u        User
		sid      string
		gen      int64
		reused   bool
		expired  bool
		justUsed bool
	)
	// A refresh token names no tenant: the exchange is an identity lookup on
	// the cross-tenant path.
	err := s.tx.Do(postgres.AllTenants(ctx, "refresh token"), "auth.refresh", func(tx pgx.Tx) error {
		var usedAt *time.Time
		var lastUsed, expires time.Time
		var revoked *time.Time
		err := tx.QueryRow(ctx, `SELECT rt.session_id, rt.used_at, s.last_used_at, s.expires_at, s.revoked_at, u.id, u.tenant_id, u.status, u.token_gen
			FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id JOIN users u ON u.id = s.user_id
			WHERE rt.hash = $1 FOR UPDATE OF rt, s`, hash).Scan(&sid, &usedAt, &lastUsed, &expires, &revoked, &u.ID, &u.TenantID, &u.Status, &gen)
		if postgres.IsNoRows(err) {
			return errBadRefresh
		}
		if err != nil {
			return err
		}
		if revoked != nil || u.Status != "active" {
			return errBadRefresh
		}
		if u.TenantID != nil {
			if err := s.tenantActive(ctx, *u.TenantID); err != nil {
				return err
			}
		}
		if now.After(expires) || now.Sub(lastUsed) > s.cfg.SessionIdle {
			expired = true
			return nil
		}
		if usedAt != nil {
			// The presented token was exchanged before. If it is the
			// immediate predecessor (its child is the session's one unused
			// token) and the exchange was seconds ago, this is a retry or a
			// concurrent twin: refuse it without revoking, so the token
			// issued moments ago stays the one valid token. Anything else is
			// reuse: the session ends.
			var child []byte
			err := tx.QueryRow(ctx, `SELECT hash FROM refresh_tokens WHERE parent = $1 AND used_at IS NULL`, hash).Scan(&child)
			if err != nil && !postgres.IsNoRows(err) {
				return err
			}
			if child != nil && now.Sub(*usedAt) <= refreshGrace {
				justUsed = true
				return nil
			}
			reused = true
			_, err = tx.Exec(ctx, `UPDATE sessions SET revoked_at = $2, revoke_reason = 'refresh token reuse' WHERE id = $1`, sid, now)
			if err == nil {
				err = auditlog.Record(ctx, tx, now, deref(u.TenantID), "user:"+u.ID, "auth.refresh.reuse", "session:"+sid, nil)
			}
			if err == nil {
				err = insertRevocation(ctx, tx, "session", sid, now.Add(s.cfg.AccessTTL+clockSkew))
			}
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE refresh_tokens SET used_at = $2 WHERE hash = $1`, hash, now); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO refresh_tokens (hash, session_id, tenant_id, parent, created_at) VALUES ($1, $2, $3, $4, $5)`,
			newHash, sid, u.TenantID, hash, now); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE sessions SET last_used_at = $2 WHERE id = $1`, sid, now)
		return err
	})
	if err != nil {
		return nil, err
	}
	if reused {
		s.publish(ctx, event{Kind: "session", ID: sid, Exp: now.Add(s.cfg.AccessTTL + clockSkew)})
		return nil, errBadRefresh
	}
	if expired {
		return nil, errs.E(errs.Unauthenticated, "the session has ended; sign in again")
	}
	if justUsed {
		return nil, ErrRefreshRace
	}
	roles, _, err := s.userPermissions(scopeFor(ctx, deref(u.TenantID)), u.ID)
	if err != nil {
		return nil, err
	}
	at, _, _, err := s.issue(tokenSpec{kind: principal.User, subject: u.ID, tenant: deref(u.TenantID), session: sid, gen: gen, roles: roles})
	if err != nil {
		return nil, err
	}
	return &TokenResponse{AccessToken: at, TokenType: "Bearer", ExpiresIn: int(s.cfg.AccessTTL.Seconds()), RefreshToken: newToken}, nil
}

func insertRevocation(ctx context.Context, tx pgx.Tx, kind, id string, exp time.Time) error {
	_, err := tx.Exec(ctx, `INSERT INTO revocations (kind, id, expires_at) VALUES ($1, $2, $3)
		ON CONFLICT (kind, id) DO UPDATE SET expires_at = greatest(revocations.expires_at, excluded.expires_at)`, kind, id, exp)
	return err
}

// Logout ends the caller's session: its refresh token stops working and the
// access token presented is revoked on every instance within a second.
func (s *Service) Logout(ctx context.Context) error {
	p := principal.From(ctx)
	if p == nil {
		return errs.E(errs.Unauthenticated, "authentication required")
	}
	now := s.now()
	exp := now.Add(s.cfg.AccessTTL + clockSkew)
	err := s.tx.Do(ctx, "auth.logout", func(tx pgx.Tx) error {
		if err := insertRevocation(ctx, tx, "jti", p.TokenID, exp); err != nil {
			return err
		}
		if p.SessionID != "" {
			if _, err := tx.Exec(ctx, `UPDATE sessions SET revoked_at = $2, revoke_reason = 'logout' WHERE id = $1 AND revoked_at IS NULL`, p.SessionID, now); err != nil {
				return err
			}
			if err := insertRevocation(ctx, tx, "session", p.SessionID, exp); err != nil {
				return err
			}
		}
		return auditlog.Record(ctx, tx, now, p.TenantID, p.Subject(), "auth.logout", "session:"+p.SessionID, nil)
	})
	if err != nil {
		return err
	}
	s.publish(ctx, event{Kind: "jti", ID: p.TokenID, Exp: exp})
	if p.SessionID != "" {
		s.publish(ctx, event{Kind: "session", ID: p.SessionID, Exp: exp})
	}
	return nil
}

// LogoutAll ends every session of the caller and revokes every token they
// hold ("log out everywhere").
func (s *Service) LogoutAll(ctx context.Context) error {
	p := principal.From(ctx)
	if p == nil {
		return errs.E(errs.Unauthenticated, "authentication required")
	}
	if p.Kind != principal.User {
		return errs.E(errs.Forbidden, "only users have sessions to end; disable a terminal instead")
	}
	return s.revokeUser(ctx, p.ID, "logout everywhere", "auth.logout_all", p.TenantID)
}

// revokeUser raises a user's token generation and ends their sessions, in
// tx-less form for callers that have no other change to make.
func (s *Service) revokeUser(ctx context.Context, userID, reason, action, tenant string) error {
	var gen int64
	err := s.tx.Do(ctx, "auth.revoke_user", func(tx pgx.Tx) error {
		var err error
		gen, err = bumpGen(ctx, tx, "users", userID, reason, s.now())
		if err != nil {
			return err
		}
		return auditlog.Record(ctx, tx, s.now(), tenant, auditlog.Actor(ctx), action, "user:"+userID, map[string]any{"reason": reason})
	})
	if err != nil {
		return err
	}
	s.publish(ctx, event{Kind: "gen", ID: "user:" + userID, Gen: gen})
	return nil
}

// bumpGen raises the token generation of a user or terminal (and ends a
// user's sessions) inside tx, returning the new generation.
func bumpGen(ctx context.Context, tx pgx.Tx, table, id, reason string, now time.Time) (int64, error) {
	var gen int64
	err := tx.QueryRow(ctx, `UPDATE `+pgx.Identifier{table}.Sanitize()+` SET token_gen = token_gen + 1 WHERE id = $1 RETURNING token_gen`, id).Scan(&gen)
	if err != nil {
		if postgres.IsNoRows(err) {
			return 0, errs.E(errs.NotFound, "no such %s", strings.TrimSuffix(table, "s"))
		}
		return 0, err
	}
	if table == "users" {
		_, err = tx.Exec(ctx, `UPDATE sessions SET revoked_at = $2, revoke_reason = $3 WHERE user_id = $1 AND revoked_at IS NULL`, id, now, reason)
	}
	return gen, err
}

// ClientCredentials authenticates a POS terminal (RFC 6749 §4.4) and
// issues an access token; terminals get no refresh token and simply ask
// again. The secret is compared in constant time.
func (s *Service) ClientCredentials(ctx context.Context, clientID, secret string) (*TokenResponse, error) {
	bad := errs.E(errs.Unauthenticated, "client authentication failed")
	if _, err := uuid.Parse(clientID); err != nil {
		return nil, bad
	}
	var tenant, status string
	var stored []byte
	var gen int64
	err := s.tx.QueryRow(postgres.AllTenants(ctx, "terminal client id"), "auth.terminal_lookup",
		`SELECT tenant_id, status, secret_hash, token_gen FROM terminals WHERE id = $1`, []any{clientID}, &tenant, &status, &stored, &gen)
	if postgres.IsNoRows(err) {
		return nil, bad
	}
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(hashOpaque(secret), stored) != 1 || status != "active" {
		return nil, bad
	}
	if err := s.tenantActive(ctx, tenant); err != nil {
		return nil, err
	}
	if err := s.tx.Exec(postgres.WithTenant(ctx, tenant), "auth.terminal_seen", `UPDATE terminals SET last_seen_at = $2 WHERE id = $1`, clientID, s.now()); err != nil {
		return nil, err
	}
	at, _, _, err := s.issue(tokenSpec{kind: principal.Terminal, subject: clientID, tenant: tenant, gen: gen, roles: []string{terminalRole}})
	if err != nil {
		return nil, err
	}
	return &TokenResponse{AccessToken: at, TokenType: "Bearer", ExpiresIn: int(s.cfg.AccessTTL.Seconds()), Scope: strings.Join(terminalPermissions, " ")}, nil
}

// RevokeToken implements RFC 7009 for a refresh token (its session ends)
// or an access token (it is revoked). Unknown or invalid tokens are not an
// error, as the RFC requires.
func (s *Service) RevokeToken(ctx context.Context, token string) error {
	now := s.now()
	exp := now.Add(s.cfg.AccessTTL + clockSkew)
	if c, err := s.parse(ctx, token); err == nil {
		// Keep the revocation as long as the verifier accepts the token:
		// until exp plus the clock skew it allows.
		until := c.exp.Add(clockSkew)
		err := s.tx.Do(scopeFor(ctx, c.tenant), "auth.revoke_token", func(tx pgx.Tx) error {
			if err := insertRevocation(ctx, tx, "jti", c.jti, until); err != nil {
				return err
			}
			return auditlog.Record(ctx, tx, now, c.tenant, string(c.kind)+":"+c.subject, "auth.token.revoke", "token:"+c.jti, nil)
		})
		if err != nil {
			return err
		}
		s.publish(ctx, event{Kind: "jti", ID: c.jti, Exp: until})
		return nil
	}
	var sid, uid string
	var tenant *string
	err := s.tx.Do(postgres.AllTenants(ctx, "refresh token"), "auth.revoke_token", func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `UPDATE sessions s SET revoked_at = $2, revoke_reason = 'token revoked' FROM users u
			WHERE s.id = (SELECT session_id FROM refresh_tokens WHERE hash = $1) AND s.revoked_at IS NULL AND u.id = s.user_id
			RETURNING s.id, u.id, u.tenant_id`, hashOpaque(token), now).Scan(&sid, &uid, &tenant)
		if postgres.IsNoRows(err) {
			sid = ""
			return nil
		}
		if err != nil {
			return err
		}
		if err := insertRevocation(ctx, tx, "session", sid, exp); err != nil {
			return err
		}
		return auditlog.Record(ctx, tx, now, deref(tenant), "user:"+uid, "auth.token.revoke", "session:"+sid, nil)
	})
	if err == nil && sid != "" {
		s.publish(ctx, event{Kind: "session", ID: sid, Exp: exp})
	}
	return err
}

// Introspection is the RFC 7662 answer.
type Introspection struct {
	Active    bool     `json:"active"`
	Scope     string   `json:"scope,omitempty"`
	ClientID  string   `json:"client_id,omitempty"`
	TokenType string   `json:"token_type,omitempty"`
	Exp       int64    `json:"exp,omitempty"`
	Iat       int64    `json:"iat,omitempty"`
	Sub       string   `json:"sub,omitempty"`
	Aud       string   `json:"aud,omitempty"`
	Iss       string   `json:"iss,omitempty"`
	Jti       string   `json:"jti,omitempty"`
	Tenant    string   `json:"tenant,omitempty"`
	Kind      string   `json:"kind,omitempty"`
	Roles     []string `json:"roles,omitempty"`
}

// Introspect reports whether an access token is active (RFC 7662). Any
// inactive token (bad, expired, revoked, unknown) gets only active=false.
func (s *Service) Introspect(ctx context.Context, token string) Introspection {
	p, err := s.principalFor(ctx, token)
	if err != nil {
		return Introspection{Active: false}
	}
	c, _ := s.parse(ctx, token)
	return Introspection{Active: true, Scope: strings.Join(p.Permissions, " "), ClientID: c.subject, TokenType: "Bearer",
		Exp: c.exp.Unix(), Iat: c.iat.Unix(), Sub: c.subject, Aud: s.cfg.Audience, Iss: s.cfg.Issuer, Jti: c.jti, Tenant: c.tenant,
		Kind: string(c.kind), Roles: p.Roles}
}
