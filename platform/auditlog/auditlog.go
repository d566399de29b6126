// Package auditlog appends to the audit log that every module shares: who
// did what to which object, and from where. A record is written in the
// same transaction as the change it describes, so the two commit together.
package auditlog

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

// Actor names who is acting in ctx: "user:<id>", "terminal:<id>", or
// "system" when no one is signed in (workers, the operator's commands).
func Actor(ctx context.Context) string {
	if p := principal.From(ctx); p != nil {
		return p.Subject()
	}
	return "system"
}

// Record appends one entry inside tx. tenant is "" for platform-level
// events; the request id and client address come from ctx.
func Record(ctx context.Context, tx pgx.Tx, at time.Time, tenant, actor, action, object string, detail map[string]any) error {
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
