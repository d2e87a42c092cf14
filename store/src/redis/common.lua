-- Prelude of every Orch script (prepended in Rust). ARGV[1] is the key prefix and
-- ARGV[2] the caller's clock in ms; script-specific arguments start at ARGV[3].
--
-- Keys are built here from the prefix instead of being declared in KEYS, so these
-- scripts are not Redis Cluster safe (hash tags are out of scope).
--
-- Bounds: a script only visits ids it was handed or got from a ranged read with a
-- LIMIT; multi-member commands are sent in chunks of 1,000 arguments, so no
-- `unpack` ever sees an unbounded table (Lua's limit is about 8,000).

local P = ARGV[1]
local NOW = ARGV[2]
local NOW_N = tonumber(NOW)
-- The clock that decides whether a job is due now (see recover.lua).
local DUE_N = NOW_N

local K_READY = P .. ':ready'           -- LIST of due queued ids, sorted by (run_at, id)
local K_TAIL = P .. ':ready:tail'       -- HASH run_at, id of the ready list's last entry
local K_DELAYED = P .. ':delayed'       -- ZSET queued ids that could not join the ready list, by run_at
local K_LEASES = P .. ':leases'         -- ZSET running ids by lease_expires_at (+ sentinel)
local K_FINISHED = P .. ':finished:log' -- LIST terminal ids in the order they finished
local K_FINISHED_OLD = P .. ':finished' -- ZSET by finished_at, written before the log; purge drains it
local K_JOBS = P .. ':jobs'             -- ZSET (score 0) every id, for lexical newest-first listing
local C_READY = P .. ':wake:ready'      -- channel: jobs were queued; message = earliest run_at (ms)
local C_CANCEL = P .. ':wake:cancel'    -- channel: a running job is to stop; message = '<id> <worker>'

-- Field order of a job as scripts return it: the id, then these (JOB_FIELDS in
-- mod.rs). `spec` holds what never changes (kind, max_attempts, created_at, input,
-- metadata) as one JSON text written by Rust; `kind` and `max_attempts` are also
-- fields of their own for the scripts. `events` is the number of events; event n
-- is field `e<n>`. `worker` and `lease_expires_at` are left stale once a job stops
-- running and read as none.
local FIELDS = {'spec', 'status', 'attempts', 'progress', 'error', 'updated_at', 'run_at',
  'started_at', 'finished_at', 'cancel_requested', 'worker', 'lease_expires_at', 'events'}
local F_STATUS, F_ATTEMPTS, F_UPDATED, F_FINISHED, F_CANCEL, F_WORKER, F_EVENTS = 3, 4, 7, 10, 11, 12, 14

-- Small integers as text, cached: Lua formats numbers with sprintf("%.14g"),
-- which showed up in profiles; text is passed to Redis as is.
local itoa_cache = {}
local function itoa(n)
  local s = itoa_cache[n]
  if not s then
    s = string.format('%d', n)
    itoa_cache[n] = s
  end
  return s
end

local function jkey(id) return P .. ':job:' .. id end
local skeys = {}
local function skey(status)
  local k = skeys[status]
  if not k then
    k = P .. ':status:' .. status
    skeys[status] = k
  end
  return k
end

-- Appends an event to the job at key `k` and sets fields, in one HSET. `count` is
-- the job's `events` field before; an event is stored as "<at ms>|<kind>|<data
-- json>" in field `e<seq>`, so a transition costs no extra key or call. The new
-- seq is published on the job's channel (named like its key) for the followers
-- of the job in every process; with nobody subscribed, PUBLISH is one lookup.
local function update(k, count, kind, data, ...)
  local seq = itoa(tonumber(count) + 1)
  redis.call('HSET', k, 'events', seq, 'e' .. seq, NOW .. '|' .. kind .. '|' .. data, ...)
  redis.call('PUBLISH', k, seq)
  return seq
end

-- The id followed by FIELDS, or false when the job does not exist.
local function read_job(id)
  local v = redis.call('HMGET', jkey(id), unpack(FIELDS))
  if not v[2] then return false end
  table.insert(v, 1, id)
  return v
end

-- Index updates are collected per command and key and sent in chunks at the end.
local pending, pending_order = {ZADD = {}, ZREM = {}, RPUSH = {}}, {}
local function defer(cmd, key, a, b)
  local batch = pending[cmd][key]
  if not batch then
    batch = {cmd = cmd, key = key, args = {}, n = 0}
    pending[cmd][key] = batch
    pending_order[#pending_order + 1] = batch
  end
  local args, n = batch.args, batch.n + 1
  args[n] = a
  if b ~= nil then
    n = n + 1
    args[n] = b
  end
  batch.n = n
end

local function move_status(id, from, to)
  defer('ZREM', skey(from), id)
  defer('ZADD', skey(to), '0', id)
end

local function finish(id, from, to)
  move_status(id, from, to)
  defer('RPUSH', K_FINISHED, id)
  defer('ZREM', K_LEASES, id)
end

-- The ready list stays sorted by (run_at, id): a due job joins its end only when it
-- sorts after the current last entry; any other queued job waits in the delayed
-- set, from which claim merges due ids in order. `tail` caches the last entry.
local tail, tail_dirty = nil, false
-- The earliest run_at enqueued by this script, published on C_READY by flush.
local ready_at = nil
local function enqueue(id, run_at)
  local r = tonumber(run_at)
  if not ready_at or r < ready_at then ready_at = r end
  if r <= DUE_N then
    if tail == nil then
      tail = false
      if redis.call('LLEN', K_READY) > 0 then
        local t = redis.call('HMGET', K_TAIL, 'run_at', 'id')
        tail = {tonumber(t[1]) or math.huge, t[2] or ''}
      end
    end
    if not tail or r > tail[1] or (r == tail[1] and id > tail[2]) then
      defer('RPUSH', K_READY, id)
      tail, tail_dirty = {r, id}, true
      return
    end
  end
  defer('ZADD', K_DELAYED, run_at, id)
end

local function flush()
  for _, batch in ipairs(pending_order) do
    local args, n = batch.args, batch.n
    for i = 1, n, 1000 do
      redis.call(batch.cmd, batch.key, unpack(args, i, math.min(i + 999, n)))
    end
  end
  pending, pending_order = {ZADD = {}, ZREM = {}, RPUSH = {}}, {}
  if tail_dirty then
    redis.call('HSET', K_TAIL, 'run_at', string.format('%d', tail[1]), 'id', tail[2])
    tail_dirty = false
  end
  if ready_at then
    redis.call('PUBLISH', C_READY, string.format('%d', ready_at))
    ready_at = nil
  end
end

-- A new queued job with its `queued` event (at its creation time).
-- The fields the hot paths touch come first: a small hash is a list scanned in order.
-- `parent` is the job a delivery is about ('' for none): indexed in parent:<id>.
-- `owner` is the key that submitted it ('' for none): indexed in owner:<key id>.
local function create_job(id, kind, spec, max_attempts, created_at, run_at, idem, parent, owner)
  redis.call('HSET', jkey(id), 'status', 'queued', 'attempts', '0', 'events', '1',
    'updated_at', created_at, 'run_at', run_at, 'cancel_requested', '0', 'spec', spec,
    'kind', kind, 'max_attempts', max_attempts, 'idem', idem, 'parent', parent, 'owner', owner,
    'e1', created_at .. '|queued|{"status":"queued"}')
  defer('ZADD', K_JOBS, '0', id)
  defer('ZADD', skey('queued'), '0', id)
  defer('ZADD', P .. ':kind:' .. kind, '0', id)
  if parent ~= '' then defer('ZADD', P .. ':parent:' .. parent, '0', id) end
  if owner ~= '' then defer('ZADD', P .. ':owner:' .. owner, '0', id) end
  enqueue(id, run_at)
end
