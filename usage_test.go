package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/google/uuid"

	"github.com/atriumhq/atrium/modules/auth"
	"github.com/atriumhq/atrium/modules/quota"
	"github.com/atriumhq/atrium/platform/principal"
	"github.com/atriumhq/atrium/platform/testenv"
	atriumsql "github.com/atriumhq/atrium/sql"
)

// startUsageCluster starts n instances that flush usage only when a test
// says so (and once at start), so the counts a test checks are exact.
func startUsageCluster(t *testing.T, n int) []*instance {
	t.Helper()
	dbURL := testenv.Database(t, atriumsql.Migrations())
	prefix := testenv.RedisPrefix(t)
	out := make([]*instance, n)
	for i := range out {
		cfg := testConfig(dbURL, prefix, fmt.Sprintf("usage-%d", i))
		cfg.Usage.FlushInterval = time.Hour
		out[i] = startInstance(t, cfg)
	}
	return out
}

// flushUsage pushes every instance's counts to Redis and flushes Redis to
// PostgreSQL.
func flushUsage(t *testing.T, ins []*instance) {
	t.Helper()
	ctx := context.Background()
	for _, in := range ins {
		if err := in.app.meter.Push(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ins[0].app.meter.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func usageOf(t *testing.T, body []byte) quota.UsageReport {
	t.Helper()
	return decodeJSON[quota.UsageReport](t, body)
}

func TestUsageMeteringAcrossInstances(t *testing.T) {
	ins := startUsageCluster(t, 2)
	ctx := context.Background()
	tenantA, tenantB := uuid.NewString(), uuid.NewString()
	adminTok := loginAdmin(t, ins[0])
	aTok := loginAs(t, ins[0], "ana@a.test", adminPassword, "tenant_admin", tenantA)
	bTok := loginAs(t, ins[1], "bo@b.test", adminPassword, "viewer", tenantB)
	today := time.Now().UTC().Format(time.DateOnly)

	// Tenant A's calls, counted whichever instance serves them: every
	// authenticated request under /api/v1 (a 404 included), a terminal's
	// too; not the sign-in, not the client-credentials grant, not /healthz,
	// not a platform administrator's nor an anonymous request.
	callsA := 0
	asA := func(in *instance, method, path string, body io.Reader, h http.Header) (*http.Response, []byte) {
		t.Helper()
		callsA++
		hdr := bearer(aTok)
		for k, v := range h {
			hdr[k] = v
		}
		return call(t, method, in.URL+path, body, hdr)
	}
	for i := range 10 {
		resp, body := asA(ins[i%2], http.MethodGet, "/api/v1/me", nil, nil)
		wantStatus(t, resp, body, http.StatusOK)
	}
	resp, body := asA(ins[1], http.MethodGet, "/api/v1/no-such-thing", nil, nil)
	wantStatus(t, resp, body, http.StatusNotFound)
	resp, body = asA(ins[0], http.MethodPost, "/api/v1/terminals", jsonBody(map[string]string{"merchant_ref": "m-1"}),
		http.Header{"Content-Type": {"application/json"}})
	wantStatus(t, resp, body, http.StatusCreated)
	term := decodeJSON[auth.Terminal](t, body)
	resp, body = postForm(t, ins[1].URL+"/oauth2/token", url.Values{"grant_type": {"client_credentials"}},
		http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(term.ID+":"+term.Secret))}})
	wantStatus(t, resp, body, http.StatusOK)
	termTok := decodeJSON[authTokens](t, body).AccessToken
	for i := range 2 {
		resp, body := call(t, http.MethodGet, ins[i].URL+"/api/v1/me", nil, bearer(termTok))
		wantStatus(t, resp, body, http.StatusOK)
		callsA++
	}
	for range 3 {
		resp, body := call(t, http.MethodGet, ins[1].URL+"/api/v1/me", nil, bearer(bTok))
		wantStatus(t, resp, body, http.StatusOK)
	}
	resp, body = call(t, http.MethodGet, ins[0].URL+"/api/v1/tenants", nil, bearer(adminTok))
	wantStatus(t, resp, body, http.StatusOK)
	resp, body = call(t, http.MethodGet, ins[0].URL+"/api/v1/me", nil, nil)
	wantStatus(t, resp, body, http.StatusUnauthorized)
	resp, body = call(t, http.MethodGet, ins[1].URL+"/healthz", nil, bearer(aTok))
	wantStatus(t, resp, body, http.StatusOK)

	// Payments and GPU time come from their modules through the meter.
	if err := ins[1].app.meter.AddPayment(ctx, tenantA, "EUR", 1250); err != nil {
		t.Fatal(err)
	}
	if err := ins[0].app.meter.AddPayment(ctx, tenantA, "EUR", 99); err != nil {
		t.Fatal(err)
	}
	if err := ins[0].app.meter.AddPayment(ctx, tenantA, "JPY", 500); err != nil {
		t.Fatal(err)
	}
	if err := ins[1].app.meter.AddGPUSeconds(ctx, tenantA, 5400); err != nil {
		t.Fatal(err)
	}
	flushUsage(t, ins)

	wantA := map[string]int64{"api_calls": int64(callsA), "payments": 3, "payment_amount:EUR": 1349,
		"payment_amount:JPY": 500, "gpu_seconds": 5400}
	resp, body = asA(ins[1], http.MethodGet, "/api/v1/usage", nil, nil)
	wantStatus(t, resp, body, http.StatusOK)
	rep := usageOf(t, body)
	if rep.TenantID != tenantA || rep.To != today || len(rep.Days) != 1 || rep.Days[0].Day != today {
		t.Fatalf("usage of A: %s", body)
	}
	if got := fmt.Sprint(rep.Days[0].Units); got != fmt.Sprint(wantA) {
		t.Errorf("A's recorded use today = %s, want %v", got, wantA)
	}
	if fmt.Sprint(rep.Totals) != fmt.Sprint(wantA) {
		t.Errorf("A's totals = %v, want %v", rep.Totals, wantA)
	}
	resp, body = call(t, http.MethodGet, ins[0].URL+"/api/v1/usage", nil, bearer(bTok))
	wantStatus(t, resp, body, http.StatusOK)
	if rep := usageOf(t, body); len(rep.Days) != 1 || fmt.Sprint(rep.Days[0].Units) != "map[api_calls:3]" {
		t.Errorf("usage of B: %s", body)
	}
	// The budget quota counted the GPU time in the same transaction.
	resp, body = asA(ins[0], http.MethodGet, "/api/v1/quotas", nil, nil)
	wantStatus(t, resp, body, http.StatusOK)
	if !strings.Contains(string(body), `"name":"max_gpu_hours"`) || !strings.Contains(string(body), `"used":1.5`) {
		t.Errorf("max_gpu_hours does not show 1.5 GPU-hours used: %s", body)
	}

	// Who may read whose usage.
	for _, c := range []struct {
		name, token, path string
		status            int
	}{
		{"A reads B", aTok, "/api/v1/tenants/" + tenantB + "/usage", http.StatusNotFound},
		{"B reads A", bTok, "/api/v1/tenants/" + tenantA + "/usage", http.StatusNotFound},
		{"A reads B with bad dates", aTok, "/api/v1/tenants/" + tenantB + "/usage?from=soon", http.StatusNotFound},
		{"A reads a non-id", aTok, "/api/v1/tenants/nope/usage", http.StatusNotFound},
		{"A reads A by id", aTok, "/api/v1/tenants/" + tenantA + "/usage", http.StatusOK},
		{"admin reads A", adminTok, "/api/v1/tenants/" + tenantA + "/usage", http.StatusOK},
		{"admin reads a tenant that does not exist", adminTok, "/api/v1/tenants/" + uuid.NewString() + "/usage", http.StatusNotFound},
		{"admin has no own usage", adminTok, "/api/v1/usage", http.StatusNotFound},
		{"anonymous", "", "/api/v1/usage", http.StatusUnauthorized},
	} {
		h := http.Header{}
		if c.token != "" {
			h = bearer(c.token)
		}
		resp, body := call(t, http.MethodGet, ins[0].URL+c.path, nil, h)
		if resp.StatusCode != c.status {
			t.Errorf("%s: %d, want %d: %s", c.name, resp.StatusCode, c.status, body)
		}
		if c.token == aTok {
			callsA++
		}
		if c.name == "admin reads A" && fmt.Sprint(usageOf(t, body).Totals) != fmt.Sprint(wantA) {
			t.Errorf("the administrator sees A's totals as %s", body)
		}
		if c.status == http.StatusNotFound {
			wantProblem(t, resp, body, http.StatusNotFound, "not_found")
		}
	}
	// Dates are validated, naming the field.
	for q, field := range map[string]string{"from=yesterday": "from", "to=2026-02-30": "to",
		"from=2026-11-05&to=2026-11-01": "from", "from=2024-01-01&to=2026-01-01": "to"} {
		resp, body := asA(ins[0], http.MethodGet, "/api/v1/usage?"+q, nil, nil)
		p := wantProblem(t, resp, body, http.StatusBadRequest, "invalid")
		if len(p.Errors) != 1 || p.Errors[0].Field != field {
			t.Errorf("?%s: %s, want an error on %s", q, body, field)
		}
	}
	resp, body = asA(ins[0], http.MethodGet, "/api/v1/usage?from=2020-01-01&to=2020-01-31", nil, nil)
	wantStatus(t, resp, body, http.StatusOK)
	if rep := usageOf(t, body); len(rep.Days) != 0 || len(rep.Totals) != 0 || rep.From != "2020-01-01" {
		t.Errorf("a range without use: %s", body)
	}

	// Calls since the flush show as provisional once pushed (every second)
	// and are recorded by the next flush, exactly.
	since := int64(callsA) - wantA["api_calls"]
	member := principal.With(ctx, &principal.Principal{Kind: principal.User, ID: "x", TenantID: tenantA})
	day, _ := time.Parse(time.DateOnly, today)
	testenv.Eventually(t, 5*time.Second, "calls since the flush never showed as provisional", func() bool {
		rep, err := ins[0].app.meter.Usage(member, tenantA, day, day)
		return err == nil && len(rep.Days) == 1 && rep.Days[0].Provisional["api_calls"] == since
	})
	flushUsage(t, ins)
	rep2, err := ins[1].app.meter.Usage(member, tenantA, day, day)
	if err != nil {
		t.Fatal(err)
	}
	if got := rep2.Days[0].Units["api_calls"]; got != int64(callsA) || len(rep2.Days[0].Provisional) != 0 {
		t.Errorf("after the second flush: %d calls recorded (%v provisional), want %d", got, rep2.Days[0].Provisional, callsA)
	}

	// The flush is visible in the metrics.
	resp, body = call(t, http.MethodGet, ins[0].URL+"/metrics", nil, nil)
	wantStatus(t, resp, body, http.StatusOK)
	if !strings.Contains(string(body), `atrium_usage_batches_total{result="applied"}`) {
		t.Errorf("/metrics lacks atrium_usage_batches_total")
	}
}

func TestUsagePages(t *testing.T) {
	ins := startUsageCluster(t, 1)
	in := ins[0]
	ctx := context.Background()
	tenantA, tenantB := uuid.NewString(), uuid.NewString()
	loginAdmin(t, in)
	loginAs(t, in, "ana@a.test", adminPassword, "viewer", tenantA)
	loginAs(t, in, "bo@b.test", adminPassword, "viewer", tenantB)
	for range 3 {
		if err := in.app.meter.AddAPICall(ctx, tenantA); err != nil {
			t.Fatal(err)
		}
	}
	if err := in.app.meter.AddPayment(ctx, tenantA, "EUR", 1250); err != nil {
		t.Fatal(err)
	}
	if err := in.app.meter.AddGPUSeconds(ctx, tenantA, 5400); err != nil {
		t.Fatal(err)
	}
	flushUsage(t, ins)
	if err := in.app.meter.AddAPICall(ctx, tenantA); err != nil {
		t.Fatal(err)
	}
	if err := in.app.meter.Push(ctx); err != nil { // pushed, not flushed: provisional
		t.Fatal(err)
	}
	today := time.Now().UTC().Format(time.DateOnly)

	ana := uiLogin(t, in, "ana@a.test", adminPassword)
	resp, page := uiPage(t, ana, in.URL+"/ui/usage")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/ui/usage for a tenant member: %d\n%s", resp.StatusCode, page)
	}
	for _, want := range []string{`href="/ui/usage" aria-current="page"`, `data-chart="api-calls"`, `data-chart="payments"`,
		`data-chart="gpu-hours"`, `<rect class="bar"`, `data-testid="total-api-calls">4<`, `data-testid="total-gpu-hours">1.50<`,
		`data-day="` + today + `"`, `12.50 EUR`, `+1 API calls`, "Lighter bars are provisional"} {
		if !strings.Contains(page, want) {
			t.Errorf("the usage page lacks %q", want)
		}
	}
	if strings.Contains(page, "style=") {
		t.Error("the usage page has a style attribute, which the CSP forbids")
	}
	if resp, _ := uiPage(t, ana, in.URL+"/ui/tenants/"+tenantB+"/usage"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("a member of A reading B's usage page: %d, want 404", resp.StatusCode)
	}
	if resp, _ := uiPage(t, ana, in.URL+"/ui/tenants/"+tenantA+"/usage"); resp.StatusCode != http.StatusOK {
		t.Errorf("a member of A reading A's usage page by id: %d", resp.StatusCode)
	}
	resp, page = uiPage(t, ana, in.URL+"/ui/usage?from=someday")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(page, `data-testid="usage-error"`) || !strings.Contains(page, "From must be a date") {
		t.Errorf("a bad date: %d\n%s", resp.StatusCode, page)
	}

	admin := uiLogin(t, in, "admin@atrium.test", adminPassword)
	resp, page = uiPage(t, admin, in.URL+"/ui/usage")
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, `data-tenant="`+tenantA+`"`) ||
		!strings.Contains(page, `href="/ui/tenants/`+tenantA+`/usage?from=`) || strings.Contains(page, `data-tenant="`+tenantB+`"`) {
		t.Errorf("the administrator's usage summary: %d\n%s", resp.StatusCode, page)
	}
	resp, page = uiPage(t, admin, in.URL+"/ui/tenants/"+tenantA+"/usage")
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, `data-testid="total-payments">1<`) || !strings.Contains(page, `class="crumb" href="/ui/usage"`) {
		t.Errorf("the administrator's view of A: %d\n%s", resp.StatusCode, page)
	}
}

// TestBrowserUsagePage renders the usage charts in Chromium: no CSP
// violation or console error, one bar per day.
func TestBrowserUsagePage(t *testing.T) {
	ins := startUsageCluster(t, 1)
	in := ins[0]
	tenant := uuid.NewString()
	loginAs(t, in, "ana@a.test", adminPassword, "viewer", tenant)
	// Two weeks of history, and today's use pushed but not flushed.
	_, err := in.app.ownerPool.Exec(context.Background(), `INSERT INTO usage_daily (tenant_id, day, metric, units)
		SELECT $1, current_date - d, m, (d * 37 + length(m) * 11) % 200 + 5
		FROM generate_series(1, 14) d, unnest(ARRAY['api_calls', 'payments', 'gpu_seconds', 'payment_amount:EUR']) m`, tenant)
	if err != nil {
		t.Fatal(err)
	}
	for range 40 {
		_ = in.app.meter.AddAPICall(context.Background(), tenant)
	}
	if err := in.app.meter.Push(context.Background()); err != nil {
		t.Fatal(err)
	}

	ctx, problems := browser(t)
	err = chromedp.Do(ctx,
		chromedp.Navigate(in.URL+"/ui/usage?from="+time.Now().UTC().AddDate(0, 0, -14).Format(time.DateOnly)),
		fillSignIn("ana@a.test", adminPassword),
		chromedp.WaitVisible(chromedp.CSS(`[data-chart="api-calls"] svg`)),
	)
	if err != nil {
		t.Fatal(err)
	}
	bars, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('[data-chart="api-calls"] rect.bar:not(.provisional)').length`))
	if err != nil {
		t.Fatal(err)
	}
	if bars != 15 {
		t.Errorf("%d bars in the API calls chart, want 15 (one a day)", bars)
	}
	if p := problems(); len(p) > 0 {
		t.Errorf("console errors or CSP violations on the usage page: %v", p)
	}
}
