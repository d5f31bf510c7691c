-- Server instances say they are alive by counting up `beat` every few seconds. When one stops
-- counting, the others free the charges its payment worker had leased instead of waiting for the
-- leases to run out (docs/operations.md, "Several instances").
CREATE TABLE instances (
    name     TEXT PRIMARY KEY,
    beat     INTEGER NOT NULL,
    seen_at  INTEGER NOT NULL
);

-- A capped mandate's spend this month is summed on every exit: without this it scanned every
-- charge ever made.
CREATE INDEX charges_mandate ON charges (mandate_id, created_at);
