package quota

import (
	"context"
	"testing"
	"time"

	"github.com/atriumhq/atrium/platform/errs"
)

// TestReservationExpiry: the sweep (expireReservations, every 30 s on
// each instance) releases held reservations past their expiry in every
// tenant, giving their units back, and leaves committed and unexpired ones
// alone; an expired reservation cannot be committed, before the sweep or
// after it, and releasing it again is a no-op.
func TestReservationExpiry(t *testing.T) {
	ctx := context.Background()
	env := newQuotaEnv(t)
	s, owner, offset := env.s, env.owner, env.offset
	tenantA, tenantB := env.tenant(t), env.tenant(t)
	usage := func(tenant string) (used, reserved int64) {
		t.Helper()
		if err := owner.QueryRow(ctx, `SELECT used, reserved FROM quota_usage WHERE tenant_id = $1 AND quota = 'max_storage_gb'`, tenant).
			Scan(&used, &reserved); err != nil {
			t.Fatal(err)
		}
		return used, reserved
	}
	reserve := func(tenant string, n int64, ttl time.Duration) *Reservation {
		t.Helper()
		r, err := s.Reserve(ctx, tenant, "max_storage_gb", n, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	// Made two hours ago: these expired an hour ago, except the last.
	offset.Store(int64(-2 * time.Hour))
	expiredA := reserve(tenantA, 2, time.Hour)
	expiredB := reserve(tenantB, 1, time.Hour)
	committed := reserve(tenantA, 1, time.Hour)
	if err := s.Commit(ctx, tenantA, committed.ID); err != nil {
		t.Fatal(err)
	}
	held := reserve(tenantA, 3, 3*time.Hour)
	offset.Store(0)

	// Before the sweep: expired, so no commit, though the units are
	// still held.
	if err := s.Commit(ctx, tenantA, expiredA.ID); errs.CodeOf(err) != errs.Conflict {
		t.Errorf("committing an expired reservation before the sweep: %v, want a conflict", err)
	}
	if used, reserved := usage(tenantA); used != 1 || reserved != 5 {
		t.Errorf("tenant A before the sweep: used %d reserved %d, want 1 and 5", used, reserved)
	}

	n, err := s.expireReservations(ctx)
	if err != nil || n == 0 {
		t.Fatalf("expireReservations = %d, %v", n, err)
	}
	if used, reserved := usage(tenantA); used != 1 || reserved != 3 {
		t.Errorf("tenant A after the sweep: used %d reserved %d, want 1 and 3", used, reserved)
	}
	if used, reserved := usage(tenantB); used != 0 || reserved != 0 {
		t.Errorf("tenant B after the sweep: used %d reserved %d, want 0 and 0", used, reserved)
	}
	states := map[string]string{}
	rows, err := owner.Query(ctx, `SELECT id::text, state FROM quota_reservations`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, st string
		if err := rows.Scan(&id, &st); err != nil {
			t.Fatal(err)
		}
		states[id] = st
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	for r, want := range map[*Reservation]string{expiredA: "released", expiredB: "released", committed: "committed", held: "reserved"} {
		if states[r.ID] != want {
			t.Errorf("reservation of %d: %s, want %s", r.Amount, states[r.ID], want)
		}
	}

	// After the sweep: released is final, and a second release or sweep
	// changes nothing.
	if err := s.Commit(ctx, tenantA, expiredA.ID); errs.CodeOf(err) != errs.Conflict {
		t.Errorf("committing a swept reservation: %v, want a conflict", err)
	}
	if err := s.Release(ctx, tenantA, expiredA.ID); err != nil {
		t.Errorf("releasing a swept reservation: %v", err)
	}
	if n, err := s.expireReservations(ctx); err != nil || n != 0 {
		t.Errorf("a second sweep: %d, %v; want nothing to do", n, err)
	}
	if used, reserved := usage(tenantA); used != 1 || reserved != 3 {
		t.Errorf("tenant A at the end: used %d reserved %d, want 1 and 3", used, reserved)
	}
	// The held reservation is still good.
	if err := s.Commit(ctx, tenantA, held.ID); err != nil {
		t.Errorf("committing an unexpired reservation: %v", err)
	}
	if used, reserved := usage(tenantA); used != 4 || reserved != 0 {
		t.Errorf("tenant A after the commit: used %d reserved %d, want 4 and 0", used, reserved)
	}
}

// A reservation that expired still holds its units until the sweep, but a
// take that would be refused for them gives them back first: expired
// reservations never refuse anyone.
func TestExpiredReservationsDoNotRefuse(t *testing.T) {
	ctx := context.Background()
	env := newQuotaEnv(t)
	s, owner, offset := env.s, env.owner, env.offset
	tenant := env.tenant(t)
	if _, err := owner.Exec(ctx, `INSERT INTO quota_overrides (tenant_id, quota, value) VALUES ($1, 'max_storage_gb', 4)`, tenant); err != nil {
		t.Fatal(err)
	}
	offset.Store(int64(-2 * time.Hour)) // reserved two hours ago, for one hour
	stale, err := s.Reserve(ctx, tenant, "max_storage_gb", 3, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	offset.Store(0)
	if _, err := s.Reserve(ctx, tenant, "max_storage_gb", 4, time.Minute); err != nil {
		t.Fatalf("a reservation refused for units an expired one held: %v", err)
	}
	var state string
	if err := owner.QueryRow(ctx, `SELECT state FROM quota_reservations WHERE id = $1`, stale.ID).Scan(&state); err != nil || state != "released" {
		t.Fatalf("the expired reservation is %q (%v), want released", state, err)
	}
	if _, err := s.Reserve(ctx, tenant, "max_storage_gb", 1, time.Minute); errs.CodeOf(err) != errs.QuotaExceeded {
		t.Fatalf("past the limit: %v, want quota_exceeded", err)
	}
}
