-- purge. ARGV[3..]: finished before (ms, exclusive), limit.
-- Touches: finished, job:<id>, job:<id>:outputs, idem:<key>, jobs, status:<s>, kind:<k>, parent:<p>.
-- Returns how many jobs were deleted.
local ids = redis.call('ZRANGEBYSCORE', K_FINISHED, '-inf', '(' .. ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))
if #ids == 0 then return 0 end
redis.call('ZREMRANGEBYRANK', K_FINISHED, 0, #ids - 1)
for _, id in ipairs(ids) do
  local s = redis.call('HMGET', jkey(id), 'status', 'kind', 'idem', 'parent')
  if s[3] and s[3] ~= '' then
    local ik = P .. ':idem:' .. s[3]
    if redis.call('HGET', ik, 'job') == id then redis.call('DEL', ik) end
  end
  redis.call('DEL', jkey(id), jkey(id) .. ':outputs')
  if s[1] then defer('ZREM', skey(s[1]), id) end
  if s[2] then defer('ZREM', P .. ':kind:' .. s[2], id) end
  if s[4] and s[4] ~= '' then defer('ZREM', P .. ':parent:' .. s[4], id) end
  defer('ZREM', K_JOBS, id)
end
flush()
return #ids
