-- The driver portal: drivers sign in with their phone number and a one-time code.
--
-- A driver's phone as the portal finds it: E.164 (+8613800138000), set by the server from
-- `phone` when a driver is registered. Existing rows are filled here for the usual ways of
-- writing a mainland mobile number; any other form stays NULL (that driver cannot sign in
-- until the number is entered again).
ALTER TABLE drivers ADD COLUMN phone_key TEXT;
UPDATE drivers SET phone_key = REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(phone, ' ', ''), '-', ''), '(', ''), ')', ''), '.', '')
    WHERE phone IS NOT NULL;
UPDATE drivers SET phone_key = CASE
        WHEN LENGTH(phone_key) = 11 AND SUBSTR(phone_key, 1, 1) = '1' THEN '+86' || phone_key
        WHEN LENGTH(phone_key) = 13 AND SUBSTR(phone_key, 1, 3) = '861' THEN '+' || phone_key
        WHEN LENGTH(phone_key) = 14 AND SUBSTR(phone_key, 1, 4) = '+861' THEN phone_key
        WHEN LENGTH(phone_key) = 15 AND SUBSTR(phone_key, 1, 5) = '00861' THEN '+' || SUBSTR(phone_key, 3)
        ELSE NULL
    END
    WHERE phone_key IS NOT NULL;
CREATE INDEX drivers_phone_key ON drivers (phone_key);

-- One-time sign-in codes: only a SHA-256 over the code's id, the phone and the digits is kept.
-- `tries` counts every try before it is compared; `used_at` is set once, when it signs in.
-- Rows for unknown numbers are made too (and never sent), so asking answers alike.
CREATE TABLE portal_codes (
    id              TEXT PRIMARY KEY,
    phone           TEXT NOT NULL,
    code_hash       TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    tries           BIGINT NOT NULL DEFAULT 0,
    used_at         BIGINT
);
CREATE INDEX portal_codes_phone ON portal_codes (phone, created_at);

-- Drivers' signed-in sessions (the SHA-256 of each cookie token), for a phone number: they
-- cover the driver records registered with it. Apart from operators' `logins` on purpose.
CREATE TABLE driver_logins (
    token_hash      TEXT PRIMARY KEY,
    phone           TEXT NOT NULL,
    csrf            TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL
);
