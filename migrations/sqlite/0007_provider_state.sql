-- Orch's SQLite schema: each provider's shared state (cooldown, last error,
-- open authentication incident), written by workers and read by every process.

-- `state` is the provider's `ProviderState` as JSON text; updates read, merge
-- and write it in the writer's transaction.
CREATE TABLE provider_states (
    name  TEXT NOT NULL PRIMARY KEY,
    state TEXT NOT NULL
) WITHOUT ROWID;
