-- Helpers every script shares. shared/scripts.py prepends this file and the RQ job templates
-- (DRAIN_TEMPLATE, WEBHOOK_TEMPLATE, ... built from RQ's own Job.to_dict) to each script.
local P = 'gms-relay:'
local DIRTY = P .. 'dirty'
local DRAIN_QUEUED = P .. 'drain-queued'
local WAKEUPS = P .. 'wakeups'
local COUNTERS = P .. 'counters'

local function count(name, by)
  redis.call('HINCRBY', COUNTERS, name, by or 1)
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
  local key = 'rq:job:' .. job_id
  local ts = iso(ms)
  redis.call('HSET', key, 'created_at', ts, 'enqueued_at', ts, 'data', data, 'origin', queue,
    'status', 'queued', unpack(template))
  if extra then redis.call('HSET', key, unpack(extra)) end
  redis.call('RPUSH', 'rq:queue:' .. queue, job_id)
  redis.call('SADD', 'rq:queues', 'rq:queue:' .. queue)
end

-- Enqueue one drain job unless one is already waiting in the queue.
local function ensure_drain(job_id, ms, marker_ttl_ms)
  if redis.call('SET', DRAIN_QUEUED, job_id, 'NX', 'PX', marker_ttl_ms) then
    write_job(DRAIN_TEMPLATE, job_id, DRAIN_QUEUE_NAME, DRAIN_DATA, ms, nil)
    return 1
  end
  return 0
end

-- Mark a chat as needing work. NX keeps what is recorded: the arrival of an older unserved push, a
-- retry backoff, or a worker's claim (whose commit sees the bumped `gen` and re-marks the chat).
local function mark_dirty(sid, ms)
  redis.call('ZADD', DIRTY, 'NX', ms, sid)
end

-- Webhook fan-out ---------------------------------------------------------------------------------
-- Outbox items: 'E<nextPosition>\t<deviceId>\t<event json>' for a transcript event, 'X<body>' for a
-- complete delivery body (chat.ended, device.wakeup). Only the head delivery of a chat is in flight
-- per sink; consecutive events are batched into one chat.events delivery whose bytes are fixed here,
-- so every retry carries the same webhook-id and body. Due deliveries sit in DELIVERIES by due time.
local DELIVERIES = P .. 'deliveries'

local function start_delivery(sink, sid, id, ms, batch_max, keys_ttl_ms)
  local okey = P .. 'outbox:' .. sink .. ':' .. sid
  local items = redis.call('LRANGE', okey, 0, batch_max - 1)
  if #items == 0 then return 0 end
  local body, taken
  if items[1]:sub(1, 1) == 'X' then
    body, taken = items[1]:sub(2), 1
  else
    local events, next_pos, device = {}, 0, ''
    for _, item in ipairs(items) do
      if item:sub(1, 1) ~= 'E' then break end
      local tab1 = item:find('\t', 2, true)
      local tab2 = item:find('\t', tab1 + 1, true)
      next_pos = math.max(next_pos, tonumber(item:sub(2, tab1 - 1)))
      device = item:sub(tab1 + 1, tab2 - 1)
      table.insert(events, item:sub(tab2 + 1))
    end
    taken = #events
    body = '{"type":"chat.events","timestamp":"' .. iso(ms):sub(1, 19) .. 'Z","data":{"deviceId":'
      .. cjson.encode(device) .. ',"sessionId":' .. cjson.encode(sid) .. ',"nextPosition":' .. next_pos
      .. ',"events":[' .. table.concat(events, ',') .. ']}}'
  end
  redis.call('LTRIM', okey, taken, -1)
  local dkey = P .. 'delivery:' .. id
  redis.call('HSET', dkey, 'body', body, 'sink', sink, 'sid', sid, 'attempts', 0, 'created', ms)
  redis.call('PEXPIRE', dkey, keys_ttl_ms)
  redis.call('SET', P .. 'inflight:' .. sink .. ':' .. sid, id, 'PX', keys_ttl_ms)
  redis.call('ZADD', DELIVERIES, ms, id)
  count('webhook_deliveries_created')
  return 1
end

-- Append items for every sink and start a delivery where none is in flight.
local function fan_out(sid, items, sinks, id_base, ms, batch_max, keys_ttl_ms)
  if #items == 0 then return end
  for sink = 0, sinks - 1 do
    local okey = P .. 'outbox:' .. sink .. ':' .. sid
    redis.call('RPUSH', okey, unpack(items))
    redis.call('PEXPIRE', okey, keys_ttl_ms)
    if redis.call('EXISTS', P .. 'inflight:' .. sink .. ':' .. sid) == 0 then
      start_delivery(sink, sid, id_base .. '-' .. sink, ms, batch_max, keys_ttl_ms)
    end
  end
end
