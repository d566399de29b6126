-- The audit log is append-only and shared by every module: who did what to
-- which object, and from where. Modules write to it in the same transaction
-- as the change they record.

-- +goose Up
CREATE TABLE audit_log (
    id          uuid        PRIMARY KEY,             -- UUIDv7, time-ordered
    at          timestamptz NOT NULL DEFAULT now(),
    tenant_id   uuid,                                -- NULL for platform-level events
    actor       text        NOT NULL,                -- "user:<id>", "terminal:<id>", "system"
    action      text        NOT NULL,                -- e.g. "auth.login", "tenant.suspend"
    object      text        NOT NULL DEFAULT '',     -- e.g. "user:<id>"
    client_ip   inet,
    request_id  text        NOT NULL DEFAULT '',
    detail      jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_tenant_at ON audit_log (tenant_id, at DESC);
CREATE INDEX audit_log_at ON audit_log (at DESC);

-- +goose Down
DROP TABLE audit_log;
