-- +goose Up
-- The GPU scheduler (modules/gpu). Nodes and their GPUs are the platform's,
-- no tenant's: every instance on a GPU host upserts its own. Models,
-- versions, deployments and replicas are a tenant's, under row-level
-- security. A replica's allocation (its node and GPUs) lives on its row and
-- is counted on the GPUs' rows in the same transaction; check constraints
-- there make a double allocation impossible, whoever writes.

CREATE TABLE gpu_nodes (
    id          text        PRIMARY KEY,
    backend     text        NOT NULL,
    state       text        NOT NULL DEFAULT 'up' CHECK (state IN ('up', 'lost')),
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    lost_at     timestamptz
);

CREATE TABLE gpu_devices (
    uuid            text        PRIMARY KEY,
    node_id         text        NOT NULL REFERENCES gpu_nodes (id),
    idx             int         NOT NULL,
    name            text        NOT NULL,
    memory_total_mb bigint      NOT NULL CHECK (memory_total_mb >= 0),
    mig_mode        boolean     NOT NULL DEFAULT false,
    domain          text        NOT NULL DEFAULT '',
    healthy         boolean     NOT NULL DEFAULT true,
    unhealthy       text        NOT NULL DEFAULT '',
    present         boolean     NOT NULL DEFAULT true,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- What replicas hold (kept with the replicas' allocations).
    exclusive_replica uuid,
    shared_mb       bigint      NOT NULL DEFAULT 0,
    mig_compute     int         NOT NULL DEFAULT 0,
    mig_memory_mb   bigint      NOT NULL DEFAULT 0,
    CHECK (shared_mb >= 0 AND mig_compute >= 0 AND mig_memory_mb >= 0),
    CHECK (shared_mb <= memory_total_mb),
    CHECK (mig_compute <= 7 AND mig_memory_mb <= memory_total_mb),
    CHECK (exclusive_replica IS NULL OR (shared_mb = 0 AND mig_compute = 0))
);
CREATE INDEX gpu_devices_node ON gpu_devices (node_id);

-- Health history: XID errors, ECC rises, recoveries.
CREATE TABLE gpu_health_events (
    id       bigserial   PRIMARY KEY,
    uuid     text        NOT NULL,
    node_id  text        NOT NULL,
    at       timestamptz NOT NULL,
    kind     text        NOT NULL CHECK (kind IN ('xid', 'ecc', 'lost', 'recovered', 'reprobe_failed')),
    xid      bigint,
    critical boolean     NOT NULL,
    detail   text        NOT NULL DEFAULT ''
);
CREATE INDEX gpu_health_events_uuid ON gpu_health_events (uuid, at DESC);

-- The scheduler's fencing token: a leader writes only while its token is
-- the largest seen, so a deposed leader's late writes are refused.
CREATE TABLE gpu_scheduler (
    id    boolean PRIMARY KEY DEFAULT true CHECK (id),
    fence bigint  NOT NULL DEFAULT 0
);
INSERT INTO gpu_scheduler DEFAULT VALUES;

CREATE TABLE models (
    id          uuid        PRIMARY KEY,
    tenant_id   uuid        NOT NULL REFERENCES tenants (id),
    name        text        NOT NULL,
    description text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE model_versions (
    id           uuid        PRIMARY KEY,
    tenant_id    uuid        NOT NULL REFERENCES tenants (id),
    model_id     uuid        NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    version      text        NOT NULL,
    artifact_uri text        NOT NULL,
    command      text        NOT NULL,
    port         int         NOT NULL CHECK (port BETWEEN 1 AND 65535),
    health_path  text        NOT NULL,
    gpus         int         NOT NULL CHECK (gpus BETWEEN 1 AND 16),
    memory_mb    bigint      NOT NULL CHECK (memory_mb >= 0),
    sharing      text        NOT NULL CHECK (sharing IN ('exclusive', 'shared', 'mig')),
    mig_profile  text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model_id, version)
);
CREATE INDEX model_versions_tenant ON model_versions (tenant_id);

CREATE TABLE deployments (
    id                uuid        PRIMARY KEY,
    tenant_id         uuid        NOT NULL REFERENCES tenants (id),
    name              text        NOT NULL,
    model_id          uuid        NOT NULL REFERENCES models (id),
    stable_version_id uuid        NOT NULL REFERENCES model_versions (id),
    -- The version being released, while a release runs.
    target_version_id uuid        REFERENCES model_versions (id),
    strategy          text        NOT NULL CHECK (strategy IN ('rolling', 'blue_green', 'canary')),
    params            jsonb       NOT NULL,
    min_replicas      int         NOT NULL CHECK (min_replicas >= 0),
    max_replicas      int         NOT NULL CHECK (max_replicas >= min_replicas AND max_replicas BETWEEN 1 AND 1000),
    replicas          int         NOT NULL CHECK (replicas BETWEEN min_replicas AND max_replicas),
    state             text        NOT NULL CHECK (state IN ('steady', 'progressing', 'paused', 'deleting')),
    step              int         NOT NULL DEFAULT 0,
    step_started_at   timestamptz,
    -- Blue-green: the previous set kept for the rollback window.
    previous_version_id uuid      REFERENCES model_versions (id),
    previous_until    timestamptz,
    -- Traffic weights, percent by version id; the router applies them.
    traffic           jsonb       NOT NULL,
    message           text        NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);
CREATE INDEX deployments_active ON deployments (state);

-- What a deployment's release did and why (strategy steps, canary
-- verdicts, promotions, rollbacks), for the deployment page.
CREATE TABLE deployment_events (
    id            bigserial   PRIMARY KEY,
    tenant_id     uuid        NOT NULL REFERENCES tenants (id),
    deployment_id uuid        NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    at            timestamptz NOT NULL DEFAULT now(),
    kind          text        NOT NULL,
    message       text        NOT NULL
);
CREATE INDEX deployment_events_deployment ON deployment_events (deployment_id, id DESC);

CREATE TABLE replicas (
    id            uuid        PRIMARY KEY,
    tenant_id     uuid        NOT NULL REFERENCES tenants (id),
    deployment_id uuid        NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    version_id    uuid        NOT NULL REFERENCES model_versions (id),
    state         text        NOT NULL CHECK (state IN ('pending', 'placed', 'running', 'stopping', 'stopped')),
    reason        text        NOT NULL DEFAULT '',
    -- The need, copied from the version when the replica is created.
    gpus          int         NOT NULL,
    memory_mb     bigint      NOT NULL,
    sharing       text        NOT NULL,
    mig_profile   text        NOT NULL DEFAULT '',
    -- The allocation: set when placed, kept after it stopped for history.
    node_id       text,
    gpu_uuids     text[]      NOT NULL DEFAULT '{}',
    milli_gpus    int         NOT NULL DEFAULT 0,   -- GPU share held, 1000 = one whole GPU
    fence         bigint      NOT NULL DEFAULT 0,   -- the scheduler token that placed it
    created_at    timestamptz NOT NULL DEFAULT now(),
    placed_at     timestamptz,
    ready_at      timestamptz,
    stopping_at   timestamptz,
    stopped_at    timestamptz,
    metered_until timestamptz,
    CHECK ((state = 'pending') = (node_id IS NULL) OR state = 'stopped')
);
CREATE INDEX replicas_deployment ON replicas (deployment_id, state);
CREATE INDEX replicas_live ON replicas (state) WHERE state <> 'stopped';
CREATE INDEX replicas_node ON replicas (node_id) WHERE state IN ('placed', 'running', 'stopping');
CREATE INDEX replicas_metering ON replicas (metered_until) WHERE placed_at IS NOT NULL;

-- +goose StatementBegin
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['models', 'model_versions', 'deployments', 'deployment_events', 'replicas'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = (SELECT atrium_tenant()) OR (SELECT atrium_all_tenants()))
            WITH CHECK (tenant_id = (SELECT atrium_tenant()) OR (SELECT atrium_all_tenants()))', t);
    END LOOP;
END
$$;
-- +goose StatementEnd

GRANT SELECT, INSERT, UPDATE, DELETE ON models, model_versions, deployments TO atrium_app;
GRANT SELECT, INSERT, UPDATE ON replicas TO atrium_app;
GRANT SELECT, INSERT ON deployment_events TO atrium_app;
GRANT SELECT, INSERT, UPDATE ON gpu_nodes, gpu_devices, gpu_scheduler TO atrium_app;
GRANT SELECT, INSERT ON gpu_health_events TO atrium_app;
GRANT USAGE ON SEQUENCE gpu_health_events_id_seq, deployment_events_id_seq TO atrium_app;

-- cluster:manage (re-probe a GPU) for platform administrators only: the
-- cluster is every tenant's.
UPDATE roles SET permissions = permissions || ARRAY['cluster:manage']
 WHERE id = '0193a000-0000-7000-8000-000000000001';

-- +goose Down
UPDATE roles SET permissions = array_remove(permissions, 'cluster:manage') WHERE builtin;
DROP TABLE replicas;
DROP TABLE deployment_events;
DROP TABLE deployments;
DROP TABLE model_versions;
DROP TABLE models;
DROP TABLE gpu_scheduler;
DROP TABLE gpu_health_events;
DROP TABLE gpu_devices;
DROP TABLE gpu_nodes;
