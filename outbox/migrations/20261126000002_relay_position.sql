-- (Numbered 000002: the order service's own migrations took 20261126000001, and crates
-- sharing a database share the migration table.)
-- The streaming relay (`MySqlStreamingOutbox`): one row per stream, the seq up to which
-- every outbox row has been published, and which relay holds the stream (a lease).
CREATE TABLE IF NOT EXISTS outbox_relay_position (
    name        VARCHAR(64)     NOT NULL,
    position    BIGINT UNSIGNED NOT NULL,
    owner       VARCHAR(128)    NULL,
    lease_until DATETIME(6)     NULL,
    PRIMARY KEY (name)
) ENGINE = InnoDB;
