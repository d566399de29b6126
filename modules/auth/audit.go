package auth

import (
	"context"
	"encoding/json"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
)

// AuditEntry is one audit log record.
type AuditEntry struct {
	ID        string          `json:"id"`
	At        time.Time       `json:"at"`
	TenantID  *string         `json:"tenant_id"`
	Actor     string          `json:"actor"`
	Action    string          `json:"action"`
	Object    string          `json:"object"`
	ClientIP  *string         `json:"client_ip"`
	RequestID string          `json:"request_id"`
	Detail    json.RawMessage `json:"detail"`
}

// Audit lists the newest audit records visible to the caller (platform
// administrators see all, tenant users their tenant's), newest first,
// before the given time when set.
func (s *Service) Audit(ctx context.Context, before time.Time, limit int) ([]AuditEntry, error) {
	if err := principal.Check(ctx, "audit:read"); err != nil {
		return nil, err
	}
	p := principal.From(ctx)
	if before.IsZero() {
		before = s.now().Add(time.Hour)
	}
	return postgres.Collect(ctx, s.tx, "auth.audit_list", func(r pgx.CollectableRow) (AuditEntry, error) {
		var e AuditEntry
		err := r.Scan(&e.ID, &e.At, &e.TenantID, &e.Actor, &e.Action, &e.Object, &e.ClientIP, &e.RequestID, &e.Detail)
		return e, err
	}, `SELECT id, at, tenant_id, actor, action, object, host(client_ip), request_id, detail
		FROM audit_log WHERE at < $1 AND ($2 = '' OR tenant_id::text = $2) ORDER BY at DESC LIMIT $3`, before, p.TenantID, limit)
}
