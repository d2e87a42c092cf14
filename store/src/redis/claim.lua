-- claim. ARGV[3..]: worker, limit, lease expiry (ms).
-- Touches: ready, delayed, job:<id>, status:queued, status:running, leases.
-- Returns, flat, per claimed job: id, spec, attempts, progress, error, run_at,
-- cancel_requested; the caller knows the rest (status running, its worker, the
-- lease, and now as started_at and updated_at).
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

-- Only what claiming does not overwrite is read.
local out, o = {}, 0
for _, id in ipairs(ids) do
  local k = jkey(id)
  local s = redis.call('HMGET', k, 'status', 'attempts', 'events', 'spec', 'progress', 'error',
    'run_at', 'cancel_requested')
  if s[1] == 'queued' then
    local n = itoa(tonumber(s[2]) + 1)
    update(k, s[3], 'running', '{"status":"running","attempts":' .. n .. '}',
      'status', 'running', 'attempts', n, 'worker', worker, 'lease_expires_at', lease,
      'started_at', NOW, 'updated_at', NOW)
    out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5], out[o + 6], out[o + 7] =
      id, s[4], n, s[5], s[6], s[7], s[8]
    o = o + 7
    move_status(id, 'queued', 'running')
    defer('ZADD', K_LEASES, lease, id)
  end
end
-- Sentinels ('' at +inf, '' in the lexical index, never read as jobs) keep these
-- two sets from being deleted each time the last running job ends: a busy set
-- then stays a skiplist instead of being rebuilt through a listpack, member by
-- member, with every batch.
if o > 0 then
  defer('ZADD', K_LEASES, '+inf', '')
  defer('ZADD', skey('running'), '0', '')
end
flush()
return out
