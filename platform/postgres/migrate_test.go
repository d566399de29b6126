package postgres_test

import (
	"context"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/testenv"
	atriumsql "github.com/atriumhq/atrium/sql"
)

// migrationVersions returns the versions of the embedded migration files,
// ascending, read from their NNNNN_ prefixes.
func migrationVersions(t testing.TB) []int64 {
	t.Helper()
	names, err := fs.Glob(atriumsql.Migrations(), "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	var out []int64
	for _, n := range names {
		prefix, _, _ := strings.Cut(n, "_")
		v, err := strconv.ParseInt(prefix, 10, 64)
		if err != nil {
			t.Fatalf("migration %s: version: %v", n, err)
		}
		out = append(out, v)
	}
	slices.Sort(out)
	if len(out) == 0 {
		t.Fatal("no embedded migrations")
	}
	return out
}

// newMigrator returns a migrator over pool, closed when the test ends.
func newMigrator(t testing.TB, pool *pgxpool.Pool) *postgres.Migrator {
	t.Helper()
	m, err := postgres.NewMigrator(pool, atriumsql.Migrations())
	if err != nil {
		t.Fatalf("NewMigrator: %v", err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// checkSchema asserts the migrator's view of the database: whether
// migrations are pending, the current version, every migration's state, and
// whether the audit_log table (created by the first migration) exists.
func checkSchema(t testing.TB, m *postgres.Migrator, pool *pgxpool.Pool, applied bool) {
	t.Helper()
	ctx := context.Background()
	all := migrationVersions(t)

	pending, err := m.Pending(ctx)
	if err != nil {
		t.Fatalf("Pending: %v", err)
	}
	if pending == applied {
		t.Errorf("Pending = %v, want %v", pending, !applied)
	}

	current, target, err := m.Versions(ctx)
	if err != nil {
		t.Fatalf("Versions: %v", err)
	}
	wantCurrent := int64(0)
	if applied {
		wantCurrent = all[len(all)-1]
	}
	if current != wantCurrent || target != all[len(all)-1] {
		t.Errorf("Versions = (%d, %d), want (%d, %d)", current, target, wantCurrent, all[len(all)-1])
	}

	st, err := m.Status(ctx)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	var versions []int64
	for _, s := range st {
		versions = append(versions, s.Version)
		if s.Applied != applied {
			t.Errorf("Status: migration %d (%s) applied = %v, want %v", s.Version, s.Name, s.Applied, applied)
		}
		if prefix, _, _ := strings.Cut(path.Base(s.Name), "_"); prefix != fmt.Sprintf("%05d", s.Version) {
			t.Errorf("Status: migration %d is named %q", s.Version, s.Name)
		}
	}
	if !slices.Equal(versions, all) {
		t.Errorf("Status lists versions %v, want %v", versions, all)
	}

	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass('audit_log') IS NOT NULL").Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists != applied {
		t.Errorf("audit_log exists = %v, want %v", exists, applied)
	}
}

func TestMigratorUpDownRoundTrip(t *testing.T) {
	pool := open(t, testenv.EmptyDatabase(t), 4)
	m := newMigrator(t, pool)
	ctx := context.Background()
	all := migrationVersions(t)
	reversed := slices.Clone(all)
	slices.Reverse(reversed)

	checkSchema(t, m, pool, false)

	got, err := m.Up(ctx)
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	if !slices.Equal(got, all) {
		t.Errorf("Up applied %v, want %v", got, all)
	}
	checkSchema(t, m, pool, true)

	got, err = m.Up(ctx)
	if err != nil || len(got) != 0 {
		t.Errorf("second Up = %v, %v; want nothing applied", got, err)
	}

	got, err = m.DownTo(ctx, 0)
	if err != nil {
		t.Fatalf("DownTo(0): %v", err)
	}
	if !slices.Equal(got, reversed) {
		t.Errorf("DownTo(0) rolled back %v, want %v", got, reversed)
	}
	checkSchema(t, m, pool, false)

	got, err = m.Up(ctx)
	if err != nil {
		t.Fatalf("Up after DownTo(0): %v", err)
	}
	if !slices.Equal(got, all) {
		t.Errorf("Up after DownTo(0) applied %v, want %v", got, all)
	}
	checkSchema(t, m, pool, true)
}

// TestMigratorConcurrentUp starts four "instances" at once on one empty
// database: the advisory lock must let each migration be applied exactly
// once and every instance succeed.
func TestMigratorConcurrentUp(t *testing.T) {
	url := testenv.EmptyDatabase(t)
	const instances = 4
	migrators := make([]*postgres.Migrator, instances)
	for i := range migrators {
		migrators[i] = newMigrator(t, open(t, url, 2))
		// Each instance first looks at the schema. This also creates
		// goose's version table, whose creation goose otherwise retries
		// at 1s intervals, which would spread the Ups out in time.
		if pending, err := migrators[i].Pending(context.Background()); err != nil || !pending {
			t.Fatalf("instance %d: Pending = %v, %v; want true", i, pending, err)
		}
	}

	var wg sync.WaitGroup
	applied := make([][]int64, instances)
	errs := make([]error, instances)
	start := make(chan struct{})
	for i, m := range migrators {
		wg.Go(func() {
			<-start
			applied[i], errs[i] = m.Up(context.Background())
		})
	}
	close(start)
	wg.Wait()

	var all []int64
	for i := range instances {
		if errs[i] != nil {
			t.Errorf("instance %d: Up: %v", i, errs[i])
		}
		all = append(all, applied[i]...)
	}
	slices.Sort(all)
	if want := migrationVersions(t); !slices.Equal(all, want) {
		t.Errorf("migrations applied across instances: %v, want each of %v exactly once", all, want)
	}
	checkSchema(t, migrators[0], open(t, url, 1), true)
}
