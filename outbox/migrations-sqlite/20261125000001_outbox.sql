-- ordersys outbox, inbox and idempotency tables for SQLite (the embedded mode).

CREATE TABLE IF NOT EXISTS outbox_messages (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             BLOB    NOT NULL UNIQUE,
    topic          TEXT    NOT NULL,
    msg_key        TEXT    NOT NULL,
    payload        BLOB    NOT NULL,
    headers        TEXT    NOT NULL,
    created_at_us  INTEGER NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    sent_at_us     INTEGER,
    leased_by      TEXT,
    lease_until_us INTEGER
);
CREATE INDEX IF NOT EXISTS idx_outbox_unsent ON outbox_messages (sent_at_us, seq);

CREATE TABLE IF NOT EXISTS inbox_messages (
    consumer        TEXT    NOT NULL,
    message_id      BLOB    NOT NULL,
    processed_at_us INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
);

CREATE TABLE IF NOT EXISTS idempotency_keys (
    key           TEXT    NOT NULL PRIMARY KEY,
    done          INTEGER NOT NULL,
    result        BLOB,
    expires_at_us INTEGER NOT NULL
);
