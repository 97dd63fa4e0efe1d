-- Helpers every script shares. shared/scripts.py builds each script from the prelude (per-process
-- constants CFG_*, key names and functions `keys.*` from shared/keys.py, the drain job's template: see
-- shared/lua_prelude.py), this file, the helper files it needs, its generated argument header and its
-- body. Redis runs the whole text on every call, so keep it small: each definition here costs every
-- push. Every script validates its arguments before its first write (the generated header does most of
-- it): Redis does not undo a script's earlier writes when it fails later.

local function count(name, by)
  redis.call('HINCRBY', COUNTERS, name, by or 1)
end

-- A webhook outcome, in total and for its sink (rendered as gms_relay_webhook_sink_<what>{sink}).
local function count_sink(what, sink)
  count('webhook_' .. what)
  count('webhook_sink_' .. what .. '{sink="' .. sink .. '"}')
end

-- A finite integer from an argument, else nil: tonumber alone lets 'nan' and 'inf' through, which
-- would fail a later ZADD after earlier writes, or poison a stored ordering key.
local function int(value)
  local n = tonumber(value)
  if n and n == n and n ~= math.huge and n ~= -math.huge and n == math.floor(n) then return n end
  return nil
end

local function bad_args(script)
  return redis.error_reply('ERR gms-relay ' .. script .. ': malformed arguments')
end

-- RQ's timestamp format ('%Y-%m-%dT%H:%M:%S.%fZ') from unix milliseconds (civil_from_days).
local function iso(ms)
  local secs = math.floor(ms / 1000)
  local days = math.floor(secs / 86400)
  local rem = secs - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%06dZ', y, m, d,
    math.floor(rem / 3600), math.floor((rem % 3600) / 60), rem % 60, (ms % 1000) * 1000)
end

-- Write a job exactly as RQ's Queue.enqueue would: job hash, queue list, queue set.
local function write_job(template, job_id, queue, data, ms, extra)
  local key = keys.rq_job(job_id)
  local ts = iso(ms)
  redis.call('HSET', key, 'created_at', ts, 'enqueued_at', ts, 'data', data, 'origin', queue,
    'status', 'queued', unpack(template))
  if extra then redis.call('HSET', key, unpack(extra)) end
  redis.call('RPUSH', keys.rq_queue(queue), job_id)
  redis.call('SADD', RQ_QUEUES, keys.rq_queue(queue))
end

-- Enqueue one drain job unless one is already waiting in the queue.
local function ensure_drain(job_id, ms)
  if redis.call('SET', DRAIN_QUEUED, job_id, 'NX', 'PX', CFG_DRAIN_MARKER_TTL_MS) then
    write_job(drain_template(), job_id, DRAIN_QUEUE_NAME, DRAIN_DATA, ms, nil)
    return 1
  end
  return 0
end

-- Mark a chat as needing work. NX keeps what is recorded: the arrival of an older unserved push, a
-- retry backoff, or a worker's claim (whose commit sees the bumped `gen` and re-marks the chat).
local function mark_dirty(sid, ms)
  redis.call('ZADD', DIRTY, 'NX', ms, sid)
end

-- Which alias is newest. Each source gets a key, and a source replaces the stored alias only when its
-- key is not below the stored one: a registration -1; a trigger with notify-position p: 2p; a Refresh
-- response whose nextPosition is n: 2n + 1. Chat Server computes a trigger's position when it sends it,
-- and a trigger sent before a Refresh was processed announces an event that Refresh returned, so its
-- p < n: the response wins. A trigger sent after it carries p >= n; with p > n it wins. At p == n the
-- response wins (gms-protocol.md: the alias from a trigger is used "until a Refresh response gives a
-- newer alias"): a trigger sent before the Refresh by a customer whose other client had fetched
-- everything carries that position with an older alias, and one sent after it carries the alias that
-- response gave, unless the alias changed outside any Refresh, which a refusal then repairs from
-- `aliases` (release.lua, 'suspect'). A late trigger (a lower position) never brings an old alias back.
local function take_alias(fields, stored_key, alias, key)
  if alias ~= '' and key >= (tonumber(stored_key) or -2) then
    fields[#fields + 1] = 'alias'; fields[#fields + 1] = alias
    fields[#fields + 1] = 'alias_key'; fields[#fields + 1] = key
  end
end

-- Small newline-separated lists in a hash field: `aliases` (the candidates seen since the last
-- successful Refresh, newest first) and `refused` (the aliases GMS refused since then).
local function items(list)
  local out = {}
  if list then
    for item in string.gmatch(list .. '\n', '([^\n]*)\n') do out[#out + 1] = item end
  end
  return out
end

local function has(list, value)
  for _, item in ipairs(items(list)) do
    if item == value then return true end
  end
  return false
end

-- `value` first, then the rest of `list` without it, at most 4 in all.
local function remember(list, value)
  local out = {value}
  for _, item in ipairs(items(list)) do
    if item ~= value and #out < 4 then out[#out + 1] = item end
  end
  return table.concat(out, '\n')
end
