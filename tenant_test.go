package main

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/atriumhq/atrium/modules/auth"
	"github.com/atriumhq/atrium/modules/quota"
	"github.com/atriumhq/atrium/modules/tenant"
)

// wantFieldError fails t unless the response is a problem with the status
// and code that names exactly the one field.
func wantFieldError(t testing.TB, resp *http.Response, body []byte, status int, code, field string) {
	t.Helper()
	p := wantProblem(t, resp, body, status, code)
	if len(p.Errors) != 1 || p.Errors[0].Field != field {
		t.Errorf("errors %+v, want one naming %s; body %s", p.Errors, field, body)
	}
}

// TestTenantAdministration: a platform administrator creates, renames and
// re-plans tenants over the API, with field errors for bad input; tenant
// users see their own tenant and nothing else.
func TestTenantAdministration(t *testing.T) {
	in := startCluster(t, 1)[0]
	admin := loginAdmin(t, in)
	asAdmin := apiAs(t, in, admin)

	resp, body := asAdmin(http.MethodPost, "/api/v1/tenants", map[string]string{"name": "  Acme Foods  "})
	wantStatus(t, resp, body, http.StatusCreated)
	acme := decodeJSON[tenant.Tenant](t, body)
	if _, err := uuid.Parse(acme.ID); err != nil || acme.Name != "Acme Foods" || acme.Status != "active" || acme.Plan != "default" ||
		acme.SuspendedAt != nil || acme.CreatedAt.IsZero() {
		t.Fatalf("created tenant %s", body)
	}
	if loc := resp.Header.Get("Location"); loc != "/api/v1/tenants/"+acme.ID {
		t.Errorf("Location %q", loc)
	}
	resp, body = asAdmin(http.MethodPost, "/api/v1/tenants", map[string]string{"name": "Globex", "plan": "enterprise"})
	wantStatus(t, resp, body, http.StatusCreated)
	globex := decodeJSON[tenant.Tenant](t, body)
	if globex.Plan != "enterprise" {
		t.Fatalf("created tenant %s", body)
	}

	t.Run("create: field errors", func(t *testing.T) {
		for _, c := range []struct {
			name   string
			body   map[string]string
			status int
			code   string
			field  string
		}{
			{"empty name", map[string]string{"name": ""}, http.StatusBadRequest, "invalid", "name"},
			{"blank name", map[string]string{"name": "   "}, http.StatusBadRequest, "invalid", "name"},
			{"no name", map[string]string{"plan": "default"}, http.StatusBadRequest, "invalid", "name"},
			{"unknown plan", map[string]string{"name": "Initech", "plan": "platinum"}, http.StatusBadRequest, "invalid", "plan"},
			{"duplicate name", map[string]string{"name": "Acme Foods"}, http.StatusConflict, "conflict", "name"},
			{"duplicate name, other case", map[string]string{"name": "ACME foods"}, http.StatusConflict, "conflict", "name"},
		} {
			t.Run(c.name, func(t *testing.T) {
				resp, body := asAdmin(http.MethodPost, "/api/v1/tenants", c.body)
				wantFieldError(t, resp, body, c.status, c.code, c.field)
			})
		}
	})

	t.Run("rename and re-plan", func(t *testing.T) {
		resp, body := asAdmin(http.MethodPatch, "/api/v1/tenants/"+acme.ID, map[string]string{"name": "Acme Foods Group"})
		wantStatus(t, resp, body, http.StatusOK)
		if got := decodeJSON[tenant.Tenant](t, body); got.Name != "Acme Foods Group" || got.Plan != "default" || !got.UpdatedAt.After(acme.UpdatedAt) {
			t.Errorf("renamed tenant %s", body)
		}
		resp, body = asAdmin(http.MethodPatch, "/api/v1/tenants/"+acme.ID, map[string]string{"plan": "enterprise"})
		wantStatus(t, resp, body, http.StatusOK)
		if got := decodeJSON[tenant.Tenant](t, body); got.Name != "Acme Foods Group" || got.Plan != "enterprise" {
			t.Errorf("re-planned tenant %s", body)
		}
		// The new plan's limits apply.
		resp, body = asAdmin(http.MethodGet, "/api/v1/tenants/"+acme.ID+"/quotas", nil)
		wantStatus(t, resp, body, http.StatusOK)
		if l := quotaLimit(t, body, "max_users"); l == nil || *l != 1000 {
			t.Errorf("max_users after the move to enterprise: %v, want 1000", l)
		}

		for _, c := range []struct {
			name   string
			body   map[string]string
			status int
			code   string
			field  string
		}{
			{"empty name", map[string]string{"name": ""}, http.StatusBadRequest, "invalid", "name"},
			{"empty plan", map[string]string{"plan": ""}, http.StatusBadRequest, "invalid", "plan"},
			{"unknown plan", map[string]string{"plan": "platinum"}, http.StatusBadRequest, "invalid", "plan"},
			{"another tenant's name", map[string]string{"name": "globex"}, http.StatusConflict, "conflict", "name"},
		} {
			t.Run(c.name, func(t *testing.T) {
				resp, body := asAdmin(http.MethodPatch, "/api/v1/tenants/"+acme.ID, c.body)
				wantFieldError(t, resp, body, c.status, c.code, c.field)
			})
		}
		resp, body = asAdmin(http.MethodGet, "/api/v1/tenants/"+acme.ID, nil)
		wantStatus(t, resp, body, http.StatusOK)
		if got := decodeJSON[tenant.Tenant](t, body); got.Name != "Acme Foods Group" || got.Plan != "enterprise" {
			t.Errorf("after refused updates: %s", body)
		}
		for _, id := range []string{uuid.NewString(), "not-a-uuid"} {
			resp, body = asAdmin(http.MethodPatch, "/api/v1/tenants/"+id, map[string]string{"name": "Nobody"})
			wantProblem(t, resp, body, http.StatusNotFound, "not_found")
		}
	})

	t.Run("list", func(t *testing.T) {
		resp, body := asAdmin(http.MethodGet, "/api/v1/tenants", nil)
		wantStatus(t, resp, body, http.StatusOK)
		var names []string
		for _, tn := range decodeJSON[struct{ Tenants []tenant.Tenant }](t, body).Tenants {
			names = append(names, tn.Name)
		}
		if !slices.Equal(names, []string{"Acme Foods Group", "Globex"}) {
			t.Errorf("tenants %v, want [Acme Foods Group Globex] by name", names)
		}
	})

	t.Run("tenant users", func(t *testing.T) {
		user := loginAs(t, in, "admin@acme.test", adminPassword, "tenant_admin", acme.ID)
		as := apiAs(t, in, user)
		resp, body := call(t, http.MethodGet, in.URL+"/api/v1/tenants", nil, bearer(user))
		wantProblem(t, resp, body, http.StatusForbidden, "forbidden")
		resp, body = as(http.MethodPost, "/api/v1/tenants", map[string]string{"name": "Acme Spinoff"})
		wantProblem(t, resp, body, http.StatusForbidden, "forbidden")
		resp, body = call(t, http.MethodGet, in.URL+"/api/v1/tenants/"+globex.ID, nil, bearer(user))
		wantProblem(t, resp, body, http.StatusNotFound, "not_found")
		resp, body = call(t, http.MethodGet, in.URL+"/api/v1/tenants/"+acme.ID, nil, bearer(user))
		wantStatus(t, resp, body, http.StatusOK)
		if got := decodeJSON[tenant.Tenant](t, body); got.ID != acme.ID || got.Name != "Acme Foods Group" {
			t.Errorf("own tenant %s", body)
		}
		resp, body = as(http.MethodPatch, "/api/v1/tenants/"+acme.ID, map[string]string{"plan": "default"})
		wantProblem(t, resp, body, http.StatusForbidden, "forbidden")
		resp, body = as(http.MethodPost, "/api/v1/tenants/"+acme.ID+"/suspend", map[string]string{})
		wantProblem(t, resp, body, http.StatusForbidden, "forbidden")
	})
}

// quotaLimit returns the limit of the named quota in a quota report.
func quotaLimit(t testing.TB, report []byte, name string) *int64 {
	t.Helper()
	for _, q := range decodeJSON[struct{ Quotas []quota.Status }](t, report).Quotas {
		if q.Name == name {
			return q.Limit
		}
	}
	t.Fatalf("no quota %s in %s", name, report)
	return nil
}

// TestTenantSuspension: a suspension made on one instance reaches the
// other within a second: the tenant's existing access tokens stop working
// (401), sign-in, refresh and terminal client credentials are refused
// (403), and another tenant is untouched. Reactivation restores them.
func TestTenantSuspension(t *testing.T) {
	cl := startCluster(t, 2)
	in0, in1 := cl[0], cl[1]
	admin := loginAdmin(t, in0)

	resp, body := call(t, http.MethodPost, in0.URL+"/api/v1/tenants", jsonBody(map[string]string{"name": "Soon Suspended"}), withJSON(bearer(admin)))
	wantStatus(t, resp, body, http.StatusCreated)
	tn := decodeJSON[tenant.Tenant](t, body)
	other := uuid.NewString()
	otherToken := loginAs(t, in1, "admin@other.test", adminPassword, "tenant_admin", other)

	tenantAdmin := loginAs(t, in0, "admin@suspended.test", adminPassword, "tenant_admin", tn.ID)
	resp, body = call(t, http.MethodPost, in0.URL+"/api/v1/terminals", jsonBody(map[string]string{"merchant_ref": "m-s"}), withJSON(bearer(tenantAdmin)))
	wantStatus(t, resp, body, http.StatusCreated)
	term := decodeJSON[auth.Terminal](t, body)
	grant := func(in *instance) (*http.Response, []byte) {
		t.Helper()
		h := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(term.ID+":"+term.Secret))}}
		return postForm(t, in.URL+"/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, h)
	}
	resp, body = grant(in1)
	wantStatus(t, resp, body, http.StatusOK)
	termToken := decodeJSON[authTokens](t, body).AccessToken

	// Tokens in use on instance 1 before the suspension.
	user := apiSignIn(t, in1, "admin@suspended.test")
	for _, tok := range []string{tenantAdmin, user.AccessToken, termToken} {
		if got := meStatus(t, in1, tok); got != http.StatusOK {
			t.Fatalf("before the suspension: /me %d", got)
		}
	}

	resp, body = call(t, http.MethodPost, in0.URL+"/api/v1/tenants/"+tn.ID+"/suspend", jsonBody(map[string]string{"reason": "unpaid invoices"}),
		withJSON(bearer(admin)))
	wantStatus(t, resp, body, http.StatusOK)
	if got := decodeJSON[tenant.Tenant](t, body); got.Status != "suspended" || got.SuspendedAt == nil {
		t.Fatalf("suspended tenant %s", body)
	}
	took := within(t, time.Second, "instance 1 refusing the suspended tenant's tokens", func() bool {
		return meStatus(t, in1, user.AccessToken) == http.StatusUnauthorized
	})
	t.Logf("the suspension reached instance 1 in %s", took)
	for _, tok := range []string{tenantAdmin, termToken} {
		resp, body := me(t, in1, "Bearer "+tok)
		wantProblem(t, resp, body, http.StatusUnauthorized, "unauthenticated")
	}
	resp, body = tryLogin(t, in1, "admin@suspended.test", adminPassword)
	wantProblem(t, resp, body, http.StatusForbidden, "forbidden")
	resp, body = refreshGrant(t, in1, user.RefreshToken)
	wantProblem(t, resp, body, http.StatusForbidden, "forbidden")
	resp, body = grant(in1)
	if p := wantProblem(t, resp, body, http.StatusForbidden, "forbidden"); p.Error != "invalid_client" {
		t.Errorf("client credentials of a suspended tenant's terminal: OAuth error %q, want invalid_client", p.Error)
	}
	// Another tenant is untouched.
	if got := meStatus(t, in1, otherToken); got != http.StatusOK {
		t.Errorf("another tenant's token after the suspension: %d", got)
	}
	// A suspended tenant's data stays: the platform administrator still
	// reads it.
	resp, body = call(t, http.MethodGet, in1.URL+"/api/v1/tenants/"+tn.ID, nil, bearer(admin))
	wantStatus(t, resp, body, http.StatusOK)
	if got := decodeJSON[tenant.Tenant](t, body); got.Status != "suspended" {
		t.Errorf("instance 1 reads the tenant as %s", body)
	}

	resp, body = call(t, http.MethodPost, in0.URL+"/api/v1/tenants/"+tn.ID+"/reactivate", nil, bearer(admin))
	wantStatus(t, resp, body, http.StatusOK)
	if got := decodeJSON[tenant.Tenant](t, body); got.Status != "active" || got.SuspendedAt != nil {
		t.Fatalf("reactivated tenant %s", body)
	}
	within(t, time.Second, "instance 1 signing the reactivated tenant's user in", func() bool {
		resp, _ := tryLogin(t, in1, "admin@suspended.test", adminPassword)
		return resp.StatusCode == http.StatusOK
	})
	resp, body = grant(in1)
	wantStatus(t, resp, body, http.StatusOK)

	// Unknown tenants, and a reason over 500 characters.
	resp, body = call(t, http.MethodPost, in0.URL+"/api/v1/tenants/"+uuid.NewString()+"/suspend", nil, bearer(admin))
	wantProblem(t, resp, body, http.StatusNotFound, "not_found")
	long := make([]byte, 501)
	for i := range long {
		long[i] = 'x'
	}
	resp, body = call(t, http.MethodPost, in0.URL+"/api/v1/tenants/"+tn.ID+"/suspend", jsonBody(map[string]string{"reason": string(long)}),
		withJSON(bearer(admin)))
	wantFieldError(t, resp, body, http.StatusBadRequest, "invalid", "reason")
}
