-- list_jobs, one page of one index. ARGV[3..]: index ('jobs', 'status:<s>',
-- 'kind:<k>', 'parent:<id>' or 'owner:<key id>'), before (id, '' for none), ids to
-- scan at most, jobs wanted, then any number of checks as pairs of a field
-- ('status' or 'kind') and the value it must have ('!v': any value but v).
-- Touches: the index, job:<id>.
-- Returns {last id scanned, 1 if the index is exhausted, jobs}: the caller continues
-- from the last id, so one call scans a bounded number of ids.
local index, before = ARGV[3], ARGV[4]
local scan, want = tonumber(ARGV[5]), tonumber(ARGV[6])
local checks = {}
for i = 7, #ARGV, 2 do
  local value = ARGV[i + 1]
  local negate = string.sub(value, 1, 1) == '!'
  if negate then value = string.sub(value, 2) end
  checks[#checks + 1] = {ARGV[i], value, negate}
end
local start = '+'
if before ~= '' then start = '(' .. before end
-- '(' excludes the '' sentinel (claim.lua).
local ids = redis.call('ZRANGE', P .. ':' .. index, start, '(', 'BYLEX', 'REV', 'LIMIT', 0, scan)
local out, last = {}, ''
for _, id in ipairs(ids) do
  last = id
  local ok = true
  for _, c in ipairs(checks) do
    if (redis.call('HGET', jkey(id), c[1]) == c[2]) == c[3] then
      ok = false
      break
    end
  end
  if ok then
    local v = read_job(id)
    if v then out[#out + 1] = v end
    if #out >= want then break end
  end
end
local exhausted = 0
if #ids < scan then exhausted = 1 end
return {last, exhausted, out}
