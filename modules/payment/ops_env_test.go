package payment

import (
	"context"
	"errors"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/keyring"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
	"github.com/atriumhq/atrium/platform/testenv"
	atriumsql "github.com/atriumhq/atrium/sql"
)

// Card keys of the tests (32 bytes each, base64).
const (
	testCardKey1 = "k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	testCardKey2 = "k2:ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="
)

// opsEnv is a payment service on a fresh database, running as the
// application role, and a pool as the schema owner to arrange and inspect
// rows behind its back.
type opsEnv struct {
	url   string
	owner *pgxpool.Pool
	tx    *postgres.Tx
	s     *Service
}

// noTerminals is the Terminals of services that take no payments.
type noTerminals struct{}

func (noTerminals) TerminalProfile(context.Context, string) (Terminal, error) {
	return Terminal{}, errors.New("no terminals in this test")
}

func newOpsEnv(t *testing.T, cardKeys string) *opsEnv {
	t.Helper()
	url := testenv.Database(t, atriumsql.Migrations())
	owner, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(owner.Close)
	e := &opsEnv{url: url, owner: owner, tx: postgres.NewTx(testenv.AppPool(t, url), zerolog.Nop())}
	e.s = e.service(t, cardKeys, noTerminals{}, nil)
	return e
}

// service returns another service on the env's database.
func (e *opsEnv) service(t *testing.T, cardKeys string, terms Terminals, channels []string) *Service {
	t.Helper()
	cards, err := keyring.Parse(cardKeys)
	if err != nil {
		t.Fatal(err)
	}
	// Test-mode payments go to the same banks through test channels.
	var tests []string
	for _, c := range channels {
		tests = append(tests, "test-"+c)
	}
	s, err := New(Config{Channels: channels, TestChannels: tests}, Deps{Tx: e.tx, Cards: cards, Terminals: terms, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// exec runs SQL as the schema owner.
func (e *opsEnv) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := e.owner.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// tenant creates a tenant and returns its id.
func (e *opsEnv) tenant(t *testing.T) string {
	t.Helper()
	id := uuid.NewString()
	e.exec(t, `INSERT INTO tenants (id, name) VALUES ($1, $2)`, id, "Tenant "+id)
	return id
}

// merchant creates a merchant of tenant with ref and fee, and returns its id.
func (e *opsEnv) merchant(t *testing.T, tenant, ref string, feeBPS int) string {
	t.Helper()
	id := uuid.NewString()
	e.exec(t, `INSERT INTO merchants (id, tenant_id, ref, name, mcc, settlement_account, fee_bps)
		VALUES ($1, $2, $3, 'Shop', '5411', 'DE00 0000', $4)`, id, tenant, ref, feeBPS)
	return id
}

// userCtx is the context of a tenant's user (tenant "" for a platform
// administrator).
func userCtx(tenant string, perms ...string) context.Context {
	return principal.With(context.Background(), &principal.Principal{Kind: principal.User, ID: uuid.NewString(),
		TenantID: tenant, Permissions: perms})
}
