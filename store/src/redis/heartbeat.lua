-- heartbeat. ARGV[3..]: worker id, worker record (JSON), last seen (ms), lease
-- expiry (ms), then job ids.
-- Touches: workers, workers:seen, job:<id>, leases.
-- Returns the ids the worker must stop.
local worker, lease = ARGV[3], ARGV[6]
redis.call('HSET', P .. ':workers', worker, ARGV[4])
redis.call('ZADD', P .. ':workers:seen', ARGV[5], worker)
local stop = {}
for i = 7, #ARGV do
  local id = ARGV[i]
  local s = redis.call('HMGET', jkey(id), 'status', 'worker', 'cancel_requested')
  if s[1] == 'running' and s[2] == worker then
    redis.call('HSET', jkey(id), 'lease_expires_at', lease)
    defer('ZADD', K_LEASES, lease, id)
    if s[3] == '1' then stop[#stop + 1] = id end
  else
    stop[#stop + 1] = id
  end
end
flush()
return stop
