package postgres_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/logging"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/testenv"
	atriumsql "github.com/atriumhq/atrium/sql"
)

// open returns a pool on url with at most maxConns connections, closed
// when the test ends.
func open(t testing.TB, url string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	pool, err := postgres.Open(context.Background(), postgres.Options{URL: url, MaxConns: maxConns, RetryFor: time.Second, Log: zerolog.Nop()})
	if err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// auditRows counts the audit_log rows written by actor, seen from outside
// any transaction under test.
func auditRows(t testing.TB, pool *pgxpool.Pool, actor string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM audit_log WHERE actor = $1", actor).Scan(&n); err != nil {
		t.Fatalf("count audit rows: %v", err)
	}
	return n
}

func insertAudit(ctx context.Context, tx pgx.Tx, actor string) error {
	_, err := tx.Exec(ctx, "INSERT INTO audit_log (id, actor, action) VALUES (gen_random_uuid(), $1, 'test.do')", actor)
	return err
}

func TestTxDoCommitsOnNilAndRollsBackOnError(t *testing.T) {
	pool := ownerPool(t)
	txr := postgres.NewTx(pool, zerolog.Nop())
	errBoom := errors.New("boom")

	cases := []struct {
		name     string
		fnErr    error
		wantRows int
	}{
		{name: "nil commits", fnErr: nil, wantRows: 1},
		{name: "error rolls back", fnErr: errBoom, wantRows: 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			actor := "test:" + strings.ReplaceAll(tc.name, " ", "-")
			err := txr.Do(ctx, "audit.insert", func(tx pgx.Tx) error {
				if err := insertAudit(ctx, tx, actor); err != nil {
					return err
				}
				// The row is visible inside the transaction and not yet
				// outside it.
				var inside int
				if err := tx.QueryRow(ctx, "SELECT count(*) FROM audit_log WHERE actor = $1", actor).Scan(&inside); err != nil {
					return err
				}
				if inside != 1 {
					t.Errorf("inside the transaction: %d rows, want 1", inside)
				}
				if n := auditRows(t, pool, actor); n != 0 {
					t.Errorf("before commit another connection sees %d rows, want 0", n)
				}
				return tc.fnErr
			})
			if !errors.Is(err, tc.fnErr) {
				t.Fatalf("Do returned %v, want %v", err, tc.fnErr)
			}
			if n := auditRows(t, pool, actor); n != tc.wantRows {
				t.Errorf("after Do: %d rows, want %d", n, tc.wantRows)
			}
		})
	}
}

// TestTxDoRollsBackWhenFnPanics checks that a panic inside a transaction
// (recovered further up, as the HTTP middleware does) neither commits nor
// leaves the connection checked out in an open transaction.
func TestTxDoRollsBackWhenFnPanics(t *testing.T) {
	ctx := context.Background()
	pool, err := postgres.Open(ctx, postgres.Options{URL: testenv.Database(t, atriumsql.Migrations()), MaxConns: 1, RetryFor: time.Second, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Close waits for every connection to be given back: skip it if
		// one leaked (dropping the database ends the session).
		if pool.Stat().AcquiredConns() == 0 {
			pool.Close()
		}
	})
	txr := postgres.NewTx(pool, zerolog.Nop())

	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("Do swallowed the panic")
			}
		}()
		_ = txr.Do(ctx, "audit.panic", func(tx pgx.Tx) error {
			if err := insertAudit(ctx, tx, "test:panic"); err != nil {
				return err
			}
			panic("handler bug")
		})
	}()

	if n := pool.Stat().AcquiredConns(); n != 0 {
		t.Fatalf("%d connections still checked out after the panic, want 0", n)
	}
	// With a single connection, the next transaction only runs if the
	// panicking one gave its connection back.
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err = txr.Do(wctx, "audit.after-panic", func(tx pgx.Tx) error {
		var n int
		if err := tx.QueryRow(wctx, "SELECT count(*) FROM audit_log WHERE actor = 'test:panic'").Scan(&n); err != nil {
			return err
		}
		if n != 0 {
			t.Errorf("the panicking transaction's row is visible (%d rows); want it rolled back", n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("transaction after a panic: %v (connection leaked in an open transaction?)", err)
	}
}

// counter returns the value of atrium_db_long_transactions_total for the
// labels, 0 when the series does not exist.
func counter(t testing.TB, reg *prometheus.Registry, tx, threshold string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "atrium_db_long_transactions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["tx"] == tx && labels["threshold"] == threshold {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestTxLongTransactionAlarm(t *testing.T) {
	pool := ownerPool(t)

	cases := []struct {
		name    string
		query   string
		alarmed []string // thresholds expected to fire once
	}{
		{name: "fast", query: "SELECT 1"},
		{name: "slow", query: "SELECT pg_sleep(0.15)", alarmed: []string{"100ms"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sink := &testenv.LogBuffer{}
			txr := postgres.NewTx(pool, logging.New(sink, "debug", "json", false))
			reg := prometheus.NewRegistry()
			reg.MustRegister(txr.Collectors()...)

			txName := "report." + tc.name
			reqID := "req-" + tc.name
			ctx := logging.WithRequestID(context.Background(), reqID)
			start := time.Now()
			err := txr.Do(ctx, txName, func(tx pgx.Tx) error {
				_, err := tx.Exec(ctx, tc.query)
				return err
			})
			if err != nil {
				t.Fatalf("Do: %v", err)
			}
			// A timer left running after Do would fire later; wait past
			// the 500ms threshold so that it would have.
			time.Sleep(time.Until(start.Add(postgres.TxAlarmThresholds[1] + 100*time.Millisecond)))

			want := map[string]bool{}
			for _, th := range tc.alarmed {
				want[th] = true
			}
			for _, th := range postgres.TxAlarmThresholds {
				wantN := 0.0
				if want[th.String()] {
					wantN = 1
				}
				if got := counter(t, reg, txName, th.String()); got != wantN {
					t.Errorf("atrium_db_long_transactions_total{tx=%q,threshold=%q} = %v, want %v", txName, th, got, wantN)
				}
			}

			var warns []map[string]any
			for _, l := range sink.Lines(t) {
				if l["level"] == "warn" {
					warns = append(warns, l)
				}
			}
			if len(warns) != len(tc.alarmed) {
				t.Fatalf("%d warn lines, want %d: %v", len(warns), len(tc.alarmed), warns)
			}
			for _, w := range warns {
				if w["tx"] != txName || w["request_id"] != reqID || w["message"] != "long transaction" {
					t.Errorf("warn line %v: want tx=%q request_id=%q message=%q", w, txName, reqID, "long transaction")
				}
			}
		})
	}
}

func TestOpen(t *testing.T) {
	cases := []struct {
		name        string
		url         string
		retryFor    time.Duration
		wantErr     string
		wantRetries bool
	}{
		{name: "bad url", url: "postgres://%zz", wantErr: "ATRIUM_DATABASE_URL"},
		{name: "unreachable", url: "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=1",
			retryFor: time.Second, wantErr: "unreachable", wantRetries: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sink := &testenv.LogBuffer{}
			start := time.Now()
			pool, err := postgres.Open(context.Background(), postgres.Options{URL: tc.url, RetryFor: tc.retryFor, Log: logging.New(sink, "debug", "json", false)})
			elapsed := time.Since(start)
			if err == nil {
				pool.Close()
				t.Fatal("Open succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not mention %q", err, tc.wantErr)
			}
			if !tc.wantRetries {
				return
			}
			if elapsed < tc.retryFor/2 {
				t.Errorf("gave up after %s, want about RetryFor (%s)", elapsed, tc.retryFor)
			}
			retries := 0
			for _, l := range sink.Lines(t) {
				if l["level"] == "warn" && l["message"] == "database unreachable, retrying" {
					retries++
				}
			}
			if retries == 0 {
				t.Error("no retry was logged")
			}
		})
	}
}

func TestOpenReachable(t *testing.T) {
	pool := open(t, testenv.Database(t, atriumsql.Migrations()), 2)
	var one int
	if err := pool.QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1 = %d, %v", one, err)
	}
	if got := pool.Config().MaxConns; got != 2 {
		t.Errorf("MaxConns = %d, want 2", got)
	}
}

func TestIsNoRows(t *testing.T) {
	pool := ownerPool(t)
	var id string
	err := pool.QueryRow(context.Background(), "SELECT id::text FROM audit_log WHERE actor = 'nobody'").Scan(&id)
	if !postgres.IsNoRows(err) {
		t.Errorf("IsNoRows(%v) = false, want true", err)
	}
	if postgres.IsNoRows(errors.New("other")) {
		t.Error("IsNoRows(other error) = true")
	}
}

// ownerPool returns a pool on a fresh migrated database as the schema's
// owner: these tests exercise transactions, not row-level security
// (scope_test.go does that as the application role).
func ownerPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, err := postgres.Open(context.Background(), postgres.Options{URL: testenv.Database(t, atriumsql.Migrations()),
		MaxConns: 8, RetryFor: time.Second, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}
