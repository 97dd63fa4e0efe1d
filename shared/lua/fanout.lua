-- Sinks -------------------------------------------------------------------------------------------
-- Outbox items: 'E<nextPosition>\t<deviceId>\t<event json>' for a transcript event, 'X<body>' for a
-- complete delivery body (chat.ended, device.wakeup, chat.credentials_required). Only the head delivery
-- of a chat is in flight per sink; consecutive events are batched into one chat.events delivery whose
-- bytes are fixed here, so every retry carries the same webhook-id and body. Due deliveries sit in
-- DELIVERIES by due time. Callers bound the number of items per call (unpack has a stack limit).
-- Deliveries waiting on a sink that is down or disabled score SINK_PARKED + sink (shared/keys.py),
-- beyond any due time, so that the sink's probe and its recovery find exactly them.

local function start_delivery(sink, sid, id, ms)
  local okey = keys.outbox(sink, sid)
  local items = redis.call('LRANGE', okey, 0, CFG_BATCH_MAX - 1)
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
  local dkey = keys.delivery(id)
  redis.call('HSET', dkey, 'body', body, 'sink', sink, 'sid', sid, 'attempts', 0, 'created', ms)
  redis.call('PEXPIRE', dkey, CFG_OUTBOX_TTL_MS)
  redis.call('SET', keys.inflight(sink, sid), id, 'PX', CFG_OUTBOX_TTL_MS)
  redis.call('ZADD', DELIVERIES, ms, id)
  count('webhook_deliveries_created')
  return 1
end

-- Append items for every webhook sink and start a delivery where none is in flight.
local function fan_out(sid, items, id_base, ms)
  if #items == 0 then return end
  for sink = 0, CFG_SINKS - 1 do
    local okey = keys.outbox(sink, sid)
    redis.call('RPUSH', okey, unpack(items))
    redis.call('PEXPIRE', okey, CFG_OUTBOX_TTL_MS)
    if redis.call('EXISTS', keys.inflight(sink, sid)) == 0 then
      start_delivery(sink, sid, id_base .. '-' .. sink, ms)
    end
  end
end

-- Append one entry to a device's stream (the contract's Redis stream sink).
local function stream_add(device, ...)
  local stream = keys.stream(device)
  redis.call('XADD', stream, 'MAXLEN', '~', CFG_STREAM_MAXLEN, '*', ...)
  redis.call('PEXPIRE', stream, CFG_STREAM_TTL_MS)
end

-- A non-transcript event (`data` is its JSON): one stream entry, and its webhook body as an outbox item.
local function notice(device, sid, kind, data, ms)
  if sid then
    stream_add(device, 'type', kind, 'sessionId', sid, 'data', data)
  else
    stream_add(device, 'type', kind, 'data', data)
  end
  return 'X{"type":"' .. kind .. '","timestamp":"' .. iso(ms):sub(1, 19) .. 'Z","data":' .. data .. '}'
end
