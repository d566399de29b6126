// Package testenv gives integration tests real PostgreSQL and Redis: a
// fresh database per call, cloned from a template that has every migration
// applied (made once per migration set), and a unique Redis key prefix per
// call so tests never see each other's keys.
//
// The servers come from ATRIUM_TEST_DATABASE_URL (a database on the server
// the test may create databases in; default the local postgres database)
// and ATRIUM_TEST_REDIS_URL (default redis://127.0.0.1:6379/0). `make test`
// starts them. With `go test -short` integration tests are skipped;
// otherwise an unreachable server fails the test rather than skipping it, so
// a green run means the integration tests really ran.
package testenv

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/postgres"
)

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// AdminURL is the URL of the database tests connect to in order to create
// their own databases.
func AdminURL() string {
	return env("ATRIUM_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable")
}

// RedisURL is the Redis tests use.
func RedisURL() string { return env("ATRIUM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0") }

// Integration skips t under -short.
func Integration(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs PostgreSQL and Redis (run without -short, e.g. make test)")
	}
}

func randomName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// Database creates a new database with every migration in migrations
// applied, drops it when the test ends, and returns its URL.
func Database(t testing.TB, migrations fs.FS) string {
	t.Helper()
	return newDatabase(t, migrations)
}

// EmptyDatabase creates a database with no migrations applied.
func EmptyDatabase(t testing.TB) string {
	t.Helper()
	return newDatabase(t, nil)
}

func newDatabase(t testing.TB, migrations fs.FS) string {
	t.Helper()
	Integration(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		t.Fatalf("testenv: PostgreSQL at ATRIUM_TEST_DATABASE_URL is unreachable (start it with `make services`): %v", err)
	}
	defer admin.Close(ctx)

	tpl := "template0"
	if migrations != nil {
		if tpl, err = template(ctx, admin, migrations); err != nil {
			t.Fatalf("testenv: template database: %v", err)
		}
	}
	name := randomName("atrium_test_")
	if _, err := admin.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", name, tpl)); err != nil {
		t.Fatalf("testenv: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, AdminURL())
		if err != nil {
			return
		}
		defer c.Close(ctx)
		_, _ = c.Exec(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", name))
	})
	return withDatabase(AdminURL(), name)
}

func withDatabase(raw, name string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	u.Path = "/" + name
	return u.String()
}

// template returns the name of a database with migrations applied, creating
// it once per distinct migration set. Test packages run in parallel
// processes, so creation is serialised by an advisory lock.
func template(ctx context.Context, admin *pgx.Conn, migrations fs.FS) (string, error) {
	h := sha256.New()
	err := fs.WalkDir(migrations, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(migrations, p)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%s\x00", p, b)
		return nil
	})
	if err != nil {
		return "", err
	}
	name := "atrium_tpl_" + hex.EncodeToString(h.Sum(nil))[:16]

	if _, err := admin.Exec(ctx, "SELECT pg_advisory_lock(7411)"); err != nil {
		return "", err
	}
	defer admin.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(7411)") //nolint:errcheck
	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1 AND datistemplate)", name).Scan(&exists); err != nil {
		return "", err
	}
	if exists {
		return name, nil
	}
	_, _ = admin.Exec(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s", name))
	if _, err := admin.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s", name)); err != nil {
		return "", err
	}
	pool, err := pgxpool.New(ctx, withDatabase(AdminURL(), name))
	if err != nil {
		return "", err
	}
	m, err := postgres.NewMigrator(pool, migrations)
	if err == nil {
		_, err = m.Up(ctx)
		m.Close()
	}
	pool.Close()
	if err != nil {
		return "", fmt.Errorf("migrate template: %w", err)
	}
	if _, err := admin.Exec(ctx, fmt.Sprintf("ALTER DATABASE %s WITH IS_TEMPLATE true", name)); err != nil {
		return "", err
	}
	return name, nil
}

// Pool returns a pool on a fresh migrated database, closed when the test
// ends. Its connections run as the application role (postgres.AppRole), as
// Atrium's own do, so row-level security applies.
func Pool(t testing.TB, migrations fs.FS) *pgxpool.Pool {
	t.Helper()
	return AppPool(t, Database(t, migrations))
}

// AppPool returns a pool on the database at url whose connections run as
// the application role, closed when the test ends.
func AppPool(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := postgres.Open(context.Background(), postgres.Options{URL: url, MaxConns: 8, RetryFor: time.Second,
		Log: zerolog.Nop(), Role: postgres.AppRole})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// RedisPrefix checks that Redis answers and returns a key prefix unique to
// this test; keys under it are deleted when the test ends.
func RedisPrefix(t testing.TB) string {
	t.Helper()
	Integration(t)
	opt, err := redis.ParseURL(RedisURL())
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opt)
	if err := c.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("testenv: Redis at ATRIUM_TEST_REDIS_URL is unreachable (start it with `make services`): %v", err)
	}
	prefix := randomName("t")
	t.Cleanup(func() {
		ctx := context.Background()
		iter := c.Scan(ctx, 0, prefix+":*", 500).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
		c.Close()
	})
	return prefix
}
