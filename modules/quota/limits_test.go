package quota

import (
	"context"
	"testing"
	"time"

	"github.com/atriumhq/atrium/platform/testenv"
)

// The limits cache on the rate limiter's path: a tenant's invalidation
// takes effect at its next check; after a resubscription ("*") the cached
// limits are served at once while one background load refreshes them.
func TestLimitsCache(t *testing.T) {
	ctx := context.Background()
	env := newQuotaEnv(t)
	s, owner := env.s, env.owner
	tenant := env.tenant(t)
	override := func(v int64) {
		t.Helper()
		if _, err := owner.Exec(ctx, `INSERT INTO quota_overrides (tenant_id, quota, value) VALUES ($1, 'payments_per_second', $2)
			ON CONFLICT (tenant_id, quota) DO UPDATE SET value = excluded.value`, tenant, v); err != nil {
			t.Fatal(err)
		}
	}
	limit := func() int64 {
		t.Helper()
		l, err := s.Limits(ctx, tenant)
		if err != nil {
			t.Fatal(err)
		}
		return l["payments_per_second"]
	}
	if got := limit(); got != 50 {
		t.Fatalf("default plan: %d, want 50", got)
	}
	override(7)
	if got := limit(); got != 50 {
		t.Fatalf("without an invalidation the cached limit holds: %d", got)
	}
	s.forget(tenant)
	if got := limit(); got != 7 {
		t.Fatalf("after the tenant's invalidation: %d, want 7", got)
	}
	override(9)
	s.forget("*")
	if got := limit(); got != 7 {
		t.Fatalf("after a resubscription the cached limit is served while it refreshes: %d, want 7", got)
	}
	testenv.Eventually(t, 2*time.Second, "the background refresh", func() bool { return limit() == 9 })
}
