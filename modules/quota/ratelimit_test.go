package quota

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/redisx"
	"github.com/atriumhq/atrium/platform/testenv"
)

// newTestLimiter returns a Limiter (with its own connections) under
// prefix, so that several of them are separate instances sharing state,
// and a hook counting its Redis commands. Skipped under -short.
func newTestLimiter(tb testing.TB, prefix string, cfg Config) (*Limiter, *testenv.RedisCounter) {
	tb.Helper()
	return newCountedLimiter(tb, testenv.RedisClient(tb, prefix), cfg)
}

func newCountedLimiter(tb testing.TB, c *redisx.Client, cfg Config) (*Limiter, *testenv.RedisCounter) {
	tb.Helper()
	l := NewLimiter(c, cfg)
	tb.Cleanup(func() { _ = l.Close() })
	h := &testenv.RedisCounter{}
	l.rdb.AddHook(h)
	return l, h
}

func mustAllow(tb testing.TB, l *Limiter, n int, rules ...Rule) Decision {
	tb.Helper()
	d, err := l.Allow(context.Background(), rules, n)
	if err != nil {
		tb.Fatalf("Allow: %v", err)
	}
	return d
}

// fakeClock is an injectable Config.Now.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestRuleValidate(t *testing.T) {
	ok := Rule{ID: "tenant-rps", Key: "tenant:1", Rate: 10, Period: time.Second, Burst: 10}
	tests := []struct {
		name   string
		change func(*Rule)
		valid  bool
	}{
		{"valid", func(*Rule) {}, true},
		{"observe, closed", func(r *Rule) { r.Mode, r.FailMode = Observe, FailClosed }, true},
		{"empty id", func(r *Rule) { r.ID = "" }, false},
		{"quote in id", func(r *Rule) { r.ID = `a"b` }, false},
		{"colon in id", func(r *Rule) { r.ID = "a:b" }, false},
		{"empty key", func(r *Rule) { r.Key = "" }, false},
		{"zero rate", func(r *Rule) { r.Rate = 0 }, false},
		{"zero period", func(r *Rule) { r.Period = 0 }, false},
		{"over 1 event per µs", func(r *Rule) { r.Rate, r.Period = 2000, time.Millisecond }, false},
		{"1 event per µs", func(r *Rule) { r.Rate, r.Period = 1000, time.Millisecond }, true},
		{"zero burst", func(r *Rule) { r.Burst = 0 }, false},
		{"unknown mode", func(r *Rule) { r.Mode = 7 }, false},
		{"unknown fail mode", func(r *Rule) { r.FailMode = 7 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ok
			tt.change(&r)
			err := r.Validate()
			if (err == nil) != tt.valid {
				t.Fatalf("Validate() = %v, want valid %v", err, tt.valid)
			}
			if err != nil && errs.CodeOf(err) != errs.Invalid {
				t.Errorf("code = %s, want invalid", errs.CodeOf(err))
			}
		})
	}
}

func TestAllowRejectsBadArguments(t *testing.T) {
	l, _ := newCountedLimiter(t, downClient(t), Config{})
	r := Rule{ID: "r", Key: "k", Rate: 1, Period: time.Second, Burst: 1}
	for name, call := range map[string]func() error{
		"cost 0":         func() error { _, err := l.Allow(context.Background(), []Rule{r}, 0); return err },
		"invalid rule":   func() error { _, err := l.Allow(context.Background(), []Rule{{ID: "x"}}, 1); return err },
		"same key twice": func() error { _, err := l.Allow(context.Background(), []Rule{r, r}, 1); return err },
	} {
		if err := call(); errs.CodeOf(err) != errs.Invalid {
			t.Errorf("%s: err = %v, want invalid", name, err)
		}
	}
}

// localDecide runs the local limiter alone on rules at now.
func localDecide(ll *localLimiter, now time.Time, n int, rules ...Rule) (bool, []Result) {
	results := make([]Result, len(rules))
	keys := make([]string, len(rules))
	for i, r := range rules {
		results[i].Rule = r
		keys[i] = r.ID + ":" + r.Key
	}
	ok := ll.allow(results, keys, n, now, 3*time.Second)
	return ok, results
}

func TestLocalLimiter(t *testing.T) {
	now := newFakeClock().Now()
	tenRPS := Rule{ID: "ten", Key: "k", Rate: 10, Period: time.Second, Burst: 3}

	t.Run("rate and burst", func(t *testing.T) {
		ll := &localLimiter{limiters: map[string]*localEntry{}}
		for i, want := range []int{2, 1, 0} {
			ok, res := localDecide(ll, now, 1, tenRPS)
			if !ok || res[0].Remaining != want || !res[0].Local {
				t.Fatalf("request %d: admitted %v, %+v; want admitted with %d remaining", i+1, ok, res[0], want)
			}
		}
		ok, res := localDecide(ll, now, 1, tenRPS)
		if ok || !res[0].Refused() || res[0].RetryAfter != 100*time.Millisecond {
			t.Fatalf("fourth request: admitted %v, %+v; want refused, retry after 100ms", ok, res[0])
		}
		if ok, _ := localDecide(ll, now.Add(100*time.Millisecond), 1, tenRPS); !ok {
			t.Fatal("refused after the retry time")
		}
		if ok, res := localDecide(ll, now.Add(100*time.Millisecond), 1, tenRPS); ok || res[0].RetryAfter != 100*time.Millisecond {
			t.Fatalf("second request after the retry time: admitted %v, %+v", ok, res[0])
		}
	})

	t.Run("all or nothing", func(t *testing.T) {
		ll := &localLimiter{limiters: map[string]*localEntry{}}
		one := Rule{ID: "one", Key: "k", Rate: 1, Period: time.Hour, Burst: 1}
		closed := Rule{ID: "closed", Key: "k", Rate: 1, Period: time.Hour, Burst: 100, FailMode: FailClosed}
		localDecide(ll, now, 1, one)
		for _, other := range []Rule{one, closed} {
			ok, res := localDecide(ll, now, 1, tenRPS, other)
			if ok || !res[0].Allowed || !res[1].Refused() {
				t.Fatalf("with %s: admitted %v, %+v; want refused by %s only", other.ID, ok, res, other.ID)
			}
			if res[0].Remaining != 3 {
				t.Errorf("with %s: remaining of the rule with room = %d, want 3 (nothing consumed)", other.ID, res[0].Remaining)
			}
		}
		if _, res := localDecide(ll, now, 1, closed); res[0].RetryAfter != 3*time.Second {
			t.Errorf("closed rule's retry after = %v, want the hold-off (3s)", res[0].RetryAfter)
		}
		if ok, res := localDecide(ll, now, 3, tenRPS); !ok || res[0].Remaining != 0 {
			t.Fatalf("burst after refusals: admitted %v, %+v; want the whole burst still there", ok, res[0])
		}
	})

	t.Run("observe", func(t *testing.T) {
		ll := &localLimiter{limiters: map[string]*localEntry{}}
		obs := tenRPS
		obs.Mode = Observe
		would := 0
		for range 10 {
			ok, res := localDecide(ll, now, 1, obs)
			if !ok {
				t.Fatal("an observe rule refused")
			}
			if res[0].Refused() {
				would++
			}
		}
		if would != 7 {
			t.Errorf("would-be refusals = %d, want 7", would)
		}
		// No debt: one interval later exactly one event fits.
		obs.Mode = Enforce
		if ok, _ := localDecide(ll, now.Add(100*time.Millisecond), 1, obs); !ok {
			t.Error("refused one interval later: the observe rule ran up debt")
		}
	})

	t.Run("rate change and sweep", func(t *testing.T) {
		ll := &localLimiter{limiters: map[string]*localEntry{}}
		localDecide(ll, now, 3, tenRPS)
		faster := tenRPS
		faster.Rate = 1000
		if _, res := localDecide(ll, now.Add(time.Millisecond), 1, faster); res[0].RetryAfter > time.Millisecond {
			t.Errorf("retry after %v once the rate was raised to 1000/s, want under 1ms", res[0].RetryAfter)
		}
		if ok, _ := localDecide(ll, now.Add(2*time.Millisecond), 1, faster); !ok {
			t.Error("refused 1ms later at 1000/s")
		}
		localDecide(ll, now.Add(2*localSweep), 1, Rule{ID: "other", Key: "k", Rate: 1, Period: time.Second, Burst: 1})
		if _, ok := ll.limiters["ten:k"]; ok || len(ll.limiters) != 1 {
			t.Errorf("idle full bucket not swept: %d buckets", len(ll.limiters))
		}
	})
}

func TestWriteHeaders(t *testing.T) {
	tenant := Rule{ID: "tenant-rps", Key: "tenant:1", Rate: 100, Period: time.Second, Burst: 100}
	daily := Rule{ID: "tenant-daily", Key: "tenant:1", Rate: 10000, Period: 24 * time.Hour, Burst: 10000}
	route := Rule{ID: "payments", Key: "route:payments", Rate: 5, Period: 500 * time.Millisecond, Burst: 5, Mode: Observe}
	tests := []struct {
		name                      string
		d                         Decision
		policy, limit, retryAfter string
	}{
		{
			name: "admitted: the enforcing rule with the fewest remaining",
			d: Decision{Allowed: true, Results: []Result{
				{Rule: tenant, Allowed: true, Remaining: 3, ResetAfter: 970 * time.Millisecond},
				{Rule: daily, Allowed: true, Remaining: 9000, ResetAfter: 2 * time.Hour},
				{Rule: route, Allowed: false, Remaining: 0, RetryAfter: time.Second},
			}},
			policy: `"tenant-rps";q=100;w=1`, limit: `"tenant-rps";r=3;t=1`,
		},
		{
			name: "refused: the refusing rule with the longest wait",
			d: Decision{Results: []Result{
				{Rule: tenant, Allowed: false, RetryAfter: 1200 * time.Millisecond, ResetAfter: 1990 * time.Millisecond},
				{Rule: daily, Allowed: false, RetryAfter: 9 * time.Second, ResetAfter: 86400 * time.Second},
			}},
			policy: `"tenant-daily";q=10000;w=86400`, limit: `"tenant-daily";r=0;t=86400`, retryAfter: "9",
		},
		{
			name: "refused from the cache: skipped rules are not described",
			d: Decision{Cached: true, Results: []Result{
				{Rule: daily, Skipped: true},
				{Rule: tenant, Allowed: false, RetryAfter: 10 * time.Millisecond, ResetAfter: 990 * time.Millisecond},
			}},
			policy: `"tenant-rps";q=100;w=1`, limit: `"tenant-rps";r=0;t=1`, retryAfter: "1",
		},
		{
			name: "only observe rules: no headers",
			d:    Decision{Allowed: true, Results: []Result{{Rule: route, Allowed: true, Remaining: 4}}},
		},
		{
			name:   "sub-second period rounds up",
			d:      Decision{Allowed: true, Results: []Result{{Rule: Rule{ID: "fast", Rate: 5, Period: 500 * time.Millisecond, Burst: 5}, Allowed: true, Remaining: 5}}},
			policy: `"fast";q=5;w=1`, limit: `"fast";r=5;t=0`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			WriteHeaders(h, tt.d)
			for name, want := range map[string]string{"RateLimit-Policy": tt.policy, "RateLimit": tt.limit, "Retry-After": tt.retryAfter} {
				if got := h.Get(name); got != want {
					t.Errorf("%s = %q, want %q", name, got, want)
				}
			}
		})
	}
}

func TestDecisionErr(t *testing.T) {
	tenant := Rule{ID: "tenant-rps", Key: "tenant:1", Rate: 100, Period: time.Second, Burst: 20}
	if err := (Decision{Allowed: true}).Err(); err != nil {
		t.Fatalf("admitted decision: Err() = %v", err)
	}
	d := Decision{Results: []Result{{Rule: tenant, RetryAfter: 1500 * time.Millisecond, ResetAfter: 200 * time.Millisecond}}}
	err := d.Err()
	var e *errs.Error
	if !errors.As(err, &e) || e.Code != errs.QuotaExceeded {
		t.Fatalf("Err() = %v, want a quota_exceeded *errs.Error", err)
	}

	rec := httptest.NewRecorder()
	httpx.WriteError(rec, httptest.NewRequest("GET", "/api/v1/payments", nil), zerolog.Nop(), err)
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != "2" {
		t.Fatalf("status %d, Retry-After %q; want 429 and 2", rec.Code, rec.Header().Get("Retry-After"))
	}
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"code": "quota_exceeded", "quota": "tenant-rps", "limit": 100.0, "window_seconds": 1.0,
		"burst": 20.0, "used": 20.0, "retry_after_seconds": 2.0}
	for k, v := range want {
		if body[k] != v {
			t.Errorf("problem member %s = %v, want %v (body %s)", k, body[k], v, rec.Body)
		}
	}
}

// downClient returns a client on a port nothing listens on, with 100ms
// timeouts. It needs no Redis, so the tests using it run under -short.
func downClient(tb testing.TB) *redisx.Client {
	tb.Helper()
	c, err := redisx.Connect(redisx.Options{URL: "redis://127.0.0.1:1/0", Prefix: "down", Timeout: 100 * time.Millisecond, Log: zerolog.Nop()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

func TestRedisDown(t *testing.T) {
	clock := newFakeClock()
	var fallbacks atomic.Int64
	l, h := newCountedLimiter(t, downClient(t), Config{Now: clock.Now, Observer: ObserverFunc(func(_ context.Context, d Decision) {
		if d.Fallback {
			fallbacks.Add(1)
		}
	})})
	open := Rule{ID: "open", Key: "terminal:1", Rate: 2, Period: time.Hour, Burst: 2}
	open2 := Rule{ID: "open", Key: "terminal:2", Rate: 2, Period: time.Hour, Burst: 2}
	closed := Rule{ID: "closed", Key: "tenant:1", Rate: 1000, Period: time.Second, Burst: 1000, FailMode: FailClosed}
	closedObs := Rule{ID: "closed-obs", Key: "tenant:1", Rate: 1000, Period: time.Second, Burst: 1000, Mode: Observe, FailMode: FailClosed}

	start := time.Now()
	d := mustAllow(t, l, 1, open)
	if !d.Allowed || !d.Fallback || !d.Results[0].Local || d.RedisErr == nil || errors.Is(d.RedisErr, ErrHeldOff) {
		t.Fatalf("first decision: %+v; want admitted locally, with the Redis error", d)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("first decision with Redis down took %v", took)
	}
	cmds := h.Commands.Load()

	steps := []struct {
		name    string
		rules   []Rule
		allowed bool
		refused []string
		would   []string
		code    errs.Code
	}{
		{"open: second of the burst", []Rule{open}, true, nil, nil, ""},
		{"open: over the burst", []Rule{open}, false, []string{"open"}, nil, errs.QuotaExceeded},
		{"closed refuses", []Rule{closed}, false, []string{"closed"}, nil, errs.Unavailable},
		{"closed refuses, open rule with room not consumed", []Rule{open2, closed}, false, []string{"closed"}, nil, errs.Unavailable},
		{"open rule with room: still its whole burst", []Rule{open2}, true, nil, nil, ""},
		{"open rule with room: second", []Rule{open2}, true, nil, nil, ""},
		{"observing closed rule: would refuse, admits", []Rule{closedObs}, true, nil, []string{"closed-obs"}, ""},
	}
	for _, s := range steps {
		start := time.Now()
		d := mustAllow(t, l, 1, s.rules...)
		if time.Since(start) > 50*time.Millisecond {
			t.Errorf("%s: took %v during the hold-off", s.name, time.Since(start))
		}
		if d.Allowed != s.allowed || !d.Fallback || !errors.Is(d.RedisErr, ErrHeldOff) {
			t.Errorf("%s: allowed %v fallback %v err %v; want allowed %v, held off", s.name, d.Allowed, d.Fallback, d.RedisErr, s.allowed)
		}
		if got := ids(d.Refused()); !equal(got, s.refused) {
			t.Errorf("%s: refused by %v, want %v", s.name, got, s.refused)
		}
		if got := ids(d.WouldRefuse()); !equal(got, s.would) {
			t.Errorf("%s: would refuse %v, want %v", s.name, got, s.would)
		}
		if err := d.Err(); errs.CodeOf(err) != s.code {
			t.Errorf("%s: Err() = %v, want code %q", s.name, err, s.code)
		} else if err != nil && errs.As(err).Extra["retry_after_seconds"].(int) < 1 {
			t.Errorf("%s: Err() = %v without retry_after_seconds", s.name, err)
		}
	}
	if got := h.Commands.Load(); got != cmds {
		t.Errorf("%d Redis commands tried during the hold-off, want none", got-cmds)
	}

	clock.Advance(1100 * time.Millisecond)
	d = mustAllow(t, l, 1, closed)
	if d.Allowed || errors.Is(d.RedisErr, ErrHeldOff) || h.Commands.Load() == cmds {
		t.Errorf("after the hold-off: %+v, %d commands; want Redis tried again and the closed rule refusing", d, h.Commands.Load()-cmds)
	}
	if got := fallbacks.Load(); got != int64(len(steps))+2 {
		t.Errorf("observer saw %d fallbacks, want %d", got, len(steps)+2)
	}
}

func ids(rs []Result) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Rule.ID)
	}
	return out
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestExactAcrossInstances hammers one key from three instances (separate
// Limiters with separate clients on one prefix) and counts admissions
// against the most GCRA allows in the elapsed time: rate*window + burst.
func TestExactAcrossInstances(t *testing.T) {
	prefix := testenv.RedisPrefix(t)
	rule := Rule{ID: "route-rps", Key: "route:payments", Rate: 400, Period: time.Second, Burst: 40}
	const instances, workers = 3, 8
	const window = 1500 * time.Millisecond
	limiters := make([]*Limiter, instances)
	hooks := make([]*testenv.RedisCounter, instances)
	for i := range limiters {
		limiters[i], hooks[i] = newTestLimiter(t, prefix, Config{})
	}

	var admitted, refused, cached atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	stop := start.Add(window)
	for i := range instances * workers {
		wg.Go(func() {
			l := limiters[i%instances]
			for time.Now().Before(stop) {
				d, err := l.Allow(context.Background(), []Rule{rule}, 1)
				switch {
				case err != nil || d.Fallback:
					t.Errorf("Allow: %v %v", err, d.RedisErr)
					return
				case d.Allowed:
					admitted.Add(1)
				case d.Cached:
					cached.Add(1)
				default:
					refused.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)

	sustained := float64(rule.Rate) * elapsed.Seconds() / rule.Period.Seconds()
	bound := sustained + float64(rule.Burst)
	over := max(float64(admitted.Load())-bound, 0) / bound * 100
	var cmds int64
	for _, h := range hooks {
		cmds += h.Commands.Load()
	}
	t.Logf("over-admission, %d instances x %d goroutines on one key for %v: admitted %d, bound (rate*window+burst) %.1f, over-admission %.2f%% (target <= 1%%); refused %d by Redis and %d from the denial cache; %d Redis commands",
		instances, workers, elapsed.Round(time.Millisecond), admitted.Load(), bound, over, refused.Load(), cached.Load(), cmds)
	if over > 1 {
		t.Errorf("over-admission %.2f%% > 1%%", over)
	}
	if float64(admitted.Load()) < 0.9*sustained {
		t.Errorf("admitted %d, under 90%% of the sustained rate's %.0f: the limiter refuses what it should admit", admitted.Load(), sustained)
	}
	if cached.Load() == 0 {
		t.Error("no refusal came from the denial cache")
	}
}

func TestAllOrNothing(t *testing.T) {
	l, _ := newTestLimiter(t, testenv.RedisPrefix(t), Config{})
	tenant := Rule{ID: "tenant-rph", Key: "tenant:t1", Rate: 1, Period: time.Hour, Burst: 3}
	terminal := Rule{ID: "terminal-rph", Key: "terminal:x", Rate: 1, Period: time.Hour, Burst: 1}
	route := Rule{ID: "route-rph", Key: "route:payments", Rate: 1, Period: time.Hour, Burst: 2, Mode: Observe}

	d := mustAllow(t, l, 1, tenant, terminal, route)
	if !d.Allowed || d.Results[0].Remaining != 2 || d.Results[1].Remaining != 0 || d.Results[2].Remaining != 1 {
		t.Fatalf("first request: %+v", d)
	}
	d = mustAllow(t, l, 1, tenant, terminal, route)
	if d.Allowed || d.Cached || !equal(ids(d.Refused()), []string{"terminal-rph"}) {
		t.Fatalf("second request: allowed %v cached %v refused by %v; want refused by terminal-rph in Redis", d.Allowed, d.Cached, ids(d.Refused()))
	}
	if r := d.Results[0]; !r.Allowed || r.Remaining != 2 || r.RetryAfter != 0 {
		t.Errorf("tenant rule in the refused request: %+v; want would admit, 2 remaining", r)
	}
	if r := d.Results[2]; !r.Allowed || r.Remaining != 1 {
		t.Errorf("observe rule in the refused request: %+v; want would admit, 1 remaining", r)
	}
	if r := d.Results[1]; r.RetryAfter < 59*time.Minute || r.RetryAfter > time.Hour {
		t.Errorf("terminal rule's retry after = %v, want about 1h", r.RetryAfter)
	}
	for range 3 {
		if d := mustAllow(t, l, 1, tenant, terminal, route); d.Allowed || !d.Cached {
			t.Fatalf("later request: allowed %v cached %v; want refused from the cache", d.Allowed, d.Cached)
		}
	}

	// Neither the tenant nor the route rule lost anything to the refusals.
	d = mustAllow(t, l, 1, tenant, route)
	if !d.Allowed || d.Results[0].Remaining != 1 || !d.Results[1].Allowed || d.Results[1].Remaining != 0 {
		t.Fatalf("after the refusals: %+v; want tenant 1 and route 0 remaining", d.Results)
	}
	d = mustAllow(t, l, 1, tenant, route)
	if !d.Allowed || d.Results[0].Remaining != 0 || !equal(ids(d.WouldRefuse()), []string{"route-rph"}) {
		t.Fatalf("last of the tenant's burst: %+v; want admitted, route would refuse", d.Results)
	}
	if d := mustAllow(t, l, 1, tenant); d.Allowed {
		t.Fatal("tenant rule admitted more than its burst")
	}
}

func TestObserveMode(t *testing.T) {
	var observed atomic.Int64
	l, h := newTestLimiter(t, testenv.RedisPrefix(t), Config{Observer: ObserverFunc(func(_ context.Context, d Decision) {
		observed.Add(int64(len(d.WouldRefuse())))
	})})
	rule := Rule{ID: "shadow", Key: "tenant:t1", Rate: 1, Period: 500 * time.Millisecond, Burst: 2, Mode: Observe}

	var would int64
	start := time.Now()
	for i := range 10 {
		d := mustAllow(t, l, 1, rule)
		if !d.Allowed || len(d.Refused()) != 0 {
			t.Fatalf("request %d: an observe rule refused: %+v", i+1, d)
		}
		if i < 2 && !d.Results[0].Allowed {
			t.Fatalf("request %d: would refuse within the burst", i+1)
		}
		would += int64(len(d.WouldRefuse()))
	}
	if time.Since(start) < 450*time.Millisecond && would != 8 {
		t.Errorf("%d would-be refusals of 10 requests within one interval against a burst of 2, want 8", would)
	}
	if observed.Load() != would {
		t.Errorf("observer counted %d would-be refusals, the decisions %d", observed.Load(), would)
	}
	if h.Commands.Load() < 10 {
		t.Errorf("%d Redis commands for 10 decisions: observe rules must not be answered from the denial cache", h.Commands.Load())
	}

	// The would-be refusals consumed nothing: one interval after the burst
	// was used, switching to enforce admits a request.
	time.Sleep(time.Until(start.Add(600 * time.Millisecond)))
	rule.Mode = Enforce
	if d := mustAllow(t, l, 1, rule); !d.Allowed {
		t.Errorf("enforcing after observing: refused (retry after %v): observe mode ran up debt", d.Results[0].RetryAfter)
	}
}

func TestDenialCacheAvoidsRedis(t *testing.T) {
	l, h := newTestLimiter(t, testenv.RedisPrefix(t), Config{})
	rule := Rule{ID: "terminal-rps", Key: "terminal:x", Rate: 1, Period: 300 * time.Millisecond, Burst: 1}

	if d := mustAllow(t, l, 1, rule); !d.Allowed {
		t.Fatal("first request refused")
	}
	d := mustAllow(t, l, 1, rule)
	if d.Allowed || d.Cached {
		t.Fatalf("second request: allowed %v cached %v; want refused by Redis", d.Allowed, d.Cached)
	}
	cmds := h.Commands.Load()
	var last Decision
	for i := range 50 {
		last = mustAllow(t, l, 1, rule)
		if last.Allowed || !last.Cached || last.Results[0].RetryAfter <= 0 {
			t.Fatalf("request %d: %+v; want refused from the cache", i+3, last)
		}
	}
	if got := h.Commands.Load() - cmds; got != 0 {
		t.Errorf("%d Redis commands for 50 requests over the limit, want 0", got)
	}
	if last.Results[0].RetryAfter > d.Results[0].RetryAfter {
		t.Errorf("retry after grew from %v to %v", d.Results[0].RetryAfter, last.Results[0].RetryAfter)
	}

	// At the retry time the key is asked again, and admits.
	time.Sleep(last.Results[0].RetryAfter + 20*time.Millisecond)
	cmds = h.Commands.Load()
	if d := mustAllow(t, l, 1, rule); !d.Allowed {
		t.Fatalf("refused after the retry time: %+v", d.Results[0])
	}
	if h.Commands.Load() == cmds {
		t.Error("no Redis command after the retry time")
	}

	// A rule whose parameters changed is not answered from the cache.
	if d := mustAllow(t, l, 1, rule); d.Allowed {
		t.Fatal("over the limit again: admitted")
	}
	bigger := rule
	bigger.Burst = 5
	if d := mustAllow(t, l, 1, bigger); !d.Allowed || d.Cached {
		t.Errorf("raised burst: allowed %v cached %v; want admitted by Redis", d.Allowed, d.Cached)
	}
}

// TestAgreesWithRedisRate holds gcraScript to go-redis/redis_rate's
// verdicts for a single rule: same admissions, same remaining counts and
// (within the few milliseconds between the two calls) the same times.
func TestAgreesWithRedisRate(t *testing.T) {
	prefix := testenv.RedisPrefix(t)
	l, _ := newTestLimiter(t, prefix, Config{})
	c := testenv.RedisClient(t, prefix)
	rr := redis_rate.NewLimiter(c.Client)
	rrKey := c.Key("redis_rate")
	t.Cleanup(func() { _ = rr.Reset(context.Background(), rrKey) })
	limit := redis_rate.Limit{Rate: 10, Period: time.Hour, Burst: 5}
	rule := Rule{ID: "agree", Key: "k", Rate: limit.Rate, Period: limit.Period, Burst: limit.Burst}

	for i, n := range []int{1, 2, 3, 1, 1, 1, 1, 6, 2} {
		start := time.Now()
		want, err := rr.AllowN(context.Background(), rrKey, limit, n)
		if err != nil {
			t.Fatal(err)
		}
		d := mustAllow(t, l, n, rule)
		// The two verdicts' times differ by at most the time between them
		// (a loaded machine can make that tens of milliseconds).
		between := time.Since(start) + 5*time.Millisecond
		near := func(a, b time.Duration) bool { return (a - b).Abs() <= between }
		got := d.Results[0]
		if got.Allowed != (want.Allowed > 0) || d.Allowed != got.Allowed {
			t.Fatalf("step %d (cost %d): allowed %v, redis_rate %v", i+1, n, got.Allowed, want.Allowed > 0)
		}
		if got.Allowed && got.Remaining != want.Remaining {
			t.Errorf("step %d (cost %d): remaining %d, redis_rate %d", i+1, n, got.Remaining, want.Remaining)
		}
		if !got.Allowed && !near(got.RetryAfter, want.RetryAfter) {
			t.Errorf("step %d (cost %d): retry after %v, redis_rate %v", i+1, n, got.RetryAfter, want.RetryAfter)
		}
		if !near(got.ResetAfter, want.ResetAfter) {
			t.Errorf("step %d (cost %d): reset after %v, redis_rate %v", i+1, n, got.ResetAfter, want.ResetAfter)
		}
	}
}

// TestStaleConnection kills the Limiter's pooled connection in Redis, as a
// Redis restart does: the next decision finds it closed and is made
// locally, without a hold-off, and the one after is Redis's again.
func TestStaleConnection(t *testing.T) {
	prefix := testenv.RedisPrefix(t)
	admin := testenv.RedisClient(t, prefix)
	l, _ := newTestLimiter(t, prefix, Config{})
	ctx := context.Background()
	rule := Rule{ID: "stale", Key: "route:x", Rate: 100, Period: time.Second, Burst: 100}
	if d := mustAllow(t, l, 1, rule); d.Fallback {
		t.Fatalf("first decision: %v", d.RedisErr)
	}
	id, err := l.rdb.ClientID(ctx).Result() // the one pooled connection
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.ClientKillByFilter(ctx, "ID", strconv.FormatInt(id, 10)).Err(); err != nil {
		t.Fatal(err)
	}
	d := mustAllow(t, l, 1, rule)
	if !d.Fallback || !d.Allowed || !staleConn(d.RedisErr) {
		t.Fatalf("on the killed connection: fallback %v, allowed %v, err %v; want a local admission for a stale connection", d.Fallback, d.Allowed, d.RedisErr)
	}
	if d := mustAllow(t, l, 1, rule); d.Fallback {
		t.Fatalf("the next decision was local too (%v): a stale connection must not start a hold-off", d.RedisErr)
	}
}
