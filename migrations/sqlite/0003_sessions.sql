-- Orch's SQLite schema, version 3: chat sessions.

-- `messages` is a JSON array of {role, content, at, routed_to?, job_id?}.
-- Rows past `expires_at` are invisible and deleted by the retention purge.
CREATE TABLE sessions (
    id         TEXT    NOT NULL PRIMARY KEY,
    owner      TEXT    NOT NULL,
    messages   TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX sessions_by_update ON sessions (updated_at DESC, id);
