-- Lanes are configuration: which gateway speaks for a lane and which way cars pass through it.
-- An event from any other gateway, or in the other direction, is a dead letter.
CREATE TABLE lanes (
    lot_id      TEXT NOT NULL,
    lane_id     TEXT NOT NULL,
    direction   TEXT NOT NULL,
    gateway_id  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (lot_id, lane_id)
);

-- The payment worker reads back what it leased by owner: without this it scanned every charge.
CREATE INDEX charges_lease_owner ON charges (lease_owner);
