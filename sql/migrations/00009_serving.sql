-- +goose Up
-- Serving (modules/gpu): what a replica's node reports of its process, and
-- the permission to call models through the inference router.
ALTER TABLE replicas
    ADD COLUMN endpoint text   NOT NULL DEFAULT '',  -- host:port the router reaches it on, while ready
    ADD COLUMN pid      int,                         -- its process on its node
    ADD COLUMN restarts int    NOT NULL DEFAULT 0,
    ADD COLUMN runtime  text   NOT NULL DEFAULT '';  -- the supervisor's state (starting, ready, backoff ...)

-- inference:invoke for tenant administrators and operators, and for
-- platform administrators, who hold every permission (so that they may
-- grant these roles; the router still serves only a tenant's callers).
-- Custom roles may grant it (an application's role).
UPDATE roles SET permissions = permissions || ARRAY['inference:invoke']
 WHERE id IN ('0193a000-0000-7000-8000-000000000001', '0193a000-0000-7000-8000-000000000002',
              '0193a000-0000-7000-8000-000000000003');

-- +goose Down
UPDATE roles SET permissions = array_remove(permissions, 'inference:invoke') WHERE builtin;
ALTER TABLE replicas DROP COLUMN runtime, DROP COLUMN restarts, DROP COLUMN pid, DROP COLUMN endpoint;
