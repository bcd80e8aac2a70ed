-- What happened to each saga (see the MySQL migration).
CREATE TABLE IF NOT EXISTS saga_history (
    saga_id  BLOB    NOT NULL,
    version  INTEGER NOT NULL,
    idx      INTEGER NOT NULL,
    at_ms    INTEGER NOT NULL,
    kind     TEXT    NOT NULL,
    name     TEXT    NOT NULL,
    detail   TEXT    NOT NULL,
    trace_id TEXT    NOT NULL,
    PRIMARY KEY (saga_id, version, idx)
);
CREATE INDEX IF NOT EXISTS idx_saga_status ON saga_instances (status, updated_at_ms);
