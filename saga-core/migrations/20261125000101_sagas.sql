-- ordersys saga instances. Portable between MySQL 8.0 and MariaDB >= 10.6.
CREATE TABLE IF NOT EXISTS saga_instances (
    id            BINARY(16)      NOT NULL,
    saga_type     VARCHAR(64)     NOT NULL,
    status        VARCHAR(16)     NOT NULL,
    state         TEXT            NOT NULL,
    data          LONGBLOB        NOT NULL,
    deadlines     TEXT            NOT NULL,
    next_deadline BIGINT          NULL,
    version       BIGINT UNSIGNED NOT NULL,
    created_at_ms BIGINT          NOT NULL,
    updated_at_ms BIGINT          NOT NULL,
    PRIMARY KEY (id),
    KEY idx_saga_deadline (next_deadline),
    KEY idx_saga_status (status)
) ENGINE = InnoDB;
