package main

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/atriumhq/atrium/modules/auth"
	"github.com/atriumhq/atrium/modules/gpu"
	"github.com/atriumhq/atrium/modules/payment"
	"github.com/atriumhq/atrium/modules/quota"
	"github.com/atriumhq/atrium/modules/tenant"
)

// The isolation probe: tenant B's administrator, holding every permission
// a tenant can hold, calls every parameterised API route with the ids of
// tenant A's objects. Each must answer 404, exactly as for an id that
// exists nowhere, or refuse B for want of a permission before looking at
// the id at all; never 200 or 204, never a 500, never a body that carries
// A's data. Routes of later modules join automatically: the router itself
// is walked.

// probeParam names a path parameter by the collection it follows, since
// chi's parameter names ({id}) are the same for every kind of object.
func probeParam(path string, i int) string {
	segs := strings.Split(path, "/")
	if i > 0 {
		return segs[i-1] + "/" + segs[i]
	}
	return segs[i]
}

// probeBodies are valid request bodies for the routes that validate
// their body before they look the object up: with "{}" they would answer
// 400 and the probe would not reach the lookup it is meant to test.
var probeBodies = map[string]any{
	"POST /api/v1/users/{id}/status":          map[string]string{"status": "disabled"},
	"POST /api/v1/users/{id}/password":        map[string]string{"password": "a new password of B's choosing"},
	"PUT /api/v1/users/{id}/roles":            map[string][]string{"roles": {"viewer"}},
	"POST /api/v1/terminals/{id}/status":      map[string]string{"status": "disabled"},
	"PATCH /api/v1/tenants/{id}":              map[string]string{"name": "Taken over by B"},
	"POST /api/v1/tenants/{id}/suspend":       map[string]string{"reason": "B says so"},
	"PUT /api/v1/tenants/{id}/quotas/{quota}": map[string]int{"value": 0},
	"POST /api/v1/models/{id}/versions": map[string]any{"version": "b", "artifact_uri": "s3://b", "command": "atrium fake-model --port {port}", "port": 8000,
		"sharing": "exclusive"},
}

// tenantA is what tenant A owns, created through the API.
type tenantA struct {
	tenant, adminID, adminToken         string
	user, userEmail, userToken, session string
	terminal, role, roleName            string
	merchant, payment                   string
	model, deployment                   string
	// ids and emails are every id and email above, for list checks.
	ids, emails []string
	// params maps each path parameter to the object of A's it names.
	params map[string]string
}

func setUpTenantA(t *testing.T, in *instance) *tenantA {
	t.Helper()
	a := &tenantA{tenant: uuid.NewString()}
	a.adminToken = loginAs(t, in, "admin@a.iso.test", adminPassword, "tenant_admin", a.tenant)
	callA := apiAs(t, in, a.adminToken)
	asA := func(method, path string, body any) []byte {
		t.Helper()
		resp, b := callA(method, path, body)
		if resp.StatusCode/100 != 2 {
			t.Fatalf("A's %s %s: %d %s", method, path, resp.StatusCode, b)
		}
		return b
	}
	a.adminID = decodeJSON[meBody](t, asA(http.MethodGet, "/api/v1/me", nil)).User.ID

	a.userEmail = "viewer@a.iso.test"
	a.user = decodeJSON[auth.User](t, asA(http.MethodPost, "/api/v1/users",
		map[string]string{"email": a.userEmail, "password": adminPassword})).ID
	a.userToken = apiSignIn(t, in, a.userEmail).AccessToken
	sessions := decodeJSON[struct{ Sessions []auth.Session }](t, asA(http.MethodGet, "/api/v1/users/"+a.user+"/sessions", nil)).Sessions
	if len(sessions) != 1 {
		t.Fatalf("A's user has %d sessions, want 1", len(sessions))
	}
	a.session = sessions[0].ID

	a.merchant = decodeJSON[payment.Merchant](t, asA(http.MethodPost, "/api/v1/merchants", map[string]any{
		"ref": "m-a", "name": "Shop A", "mcc": "5411", "settlement_account": "A-ACCT"})).ID
	term := decodeJSON[auth.Terminal](t, asA(http.MethodPost, "/api/v1/terminals", map[string]string{"merchant_ref": "m-a", "name": "Till A"}))
	a.terminal = term.ID
	basic := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(term.ID+":"+term.Secret))}}
	resp, body := postForm(t, in.URL+"/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, basic)
	wantStatus(t, resp, body, http.StatusOK)
	resp, body = post(t, in, decodeJSON[authTokens](t, body).AccessToken, "/api/v1/payments", uuid.NewString(), cardPayment(1234))
	wantStatus(t, resp, body, http.StatusCreated)
	a.payment = decodeJSON[payment.Payment](t, body).ID
	a.roleName = "a_auditor"
	a.role = decodeJSON[auth.Role](t, asA(http.MethodPost, "/api/v1/roles",
		map[string]any{"name": a.roleName, "permissions": []string{"audit:read"}})).ID

	model := decodeJSON[gpu.Model](t, asA(http.MethodPost, "/api/v1/models", map[string]any{"name": "model-a",
		"version": map[string]any{"version": "1", "artifact_uri": "s3://a/1", "command": "atrium fake-model --port {port}", "port": 8000, "sharing": "exclusive"}}))
	a.model = model.ID
	a.deployment = decodeJSON[gpu.Deployment](t, asA(http.MethodPost, "/api/v1/deployments", map[string]any{
		"name": "dep-a", "model_id": model.ID, "replicas": 0, "min_replicas": 0})).ID

	a.ids = []string{a.tenant, a.adminID, a.user, a.session, a.terminal, a.role, a.merchant, a.payment, a.model, a.deployment}
	a.emails = []string{"admin@a.iso.test", a.userEmail}
	// The object of A's that each path parameter names. A route with a
	// parameter missing here fails the probe: add the id of an object of
	// tenant A's of that kind (created above) when you add the route.
	a.params = map[string]string{
		"tenants/{id}":       a.tenant,
		"users/{id}":         a.user,
		"sessions/{id}":      a.session,
		"terminals/{id}":     a.terminal,
		"roles/{id}":         a.role,
		"merchants/{id}":     a.merchant,
		"payments/{id}":      a.payment,
		"models/{id}":        a.model,
		"deployments/{id}":   a.deployment,
		"replicas/{replica}": "01900000-0000-7000-8000-000000000000",
		// GPUs are the platform's: re-probing is for platform administrators.
		"devices/{uuid}": "GPU-00000000-0000-0000-0000-000000000000",
		"quotas/{quota}": "max_users",
		// Rate-limit rules are platform settings, no tenant's: a tenant's
		// administrator must be refused them like any id.
		"rate-limits/{id}": "tenant-daily",
		// Bank channels are the platform's too.
		"payment-channels/{name}": "simbank",
	}
	return a
}

// fill replaces each path parameter of route with the id params gives
// it, and reports the parameters it has no id for.
func fill(route string, params map[string]string, id func(name, v string) string) (string, []string) {
	segs := strings.Split(route, "/")
	var missing []string
	for i, s := range segs {
		if !strings.HasPrefix(s, "{") {
			continue
		}
		name := probeParam(route, i)
		v, ok := params[name]
		if !ok {
			missing = append(missing, name)
			continue
		}
		segs[i] = id(name, v)
	}
	return strings.Join(segs, "/"), missing
}

// probeProblem is what the probe reads of a problem body.
type probeProblem struct {
	Code   string `json:"code"`
	Detail string `json:"detail"`
}

func TestTenantIsolationProbe(t *testing.T) {
	in := startPaymentCluster(t, 1)[0]
	a := setUpTenantA(t, in)
	tenantB := uuid.NewString()
	adminB := loginAs(t, in, "admin@b.iso.test", adminPassword, "tenant_admin", tenantB)

	asB := apiAs(t, in, adminB)
	// probe calls as B, with an Idempotency-Key on POSTs (the payment
	// routes refuse a POST without one before any lookup).
	probe := func(method, path string, body any) (*http.Response, []byte) {
		t.Helper()
		h := bearer(adminB)
		if body != nil {
			h = withJSON(h)
		}
		if method == http.MethodPost {
			h.Set("Idempotency-Key", "probe-"+uuid.NewString())
		}
		var rd io.Reader
		if body != nil {
			rd = jsonBody(body)
		}
		return call(t, method, in.URL+path, rd, h)
	}
	leaks := func(body []byte) []string {
		var out []string
		for _, s := range append(slices.Clone(a.ids), append(a.emails, a.roleName)...) {
			if strings.Contains(string(body), s) {
				out = append(out, s)
			}
		}
		return out
	}

	// Lists first, before B has sent any of A's ids anywhere.
	t.Run("lists", func(t *testing.T) {
		for _, path := range []string{"/api/v1/users", "/api/v1/terminals", "/api/v1/roles", "/api/v1/audit", "/api/v1/quotas",
			"/api/v1/merchants", "/api/v1/payments"} {
			resp, body := asB(http.MethodGet, path, nil)
			wantStatus(t, resp, body, http.StatusOK)
			if l := leaks(body); len(l) > 0 {
				t.Errorf("GET %s as B's administrator shows tenant A's %v: %s", path, l, body)
			}
		}
		// And A, who sees its own objects in the same lists, proves the
		// check can fail.
		resp, body := call(t, http.MethodGet, in.URL+"/api/v1/users", nil, bearer(a.adminToken))
		wantStatus(t, resp, body, http.StatusOK)
		if !strings.Contains(string(body), a.user) {
			t.Fatalf("A's own user list lacks A's user: %s", body)
		}
	})

	probed := 0
	for _, rt := range routesOf(t, in.app.router) {
		method, route, _ := strings.Cut(rt, " ")
		if !strings.HasPrefix(route, "/api/v1/") || !strings.Contains(route, "{") {
			continue
		}
		path, missing := fill(route, a.params, func(_, v string) string { return v })
		if len(missing) > 0 {
			t.Errorf("%s: the isolation probe has no object of tenant A's for path parameter(s) %v. "+
				"Create one in setUpTenantA (isolation_test.go) and add it to tenantA.params, so that the probe "+
				"checks that other tenants cannot reach it through this route", rt, missing)
			continue
		}
		// The same call with ids that exist nowhere: A's ids must be
		// answered the same way, or the answer tells B they exist.
		nowhere, _ := fill(route, a.params, func(name, v string) string {
			if name == "quotas/{quota}" {
				return v
			}
			return uuid.NewString()
		})
		body, ok := probeBodies[rt]
		if !ok && method != http.MethodGet && method != http.MethodDelete {
			body = map[string]any{}
		}
		probed++
		t.Run(rt, func(t *testing.T) {
			resp, got := probe(method, path, body)
			respNowhere, gotNowhere := probe(method, nowhere, body)
			// The problem's instance member echoes the path B sent; beyond
			// it, no id of A's may appear.
			if l := leaks([]byte(strings.ReplaceAll(string(got), path, ""))); len(l) > 0 {
				t.Errorf("the answer carries tenant A's %v: %s", l, got)
			}
			var p, pNowhere probeProblem
			_ = json.Unmarshal(got, &p)
			_ = json.Unmarshal(gotNowhere, &pNowhere)
			switch {
			case resp.StatusCode == http.StatusNotFound && p.Code == "not_found":
			case resp.StatusCode == http.StatusForbidden && p.Code == "forbidden" && respNowhere.StatusCode == http.StatusForbidden:
				// Refused for a permission B lacks, whatever the id: the
				// answer says nothing of A's object.
			case resp.StatusCode == http.StatusBadRequest:
				t.Fatalf("%s answered 400 %s: the probe's body does not pass validation, so the lookup was never tried. "+
					"Give the route a valid body in probeBodies (isolation_test.go)", rt, got)
			default:
				t.Fatalf("%s %s as B's administrator with A's ids: %d %s; want 404 not_found", method, path, resp.StatusCode, got)
			}
			if resp.StatusCode != respNowhere.StatusCode || p.Code != pNowhere.Code || p.Detail != pNowhere.Detail {
				t.Errorf("A's ids answer %d %s %q, ids that exist nowhere %d %s %q: the difference tells B that A's objects exist",
					resp.StatusCode, p.Code, p.Detail, respNowhere.StatusCode, pNowhere.Code, pNowhere.Detail)
			}
		})
	}
	if probed < 10 {
		t.Fatalf("only %d parameterised routes probed: is the router walked?", probed)
	}

	// Nothing of A's changed: its user is active with its role, its
	// session and password work, its terminal is active and authenticates,
	// its tenant is active and unrenamed, its quotas carry no override.
	t.Run("A unchanged", func(t *testing.T) {
		asA := func(path string) []byte {
			t.Helper()
			resp, body := call(t, http.MethodGet, in.URL+path, nil, bearer(a.adminToken))
			wantStatus(t, resp, body, http.StatusOK)
			return body
		}
		if u := decodeJSON[auth.User](t, asA("/api/v1/users/"+a.user)); u.Status != "active" || !slices.Equal(u.Roles, []string{"viewer"}) {
			t.Errorf("A's user after B's attempts: %+v", u)
		}
		if got := meStatus(t, in, a.userToken); got != http.StatusOK {
			t.Errorf("A's user's session after B's attempts: %d", got)
		}
		apiSignIn(t, in, a.userEmail) // the password is unchanged
		ts := decodeJSON[struct{ Terminals []auth.Terminal }](t, asA("/api/v1/terminals")).Terminals
		if len(ts) != 1 || ts[0].ID != a.terminal || ts[0].Status != "active" {
			t.Errorf("A's terminals after B's attempts: %+v", ts)
		}
		if tn := decodeJSON[tenant.Tenant](t, asA("/api/v1/tenants/"+a.tenant)); tn.Status != "active" || tn.Name != "Tenant "+a.tenant {
			t.Errorf("A's tenant after B's attempts: %+v", tn)
		}
		if p := decodeJSON[payment.Payment](t, asA("/api/v1/payments/"+a.payment)); p.Status != payment.StatusSucceeded || p.Refunded != 0 || len(p.Refunds) != 0 {
			t.Errorf("A's payment after B's attempts: %+v", p)
		}
		for _, q := range decodeJSON[struct{ Quotas []quota.Status }](t, asA("/api/v1/tenants/"+a.tenant+"/quotas")).Quotas {
			if q.Overridden {
				t.Errorf("A's quota %s has an override after B's attempts", q.Name)
			}
		}
	})
}
