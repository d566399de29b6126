package auth

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
)

// A token revoked through /oauth2/revoke must stay revoked for as long as
// the verifier would accept it: until exp plus the clock skew the verifier
// allows, not only until exp. Before the fix the revocation was kept (in
// memory and in PostgreSQL) only until exp, so once pruned (or on an
// instance started after exp) the revoked token was accepted again for up to
// clockSkew.
func TestReviewRevokedAccessTokenStaysRevokedWithinSkew(t *testing.T) {
	s := newTestService(t)
	u := testUser(t, s, "revoked-skew@atrium.test", "a long enough password")
	ctx := context.Background()
	var mu sync.Mutex
	clock := time.Now().UTC()
	s.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }

	tok, _, exp, err := s.issue(tokenSpec{kind: principal.User, subject: u.ID, tenant: *u.TenantID, gen: 0, roles: []string{"viewer"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.principalFor(ctx, tok); err != nil {
		t.Fatalf("fresh token refused: %v", err)
	}
	if err := s.RevokeToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	// Just past exp but within the verifier's leeway.
	mu.Lock()
	clock = exp.Add(clockSkew / 2)
	mu.Unlock()
	s.revs.prune(s.now())
	if _, err := s.principalFor(ctx, tok); err == nil {
		t.Fatal("a revoked access token is accepted again after its revocation was pruned at exp (within the clock skew)")
	}
	var stored time.Time
	if err := s.tx.QueryRow(ctx, "test", `SELECT expires_at FROM revocations WHERE kind = 'jti'`, nil, &stored); err != nil {
		t.Fatal(err)
	}
	if stored.Before(exp.Add(clockSkew).Truncate(time.Second)) {
		t.Errorf("the stored revocation expires at %s, before the token stops verifying (%s)", stored, exp.Add(clockSkew))
	}
}

// A permission lookup that read PostgreSQL before a role change and stores
// its result after the change's invalidation arrived must not cache the old
// permissions (for permTTL): the change has to hold within a second.
func TestReviewPermCacheInvalidationNotLostToInFlightLoad(t *testing.T) {
	s := newTestService(t)
	u := testUser(t, s, "perm-race@atrium.test", "a long enough password")
	ctx := postgres.AllTenants(context.Background(), "test") // a platform user's rows

	// Arm a hook that runs between userPermissions' query and its cache
	// write (the second clock reading of the call): the role change commits
	// and its broadcast is applied exactly then.
	var calls int
	var hook func()
	s.now = func() time.Time {
		if hook != nil {
			calls++
			if calls == 2 {
				h := hook
				hook = nil
				h()
			}
		}
		return time.Now().UTC()
	}
	hook = func() {
		if err := s.tx.Exec(ctx, "test", `UPDATE user_roles SET role_id = (SELECT id FROM roles WHERE name = 'tenant_admin') WHERE user_id = $1`, u.ID); err != nil {
			t.Error(err)
		}
		s.apply(event{Kind: "perms", ID: u.ID})
	}
	_, perms, err := s.userPermissions(ctx, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(perms, "users:manage") {
		t.Fatalf("the in-flight load already saw the change: %v", perms)
	}
	_, perms, err = s.userPermissions(ctx, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(perms, "users:manage") {
		t.Errorf("after the invalidation the cache still serves the permissions from before the role change: %v", perms)
	}
}

// A password change or a disable that commits while a sign-in with the old
// credentials is between its password check and its session insert must not
// leave that sign-in with a working session: the change promises to end
// every session and token of the user.
func TestReviewLoginRacingRevocation(t *testing.T) {
	for _, c := range []struct {
		name   string
		change func(s *Service, ctx context.Context, id string) error
	}{
		{"password change", func(s *Service, ctx context.Context, id string) error {
			return s.ResetPassword(ctx, id, "a brand new password of the owner", "")
		}},
		{"disable", func(s *Service, ctx context.Context, id string) error {
			_, err := s.SetUserStatus(ctx, id, "disabled")
			return err
		}},
		{"logout everywhere", func(s *Service, ctx context.Context, id string) error {
			return s.revokeUser(ctx, id, "logout everywhere", "auth.logout_all", "")
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newTestService(t)
			const oldPassword = "the old, leaked password"
			u := testUser(t, s, "race-"+strings.ReplaceAll(c.name, " ", "-")+"@atrium.test", oldPassword)
			admin := principal.With(context.Background(), &principal.Principal{Kind: principal.User, ID: "0193a000-0000-7000-8000-00000000ad01",
				Permissions: []string{"users:manage", "users:read", "terminals:read", "payments:read", "gpu:read"}})
			// The first clock reading of a successful Login is openSession's:
			// the administrator's change commits right then.
			var hook func()
			s.now = func() time.Time {
				if h := hook; h != nil {
					hook = nil
					h()
				}
				return time.Now().UTC()
			}
			hook = func() {
				if err := c.change(s, admin, u.ID); err != nil {
					t.Errorf("change: %v", err)
				}
			}
			res, err := s.Login(context.Background(), u.Email, oldPassword, "test")
			if err != nil {
				return // refused: fine
			}
			if _, err := s.principalFor(context.Background(), res.AccessToken); err == nil {
				t.Errorf("the access token of a sign-in that raced the %s works", c.name)
			}
			if _, err := s.Refresh(context.Background(), res.RefreshToken); err == nil {
				t.Errorf("the refresh token of a sign-in that raced the %s works", c.name)
			}
		})
	}
}

// The schedule rotates keys with no principal in the context: the rotation
// and its audit record (a platform event, no tenant) must commit under
// row-level security, or keys stop rotating and, once the current key is
// too old, no instance can start.
func TestReviewScheduledRotationCommitsUnderRLS(t *testing.T) {
	s := newTestService(t)
	ctx := context.Background()
	changed, err := s.keys.ensure(ctx, true)
	if err != nil || !changed {
		t.Fatalf("rotation without a principal: changed %v, err %v", changed, err)
	}
	var n int
	if err := s.tx.QueryRow(postgres.AllTenants(ctx, "test"), "test",
		`SELECT count(*) FROM audit_log WHERE action LIKE 'auth.keys%' AND tenant_id IS NULL`, nil, &n); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Error("the rotation left no audit record")
	}
}
