-- ordersys saga instances for SQLite (the embedded mode).
CREATE TABLE IF NOT EXISTS saga_instances (
    id            BLOB    NOT NULL PRIMARY KEY,
    saga_type     TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    data          BLOB    NOT NULL,
    deadlines     TEXT    NOT NULL,
    next_deadline INTEGER,
    version       INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_saga_deadline ON saga_instances (next_deadline);
