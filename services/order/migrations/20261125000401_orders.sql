CREATE TABLE IF NOT EXISTS orders (
    id              BINARY(16)   NOT NULL,
    user_id         BINARY(16)   NOT NULL,
    status          VARCHAR(16)  NOT NULL,
    currency        CHAR(3)      NOT NULL,
    total_amount    BIGINT       NOT NULL,
    items           TEXT         NOT NULL,
    payment_id      VARCHAR(64)  NULL,
    failure_reason  TEXT         NULL,
    saga_id         BINARY(16)   NOT NULL,
    cancel_saga_id  BINARY(16)   NULL,
    idempotency_key VARCHAR(128) NULL,
    created_at_ms   BIGINT       NOT NULL,
    updated_at_ms   BIGINT       NOT NULL,
    PRIMARY KEY (id),
    -- Same user + same Idempotency-Key = the same order, whatever the race.
    UNIQUE KEY uq_orders_idempotency (user_id, idempotency_key),
    KEY idx_orders_user_created (user_id, created_at_ms, id),
    KEY idx_orders_cancel_saga (cancel_saga_id)
) ENGINE = InnoDB;
