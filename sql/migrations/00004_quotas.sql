-- Quotas: per-tenant overrides of the plan's limits, the use counted
-- against allocation and budget quotas, and reservations (capacity held
-- between Reserve and Commit or Release). Rate quotas are enforced by the
-- rate limiter in Redis and have no rows here.

-- +goose Up
CREATE TABLE quota_overrides (
    tenant_id  uuid        NOT NULL REFERENCES tenants (id),
    quota      text        NOT NULL,
    value      bigint      NOT NULL CHECK (value >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, quota)
);

-- period: '' for allocation quotas; 'YYYY-MM' (UTC) for monthly budgets.
CREATE TABLE quota_usage (
    tenant_id  uuid        NOT NULL REFERENCES tenants (id),
    quota      text        NOT NULL,
    period     text        NOT NULL DEFAULT '',
    used       bigint      NOT NULL DEFAULT 0 CHECK (used >= 0),
    reserved   bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, quota, period)
);

CREATE TABLE quota_reservations (
    id         uuid        PRIMARY KEY,
    tenant_id  uuid        NOT NULL REFERENCES tenants (id),
    quota      text        NOT NULL,
    period     text        NOT NULL,
    amount     bigint      NOT NULL CHECK (amount > 0),
    state      text        NOT NULL DEFAULT 'reserved' CHECK (state IN ('reserved', 'committed', 'released')),
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quota_reservations_tenant ON quota_reservations (tenant_id);
CREATE INDEX quota_reservations_expiry ON quota_reservations (expires_at) WHERE state = 'reserved';

-- Users and terminals that exist already count against their quotas. The
-- owner running this is bound by forced row-level security too (unless a
-- superuser), so the backfill reads and writes on the cross-tenant path
-- (transaction-local: goose runs each migration in a transaction).
SELECT set_config('atrium.all_tenants', 'on', true);
INSERT INTO quota_usage (tenant_id, quota, used)
SELECT tenant_id, 'max_users', count(*) FROM users WHERE tenant_id IS NOT NULL GROUP BY tenant_id;
INSERT INTO quota_usage (tenant_id, quota, used)
SELECT tenant_id, 'max_terminals', count(*) FROM terminals GROUP BY tenant_id;

-- +goose StatementBegin
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['quota_overrides', 'quota_usage', 'quota_reservations'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = (SELECT atrium_tenant()) OR (SELECT atrium_all_tenants()))
            WITH CHECK (tenant_id = (SELECT atrium_tenant()) OR (SELECT atrium_all_tenants()))', t);
    END LOOP;
END
$$;
-- +goose StatementEnd
GRANT SELECT, INSERT, UPDATE, DELETE ON quota_overrides, quota_usage, quota_reservations TO atrium_app;

-- +goose Down
DROP TABLE quota_reservations;
DROP TABLE quota_usage;
DROP TABLE quota_overrides;
