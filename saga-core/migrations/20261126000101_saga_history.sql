-- What happened to each saga: events applied, state changes, commands sent — for
-- operators (`SagaStore::history`). Written in the saga's own unit of work.
CREATE TABLE IF NOT EXISTS saga_history (
    saga_id  BINARY(16)      NOT NULL,
    version  BIGINT UNSIGNED NOT NULL,
    idx      INT UNSIGNED    NOT NULL,
    at_ms    BIGINT          NOT NULL,
    kind     VARCHAR(16)     NOT NULL,
    name     VARCHAR(128)    NOT NULL,
    detail   TEXT            NOT NULL,
    trace_id VARCHAR(32)     NOT NULL,
    PRIMARY KEY (saga_id, version, idx)
) ENGINE = InnoDB;

CREATE INDEX idx_saga_updated ON saga_instances (status, updated_at_ms);
