-- Idempotency keys are case-sensitive: "ABC" and "abc" are two keys (the default
-- collation compared them case-insensitively, answering one key with another's order).
ALTER TABLE orders MODIFY idempotency_key VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL;
