-- insert_jobs, one chunk. ARGV[3..]: groups of id, kind, spec, max_attempts,
-- created_at, run_at, parent ('' for none), owner ('' for none).
-- Touches: job:<id>, jobs, status:queued, kind:<kind>, parent:<parent>, owner:<owner>, ready +
-- ready:tail or delayed.
local n = 0
for i = 3, #ARGV, 8 do
  create_job(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], '', ARGV[i + 6], ARGV[i + 7])
  n = n + 1
end
flush()
return n
