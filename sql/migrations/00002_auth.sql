-- Auth: users, roles, POS terminals, login sessions with rotating refresh
-- tokens, signing keys (private halves sealed under ATRIUM_MASTER_KEY) and
-- revocations. Tenant foreign keys and row-level security arrive with the
-- tenants module.

-- +goose Up
CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    tenant_id     uuid,                                   -- NULL: platform administrator
    email         text        NOT NULL,
    display_name  text        NOT NULL DEFAULT '',
    status        text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    password_hash text        NOT NULL,
    token_gen     bigint      NOT NULL DEFAULT 0,         -- bumped to revoke every token of the user
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email ON users (lower(email));
CREATE INDEX users_tenant ON users (tenant_id);

CREATE TABLE roles (
    id          uuid    PRIMARY KEY,
    tenant_id   uuid,                                     -- NULL: built-in, visible to every tenant
    name        text    NOT NULL,
    description text    NOT NULL DEFAULT '',
    permissions text[]  NOT NULL,
    builtin     boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX roles_name ON roles (coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid), name);

CREATE TABLE user_roles (
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role_id uuid NOT NULL REFERENCES roles (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, role_id)
);
CREATE INDEX user_roles_role ON user_roles (role_id);

INSERT INTO roles (id, name, description, builtin, permissions) VALUES
('0193a000-0000-7000-8000-000000000001', 'platform_admin', 'Runs the platform: every permission, across tenants.', true,
 ARRAY['tenants:manage','users:manage','users:read','roles:manage','terminals:manage','terminals:read','auth:keys','audit:read',
       'payments:create','payments:read','payments:refund','quotas:manage','gpu:read','gpu:deploy','settings:manage','cluster:read']),
('0193a000-0000-7000-8000-000000000002', 'tenant_admin', 'Administers one tenant: its users, roles, terminals and resources.', true,
 ARRAY['users:manage','users:read','roles:manage','terminals:manage','terminals:read','audit:read',
       'payments:read','payments:refund','gpu:read','gpu:deploy','cluster:read']),
('0193a000-0000-7000-8000-000000000003', 'operator', 'Day-to-day operations: refunds, deployments.', true,
 ARRAY['users:read','terminals:read','payments:read','payments:refund','gpu:read','gpu:deploy']),
('0193a000-0000-7000-8000-000000000004', 'viewer', 'Read-only access.', true,
 ARRAY['users:read','terminals:read','payments:read','gpu:read']);

CREATE TABLE terminals (
    id           uuid        PRIMARY KEY,
    tenant_id    uuid        NOT NULL,
    merchant_ref text        NOT NULL,
    name         text        NOT NULL DEFAULT '',
    secret_hash  bytea       NOT NULL,                    -- SHA-256 of a 256-bit random secret
    status       text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    token_gen    bigint      NOT NULL DEFAULT 0,
    last_seen_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX terminals_tenant ON terminals (tenant_id);

CREATE TABLE sessions (
    id              uuid        PRIMARY KEY,
    user_id         uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL,
    last_used_at    timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,                 -- absolute lifetime
    revoked_at      timestamptz,
    revoke_reason   text        NOT NULL DEFAULT '',
    user_agent      text        NOT NULL DEFAULT '',
    client_ip       text        NOT NULL DEFAULT ''
);
CREATE INDEX sessions_user ON sessions (user_id, created_at DESC);

CREATE TABLE refresh_tokens (
    hash        bytea       PRIMARY KEY,                  -- SHA-256 of the opaque token
    session_id  uuid        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    parent      bytea,                                    -- the token this one replaced
    created_at  timestamptz NOT NULL,
    used_at     timestamptz                               -- set when exchanged; a second use is reuse
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE signing_keys (
    kid          text        PRIMARY KEY,
    alg          text        NOT NULL,
    state        text        NOT NULL CHECK (state IN ('next', 'current', 'previous', 'retired')),
    private_key  text        NOT NULL,                    -- sealed under ATRIUM_MASTER_KEY (keyring format)
    public_key   bytea       NOT NULL,
    created_at   timestamptz NOT NULL,
    activated_at timestamptz,
    retired_at   timestamptz
);
CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys (state) WHERE state IN ('next', 'current', 'previous');

CREATE TABLE revocations (
    kind       text        NOT NULL CHECK (kind IN ('jti', 'session')),
    id         text        NOT NULL,
    expires_at timestamptz NOT NULL,                      -- no token it affects outlives this
    PRIMARY KEY (kind, id)
);

-- +goose Down
DROP TABLE revocations;
DROP TABLE signing_keys;
DROP TABLE refresh_tokens;
DROP TABLE sessions;
DROP TABLE terminals;
DROP TABLE user_roles;
DROP TABLE roles;
DROP TABLE users;
