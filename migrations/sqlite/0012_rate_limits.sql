-- Per-key request rate limits and daily job quotas (NULL: the server's default).
ALTER TABLE api_keys ADD COLUMN rate_limit_per_minute INTEGER;
ALTER TABLE api_keys ADD COLUMN jobs_per_day INTEGER;

-- Jobs each owner submitted on each UTC day (days since the Unix epoch),
-- counted in the transaction that stores the job.
CREATE TABLE job_quota (
    owner TEXT    NOT NULL,
    day   INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (owner, day)
) WITHOUT ROWID;
