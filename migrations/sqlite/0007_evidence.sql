-- Evidence pictures (docs/mqtt.md, "evidence"): the frame of a passage a gateway would not
-- vouch for, kept by its event id so an attendant can check a plate against the car. Personal
-- data: the purge job deletes pictures older than evidence.retention_days (docs/operations.md).
-- The event row may arrive after its picture, so there is no foreign key to events.
CREATE TABLE evidence (
    event_id     TEXT PRIMARY KEY,
    lot_id       TEXT NOT NULL,
    lane_id      TEXT NOT NULL,
    format       TEXT NOT NULL,      -- jpeg | png
    digest       TEXT NOT NULL,      -- SHA-256 hex of image
    image        BLOB NOT NULL,
    captured_at  INTEGER NOT NULL,
    received_at  INTEGER NOT NULL
);
CREATE INDEX evidence_received ON evidence (received_at);

-- Who handles an open exception: one row per assigned exception, replaced on reassignment.
CREATE TABLE exception_assignments (
    exception_id  TEXT PRIMARY KEY REFERENCES exceptions (id),
    assigned_to   TEXT NOT NULL,
    assigned_by   TEXT NOT NULL,
    assigned_at   INTEGER NOT NULL
);
CREATE INDEX exception_assignments_to ON exception_assignments (assigned_to);
