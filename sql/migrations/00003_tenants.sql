-- Tenants, plans and row-level isolation.
--
-- Every tenant-owned row carries tenant_id, and PostgreSQL's row-level
-- security decides which rows a transaction sees. The application runs its
-- queries as atrium_app: a role that owns nothing, is not a superuser and
-- has no BYPASSRLS, so the policies hold even when ATRIUM_DATABASE_URL
-- names a superuser (the pool sets ROLE atrium_app on connect). Migrations
-- run as the connecting user, who owns the tables.
--
-- The scope of a transaction is two transaction-local settings, written by
-- platform/postgres at BEGIN and gone at COMMIT or ROLLBACK:
--   atrium.tenant_id    the one tenant whose rows the transaction sees;
--   atrium.all_tenants  'on' for the cross-tenant path (platform
--                       administrators, identity lookups before a tenant
--                       is known, batch jobs), which names its reason and
--                       is counted and logged.
-- With neither set, a tenant-owned table shows no rows and takes no writes.

-- +goose Up
-- +goose StatementBegin
DO $$
BEGIN
    -- Roles belong to the whole server: another database may have made it
    -- already, perhaps at this very moment.
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'atrium_app') THEN
        BEGIN
            CREATE ROLE atrium_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
    IF NOT pg_has_role(current_user, 'atrium_app', 'MEMBER') THEN
        EXECUTE format('GRANT atrium_app TO %I', current_user);
    END IF;
END
$$;
-- +goose StatementEnd
GRANT USAGE ON SCHEMA public TO atrium_app;

CREATE FUNCTION atrium_tenant() RETURNS uuid LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT nullif(current_setting('atrium.tenant_id', true), '')::uuid $$;

CREATE FUNCTION atrium_all_tenants() RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT coalesce(current_setting('atrium.all_tenants', true), '') = 'on' $$;

-- Plans: what a tenant may use. The quota module reads them; values are
-- limits keyed by quota name (modules/quota lists the names and units).
CREATE TABLE plans (
    id          text        PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    name        text        NOT NULL,
    description text        NOT NULL DEFAULT '',
    quotas      jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO plans (id, name, description, quotas) VALUES
('default', 'Default', 'The defaults of the source documents.',
 '{"max_models": 100, "max_deployments": 20, "max_gpus": 8, "max_storage_gb": 50, "max_terminals": 100, "max_users": 50,
   "max_api_calls_per_day": 10000, "payments_per_second": 50, "terminal_requests_per_second": 5, "max_gpu_hours": 100}'),
('enterprise', 'Enterprise', 'Large merchant groups and ML teams.',
 '{"max_models": 1000, "max_deployments": 200, "max_gpus": 64, "max_storage_gb": 2000, "max_terminals": 5000, "max_users": 1000,
   "max_api_calls_per_day": 1000000, "payments_per_second": 500, "terminal_requests_per_second": 20, "max_gpu_hours": 5000}');

CREATE TABLE tenants (
    id           uuid        PRIMARY KEY,
    name         text        NOT NULL,
    status       text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    plan         text        NOT NULL DEFAULT 'default' REFERENCES plans (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    suspended_at timestamptz
);
CREATE UNIQUE INDEX tenants_name ON tenants (lower(name));

-- Tenants that existed only as ids on auth rows become real tenants.
INSERT INTO tenants (id, name)
SELECT DISTINCT t, 'Tenant ' || t::text FROM (
    SELECT tenant_id AS t FROM users UNION SELECT tenant_id FROM terminals UNION SELECT tenant_id FROM roles
) ids WHERE t IS NOT NULL;

ALTER TABLE users     ADD CONSTRAINT users_tenant     FOREIGN KEY (tenant_id) REFERENCES tenants (id);
ALTER TABLE terminals ADD CONSTRAINT terminals_tenant FOREIGN KEY (tenant_id) REFERENCES tenants (id);
ALTER TABLE roles     ADD CONSTRAINT roles_tenant     FOREIGN KEY (tenant_id) REFERENCES tenants (id);

-- Rows that hang off a user carry the user's tenant too, so that a policy
-- guards them directly (NULL: a platform administrator's rows).
ALTER TABLE user_roles ADD COLUMN tenant_id uuid REFERENCES tenants (id);
UPDATE user_roles ur SET tenant_id = u.tenant_id FROM users u WHERE u.id = ur.user_id;
ALTER TABLE sessions ADD COLUMN tenant_id uuid REFERENCES tenants (id);
UPDATE sessions s SET tenant_id = u.tenant_id FROM users u WHERE u.id = s.user_id;
ALTER TABLE refresh_tokens ADD COLUMN tenant_id uuid REFERENCES tenants (id);
UPDATE refresh_tokens r SET tenant_id = s.tenant_id FROM sessions s WHERE s.id = r.session_id;
CREATE INDEX user_roles_tenant ON user_roles (tenant_id);
CREATE INDEX sessions_tenant ON sessions (tenant_id);
CREATE INDEX refresh_tokens_tenant ON refresh_tokens (tenant_id);

-- The policies. (SELECT f()) runs the function once per statement.
--
-- Rows that more than one tenant reads (a tenant's own row, built-in
-- roles, plans) are read through a FOR SELECT policy and written only on
-- the cross-tenant path: a USING clause that let a tenant see such a row
-- would also let it UPDATE or DELETE it (a DELETE of a built-in role
-- cascades to every tenant's user_roles), since WITH CHECK binds only the
-- new row.
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants FOR SELECT
    USING (id = (SELECT atrium_tenant()));
CREATE POLICY cross_tenant ON tenants
    USING ((SELECT atrium_all_tenants()))
    WITH CHECK ((SELECT atrium_all_tenants()));

-- Built-in roles (tenant_id NULL) are visible to every tenant; only the
-- cross-tenant path writes them.
ALTER TABLE roles ENABLE ROW LEVEL SECURITY;
ALTER TABLE roles FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roles
    USING (tenant_id = (SELECT atrium_tenant()) OR (SELECT atrium_all_tenants()))
    WITH CHECK (tenant_id = (SELECT atrium_tenant()) OR (SELECT atrium_all_tenants()));
CREATE POLICY builtin_roles ON roles FOR SELECT
    USING (tenant_id IS NULL);

-- Plans are every tenant's to read; only the cross-tenant path writes them.
ALTER TABLE plans ENABLE ROW LEVEL SECURITY;
ALTER TABLE plans FORCE ROW LEVEL SECURITY;
CREATE POLICY plans_read ON plans FOR SELECT
    USING (true);
CREATE POLICY cross_tenant ON plans
    USING ((SELECT atrium_all_tenants()))
    WITH CHECK ((SELECT atrium_all_tenants()));

-- +goose StatementBegin
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'user_roles', 'terminals', 'sessions', 'refresh_tokens', 'audit_log'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = (SELECT atrium_tenant()) OR (SELECT atrium_all_tenants()))
            WITH CHECK (tenant_id = (SELECT atrium_tenant()) OR (SELECT atrium_all_tenants()))', t);
    END LOOP;
END
$$;
-- +goose StatementEnd

GRANT SELECT, INSERT, UPDATE, DELETE ON users, roles, user_roles, terminals, sessions, refresh_tokens,
    signing_keys, revocations, tenants TO atrium_app;
GRANT SELECT, INSERT, UPDATE ON plans TO atrium_app;
-- The audit log is append-only for the application.
GRANT SELECT, INSERT ON audit_log TO atrium_app;

-- +goose Down
REVOKE ALL ON users, roles, user_roles, terminals, sessions, refresh_tokens, signing_keys, revocations,
    audit_log FROM atrium_app;
DROP POLICY builtin_roles ON roles;
-- +goose StatementBegin
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'roles', 'user_roles', 'terminals', 'sessions', 'refresh_tokens', 'audit_log'] LOOP
        EXECUTE format('DROP POLICY tenant_isolation ON %I', t);
        EXECUTE format('ALTER TABLE %I NO FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I DISABLE ROW LEVEL SECURITY', t);
    END LOOP;
END
$$;
-- +goose StatementEnd
ALTER TABLE refresh_tokens DROP COLUMN tenant_id;
ALTER TABLE sessions DROP COLUMN tenant_id;
ALTER TABLE user_roles DROP COLUMN tenant_id;
ALTER TABLE roles DROP CONSTRAINT roles_tenant;
ALTER TABLE terminals DROP CONSTRAINT terminals_tenant;
ALTER TABLE users DROP CONSTRAINT users_tenant;
DROP TABLE tenants;
DROP TABLE plans;
DROP FUNCTION atrium_all_tenants();
DROP FUNCTION atrium_tenant();
REVOKE USAGE ON SCHEMA public FROM atrium_app;
