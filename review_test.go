package main

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/atriumhq/atrium/modules/auth"
)

// tenantAudit returns the audit log as the tenant's administrator sees it.
func tenantAudit(t *testing.T, in *instance, adminToken string) []auth.AuditEntry {
	t.Helper()
	resp, body := call(t, http.MethodGet, in.URL+"/api/v1/audit?limit=500", nil, bearer(adminToken))
	wantStatus(t, resp, body, http.StatusOK)
	return decodeJSON[struct{ Entries []auth.AuditEntry }](t, body).Entries
}

func hasEntry(entries []auth.AuditEntry, action, object string) bool {
	for _, e := range entries {
		if e.Action == action && e.Object == object {
			return true
		}
	}
	return false
}

// A tenant user's "log out everywhere" is an auth event of the tenant: the
// tenant's administrator must find it in the tenant's audit log (it was
// recorded with no tenant, visible only to platform administrators).
func TestReviewLogoutAllAuditedInTenant(t *testing.T) {
	inst := startCluster(t, 1)[0]
	tenant := uuid.NewString()
	admin := loginAs(t, inst, "admin@logoutall.test", adminPassword, "tenant_admin", tenant)
	userID := newUser(t, inst, "user@logoutall.test", "viewer", tenant)
	tok := apiSignIn(t, inst, "user@logoutall.test")

	resp, body := call(t, http.MethodPost, inst.URL+"/api/v1/auth/logout-all", nil, bearer(tok.AccessToken))
	wantStatus(t, resp, body, http.StatusNoContent)
	if !hasEntry(tenantAudit(t, inst, admin), "auth.logout_all", "user:"+userID) {
		t.Error("the tenant's audit log does not show the user's logout everywhere")
	}
}

// Ending a session through the revocation endpoint (what the UI's sign-out
// does once the access cookie has expired) is an auth event: it must be in
// the audit log like a logout.
func TestReviewRevokeEndpointAudited(t *testing.T) {
	inst := startCluster(t, 1)[0]
	tenant := uuid.NewString()
	admin := loginAs(t, inst, "admin@revoke.test", adminPassword, "tenant_admin", tenant)
	userID := newUser(t, inst, "user@revoke.test", "viewer", tenant)
	tok := apiSignIn(t, inst, "user@revoke.test")
	var sid string
	if err := inst.app.ownerPool.QueryRow(context.Background(), `SELECT id FROM sessions WHERE user_id = $1`, userID).Scan(&sid); err != nil {
		t.Fatal(err)
	}

	resp, body := postForm(t, inst.URL+"/oauth2/revoke", url.Values{"token": {tok.RefreshToken}}, nil)
	wantStatus(t, resp, body, http.StatusOK)
	if resp, body := refreshGrant(t, inst, tok.RefreshToken); resp.StatusCode == http.StatusOK {
		t.Fatalf("the revoked refresh token still works: %s", body)
	}
	ended := false
	for _, e := range tenantAudit(t, inst, admin) {
		if e.Object == "session:"+sid && e.Action != "auth.login.success" {
			ended = true
		}
	}
	if !ended {
		t.Error("the audit log does not show the session ended through /oauth2/revoke")
	}
}

// TestNoPrivilegeEscalation: users:manage through a custom role does not
// make its holder a tenant administrator: they grant only what they hold
// and act only on users who hold nothing more.
func TestNoPrivilegeEscalation(t *testing.T) {
	in := startCluster(t, 1)[0]
	const tenant = "0193a000-0000-7000-8000-0000000e5c01"
	admin := bearer(loginAs(t, in, "esc-admin@atrium.test", adminPassword, "tenant_admin", tenant))
	h := func(b http.Header) http.Header { b = b.Clone(); b.Set("Content-Type", "application/json"); return b }
	post := func(hdr http.Header, method, path, body string) (int, string) {
		resp, b := call(t, method, in.URL+path, strings.NewReader(body), h(hdr))
		return resp.StatusCode, string(b)
	}
	if st, b := post(admin, "POST", "/api/v1/roles", `{"name":"user_manager","permissions":["users:manage","users:read"]}`); st != 201 {
		t.Fatalf("create role: %d %s", st, b)
	}
	mgr := bearer(loginAs(t, in, "esc-mgr@atrium.test", adminPassword, "viewer", tenant))
	var mgrID string
	for _, u := range decodeJSON[struct {
		Users []struct{ ID, Email string } `json:"users"`
	}](t, []byte(func() string { _, b := post(admin, "GET", "/api/v1/users", ""); return b }())).Users {
		if u.Email == "esc-mgr@atrium.test" {
			mgrID = u.ID
		}
	}
	if st, b := post(admin, "PUT", "/api/v1/users/"+mgrID+"/roles", `{"roles":["user_manager"]}`); st != 200 {
		t.Fatalf("grant user_manager: %d %s", st, b)
	}
	adminID := ""
	resp, body := call(t, "GET", in.URL+"/api/v1/me", nil, admin)
	if resp.StatusCode == 200 {
		adminID = decodeJSON[struct {
			User struct{ ID string } `json:"user"`
		}](t, body).User.ID
	}
	for _, tc := range []struct{ name, method, path, body string }{
		{"create a tenant admin", "POST", "/api/v1/users", `{"email":"esc-new@atrium.test","password":"a long enough password","roles":["tenant_admin"]}`},
		{"promote self", "PUT", "/api/v1/users/" + mgrID + "/roles", `{"roles":["tenant_admin"]}`},
		{"reset the tenant admin's password", "POST", "/api/v1/users/" + adminID + "/password", `{"password":"taken over at last!"}`},
		{"disable the tenant admin", "POST", "/api/v1/users/" + adminID + "/status", `{"status":"disabled"}`},
	} {
		if st, b := post(mgr, tc.method, tc.path, tc.body); st != http.StatusForbidden {
			t.Errorf("%s: %d %s, want 403", tc.name, st, b)
		}
	}
	if st, b := post(mgr, "POST", "/api/v1/users", `{"email":"esc-peer@atrium.test","password":"a long enough password","roles":["user_manager"]}`); st != 201 {
		t.Errorf("granting a role within one's own permissions: %d %s", st, b)
	}

	// Changing one's own password needs the current one.
	if st, b := post(mgr, "POST", "/api/v1/users/"+mgrID+"/password", `{"password":"a new password for me"}`); st != 400 || !strings.Contains(b, "current_password") {
		t.Errorf("own password change without the current one: %d %s", st, b)
	}
	if st, b := post(mgr, "POST", "/api/v1/users/"+mgrID+"/password", `{"password":"a new password for me","current_password":"`+adminPassword+`"}`); st != 204 {
		t.Errorf("own password change: %d %s", st, b)
	}
}
