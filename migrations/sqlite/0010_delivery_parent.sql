-- Orch's SQLite schema, version 7: a delivery's job (its input's `job_id`) as a
-- column of its own, so `GET /v1/jobs/{id}/deliveries` is an index lookup
-- rather than a scan of every delivery.

ALTER TABLE jobs ADD COLUMN parent TEXT;
UPDATE jobs SET parent = json_extract(input, '$.job_id') WHERE kind = 'delivery';
CREATE INDEX jobs_parent ON jobs (parent, id) WHERE parent IS NOT NULL;
