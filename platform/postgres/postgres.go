// Package postgres connects to PostgreSQL, the system of record: a pgx pool
// opened with retries, short explicit transactions that raise an alarm when
// they run long, and embedded goose migrations applied under an advisory
// lock.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// AppRole is the role the application's queries run as: created by the
// migrations, owning nothing, subject to row-level security.
const AppRole = "atrium_app"

// Options configure Open.
type Options struct {
	URL      string
	MaxConns int32
	// RetryFor is how long Open keeps retrying an unreachable database.
	RetryFor time.Duration
	Log      zerolog.Logger
	// Role, when set, is the role every connection of the pool assumes
	// (SET ROLE) before its first query: the application's queries run as
	// a role that owns nothing and cannot bypass row-level security, even
	// when URL names a superuser or the tables' owner.
	Role string
}

// Open returns a pool once PostgreSQL answers a ping, retrying with
// exponential backoff (capped at 5 s) for up to o.RetryFor.
func Open(ctx context.Context, o Options) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(o.URL)
	if err != nil {
		return nil, fmt.Errorf("postgres: parse ATRIUM_DATABASE_URL: %w", err)
	}
	if o.MaxConns > 0 {
		cfg.MaxConns = o.MaxConns
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "atrium"
	if o.Role != "" {
		setRole := "SET ROLE " + pgx.Identifier{o.Role}.Sanitize()
		cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
			if _, err := c.Exec(ctx, setRole); err != nil {
				return fmt.Errorf("postgres: %s (the role comes with the migrations; run `atrium migrate up`): %w", setRole, err)
			}
			return nil
		}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	deadline := time.Now().Add(o.RetryFor)
	backoff := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = pool.Ping(pctx)
		cancel()
		if err == nil {
			return pool, nil
		}
		if ctx.Err() != nil || time.Now().Add(backoff).After(deadline) {
			pool.Close()
			return nil, fmt.Errorf("postgres: unreachable at %s after %d attempts over %s: %w",
				cfg.ConnConfig.Host, attempt, o.RetryFor, err)
		}
		o.Log.Warn().Err(err).Int("attempt", attempt).Dur("retry_in", backoff).Msg("database unreachable, retrying")
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// TxAlarmThresholds are the durations at which a still-open transaction is
// reported: no external call may run inside a transaction, so a long one is
// a defect to find.
var TxAlarmThresholds = []time.Duration{100 * time.Millisecond, 500 * time.Millisecond, time.Second}

// Tx runs short, named transactions and raises the long-transaction alarm.
type Tx struct {
	pool   *pgxpool.Pool
	log    zerolog.Logger
	alarms *prometheus.CounterVec
	dur    *prometheus.HistogramVec

	crossTenant *prometheus.CounterVec
}

// NewTx returns a transaction runner over pool. Register its Collectors
// with the instance's metrics registry.
func NewTx(pool *pgxpool.Pool, log zerolog.Logger) *Tx {
	return &Tx{
		pool: pool,
		log:  log,
		alarms: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atrium_db_long_transactions_total",
			Help: "Transactions still open past an alarm threshold (100ms, 500ms, 1s), by transaction name.",
		}, []string{"tx", "threshold"}),
		dur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "atrium_db_transaction_duration_seconds",
			Help:    "Duration of named transactions.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"tx"}),
		crossTenant: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atrium_db_cross_tenant_transactions_total",
			Help: "Transactions that ran on the cross-tenant path (every tenant's rows visible), by reason.",
		}, []string{"reason"}),
	}
}

// Collectors returns the runner's metrics.
func (t *Tx) Collectors() []prometheus.Collector {
	return []prometheus.Collector{t.alarms, t.dur, t.crossTenant}
}

// Pool returns the underlying pool.
func (t *Tx) Pool() *pgxpool.Pool { return t.pool }

// Do runs fn in a transaction named name, committing when fn returns nil
// and rolling back otherwise. The transaction sees the rows of ctx's scope
// (see WithTenant and AllTenants). While the transaction is open past each of
// TxAlarmThresholds, a warning is logged (with the request id from ctx) and
// atrium_db_long_transactions_total is incremented.
func (t *Tx) Do(ctx context.Context, name string, fn func(pgx.Tx) error) (err error) {
	start := time.Now()
	timers := make([]*time.Timer, 0, len(TxAlarmThresholds))
	for _, th := range TxAlarmThresholds {
		timers = append(timers, time.AfterFunc(th, func() {
			t.alarms.WithLabelValues(name, th.String()).Inc()
			t.log.Warn().Ctx(ctx).Str("tx", name).Dur("open_for_ms", th).Msg("long transaction")
		}))
	}
	defer func() {
		for _, tm := range timers {
			tm.Stop()
		}
		t.dur.WithLabelValues(name).Observe(time.Since(start).Seconds())
	}()
	opts, err := t.scope(ctx, name)
	if err != nil {
		return err
	}
	tx, err := t.pool.BeginTx(ctx, opts)
	if err != nil {
		return fmt.Errorf("%s: begin: %w", name, err)
	}
	// Rollback is a no-op once Commit has succeeded; deferring it
	// unconditionally also ends the transaction (and gives the connection
	// back) when fn panics and the panic is recovered further up.
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err = fn(tx); err != nil {
		return err
	}
	if err = tx.Commit(ctx); err != nil {
		return fmt.Errorf("%s: commit: %w", name, err)
	}
	return nil
}

// ErrNoRows is pgx's "no rows" error, re-exported so callers can test for it
// without importing pgx.
var ErrNoRows = pgx.ErrNoRows

// IsNoRows reports whether err means a query found no row.
func IsNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }

// Collect runs one query in its own transaction in ctx's scope and returns
// its rows, each converted by fn.
func Collect[T any](ctx context.Context, t *Tx, name string, fn pgx.RowToFunc[T], sql string, args ...any) ([]T, error) {
	var out []T
	err := t.Do(ctx, name, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, sql, args...)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, fn)
		return err
	})
	return out, err
}

// QueryRow runs one query in its own transaction in ctx's scope and scans
// its single row into dest; no row is ErrNoRows.
func (t *Tx) QueryRow(ctx context.Context, name, sql string, args []any, dest ...any) error {
	return t.Do(ctx, name, func(tx pgx.Tx) error { return tx.QueryRow(ctx, sql, args...).Scan(dest...) })
}

// Exec runs one statement in its own transaction in ctx's scope.
func (t *Tx) Exec(ctx context.Context, name, sql string, args ...any) error {
	return t.Do(ctx, name, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, sql, args...)
		return err
	})
}

// IsUnique reports whether err is a unique violation, of constraint when
// it is not "".
func IsUnique(err error, constraint string) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505" && (constraint == "" || pe.ConstraintName == constraint)
}

// IsForeignKey reports whether err is a foreign-key violation.
func IsForeignKey(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23503"
}

// IsCheck reports whether err is a check-constraint violation.
func IsCheck(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23514"
}
