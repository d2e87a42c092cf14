-- Orch's SQLite schema, version 2: MCP servers registered through the admin API,
-- and API keys limited to some servers.

-- `config` is the mcp-config.json entry as given (JSON text, `${VAR}`s unexpanded).
CREATE TABLE mcp_servers (
    name       TEXT    NOT NULL PRIMARY KEY,
    config     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

-- JSON array of server names; NULL for every server.
ALTER TABLE api_keys ADD COLUMN servers TEXT;
