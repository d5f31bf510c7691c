-- The lot's own rules (docs/tariffs.md, "Lists, passes and classes"): white and black lists,
-- passes and visitor grants, each for one lot or for every lot, with a validity window.
CREATE TABLE plate_lists (
    id             TEXT PRIMARY KEY,
    kind           TEXT NOT NULL,      -- white | black | pass | visitor
    lot_id         TEXT,               -- NULL: every lot
    plate          TEXT NOT NULL,
    valid_from     BIGINT NOT NULL,
    valid_until    BIGINT,             -- NULL: open-ended (white and black lists only)
    grace_minutes  BIGINT NOT NULL,    -- a pass: honoured this long after valid_until
    percent_off    BIGINT,             -- a visitor grant: a discount instead of a free window
    reason         TEXT NOT NULL,
    created_by     TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    revoked_at     BIGINT,
    revoked_by     TEXT
);
CREATE INDEX plate_lists_plate ON plate_lists (plate);
CREATE INDEX plate_lists_lot ON plate_lists (lot_id, kind);

-- A vehicle's registered class (small, large, new_energy, motorcycle; NULL: read from the plate)
-- and the owner's anti-theft lock: a locked car's exit is held until it is unlocked.
ALTER TABLE vehicles ADD COLUMN class TEXT;
ALTER TABLE vehicles ADD COLUMN locked_at BIGINT;

-- Spaces kept for pass holders: other cars are refused when the rest is taken.
ALTER TABLE lots ADD COLUMN reserved_spaces BIGINT NOT NULL DEFAULT 0;


-- Merchant validations (商户优惠): a shop takes time or money off a stay. A merchant signs its
-- requests with its own key (only a SHA-256 of it is kept); each validation is bound to one stay,
-- either at once (by plate) or when a driver claims its code, and is redeemed by that stay's exit.
CREATE TABLE merchants (
    id              TEXT PRIMARY KEY,
    lot_id          TEXT NOT NULL REFERENCES lots (id),
    name            TEXT NOT NULL,
    key_hash        TEXT NOT NULL UNIQUE,
    minutes_off     BIGINT NOT NULL,
    amount_off      BIGINT NOT NULL,
    currency        TEXT NOT NULL,
    daily_limit     BIGINT NOT NULL,
    stackable       BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    disabled_at     BIGINT
);

CREATE TABLE validations (
    id            TEXT PRIMARY KEY,
    merchant_id   TEXT NOT NULL REFERENCES merchants (id),
    lot_id        TEXT NOT NULL,
    code          TEXT UNIQUE,
    session_id    TEXT REFERENCES sessions (id),
    minutes_off   BIGINT NOT NULL,
    amount_off    BIGINT NOT NULL,
    currency      TEXT NOT NULL,
    issued_at     BIGINT NOT NULL,
    bound_at      BIGINT,
    redeemed_at   BIGINT
);
CREATE INDEX validations_session ON validations (session_id);
CREATE INDEX validations_merchant ON validations (merchant_id, issued_at);

-- Tickets for cars without a plate (无牌车): scanning the code on a held entry's display opens a
-- stay under a ticket number and gives the phone a secret (only its SHA-256 is kept); the same
-- phone closes the stay at an exit.
CREATE TABLE tickets (
    secret_hash     TEXT PRIMARY KEY,
    session_id      TEXT NOT NULL UNIQUE REFERENCES sessions (id),
    lot_id          TEXT NOT NULL,
    entry_event_id  TEXT NOT NULL UNIQUE,
    created_at      BIGINT NOT NULL
);

-- A ticket page finds the exception its held passage raised.
CREATE INDEX exceptions_event ON exceptions (event_id);

-- Passes bought through the payment provider. The id is the buyer's idempotency key (and the
-- provider's): a retry with the same id returns the first purchase and never debits twice.
CREATE TABLE pass_purchases (
    id             TEXT PRIMARY KEY,
    lot_id         TEXT NOT NULL REFERENCES lots (id),
    plate          TEXT NOT NULL,
    driver_id      TEXT NOT NULL REFERENCES drivers (id),
    mandate_id     TEXT NOT NULL REFERENCES mandates (id),
    months         BIGINT NOT NULL,
    amount_minor   BIGINT NOT NULL,
    currency       TEXT NOT NULL,
    provider_txn   TEXT NOT NULL,
    list_entry_id  TEXT NOT NULL REFERENCES plate_lists (id),
    created_at     BIGINT NOT NULL
);
