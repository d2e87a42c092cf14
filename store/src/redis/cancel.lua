-- cancel_job. ARGV[3]: id.
-- Touches: job:<id>, ready, delayed, status:queued, status:cancelled, finished, leases.
-- A running job's worker is told on C_CANCEL at every request (a repeat helps
-- one that missed the first); its heartbeat finds the flag otherwise.
-- Returns false for an unknown job, else {1 if an event was appended, job}.
local id = ARGV[3]
local v = read_job(id)
if not v then return false end
local status = v[F_STATUS]
if status == 'queued' then
  -- LREM walks the ready list; cancelling is rare next to claiming.
  if redis.call('ZREM', K_DELAYED, id) == 0 then redis.call('LREM', K_READY, 1, id) end
  v[F_EVENTS] = update(jkey(id), v[F_EVENTS], 'cancelled', '{"status":"cancelled","attempts":' .. v[F_ATTEMPTS] .. '}',
    'status', 'cancelled', 'finished_at', NOW, 'updated_at', NOW)
  v[F_STATUS], v[F_FINISHED], v[F_UPDATED] = 'cancelled', NOW, NOW
  finish(id, 'queued', 'cancelled')
  flush()
  return {1, v}
elseif status == 'running' then
  if v[F_CANCEL] ~= '1' then
    redis.call('HSET', jkey(id), 'cancel_requested', '1', 'updated_at', NOW)
    v[F_CANCEL], v[F_UPDATED] = '1', NOW
  end
  redis.call('PUBLISH', C_CANCEL, id .. ' ' .. (v[F_WORKER] or ''))
end
return {0, v}
