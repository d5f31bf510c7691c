-- parkpay schema, PostgreSQL dialect. Same tables and columns as ../sqlite/0001_initial.sql.
-- Instants are integer milliseconds since the Unix epoch (UTC); money is integer minor units.

CREATE TABLE lots (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    capacity        BIGINT NOT NULL,
    currency        TEXT NOT NULL,
    tariff          TEXT NOT NULL,
    tariff_version  BIGINT NOT NULL,
    created_at      BIGINT NOT NULL
);

CREATE TABLE drivers (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    phone       TEXT,
    created_at  BIGINT NOT NULL
);

CREATE TABLE vehicles (
    plate       TEXT PRIMARY KEY,
    plate_key   TEXT NOT NULL,
    colour      TEXT NOT NULL,
    driver_id   TEXT NOT NULL REFERENCES drivers (id),
    created_at  BIGINT NOT NULL
);
CREATE INDEX vehicles_driver ON vehicles (driver_id);

CREATE TABLE mandates (
    id              TEXT PRIMARY KEY,
    driver_id       TEXT NOT NULL REFERENCES drivers (id),
    provider        TEXT NOT NULL,
    provider_ref    TEXT NOT NULL,
    status          TEXT NOT NULL,
    per_charge_cap  BIGINT,
    monthly_cap     BIGINT,
    currency        TEXT NOT NULL,
    channel         TEXT NOT NULL,
    signed_at       BIGINT NOT NULL,
    revoked_at      BIGINT
);
CREATE INDEX mandates_driver ON mandates (driver_id);

CREATE TABLE sessions (
    id              TEXT PRIMARY KEY,
    lot_id          TEXT NOT NULL REFERENCES lots (id),
    plate           TEXT NOT NULL,
    plate_key       TEXT NOT NULL,
    status          TEXT NOT NULL,
    driver_id       TEXT,
    entry_event_id  TEXT,
    entry_lane      TEXT,
    entry_at        BIGINT NOT NULL,
    exit_event_id   TEXT,
    exit_lane       TEXT,
    exit_at         BIGINT,
    fee_minor       BIGINT,
    currency        TEXT,
    quote           TEXT,
    updated_at      BIGINT NOT NULL
);
-- One open session per plate per lot: the database, not the message order, keeps this true.
CREATE UNIQUE INDEX sessions_one_open ON sessions (lot_id, plate) WHERE status = 'open';
CREATE INDEX sessions_open_key ON sessions (lot_id, plate_key) WHERE status = 'open';
CREATE INDEX sessions_plate ON sessions (plate);
CREATE INDEX sessions_status ON sessions (lot_id, status);

CREATE TABLE events (
    event_id     TEXT PRIMARY KEY,
    lot_id       TEXT NOT NULL,
    lane_id      TEXT NOT NULL,
    gateway_id   TEXT NOT NULL,
    direction    TEXT NOT NULL,
    captured_at  BIGINT NOT NULL,
    received_at  BIGINT NOT NULL,
    plate        TEXT,
    quality      TEXT NOT NULL,
    resent       BIGINT NOT NULL,
    payload      TEXT NOT NULL,
    session_id   TEXT,
    decision     TEXT NOT NULL
);
CREATE INDEX events_received ON events (lot_id, received_at);

CREATE TABLE charges (
    id               TEXT PRIMARY KEY,
    session_id       TEXT NOT NULL UNIQUE REFERENCES sessions (id),
    lot_id           TEXT NOT NULL,
    driver_id        TEXT,
    mandate_id       TEXT,
    amount_minor     BIGINT NOT NULL,
    currency         TEXT NOT NULL,
    status           TEXT NOT NULL,
    method           TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL UNIQUE,
    attempts         BIGINT NOT NULL,
    next_attempt_at  BIGINT,
    lease_owner      TEXT,
    lease_until      BIGINT,
    provider_txn     TEXT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    settled_at       BIGINT
);
CREATE INDEX charges_due ON charges (status, next_attempt_at);
CREATE INDEX charges_driver ON charges (driver_id, status);

CREATE TABLE charge_attempts (
    id          TEXT PRIMARY KEY,
    charge_id   TEXT NOT NULL REFERENCES charges (id),
    attempt     BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    outcome     TEXT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX charge_attempts_charge ON charge_attempts (charge_id);

CREATE TABLE exceptions (
    id          TEXT PRIMARY KEY,
    lot_id      TEXT NOT NULL,
    lane_id     TEXT,
    kind        TEXT NOT NULL,
    plate       TEXT,
    event_id    TEXT,
    session_id  TEXT,
    charge_id   TEXT,
    detail      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    resolved_at BIGINT,
    resolution  TEXT
);
CREATE INDEX exceptions_open ON exceptions (lot_id, resolved_at);

CREATE TABLE outbox (
    id            TEXT PRIMARY KEY,
    topic         TEXT NOT NULL,
    payload       BYTEA NOT NULL,
    created_at    BIGINT NOT NULL,
    published_at  BIGINT
);
CREATE INDEX outbox_pending ON outbox (published_at);

CREATE TABLE audit (
    id       TEXT PRIMARY KEY,
    at       BIGINT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    detail   TEXT NOT NULL
);

CREATE TABLE dead_letters (
    id           TEXT PRIMARY KEY,
    received_at  BIGINT NOT NULL,
    topic        TEXT NOT NULL,
    reason       TEXT NOT NULL,
    detail       TEXT NOT NULL,
    payload      BYTEA NOT NULL
);

CREATE TABLE sandbox_wallets (
    reference      TEXT PRIMARY KEY,
    balance_minor  BIGINT NOT NULL,
    currency       TEXT NOT NULL,
    fail_next      BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);

CREATE TABLE sandbox_debits (
    idempotency_key  TEXT PRIMARY KEY,
    reference        TEXT NOT NULL,
    amount_minor     BIGINT NOT NULL,
    outcome          TEXT NOT NULL,
    txn_id           TEXT NOT NULL,
    at               BIGINT NOT NULL
);
