-- recover_expired. ARGV[3..]: limit, now (RFC 3339).
-- Touches: leases, job:<id>, events:<id>, status:running, status:<new>, finished,
-- ready + ready:tail or delayed.
-- Returns how many jobs moved.
local limit, now_rfc = tonumber(ARGV[3]), ARGV[4]
local ids = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', '(' .. NOW, 'LIMIT', 0, limit)
if #ids == 0 then return 0 end
-- They are the lowest-scored members.
redis.call('ZREMRANGEBYRANK', K_LEASES, 0, #ids - 1)
local moved = 0
for _, id in ipairs(ids) do
  local k = jkey(id)
  local s = redis.call('HMGET', k, 'status', 'attempts', 'max_attempts', 'cancel_requested', 'worker')
  if s[1] == 'running' then
    moved = moved + 1
    local n = s[2]
    if s[4] == '1' then
      redis.call('HSET', k, 'status', 'cancelled', 'finished_at', NOW, 'updated_at', NOW,
        'worker', '', 'lease_expires_at', '')
      push_event(id, 'cancelled', '{"status":"cancelled","attempts":' .. n .. '}')
      finish(id, 'running', 'cancelled')
    else
      local err = '{"code":"worker_lost","message":' .. cjson.encode('worker ' .. (s[5] or '')
        .. ' stopped heartbeating; its lease expired') .. ',"retryable":true}'
      if tonumber(n) < tonumber(s[3]) then
        redis.call('HSET', k, 'status', 'queued', 'run_at', NOW, 'error', err, 'updated_at', NOW,
          'worker', '', 'lease_expires_at', '')
        push_event(id, 'retrying', '{"status":"queued","attempts":' .. n .. ',"error":' .. err
          .. ',"retry_at":"' .. now_rfc .. '"}')
        move_status(id, 'running', 'queued')
        enqueue(id, NOW)
      else
        redis.call('HSET', k, 'status', 'failed', 'error', err, 'finished_at', NOW,
          'updated_at', NOW, 'worker', '', 'lease_expires_at', '')
        push_event(id, 'failed', '{"status":"failed","attempts":' .. n .. ',"error":' .. err .. '}')
        finish(id, 'running', 'failed')
      end
    end
  end
end
flush()
return moved
