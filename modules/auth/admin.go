package auth

import (
	"context"
	"net/mail"
	"slices"
	"strings"
	"time"

	"github.com/atriumhq/atrium/platform/auditlog"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
)

// Scope rules: a platform administrator (no tenant) sees and manages every
// tenant's objects; anyone else only their own tenant's. An object outside
// the caller's scope is reported as not found, never as forbidden, so ids
// cannot be probed across tenants.

// NewUser is a request to create a user.
type NewUser struct {
	Email       string   `json:"email" required:"true"`
	DisplayName string   `json:"display_name"`
	Password    string   `json:"password" required:"true"`
	TenantID    string   `json:"tenant_id"`
	Roles       []string `json:"roles"`
}

// CreateUser creates a user. Tenant users create users in their own tenant
// only; a platform administrator may create platform administrators (no
// tenant) or users of any tenant. Errors: invalid, forbidden, conflict.
func (s *Service) CreateUser(ctx context.Context, in NewUser) (*User, error) {
	if err := principal.Check(ctx, "users:manage"); err != nil {
		return nil, err
	}
	tenant, err := targetTenant(ctx, in.TenantID)
	if err != nil {
		return nil, err
	}
	in.TenantID = tenant
	return s.createUser(ctx, in)
}

// CreateFirstAdmin creates a user without a caller, for the `atrium admin
// create-user` command run by an operator on the host.
func (s *Service) CreateFirstAdmin(ctx context.Context, in NewUser) (*User, error) {
	return s.createUser(postgres.AllTenants(ctx, "admin create-user"), in)
}

func (s *Service) createUser(ctx context.Context, in NewUser) (*User, error) {
	addr, err := mail.ParseAddress(strings.TrimSpace(in.Email))
	if err != nil || addr.Address != strings.TrimSpace(in.Email) {
		return nil, errs.Field("email", "must be an email address such as ana@example.com")
	}
	if err := validatePassword(in.Password); err != nil {
		return nil, errs.Field("password", "%s", err.Error())
	}
	if in.TenantID != "" {
		if _, err := uuid.Parse(in.TenantID); err != nil {
			return nil, errs.Field("tenant_id", "must be a UUID")
		}
	}
	if len(in.Roles) == 0 {
		in.Roles = []string{"viewer"}
	}
	if in.TenantID != "" && slices.Contains(in.Roles, "platform_admin") {
		return nil, errs.Field("roles", "platform_admin is only for users without a tenant")
	}
	if p := principal.From(ctx); p != nil && !p.Has("tenants:manage") && slices.Contains(in.Roles, "platform_admin") {
		return nil, errs.E(errs.Forbidden, "only platform administrators grant platform_admin")
	}
	if err := s.checkGrant(ctx, in.TenantID, in.Roles); err != nil {
		return nil, err
	}
	now := s.now()
	u := &User{ID: uuid.Must(uuid.NewV7()).String(), Email: addr.Address, DisplayName: strings.TrimSpace(in.DisplayName),
		Status: "active", CreatedAt: now, Roles: in.Roles}
	if in.TenantID != "" {
		u.TenantID = &in.TenantID
	}
	hash := hashPassword(in.Password, s.argon)
	err = s.tx.Do(ctx, "auth.create_user", func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO users (id, tenant_id, email, display_name, password_hash, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, $6)`, u.ID, u.TenantID, u.Email, u.DisplayName, hash, now)
		if postgres.IsUnique(err, "") {
			return &errs.Error{Code: errs.Conflict, Message: "email: is already registered",
				Fields: []errs.FieldError{{Field: "email", Message: "is already registered"}}}
		}
		if postgres.IsForeignKey(err) {
			return errs.Field("tenant_id", "no such tenant")
		}
		if err != nil {
			return err
		}
		if err := setRoles(ctx, tx, u.ID, in.TenantID, in.Roles); err != nil {
			return err
		}
		if err := s.useQuota(ctx, tx, in.TenantID, "max_users", 1); err != nil {
			return err
		}
		return auditlog.Record(ctx, tx, now, in.TenantID, auditlog.Actor(ctx), "user.create", "user:"+u.ID, map[string]any{"email": u.Email, "roles": in.Roles})
	})
	if err != nil {
		return nil, err
	}
	return u, nil
}

// setRoles replaces a user's roles with the named ones, which must be
// built-in or custom roles of the user's tenant.
func setRoles(ctx context.Context, tx pgx.Tx, userID, tenant string, names []string) error {
	var ids []string
	rows, err := tx.Query(ctx, `SELECT id::text FROM roles WHERE name = ANY($1) AND (tenant_id IS NULL OR tenant_id::text = $2)`, names, tenant)
	if err != nil {
		return err
	}
	if ids, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		return err
	}
	if len(ids) != len(uniq(names)) {
		return errs.Field("roles", "names a role that does not exist in this tenant")
	}
	if _, err := tx.Exec(ctx, `DELETE FROM user_roles WHERE user_id = $1`, userID); err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO user_roles (user_id, role_id, tenant_id) SELECT $1, unnest($2::uuid[]), nullif($3, '')::uuid`, userID, ids, tenant)
	return err
}

func uniq(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return slices.Compact(out)
}

// No escalation: an administrator may grant only roles whose permissions
// they hold themselves, and may act (roles, password, status, sessions) only
// on users who hold nothing they lack. Otherwise users:manage would be as
// good as any role, platform_admin included.

// checkGrant refuses roles carrying a permission the caller lacks.
func (s *Service) checkGrant(ctx context.Context, tenant string, roles []string) error {
	p := principal.From(ctx)
	if p == nil {
		return nil // the operator's own command on the host (CreateFirstAdmin)
	}
	perms, err := postgres.Collect(ctx, s.tx, "auth.grant_perms", pgx.RowTo[string], `SELECT DISTINCT unnest(permissions) FROM roles
		WHERE name = ANY($1) AND (tenant_id IS NULL OR tenant_id::text = $2)`, roles, tenant)
	if err != nil {
		return err
	}
	for _, perm := range perms {
		if !p.Has(perm) {
			return errs.E(errs.Forbidden, "you cannot grant %s, which you do not hold", perm)
		}
	}
	return nil
}

// checkTarget refuses acting on a user who holds a permission the caller
// lacks, and needs users:manage.
func (s *Service) checkTarget(ctx context.Context, userID string) error {
	if err := principal.Check(ctx, "users:manage"); err != nil {
		return err
	}
	if _, err := s.getUser(ctx, userID); err != nil {
		return err // not found, or outside the caller's tenant
	}
	_, perms, err := s.userPermissions(ctx, userID)
	if err != nil {
		return err
	}
	p := principal.From(ctx)
	for _, perm := range perms {
		if !p.Has(perm) {
			return errs.E(errs.Forbidden, "this user holds %s, which you do not", perm)
		}
	}
	return nil
}

// targetTenant is the tenant a new object of the caller's goes into: their
// own, for tenant users (naming another is an error); the one they name, for
// platform administrators.
func targetTenant(ctx context.Context, requested string) (string, error) {
	p := principal.From(ctx)
	if p == nil || p.TenantID == "" {
		return requested, nil
	}
	if requested != "" && requested != p.TenantID {
		return "", errs.Field("tenant_id", "must be your own tenant")
	}
	return p.TenantID, nil
}

// tenantObject checks perm and returns the tenant of a new object that
// must belong to one (a terminal, a custom role): see targetTenant.
func tenantObject(ctx context.Context, perm, requested string) (string, error) {
	if err := principal.Check(ctx, perm); err != nil {
		return "", err
	}
	return principal.OwningTenant(ctx, requested)
}

// scopeArg restricts a query
func scopeArg(ctx context.Context) string {
	if p := principal.From(ctx); p != nil {
		return p.TenantID
	}
	return "\x00" // no principal: matches nothing
}

// ListUsers lists the users in the caller's scope.
func (s *Service) ListUsers(ctx context.Context) ([]User, error) {
	if err := principal.Check(ctx, "users:read"); err != nil {
		return nil, err
	}
	return postgres.Collect(ctx, s.tx, "auth.list_users", scanUser, `SELECT u.id, u.tenant_id, u.email, u.display_name, u.status, u.created_at,
			coalesce(array_agg(r.name ORDER BY r.name) FILTER (WHERE r.name IS NOT NULL), '{}')
		FROM users u LEFT JOIN user_roles ur ON ur.user_id = u.id LEFT JOIN roles r ON r.id = ur.role_id
		WHERE ($1 = '' OR u.tenant_id::text = $1) GROUP BY u.id ORDER BY u.email`, scopeArg(ctx))
}

func scanUser(r pgx.CollectableRow) (User, error) {
	var u User
	err := r.Scan(&u.ID, &u.TenantID, &u.Email, &u.DisplayName, &u.Status, &u.CreatedAt, &u.Roles)
	return u, err
}

// GetUser returns one user in the caller's scope. Errors: not_found.
func (s *Service) GetUser(ctx context.Context, id string) (*User, error) {
	if err := principal.Check(ctx, "users:read"); err != nil {
		return nil, err
	}
	return s.getUser(ctx, id)
}

func (s *Service) getUser(ctx context.Context, id string) (*User, error) {
	if _, err := uuid.Parse(id); err != nil {
		return nil, errs.E(errs.NotFound, "no such user")
	}
	us, err := postgres.Collect(ctx, s.tx, "auth.get_user", scanUser, `SELECT u.id, u.tenant_id, u.email, u.display_name, u.status, u.created_at,
			coalesce(array_agg(r.name ORDER BY r.name) FILTER (WHERE r.name IS NOT NULL), '{}')
		FROM users u LEFT JOIN user_roles ur ON ur.user_id = u.id LEFT JOIN roles r ON r.id = ur.role_id
		WHERE u.id = $1 AND ($2 = '' OR u.tenant_id::text = $2) GROUP BY u.id`, id, scopeArg(ctx))
	if err != nil {
		return nil, err
	}
	if len(us) != 1 {
		return nil, errs.E(errs.NotFound, "no such user")
	}
	return &us[0], nil
}

// SetUserStatus disables or re-enables a user. Disabling revokes every token
// and session of the user on every instance within a second.
func (s *Service) SetUserStatus(ctx context.Context, id, status string) (*User, error) {
	if err := principal.Check(ctx, "users:manage"); err != nil {
		return nil, err
	}
	if status != "active" && status != "disabled" {
		return nil, errs.Field("status", "must be active or disabled")
	}
	u, err := s.getUser(ctx, id)
	if err != nil {
		return nil, err
	}
	if p := principal.From(ctx); p.ID == id && status == "disabled" {
		return nil, errs.E(errs.Conflict, "you cannot disable yourself")
	}
	if err := s.checkTarget(ctx, id); err != nil {
		return nil, err
	}
	var gen int64
	err = s.tx.Do(ctx, "auth.user_status", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE users SET status = $2, updated_at = $3 WHERE id = $1`, id, status, s.now()); err != nil {
			return err
		}
		if status == "disabled" {
			var err error
			if gen, err = bumpGen(ctx, tx, "users", id, "user disabled", s.now()); err != nil {
				return err
			}
		}
		action := "user.enable"
		if status == "disabled" {
			action = "user.disable"
		}
		return auditlog.Record(ctx, tx, s.now(), deref(u.TenantID), auditlog.Actor(ctx), action, "user:"+id, nil)
	})
	if err != nil {
		return nil, err
	}
	if gen > 0 {
		s.publish(ctx, event{Kind: "gen", ID: "user:" + id, Gen: gen})
	}
	u.Status = status
	return u, nil
}

// ResetPassword sets a new password for a user and revokes every token and
// session they hold. Users changing their own password must give the
// current one (a stolen access token must not become the account); an
// administrator's reset needs users:manage over a user who holds nothing
// the administrator lacks.
func (s *Service) ResetPassword(ctx context.Context, id, password, current string) error {
	p := principal.From(ctx)
	if p == nil {
		return errs.E(errs.Unauthenticated, "authentication required")
	}
	if p.ID == id {
		var hash string
		if err := s.tx.QueryRow(ctx, "auth.password_hash", `SELECT password_hash FROM users WHERE id = $1`, []any{id}, &hash); err != nil {
			return err
		}
		if ok, _, err := checkPassword(current, hash, s.argon); err != nil || !ok {
			return errs.Field("current_password", "is not your current password")
		}
	} else if err := s.checkTarget(ctx, id); err != nil {
		return err
	}
	if err := validatePassword(password); err != nil {
		return errs.Field("password", "%s", err.Error())
	}
	u, err := s.getUser(ctx, id)
	if err != nil {
		return err
	}
	var gen int64
	err = s.tx.Do(ctx, "auth.password", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1`, id, hashPassword(password, s.argon), s.now()); err != nil {
			return err
		}
		var err error
		if gen, err = bumpGen(ctx, tx, "users", id, "password changed", s.now()); err != nil {
			return err
		}
		return auditlog.Record(ctx, tx, s.now(), deref(u.TenantID), auditlog.Actor(ctx), "user.password", "user:"+id, nil)
	})
	if err != nil {
		return err
	}
	s.publish(ctx, event{Kind: "gen", ID: "user:" + id, Gen: gen})
	return nil
}

// SetUserRoles replaces a user's roles; the change is enforced on every
// instance within a second.
func (s *Service) SetUserRoles(ctx context.Context, id string, roles []string) (*User, error) {
	if err := principal.Check(ctx, "users:manage"); err != nil {
		return nil, err
	}
	u, err := s.getUser(ctx, id)
	if err != nil {
		return nil, err
	}
	if len(roles) == 0 {
		return nil, errs.Field("roles", "must name at least one role")
	}
	if slices.Contains(roles, "platform_admin") && (u.TenantID != nil || !principal.From(ctx).Has("tenants:manage")) {
		return nil, errs.Field("roles", "platform_admin is only for platform users, granted by platform administrators")
	}
	if err := s.checkTarget(ctx, id); err != nil {
		return nil, err
	}
	if err := s.checkGrant(ctx, deref(u.TenantID), roles); err != nil {
		return nil, err
	}
	err = s.tx.Do(ctx, "auth.user_roles", func(tx pgx.Tx) error {
		if err := setRoles(ctx, tx, id, deref(u.TenantID), roles); err != nil {
			return err
		}
		return auditlog.Record(ctx, tx, s.now(), deref(u.TenantID), auditlog.Actor(ctx), "user.roles", "user:"+id, map[string]any{"roles": roles})
	})
	if err != nil {
		return nil, err
	}
	s.publish(ctx, event{Kind: "perms", ID: id})
	return s.getUser(ctx, id)
}

// Session is a login session.
type Session struct {
	ID         string     `json:"id"`
	UserID     string     `json:"user_id"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt time.Time  `json:"last_used_at"`
	ExpiresAt  time.Time  `json:"expires_at"`
	RevokedAt  *time.Time `json:"revoked_at"`
	UserAgent  string     `json:"user_agent"`
	ClientIP   string     `json:"client_ip"`
	Current    bool       `json:"current"`
}

// Sessions lists a user's sessions, newest first (the user's own, or any in
// scope with users:manage).
func (s *Service) Sessions(ctx context.Context, userID string) ([]Session, error) {
	p := principal.From(ctx)
	if p == nil {
		return nil, errs.E(errs.Unauthenticated, "authentication required")
	}
	if p.ID != userID {
		if err := principal.Check(ctx, "users:manage"); err != nil {
			return nil, err
		}
	}
	if _, err := s.getUser(ctx, userID); err != nil {
		return nil, err
	}
	return postgres.Collect(ctx, s.tx, "auth.list_sessions", func(r pgx.CollectableRow) (Session, error) {
		var x Session
		err := r.Scan(&x.ID, &x.UserID, &x.CreatedAt, &x.LastUsedAt, &x.ExpiresAt, &x.RevokedAt, &x.UserAgent, &x.ClientIP)
		x.Current = x.ID == p.SessionID
		return x, err
	}, `SELECT id, user_id, created_at, last_used_at, expires_at, revoked_at, user_agent, client_ip
		FROM sessions WHERE user_id = $1 ORDER BY created_at DESC LIMIT 100`, userID)
}

// RevokeSession ends one session: its refresh token stops working and its
// access tokens are rejected on every instance within a second.
func (s *Service) RevokeSession(ctx context.Context, sessionID string) error {
	p := principal.From(ctx)
	if p == nil {
		return errs.E(errs.Unauthenticated, "authentication required")
	}
	if _, err := uuid.Parse(sessionID); err != nil {
		return errs.E(errs.NotFound, "no such session")
	}
	var owner string
	var tenant *string
	err := s.tx.QueryRow(ctx, "auth.session_owner", `SELECT s.user_id, u.tenant_id FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1`,
		[]any{sessionID}, &owner, &tenant)
	if postgres.IsNoRows(err) || (err == nil && p.TenantID != "" && deref(tenant) != p.TenantID) {
		return errs.E(errs.NotFound, "no such session")
	}
	if err != nil {
		return err
	}
	if owner != p.ID {
		if err := s.checkTarget(ctx, owner); err != nil {
			return err
		}
	}
	now := s.now()
	exp := now.Add(s.cfg.AccessTTL + clockSkew)
	err = s.tx.Do(ctx, "auth.revoke_session", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE sessions SET revoked_at = $2, revoke_reason = 'revoked' WHERE id = $1 AND revoked_at IS NULL`, sessionID, now); err != nil {
			return err
		}
		if err := insertRevocation(ctx, tx, "session", sessionID, exp); err != nil {
			return err
		}
		return auditlog.Record(ctx, tx, now, deref(tenant), auditlog.Actor(ctx), "session.revoke", "session:"+sessionID, nil)
	})
	if err != nil {
		return err
	}
	s.publish(ctx, event{Kind: "session", ID: sessionID, Exp: exp})
	return nil
}
