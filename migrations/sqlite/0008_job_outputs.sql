-- Orch's SQLite schema, version 7: plan node outputs too large to travel in
-- events and results, kept once per job and node and referenced from both
-- (`GET /v1/jobs/{id}/outputs/{node}`). Deleted with their job.
CREATE TABLE job_outputs (
    job_id TEXT NOT NULL,
    node   TEXT NOT NULL,
    output TEXT NOT NULL,
    PRIMARY KEY (job_id, node)
) WITHOUT ROWID;
