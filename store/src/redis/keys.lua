-- API keys. ARGV[3] is the operation.
-- Touches: key:<id> (HASH name, prefix, scopes, created_at, revoked_at, servers, expires_at,
-- tools, providers, last_used_at, rotated_until, rate_limit_per_minute, jobs_per_day, hash,
-- previous_hash),
-- keys (ZSET ids by created_at), keys:active (HASH secret hash -> id of unrevoked keys),
-- keys:previous (HASH previous secret hash -> id of unrevoked rotated keys).
local K_KEYS, K_ACTIVE, K_PREVIOUS = P .. ':keys', P .. ':keys:active', P .. ':keys:previous'
local KEY_FIELDS = {'name', 'prefix', 'scopes', 'created_at', 'revoked_at', 'servers', 'expires_at', 'tools',
  'providers', 'last_used_at', 'rotated_until', 'rate_limit_per_minute', 'jobs_per_day'}
local function read_key(id)
  local v = redis.call('HMGET', P .. ':key:' .. id, unpack(KEY_FIELDS))
  if not v[1] then return false end
  table.insert(v, 1, id)
  return v
end

local op = ARGV[3]
if op == 'create' or op == 'create_first' then
  -- ARGV[4..]: id, name, prefix, scopes (JSON), created_at, revoked_at ('' for none), hash,
  -- servers (JSON array, '' for all), expires_at ('' for never), tools, providers (as servers),
  -- rate_limit_per_minute, jobs_per_day ('' for the server's default)
  if op == 'create_first' and redis.call('HLEN', K_ACTIVE) > 0 then return 0 end
  local id = ARGV[4]
  redis.call('HSET', P .. ':key:' .. id, 'name', ARGV[5], 'prefix', ARGV[6], 'scopes', ARGV[7],
    'created_at', ARGV[8], 'revoked_at', ARGV[9], 'hash', ARGV[10], 'servers', ARGV[11],
    'expires_at', ARGV[12], 'tools', ARGV[13], 'providers', ARGV[14], 'rate_limit_per_minute', ARGV[15],
    'jobs_per_day', ARGV[16])
  redis.call('ZADD', K_KEYS, ARGV[8], id)
  if ARGV[9] == '' then redis.call('HSET', K_ACTIVE, ARGV[10], id) end
  return 1
elseif op == 'revoke' then
  -- ARGV[4]: id
  local k = P .. ':key:' .. ARGV[4]
  local s = redis.call('HMGET', k, 'revoked_at', 'hash', 'previous_hash')
  if not s[2] or (s[1] and s[1] ~= '') then return 0 end
  redis.call('HSET', k, 'revoked_at', NOW)
  if redis.call('HGET', K_ACTIVE, s[2]) == ARGV[4] then redis.call('HDEL', K_ACTIVE, s[2]) end
  if s[3] and redis.call('HGET', K_PREVIOUS, s[3]) == ARGV[4] then redis.call('HDEL', K_PREVIOUS, s[3]) end
  return 1
elseif op == 'rotate' then
  -- ARGV[4..]: id, new prefix, new hash, rotated_until
  local k = P .. ':key:' .. ARGV[4]
  local s = redis.call('HMGET', k, 'revoked_at', 'hash', 'previous_hash')
  if not s[2] or (s[1] and s[1] ~= '') then return 0 end
  if s[3] and redis.call('HGET', K_PREVIOUS, s[3]) == ARGV[4] then redis.call('HDEL', K_PREVIOUS, s[3]) end
  redis.call('HDEL', K_ACTIVE, s[2])
  redis.call('HSET', K_PREVIOUS, s[2], ARGV[4])
  redis.call('HSET', K_ACTIVE, ARGV[6], ARGV[4])
  redis.call('HSET', k, 'previous_hash', s[2], 'hash', ARGV[6], 'prefix', ARGV[5], 'rotated_until', ARGV[7])
  return 1
elseif op == 'update' then
  -- ARGV[4..]: id, expires_at, servers, tools, providers, rate_limit_per_minute, jobs_per_day ('' for none)
  local k = P .. ':key:' .. ARGV[4]
  local s = redis.call('HMGET', k, 'revoked_at', 'hash')
  if not s[2] or (s[1] and s[1] ~= '') then return 0 end
  redis.call('HSET', k, 'expires_at', ARGV[5], 'servers', ARGV[6], 'tools', ARGV[7], 'providers', ARGV[8],
    'rate_limit_per_minute', ARGV[9], 'jobs_per_day', ARGV[10])
  return 1
elseif op == 'touch' then
  -- ARGV[4..]: id, last_used_at
  local k = P .. ':key:' .. ARGV[4]
  if redis.call('EXISTS', k) == 1 then redis.call('HSET', k, 'last_used_at', ARGV[5]) end
  return 1
elseif op == 'by_previous' then
  -- ARGV[4]: secret hash
  local id = redis.call('HGET', K_PREVIOUS, ARGV[4])
  if not id then return false end
  return read_key(id)
elseif op == 'by_hash' then
  -- ARGV[4]: secret hash
  local id = redis.call('HGET', K_ACTIVE, ARGV[4])
  if not id then return false end
  return read_key(id)
elseif op == 'list' then
  local out = {}
  for _, id in ipairs(redis.call('ZRANGE', K_KEYS, 0, -1)) do
    local v = read_key(id)
    if v then out[#out + 1] = v end
  end
  return out
end
return redis.error_reply('unknown keys operation ' .. tostring(op))
