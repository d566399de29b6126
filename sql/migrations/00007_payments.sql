-- Payments (modules/payment): merchants, payments and their transitions,
-- refunds, idempotency keys, a double-entry ledger, the outbox event feed,
-- and the operators' breaker settings of the bank channels.
--
-- Money is an integer number of minor units of an ISO 4217 currency.
-- Rows made by test-mode terminals carry livemode = false and are kept out
-- of live reports and balances.

-- +goose Up
-- A test-mode terminal runs the whole payment path with livemode = false.
ALTER TABLE terminals ADD COLUMN test_mode boolean NOT NULL DEFAULT false;

CREATE TABLE merchants (
    id                 uuid        PRIMARY KEY,
    tenant_id          uuid        NOT NULL REFERENCES tenants (id),
    ref                text        NOT NULL CHECK (length(ref) BETWEEN 1 AND 64), -- terminals.merchant_ref
    name               text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    mcc                text        NOT NULL CHECK (mcc ~ '^[0-9]{4}$'),           -- ISO 18245 category code
    settlement_account text        NOT NULL CHECK (length(settlement_account) BETWEEN 1 AND 64),
    fee_bps            integer     NOT NULL DEFAULT 0 CHECK (fee_bps BETWEEN 0 AND 10000),
    fee_fixed          bigint      NOT NULL DEFAULT 0 CHECK (fee_fixed >= 0),
    channels           text[]      NOT NULL DEFAULT '{}',   -- routing preference; empty: every channel by priority
    promotions         jsonb       NOT NULL DEFAULT '[]',   -- [{"id","spend","save"}]: spend-X-save-Y
    point_value        bigint      NOT NULL DEFAULT 0 CHECK (point_value >= 0), -- minor units one point is worth; 0: no points
    status             text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, ref),
    UNIQUE (tenant_id, id)
);

CREATE TABLE payments (
    id              uuid        PRIMARY KEY,                       -- UUIDv7: time-ordered
    tenant_id       uuid        NOT NULL REFERENCES tenants (id),
    merchant_id     uuid        NOT NULL,
    terminal_id     uuid        NOT NULL,
    order_no        text        NOT NULL,
    idempotency_key text        NOT NULL,                          -- the key the terminal sent
    livemode        boolean     NOT NULL,
    amount          bigint      NOT NULL CHECK (amount > 0),       -- before discounts
    currency        text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    promotion_id    text,
    discount        bigint      NOT NULL DEFAULT 0 CHECK (discount >= 0),
    points          bigint      NOT NULL DEFAULT 0 CHECK (points >= 0),
    points_amount   bigint      NOT NULL DEFAULT 0 CHECK (points_amount >= 0),
    payable         bigint      NOT NULL CHECK (payable > 0 AND payable = amount - discount - points_amount),
    fee             bigint      NOT NULL CHECK (fee >= 0 AND fee <= payable),
    method          text        NOT NULL CHECK (method IN ('card', 'wallet')),
    card_bin        text,
    card_last4      text,
    card_sealed     text,                                          -- keyring-sealed PAN and expiry; see platform/keyring
    wallet_code     text,
    customer_ref    text,
    device          jsonb,
    status          text        NOT NULL CHECK (status IN ('processing', 'succeeded', 'failed', 'in_doubt',
                                                            'partially_refunded', 'refunded', 'voided')),
    channel         text        NOT NULL,
    decline_reason  text,
    refunded        bigint      NOT NULL DEFAULT 0,                -- by succeeded refunds
    refund_reserved bigint      NOT NULL DEFAULT 0,                -- by refunds not yet decided
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    CHECK (refunded >= 0 AND refund_reserved >= 0 AND refunded + refund_reserved <= payable),
    CHECK ((method = 'card') = (card_sealed IS NOT NULL)),
    UNIQUE (tenant_id, order_no),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, merchant_id) REFERENCES merchants (tenant_id, id)
);
CREATE INDEX payments_list ON payments (tenant_id, livemode, id);
CREATE INDEX payments_terminal ON payments (tenant_id, terminal_id, livemode, id);
-- What the recovery worker scans.
CREATE INDEX payments_unresolved ON payments (updated_at) WHERE status IN ('processing', 'in_doubt');

CREATE TABLE refunds (
    id          uuid        PRIMARY KEY,
    tenant_id   uuid        NOT NULL,
    payment_id  uuid        NOT NULL,
    livemode    boolean     NOT NULL,
    amount      bigint      NOT NULL CHECK (amount > 0),
    currency    text        NOT NULL,
    kind        text        NOT NULL DEFAULT 'refund' CHECK (kind IN ('refund', 'void')),
    reason      text,
    status      text        NOT NULL CHECK (status IN ('processing', 'succeeded', 'failed', 'in_doubt')),
    channel     text        NOT NULL,
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, payment_id) REFERENCES payments (tenant_id, id)
);
CREATE INDEX refunds_payment ON refunds (payment_id);
CREATE INDEX refunds_unresolved ON refunds (updated_at) WHERE status IN ('processing', 'in_doubt');

-- Every state change of a payment or one of its refunds, with its time.
CREATE TABLE payment_transitions (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  uuid        NOT NULL,
    payment_id uuid        NOT NULL,
    refund_id  uuid,
    status     text        NOT NULL,
    detail     text,
    at         timestamptz NOT NULL,
    FOREIGN KEY (tenant_id, payment_id) REFERENCES payments (tenant_id, id)
);
CREATE INDEX payment_transitions_payment ON payment_transitions (payment_id, id);

-- Idempotency keys, per tenant, with Stripe's semantics: the first
-- response is stored and replayed; request_hash catches reuse with other
-- parameters; state 'running' answers a concurrent request 409.
CREATE TABLE idempotency_keys (
    tenant_id       uuid        NOT NULL REFERENCES tenants (id),
    key             text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash    bytea       NOT NULL,
    state           text        NOT NULL CHECK (state IN ('running', 'done')),
    payment_id      uuid,
    refund_id       uuid,
    response_status integer,
    response_body   bytea,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
CREATE INDEX idempotency_keys_payment ON idempotency_keys (payment_id);
CREATE INDEX idempotency_keys_refund ON idempotency_keys (refund_id) WHERE refund_id IS NOT NULL;

-- The ledger: accounts, journal entries and their postings. Postings are
-- append-only; each entry's postings sum to zero per currency (checked at
-- commit by a deferred constraint trigger); balances are kept by a trigger
-- on postings, spread over buckets so that no single row is hot.
CREATE TABLE ledger_accounts (
    id          uuid    PRIMARY KEY,
    tenant_id   uuid    NOT NULL REFERENCES tenants (id),
    merchant_id uuid,
    kind        text    NOT NULL CHECK (kind IN ('merchant_payable', 'bank_clearing', 'fee_revenue')),
    currency    text    NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    livemode    boolean NOT NULL,
    UNIQUE NULLS NOT DISTINCT (tenant_id, kind, merchant_id, currency, livemode),
    CHECK ((kind = 'merchant_payable') = (merchant_id IS NOT NULL))
);

CREATE TABLE ledger_entries (
    id         uuid        PRIMARY KEY,
    tenant_id  uuid        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('capture', 'fee', 'refund', 'void', 'fee_reversal')),
    payment_id uuid        NOT NULL,
    refund_id  uuid,
    livemode   boolean     NOT NULL,
    created_at timestamptz NOT NULL,
    -- One entry of a kind per state change.
    UNIQUE NULLS NOT DISTINCT (payment_id, refund_id, kind),
    FOREIGN KEY (tenant_id, payment_id) REFERENCES payments (tenant_id, id)
);

CREATE TABLE ledger_postings (
    id         bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  uuid    NOT NULL,
    entry_id   uuid    NOT NULL REFERENCES ledger_entries (id),
    account_id uuid    NOT NULL REFERENCES ledger_accounts (id),
    amount     bigint  NOT NULL CHECK (amount <> 0),   -- debit positive, credit negative
    currency   text    NOT NULL
);
CREATE INDEX ledger_postings_entry ON ledger_postings (entry_id);
CREATE INDEX ledger_postings_account ON ledger_postings (account_id);

CREATE TABLE account_balances (
    account_id uuid   NOT NULL REFERENCES ledger_accounts (id),
    bucket     smallint NOT NULL,
    tenant_id  uuid   NOT NULL,
    balance    bigint NOT NULL,
    PRIMARY KEY (account_id, bucket)
);

-- +goose StatementBegin
CREATE FUNCTION ledger_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE bad record;
BEGIN
    SELECT currency, sum(amount) AS total INTO bad FROM ledger_postings
     WHERE entry_id = NEW.entry_id GROUP BY currency HAVING sum(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger entry % does not balance: % postings sum to %', NEW.entry_id, bad.currency, bad.total
            USING ERRCODE = 'check_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM ledger_postings p JOIN ledger_accounts a ON a.id = p.account_id
                WHERE p.id = NEW.id AND (a.currency <> p.currency OR a.tenant_id <> p.tenant_id)) THEN
        RAISE EXCEPTION 'posting % does not match its account''s currency or tenant', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd
CREATE CONSTRAINT TRIGGER ledger_entry_balanced AFTER INSERT ON ledger_postings
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_entry_balanced();

-- Balances follow postings; the application role can only read them. One
-- upsert per statement, in account order, into the bucket of the
-- transaction (its xid modulo 32): a transaction's postings all land in
-- one bucket, and every kind of entry's first statement touches the bank
-- clearing and merchant accounts, so two transactions that meet in a
-- bucket queue on their first statement and never deadlock; transactions
-- in different buckets never wait for each other (PITFALLS: one hot
-- balance row caps at ~2.3k updates/s).
-- +goose StatementBegin
CREATE FUNCTION ledger_apply_postings() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
    INSERT INTO account_balances (account_id, bucket, tenant_id, balance)
    SELECT account_id, (pg_current_xact_id()::text::bigint % 32)::smallint, tenant_id, sum(amount)
      FROM new_postings GROUP BY account_id, tenant_id ORDER BY account_id
    ON CONFLICT (account_id, bucket) DO UPDATE SET balance = account_balances.balance + EXCLUDED.balance;
    RETURN NULL;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER ledger_apply_postings AFTER INSERT ON ledger_postings
    REFERENCING NEW TABLE AS new_postings FOR EACH STATEMENT EXECUTE FUNCTION ledger_apply_postings();

-- The outbox: one event per state change, in the transaction of the
-- change. xid orders the feed safely: readers are handed only events whose
-- transaction is older than every transaction still running, so an event
-- that commits late behind a higher id is never skipped.
CREATE TABLE events (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    tenant_id  uuid        NOT NULL REFERENCES tenants (id),
    type       text        NOT NULL,
    subject    text        NOT NULL,
    livemode   boolean     NOT NULL,
    data       jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_feed ON events (tenant_id, xid, id);
CREATE INDEX events_all ON events (xid, id);

-- An operator's override of a channel's circuit breaker, for the whole
-- cluster (platform-level: channels are no tenant's).
CREATE TABLE payment_channel_modes (
    channel    text        PRIMARY KEY,
    mode       text        NOT NULL CHECK (mode IN ('auto', 'forced_open', 'forced_closed')),
    updated_by text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- +goose StatementBegin
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['merchants', 'payments', 'refunds', 'payment_transitions', 'idempotency_keys',
                             'ledger_accounts', 'ledger_entries', 'ledger_postings', 'account_balances', 'events'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = (SELECT atrium_tenant()) OR (SELECT atrium_all_tenants()))
            WITH CHECK (tenant_id = (SELECT atrium_tenant()) OR (SELECT atrium_all_tenants()))', t);
    END LOOP;
END
$$;
-- +goose StatementEnd

GRANT SELECT, INSERT, UPDATE ON merchants, payments, refunds TO atrium_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO atrium_app;
-- The record is append-only for the application.
GRANT SELECT, INSERT ON payment_transitions, ledger_accounts, ledger_entries, ledger_postings, events TO atrium_app;
GRANT SELECT ON account_balances TO atrium_app;
GRANT SELECT, INSERT, UPDATE ON payment_channel_modes TO atrium_app;

-- payments:manage (merchants) for platform and tenant administrators;
-- channels:manage (the breaker switch) for platform administrators only:
-- channels are shared by every tenant.
UPDATE roles SET permissions = permissions || ARRAY['payments:manage', 'channels:manage']
 WHERE id = '0193a000-0000-7000-8000-000000000001';
UPDATE roles SET permissions = permissions || ARRAY['payments:manage']
 WHERE id = '0193a000-0000-7000-8000-000000000002';

-- +goose Down
UPDATE roles SET permissions = array_remove(array_remove(permissions, 'payments:manage'), 'channels:manage') WHERE builtin;
DROP TABLE payment_channel_modes;
DROP TABLE events;
DROP TABLE account_balances;
DROP TABLE ledger_postings;
DROP FUNCTION ledger_apply_postings();
DROP FUNCTION ledger_entry_balanced();
DROP TABLE ledger_entries;
DROP TABLE ledger_accounts;
DROP TABLE idempotency_keys;
DROP TABLE payment_transitions;
DROP TABLE refunds;
DROP TABLE payments;
DROP TABLE merchants;
ALTER TABLE terminals DROP COLUMN test_mode;
