-- Indexes for purging: inbox records after their retention, idempotency keys once expired.
CREATE INDEX IF NOT EXISTS idx_inbox_processed ON inbox_messages (processed_at_us);
CREATE INDEX IF NOT EXISTS idx_idempotency_expires ON idempotency_keys (expires_at_us);
