package quota

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
	"github.com/atriumhq/atrium/platform/redisx"
	"github.com/atriumhq/atrium/platform/testenv"
	atriumsql "github.com/atriumhq/atrium/sql"
)

func TestValidMetric(t *testing.T) {
	for name, want := range map[string]bool{
		"api_calls": true, "payments": true, "gpu_seconds": true, "payment_amount:EUR": true, "x": true,
		"": false, "Api": false, "1x": false, "payment_amount:eur": false, "payment_amount:EURO": false,
		"a|b": false, "a:b:C": false, "payment_amount:": false, "a b": false,
		"a234567890123456789012345678901234567890": true, "a2345678901234567890123456789012345678901": false,
	} {
		if got := ValidMetric(name); got != want {
			t.Errorf("ValidMetric(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestCanonicalUUID(t *testing.T) {
	id := uuid.NewString()
	for s, want := range map[string]bool{
		id: true, "6F9619FF-8B86-D011-B42D-00C04FC964FF": false, "{" + id + "}": false, id[:35]: false,
		"6f9619ff-8b86-d011-b42d-00c04fc964fg": false, "6f9619ff08b86-d011-b42d-00c04fc964ff": false,
	} {
		if got := canonicalUUID(s); got != want {
			t.Errorf("canonicalUUID(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestMetered(t *testing.T) {
	for path, want := range map[string]bool{
		"/api/v1/users": true, "/api/v1": true, "/oauth2/token": true, "/v1/chat/completions": true, "/v1": true,
		"/ui/usage": false, "/api/v10": false, "/v12": false, "/healthz": false, "/": false, "/oauth2x": false,
	} {
		if got := metered(path); got != want {
			t.Errorf("metered(%q) = %v, want %v", path, got, want)
		}
	}
}

func TestUsageRange(t *testing.T) {
	now := time.Date(2026, 11, 2, 15, 4, 5, 0, time.UTC)
	day := func(s string) time.Time { d, _ := time.Parse(time.DateOnly, s); return d }
	tests := []struct {
		from, to         string
		wantFrom, wantTo string
		field            string
	}{
		{"", "", "2026-10-04", "2026-11-02", ""},
		{"2026-11-01", "", "2026-11-01", "2026-11-02", ""},
		{"", "2026-01-31", "2026-01-02", "2026-01-31", ""},
		{"2026-11-02", "2026-11-02", "2026-11-02", "2026-11-02", ""},
		{"2025-11-02", "2026-11-01", "2025-11-02", "2026-11-01", ""},
		{"2025-11-01", "2026-11-01", "2025-11-01", "2026-11-01", ""},
		{"2025-10-31", "2026-11-01", "", "", "to"},
		{"2026-11-03", "2026-11-02", "", "", "from"},
		{"yesterday", "", "", "", "from"},
		{"", "2026-13-01", "", "", "to"},
		{"2026-11-02T00:00:00Z", "", "", "", "from"},
	}
	for _, tt := range tests {
		from, to, err := UsageRange(tt.from, tt.to, now)
		if tt.field != "" {
			e := errs.As(err)
			if err == nil || e.Code != errs.Invalid || len(e.Fields) != 1 || e.Fields[0].Field != tt.field {
				t.Errorf("UsageRange(%q, %q) = %v, want an invalid %s", tt.from, tt.to, err, tt.field)
			}
			continue
		}
		if err != nil || !from.Equal(day(tt.wantFrom)) || !to.Equal(day(tt.wantTo)) {
			t.Errorf("UsageRange(%q, %q) = %v, %v, %v; want %s, %s", tt.from, tt.to, from, to, err, tt.wantFrom, tt.wantTo)
		}
	}
}

func TestAddValidates(t *testing.T) {
	m := &Meter{counts: map[counter]int64{}, now: time.Now}
	ctx := context.Background()
	tenant := uuid.NewString()
	for _, tc := range []struct {
		tenant, metric string
		units          int64
		field          string
	}{
		{tenant, "api_calls", -1, "units"},
		{tenant, "Bad", 1, "metric"},
		{"nope", "api_calls", 1, "tenant"},
	} {
		if err := m.Add(ctx, tc.tenant, tc.metric, tc.units); errs.As(err).Code != errs.Invalid || errs.As(err).Fields[0].Field != tc.field {
			t.Errorf("Add(%q, %q, %d) = %v, want invalid %s", tc.tenant, tc.metric, tc.units, err, tc.field)
		}
	}
	if err := m.AddPayment(ctx, tenant, "eur", 1); errs.As(err).Fields[0].Field != "currency" {
		t.Errorf("AddPayment with a lower-case currency = %v", err)
	}
	// Zero is no use; a non-canonical id is the same tenant.
	if err := m.Add(ctx, tenant, "api_calls", 0); err != nil || len(m.counts) != 0 {
		t.Errorf("Add 0 = %v, counts %v", err, m.counts)
	}
	_ = m.Add(ctx, tenant, "api_calls", 1)
	_ = m.Add(ctx, "{"+tenant+"}", "api_calls", 2)
	if len(m.counts) != 1 {
		t.Errorf("counts = %v, want one counter", m.counts)
	}
	for _, v := range m.counts {
		if v != 3 {
			t.Errorf("counted %d, want 3", v)
		}
	}
}

// meterEnv is a database and a Redis prefix shared by the Meters of one
// test: each Meter is an instance.
type meterEnv struct {
	tx     *postgres.Tx
	quotas *Service
	prefix string
	rdb    *redisx.Client
}

func newMeterEnv(t *testing.T) *meterEnv {
	t.Helper()
	pool := testenv.Pool(t, atriumsql.Migrations())
	tx := postgres.NewTx(pool, zerolog.Nop())
	prefix := testenv.RedisPrefix(t)
	rdb := testenv.RedisClient(t, prefix)
	q, err := New(Deps{Tx: tx, Redis: rdb, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	return &meterEnv{tx: tx, quotas: q, prefix: prefix, rdb: rdb}
}

// meter returns a new instance's Meter, with its own Redis connections.
func (e *meterEnv) meter(t *testing.T, now func() time.Time) *Meter {
	t.Helper()
	m, err := NewMeter(MeterConfig{}, MeterDeps{Tx: e.tx, Redis: testenv.RedisClient(t, e.prefix), Quotas: e.quotas,
		Log: zerolog.Nop(), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (e *meterEnv) tenant(t *testing.T) string {
	t.Helper()
	id := uuid.NewString()
	if err := e.tx.Exec(postgres.AllTenants(context.Background(), "test"), "test.tenant",
		`INSERT INTO tenants (id, name) VALUES ($1, $2)`, id, "Tenant "+id); err != nil {
		t.Fatal(err)
	}
	return id
}

// recorded returns usage_daily as "tenant day metric" → units.
func (e *meterEnv) recorded(t *testing.T) map[string]int64 {
	t.Helper()
	type row struct {
		k string
		n int64
	}
	rows, err := postgres.Collect(postgres.AllTenants(context.Background(), "test"), e.tx, "test.usage",
		func(r pgx.CollectableRow) (row, error) {
			var x row
			err := r.Scan(&x.k, &x.n)
			return x, err
		}, `SELECT tenant_id::text || ' ' || day::text || ' ' || metric, units FROM usage_daily`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, r := range rows {
		out[r.k] = r.n
	}
	return out
}

// gpuBudget returns tenant's max_gpu_hours use (GPU-seconds) in period.
func (e *meterEnv) gpuBudget(t *testing.T, tenant, period string) int64 {
	t.Helper()
	var n int64
	err := e.tx.QueryRow(postgres.WithTenant(context.Background(), tenant), "test.budget",
		`SELECT coalesce(sum(used), 0)::bigint FROM quota_usage WHERE tenant_id = $1 AND quota = 'max_gpu_hours' AND period = $2`,
		[]any{tenant, period}, &n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// leftovers lists the usage keys still in Redis (live, index, batch,
// pending), which a complete flush leaves none of.
func (e *meterEnv) leftovers(t *testing.T) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	for _, pat := range []string{"live:*", "index", "batch:*", "pending", "stale"} {
		keys, err := e.rdb.Keys(ctx, e.rdb.Key("usage", pat)).Result()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, keys...)
	}
	return out
}

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

func mustAdd(t testing.TB, m *Meter, tenant, metric string, n int64) {
	t.Helper()
	if err := m.Add(context.Background(), tenant, metric, n); err != nil {
		t.Fatal(err)
	}
}

func TestMeterFlushRecordsExactly(t *testing.T) {
	e := newMeterEnv(t)
	ctx := context.Background()
	a, b := e.tenant(t), e.tenant(t)
	day1 := time.Date(2026, 11, 30, 23, 59, 58, 0, time.UTC)
	clock := day1
	var mu sync.Mutex
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	m := e.meter(t, now)

	for range 5 {
		mustAdd(t, m, a, APICalls, 1)
	}
	if err := m.AddPayment(ctx, a, "EUR", 1250); err != nil {
		t.Fatal(err)
	}
	if err := m.AddPayment(ctx, a, "EUR", 99); err != nil {
		t.Fatal(err)
	}
	if err := m.AddPayment(ctx, a, "CHF", 500); err != nil {
		t.Fatal(err)
	}
	if err := m.AddGPUSeconds(ctx, b, 3600); err != nil {
		t.Fatal(err)
	}
	if err := m.Push(ctx); err != nil {
		t.Fatal(err)
	}
	// Past midnight on the 1st: the counts of the 30th stay on the 30th and
	// their GPU time in November's budget.
	mu.Lock()
	clock = clock.Add(5 * time.Second)
	mu.Unlock()
	mustAdd(t, m, b, GPUSeconds, 60)
	mustAdd(t, m, b, APICalls, 2)
	if err := m.Push(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := m.Flush(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Applied != 1 || res.Duplicates != 0 || res.Rows != 7 {
		t.Errorf("flush = %+v, want 1 batch of 7 rows", res)
	}
	want := map[string]int64{
		a + " 2026-11-30 api_calls": 5, a + " 2026-11-30 payments": 3, a + " 2026-11-30 payment_amount:EUR": 1349,
		a + " 2026-11-30 payment_amount:CHF": 500, b + " 2026-11-30 gpu_seconds": 3600,
		b + " 2026-12-01 gpu_seconds": 60, b + " 2026-12-01 api_calls": 2,
	}
	if got := e.recorded(t); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("usage_daily = %v\nwant %v", got, want)
	}
	if nov, dec := e.gpuBudget(t, b, "2026-11"), e.gpuBudget(t, b, "2026-12"); nov != 3600 || dec != 60 {
		t.Errorf("max_gpu_hours use = %d (Nov), %d (Dec); want 3600, 60", nov, dec)
	}
	if left := e.leftovers(t); len(left) != 0 {
		t.Errorf("Redis keys left after the flush: %v", left)
	}

	// A second round adds to the same rows.
	mustAdd(t, m, b, APICalls, 3)
	if err := m.Push(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.recorded(t)[b+" 2026-12-01 api_calls"]; got != 5 {
		t.Errorf("api_calls after a second flush = %d, want 5", got)
	}
	// Nothing to do: no batch, no error.
	if res, err := m.Flush(ctx); err != nil || res != (FlushResult{}) {
		t.Errorf("empty flush = %+v, %v", res, err)
	}
}

var errCrash = errors.New("crash (test)")

// crashOnce returns a hook that fails the first time step is reached.
func crashOnce(step string) func(string) error {
	var done atomic.Bool
	return func(s string) error {
		if s == step && done.CompareAndSwap(false, true) {
			return errCrash
		}
		return nil
	}
}

// TestMeterCrashAtEachStep interrupts a push or a flush at each step, as a
// crash or a lost connection would, and retries it (the flush from a new
// instance, as after a restart): the totals are exact, never doubled.
func TestMeterCrashAtEachStep(t *testing.T) {
	for _, step := range []string{"pushed", "moved", "transaction", "committed"} {
		t.Run(step, func(t *testing.T) {
			e := newMeterEnv(t)
			ctx := context.Background()
			a, b := e.tenant(t), e.tenant(t)
			now := fixedClock(time.Date(2026, 11, 2, 12, 0, 0, 0, time.UTC))
			m := e.meter(t, now)
			m.hook = crashOnce(step)
			mustAdd(t, m, a, APICalls, 7)
			mustAdd(t, m, b, GPUSeconds, 90)

			err := m.Push(ctx)
			if err == nil {
				_, err = m.Flush(ctx)
			}
			if !errors.Is(err, errCrash) {
				t.Fatalf("the run was not interrupted at %s: %v", step, err)
			}
			// Counts keep coming meanwhile.
			mustAdd(t, m, a, APICalls, 1)
			if err := m.Push(ctx); err != nil {
				t.Fatal(err)
			}

			// A restarted instance finds what was left and finishes it.
			m2 := e.meter(t, now)
			var res FlushResult
			if step == "pushed" {
				res, err = m.Flush(ctx)
			} else {
				res, err = m2.Flush(ctx)
			}
			if err != nil {
				t.Fatal(err)
			}
			if step == "committed" && res.Duplicates != 1 {
				t.Errorf("retry after the commit: %+v, want 1 duplicate", res)
			}
			want := map[string]int64{a + " 2026-11-02 api_calls": 8, b + " 2026-11-02 gpu_seconds": 90}
			if got := e.recorded(t); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("usage_daily = %v, want %v", got, want)
			}
			if got := e.gpuBudget(t, b, "2026-11"); got != 90 {
				t.Errorf("max_gpu_hours use = %d GPU-seconds, want 90", got)
			}
			if left := e.leftovers(t); len(left) != 0 {
				t.Errorf("Redis keys left: %v", left)
			}
			// And again: nothing more is added.
			if _, err := m2.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if got := e.recorded(t); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("after another flush usage_daily = %v, want %v", got, want)
			}
		})
	}
}

// TestMeterConcurrentInstances counts from two instances while both push
// and flush all the time, with crashes injected at random steps: every
// count is recorded exactly once.
func TestMeterConcurrentInstances(t *testing.T) {
	e := newMeterEnv(t)
	ctx := context.Background()
	tenants := []string{e.tenant(t), e.tenant(t), e.tenant(t)}
	metrics := []string{APICalls, GPUSeconds, PaymentAmount + ":EUR"}
	now := fixedClock(time.Date(2026, 11, 2, 12, 0, 0, 0, time.UTC))
	var expected sync.Map // "tenant metric" → *atomic.Int64

	meters := []*Meter{e.meter(t, now), e.meter(t, now)}
	var crashes atomic.Int64
	for _, m := range meters {
		m.hook = func(string) error {
			if rand.IntN(10) == 0 {
				crashes.Add(1)
				return errCrash
			}
			return nil
		}
	}
	stop := make(chan struct{})
	var workers, adders sync.WaitGroup
	for _, m := range meters {
		workers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				_ = m.Push(ctx)
				_, _ = m.Flush(ctx)
			}
		})
		for range 4 {
			adders.Go(func() {
				for range 300 {
					tn, mt := tenants[rand.IntN(len(tenants))], metrics[rand.IntN(len(metrics))]
					n := int64(rand.IntN(100) + 1)
					if err := m.Add(ctx, tn, mt, n); err != nil {
						t.Error(err)
						return
					}
					v, _ := expected.LoadOrStore(tn+" "+mt, new(atomic.Int64))
					v.(*atomic.Int64).Add(n)
					time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
				}
			})
		}
	}
	adders.Wait()
	close(stop)
	workers.Wait()

	// Drain: no more crashes.
	for _, m := range meters {
		m.hook = nil
		if err := m.Push(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := meters[0].Flush(ctx); err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{}
	expected.Range(func(k, v any) bool {
		tm := k.(string)
		want[tm[:37]+"2026-11-02 "+tm[37:]] = v.(*atomic.Int64).Load()
		return true
	})
	if got := e.recorded(t); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("usage_daily = %v\nwant %v", got, want)
	}
	for _, tn := range tenants {
		if got, want := e.gpuBudget(t, tn, "2026-11"), want[tn+" 2026-11-02 gpu_seconds"]; got != want {
			t.Errorf("max_gpu_hours use of %s = %d, want %d", tn, got, want)
		}
	}
	if left := e.leftovers(t); len(left) != 0 {
		t.Errorf("Redis keys left: %v", left)
	}
	t.Logf("%d crashes injected", crashes.Load())
	if crashes.Load() == 0 {
		t.Error("no crash was injected; the test proves less than it claims")
	}
}

// TestMoveReplayIsNoop: go-redis retries a script whose reply was lost; a
// replayed move must not fill its batch again (the batch may have been
// applied and deleted by another instance meanwhile).
func TestMoveReplayIsNoop(t *testing.T) {
	e := newMeterEnv(t)
	ctx := context.Background()
	a := e.tenant(t)
	m := e.meter(t, fixedClock(time.Date(2026, 11, 2, 12, 0, 0, 0, time.UTC)))
	mustAdd(t, m, a, APICalls, 1)
	if err := m.Push(ctx); err != nil {
		t.Fatal(err)
	}
	id := uuid.NewString()
	if _, n, _, err := m.moveAs(ctx, id); err != nil || n != 1 {
		t.Fatalf("move = %d, %v", n, err)
	}
	if err := m.forget(ctx, id); err != nil { // as if applied elsewhere
		t.Fatal(err)
	}
	mustAdd(t, m, a, APICalls, 2)
	if err := m.Push(ctx); err != nil {
		t.Fatal(err)
	}
	if _, n, _, err := m.moveAs(ctx, id); err != nil || n != 0 {
		t.Fatalf("replayed move = %d, %v; want nothing moved", n, err)
	}
	if v, _ := e.rdb.HGet(ctx, m.liveKey(m.member(a, "2026-11-02")), APICalls).Int(); v != 2 {
		t.Errorf("live count after the replay = %d, want 2 (left for the next batch)", v)
	}
}

// TestMeterKeepsCountsWhileRedisIsDown: a push that cannot reach Redis
// keeps the counts in memory; they go out once Redis answers.
func TestMeterKeepsCountsWhileRedisIsDown(t *testing.T) {
	e := newMeterEnv(t)
	ctx := context.Background()
	a := e.tenant(t)
	m := e.meter(t, fixedClock(time.Date(2026, 11, 2, 12, 0, 0, 0, time.UTC)))
	good := m.rdb
	down, err := redisx.Connect(redisx.Options{URL: "redis://127.0.0.1:1/0", Prefix: e.prefix, Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close()
	m.rdb = down
	for i := range 2 {
		mustAdd(t, m, a, APICalls, 10)
		if err := m.Push(ctx); err == nil {
			t.Fatalf("push %d to an unreachable Redis succeeded", i)
		}
	}
	if len(m.unacked) != 1 || len(m.counts) != 1 {
		t.Errorf("while Redis is down: %d chunks waiting, %d counters in memory; want 1 and 1 (memory must not grow per push)",
			len(m.unacked), len(m.counts))
	}
	m.rdb = good
	if err := m.Push(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.recorded(t)[a+" 2026-11-02 api_calls"]; got != 20 {
		t.Errorf("api_calls = %d, want 20", got)
	}
}

// TestMeterDropsWhatCannotBeRecorded: an unknown tenant's counts cannot
// block a batch forever; they are dropped and logged, the rest recorded.
func TestMeterDropsWhatCannotBeRecorded(t *testing.T) {
	e := newMeterEnv(t)
	ctx := context.Background()
	a, ghost := e.tenant(t), uuid.NewString()
	m := e.meter(t, fixedClock(time.Date(2026, 11, 2, 12, 0, 0, 0, time.UTC)))
	mustAdd(t, m, a, APICalls, 1)
	mustAdd(t, m, ghost, APICalls, 1)
	if err := m.Push(ctx); err != nil {
		t.Fatal(err)
	}
	// A malformed field written by hand into a batch.
	if err := e.rdb.HSet(ctx, e.rdb.Key("usage", "live", a+":2026-11-02"), "Bad|Metric", 5).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.recorded(t); len(got) != 1 || got[a+" 2026-11-02 api_calls"] != 1 {
		t.Errorf("usage_daily = %v, want only %s's call", got, a)
	}
	if left := e.leftovers(t); len(left) != 0 {
		t.Errorf("Redis keys left: %v", left)
	}
}

// TestMeterSetsAsideStaleBatches: a batch pending for longer than the
// dedupe window might have been applied already, so it is not applied.
func TestMeterSetsAsideStaleBatches(t *testing.T) {
	e := newMeterEnv(t)
	ctx := context.Background()
	a := e.tenant(t)
	m := e.meter(t, time.Now)
	id := uuid.NewString()
	if err := e.rdb.HSet(ctx, m.batchKey(id), a+":2026-11-02|api_calls", 5).Err(); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-staleAfter - time.Hour).UnixMilli()
	if err := e.rdb.ZAdd(ctx, e.rdb.Key("usage", "pending"), redis.Z{Score: float64(old), Member: id}).Err(); err != nil {
		t.Fatal(err)
	}
	res, err := m.Flush(ctx)
	if err != nil || res.Stale != 1 || res.Applied != 0 {
		t.Fatalf("flush = %+v, %v; want 1 stale", res, err)
	}
	if got := e.recorded(t); len(got) != 0 {
		t.Errorf("a stale batch was applied: %v", got)
	}
	if ok, _ := e.rdb.SIsMember(ctx, e.rdb.Key("usage", "stale"), id).Result(); !ok {
		t.Error("the stale batch is not in the stale set")
	}
}

// TestMeterPrunesOldBatchIDs keeps usage_flushes to its retention.
func TestMeterPrunesOldBatchIDs(t *testing.T) {
	e := newMeterEnv(t)
	ctx := postgres.AllTenants(context.Background(), "test")
	if err := e.tx.Exec(ctx, "test.flushes", `INSERT INTO usage_flushes (batch, rows, flushed_at)
		VALUES ('old', 1, now() - interval '8 days'), ('recent', 1, now() - interval '6 days')`); err != nil {
		t.Fatal(err)
	}
	m := e.meter(t, time.Now)
	if _, err := m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	left, err := postgres.Collect(ctx, e.tx, "test.flushes", pgx.RowTo[string], `SELECT batch FROM usage_flushes ORDER BY batch`)
	if err != nil || fmt.Sprint(left) != "[recent]" {
		t.Errorf("usage_flushes after pruning = %v, %v; want [recent]", left, err)
	}
}

func TestUsageReport(t *testing.T) {
	e := newMeterEnv(t)
	ctx := context.Background()
	a, b := e.tenant(t), e.tenant(t)
	today := time.Now().UTC().Truncate(24 * time.Hour)
	m := e.meter(t, time.Now)
	mustAdd(t, m, a, APICalls, 4)
	mustAdd(t, m, a, PaymentAmount+":EUR", 250)
	if err := m.Push(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Older history, as an earlier flush would have left it.
	if err := e.tx.Exec(postgres.AllTenants(ctx, "test"), "test.usage",
		`INSERT INTO usage_daily (tenant_id, day, metric, units) VALUES ($1, $2, 'api_calls', 11)`, a, today.AddDate(0, 0, -3)); err != nil {
		t.Fatal(err)
	}
	// Pushed, not flushed: provisional.
	mustAdd(t, m, a, APICalls, 2)
	if err := m.Push(ctx); err != nil {
		t.Fatal(err)
	}

	member := principal.With(ctx, &principal.Principal{Kind: principal.User, ID: "u", TenantID: a})
	rep, err := m.Usage(member, a, today.AddDate(0, 0, -6), today)
	if err != nil {
		t.Fatal(err)
	}
	d := today.Format(time.DateOnly)
	if len(rep.Days) != 2 || rep.Days[0].Day != today.AddDate(0, 0, -3).Format(time.DateOnly) || rep.Days[1].Day != d {
		t.Fatalf("days = %+v", rep.Days)
	}
	if got := rep.Days[1]; got.Units[APICalls] != 4 || got.Units["payment_amount:EUR"] != 250 || got.Provisional[APICalls] != 2 {
		t.Errorf("today = %+v, want 4 recorded and 2 provisional calls, 250 EUR cents", got)
	}
	if rep.Totals[APICalls] != 15 || rep.ProvisionalUnavailable {
		t.Errorf("totals = %v (provisional unavailable %v), want 15 recorded calls", rep.Totals, rep.ProvisionalUnavailable)
	}
	// A range without today reads no Redis and shows no provisional use.
	if rep, err := m.Usage(member, a, today.AddDate(0, 0, -6), today.AddDate(0, 0, -2)); err != nil || len(rep.Days) != 1 {
		t.Errorf("past range = %+v, %v", rep, err)
	}

	// Visibility: another tenant's member and a platform user without
	// quotas:manage see nothing; an administrator with it sees the tenant.
	other := principal.With(ctx, &principal.Principal{Kind: principal.User, ID: "v", TenantID: b})
	viewer := principal.With(ctx, &principal.Principal{Kind: principal.User, ID: "w"})
	admin := principal.With(ctx, &principal.Principal{Kind: principal.User, ID: "x", Permissions: []string{"quotas:manage"}})
	for name, c := range map[string]context.Context{"other tenant": other, "platform without quotas:manage": viewer, "anonymous": ctx} {
		if _, err := m.Usage(c, a, today, today); errs.CodeOf(err) != errs.NotFound && errs.CodeOf(err) != errs.Unauthenticated {
			t.Errorf("%s reading %s's usage: %v, want not found", name, a, err)
		}
	}
	if rep, err := m.Usage(admin, a, today, today); err != nil || rep.Totals[APICalls] != 4 {
		t.Errorf("administrator: %+v, %v", rep, err)
	}
	// Summary: administrators only.
	if _, err := m.Summary(member, today, today); errs.CodeOf(err) != errs.Forbidden {
		t.Errorf("a tenant member's summary: %v, want forbidden", err)
	}
	sum, err := m.Summary(admin, today.AddDate(0, 0, -6), today)
	if err != nil || len(sum) != 1 || sum[0].TenantID != a || sum[0].Totals[APICalls] != 15 {
		t.Errorf("summary = %+v, %v", sum, err)
	}
}

// BenchmarkMeterAdd is the cost Add puts on a request.
func BenchmarkMeterAdd(b *testing.B) {
	m := &Meter{counts: map[counter]int64{}, now: time.Now}
	tenants := make([]string, 64)
	for i := range tenants {
		tenants[i] = uuid.NewString()
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			_ = m.Add(ctx, tenants[i%len(tenants)], APICalls, 1)
			i++
		}
	})
}
