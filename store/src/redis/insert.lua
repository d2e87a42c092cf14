-- insert_job. ARGV[3..]: id, kind, spec, max_attempts, created_at, run_at,
-- idempotency key ('' for none), body hash, record expiry (ms), parent ('' for none),
-- owner ('' for none), jobs a day the owner may submit (0: unlimited), the UTC day
-- (days since the epoch), when its count may be forgotten (ms).
-- Touches: idem:<key>, quota:<owner>:<day>, job:<id>, jobs, status:queued, kind:<kind>,
-- parent:<parent>, owner:<owner>, ready + ready:tail or delayed.
-- Returns {'created'}, {'existing', job}, {'conflict', first id} or {'over_quota'}.
local id, ikey = ARGV[3], ARGV[9]
local k = P .. ':idem:' .. ikey
if ikey ~= '' then
  local rec = redis.call('HMGET', k, 'job', 'hash', 'expires_at')
  if rec[1] and tonumber(rec[3]) > NOW_N then
    -- A record whose job was purged counts as absent.
    local first = read_job(rec[1])
    if first then
      if rec[2] == ARGV[10] then return {'existing', first} end
      return {'conflict', rec[1]}
    end
  end
end
-- A replay above is not counted; a refusal here stores nothing.
local per_day = tonumber(ARGV[14])
if per_day > 0 then
  local q = P .. ':quota:' .. ARGV[13] .. ':' .. ARGV[15]
  local n = tonumber(redis.call('GET', q) or '0')
  if n >= per_day then return {'over_quota'} end
  redis.call('INCR', q)
  if n == 0 then redis.call('PEXPIREAT', q, ARGV[16]) end
end
if ikey ~= '' then
  redis.call('DEL', k)
  redis.call('HSET', k, 'job', id, 'hash', ARGV[10], 'expires_at', ARGV[11])
  redis.call('PEXPIREAT', k, ARGV[11])
end
create_job(id, ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ikey, ARGV[12], ARGV[13])
flush()
return {'created'}
