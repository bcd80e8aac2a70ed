-- ordersys outbox and inbox tables. Portable between MySQL 8.0 and MariaDB >= 10.6.

CREATE TABLE IF NOT EXISTS outbox_messages (
    seq           BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    id            BINARY(16)      NOT NULL,
    topic         VARCHAR(255)    NOT NULL,
    msg_key       VARCHAR(255)    NOT NULL,
    payload       LONGBLOB        NOT NULL,
    headers       TEXT            NOT NULL,
    created_at_us BIGINT          NOT NULL,
    attempts      INT UNSIGNED    NOT NULL DEFAULT 0,
    last_error    TEXT            NULL,
    sent_at       DATETIME(6)     NULL,
    leased_by     VARCHAR(128)    NULL,
    lease_until   DATETIME(6)     NULL,
    PRIMARY KEY (seq),
    UNIQUE KEY uq_outbox_id (id),
    KEY idx_outbox_unsent (sent_at, seq)
) ENGINE = InnoDB;

-- One row that claiming relays lock to take turns (claims are short).
CREATE TABLE IF NOT EXISTS outbox_claim_lock (
    name VARCHAR(32) NOT NULL,
    PRIMARY KEY (name)
) ENGINE = InnoDB;

INSERT IGNORE INTO outbox_claim_lock (name) VALUES ('relay');

CREATE TABLE IF NOT EXISTS inbox_messages (
    consumer     VARCHAR(128) NOT NULL,
    message_id   BINARY(16)   NOT NULL,
    processed_at DATETIME(6)  NOT NULL,
    PRIMARY KEY (consumer, message_id),
    KEY idx_inbox_processed (processed_at)
) ENGINE = InnoDB;
