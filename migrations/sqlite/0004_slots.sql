-- Orch's SQLite schema, version 4: slots of limits shared by every process
-- on this file (a provider's concurrency across workers).

CREATE TABLE slots (
    name       TEXT    NOT NULL,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (name, holder)
) WITHOUT ROWID;
