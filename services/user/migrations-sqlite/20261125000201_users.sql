CREATE TABLE IF NOT EXISTS users (
    id            BLOB    NOT NULL PRIMARY KEY,
    email         TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL
);
