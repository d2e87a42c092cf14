-- insert_job. ARGV[3..]: id, kind, input, metadata, max_attempts, created_at, run_at,
-- idempotency key ('' for none), body hash, record expiry (ms).
-- Touches: idem:<key>, job:<id>, jobs, status:queued, kind:<kind>,
-- ready + ready:tail or delayed.
-- Returns {'created'}, {'existing', job} or {'conflict', first id}.
local id, ikey = ARGV[3], ARGV[10]
if ikey ~= '' then
  local k = P .. ':idem:' .. ikey
  local rec = redis.call('HMGET', k, 'job', 'hash', 'expires_at')
  if rec[1] and tonumber(rec[3]) > NOW_N then
    -- A record whose job was purged counts as absent.
    local first = read_job(rec[1])
    if first then
      if rec[2] == ARGV[11] then return {'existing', first} end
      return {'conflict', rec[1]}
    end
  end
  redis.call('DEL', k)
  redis.call('HSET', k, 'job', id, 'hash', ARGV[11], 'expires_at', ARGV[12])
  redis.call('PEXPIREAT', k, ARGV[12])
end
create_job(id, ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ikey)
flush()
return {'created'}
