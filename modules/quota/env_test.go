package quota

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/testenv"
	atriumsql "github.com/atriumhq/atrium/sql"
)

// quotaEnv is a quota service on a fresh database (as the application
// role), the schema owner's connection to arrange and inspect rows, and the
// offset of the service's clock from the real one.
type quotaEnv struct {
	s      *Service
	owner  *pgx.Conn
	offset *atomic.Int64
}

func newQuotaEnv(t *testing.T) quotaEnv {
	t.Helper()
	url := testenv.Database(t, atriumsql.Migrations())
	owner, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = owner.Close(context.Background()) })
	offset := new(atomic.Int64)
	s, err := New(Deps{Tx: postgres.NewTx(testenv.AppPool(t, url), zerolog.Nop()), Redis: testenv.RedisClient(t, testenv.RedisPrefix(t)),
		Log: zerolog.Nop(), Now: func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }})
	if err != nil {
		t.Fatal(err)
	}
	return quotaEnv{s: s, owner: owner, offset: offset}
}

// tenant creates a tenant (as the owner) and returns its id.
func (e quotaEnv) tenant(t *testing.T) string {
	t.Helper()
	id := uuid.NewString()
	if _, err := e.owner.Exec(context.Background(), `INSERT INTO tenants (id, name) VALUES ($1, $2)`, id, "Tenant "+id); err != nil {
		t.Fatal(err)
	}
	return id
}
