-- list_jobs, one page of one index. ARGV[3..]: index ('jobs', 'status:<s>',
-- 'kind:<k>' or 'parent:<id>'), field to check ('' for none: 'status' or 'kind'), its value ('!v':
-- any value but v), before
-- (id, '' for none), ids to scan at most, jobs wanted.
-- Touches: the index, job:<id>.
-- Returns {last id scanned, 1 if the index is exhausted, jobs}: the caller continues
-- from the last id, so one call scans a bounded number of ids.
local index, field, value, before = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local scan, want = tonumber(ARGV[7]), tonumber(ARGV[8])
local start = '+'
if before ~= '' then start = '(' .. before end
-- '(' excludes the '' sentinel (claim.lua).
local ids = redis.call('ZRANGE', P .. ':' .. index, start, '(', 'BYLEX', 'REV', 'LIMIT', 0, scan)
local negate = string.sub(value, 1, 1) == '!'
if negate then value = string.sub(value, 2) end
local out, last = {}, ''
for _, id in ipairs(ids) do
  last = id
  if field == '' or ((redis.call('HGET', jkey(id), field) == value) ~= negate) then
    local v = read_job(id)
    if v then out[#out + 1] = v end
    if #out >= want then break end
  end
end
local exhausted = 0
if #ids < scan then exhausted = 1 end
return {last, exhausted, out}
