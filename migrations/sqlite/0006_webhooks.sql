-- Orch's SQLite schema, version 6: global webhook subscriptions. Deliveries are
-- jobs of kind 'delivery' and need no table of their own.

-- `config` is the subscription as the admin API stored it (JSON text); it holds
-- the signing secret, which must stay readable to sign deliveries.
CREATE TABLE webhooks (
    id         TEXT    NOT NULL PRIMARY KEY,
    config     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
