package postgres

import (
	"context"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/principal"
)

// Row-level security (sql/migrations/00003_tenants.sql) shows a transaction
// the rows of its scope: one tenant, or every tenant on the cross-tenant
// path. Tx.Do writes the scope into two transaction-local settings in the
// statement that opens the transaction, so it costs no extra round trip and
// cannot outlive the transaction on a pooled connection.
//
// The scope of a transaction comes from its context, in this order:
//  1. an explicit WithTenant or AllTenants;
//  2. the authenticated principal: a tenant's user or terminal sees its
//     tenant; a platform administrator (no tenant) takes the cross-tenant
//     path, with reason "platform";
//  3. otherwise none: tenant-owned tables show no rows and take no writes.

type scopeKey struct{}

type scope struct {
	tenant string // a UUID, or "" with all set
	all    bool
	reason string
}

// WithTenant returns ctx whose transactions see only tenant's rows. tenant
// must come from the authenticated caller or from a row the caller's scope
// could already see, never from a client-supplied field.
func WithTenant(ctx context.Context, tenant string) context.Context {
	return context.WithValue(ctx, scopeKey{}, scope{tenant: tenant})
}

// AllTenants returns ctx whose transactions see every tenant's rows: the one
// cross-tenant path, for platform administration, identity lookups made
// before the tenant is known (sign-in by email, refresh token, terminal
// client id) and batch jobs. reason names the use; each such transaction is
// counted in atrium_db_cross_tenant_transactions_total{reason} and logged
// with its name and reason.
func AllTenants(ctx context.Context, reason string) context.Context {
	return context.WithValue(ctx, scopeKey{}, scope{all: true, reason: reason})
}

// TenantOf returns the tenant ctx's transactions are scoped to, and whether
// there is exactly one ("" and false on the cross-tenant path or with no
// scope).
func TenantOf(ctx context.Context) (string, bool) {
	sc, ok := scopeOf(ctx)
	return sc.tenant, ok && !sc.all && sc.tenant != ""
}

func scopeOf(ctx context.Context) (scope, bool) {
	if sc, ok := ctx.Value(scopeKey{}).(scope); ok {
		return sc, true
	}
	if p := principal.From(ctx); p != nil {
		if p.TenantID != "" {
			return scope{tenant: p.TenantID}, true
		}
		return scope{all: true, reason: "platform"}, true
	}
	return scope{}, false
}

// scope returns the options that open a transaction in ctx's scope.
func (t *Tx) scope(ctx context.Context, name string) (pgx.TxOptions, error) {
	sc, ok := scopeOf(ctx)
	switch {
	case !ok:
		return pgx.TxOptions{}, nil
	case sc.all:
		t.crossTenant.WithLabelValues(sc.reason).Inc()
		t.log.Debug().Ctx(ctx).Str("tx", name).Str("reason", sc.reason).Msg("cross-tenant transaction")
		return pgx.TxOptions{BeginQuery: "BEGIN; SELECT set_config('atrium.all_tenants', 'on', true)"}, nil
	}
	// The tenant goes into the SQL text, so only a canonical UUID does.
	id, err := uuid.Parse(sc.tenant)
	if err != nil {
		return pgx.TxOptions{}, errs.Wrap(errs.Internal, err, "bad tenant scope")
	}
	return pgx.TxOptions{BeginQuery: "BEGIN; SELECT set_config('atrium.tenant_id', '" + id.String() + "', true)"}, nil
}
