package postgres

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// migrationLockID is the advisory lock key held while migrating, so that
// several instances starting at once apply each migration exactly once.
const migrationLockID = 0x61747269756d // "atrium" in ASCII

// Migrator applies the embedded migrations.
type Migrator struct {
	db *sql.DB
	p  *goose.Provider
}

// NewMigrator returns a migrator for the migrations in fsys (the .sql files
// at its root) over pool.
func NewMigrator(pool *pgxpool.Pool, fsys fs.FS) (*Migrator, error) {
	db := stdlib.OpenDBFromPool(pool)
	// Retry the lock every second (goose waits 5 s by default), for up to 5 minutes.
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(migrationLockID), lock.WithLockTimeout(1, 300))
	if err != nil {
		return nil, err
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys, goose.WithSessionLocker(locker))
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	return &Migrator{db: db, p: p}, nil
}

// Close releases the migrator's database handle (not the pool).
func (m *Migrator) Close() error { return m.db.Close() }

// Up applies every pending migration and returns the versions applied.
func (m *Migrator) Up(ctx context.Context) ([]int64, error) {
	res, err := m.p.Up(ctx)
	return versions(res), err
}

// DownTo rolls back every migration above version.
func (m *Migrator) DownTo(ctx context.Context, version int64) ([]int64, error) {
	res, err := m.p.DownTo(ctx, version)
	return versions(res), err
}

// Versions returns the database's current version and the newest the binary
// knows.
func (m *Migrator) Versions(ctx context.Context) (current, target int64, err error) {
	return m.p.GetVersions(ctx)
}

// Pending reports whether the schema is behind the binary.
func (m *Migrator) Pending(ctx context.Context) (bool, error) { return m.p.HasPending(ctx) }

// MigrationStatus is one migration and whether it is applied.
type MigrationStatus struct {
	Version int64
	Name    string
	Applied bool
}

// Status lists every migration the binary knows and its state.
func (m *Migrator) Status(ctx context.Context) ([]MigrationStatus, error) {
	st, err := m.p.Status(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]MigrationStatus, 0, len(st))
	for _, s := range st {
		out = append(out, MigrationStatus{Version: s.Source.Version, Name: s.Source.Path, Applied: s.State == goose.StateApplied})
	}
	return out, nil
}

func versions(res []*goose.MigrationResult) []int64 {
	out := make([]int64, 0, len(res))
	for _, r := range res {
		out = append(out, r.Source.Version)
	}
	return out
}
