-- Orch's SQLite schema, version 5: chat turns for /v1/usage, one per job.

CREATE TABLE usage (
    job_id TEXT    NOT NULL PRIMARY KEY,
    at     INTEGER NOT NULL,
    record TEXT    NOT NULL
) WITHOUT ROWID;

CREATE INDEX usage_by_time ON usage (at);
