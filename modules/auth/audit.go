package auth

import (
	"context"
	"encoding/json"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/httpx"
	"github.com/atriumhq/atrium/platform/logging"
	"github.com/atriumhq/atrium/platform/principal"
)

// actorOf names who is acting in ctx for the audit log.
func actorOf(ctx context.Context) string {
	if p := principal.From(ctx); p != nil {
		return p.Subject()
	}
	return "system"
}

// audit appends an auth event to the audit log inside tx, so the record
// and the change commit together.
func audit(ctx context.Context, tx pgx.Tx, at time.Time, tenant, actor, action, object string, detail map[string]any) error {
	if detail == nil {
		detail = map[string]any{}
	}
	d, err := json.Marshal(detail)
	if err != nil {
		return err
	}
	var tenantID *string
	if tenant != "" {
		tenantID = &tenant
	}
	var ip *string
	if v := httpx.ClientIP(ctx); v != "" {
		ip = &v
	}
	_, err = tx.Exec(ctx, `INSERT INTO audit_log (id, at, tenant_id, actor, action, object, client_ip, request_id, detail)
		VALUES ($1, $2, $3, $4, $5, $6, $7::inet, $8, $9)`,
		uuid.Must(uuid.NewV7()), at, tenantID, actor, action, object, ip, logging.RequestID(ctx), d)
	return err
}

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
	rows, err := s.pool.Query(ctx, `SELECT id, at, tenant_id, actor, action, object, host(client_ip), request_id, detail
		FROM audit_log WHERE at < $1 AND ($2 = '' OR tenant_id::text = $2) ORDER BY at DESC LIMIT $3`, before, p.TenantID, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (AuditEntry, error) {
		var e AuditEntry
		err := r.Scan(&e.ID, &e.At, &e.TenantID, &e.Actor, &e.Action, &e.Object, &e.ClientIP, &e.RequestID, &e.Detail)
		return e, err
	})
}
