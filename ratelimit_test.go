package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/google/uuid"

	"github.com/atriumhq/atrium/modules/auth"
	"github.com/atriumhq/atrium/modules/quota"
	"github.com/atriumhq/atrium/platform/redisx"
)

// The rate limits of issue 4 end to end: rules in the database, run-time
// changes reaching every instance within a second, the middleware's
// headers and refusals, observe mode, Redis outages, quota overrides, the
// admin UI, and over-admission across instances.

// ruleStatus is one rule of GET /api/v1/rate-limits.
type ruleStatus struct {
	quota.RuleDef
	Live *quota.LiveCounts `json:"live"`
}

// hit makes one request as token without checking it against the spec:
// rate-limited answers (429, 503) may come from any route.
func hit(t testing.TB, method, target, token string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	return readBody(t, resp, err)
}

// createRule adds a rule through the API as the administrator.
func createRule(t testing.TB, in *instance, admin string, rule map[string]any) {
	t.Helper()
	resp, body := call(t, http.MethodPost, in.URL+"/api/v1/rate-limits", jsonBody(rule), withJSON(bearer(admin)))
	wantStatus(t, resp, body, http.StatusCreated)
}

// patchRule changes a rule through the API as the administrator.
func patchRule(t testing.TB, in *instance, admin, id string, change map[string]any) quota.RuleDef {
	t.Helper()
	resp, body := call(t, http.MethodPatch, in.URL+"/api/v1/rate-limits/"+id, jsonBody(change), withJSON(bearer(admin)))
	wantStatus(t, resp, body, http.StatusOK)
	return decodeJSON[quota.RuleDef](t, body)
}

func listRules(t testing.TB, in *instance, admin string) map[string]ruleStatus {
	t.Helper()
	resp, body := call(t, http.MethodGet, in.URL+"/api/v1/rate-limits", nil, bearer(admin))
	wantStatus(t, resp, body, http.StatusOK)
	out := map[string]ruleStatus{}
	for _, r := range decodeJSON[struct{ Rules []ruleStatus }](t, body).Rules {
		out[r.ID] = r
	}
	return out
}

// tenantUser signs in a new tenant administrator of a new tenant.
func tenantUser(t testing.TB, in *instance, email string) (token, tenant string) {
	t.Helper()
	tenant = uuid.NewString()
	return loginAs(t, in, email, adminPassword, "tenant_admin", tenant), tenant
}

func TestRateLimitAPI(t *testing.T) {
	in := startCluster(t, 1)[0]
	admin := loginAdmin(t, in)

	rules := listRules(t, in, admin)
	for id, mode := range map[string]string{"tenant-daily": "enforce", "tenant-payments": "enforce", "terminal-rps": "enforce", "ip-anonymous": "observe"} {
		if r, ok := rules[id]; !ok || r.Mode != mode || r.Live == nil || r.Live.WindowSeconds != 3600 {
			t.Errorf("seeded rule %s: %+v (live %+v), want %s with live counts", id, r, r.Live, mode)
		}
	}
	if r := rules["tenant-daily"]; r.Quota == nil || *r.Quota != "max_api_calls_per_day" || r.PeriodMS != 86_400_000 || r.Burst != nil {
		t.Errorf("tenant-daily: %+v", r)
	}

	createRule(t, in, admin, map[string]any{"id": "t-api", "route_class": "api", "key_by": "tenant", "rate": 100, "period_ms": 60000,
		"description": "test"})
	resp, body := call(t, http.MethodGet, in.URL+"/api/v1/rate-limits/t-api", nil, bearer(admin))
	wantStatus(t, resp, body, http.StatusOK)
	if got := decodeJSON[ruleStatus](t, body); got.Mode != "enforce" || got.FailMode != "open" || !got.Enabled || !strings.HasPrefix(got.UpdatedBy, "user:") {
		t.Errorf("created rule: %s", body)
	}
	got := patchRule(t, in, admin, "t-api", map[string]any{"mode": "observe", "fail_mode": "closed", "burst": 10, "quota": "max_api_calls_per_day"})
	if got.Mode != "observe" || got.FailMode != "closed" || got.Burst == nil || *got.Burst != 10 || got.Rate != nil || got.Quota == nil {
		t.Errorf("patched rule: %+v", got)
	}
	got = patchRule(t, in, admin, "t-api", map[string]any{"rate": 5, "burst": nil, "enabled": false})
	if got.Rate == nil || *got.Rate != 5 || got.Quota != nil || got.Burst != nil || got.Enabled {
		t.Errorf("patched rule: %+v", got)
	}

	for _, tt := range []struct {
		method, path string
		body         any
		status       int
		field        string
	}{
		{http.MethodPost, "/api/v1/rate-limits", map[string]any{"id": "bad id", "route_class": "api", "key_by": "tenant", "rate": 1, "period_ms": 1000}, 400, "id"},
		{http.MethodPost, "/api/v1/rate-limits", map[string]any{"id": "x", "route_class": "ui", "key_by": "tenant", "rate": 1, "period_ms": 1000}, 400, "route_class"},
		{http.MethodPost, "/api/v1/rate-limits", map[string]any{"id": "x", "route_class": "api", "key_by": "tenant", "quota": "max_users", "period_ms": 1000}, 400, "quota"},
		{http.MethodPost, "/api/v1/rate-limits", map[string]any{"id": "x", "route_class": "api", "key_by": "tenant", "period_ms": 1000}, 400, "rate"},
		{http.MethodPost, "/api/v1/rate-limits", map[string]any{"route_class": "api", "key_by": "tenant", "rate": 1, "period_ms": 1000}, 400, "id"},
		{http.MethodPost, "/api/v1/rate-limits", map[string]any{"id": "t-api", "route_class": "api", "key_by": "tenant", "rate": 1, "period_ms": 1000}, 409, "id"},
		{http.MethodPatch, "/api/v1/rate-limits/t-api", map[string]any{"mode": "shadow"}, 400, "mode"},
		{http.MethodPatch, "/api/v1/rate-limits/t-api", map[string]any{"period_ms": 0}, 400, "period_ms"},
		{http.MethodPatch, "/api/v1/rate-limits/t-api", map[string]any{"rate": "many"}, 400, "rate"},
		{http.MethodPatch, "/api/v1/rate-limits/nope", map[string]any{"mode": "observe"}, 404, ""},
		{http.MethodGet, "/api/v1/rate-limits/nope", nil, 404, ""},
		{http.MethodDelete, "/api/v1/rate-limits/nope", nil, 404, ""},
	} {
		var b io.Reader
		if tt.body != nil {
			b = jsonBody(tt.body)
		}
		resp, body := call(t, tt.method, in.URL+tt.path, b, withJSON(bearer(admin)))
		codes := map[int]string{400: "invalid", 404: "not_found", 409: "conflict"}
		p := wantProblem(t, resp, body, tt.status, codes[tt.status])
		if tt.field != "" && (len(p.Errors) != 1 || p.Errors[0].Field != tt.field) {
			t.Errorf("%s %s %v: errors %+v, want one naming %s", tt.method, tt.path, tt.body, p.Errors, tt.field)
		}
	}

	resp, body = call(t, http.MethodDelete, in.URL+"/api/v1/rate-limits/t-api", nil, bearer(admin))
	wantStatus(t, resp, body, http.StatusNoContent)
	if _, ok := listRules(t, in, admin)["t-api"]; ok {
		t.Error("the deleted rule is still listed")
	}

	// Audited, as platform events.
	resp, body = call(t, http.MethodGet, in.URL+"/api/v1/audit?limit=500", nil, bearer(admin))
	wantStatus(t, resp, body, http.StatusOK)
	entries := decodeJSON[struct{ Entries []auth.AuditEntry }](t, body).Entries
	for _, action := range []string{"ratelimit.create", "ratelimit.update", "ratelimit.delete"} {
		if !hasEntry(entries, action, "rate-limit:t-api") {
			t.Errorf("no %s audit entry for rate-limit:t-api", action)
		}
	}

	// Tenant administrators neither see nor change the rules.
	tok, _ := tenantUser(t, in, "ta@rl.test")
	resp, body = call(t, http.MethodGet, in.URL+"/api/v1/rate-limits", nil, bearer(tok))
	wantProblem(t, resp, body, http.StatusForbidden, "forbidden")
	resp, body = call(t, http.MethodPatch, in.URL+"/api/v1/rate-limits/tenant-daily", jsonBody(map[string]any{"mode": "observe"}), withJSON(bearer(tok)))
	wantProblem(t, resp, body, http.StatusForbidden, "forbidden")
}

// TestRateLimitHeadersAndRefusal: RateLimit headers on admitted requests,
// 429 with Retry-After and the problem members once the limit is used up.
func TestRateLimitHeadersAndRefusal(t *testing.T) {
	in := startCluster(t, 1)[0]
	admin := loginAdmin(t, in)
	createRule(t, in, admin, map[string]any{"id": "t-api", "route_class": "api", "key_by": "tenant", "rate": 3, "period_ms": 60000})
	tok, _ := tenantUser(t, in, "u@rl.test")

	for i := range 3 {
		resp, body := hit(t, http.MethodGet, in.URL+"/api/v1/me", tok)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %d %s", i+1, resp.StatusCode, body)
		}
		if p := resp.Header.Get("RateLimit-Policy"); p != `"t-api";q=3;w=60` {
			t.Errorf("request %d: RateLimit-Policy %q", i+1, p)
		}
		if rl := resp.Header.Get("RateLimit"); !strings.HasPrefix(rl, `"t-api";r=`+strconv.Itoa(2-i)+";t=") {
			t.Errorf("request %d: RateLimit %q, want r=%d", i+1, rl, 2-i)
		}
	}
	resp, body := hit(t, http.MethodGet, in.URL+"/api/v1/me", tok)
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("fourth request: %d %s", resp.StatusCode, body)
	}
	ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > 20 {
		t.Errorf("Retry-After %q, want about 20 s", resp.Header.Get("Retry-After"))
	}
	p := decodeJSON[map[string]any](t, []byte(body))
	if p["code"] != "quota_exceeded" || p["quota"] != "t-api" || p["limit"] != 3.0 || p["retry_after_seconds"] != float64(ra) ||
		resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Errorf("429 problem: %s", body)
	}
	if rl := resp.Header.Get("RateLimit"); !strings.HasPrefix(rl, `"t-api";r=0;t=`) {
		t.Errorf("RateLimit on the refusal %q", rl)
	}
	// Paths outside the API are never limited.
	for _, path := range []string{"/healthz", "/ui/login"} {
		if resp, _ := hit(t, http.MethodGet, in.URL+path, tok); resp.StatusCode != http.StatusOK || resp.Header.Get("RateLimit-Policy") != "" {
			t.Errorf("%s: %d, policy %q", path, resp.StatusCode, resp.Header.Get("RateLimit-Policy"))
		}
	}
	// The metric counts the verdicts.
	_, metrics := hit(t, http.MethodGet, in.URL+"/metrics", "")
	for _, line := range []string{`atrium_ratelimit_decisions_total{outcome="allowed",rule="t-api"} 3`,
		`atrium_ratelimit_decisions_total{outcome="refused",rule="t-api"} 1`} {
		if !strings.Contains(metrics, line) {
			t.Errorf("metrics lack %s", line)
		}
	}
}

// TestRateLimitAllOrNothing checks two rules through HTTP: a request one
// refuses consumes nothing from the other.
func TestRateLimitAllOrNothing(t *testing.T) {
	in := startCluster(t, 1)[0]
	admin := loginAdmin(t, in)
	createRule(t, in, admin, map[string]any{"id": "t-tenant", "route_class": "api", "key_by": "tenant", "rate": 3, "period_ms": 60000})
	createRule(t, in, admin, map[string]any{"id": "t-user", "route_class": "api", "key_by": "principal", "rate": 2, "period_ms": 60000})
	tenant := uuid.NewString()
	u1 := loginAs(t, in, "u1@rl.test", adminPassword, "tenant_admin", tenant)
	u2 := loginAs(t, in, "u2@rl.test", adminPassword, "tenant_admin", tenant)

	want := func(token string, status int, rule string) {
		t.Helper()
		resp, body := hit(t, http.MethodGet, in.URL+"/api/v1/nothing-here", token)
		if resp.StatusCode != status || !strings.HasPrefix(resp.Header.Get("RateLimit-Policy"), `"`+rule+`"`) {
			t.Fatalf("status %d, policy %q; want %d from %s: %s", resp.StatusCode, resp.Header.Get("RateLimit-Policy"), status, rule, body)
		}
	}
	want(u1, http.StatusNotFound, "t-user") // t-tenant 1/3, t-user(u1) 1/2
	want(u1, http.StatusNotFound, "t-user") // 2/3, 2/2
	want(u1, http.StatusTooManyRequests, "t-user")
	want(u1, http.StatusTooManyRequests, "t-user")
	// Had the refusals consumed t-tenant, it would be used up now.
	want(u2, http.StatusNotFound, "t-tenant") // 3/3, t-user(u2) 1/2
	want(u2, http.StatusTooManyRequests, "t-tenant")
}

// TestRateLimitObserveMode: an observe-only rule refuses nothing, but
// counts, logs and reports what it would have refused.
func TestRateLimitObserveMode(t *testing.T) {
	in := startCluster(t, 1)[0]
	admin := loginAdmin(t, in)
	createRule(t, in, admin, map[string]any{"id": "t-obs", "route_class": "api", "key_by": "tenant", "rate": 2, "period_ms": 60000, "mode": "observe"})
	tok, _ := tenantUser(t, in, "obs@rl.test")
	for i := range 6 {
		if resp, body := hit(t, http.MethodGet, in.URL+"/api/v1/me", tok); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d under an observe-only rule: %d %s", i+1, resp.StatusCode, body)
		}
	}
	eventually(t, 3*time.Second, func() error {
		if r := listRules(t, in, admin)["t-obs"]; r.Live == nil || r.Live.WouldRefuse != 4 || r.Live.Refused != 0 {
			return fmt.Errorf("live counts %+v, want 4 would-be refusals", r.Live)
		}
		return nil
	})
	_, metrics := hit(t, http.MethodGet, in.URL+"/metrics", "")
	if !strings.Contains(metrics, `atrium_ratelimit_decisions_total{outcome="would_refuse",rule="t-obs"} 4`) {
		t.Error("the metric lacks the 4 would-be refusals")
	}
	if logs := in.Logs.String(); !strings.Contains(logs, "rate limit would refuse") || !strings.Contains(logs, `"rule":"t-obs"`) {
		t.Error("no log line for the would-be refusal")
	} else if n := strings.Count(logs, "rate limit would refuse"); n >= 4 {
		t.Errorf("%d log lines for 4 would-be refusals made within moments: not sampled", n)
	}
	// Switched to enforce, the same rule refuses at once.
	patchRule(t, in, admin, "t-obs", map[string]any{"mode": "enforce"})
	if resp, _ := hit(t, http.MethodGet, in.URL+"/api/v1/me", tok); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("after switching to enforce: %d, want 429", resp.StatusCode)
	}
}

// TestRateLimitChangeReachesEveryInstance switches a rule to observe on one
// instance and back to enforce, and times the other instance applying it.
func TestRateLimitChangeReachesEveryInstance(t *testing.T) {
	c := startCluster(t, 2)
	admin := loginAdmin(t, c[0])
	createRule(t, c[0], admin, map[string]any{"id": "t-flip", "route_class": "api", "key_by": "tenant", "rate": 1, "period_ms": 600000})
	tok, _ := tenantUser(t, c[0], "flip@rl.test")

	status := func() int {
		resp, _ := hit(t, http.MethodGet, c[1].URL+"/api/v1/nothing-here", tok)
		return resp.StatusCode
	}
	eventually(t, time.Second, func() error {
		if s := status(); s != http.StatusTooManyRequests {
			return fmt.Errorf("instance 1 answers %d, want 429 once the rule is used up", s)
		}
		return nil
	})
	for _, step := range []struct {
		mode string
		want int
	}{{"observe", http.StatusNotFound}, {"enforce", http.StatusTooManyRequests}, {"observe", http.StatusNotFound}} {
		start := time.Now() // from before the change is sent
		patchRule(t, c[0], admin, "t-flip", map[string]any{"mode": step.mode})
		within(t, time.Second-time.Since(start), "instance 1 to apply mode "+step.mode, func() bool { return status() == step.want })
		t.Logf("mode %s took effect on the other instance %v after the PATCH was sent", step.mode, time.Since(start))
	}
}

// silentRedis accepts connections and never answers: a Redis that hangs.
func silentRedis(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return ln.Addr().String()
}

// TestRateLimitRedisDown points the rate limiter at a Redis that does not
// answer: fail-open rules admit through the local limiter, fail-closed
// rules answer 503, nothing hangs, and metrics and logs say so.
func TestRateLimitRedisDown(t *testing.T) {
	in := startCluster(t, 1)[0]
	admin := loginAdmin(t, in)
	createRule(t, in, admin, map[string]any{"id": "t-open", "route_class": "api", "key_by": "tenant", "rate": 3, "period_ms": 60000})
	createRule(t, in, admin, map[string]any{"id": "t-closed", "route_class": "payments", "key_by": "tenant", "rate": 1000, "period_ms": 1000,
		"fail_mode": "closed"})
	tok, _ := tenantUser(t, in, "down@rl.test")
	other, _ := tenantUser(t, in, "down2@rl.test")

	dead, err := redisx.Connect(redisx.Options{URL: "redis://" + silentRedis(t) + "/0", Prefix: "dead"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dead.Close() })
	in.app.rateLimits.SetLimiter(quota.NewLimiter(dead, quota.Config{Timeout: 100 * time.Millisecond, HoldOff: time.Second}))

	timed := func(path string, tok string) (*http.Response, string) {
		t.Helper()
		start := time.Now()
		resp, body := hit(t, http.MethodGet, in.URL+path, tok)
		if took := time.Since(start); took > time.Second {
			t.Errorf("%s took %v with Redis hanging", path, took)
		}
		return resp, body
	}
	for i := range 3 {
		if resp, body := timed("/api/v1/me", tok); resp.StatusCode != http.StatusOK {
			t.Fatalf("fail open, request %d: %d %s", i+1, resp.StatusCode, body)
		}
	}
	if resp, body := timed("/api/v1/me", tok); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("fail open past the local limit: %d %s, want 429", resp.StatusCode, body)
	}
	// Another tenant, with room under t-open: t-closed refuses.
	resp, body := timed("/api/v1/payments", other)
	wantProblem(t, resp, []byte(body), http.StatusServiceUnavailable, "unavailable")
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 {
		t.Errorf("fail closed: Retry-After %q", resp.Header.Get("Retry-After"))
	}
	_, metrics := hit(t, http.MethodGet, in.URL+"/metrics", "")
	for _, want := range []string{`outcome="fallback",rule="t-open"`, `outcome="fallback",rule="t-closed"`} {
		if !strings.Contains(metrics, "atrium_ratelimit_decisions_total{"+want+"}") {
			t.Errorf("metrics lack %s", want)
		}
	}
	if !strings.Contains(in.Logs.String(), "rate limits decided without Redis") {
		t.Error("no log line for the fallback")
	}
}

// terminalToken registers a terminal of tenant and returns its access token.
func terminalToken(t testing.TB, in *instance, admin, tenant string) string {
	t.Helper()
	return newTerminalToken(t, in, admin, tenant, "m-rl", false)
}

// TestRateLimitQuotaOverrides: per-tenant overrides of payments_per_second
// and terminal_requests_per_second change what the seeded rules allow.
func TestRateLimitQuotaOverrides(t *testing.T) {
	in := startCluster(t, 1)[0]
	admin := loginAdmin(t, in)
	tok, tenant := tenantUser(t, in, "ovr@rl.test")
	term := terminalToken(t, in, admin, tenant)

	policy := func(path, token string) string {
		t.Helper()
		resp, _ := hit(t, http.MethodGet, in.URL+path, token)
		return resp.Header.Get("RateLimit-Policy")
	}
	if p := policy("/api/v1/payments", tok); p != `"tenant-payments";q=50;w=1` {
		t.Errorf("payments under the default plan: %q", p)
	}
	if p := policy("/api/v1/me", term); p != `"terminal-rps";q=5;w=1` {
		t.Errorf("terminal under the default plan: %q", p)
	}
	for q, v := range map[string]int{"payments_per_second": 3, "terminal_requests_per_second": 2} {
		resp, body := call(t, http.MethodPut, in.URL+"/api/v1/tenants/"+tenant+"/quotas/"+q, jsonBody(map[string]int{"value": v}), withJSON(bearer(admin)))
		wantStatus(t, resp, body, http.StatusOK)
	}
	time.Sleep(time.Second) // both buckets back to full
	if p := policy("/api/v1/payments", tok); p != `"tenant-payments";q=3;w=1` {
		t.Errorf("payments after the override: %q", p)
	}
	if p := policy("/api/v1/me", term); p != `"terminal-rps";q=2;w=1` {
		t.Errorf("terminal after the override: %q", p)
	}
	// A burst well past the new limits is cut down to them.
	for _, c := range []struct {
		path, token string
		limit       int
	}{{"/api/v1/payments", tok, 3}, {"/api/v1/me", term, 2}} {
		time.Sleep(time.Second)
		var ok, refused atomic.Int64
		var wg sync.WaitGroup
		for range 4 * c.limit {
			wg.Go(func() {
				resp, _ := hit(t, http.MethodGet, in.URL+c.path, c.token)
				if resp.StatusCode == http.StatusTooManyRequests {
					refused.Add(1)
				} else {
					ok.Add(1)
				}
			})
		}
		wg.Wait()
		if refused.Load() == 0 || ok.Load() > int64(2*c.limit) {
			t.Errorf("%s: %d admitted, %d refused of %d at once under a limit of %d/s", c.path, ok.Load(), refused.Load(), 4*c.limit, c.limit)
		}
	}
}

// TestRateLimitOverAdmissionAcrossInstances hammers one tenant's key through
// three instances and compares what they admitted with what GCRA allows in
// the time taken: rate × elapsed + burst. Target: at most 1 % over.
func TestRateLimitOverAdmissionAcrossInstances(t *testing.T) {
	c := startCluster(t, 3)
	admin := loginAdmin(t, c[0])
	const rate, burst = 100, 10
	createRule(t, c[0], admin, map[string]any{"id": "t-hammer", "route_class": "api", "key_by": "tenant", "rate": rate, "period_ms": 1000, "burst": burst})
	tok, _ := tenantUser(t, c[0], "hammer@rl.test")
	for _, in := range c { // every instance has the rule
		eventually(t, time.Second, func() error {
			if resp, _ := hit(t, http.MethodGet, in.URL+"/api/v1/nothing-here", tok); !strings.Contains(resp.Header.Get("RateLimit-Policy"), "t-hammer") {
				return fmt.Errorf("%s does not apply t-hammer yet", in.URL)
			}
			return nil
		})
	}
	time.Sleep(200 * time.Millisecond) // back to a full burst

	const workers = 4
	window := 1500 * time.Millisecond
	var admitted, refused atomic.Int64
	var wg sync.WaitGroup
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	start := time.Now()
	stop := start.Add(window)
	for i := range len(c) * workers {
		wg.Go(func() {
			target := c[i%len(c)].URL + "/api/v1/nothing-here"
			for time.Now().Before(stop) {
				req, _ := http.NewRequest(http.MethodGet, target, nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := client.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch resp.StatusCode {
				case http.StatusNotFound:
					admitted.Add(1)
				case http.StatusTooManyRequests:
					refused.Add(1)
				default:
					t.Errorf("status %d", resp.StatusCode)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	bound := rate*elapsed.Seconds() + burst
	over := max(float64(admitted.Load())-bound, 0) / bound * 100
	t.Logf("3 instances x %d clients on one tenant key for %v: admitted %d, refused %d, bound (rate*elapsed+burst) %.1f, over-admission %.2f%% (target <= 1%%)",
		workers, elapsed.Round(time.Millisecond), admitted.Load(), refused.Load(), bound, over)
	if over > 1 {
		t.Errorf("over-admission %.2f%% > 1%%", over)
	}
	if refused.Load() == 0 {
		t.Error("nothing was refused: the load did not reach the limit, so the test proves nothing")
	}
}

// TestBrowserRateLimitObserveSwitch flips a rule to observe-only on the
// admin page and sees the other instance stop refusing, and the page's
// live count of would-be refusals grow.
func TestBrowserRateLimitObserveSwitch(t *testing.T) {
	c := startCluster(t, 2)
	admin := loginAdmin(t, c[0])
	createRule(t, c[0], admin, map[string]any{"id": "t-ui", "route_class": "api", "key_by": "tenant", "rate": 1, "period_ms": 600000,
		"description": "browser test"})
	tok, _ := tenantUser(t, c[0], "ui@rl.test")
	status := func() int {
		resp, _ := hit(t, http.MethodGet, c[1].URL+"/api/v1/nothing-here", tok)
		return resp.StatusCode
	}
	eventually(t, time.Second, func() error {
		if s := status(); s != http.StatusTooManyRequests {
			return fmt.Errorf("instance 1: %d, want 429", s)
		}
		return nil
	})

	ctx, problems := browser(t)
	row := `tr[data-rule="t-ui"]`
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return strings.TrimSpace(s)
	}
	err := chromedp.Do(ctx,
		chromedp.Navigate(c[0].URL+"/ui/rate-limits"),
		fillSignIn("admin@atrium.test", adminPassword),
		chromedp.WaitVisible(chromedp.CSS(row)),
	)
	if err != nil {
		t.Fatalf("rate-limit page: %v", err)
	}
	if m := text(row + ` [data-testid="mode"]`); m != "enforce" {
		t.Fatalf("t-ui shows mode %q", m)
	}
	if n := text(row + ` [data-testid="refused"]`); n == "0" || n == "–" {
		eventually(t, 5*time.Second, func() error {
			if n := text(row + ` [data-testid="refused"]`); n == "0" || n == "–" {
				return fmt.Errorf("refused count %q, want the refusals above", n)
			}
			return nil
		})
	}
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(row+` [data-testid="set-mode"]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-testid="flash"]`)),
	)
	if err != nil {
		t.Fatalf("switch to observe: %v", err)
	}
	if m := text(row + ` [data-testid="mode"]`); m != "observe" {
		t.Fatalf("after the switch t-ui shows mode %q", m)
	}
	within(t, time.Second, "the other instance to stop refusing", func() bool { return status() == http.StatusNotFound })
	status()
	// The page refreshes itself: the would-be refusals appear without a reload.
	_, err = chromedp.Run(ctx, chromedp.Poll[bool](`(() => { const c = document.querySelector('tr[data-rule="t-ui"] [data-testid="would-refuse"]');
		return !!c && Number(c.textContent.trim()) >= 2; })()`, chromedp.WithPollingTimeout(10*time.Second), chromedp.WithPollingInterval(200*time.Millisecond)))
	if err != nil {
		t.Fatalf("would-be refusals not shown: %v (cell %q)", err, text(row+` [data-testid="would-refuse"]`))
	}
	if p := problems(); len(p) > 0 {
		t.Fatalf("browser reported errors (CSP violations show here): %v", p)
	}
}
