-- Orch's SQLite schema, version 11: the API key that submitted a job (`local`
-- over stdio MCP; a delivery has its job's), so a key sees only its own jobs
-- and `GET /v1/jobs` pages one owner's jobs through an index. Jobs stored
-- before this have no owner: only admin sees them.

ALTER TABLE jobs ADD COLUMN owner TEXT;
CREATE INDEX jobs_owner ON jobs (owner, id) WHERE owner IS NOT NULL;
