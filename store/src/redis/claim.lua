-- claim. ARGV[3..]: worker, limit, lease expiry (ms).
-- Touches: ready, delayed, job:<id>, status:queued, status:running, leases.
-- Returns the claimed jobs.
--
-- Both queues are sorted by (run_at, id), so the oldest due jobs are a prefix of
-- each: merge at most `limit` from the head of each and cut those prefixes off.
-- Nothing is promoted wholesale; the due part of the delayed set is read with a
-- LIMIT, however large it is.
local worker, limit, lease = ARGV[3], tonumber(ARGV[4]), ARGV[5]
local due = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', NOW, 'WITHSCORES', 'LIMIT', 0, limit)
local ids
if #due == 0 then
  ids = redis.call('LPOP', K_READY, limit)
  if not ids then return {} end
else
  local ready = redis.call('LRANGE', K_READY, 0, limit - 1)
  ids = {}
  local i, j, ready_run = 1, 1, nil
  while #ids < limit do
    local rid, did = ready[i], due[2 * j - 1]
    if not rid and not did then break end
    local take_ready = not did
    if rid and did then
      if not ready_run then
        ready_run = tonumber(redis.call('HGET', jkey(rid), 'run_at')) or -math.huge
      end
      local drun = tonumber(due[2 * j])
      take_ready = ready_run < drun or (ready_run == drun and rid < did)
    end
    if take_ready then
      ids[#ids + 1] = rid
      i, ready_run = i + 1, nil
    else
      ids[#ids + 1] = did
      j = j + 1
    end
  end
  if i > 1 then redis.call('LTRIM', K_READY, i - 1, -1) end
  if j > 1 then redis.call('ZREMRANGEBYRANK', K_DELAYED, 0, j - 2) end
end

-- Only what claiming does not overwrite is read; the reply has the FIELDS layout.
local out = {}
for _, id in ipairs(ids) do
  local s = redis.call('HMGET', jkey(id), 'status', 'attempts', 'events', 'spec', 'progress', 'error',
    'run_at', 'cancel_requested')
  if s[1] == 'queued' then
    local n = tonumber(s[2]) + 1
    local seq = update(id, s[3], 'running', '{"status":"running","attempts":' .. n .. '}',
      'status', 'running', 'attempts', n, 'worker', worker, 'lease_expires_at', lease,
      'started_at', NOW, 'updated_at', NOW)
    out[#out + 1] = {id, s[4], 'running', tostring(n), s[5], s[6], NOW, s[7], NOW, false, s[8], worker,
      lease, tostring(seq)}
    move_status(id, 'queued', 'running')
    defer('ZADD', K_LEASES, lease, id)
  end
end
flush()
return out
