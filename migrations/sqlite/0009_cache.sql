-- Orch's SQLite schema, version 8: a cache shared by every process on the
-- store (the LLM planner's plans), each entry until `expires_at` (ms).
-- Expired entries are invisible and deleted by purge.
CREATE TABLE cache (
    key        TEXT    NOT NULL PRIMARY KEY,
    value      TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
