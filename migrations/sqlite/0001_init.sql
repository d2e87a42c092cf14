-- Orch's SQLite schema, version 1. Applied by store/src/sqlite.rs, which records
-- the version in PRAGMA user_version; later changes go in 0002_... files.
--
-- Times are integer milliseconds since the Unix epoch; JSON values are TEXT.
-- Job ids are UUIDv7 as 36-character lowercase hyphenated text, so ordering by
-- id is ordering by creation time.

CREATE TABLE jobs (
    id               TEXT    NOT NULL PRIMARY KEY,
    kind             TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    input            TEXT    NOT NULL,
    metadata         TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    progress         TEXT,
    error            TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    run_at           INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker           TEXT,
    lease_expires_at INTEGER,
    -- seq of the job's last event, so appending one needs no lookup
    last_seq         INTEGER NOT NULL DEFAULT 0
);

-- Claiming: due queued jobs, oldest first. Partial, so it holds only the backlog
-- and the cost of a claim does not grow with the number of finished jobs.
CREATE INDEX jobs_due ON jobs (run_at, id) WHERE status = 'queued';
-- Recovery: running jobs by lease expiry.
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE status = 'running';
-- Listing, newest first, filtered by status or kind; counting per status.
CREATE INDEX jobs_status ON jobs (status, id);
CREATE INDEX jobs_kind ON jobs (kind, id);
-- Purging finished jobs by age.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE job_events (
    job_id TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    kind   TEXT    NOT NULL,
    data   TEXT    NOT NULL,
    at     INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;

CREATE TABLE job_results (
    job_id TEXT NOT NULL PRIMARY KEY,
    result TEXT NOT NULL
);

-- `key` is already scoped to the caller (API key id) by the API.
CREATE TABLE idempotency (
    key        TEXT    NOT NULL PRIMARY KEY,
    body_hash  TEXT    NOT NULL,
    job_id     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX idempotency_job ON idempotency (job_id);

CREATE TABLE workers (
    id          TEXT    NOT NULL PRIMARY KEY,
    hostname    TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    concurrency INTEGER NOT NULL,
    running     INTEGER NOT NULL
);
CREATE INDEX workers_last_seen ON workers (last_seen);

-- Only the hash of a key's secret is stored.
CREATE TABLE api_keys (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    prefix      TEXT    NOT NULL,
    scopes      TEXT    NOT NULL,
    secret_hash TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
