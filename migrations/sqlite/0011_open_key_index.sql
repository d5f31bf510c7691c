-- The look-alike index led with lot_id, so a planner with stale statistics (a lot analysed
-- while empty) could take it for the exact-plate lookup and scan every open stay of the lot
-- (0.4 ms at 1,500 open stays instead of 0.01 ms). Led by the key, it serves only lookups by
-- key, and the exact plate is found by sessions_one_open (lot_id, plate).
DROP INDEX sessions_open_key;
CREATE INDEX sessions_open_key ON sessions (plate_key, lot_id) WHERE status = 'open';
