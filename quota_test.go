package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/atriumhq/atrium/modules/auth"
	"github.com/atriumhq/atrium/modules/quota"
	"github.com/atriumhq/atrium/modules/tenant"
	"github.com/atriumhq/atrium/platform/errs"
)

// quotaReport is GET /api/v1/tenants/{id}/quotas.
type quotaReport struct {
	TenantID string         `json:"tenant_id"`
	Quotas   []quota.Status `json:"quotas"`
}

func (r quotaReport) get(t testing.TB, name string) quota.Status {
	t.Helper()
	for _, q := range r.Quotas {
		if q.Name == name {
			return q
		}
	}
	t.Fatalf("no quota %s in the report", name)
	return quota.Status{}
}

// quotaProblem is a quota_exceeded problem.
type quotaProblem struct {
	Type  string  `json:"type"`
	Code  string  `json:"code"`
	Quota string  `json:"quota"`
	Limit int64   `json:"limit"`
	Used  float64 `json:"used"`
}

// wantQuotaExceeded fails t unless the response refuses with quota_exceeded
// for quota at limit with used in use: 403 (waiting will not help), as a
// problem whose type ends in quota_exceeded.
func wantQuotaExceeded(t testing.TB, resp *http.Response, body []byte, name string, limit int64, used float64) {
	t.Helper()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("status %d, want 403; body %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("Content-Type %q, want application/problem+json", ct)
	}
	if resp.Header.Get("Retry-After") != "" {
		t.Errorf("Retry-After %q on an allocation quota", resp.Header.Get("Retry-After"))
	}
	p := decodeJSON[quotaProblem](t, body)
	if !strings.HasSuffix(p.Type, "quota_exceeded") || p.Code != "quota_exceeded" || p.Quota != name || p.Limit != limit || p.Used != used {
		t.Errorf("problem %+v, want type …quota_exceeded naming quota %s, limit %d, used %g; body %s", p, name, limit, used, body)
	}
}

// TestQuotaLimits: a tenant's quotas report its plan's limits; an override
// of max_users caps user creation with a quota_exceeded problem; lowering
// it below current use disables no one but refuses new users; removing it
// restores the plan's limit.
func TestQuotaLimits(t *testing.T) {
	in := startCluster(t, 1)[0]
	admin := loginAdmin(t, in)
	asAdmin := apiAs(t, in, admin)
	resp, body := asAdmin(http.MethodPost, "/api/v1/tenants", map[string]string{"name": "Quota Co"})
	wantStatus(t, resp, body, http.StatusCreated)
	tn := decodeJSON[tenant.Tenant](t, body)
	report := func() quotaReport {
		t.Helper()
		resp, body := asAdmin(http.MethodGet, "/api/v1/tenants/"+tn.ID+"/quotas", nil)
		wantStatus(t, resp, body, http.StatusOK)
		return decodeJSON[quotaReport](t, body)
	}

	t.Run("plan defaults", func(t *testing.T) {
		resp, body := asAdmin(http.MethodGet, "/api/v1/plans", nil)
		wantStatus(t, resp, body, http.StatusOK)
		var def *quota.Plan
		for _, p := range decodeJSON[struct{ Plans []quota.Plan }](t, body).Plans {
			if p.ID == "default" {
				def = &p
			}
		}
		if def == nil {
			t.Fatalf("no default plan in %s", body)
		}
		want := map[string]int64{"max_models": 100, "max_deployments": 20, "max_gpus": 8, "max_storage_gb": 50, "max_terminals": 100,
			"max_users": 50, "max_api_calls_per_day": 10000, "payments_per_second": 50, "terminal_requests_per_second": 5, "max_gpu_hours": 100}
		if fmt.Sprint(def.Quotas) != fmt.Sprint(want) {
			t.Errorf("default plan %v, want %v", def.Quotas, want)
		}
		r := report()
		if r.TenantID != tn.ID || len(r.Quotas) != len(quota.Defs) {
			t.Fatalf("report for %s with %d quotas, want %s with %d", r.TenantID, len(r.Quotas), tn.ID, len(quota.Defs))
		}
		for i, q := range r.Quotas {
			if q.Name != quota.Defs[i].Name || q.Kind != quota.Defs[i].Kind {
				t.Errorf("quota %d is %s (%s), want %s (%s)", i, q.Name, q.Kind, quota.Defs[i].Name, quota.Defs[i].Kind)
			}
			if q.Limit == nil || *q.Limit != want[q.Name] || q.Overridden || q.Used != 0 || q.Reserved != 0 {
				t.Errorf("%s: limit %v overridden %v used %g reserved %g; want the plan's %d, no override, nothing used",
					q.Name, q.Limit, q.Overridden, q.Used, q.Reserved, want[q.Name])
			}
			wantPeriod := ""
			if q.Kind == quota.Budget {
				wantPeriod = time.Now().UTC().Format("2006-01")
			}
			if q.Period != wantPeriod {
				t.Errorf("%s: period %q, want %q", q.Name, q.Period, wantPeriod)
			}
		}
	})

	// The tenant's administrator is its first user.
	tenantAdmin := loginAs(t, in, "admin@quota.test", adminPassword, "tenant_admin", tn.ID)
	asTenant := apiAs(t, in, tenantAdmin)
	newTenantUser := func(i int) (*http.Response, []byte) {
		t.Helper()
		return asTenant(http.MethodPost, "/api/v1/users", map[string]string{"email": fmt.Sprintf("user%d@quota.test", i), "password": adminPassword})
	}
	if u := report().get(t, "max_users"); u.Used != 1 {
		t.Fatalf("max_users used %g after the first user, want 1", u.Used)
	}
	resp, body = call(t, http.MethodGet, in.URL+"/api/v1/quotas", nil, bearer(tenantAdmin))
	wantStatus(t, resp, body, http.StatusOK)
	if own := decodeJSON[quotaReport](t, body); own.TenantID != tn.ID || own.get(t, "max_users").Used != 1 {
		t.Errorf("the tenant's own report %s", body)
	}

	t.Run("override errors", func(t *testing.T) {
		resp, body := asTenant(http.MethodPut, "/api/v1/tenants/"+tn.ID+"/quotas/max_users", map[string]int{"value": 1000})
		wantProblem(t, resp, body, http.StatusForbidden, "forbidden")
		resp, body = asAdmin(http.MethodPut, "/api/v1/tenants/"+tn.ID+"/quotas/max_unicorns", map[string]int{"value": 1})
		wantProblem(t, resp, body, http.StatusNotFound, "not_found")
		resp, body = asAdmin(http.MethodPut, "/api/v1/tenants/"+uuid.NewString()+"/quotas/max_users", map[string]int{"value": 1})
		wantProblem(t, resp, body, http.StatusNotFound, "not_found")
		resp, body = asAdmin(http.MethodPut, "/api/v1/tenants/"+tn.ID+"/quotas/max_users", map[string]int{"value": -1})
		wantFieldError(t, resp, body, http.StatusBadRequest, "invalid", "value")
		resp, body = asAdmin(http.MethodPut, "/api/v1/tenants/"+tn.ID+"/quotas/max_users", map[string]any{})
		wantFieldError(t, resp, body, http.StatusBadRequest, "invalid", "value")
	})

	const limit = 4
	resp, body = asAdmin(http.MethodPut, "/api/v1/tenants/"+tn.ID+"/quotas/max_users", map[string]int{"value": limit})
	wantStatus(t, resp, body, http.StatusOK)
	if u := decodeJSON[quotaReport](t, body).get(t, "max_users"); u.Limit == nil || *u.Limit != limit || !u.Overridden || u.Used != 1 {
		t.Fatalf("after the override: %+v", u)
	}

	created := 1 // the administrator
	for i := 1; ; i++ {
		resp, body := newTenantUser(i)
		if resp.StatusCode == http.StatusCreated {
			created++
			if created > limit {
				t.Fatalf("user %d of a tenant limited to %d was created", created, limit)
			}
			continue
		}
		if created != limit {
			t.Fatalf("refused at %d users, want %d: %d %s", created, limit, resp.StatusCode, body)
		}
		wantQuotaExceeded(t, resp, body, "max_users", limit, limit)
		// The refused user does not exist, and took nothing.
		resp, body = tryLogin(t, in, fmt.Sprintf("user%d@quota.test", i), adminPassword)
		wantProblem(t, resp, body, http.StatusUnauthorized, "unauthenticated")
		break
	}
	if u := report().get(t, "max_users"); u.Used != limit {
		t.Errorf("max_users used %g, want %d", u.Used, limit)
	}

	t.Run("lower than use", func(t *testing.T) {
		resp, body := asAdmin(http.MethodPut, "/api/v1/tenants/"+tn.ID+"/quotas/max_users", map[string]int{"value": 2})
		wantStatus(t, resp, body, http.StatusOK)
		if u := decodeJSON[quotaReport](t, body).get(t, "max_users"); *u.Limit != 2 || u.Used != limit {
			t.Errorf("after lowering: %+v", u)
		}
		resp, body = asTenant(http.MethodGet, "/api/v1/users", nil)
		wantStatus(t, resp, body, http.StatusOK)
		users := decodeJSON[struct{ Users []auth.User }](t, body).Users
		if len(users) != limit {
			t.Errorf("%d users, want %d", len(users), limit)
		}
		for _, u := range users {
			if u.Status != "active" {
				t.Errorf("user %s is %s after the limit fell below use", u.Email, u.Status)
			}
		}
		apiSignIn(t, in, "user1@quota.test")
		if got := meStatus(t, in, tenantAdmin); got != http.StatusOK {
			t.Errorf("the administrator's token after the limit fell: %d", got)
		}
		resp, body = newTenantUser(100)
		wantQuotaExceeded(t, resp, body, "max_users", 2, limit)
	})

	t.Run("override removed", func(t *testing.T) {
		resp, body := asAdmin(http.MethodDelete, "/api/v1/tenants/"+tn.ID+"/quotas/max_users", nil)
		wantStatus(t, resp, body, http.StatusOK)
		if u := decodeJSON[quotaReport](t, body).get(t, "max_users"); *u.Limit != 50 || u.Overridden {
			t.Errorf("after removing the override: %+v", u)
		}
		resp, body = newTenantUser(101)
		wantStatus(t, resp, body, http.StatusCreated)
	})

	t.Run("terminals", func(t *testing.T) {
		resp, body := asAdmin(http.MethodPut, "/api/v1/tenants/"+tn.ID+"/quotas/max_terminals", map[string]int{"value": 1})
		wantStatus(t, resp, body, http.StatusOK)
		resp, body = asTenant(http.MethodPost, "/api/v1/terminals", map[string]string{"merchant_ref": "m-1"})
		wantStatus(t, resp, body, http.StatusCreated)
		resp, body = asTenant(http.MethodPost, "/api/v1/terminals", map[string]string{"merchant_ref": "m-2"})
		wantQuotaExceeded(t, resp, body, "max_terminals", 1, 1)
	})
}

// TestQuotaConcurrentReservations: 100 reservations at once, half on each
// of two instances, against a limit of 37 admit exactly 37; then commit,
// release and their repeats keep the books.
func TestQuotaConcurrentReservations(t *testing.T) {
	cl := startCluster(t, 2)
	admin := loginAdmin(t, cl[0])
	tn := uuid.NewString()
	ensureTenant(t, cl[0], tn)
	const limit, attempts = 37, 100
	resp, body := call(t, http.MethodPut, cl[0].URL+"/api/v1/tenants/"+tn+"/quotas/max_storage_gb", jsonBody(map[string]int{"value": limit}),
		withJSON(bearer(admin)))
	wantStatus(t, resp, body, http.StatusOK)
	report := func() quota.Status {
		t.Helper()
		resp, body := call(t, http.MethodGet, cl[1].URL+"/api/v1/tenants/"+tn+"/quotas", nil, bearer(admin))
		wantStatus(t, resp, body, http.StatusOK)
		return decodeJSON[quotaReport](t, body).get(t, "max_storage_gb")
	}
	ctx := context.Background()

	var (
		mu       sync.Mutex
		admitted []*quota.Reservation
		refused  int
		wg       sync.WaitGroup
		start    = make(chan struct{})
	)
	for i := range attempts {
		svc := cl[i%2].app.quotas
		wg.Go(func() {
			<-start
			r, err := svc.Reserve(ctx, tn, "max_storage_gb", 1, time.Minute)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				admitted = append(admitted, r)
			case errs.CodeOf(err) == errs.QuotaExceeded:
				refused++
			default:
				t.Errorf("Reserve: %v", err)
			}
		})
	}
	close(start)
	wg.Wait()
	if len(admitted) != limit || refused != attempts-limit {
		t.Fatalf("%d reservations admitted and %d refused, want %d and %d", len(admitted), refused, limit, attempts-limit)
	}
	if q := report(); q.Used != 0 || q.Reserved != limit {
		t.Fatalf("after the reservations: used %g reserved %g, want 0 and %d", q.Used, q.Reserved, limit)
	}
	ids := map[string]bool{}
	for _, r := range admitted {
		if r.TenantID != tn || r.Quota != "max_storage_gb" || r.Amount != 1 || r.State != "reserved" || ids[r.ID] {
			t.Errorf("reservation %+v", r)
		}
		ids[r.ID] = true
	}

	// Settle on both instances: 10 committed (one of them twice), 5
	// released (one twice), 3 committed then released (one twice).
	settle := func(i int, f func(context.Context, string, string) error, r *quota.Reservation) {
		t.Helper()
		if err := f(ctx, tn, r.ID); err != nil {
			t.Fatalf("settle %s (%d): %v", r.ID, i, err)
		}
	}
	commit := func(i int) func(context.Context, string, string) error { return cl[i%2].app.quotas.Commit }
	release := func(i int) func(context.Context, string, string) error { return cl[i%2].app.quotas.Release }
	for i, r := range admitted[:10] {
		settle(i, commit(i), r)
	}
	settle(1, commit(1), admitted[0])
	for i, r := range admitted[10:15] {
		settle(i, release(i), r)
	}
	settle(1, release(1), admitted[10])
	for i, r := range admitted[15:18] {
		settle(i, commit(i), r)
		settle(i+1, release(i+1), r)
	}
	settle(0, release(0), admitted[15])
	if q := report(); q.Used != 10 || q.Reserved != limit-18 {
		t.Errorf("after settling: used %g reserved %g, want 10 and %d", q.Used, q.Reserved, limit-18)
	}
	for _, r := range []*quota.Reservation{admitted[10], admitted[15]} {
		if err := cl[0].app.quotas.Commit(ctx, tn, r.ID); errs.CodeOf(err) != errs.Conflict {
			t.Errorf("committing a released reservation: %v, want a conflict", err)
		}
	}
	for _, id := range []string{uuid.NewString(), "not-a-uuid"} {
		if err := cl[0].app.quotas.Commit(ctx, tn, id); errs.CodeOf(err) != errs.NotFound {
			t.Errorf("committing reservation %s: %v, want not_found", id, err)
		}
	}
	// Another tenant cannot settle this tenant's reservation.
	other := uuid.NewString()
	ensureTenant(t, cl[0], other)
	if err := cl[1].app.quotas.Release(ctx, other, admitted[20].ID); errs.CodeOf(err) != errs.NotFound {
		t.Errorf("releasing another tenant's reservation: %v, want not_found", err)
	}

	// What was given back can be taken again, and no more.
	free := limit - 10 - (limit - 18)
	for i := range free + 1 {
		_, err := cl[i%2].app.quotas.Reserve(ctx, tn, "max_storage_gb", 1, time.Minute)
		if i < free && err != nil {
			t.Fatalf("reservation %d of %d free: %v", i+1, free, err)
		}
		if i == free {
			e := errs.As(err)
			if e.Code != errs.QuotaExceeded || e.Extra["quota"] != "max_storage_gb" || e.Extra["limit"] != int64(limit) || e.Extra["used"] != float64(limit) {
				t.Errorf("reservation past the limit: %v %v, want quota_exceeded for max_storage_gb at %d with %d in use", err, e.Extra, limit, limit)
			}
		}
	}

	// A reservation past its expiry cannot be committed; released, it
	// gives its units back.
	resp, body = call(t, http.MethodPut, cl[0].URL+"/api/v1/tenants/"+tn+"/quotas/max_storage_gb", jsonBody(map[string]int{"value": limit + 1}),
		withJSON(bearer(admin)))
	wantStatus(t, resp, body, http.StatusOK)
	r, err := cl[0].app.quotas.Reserve(ctx, tn, "max_storage_gb", 1, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if err := cl[1].app.quotas.Commit(ctx, tn, r.ID); errs.CodeOf(err) != errs.Conflict {
		t.Errorf("committing an expired reservation: %v, want a conflict", err)
	}
	if err := cl[1].app.quotas.Release(ctx, tn, r.ID); err != nil {
		t.Errorf("releasing an expired reservation: %v", err)
	}
	if q := report(); q.Used != 10 || q.Reserved != limit-10 {
		t.Errorf("after the expired reservation: used %g reserved %g, want 10 and %d", q.Used, q.Reserved, limit-10)
	}

	// Reserve refuses nonsense.
	for _, c := range []struct {
		quota string
		n     int64
		ttl   time.Duration
		field string
	}{
		{"max_storage_gb", 0, time.Minute, "amount"},
		{"max_storage_gb", 1, 0, "ttl"},
		{"max_storage_gb", 1, 25 * time.Hour, "ttl"},
		{"max_unicorns", 1, time.Minute, "quota"},
		{"payments_per_second", 1, time.Minute, "quota"},
	} {
		_, err := cl[0].app.quotas.Reserve(ctx, tn, c.quota, c.n, c.ttl)
		if e := errs.As(err); e.Code != errs.Invalid || len(e.Fields) != 1 || e.Fields[0].Field != c.field {
			b, _ := json.Marshal(e.Fields)
			t.Errorf("Reserve(%s, %d, %s): %v %s, want invalid naming %s", c.quota, c.n, c.ttl, err, b, c.field)
		}
	}
}

// A POS terminal cannot read its tenant's quotas or usage (payment totals
// among them): a stolen terminal secret must not expose the merchant
// group's figures.
func TestQuotaTerminalsCannotReadReports(t *testing.T) {
	in := startCluster(t, 1)[0]
	admin := loginAdmin(t, in)
	tenant := uuid.NewString()
	ensureTenant(t, in, tenant)
	term := terminalToken(t, in, admin, tenant)
	for _, path := range []string{"/api/v1/quotas", "/api/v1/tenants/" + tenant + "/quotas", "/api/v1/usage", "/api/v1/tenants/" + tenant + "/usage"} {
		resp, body := call(t, http.MethodGet, in.URL+path, nil, bearer(term))
		wantStatus(t, resp, body, http.StatusForbidden)
	}
}
