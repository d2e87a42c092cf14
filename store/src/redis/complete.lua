-- complete. ARGV[3] worker, then groups of id, outcome, payload, retry_at (ms),
-- retry_at (RFC 3339). Outcomes: 's' succeeded (payload = result), 'r' failed with a
-- retry, 'f' failed (payload = error JSON for both), 'c' cancelled.
-- Touches: job:<id>, status:running, status:<new>, leases, finished, ready +
-- ready:tail or delayed.
-- Returns 1 or 0 per completion: whether it applied.
local worker = ARGV[3]
local out = {}
for i = 4, #ARGV, 5 do
  local id, outcome, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local k = jkey(id)
  local s = redis.call('HMGET', k, 'status', 'worker', 'attempts', 'events')
  if s[1] ~= 'running' or s[2] ~= worker then
    out[#out + 1] = 0
  else
    local n, events = s[3], s[4]
    if outcome == 's' then
      update(k, events, 'succeeded', '{"status":"succeeded","attempts":' .. n .. '}',
        'status', 'succeeded', 'result', payload, 'error', '', 'finished_at', NOW,
        'updated_at', NOW)
      finish(id, 'running', 'succeeded')
    elseif outcome == 'r' then
      local retry_at = ARGV[i + 3]
      update(k, events, 'retrying', '{"status":"queued","attempts":' .. n .. ',"error":' .. payload
          .. ',"retry_at":"' .. ARGV[i + 4] .. '"}',
        'status', 'queued', 'run_at', retry_at, 'error', payload, 'updated_at', NOW)
      move_status(id, 'running', 'queued')
      defer('ZREM', K_LEASES, id)
      enqueue(id, retry_at)
    elseif outcome == 'f' then
      update(k, events, 'failed', '{"status":"failed","attempts":' .. n .. ',"error":' .. payload .. '}',
        'status', 'failed', 'error', payload, 'finished_at', NOW, 'updated_at', NOW)
      finish(id, 'running', 'failed')
    else
      update(k, events, 'cancelled', '{"status":"cancelled","attempts":' .. n .. '}',
        'status', 'cancelled', 'finished_at', NOW, 'updated_at', NOW)
      finish(id, 'running', 'cancelled')
    end
    out[#out + 1] = 1
  end
end
flush()
return out
