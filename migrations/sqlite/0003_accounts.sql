-- Who may use the HTTP side: operator accounts (argon2 password hashes), their signed-in
-- sessions (only a SHA-256 of each cookie token is kept), and API tokens for integrations
-- (likewise hashed). A role is one of admin, operator, finance, viewer; `lots` is a
-- comma-separated list of the lots the holder may see and act on, NULL for all lots.
CREATE TABLE accounts (
    id              TEXT PRIMARY KEY,
    username        TEXT NOT NULL UNIQUE,
    password_hash   TEXT NOT NULL,
    role            TEXT NOT NULL,
    lots            TEXT,
    created_at      INTEGER NOT NULL,
    disabled_at     INTEGER
);

CREATE TABLE logins (
    token_hash      TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES accounts (id),
    csrf            TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL
);

CREATE TABLE api_tokens (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    token_hash      TEXT NOT NULL UNIQUE,
    role            TEXT NOT NULL,
    lots            TEXT,
    created_by      TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    revoked_at      INTEGER
);

-- Each gateway's HMAC key (hex), made by `parkpay-server gateway add`: the gateway signs its
-- events with it and the server signs what it sends that gateway.
CREATE TABLE gateway_keys (
    gateway_id      TEXT PRIMARY KEY,
    key_hex         TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);
