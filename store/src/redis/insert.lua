-- insert_job. ARGV[3..]: id, kind, spec, max_attempts, created_at, run_at,
-- idempotency key ('' for none), body hash, record expiry (ms), parent ('' for none),
-- owner ('' for none).
-- Touches: idem:<key>, job:<id>, jobs, status:queued, kind:<kind>, parent:<parent>, owner:<owner>,
-- ready + ready:tail or delayed.
-- Returns {'created'}, {'existing', job} or {'conflict', first id}.
local id, ikey = ARGV[3], ARGV[9]
if ikey ~= '' then
  local k = P .. ':idem:' .. ikey
  local rec = redis.call('HMGET', k, 'job', 'hash', 'expires_at')
  if rec[1] and tonumber(rec[3]) > NOW_N then
    -- A record whose job was purged counts as absent.
    local first = read_job(rec[1])
    if first then
      if rec[2] == ARGV[10] then return {'existing', first} end
      return {'conflict', rec[1]}
    end
  end
  redis.call('DEL', k)
  redis.call('HSET', k, 'job', id, 'hash', ARGV[10], 'expires_at', ARGV[11])
  redis.call('PEXPIREAT', k, ARGV[11])
end
create_job(id, ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ikey, ARGV[12], ARGV[13])
flush()
return {'created'}
