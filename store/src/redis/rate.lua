-- take_request (run on its own, without common.lua). ARGV[1] the key prefix,
-- ARGV[2] the caller's clock (unused: Redis's clock is the one every API process
-- shares), ARGV[3] the bucket (a key id), ARGV[4] requests a minute (> 0).
-- Touches: rate:<bucket> (STRING: the bucket's theoretical arrival time, ms;
-- it expires when the bucket is full again).
-- GCRA: each request moves the arrival time on by one step (a minute / limit)
-- from now at the earliest; a request is refused while that would put it more
-- than a minute ahead, so a full bucket allows a burst of `limit`.
-- Returns {allowed (1 or 0), remaining, retry after (ms)}.
local key = ARGV[1] .. ':rate:' .. ARGV[3]
local limit = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local period = 60000
local step = period / limit
local tat = tonumber(redis.call('GET', key) or '0')
if tat < now then tat = now end
local next_tat = tat + step
local allow_at = next_tat - period
if now < allow_at then
  return {0, 0, math.ceil(allow_at - now)}
end
redis.call('SET', key, string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now))
return {1, math.floor((now - allow_at) / step + 1e-9), 0}
