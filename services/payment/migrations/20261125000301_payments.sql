CREATE TABLE IF NOT EXISTS accounts (
    user_id       BINARY(16) NOT NULL,
    balance       BIGINT     NOT NULL,
    currency      CHAR(3)    NOT NULL,
    updated_at_ms BIGINT     NOT NULL,
    PRIMARY KEY (user_id)
) ENGINE = InnoDB;

-- One row per order: the unique key is what makes a debit happen at most once.
CREATE TABLE IF NOT EXISTS payments (
    id            BINARY(16)  NOT NULL,
    order_id      BINARY(16)  NOT NULL,
    user_id       BINARY(16)  NOT NULL,
    amount        BIGINT      NOT NULL,
    currency      CHAR(3)     NOT NULL,
    status        VARCHAR(16) NOT NULL,
    reason        TEXT        NULL,
    created_at_ms BIGINT      NOT NULL,
    updated_at_ms BIGINT      NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_payments_order (order_id),
    KEY idx_payments_user (user_id)
) ENGINE = InnoDB;
