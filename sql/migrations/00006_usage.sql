-- Usage metering: what each tenant used per UTC day, the record billing
-- reads. Instances count in memory, push to Redis every second and flush
-- Redis to these tables in batches (modules/quota/metering.go); each batch
-- is applied exactly once, guarded by its id in usage_flushes.
--
-- Metrics: api_calls, payments, payment_amount:<CUR> (minor units of the
-- ISO 4217 currency), gpu_seconds. Units are integers; a day's row only
-- grows.

-- +goose Up
CREATE TABLE usage_daily (
    tenant_id  uuid        NOT NULL REFERENCES tenants (id),
    day        date        NOT NULL,
    metric     text        NOT NULL CHECK (metric ~ '^[a-z][a-z0-9_]{0,39}(:[A-Z]{3})?$'),
    units      bigint      NOT NULL CHECK (units >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, day, metric)
);

ALTER TABLE usage_daily ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_daily FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON usage_daily
    USING (tenant_id = (SELECT atrium_tenant()) OR (SELECT atrium_all_tenants()))
    WITH CHECK (tenant_id = (SELECT atrium_tenant()) OR (SELECT atrium_all_tenants()));
-- The record of use is never deleted by the application.
GRANT SELECT, INSERT, UPDATE ON usage_daily TO atrium_app;

-- The batches already applied: a flush inserts its batch id in the same
-- transaction as the counts, so a retried batch finds its id and adds
-- nothing. Platform-level (no tenant), pruned after 7 days; a batch older
-- than 6 days is never applied automatically (see docs/operations.md).
CREATE TABLE usage_flushes (
    batch      text        PRIMARY KEY,
    rows       integer     NOT NULL,
    flushed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_flushes_flushed_at ON usage_flushes (flushed_at);
GRANT SELECT, INSERT, DELETE ON usage_flushes TO atrium_app;

-- +goose Down
DROP TABLE usage_flushes;
DROP TABLE usage_daily;
