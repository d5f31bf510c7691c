-- parkpay schema, SQLite dialect. Same tables and columns as ../postgres/0001_initial.sql.
-- Instants are integer milliseconds since the Unix epoch (UTC); money is integer minor units.

CREATE TABLE lots (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    capacity        INTEGER NOT NULL,
    currency        TEXT NOT NULL,
    tariff          TEXT NOT NULL,
    tariff_version  INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
);

CREATE TABLE drivers (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    phone       TEXT,
    created_at  INTEGER NOT NULL
);

CREATE TABLE vehicles (
    plate       TEXT PRIMARY KEY,
    plate_key   TEXT NOT NULL,
    colour      TEXT NOT NULL,
    driver_id   TEXT NOT NULL REFERENCES drivers (id),
    created_at  INTEGER NOT NULL
);
CREATE INDEX vehicles_driver ON vehicles (driver_id);

CREATE TABLE mandates (
    id              TEXT PRIMARY KEY,
    driver_id       TEXT NOT NULL REFERENCES drivers (id),
    provider        TEXT NOT NULL,
    provider_ref    TEXT NOT NULL,
    status          TEXT NOT NULL,
    per_charge_cap  INTEGER,
    monthly_cap     INTEGER,
    currency        TEXT NOT NULL,
    channel         TEXT NOT NULL,
    signed_at       INTEGER NOT NULL,
    revoked_at      INTEGER
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
    entry_at        INTEGER NOT NULL,
    exit_event_id   TEXT,
    exit_lane       TEXT,
    exit_at         INTEGER,
    fee_minor       INTEGER,
    currency        TEXT,
    quote           TEXT,
    updated_at      INTEGER NOT NULL
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
    captured_at  INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    plate        TEXT,
    quality      TEXT NOT NULL,
    resent       INTEGER NOT NULL,
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
    amount_minor     INTEGER NOT NULL,
    currency         TEXT NOT NULL,
    status           TEXT NOT NULL,
    method           TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL UNIQUE,
    attempts         INTEGER NOT NULL,
    next_attempt_at  INTEGER,
    lease_owner      TEXT,
    lease_until      INTEGER,
    provider_txn     TEXT,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    settled_at       INTEGER
);
CREATE INDEX charges_due ON charges (status, next_attempt_at);
CREATE INDEX charges_driver ON charges (driver_id, status);

CREATE TABLE charge_attempts (
    id          TEXT PRIMARY KEY,
    charge_id   TEXT NOT NULL REFERENCES charges (id),
    attempt     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
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
    created_at  INTEGER NOT NULL,
    resolved_at INTEGER,
    resolution  TEXT
);
CREATE INDEX exceptions_open ON exceptions (lot_id, resolved_at);

CREATE TABLE outbox (
    id            TEXT PRIMARY KEY,
    topic         TEXT NOT NULL,
    payload       BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    published_at  INTEGER
);
CREATE INDEX outbox_pending ON outbox (published_at);

CREATE TABLE audit (
    id       TEXT PRIMARY KEY,
    at       INTEGER NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    detail   TEXT NOT NULL
);

CREATE TABLE dead_letters (
    id           TEXT PRIMARY KEY,
    received_at  INTEGER NOT NULL,
    topic        TEXT NOT NULL,
    reason       TEXT NOT NULL,
    detail       TEXT NOT NULL,
    payload      BLOB NOT NULL
);

CREATE TABLE sandbox_wallets (
    reference      TEXT PRIMARY KEY,
    balance_minor  INTEGER NOT NULL,
    currency       TEXT NOT NULL,
    fail_next      INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

CREATE TABLE sandbox_debits (
    idempotency_key  TEXT PRIMARY KEY,
    reference        TEXT NOT NULL,
    amount_minor     INTEGER NOT NULL,
    outcome          TEXT NOT NULL,
    txn_id           TEXT NOT NULL,
    at               INTEGER NOT NULL
);
