-- API keys. ARGV[3] is the operation.
-- Touches: key:<id> (HASH name, prefix, scopes, created_at, revoked_at, servers, hash),
-- keys (ZSET ids by created_at), keys:active (HASH secret hash -> id of unrevoked keys).
local K_KEYS, K_ACTIVE = P .. ':keys', P .. ':keys:active'
local KEY_FIELDS = {'name', 'prefix', 'scopes', 'created_at', 'revoked_at', 'servers'}
local function read_key(id)
  local v = redis.call('HMGET', P .. ':key:' .. id, unpack(KEY_FIELDS))
  if not v[1] then return false end
  table.insert(v, 1, id)
  return v
end

local op = ARGV[3]
if op == 'create' or op == 'create_first' then
  -- ARGV[4..]: id, name, prefix, scopes (JSON), created_at, revoked_at ('' for none), hash,
  -- servers (JSON array, '' for all)
  if op == 'create_first' and redis.call('HLEN', K_ACTIVE) > 0 then return 0 end
  local id = ARGV[4]
  redis.call('HSET', P .. ':key:' .. id, 'name', ARGV[5], 'prefix', ARGV[6], 'scopes', ARGV[7],
    'created_at', ARGV[8], 'revoked_at', ARGV[9], 'hash', ARGV[10], 'servers', ARGV[11])
  redis.call('ZADD', K_KEYS, ARGV[8], id)
  if ARGV[9] == '' then redis.call('HSET', K_ACTIVE, ARGV[10], id) end
  return 1
elseif op == 'revoke' then
  -- ARGV[4]: id
  local k = P .. ':key:' .. ARGV[4]
  local s = redis.call('HMGET', k, 'revoked_at', 'hash')
  if not s[2] or (s[1] and s[1] ~= '') then return 0 end
  redis.call('HSET', k, 'revoked_at', NOW)
  if redis.call('HGET', K_ACTIVE, s[2]) == ARGV[4] then redis.call('HDEL', K_ACTIVE, s[2]) end
  return 1
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
