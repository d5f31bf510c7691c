-- History pages read stays by entry, passages by capture and the audit log by instant, newest
-- first, a page at a time.
CREATE INDEX sessions_lot_entry ON sessions (lot_id, entry_at);
CREATE INDEX sessions_entry ON sessions (entry_at);
CREATE INDEX events_lot_captured ON events (lot_id, captured_at);
CREATE INDEX events_captured ON events (captured_at);
CREATE INDEX audit_at ON audit (at);
