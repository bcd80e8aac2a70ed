-- Dead letters parked by SqliteDeadLetters: one row per message that failed for good,
-- until it is replayed or removed. A message parked again (same topic and id) is kept once.
CREATE TABLE IF NOT EXISTS dead_letters (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id    BLOB    NOT NULL,
    topic         TEXT    NOT NULL,
    msg_key       TEXT    NOT NULL,
    payload       BLOB    NOT NULL,
    headers       TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    parked_at_us  INTEGER NOT NULL,
    UNIQUE (topic, message_id)
);
