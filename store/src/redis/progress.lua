-- record_progress. ARGV[3..]: worker, id, progress (JSON).
-- Touches: job:<id>. Returns 1 when recorded.
local worker, id, progress = ARGV[3], ARGV[4], ARGV[5]
local s = redis.call('HMGET', jkey(id), 'status', 'worker', 'events')
if s[1] ~= 'running' or s[2] ~= worker then return 0 end
update(jkey(id), s[3], 'progress', progress, 'progress', progress, 'updated_at', NOW)
return 1
