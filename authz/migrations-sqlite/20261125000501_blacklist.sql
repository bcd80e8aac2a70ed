-- Revoked token ids for SQLite (the embedded mode): they survive a restart.
CREATE TABLE IF NOT EXISTS revoked_tokens (
    jti           TEXT    NOT NULL PRIMARY KEY,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_revoked_expiry ON revoked_tokens (expires_at_ms);
