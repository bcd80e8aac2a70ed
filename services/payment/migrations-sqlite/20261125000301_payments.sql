CREATE TABLE IF NOT EXISTS accounts (
    user_id       BLOB    NOT NULL PRIMARY KEY,
    balance       INTEGER NOT NULL,
    currency      TEXT    NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

-- One row per order: the unique key is what makes a debit happen at most once.
CREATE TABLE IF NOT EXISTS payments (
    id            BLOB    NOT NULL PRIMARY KEY,
    order_id      BLOB    NOT NULL UNIQUE,
    user_id       BLOB    NOT NULL,
    amount        INTEGER NOT NULL,
    currency      TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    reason        TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_payments_user ON payments (user_id);
