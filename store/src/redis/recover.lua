-- recover_expired. ARGV[2] is the `now` recovery runs as of (leases before it
-- expired; it stamps the changes); ARGV[3..]: limit, that now as RFC 3339, and the
-- caller's clock (ms), which decides whether a requeued job is due yet.
-- Touches: leases, job:<id>, status:running, status:<new>, finished, ready +
-- ready:tail or delayed.
-- Returns how many jobs moved.
local limit, now_rfc = tonumber(ARGV[3]), ARGV[4]
DUE_N = tonumber(ARGV[5])
local ids = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', '(' .. NOW, 'LIMIT', 0, limit)
if #ids == 0 then return 0 end
-- They are the lowest-scored members.
redis.call('ZREMRANGEBYRANK', K_LEASES, 0, #ids - 1)
local moved = 0
for _, id in ipairs(ids) do
  local k = jkey(id)
  local s = redis.call('HMGET', k, 'status', 'attempts', 'max_attempts', 'cancel_requested',
    'worker', 'events')
  if s[1] == 'running' then
    moved = moved + 1
    local n, events = s[2], s[6]
    if s[4] == '1' then
      update(k, events, 'cancelled', '{"status":"cancelled","attempts":' .. n .. '}',
        'status', 'cancelled', 'finished_at', NOW, 'updated_at', NOW)
      finish(id, 'running', 'cancelled')
    else
      local err = '{"code":"worker_lost","message":' .. cjson.encode('worker ' .. (s[5] or '')
        .. ' stopped heartbeating; its lease expired') .. ',"retryable":true}'
      if tonumber(n) < tonumber(s[3]) then
        update(k, events, 'retrying', '{"status":"queued","attempts":' .. n .. ',"error":' .. err
            .. ',"retry_at":"' .. now_rfc .. '"}',
          'status', 'queued', 'run_at', NOW, 'error', err, 'updated_at', NOW)
        move_status(id, 'running', 'queued')
        enqueue(id, NOW)
      else
        update(k, events, 'failed', '{"status":"failed","attempts":' .. n .. ',"error":' .. err .. '}',
          'status', 'failed', 'error', err, 'finished_at', NOW, 'updated_at', NOW)
        finish(id, 'running', 'failed')
      end
    end
  end
end
flush()
return moved
