-- Reports sum stays by when they ended (by when they began: sessions_lot_entry, 0009) and
-- money by when it settled, per lot.
CREATE INDEX sessions_lot_exit ON sessions (lot_id, exit_at);
CREATE INDEX charges_lot_settled ON charges (lot_id, settled_at);
CREATE INDEX refunds_settled ON refunds (status, settled_at);
