package postgres_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	neturl "net/url"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
	"github.com/atriumhq/atrium/platform/testenv"
	atriumsql "github.com/atriumhq/atrium/sql"
)

// Tests that try to break tenant isolation in the database itself: the
// application role (postgres.AppRole) under row-level security, with the
// scope each transaction gets from Tx.Do. Rows are seeded as the schema's
// owner (a superuser, who bypasses the policies); everything under test
// runs as the application role, as Atrium's own queries do.

// viewerRole is the built-in viewer role (sql/migrations/00002_auth.sql).
const viewerRole = "0193a000-0000-7000-8000-000000000004"

// fixture is one tenant's seeded rows that other rows hang off.
type fixture struct {
	tenant, user, role, session string
	// linkRole is the role the next user_roles insert links f.user to.
	linkRole string
	// The payment rows others hang off, and the seeded account's currency.
	merchant, payment, account, accountCurrency, entry string
	// The GPU rows others hang off.
	model, version, deployment string
}

// tenantInserts insert one new row of each tenant-owned table for f's
// tenant. The same statements seed (as owner) and attack (as another
// tenant), so that an attack fails only on row-level security: every other
// constraint holds. Every table with a tenant_id column needs one here;
// TestRowSecurityCatalogue fails for a table that lacks one.
var tenantInserts = map[string]func(f *fixture) (string, []any){
	"users": func(f *fixture) (string, []any) {
		id := uuid.NewString()
		return `INSERT INTO users (id, tenant_id, email, password_hash) VALUES ($1, $2, $3, 'x')`,
			[]any{id, f.tenant, id + "@scope.test"}
	},
	"roles": func(f *fixture) (string, []any) {
		return `INSERT INTO roles (id, tenant_id, name, permissions) VALUES ($1, $2, $3, '{users:read}')`,
			[]any{uuid.NewString(), f.tenant, "r" + strings.ReplaceAll(uuid.NewString(), "-", "")[:20]}
	},
	"user_roles": func(f *fixture) (string, []any) {
		return `INSERT INTO user_roles (user_id, role_id, tenant_id) VALUES ($1, $2, $3)`, []any{f.user, f.linkRole, f.tenant}
	},
	"terminals": func(f *fixture) (string, []any) {
		return `INSERT INTO terminals (id, tenant_id, merchant_ref, secret_hash) VALUES ($1, $2, 'm-1', '\x00')`,
			[]any{uuid.NewString(), f.tenant}
	},
	"sessions": func(f *fixture) (string, []any) {
		return `INSERT INTO sessions (id, user_id, tenant_id, created_at, last_used_at, expires_at)
			VALUES ($1, $2, $3, now(), now(), now() + interval '1 hour')`, []any{uuid.NewString(), f.user, f.tenant}
	},
	"refresh_tokens": func(f *fixture) (string, []any) {
		return `INSERT INTO refresh_tokens (hash, session_id, tenant_id, created_at) VALUES ($1, $2, $3, now())`,
			[]any{randomBytes(32), f.session, f.tenant}
	},
	"audit_log": func(f *fixture) (string, []any) {
		return `INSERT INTO audit_log (id, tenant_id, actor, action) VALUES ($1, $2, 'system', 'test.scope')`,
			[]any{uuid.NewString(), f.tenant}
	},
	"quota_overrides": func(f *fixture) (string, []any) {
		return `INSERT INTO quota_overrides (tenant_id, quota, value) VALUES ($1, $2, 1)`, []any{f.tenant, "q_" + uuid.NewString()}
	},
	"quota_usage": func(f *fixture) (string, []any) {
		return `INSERT INTO quota_usage (tenant_id, quota, used) VALUES ($1, $2, 1)`, []any{f.tenant, "q_" + uuid.NewString()}
	},
	"quota_reservations": func(f *fixture) (string, []any) {
		return `INSERT INTO quota_reservations (id, tenant_id, quota, period, amount, expires_at)
			VALUES ($1, $2, 'max_users', '', 1, now() + interval '1 hour')`, []any{uuid.NewString(), f.tenant}
	},
	"usage_daily": func(f *fixture) (string, []any) {
		// A random past day keeps repeated seeds apart (the key is tenant, day, metric).
		return `INSERT INTO usage_daily (tenant_id, day, metric, units) VALUES ($1, date '2020-01-01' + $2::int, 'api_calls', 1)`,
			[]any{f.tenant, int(randomBytes(2)[0])<<8 | int(randomBytes(2)[1])}
	},
	"merchants": func(f *fixture) (string, []any) {
		id := uuid.NewString()
		return `INSERT INTO merchants (id, tenant_id, ref, name, mcc, settlement_account) VALUES ($1, $2, $3, 'M', '5411', 'acct')`,
			[]any{id, f.tenant, "m" + id[:8]}
	},
	"payments": func(f *fixture) (string, []any) {
		id := uuid.NewString()
		return `INSERT INTO payments (id, tenant_id, merchant_id, terminal_id, order_no, livemode, amount, currency, payable, fee,
				method, wallet_code, status, channel, created_at, updated_at, idempotency_key)
			VALUES ($1, $2, $3, $4, $5, true, 100, 'EUR', 100, 0, 'wallet', '****1234', 'succeeded', 'simbank', now(), now(), 'k')`,
			[]any{id, f.tenant, f.merchant, uuid.NewString(), "o-" + id}
	},
	"refunds": func(f *fixture) (string, []any) {
		return `INSERT INTO refunds (id, tenant_id, payment_id, livemode, amount, currency, status, channel, created_by, created_at, updated_at)
			VALUES ($1, $2, $3, true, 1, 'EUR', 'failed', 'simbank', 'test', now(), now())`, []any{uuid.NewString(), f.tenant, f.payment}
	},
	"payment_transitions": func(f *fixture) (string, []any) {
		return `INSERT INTO payment_transitions (tenant_id, payment_id, status, at) VALUES ($1, $2, 'processing', now())`,
			[]any{f.tenant, f.payment}
	},
	"idempotency_keys": func(f *fixture) (string, []any) {
		return `INSERT INTO idempotency_keys (tenant_id, key, request_hash, state, created_at, expires_at)
			VALUES ($1, $2, '\x00', 'running', now(), now() + interval '1 day')`, []any{f.tenant, uuid.NewString()}
	},
	"ledger_accounts": func(f *fixture) (string, []any) {
		b := randomBytes(3)
		cur := string([]byte{'A' + b[0]%26, 'A' + b[1]%26, 'A' + b[2]%26})
		return `INSERT INTO ledger_accounts (id, tenant_id, kind, currency, livemode) VALUES ($1, $2, 'bank_clearing', $3, true)`,
			[]any{uuid.NewString(), f.tenant, cur}
	},
	"ledger_entries": func(f *fixture) (string, []any) {
		// A fresh refund id keeps (payment, refund, kind) unique.
		return `INSERT INTO ledger_entries (id, tenant_id, kind, payment_id, refund_id, livemode, created_at)
			VALUES ($1, $2, 'refund', $3, $4, true, now())`, []any{uuid.NewString(), f.tenant, f.payment, uuid.NewString()}
	},
	"ledger_postings": func(f *fixture) (string, []any) {
		// Two legs: an entry must balance at commit.
		return `INSERT INTO ledger_postings (tenant_id, entry_id, account_id, amount, currency) VALUES ($1, $2, $3, 1, $4), ($1, $2, $3, -1, $4)`,
			[]any{f.tenant, f.entry, f.account, f.accountCurrency}
	},
	"account_balances": func(f *fixture) (string, []any) {
		b := randomBytes(2)
		return `INSERT INTO account_balances (account_id, bucket, tenant_id, balance) VALUES ($1, $2, $3, 0)`,
			[]any{f.account, 100 + int(b[0])<<6 | int(b[1]), f.tenant}
	},
	"events": func(f *fixture) (string, []any) {
		return `INSERT INTO events (tenant_id, type, subject, livemode, data) VALUES ($1, 'test.scope', 's', true, '{}')`, []any{f.tenant}
	},
	"models": func(f *fixture) (string, []any) {
		id := uuid.NewString()
		return `INSERT INTO models (id, tenant_id, name) VALUES ($1, $2, $3)`, []any{id, f.tenant, "m-" + id}
	},
	"model_versions": func(f *fixture) (string, []any) {
		id := uuid.NewString()
		return `INSERT INTO model_versions (id, tenant_id, model_id, version, artifact_uri, command, port, health_path, gpus, memory_mb, sharing)
			VALUES ($1, $2, $3, $4, 's3://x', 'serve', 8000, '/health', 1, 0, 'exclusive')`, []any{id, f.tenant, f.model, "v-" + id}
	},
	"deployments": func(f *fixture) (string, []any) {
		id := uuid.NewString()
		return `INSERT INTO deployments (id, tenant_id, name, model_id, stable_version_id, strategy, params, min_replicas, max_replicas,
				replicas, state, traffic) VALUES ($1, $2, $3, $4, $5, 'rolling', '{}', 0, 1, 0, 'steady', '{}')`,
			[]any{id, f.tenant, "d-" + id, f.model, f.version}
	},
	"deployment_events": func(f *fixture) (string, []any) {
		return `INSERT INTO deployment_events (tenant_id, deployment_id, kind, message) VALUES ($1, $2, 'test', 'scope')`,
			[]any{f.tenant, f.deployment}
	},
	"replicas": func(f *fixture) (string, []any) {
		return `INSERT INTO replicas (id, tenant_id, deployment_id, version_id, state, gpus, memory_mb, sharing)
			VALUES ($1, $2, $3, $4, 'pending', 1, 0, 'exclusive')`, []any{uuid.NewString(), f.tenant, f.deployment, f.version}
	},
}

// seedOrder is the order tenantInserts seed in (foreign keys).
var seedOrder = []string{"users", "roles", "user_roles", "terminals", "sessions", "refresh_tokens", "audit_log",
	"quota_overrides", "quota_usage", "quota_reservations", "usage_daily", "merchants", "payments", "refunds",
	"payment_transitions", "idempotency_keys", "ledger_accounts", "ledger_entries", "ledger_postings", "account_balances", "events",
	"models", "model_versions", "deployments", "deployment_events", "replicas"}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// scopeDB is a migrated database with two tenants, A and B, each with a
// row in every tenant-owned table.
type scopeDB struct {
	url   string
	owner *pgx.Conn // the schema's owner (a superuser): bypasses row-level security
	a, b  *fixture
}

func newScopeDB(t *testing.T) *scopeDB {
	t.Helper()
	ctx := context.Background()
	url := testenv.Database(t, atriumsql.Migrations())
	owner, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = owner.Close(context.Background()) })
	db := &scopeDB{url: url, owner: owner, a: seedTenant(t, owner, "A"), b: seedTenant(t, owner, "B")}
	// Platform rows (tenant_id NULL) are no tenant's: only the
	// cross-tenant path sees them.
	if _, err := owner.Exec(ctx, `INSERT INTO users (id, email, password_hash) VALUES ($1, 'platform@scope.test', 'x')`, uuid.NewString()); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.Exec(ctx, `INSERT INTO audit_log (id, actor, action) VALUES ($1, 'system', 'test.platform')`, uuid.NewString()); err != nil {
		t.Fatal(err)
	}
	return db
}

// seedTenant creates a tenant with one row in every tenant-owned table,
// as the owner.
func seedTenant(t *testing.T, owner *pgx.Conn, name string) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{tenant: uuid.NewString()}
	if _, err := owner.Exec(ctx, `INSERT INTO tenants (id, name) VALUES ($1, $2)`, f.tenant, "Tenant "+name+" "+f.tenant); err != nil {
		t.Fatalf("seed tenant %s: %v", name, err)
	}
	for _, table := range seedOrder {
		sql, args := tenantInserts[table](f)
		if _, err := owner.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("seed %s of tenant %s: %v", table, name, err)
		}
		switch table {
		case "users":
			f.user = args[0].(string)
		case "roles":
			f.role = args[0].(string)
			f.linkRole = f.role
		case "sessions":
			f.session = args[0].(string)
		case "merchants":
			f.merchant = args[0].(string)
		case "payments":
			f.payment = args[0].(string)
		case "ledger_accounts":
			f.account, f.accountCurrency = args[0].(string), args[2].(string)
		case "ledger_entries":
			f.entry = args[0].(string)
		case "models":
			f.model = args[0].(string)
		case "model_versions":
			f.version = args[0].(string)
		case "deployments":
			f.deployment = args[0].(string)
		}
	}
	f.linkRole = viewerRole // the seeded link is (user, custom role); the next one is new
	return f
}

// ownerCount counts the rows of table with tenant_id = tenant, as the owner.
func (db *scopeDB) ownerCount(t *testing.T, table, tenant string) int {
	t.Helper()
	var n int
	if err := db.owner.QueryRow(context.Background(), `SELECT count(*) FROM `+table+` WHERE tenant_id = $1`, tenant).Scan(&n); err != nil {
		t.Fatalf("count %s as owner: %v", table, err)
	}
	return n
}

// snapshot is every row of the database as text, table by table, read as
// the owner: what an attack must leave unchanged.
func (db *scopeDB) snapshot(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, table := range append(slices.Clone(seedOrder), "tenants", "plans") {
		rows, err := db.owner.Query(context.Background(), `SELECT x::text FROM `+table+` x ORDER BY 1`)
		if err != nil {
			t.Fatal(err)
		}
		out[table], err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// appPool opens a pool on url whose connections take the application
// role, as Atrium's own pool does.
func appPool(t *testing.T, url string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	pool, err := postgres.Open(context.Background(), postgres.Options{URL: url, MaxConns: maxConns, RetryFor: time.Second,
		Log: zerolog.Nop(), Role: postgres.AppRole})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// tenantTables lists the tables of schema public with a tenant_id column,
// from the system catalogue (information_schema would hide the columns
// of a table the application role has no privilege on: exactly the new
// table this must not miss).
func tenantTables(t *testing.T, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) []string {
	t.Helper()
	rows, err := q.Query(context.Background(), `SELECT c.relname::text FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
		WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// unscopedWritable are the tables the application role writes without
// row-level security, and why that is safe.
var unscopedWritable = map[string]string{
	"signing_keys":          "the platform's token signing keys: no tenant's data",
	"revocations":           "ids of revoked tokens and sessions, written from any scope: no tenant's data",
	"usage_flushes":         "ids of usage batches already applied: no tenant's data",
	"rate_limit_rules":      "the platform's rate-limit rules: no tenant's data",
	"payment_channel_modes": "operators' breaker settings of the bank channels every tenant shares: no tenant's data",
	"gpu_nodes":             "the platform's GPU nodes: no tenant's data",
	"gpu_devices":           "the platform's GPUs and how much of each is held (no replica's tenant): no tenant's data",
	"gpu_health_events":     "XID and ECC events of the platform's GPUs: no tenant's data",
	"gpu_scheduler":         "the scheduler leader's fencing token: no tenant's data",
}

// TestRowSecurityCatalogue checks the schema, as the application role:
// every tenant-owned table is under forced row-level security with a
// policy, and the role owns nothing and bypasses nothing.
func TestRowSecurityCatalogue(t *testing.T) {
	db := newScopeDB(t)
	pool := testenv.AppPool(t, db.url)
	ctx := context.Background()

	tables := tenantTables(t, pool)
	for _, want := range seedOrder {
		if !slices.Contains(tables, want) {
			t.Errorf("the catalogue query does not find %s: is it still looking at the right schema?", want)
		}
	}
	for _, table := range append(tables, "tenants") {
		var rls, force bool
		var policies int
		err := pool.QueryRow(ctx, `SELECT c.relrowsecurity, c.relforcerowsecurity,
				(SELECT count(*) FROM pg_policies p WHERE p.schemaname = 'public' AND p.tablename = c.relname)
			FROM pg_class c WHERE c.oid = ('public.' || $1)::regclass`, table).Scan(&rls, &force, &policies)
		if err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		if !rls || !force || policies == 0 {
			t.Errorf("table %s: row security enabled %v, forced %v, %d policies; every tenant-owned table needs "+
				"ENABLE and FORCE ROW LEVEL SECURITY and a tenant_isolation policy", table, rls, force, policies)
		}
		if _, ok := tenantInserts[table]; !ok && table != "tenants" {
			t.Errorf("table %s has a tenant_id column, but scope_test.go cannot seed or attack it: add it to tenantInserts and seedOrder", table)
		}
	}

	// Tables the role may write without forced row-level security: only
	// platform state that no tenant owns. A new table lands here only on
	// purpose.
	rows, err := pool.Query(ctx, `SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
			AND has_table_privilege(current_user, c.oid, 'INSERT, UPDATE, DELETE')
			AND NOT (c.relrowsecurity AND c.relforcerowsecurity) ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	unscoped, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for _, table := range unscoped {
		if _, ok := unscopedWritable[table]; !ok {
			t.Errorf("%s may write table %s, which is not under forced row-level security: add a policy, "+
				"or list it in unscopedWritable with the reason no tenant's data is in it", postgres.AppRole, table)
		}
	}

	var who, session string
	var super, bypass, sessionSuper bool
	if err := pool.QueryRow(ctx, `SELECT current_user::text, session_user::text, r.rolsuper, r.rolbypassrls,
			(SELECT rolsuper FROM pg_roles WHERE rolname = session_user)
		FROM pg_roles r WHERE r.rolname = current_user`).Scan(&who, &session, &super, &bypass, &sessionSuper); err != nil {
		t.Fatal(err)
	}
	if who != postgres.AppRole || super || bypass {
		t.Errorf("queries run as %s (superuser %v, bypassrls %v), want %s, neither", who, super, bypass, postgres.AppRole)
	}
	if !sessionSuper {
		t.Logf("the test database URL names %s, not a superuser: the superuser case is not exercised", session)
	}

	// What the role owns, or inherits through membership: nothing.
	for what, sql := range map[string]string{
		"relations":   `SELECT string_agg(relname, ', ') FROM pg_class WHERE relowner = $1::regrole`,
		"functions":   `SELECT string_agg(proname, ', ') FROM pg_proc WHERE proowner = $1::regrole`,
		"schemas":     `SELECT string_agg(nspname, ', ') FROM pg_namespace WHERE nspowner = $1::regrole`,
		"types":       `SELECT string_agg(typname, ', ') FROM pg_type WHERE typowner = $1::regrole`,
		"databases":   `SELECT string_agg(datname, ', ') FROM pg_database WHERE datdba = $1::regrole`,
		"memberships": `SELECT string_agg(roleid::regrole::text, ', ') FROM pg_auth_members WHERE member = $1::regrole`,
	} {
		var owned *string
		if err := pool.QueryRow(ctx, sql, postgres.AppRole).Scan(&owned); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if owned != nil {
			t.Errorf("%s owns or belongs to %s: %s", postgres.AppRole, what, *owned)
		}
	}
}

// TestRowSecurityWithoutScope: with no tenant set, the application role
// sees no tenant's row and writes none, whether it queries the pool
// directly or through Tx.Do with a bare context.
func TestRowSecurityWithoutScope(t *testing.T) {
	db := newScopeDB(t)
	pool := testenv.AppPool(t, db.url)
	txr := postgres.NewTx(pool, zerolog.Nop())
	ctx := context.Background()
	before := db.snapshot(t)

	for _, table := range append(tenantTables(t, pool), "tenants") {
		if table != "tenants" && db.ownerCount(t, table, db.a.tenant) == 0 {
			t.Fatalf("nothing seeded in %s", table)
		}
		// Built-in roles (tenant_id NULL) are every tenant's to read; no
		// other row may show, a platform row (tenant_id NULL) included.
		sql := `SELECT count(*) FROM ` + table
		if table == "roles" {
			sql += ` WHERE tenant_id IS NOT NULL`
		}
		var raw, inTx int
		if err := pool.QueryRow(ctx, sql).Scan(&raw); err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		if err := txr.QueryRow(ctx, "scope.none", sql, nil, &inTx); err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		if raw != 0 || inTx != 0 {
			t.Errorf("%s: with no scope the application role sees %d rows (pool) and %d (Tx.Do), want 0", table, raw, inTx)
		}
		if table == "tenants" {
			continue
		}
		sql, args := tenantInserts[table](db.a)
		_, err := try(ctx, txr, sql, args...)
		wantRLSViolation(t, "INSERT into "+table+" with no scope", err)
	}
	for _, sql := range []string{
		`UPDATE users SET display_name = 'x'`,
		`DELETE FROM quota_usage`,
		`DELETE FROM roles`,
		`UPDATE roles SET permissions = '{}'`,
		`UPDATE plans SET quotas = '{}'`,
		`UPDATE tenants SET name = 'x'`,
	} {
		if n, err := try(ctx, txr, sql); err == nil && n != 0 {
			t.Errorf("%s with no scope: %d rows affected, want 0", sql, n)
		} else if err != nil && !isDenied(err) {
			t.Errorf("%s with no scope: %v; want no row affected, or a refusal", sql, err)
		}
	}
	if after := db.snapshot(t); !equalSnapshots(t, before, after) {
		t.Error("the database changed")
	}
}

// wantRLSViolation fails t unless err is PostgreSQL refusing a row under
// row-level security (or the role lacking the privilege outright).
func wantRLSViolation(t *testing.T, what string, err error) {
	t.Helper()
	var pe *pgconn.PgError
	switch {
	case err == nil:
		t.Errorf("%s succeeded; want a row-level security violation", what)
	case !errors.As(err, &pe) || pe.Code != "42501":
		t.Errorf("%s: %v; want a row-level security violation (SQLSTATE 42501)", what, err)
	}
}

func equalSnapshots(t *testing.T, before, after map[string][]string) bool {
	t.Helper()
	same := true
	for table, rows := range before {
		if !slices.Equal(rows, after[table]) {
			same = false
			t.Errorf("table %s changed:\nbefore %q\nafter  %q", table, rows, after[table])
		}
	}
	return same
}

// TestRowSecurityTenantScope: in tenant A's scope, B's rows are invisible
// and untouchable, no row can be written into B or moved there, and the
// rows every tenant shares (built-in roles, plans, tenants) cannot be
// written at all. The scope comes from WithTenant or from a tenant user's
// principal; both are tried.
func TestRowSecurityTenantScope(t *testing.T) {
	db := newScopeDB(t)
	pool := testenv.AppPool(t, db.url)
	txr := postgres.NewTx(pool, zerolog.Nop())
	before := db.snapshot(t)
	tables := tenantTables(t, pool)

	scopes := map[string]context.Context{
		"WithTenant": postgres.WithTenant(context.Background(), db.a.tenant),
		"principal": principal.With(context.Background(), &principal.Principal{Kind: principal.User, ID: db.a.user,
			TenantID: db.a.tenant, Permissions: []string{"users:manage"}}),
	}
	for name, ctx := range scopes {
		t.Run(name, func(t *testing.T) {
			if got, ok := postgres.TenantOf(ctx); !ok || got != db.a.tenant {
				t.Fatalf("TenantOf = %q, %v; want A", got, ok)
			}
			for _, table := range tables {
				// Any row but A's shows only as a built-in role.
				var own, others int
				err := txr.QueryRow(ctx, "scope.read", `SELECT count(*) FILTER (WHERE tenant_id = $1),
						count(*) FILTER (WHERE tenant_id IS DISTINCT FROM $1 AND NOT ($2 AND tenant_id IS NULL))
					FROM `+table, []any{db.a.tenant, table == "roles"}, &own, &others)
				if err != nil {
					t.Fatalf("%s: %v", table, err)
				}
				if own == 0 {
					t.Errorf("%s: A's scope does not see A's own rows", table)
				}
				if others != 0 {
					t.Errorf("%s: A's scope sees %d rows of other tenants", table, others)
				}

				// B's rows: updates and deletes reach none (or are refused).
				for _, sql := range []string{
					`UPDATE ` + table + ` SET tenant_id = tenant_id WHERE tenant_id = $1`,
					`DELETE FROM ` + table + ` WHERE tenant_id = $1`,
				} {
					if n, err := try(ctx, txr, sql, db.b.tenant); err == nil && n != 0 {
						t.Errorf("%s: %s with B's tenant: %d rows affected, want 0", table, sql, n)
					} else if err != nil && !isDenied(err) {
						t.Errorf("%s: %s: %v", table, sql, err)
					}
				}
				// A statement with no condition reaches A's rows only. (A's
				// models and versions are still used by A's deployment: the
				// foreign key refuses deleting them, which is no leak.)
				if n, err := try(ctx, txr, `DELETE FROM `+table); err == nil && n != int64(own) {
					t.Errorf("%s: an unqualified DELETE reached %d rows; A has %d", table, n, own)
				} else if err != nil && !isDenied(err) && !postgres.IsForeignKey(err) {
					t.Errorf("%s: unqualified DELETE: %v", table, err)
				}

				// No row goes into B: neither a new one nor one of A's moved.
				sql, args := tenantInserts[table](db.b)
				_, err = try(ctx, txr, sql, args...)
				wantRLSViolation(t, "INSERT into "+table+" with B's tenant_id", err)
				_, err = try(ctx, txr, `UPDATE `+table+` SET tenant_id = $1 WHERE tenant_id = $2`, db.b.tenant, db.a.tenant)
				wantRLSViolation(t, "moving A's "+table+" rows to B", err)
			}

			// The tenants table: A reads its own row only and writes none.
			var ids []string
			if err := txr.Do(ctx, "scope.tenants", func(tx pgx.Tx) error {
				rows, err := tx.Query(ctx, `SELECT id::text FROM tenants`)
				if err != nil {
					return err
				}
				ids, err = pgx.CollectRows(rows, pgx.RowTo[string])
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ids, []string{db.a.tenant}) {
				t.Errorf("A's scope sees tenants %v, want only A", ids)
			}
			_, err := try(ctx, txr, `INSERT INTO tenants (id, name) VALUES ($1, 'mole')`, uuid.NewString())
			wantRLSViolation(t, "INSERT into tenants", err)

			// Rows every tenant shares, or that only the cross-tenant path
			// writes: refused, or reaching no row.
			a, b := db.a.tenant, db.b.tenant
			for _, c := range []struct {
				sql  string
				args []any
			}{
				{`UPDATE tenants SET name = 'renamed' WHERE id = $1`, []any{a}},
				{`UPDATE tenants SET plan = 'enterprise'`, nil},
				{`UPDATE tenants SET status = 'suspended' WHERE id = $1`, []any{b}},
				{`DELETE FROM tenants WHERE id = $1`, []any{a}},
				{`DELETE FROM tenants WHERE id = $1`, []any{b}},
				{`DELETE FROM roles WHERE tenant_id IS NULL`, nil},
				{`UPDATE roles SET permissions = permissions || '{tenants:manage}' WHERE tenant_id IS NULL`, nil},
				{`UPDATE roles SET tenant_id = $1 WHERE tenant_id IS NULL`, []any{a}},
				{`UPDATE plans SET quotas = quotas || '{"max_users": 1000000}'`, nil},
				{`INSERT INTO plans (id, name, quotas) VALUES ('mole', 'Mole', '{}')`, nil},
				{`DELETE FROM plans`, nil},
			} {
				if n, err := try(ctx, txr, c.sql, c.args...); err == nil && n != 0 {
					t.Errorf("in a tenant's scope, %s affected %d rows; want none (only the cross-tenant path writes these)", c.sql, n)
				} else if err != nil && !isDenied(err) {
					t.Errorf("in a tenant's scope, %s: %v; want no row affected, or a refusal", c.sql, err)
				}
			}
		})
	}
	if after := db.snapshot(t); !equalSnapshots(t, before, after) {
		t.Error("A's attempts changed the database")
	}
}

// isDenied reports whether err is PostgreSQL refusing for lack of a
// privilege or under row-level security.
func isDenied(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "42501"
}

// errRollback ends a transaction that try keeps from committing.
var errRollback = errors.New("roll back")

// try runs one statement in ctx's scope and rolls it back, returning the
// rows it affected or PostgreSQL's error: attacks leave no trace, whether
// they work or not.
func try(ctx context.Context, txr *postgres.Tx, sql string, args ...any) (int64, error) {
	var n int64
	err := txr.Do(ctx, "scope.try", func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, sql, args...)
		if err != nil {
			return err
		}
		n = tag.RowsAffected()
		return errRollback
	})
	if errors.Is(err, errRollback) {
		err = nil
	}
	return n, err
}

// TestRowSecurityScopeEndsWithTransaction: the scope is transaction-local,
// so on a pooled connection (one, so that it is the same) nothing of it
// survives a committed, failed or rolled-back transaction.
func TestRowSecurityScopeEndsWithTransaction(t *testing.T) {
	db := newScopeDB(t)
	pool := appPool(t, db.url, 1)
	txr := postgres.NewTx(pool, zerolog.Nop())
	ctx := context.Background()

	var pid int
	if err := pool.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	errBoom := errors.New("boom")
	divide := func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `SELECT 1/0`)
		return err
	}
	cases := []struct {
		name    string
		ctx     context.Context
		fn      func(tx pgx.Tx) error
		wantErr bool
	}{
		{"tenant commits", postgres.WithTenant(ctx, db.a.tenant), func(pgx.Tx) error { return nil }, false},
		{"tenant fn fails", postgres.WithTenant(ctx, db.a.tenant), func(pgx.Tx) error { return errBoom }, true},
		{"tenant statement fails", postgres.WithTenant(ctx, db.a.tenant), divide, true},
		{"all tenants commits", postgres.AllTenants(ctx, "scope test"), func(pgx.Tx) error { return nil }, false},
		{"all tenants fn fails", postgres.AllTenants(ctx, "scope test"), func(pgx.Tx) error { return errBoom }, true},
		{"all tenants statement fails", postgres.AllTenants(ctx, "scope test"), divide, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var users, txPid int
			err := txr.Do(tc.ctx, "scope.tx", func(tx pgx.Tx) error {
				if err := tx.QueryRow(ctx, `SELECT count(*), pg_backend_pid() FROM users`).Scan(&users, &txPid); err != nil {
					return err
				}
				return tc.fn(tx)
			})
			if (err != nil) != tc.wantErr {
				t.Fatalf("Do = %v, want an error: %v", err, tc.wantErr)
			}
			if users == 0 {
				t.Fatal("inside the transaction the scope shows no users")
			}
			if txPid != pid {
				t.Fatalf("the transaction ran on backend %d, not the pool's one connection %d", txPid, pid)
			}

			var tenant, all string
			var after, afterPid int
			if err := pool.QueryRow(ctx, `SELECT coalesce(current_setting('atrium.tenant_id', true), ''),
					coalesce(current_setting('atrium.all_tenants', true), ''), (SELECT count(*) FROM users), pg_backend_pid()`).
				Scan(&tenant, &all, &after, &afterPid); err != nil {
				t.Fatal(err)
			}
			if afterPid != pid {
				t.Fatalf("the check ran on backend %d, not %d", afterPid, pid)
			}
			if tenant != "" || all != "" || after != 0 {
				t.Errorf("after the transaction the connection has atrium.tenant_id=%q atrium.all_tenants=%q and sees %d users; want nothing",
					tenant, all, after)
			}
		})
	}
}

// TestRowSecuritySuperuserURL: the application's pool connects with a
// superuser's URL (as a development setup may) and takes the application
// role; the policies still bind its queries, and turning row security off
// makes queries fail rather than bypass the policies.
func TestRowSecuritySuperuserURL(t *testing.T) {
	db := newScopeDB(t)
	var super bool
	if err := db.owner.QueryRow(context.Background(), `SELECT rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&super); err != nil {
		t.Fatal(err)
	}
	if !super {
		t.Skip("the test database URL does not name a superuser")
	}
	pool := appPool(t, db.url, 1)
	txr := postgres.NewTx(pool, zerolog.Nop())
	ctx := context.Background()

	check := func(when string) {
		t.Helper()
		var who, session string
		var users int
		if err := pool.QueryRow(ctx, `SELECT current_user::text, session_user::text, (SELECT count(*) FROM users)`).Scan(&who, &session, &users); err != nil {
			t.Fatal(err)
		}
		if who != postgres.AppRole || users != 0 {
			t.Errorf("%s: connected as %s, queries run as %s and see %d users; want %s and 0", when, session, who, users, postgres.AppRole)
		}
	}
	check("fresh connection")

	var seen []string
	if err := txr.Do(postgres.WithTenant(ctx, db.b.tenant), "scope.b", func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT DISTINCT tenant_id::text FROM users`)
		if err != nil {
			return err
		}
		seen, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(seen, []string{db.b.tenant}) {
		t.Errorf("B's scope sees the users of tenants %v, want only B", seen)
	}
	check("after a scoped transaction")

	// row_security = off does not turn the policies off for a role they
	// bind: the query is refused instead.
	if _, err := pool.Exec(ctx, `SET row_security = off`); err != nil {
		t.Fatal(err)
	}
	var n int
	err := pool.QueryRow(ctx, `SELECT count(*) FROM users`).Scan(&n)
	if _, rerr := pool.Exec(ctx, `RESET row_security`); rerr != nil {
		t.Fatal(rerr)
	}
	if !isDenied(err) {
		t.Errorf("with row_security off: %d rows, error %v; want a refusal", n, err)
	}
	check("after row_security off and reset")
}

// crossTenantCount reads atrium_db_cross_tenant_transactions_total{reason}.
func crossTenantCount(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "atrium_db_cross_tenant_transactions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "reason" && lp.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestRowSecurityCrossTenantPath: AllTenants (and a platform
// administrator's principal) sees every tenant's rows, and each such
// transaction is counted by reason; tenant-scoped ones are not.
func TestRowSecurityCrossTenantPath(t *testing.T) {
	db := newScopeDB(t)
	pool := testenv.AppPool(t, db.url)
	txr := postgres.NewTx(pool, zerolog.Nop())
	reg := prometheus.NewRegistry()
	reg.MustRegister(txr.Collectors()...)
	tables := tenantTables(t, pool)

	seesBoth := func(ctx context.Context, who string) {
		t.Helper()
		for _, table := range append(tables, "tenants") {
			col := "tenant_id"
			if table == "tenants" {
				col = "id"
			}
			var a, b int
			if err := txr.QueryRow(ctx, "scope.all", fmt.Sprintf(`SELECT count(*) FILTER (WHERE %[1]s = $1), count(*) FILTER (WHERE %[1]s = $2) FROM %[2]s`, col, table),
				[]any{db.a.tenant, db.b.tenant}, &a, &b); err != nil {
				t.Fatalf("%s: %v", table, err)
			}
			if a == 0 || b == 0 {
				t.Errorf("%s: %s sees %d of A's rows and %d of B's; want both tenants'", who, table, a, b)
			}
		}
	}

	ctx := postgres.AllTenants(context.Background(), "scope test")
	if _, ok := postgres.TenantOf(ctx); ok {
		t.Error("TenantOf reports one tenant on the cross-tenant path")
	}
	seesBoth(ctx, "AllTenants")
	if got, want := crossTenantCount(t, reg, "scope test"), float64(len(tables)+1); got != want {
		t.Errorf("atrium_db_cross_tenant_transactions_total{reason=\"scope test\"} = %v, want %v", got, want)
	}

	admin := principal.With(context.Background(), &principal.Principal{Kind: principal.User, ID: uuid.NewString(),
		Permissions: []string{"tenants:manage"}})
	seesBoth(admin, "a platform administrator")
	if got, want := crossTenantCount(t, reg, "platform"), float64(len(tables)+1); got != want {
		t.Errorf("atrium_db_cross_tenant_transactions_total{reason=\"platform\"} = %v, want %v", got, want)
	}

	// A tenant's transactions are not on the cross-tenant path.
	if err := txr.Exec(postgres.WithTenant(context.Background(), db.a.tenant), "scope.a", `SELECT 1`); err != nil {
		t.Fatal(err)
	}
	if got := crossTenantCount(t, reg, "scope test") + crossTenantCount(t, reg, "platform"); got != float64(2*(len(tables)+1)) {
		t.Errorf("a tenant-scoped transaction was counted as cross-tenant (total %v)", got)
	}

	// A scope that is not a UUID is refused before it reaches SQL.
	err := txr.Exec(postgres.WithTenant(context.Background(), "' OR true --"), "scope.bad", `SELECT 1`)
	if err == nil {
		t.Error("a tenant scope that is not a UUID was accepted")
	}
}

// TestRowSecurityUpgradeAsNonSuperuserOwner upgrades, as the tables' owner
// who is not a superuser (a managed database's usual arrangement: CREATEROLE,
// no BYPASSRLS), a database whose tenants already had users and terminals
// when the quota migration came. Forced row-level security binds such an
// owner too, so the quota migration's backfill must take the cross-tenant
// path to count them.
func TestRowSecurityUpgradeAsNonSuperuserOwner(t *testing.T) {
	testenv.Integration(t)
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, testenv.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	name := "atrium_owner_" + strings.ReplaceAll(uuid.NewString(), "-", "")[:12]
	for _, sql := range []string{
		`CREATE ROLE ` + name + ` LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS`,
		`CREATE DATABASE ` + name + ` OWNER ` + name,
	} {
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ctx := context.Background()
		c, err := pgx.Connect(ctx, testenv.AdminURL())
		if err != nil {
			return
		}
		defer c.Close(ctx)
		_, _ = c.Exec(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`)
		_, _ = c.Exec(ctx, `DROP ROLE IF EXISTS `+name)
	})
	u, err := neturl.Parse(testenv.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	u.User, u.Path = neturl.User(name), "/"+name
	pool := open(t, u.String(), 2)

	// The schema before quotas, as the owner, with a tenant that has
	// two users and a terminal.
	before := fstest.MapFS{}
	all := atriumsql.Migrations()
	names, err := fs.Glob(all, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if n < "00004" {
			b, err := fs.ReadFile(all, n)
			if err != nil {
				t.Fatal(err)
			}
			before[n] = &fstest.MapFile{Data: b}
		}
	}
	migrate := func(fsys fs.FS) {
		t.Helper()
		m, err := postgres.NewMigrator(pool, fsys)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if _, err := m.Up(ctx); err != nil {
			t.Fatalf("migrate as %s: %v", name, err)
		}
	}
	migrate(before)
	f := &fixture{tenant: uuid.NewString()}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// The owner too writes tenants' rows on the cross-tenant path only.
		if _, err := tx.Exec(ctx, `SELECT set_config('atrium.all_tenants', 'on', true)`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO tenants (id, name) VALUES ($1, 'Before quotas')`, f.tenant); err != nil {
			return err
		}
		for _, table := range []string{"users", "users", "terminals"} {
			sql, args := tenantInserts[table](f)
			if _, err := tx.Exec(ctx, sql, args...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	migrate(all)
	// The backfill's cross-tenant setting ended with its migration: no
	// connection of the pool still has it.
	var conns []*pgxpool.Conn
	for range 2 {
		c, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		var all string
		var users int
		if err := c.QueryRow(ctx, `SELECT coalesce(current_setting('atrium.all_tenants', true), ''), (SELECT count(*) FROM users)`).
			Scan(&all, &users); err != nil {
			t.Fatal(err)
		}
		if all != "" || users != 0 {
			t.Errorf("after the migrations a connection has atrium.all_tenants=%q and sees %d users", all, users)
		}
	}
	for _, c := range conns {
		c.Release()
	}
	got := map[string]int64{}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT set_config('atrium.all_tenants', 'on', true)`); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT quota, used FROM quota_usage WHERE tenant_id = $1`, f.tenant)
		if err != nil {
			return err
		}
		for rows.Next() {
			var q string
			var n int64
			if err := rows.Scan(&q, &n); err != nil {
				return err
			}
			got[q] = n
		}
		return rows.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	if got["max_users"] != 2 || got["max_terminals"] != 1 {
		t.Errorf("after the upgrade the tenant's usage is %v; want max_users 2 and max_terminals 1, the rows it already had", got)
	}
}
