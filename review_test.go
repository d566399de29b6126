package main

import (
	"context"
	"net/http"
	"net/url"
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
	if err := inst.app.pool.QueryRow(context.Background(), `SELECT id FROM sessions WHERE user_id = $1`, userID).Scan(&sid); err != nil {
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
