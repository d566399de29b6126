package quota

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
	"github.com/atriumhq/atrium/platform/redisx"
	"github.com/atriumhq/atrium/platform/testenv"
	atriumsql "github.com/atriumhq/atrium/sql"
)

func TestClassOf(t *testing.T) {
	for path, want := range map[string]string{
		"/api/v1/payments":            ClassPayments,
		"/api/v1/payments/123/refund": ClassPayments,
		"/api/v1/refunds":             ClassPayments,
		"/api/v1/auth/login":          ClassAuth,
		"/oauth2/token":               ClassAuth,
		"/v1/chat/completions":        ClassInference,
		"/api/v1/users":               ClassAPI,
		"/api/v1":                     ClassAPI,
		"/api/v1x":                    "",
		"/":                           "",
		"/ui/overview":                "",
		"/static/app.css":             "",
		"/healthz":                    "",
		"/readyz":                     "",
		"/metrics":                    "",
		"/.well-known/jwks.json":      "",
	} {
		if got := ClassOf(path); got != want {
			t.Errorf("ClassOf(%q) = %q, want %q", path, got, want)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestRuleDefValidate(t *testing.T) {
	ok := RuleDef{ID: "tenant-x", RouteClass: "api", KeyBy: "tenant", Rate: ptr(10), PeriodMS: 1000, Mode: "enforce", FailMode: "open"}
	if err := ok.validate(); err != nil {
		t.Fatalf("valid rule: %v", err)
	}
	tests := []struct {
		change func(*RuleDef)
		field  string
	}{
		{func(d *RuleDef) { d.ID = "a:b" }, "id"},
		{func(d *RuleDef) { d.ID = strings.Repeat("a", 65) }, "id"},
		{func(d *RuleDef) { d.Description = strings.Repeat("a", 501) }, "description"},
		{func(d *RuleDef) { d.RouteClass = "ui" }, "route_class"},
		{func(d *RuleDef) { d.KeyBy = "email" }, "key_by"},
		{func(d *RuleDef) { d.Quota = ptr("payments_per_second") }, "rate"}, // both
		{func(d *RuleDef) { d.Rate = nil }, "rate"},                         // neither
		{func(d *RuleDef) { d.Rate, d.Quota = nil, ptr("max_users") }, "quota"},
		{func(d *RuleDef) { d.Rate, d.Quota = nil, ptr("nope") }, "quota"},
		{func(d *RuleDef) { d.Rate, d.Quota, d.KeyBy = nil, ptr("payments_per_second"), "ip" }, "quota"},
		{func(d *RuleDef) { d.Rate = ptr(0) }, "rate"},
		{func(d *RuleDef) { d.Rate, d.PeriodMS = ptr(10_000), 1 }, "rate"},
		{func(d *RuleDef) { d.PeriodMS = 0 }, "period_ms"},
		{func(d *RuleDef) { d.Burst = ptr(0) }, "burst"},
		{func(d *RuleDef) { d.Mode = "shadow" }, "mode"},
		{func(d *RuleDef) { d.FailMode = "maybe" }, "fail_mode"},
	}
	for _, tt := range tests {
		d := ok
		tt.change(&d)
		err := d.validate()
		e := errs.As(err)
		if err == nil || e.Code != errs.Invalid || len(e.Fields) != 1 || e.Fields[0].Field != tt.field {
			t.Errorf("%+v: got %v, want an invalid error naming %s", d, err, tt.field)
		}
	}
}

func TestRuleChangeApply(t *testing.T) {
	base := RuleDef{Rate: ptr(10), Burst: ptr(20), PeriodMS: 1000, Mode: "enforce"}
	d := base
	RuleChange{Quota: Some("payments_per_second")}.apply(&d)
	if d.Quota == nil || d.Rate != nil || d.Burst == nil {
		t.Errorf("setting a quota: %+v, want the rate cleared and the burst kept", d)
	}
	RuleChange{Rate: Some(5), Burst: Null[int](), Mode: ptr("observe")}.apply(&d)
	if d.Quota != nil || d.Rate == nil || *d.Rate != 5 || d.Burst != nil || d.Mode != "observe" {
		t.Errorf("setting a rate, clearing the burst: %+v", d)
	}
	d = base
	RuleChange{Quota: Some("payments_per_second"), Rate: Some(3)}.apply(&d)
	if err := d.validate(); err == nil {
		t.Error("a change giving both a quota and a rate was accepted")
	}
}

// TestRuleChangeDecode checks that the PATCH body tells an absent member
// from null, through the strict decoder the API uses.
func TestRuleChangeDecode(t *testing.T) {
	decode := func(body string) (RuleChange, error) {
		var c RuleChange
		r := httptest.NewRequest(http.MethodPatch, "/", strings.NewReader(body))
		return c, httpx.Decode(r, &c)
	}
	c, err := decode(`{"mode":"observe","burst":null,"rate":7}`)
	if err != nil {
		t.Fatal(err)
	}
	if c.Quota.Set || !c.Burst.Set || !c.Burst.Null || !c.Rate.Set || c.Rate.Value != 7 || *c.Mode != "observe" {
		t.Errorf("decoded %+v", c)
	}
	_, err = decode(`{"rate":"fast"}`)
	if e := errs.As(err); len(e.Fields) != 1 || e.Fields[0].Field != "rate" {
		t.Errorf("a string rate: %v, want a field error naming rate", err)
	}
	if _, err = decode(`{"colour":"red"}`); err == nil {
		t.Error("an unknown member was accepted")
	}
}

func TestLogGate(t *testing.T) {
	var g logGate
	now := time.Unix(1000, 0)
	if ok, _ := g.allow(now); !ok {
		t.Fatal("first line suppressed")
	}
	for range 5 {
		if ok, _ := g.allow(now.Add(10 * time.Millisecond)); ok {
			t.Fatal("a second line within the second got through")
		}
	}
	if ok, n := g.allow(now.Add(time.Second)); !ok || n != 5 {
		t.Fatalf("after a second: %v, %d suppressed; want through, 5", ok, n)
	}
}

// rlEnv is a database and Redis prefix shared by the RateLimits of one
// test, as instances of one deployment share them.
type rlEnv struct {
	url, prefix string
}

func newRLEnv(t *testing.T) rlEnv {
	t.Helper()
	testenv.Integration(t)
	return rlEnv{url: testenv.Database(t, atriumsql.Migrations()), prefix: testenv.RedisPrefix(t)}
}

// instance starts a RateLimits (with its Run) on the environment.
func (e rlEnv) instance(t *testing.T) (*RateLimits, *redisx.Client) {
	t.Helper()
	tx := postgres.NewTx(testenv.AppPool(t, e.url), zerolog.Nop())
	rdb := testenv.RedisClient(t, e.prefix)
	q, err := New(Deps{Tx: tx, Redis: rdb})
	if err != nil {
		t.Fatal(err)
	}
	rl, err := NewRateLimits(context.Background(), RateLimitDeps{Tx: tx, Redis: rdb, Quotas: q, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = rl.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = rl.Close()
	})
	return rl, rdb
}

func platformAdmin() context.Context {
	return principal.With(context.Background(), &principal.Principal{Kind: principal.User, ID: uuid.NewString(),
		Permissions: []string{"quotas:manage"}})
}

func ruleByID(rs []RuleDef, id string) (RuleDef, bool) {
	for _, r := range rs {
		if r.ID == id {
			return r, true
		}
	}
	return RuleDef{}, false
}

func TestRulesSeededAndPermissions(t *testing.T) {
	rl, _ := newRLEnv(t).instance(t)
	want := map[string]string{"tenant-daily": "enforce", "tenant-payments": "enforce", "terminal-rps": "enforce", "ip-anonymous": "observe"}
	for id, mode := range want {
		r, ok := ruleByID(rl.Rules(), id)
		if !ok || r.Mode != mode || !r.Enabled {
			t.Errorf("seeded rule %s: %+v, want enabled, %s", id, r, mode)
		}
	}
	if r, _ := ruleByID(rl.Rules(), "tenant-payments"); r.FailMode != "open" || r.Quota == nil || *r.Quota != "payments_per_second" {
		t.Errorf("tenant-payments: %+v, want fail open on payments_per_second", r)
	}

	tenantAdmin := principal.With(context.Background(), &principal.Principal{Kind: principal.User, ID: uuid.NewString(),
		TenantID: uuid.NewString(), Permissions: []string{"quotas:manage"}})
	viewer := principal.With(context.Background(), &principal.Principal{Kind: principal.User, ID: uuid.NewString()})
	for name, ctx := range map[string]context.Context{"tenant user": tenantAdmin, "no permission": viewer} {
		if _, err := rl.List(ctx); errs.CodeOf(err) != errs.Forbidden {
			t.Errorf("%s lists rules: %v, want forbidden", name, err)
		}
		if _, err := rl.Update(ctx, "tenant-daily", RuleChange{Mode: ptr("observe")}); errs.CodeOf(err) != errs.Forbidden {
			t.Errorf("%s changes a rule: %v, want forbidden", name, err)
		}
	}
	if _, err := rl.List(context.Background()); errs.CodeOf(err) != errs.Unauthenticated {
		t.Errorf("anonymous list: %v", err)
	}
}

// TestRuleChangeReachesOtherInstances changes a rule on one instance and
// watches another apply it, within a second, through the broadcast.
func TestRuleChangeReachesOtherInstances(t *testing.T) {
	env := newRLEnv(t)
	a, _ := env.instance(t)
	b, _ := env.instance(t)
	ctx := platformAdmin()
	// Both must be subscribed before the change, or b only learns of it
	// on its 30-second reload.
	time.Sleep(200 * time.Millisecond)

	if _, err := a.Create(ctx, NewRule{ID: "t-new", RouteClass: "api", KeyBy: "tenant", Rate: ptr(5), PeriodMS: 1000}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	testenv.Eventually(t, time.Second, "the new rule did not reach the other instance", func() bool {
		_, ok := ruleByID(b.Rules(), "t-new")
		return ok
	})
	if _, err := a.Update(ctx, "t-new", RuleChange{Mode: ptr("observe")}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Second, "observe mode did not reach the other instance", func() bool {
		r, _ := ruleByID(b.Rules(), "t-new")
		return r.Mode == "observe"
	})
	if err := a.Delete(ctx, "t-new"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Second, "the deletion did not reach the other instance", func() bool {
		_, ok := ruleByID(b.Rules(), "t-new")
		return !ok
	})
	t.Logf("three changes reached the other instance in %v", time.Since(start))

	if err := a.Delete(ctx, "t-new"); errs.CodeOf(err) != errs.NotFound {
		t.Errorf("deleting twice: %v, want not_found", err)
	}
	if _, err := a.Create(ctx, NewRule{ID: "tenant-daily", RouteClass: "api", KeyBy: "tenant", Rate: ptr(5), PeriodMS: 1000}); errs.CodeOf(err) != errs.Conflict {
		t.Errorf("creating a taken id: %v, want conflict", err)
	}
}

// serve runs one request through the middleware as p (nil: anonymous,
// from ip) and returns the status and the headers.
func serve(rl *RateLimits, path string, p *principal.Principal) *httptest.ResponseRecorder {
	h := httpx.Identify(nil)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p != nil {
			r = r.WithContext(principal.With(r.Context(), p))
		}
		rl.Middleware(httpx.Adapter{Log: zerolog.Nop()}.Error)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusNoContent)
		})).ServeHTTP(w, r)
	}))
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	req.RemoteAddr = "192.0.2.7:5555"
	h.ServeHTTP(rec, req)
	return rec
}

// TestMiddlewareKeys checks which rules apply to whom: tenant rules to a
// tenant's callers, terminal rules to terminals, ip rules to anonymous
// callers only, quota rules to callers with a tenant; paths outside the
// API to no one.
func TestMiddlewareKeys(t *testing.T) {
	env := newRLEnv(t)
	rl, _ := env.instance(t)
	admin := platformAdmin()
	for _, id := range []string{"tenant-daily", "tenant-payments", "terminal-rps", "ip-anonymous"} {
		if err := rl.Delete(admin, id); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []NewRule{
		{ID: "per-tenant", RouteClass: "api", KeyBy: "tenant", Rate: ptr(2), PeriodMS: 60_000},
		{ID: "per-terminal", RouteClass: "*", KeyBy: "terminal", Rate: ptr(1), PeriodMS: 60_000},
		{ID: "per-ip", RouteClass: "auth", KeyBy: "ip", Rate: ptr(1), PeriodMS: 60_000},
	} {
		if _, err := rl.Create(admin, r); err != nil {
			t.Fatal(err)
		}
	}
	tenant, other := uuid.NewString(), uuid.NewString()
	user := &principal.Principal{Kind: principal.User, ID: uuid.NewString(), TenantID: tenant}
	term := &principal.Principal{Kind: principal.Terminal, ID: uuid.NewString(), TenantID: other}
	otherUser := &principal.Principal{Kind: principal.User, ID: uuid.NewString(), TenantID: other}
	platform := &principal.Principal{Kind: principal.User, ID: uuid.NewString()}

	steps := []struct {
		name   string
		path   string
		p      *principal.Principal
		status int
		policy string
	}{
		{"outside the API: no rule", "/ui/overview", user, 204, ""},
		{"tenant user: per-tenant", "/api/v1/users", user, 204, `"per-tenant";q=2;w=60`},
		{"tenant user: per-tenant, second", "/api/v1/users", user, 204, `"per-tenant";q=2;w=60`},
		{"tenant user: per-tenant used up", "/api/v1/users", user, 429, `"per-tenant";q=2;w=60`},
		{"terminal: per-terminal is the tighter", "/api/v1/me", term, 204, `"per-terminal";q=1;w=60`},
		{"terminal again: per-terminal refuses", "/api/v1/me", term, 429, `"per-terminal";q=1;w=60`},
		{"its tenant: per-tenant not consumed by the refusal", "/api/v1/users", otherUser, 204, `"per-tenant";q=2;w=60`},
		{"its tenant: per-tenant used up", "/api/v1/users", otherUser, 429, `"per-tenant";q=2;w=60`},
		{"platform user: no tenant, no rule", "/api/v1/users", platform, 204, ""},
		{"anonymous sign-in: per-ip", "/api/v1/auth/login", nil, 204, `"per-ip";q=1;w=60`},
		{"anonymous sign-in again: per-ip refuses", "/api/v1/auth/login", nil, 429, `"per-ip";q=1;w=60`},
		{"platform user on auth: not counted by ip", "/api/v1/auth/logout", platform, 204, ""},
	}
	for _, s := range steps {
		rec := serve(rl, s.path, s.p)
		if rec.Code != s.status || rec.Header().Get("RateLimit-Policy") != s.policy {
			t.Errorf("%s: %d, policy %q; want %d, %q (body %s)", s.name, rec.Code, rec.Header().Get("RateLimit-Policy"), s.status, s.policy, rec.Body)
		}
		if s.status == 429 && rec.Header().Get("Retry-After") == "" {
			t.Errorf("%s: no Retry-After", s.name)
		}
	}
}

// TestQuotaRulesFollowTenantLimits checks that a quota rule takes its rate
// from the tenant's effective quota, that an override changes it, and
// that a limit of 0 refuses with 403.
func TestQuotaRulesFollowTenantLimits(t *testing.T) {
	env := newRLEnv(t)
	rl, _ := env.instance(t)
	tenant := uuid.NewString()
	tx := postgres.NewTx(testenv.AppPool(t, env.url), zerolog.Nop())
	all := postgres.AllTenants(context.Background(), "test")
	if err := tx.Exec(all, "test.tenant", `INSERT INTO tenants (id, name) VALUES ($1, 'T')`, tenant); err != nil {
		t.Fatal(err)
	}
	user := &principal.Principal{Kind: principal.User, ID: uuid.NewString(), TenantID: tenant}
	if rec := serve(rl, "/api/v1/payments", user); rec.Code != 204 || rec.Header().Get("RateLimit-Policy") != `"tenant-payments";q=50;w=1` {
		t.Fatalf("default plan: %d %q", rec.Code, rec.Header().Get("RateLimit-Policy"))
	}
	admin := platformAdmin()
	if err := rl.quotas.SetOverride(admin, tenant, "payments_per_second", ptr[int64](3)); err != nil {
		t.Fatal(err)
	}
	if rec := serve(rl, "/api/v1/payments", user); rec.Header().Get("RateLimit-Policy") != `"tenant-payments";q=3;w=1` {
		t.Fatalf("after the override: %d %q", rec.Code, rec.Header().Get("RateLimit-Policy"))
	}
	if err := rl.quotas.SetOverride(admin, tenant, "payments_per_second", ptr[int64](0)); err != nil {
		t.Fatal(err)
	}
	if rec := serve(rl, "/api/v1/payments", user); rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "quota_exceeded") {
		t.Fatalf("a zero quota: %d %s, want 403 quota_exceeded", rec.Code, rec.Body)
	}
	if rec := serve(rl, "/api/v1/users", user); rec.Code != 204 {
		t.Fatalf("a zero payments quota refused a non-payment request: %d", rec.Code)
	}
}

// TestLiveCounts checks that refusals and would-be refusals add up across
// instances in Redis.
func TestLiveCounts(t *testing.T) {
	env := newRLEnv(t)
	a, _ := env.instance(t)
	b, _ := env.instance(t)
	admin := platformAdmin()
	if _, err := a.Create(admin, NewRule{ID: "tight", RouteClass: "api", KeyBy: "principal", Rate: ptr(1), PeriodMS: 60_000}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Create(admin, NewRule{ID: "shadow", RouteClass: "api", KeyBy: "tenant", Rate: ptr(1), PeriodMS: 60_000, Mode: "observe"}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Second, "rules did not reach b", func() bool { _, ok := ruleByID(b.Rules(), "shadow"); return ok })
	tenant := uuid.NewString()
	var refused atomic.Int64
	for i, rl := range []*RateLimits{a, b, a, b} {
		u := &principal.Principal{Kind: principal.User, ID: "u" + string(rune('0'+i%2)), TenantID: tenant}
		if serve(rl, "/api/v1/users", u).Code == 429 {
			refused.Add(1)
		}
	}
	for _, rl := range []*RateLimits{a, b} {
		if err := rl.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	live, err := a.LiveCounts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// u0 and u1 each pass "tight" once and are refused once. "shadow"
	// counts the tenant: the first request fits and the other three would
	// be refused; observe rules report on refused requests too, as Redis
	// evaluates every rule of a request.
	if live["tight"].Refused != 2 || refused.Load() != 2 || live["tight"].WouldRefuse != 0 {
		t.Errorf("tight: %+v, %d refused through the middleware; want 2", live["tight"], refused.Load())
	}
	if live["shadow"].WouldRefuse != 3 || live["shadow"].Refused != 0 {
		t.Errorf("shadow: %+v, want 3 would-be refusals and no refusal", live["shadow"])
	}
}
