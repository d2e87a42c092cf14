-- purge. ARGV[3..]: finished before (ms, exclusive), limit.
-- Touches: finished:log, finished, job:<id>, job:<id>:outputs, idem:<key>, jobs,
-- status:<s>, kind:<k>, parent:<p>, owner:<o>.
-- Returns how many jobs were deleted.
--
-- The log holds terminal ids in the order they finished, stamped by the clocks of
-- the processes that finished them, so its head is the oldest: take ids from it
-- until one is not old enough. A job queued behind a slightly younger one (clock
-- skew between workers) waits for it, at most that skew.
local before, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local ids, taken = {}, 0
for _, id in ipairs(redis.call('LRANGE', K_FINISHED, 0, limit - 1)) do
  local at = redis.call('HGET', jkey(id), 'finished_at')
  if at and at ~= '' and tonumber(at) >= before then break end
  taken = taken + 1
  -- An id whose job is gone or not finished is only dropped from the log.
  if at and at ~= '' then ids[#ids + 1] = id end
end
if taken > 0 then redis.call('LTRIM', K_FINISHED, taken, -1) end
if #ids < limit then
  local old = redis.call('ZRANGEBYSCORE', K_FINISHED_OLD, '-inf', '(' .. ARGV[3], 'LIMIT', 0, limit - #ids)
  if #old > 0 then redis.call('ZREMRANGEBYRANK', K_FINISHED_OLD, 0, #old - 1) end
  for _, id in ipairs(old) do ids[#ids + 1] = id end
end

local deleted = 0
for _, id in ipairs(ids) do
  local s = redis.call('HMGET', jkey(id), 'status', 'kind', 'idem', 'parent', 'owner')
  if s[1] then
    deleted = deleted + 1
    if s[3] and s[3] ~= '' then
      local ik = P .. ':idem:' .. s[3]
      if redis.call('HGET', ik, 'job') == id then redis.call('DEL', ik) end
    end
    redis.call('DEL', jkey(id), jkey(id) .. ':outputs')
    defer('ZREM', skey(s[1]), id)
    if s[2] then defer('ZREM', P .. ':kind:' .. s[2], id) end
    if s[4] and s[4] ~= '' then defer('ZREM', P .. ':parent:' .. s[4], id) end
    if s[5] and s[5] ~= '' then defer('ZREM', P .. ':owner:' .. s[5], id) end
    defer('ZREM', K_JOBS, id)
  end
end
flush()
return deleted
