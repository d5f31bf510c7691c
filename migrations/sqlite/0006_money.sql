-- Real money (docs/payments.md): the stay as the payment provider knows it, refunds, the
-- provider's notifications (kept once each, by their id), and reconciliation runs against the
-- provider's daily bill.

-- What the provider knows of a stay: WeChat Pay's parking entry (out_parking_no is ours, the
-- parking id is theirs). `state` is normal or blocked; a blocked stay is not deducted.
CREATE TABLE provider_parkings (
    session_id      TEXT PRIMARY KEY REFERENCES sessions (id),
    provider        TEXT NOT NULL,
    out_parking_no  TEXT NOT NULL UNIQUE,
    parking_id      TEXT,
    state           TEXT NOT NULL,
    block_reason    TEXT,
    updated_at      INTEGER NOT NULL
);

-- Money given back. A charge's refunds never add up to more than the charge: `refunded_minor`
-- on the charge is raised by a conditional update in the transaction that inserts the refund,
-- and lowered again if the provider closes the refund.
CREATE TABLE refunds (
    id             TEXT PRIMARY KEY,
    charge_id      TEXT NOT NULL REFERENCES charges (id),
    out_refund_no  TEXT NOT NULL UNIQUE,
    amount_minor   INTEGER NOT NULL,
    currency       TEXT NOT NULL,
    reason         TEXT NOT NULL,
    status         TEXT NOT NULL,      -- pending | processing | succeeded | closed | abnormal
    provider_ref   TEXT,
    last_error     TEXT,
    actor          TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    settled_at     INTEGER
);
CREATE INDEX refunds_charge ON refunds (charge_id);
CREATE INDEX refunds_open ON refunds (status, updated_at);

-- The dashboard lists charges by their last change.
CREATE INDEX charges_updated ON charges (updated_at);

ALTER TABLE charges ADD COLUMN refunded_minor INTEGER NOT NULL DEFAULT 0;
-- WeChat Pay advanced the money (垫资, bank_type BPA) and the driver has not paid it back yet.
ALTER TABLE charges ADD COLUMN advanced INTEGER NOT NULL DEFAULT 0;

CREATE TABLE provider_notifications (
    id           TEXT PRIMARY KEY,
    provider     TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    resource     TEXT NOT NULL
);

CREATE TABLE reconciliations (
    id            TEXT PRIMARY KEY,
    provider      TEXT NOT NULL,
    bill_date     TEXT NOT NULL,
    ran_at        INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    status        TEXT NOT NULL,       -- done | not_ready | failed
    detail        TEXT NOT NULL,
    matched       INTEGER NOT NULL,
    differences   INTEGER NOT NULL
);
CREATE INDEX reconciliations_date ON reconciliations (bill_date, ran_at);

CREATE TABLE reconciliation_items (
    id            TEXT PRIMARY KEY,
    run_id        TEXT NOT NULL REFERENCES reconciliations (id),
    kind          TEXT NOT NULL,       -- matched | missing_at_provider | missing_here | amount_differs
    entry         TEXT NOT NULL,       -- trade | refund
    reference     TEXT NOT NULL,       -- out_trade_no or out_refund_no
    charge_id     TEXT,
    ours_minor    INTEGER,
    theirs_minor  INTEGER,
    detail        TEXT NOT NULL
);
CREATE INDEX reconciliation_items_run ON reconciliation_items (run_id, kind);

-- The sandbox provider's refunds, by their idempotency key.
CREATE TABLE sandbox_refunds (
    out_refund_no  TEXT PRIMARY KEY,
    trade_key      TEXT NOT NULL,
    reference      TEXT NOT NULL,
    amount_minor   INTEGER NOT NULL,
    refund_id      TEXT NOT NULL,
    at             INTEGER NOT NULL
);
