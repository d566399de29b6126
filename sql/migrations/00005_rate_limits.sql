-- Rate-limit rules (issue 4): the platform-wide policies the HTTP edge
-- checks every API request against, in one Redis round trip, all or
-- nothing. They are platform settings, not tenant data, so the table has no
-- tenant_id and no row-level security; per-tenant limits come from the
-- tenant's effective quotas (plan plus overrides) when a rule names one.
--
-- Every instance keeps the rules in memory and reloads them when a change
-- is broadcast (and every 30 s), so a change applies cluster-wide within a
-- second. Counters live in Redis only.

-- +goose Up
CREATE TABLE rate_limit_rules (
    -- The rule's id appears in RateLimit-Policy headers and 429 problems:
    -- the rate-limit engine's charset (letters, digits, '-', '_', '.').
    id          text        PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._-]{1,64}$'),
    description text        NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    -- The requests it covers: one route class, or '*' for every request
    -- that has a class (paths outside the API have none).
    route_class text        NOT NULL CHECK (route_class IN ('*', 'api', 'payments', 'auth', 'inference')),
    -- What it counts: the caller's tenant, the caller (user or terminal),
    -- terminals only, or anonymous requests by client address.
    key_by      text        NOT NULL CHECK (key_by IN ('tenant', 'principal', 'terminal', 'ip')),
    -- The rate: the caller's tenant's effective quota of this name, or a
    -- fixed rate for everyone.
    quota       text,
    rate        integer     CHECK (rate >= 1),
    period_ms   bigint      NOT NULL CHECK (period_ms >= 1),
    -- NULL: the same as the rate.
    burst       integer     CHECK (burst >= 1),
    mode        text        NOT NULL DEFAULT 'enforce' CHECK (mode IN ('enforce', 'observe')),
    fail_mode   text        NOT NULL DEFAULT 'open' CHECK (fail_mode IN ('open', 'closed')),
    enabled     boolean     NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text        NOT NULL DEFAULT 'system',
    CHECK ((quota IS NULL) <> (rate IS NULL))
);

-- tenant-daily is GCRA, not a calendar-day counter: it refills
-- continuously at limit/day with a burst of one day's limit, so a tenant
-- never gets more than 2 x limit calls in any 24-hour window (a full burst,
-- then the refill), and one that used its whole burst waits 86400/limit
-- seconds per further call.
--
-- ip-anonymous starts in observe mode: many POS terminals of one merchant
-- share a NAT address when they fetch tokens, so enforce it only after its
-- would-be refusals (metrics, logs, the admin page) show what it would do.
INSERT INTO rate_limit_rules (id, description, route_class, key_by, quota, rate, period_ms, burst, mode, fail_mode) VALUES
('tenant-daily', 'API calls per tenant and day (quota max_api_calls_per_day). GCRA: refills continuously at limit/day, so never more than 2 x limit in any 24 h.',
 '*', 'tenant', 'max_api_calls_per_day', NULL, 86400000, NULL, 'enforce', 'open'),
('tenant-payments', 'Payment and refund requests per tenant and second (quota payments_per_second).',
 'payments', 'tenant', 'payments_per_second', NULL, 1000, NULL, 'enforce', 'open'),
('terminal-rps', 'Requests per POS terminal and second (quota terminal_requests_per_second).',
 '*', 'terminal', 'terminal_requests_per_second', NULL, 1000, NULL, 'enforce', 'open'),
('ip-anonymous', 'Anonymous sign-in and token requests per client address: 30 a minute. Observe-only until reviewed.',
 'auth', 'ip', NULL, 30, 60000, NULL, 'observe', 'open');

GRANT SELECT, INSERT, UPDATE, DELETE ON rate_limit_rules TO atrium_app;

-- +goose Down
REVOKE ALL ON rate_limit_rules FROM atrium_app;
DROP TABLE rate_limit_rules;
