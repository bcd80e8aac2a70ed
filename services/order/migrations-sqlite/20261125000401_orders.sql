CREATE TABLE IF NOT EXISTS orders (
    id              BLOB    NOT NULL PRIMARY KEY,
    user_id         BLOB    NOT NULL,
    status          TEXT    NOT NULL,
    currency        TEXT    NOT NULL,
    total_amount    INTEGER NOT NULL,
    items           TEXT    NOT NULL,
    payment_id      TEXT,
    failure_reason  TEXT,
    saga_id         BLOB    NOT NULL,
    cancel_saga_id  BLOB,
    idempotency_key TEXT,
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    UNIQUE (user_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS idx_orders_user_created ON orders (user_id, created_at_ms, id);
CREATE INDEX IF NOT EXISTS idx_orders_cancel_saga ON orders (cancel_saga_id);
