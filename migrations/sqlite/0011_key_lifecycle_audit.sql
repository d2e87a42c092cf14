-- Key lifecycle (expiry, rotation, last use), tool and provider allow-lists,
-- and the audit log.
ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
ALTER TABLE api_keys ADD COLUMN tools TEXT;
ALTER TABLE api_keys ADD COLUMN providers TEXT;
ALTER TABLE api_keys ADD COLUMN last_used_at INTEGER;
-- The secret before the last rotation, and until when it still works.
ALTER TABLE api_keys ADD COLUMN previous_hash TEXT;
ALTER TABLE api_keys ADD COLUMN rotated_until INTEGER;
CREATE INDEX api_keys_previous_hash ON api_keys (previous_hash) WHERE previous_hash IS NOT NULL;

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    key_id      TEXT,
    key_name    TEXT,
    action      TEXT    NOT NULL,
    method      TEXT    NOT NULL,
    route       TEXT    NOT NULL,
    target_kind TEXT,
    target      TEXT,
    job_id      TEXT,
    outcome     TEXT    NOT NULL,
    status      INTEGER
);
CREATE INDEX audit_log_at ON audit_log (at);
