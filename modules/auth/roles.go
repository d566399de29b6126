package auth

import (
	"context"
	"regexp"
	"slices"
	"strings"

	"github.com/atriumhq/atrium/platform/auditlog"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
)

// Role is a named set of permissions. Built-in roles (platform_admin,
// tenant_admin, operator, viewer) belong to no tenant; custom roles belong
// to one.
type Role struct {
	ID          string   `json:"id"`
	TenantID    *string  `json:"tenant_id"`
	Name        string   `json:"name"`
	Description string   `json:"description"`
	Permissions []string `json:"permissions"`
	Builtin     bool     `json:"builtin"`
}

// grantable are the permissions a custom role may hold: what a tenant
// administrator holds, so no custom role reaches beyond its tenant.
var grantable = []string{"users:manage", "users:read", "roles:manage", "terminals:manage", "terminals:read", "audit:read",
	"payments:read", "payments:refund", "payments:manage", "gpu:read", "gpu:deploy", "cluster:read", "inference:invoke"}

var roleName = regexp.MustCompile(`^[a-z][a-z0-9_]{1,39}$`)

// ListRoles lists the built-in roles and the caller's tenant's custom
// roles (every tenant's for platform administrators).
func (s *Service) ListRoles(ctx context.Context) ([]Role, error) {
	if err := principal.Check(ctx, "users:read"); err != nil {
		return nil, err
	}
	return postgres.Collect(ctx, s.tx, "auth.list_roles", func(r pgx.CollectableRow) (Role, error) {
		var x Role
		err := r.Scan(&x.ID, &x.TenantID, &x.Name, &x.Description, &x.Permissions, &x.Builtin)
		return x, err
	}, `SELECT id, tenant_id, name, description, permissions, builtin FROM roles
		WHERE tenant_id IS NULL OR $1 = '' OR tenant_id::text = $1 ORDER BY builtin DESC, name`, scopeArg(ctx))
}

// NewRole is a request to define a custom role.
type NewRole struct {
	Name        string   `json:"name" required:"true"`
	Description string   `json:"description"`
	Permissions []string `json:"permissions" required:"true"`
	TenantID    string   `json:"tenant_id"`
}

// CreateRole defines a custom role in the caller's tenant (platform
// administrators name the tenant). Errors: invalid, forbidden, conflict.
func (s *Service) CreateRole(ctx context.Context, in NewRole) (*Role, error) {
	tenant, err := tenantObject(ctx, "roles:manage", in.TenantID)
	if err != nil {
		return nil, err
	}
	in.TenantID = tenant
	in.Name = strings.TrimSpace(in.Name)
	if !roleName.MatchString(in.Name) {
		return nil, errs.Field("name", "must be 2 to 40 lower-case letters, digits or _ starting with a letter")
	}
	perms := uniq(in.Permissions)
	for _, perm := range perms {
		if !slices.Contains(grantable, perm) {
			return nil, errs.Field("permissions", "%q cannot be granted by a custom role", perm)
		}
	}
	r := &Role{ID: uuid.Must(uuid.NewV7()).String(), TenantID: &in.TenantID, Name: in.Name, Description: strings.TrimSpace(in.Description), Permissions: perms}
	err = s.tx.Do(ctx, "auth.create_role", func(tx pgx.Tx) error {
		var clash bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM roles WHERE name = $1 AND (tenant_id IS NULL OR tenant_id::text = $2))`,
			in.Name, in.TenantID).Scan(&clash); err != nil {
			return err
		}
		if clash {
			return &errs.Error{Code: errs.Conflict, Message: "name: a role named " + in.Name + " already exists",
				Fields: []errs.FieldError{{Field: "name", Message: "already exists"}}}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO roles (id, tenant_id, name, description, permissions) VALUES ($1, $2, $3, $4, $5)`,
			r.ID, in.TenantID, r.Name, r.Description, perms); err != nil {
			return err
		}
		return auditlog.Record(ctx, tx, s.now(), in.TenantID, auditlog.Actor(ctx), "role.create", "role:"+r.ID, map[string]any{"name": r.Name, "permissions": perms})
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}
